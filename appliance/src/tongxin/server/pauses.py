"""Pauses every connection of a process waits through at once, as metrics.

* ``tongxin_event_loop_lag_seconds``: a timer asks to wake every
  ``server.loop_lag_interval`` seconds and records how much later than that it
  ran. A frame handled for a long time, a slow synchronous call or a garbage
  collection delays every other callback on the loop by as much, and a
  frame's bytes wait in the kernel's socket buffer meanwhile, where no
  per-frame clock can see them (``tongxin_ack_latency_seconds`` starts when
  they are read). The probe costs one timer per interval.
* ``tongxin_gc_pause_seconds{generation}``: each cyclic collection, timed from
  ``gc.callbacks``' start to its stop. The collector stops the whole process,
  so this is time nothing else ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from typing import Any

from prometheus_client import Histogram


async def watch_loop_lag(histogram: Histogram, interval: float) -> None:
    """Until cancelled: sleep ``interval``, observe how late the wake-up came."""
    loop = asyncio.get_running_loop()
    observe = histogram.observe
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - due))


class GcPauses:
    """Times the cyclic collector's runs into a histogram labelled by generation.

    ``install()`` adds a callback to ``gc.callbacks`` and ``remove()`` takes
    it out again (a process may run several nodes, as the tests do; each
    removes only its own). The collector runs one collection at a time with
    the GIL held, so a start is always followed by its own stop.
    """

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._children: dict[int, Any] = {}
        self._started = 0.0
        self._callback = self._on_gc  # one bound method: remove() finds this very object

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if not self._started:
            return  # installed during a collection: its start was not seen
        elapsed = time.perf_counter() - self._started
        self._started = 0.0
        generation = int(info.get("generation", -1))
        child = self._children.get(generation)
        if child is None:
            child = self._children[generation] = self._histogram.labels(str(generation))
        child.observe(elapsed)

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    @property
    def installed(self) -> bool:
        return self._callback in gc.callbacks

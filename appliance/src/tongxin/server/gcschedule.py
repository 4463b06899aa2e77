"""When the cyclic garbage collector works, chosen instead of left to allocation counts.

A held connection is ~70 objects the collector tracks (the aiohttp request,
response, reader, parser and writer, two tasks and the suspended coroutines
of its read loop, the Connection and its session; bench/conn_objects.py lists
them), and each of its messages replaces the ~8 objects of the suspended read
chain, which then live until the next message: 30 s for a heartbeat. Left to
itself, CPython 3.11 promotes those objects into generation 2 and runs a full
collection whenever that generation has grown by a quarter. At 18,000
connections that is ~1.1 million objects per full collection (0.7-1.3 s with
the process stopped) and, as heartbeat chains age into it, one every ~45 s.

The schedule keeps generation 2 small instead: every ``interval`` seconds it
counts the objects generation 2 holds beyond those frozen, and once they pass
``threshold`` it runs a full collection (which examines only those, not the
frozen ones: milliseconds) and freezes what survived. Long-lived objects -
held connections - are then frozen soon after they are made, and no
collection looks at them again; the interpreter's own full collections, which
still run, see only what is newer than the last freeze.

Why freezing does not leak: a frozen object is still freed when its reference
count drops to zero; what freezing gives up is finding reference *cycles*
among frozen objects. A closed connection leaves none (bench/conn_objects.py:
0 unreachable objects found after 500 closes; tests/unit/test_gc_schedule.py
checks it), so its memory goes back when it closes. Cycles made by other
frozen objects would stay; ``tongxin_gc_objects{generation="frozen"}`` shows
the frozen set, which should follow the number of connections.

After a mass disconnect (at least ``trim_after`` connections closed since the
last trim, and more than are still open) the C allocator's free memory is
given back to the system with ``malloc_trim(0)`` (glibc): CPython's object
allocator returns its empty arenas itself, but buffers allocated with malloc
(socket reads, protobuf, the parser) stay in glibc's heap and in the RSS.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger("tongxin.gc")


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


class GcSchedule:
    """Collects and freezes once generation 2 has grown; trims the heap after mass closes.

    ``step()`` is one check (the node calls it every ``interval`` seconds from
    ``run()``); ``closed()`` is told of every connection that ends.
    """

    def __init__(self, interval: float, threshold: int, trim_after: int = 1000) -> None:
        self.interval = interval
        self.threshold = threshold
        self.trim_after = trim_after
        self.closed_since_trim = 0
        self.freezes = 0
        self.trims = 0
        self._trim = _malloc_trim()

    def closed(self) -> None:
        self.closed_since_trim += 1

    def step(self, open_connections: int) -> None:
        # Listing generation 2 costs ~15 ms per million objects; kept small by
        # this very schedule, it is a few thousand.
        if len(gc.get_objects(2)) >= self.threshold:
            gc.collect()
            gc.freeze()
            self.freezes += 1
        if (self.closed_since_trim >= self.trim_after
                and self.closed_since_trim > open_connections):
            self.closed_since_trim = 0
            if self._trim is not None:
                # The dead connections' cycles, if any, first (cheap: only what is
                # not frozen), so that their memory is free when the heap is trimmed.
                gc.collect()
                self._trim(0)
                self.trims += 1

    async def run(self, open_connections: Callable[[], int]) -> None:
        """Until cancelled: one step every ``interval`` seconds."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.step(open_connections())
            except Exception:  # a failed check must not end the schedule
                log.exception("gc schedule step failed")

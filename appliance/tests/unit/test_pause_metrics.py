"""Pauses on /metrics (issue 18, "pauses are invisible"): event-loop lag, GC pauses by
generation, and the standard process metrics, on the node's own registry."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import aiohttp
from conftest import make_config, start_node  # type: ignore[import-not-found, unused-ignore]
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from tongxin.server.pauses import GcPauses, watch_loop_lag


def _histogram(labels: tuple[str, ...] = ()) -> tuple[CollectorRegistry, Histogram]:
    r = CollectorRegistry()
    return r, Histogram("pause_seconds", "test", labels, buckets=(0.1, 0.25, 1), registry=r)


async def test_loop_lag_sees_a_blocked_loop() -> None:
    r, h = _histogram()
    task = asyncio.create_task(watch_loop_lag(h, 0.01))
    try:
        await asyncio.sleep(0.05)
        # A callback that holds the loop: the timer due meanwhile runs late.
        time.sleep(0.3)  # noqa: ASYNC251 - blocking is the point
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
    count = r.get_sample_value("pause_seconds_count") or 0
    within = r.get_sample_value("pause_seconds_bucket", {"le": "0.25"}) or 0
    assert count >= 2
    assert count - within >= 1  # the wake-up after the block was > 0.25 s late


def test_gc_pauses_by_generation_until_removed() -> None:
    r, h = _histogram(("generation",))
    pauses = GcPauses(h)

    def count(gen: str) -> float:
        return r.get_sample_value("pause_seconds_count", {"generation": gen}) or 0.0

    pauses.install()
    pauses.install()  # once only
    try:
        assert gc.callbacks.count(pauses._callback) == 1
        gc.collect(0)
        gc.collect(2)
        assert count("0") >= 1 and count("2") >= 1
    finally:
        pauses.remove()
    assert not pauses.installed
    before = count("2")
    gc.collect(2)
    assert count("2") == before


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_node_serves_pauses_and_process_metrics(tmp_path: Path) -> None:
    running = await start_node(make_config(tmp_path / "node", server={"loop_lag_interval": 0.01}))
    node = running.node
    try:
        assert node.gc_pauses.installed
        await asyncio.sleep(0.1)
        gc.collect()
        async with aiohttp.ClientSession() as http, http.get(running.metrics_url) as resp:
            samples = _samples(await resp.text())
        assert samples[("tongxin_event_loop_lag_seconds_count", ())] >= 1
        assert samples[("tongxin_gc_pause_seconds_count", (("generation", "2"),))] >= 1
        names = {name for name, _ in samples}
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
                "process_open_fds", "python_gc_collections_total"} <= names
    finally:
        await running.stop()
    # Stopped: the probe is cancelled and the GC callback gone (a process may run
    # several nodes, as the tests do).
    await asyncio.sleep(0)
    assert not node.gc_pauses.installed
    assert not [t for t in node._tasks if not t.done()]


async def test_loop_lag_probe_can_be_turned_off(tmp_path: Path) -> None:
    running = await start_node(make_config(tmp_path / "node", server={"loop_lag_interval": 0}))
    try:
        await asyncio.sleep(0.05)
        registry = running.node.metrics.registry
        assert (registry.get_sample_value("tongxin_event_loop_lag_seconds_count") or 0) == 0
    finally:
        await running.stop()

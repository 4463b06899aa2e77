"""``tongxin_ready`` follows what /readyz answers, for Prometheus's ApplianceNotReady
where the load balancers' own health view is not scraped."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from conftest import RunningNode
from prometheus_client.parser import text_string_to_metric_families


async def ready_gauge(rn: RunningNode) -> float:
    async with aiohttp.ClientSession() as http, http.get(rn.metrics_url) as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        if family.name == "tongxin_ready":
            return float(family.samples[0].value)
    raise AssertionError("no tongxin_ready in /metrics")


async def readyz(rn: RunningNode) -> int:
    async with aiohttp.ClientSession() as http, http.get(rn.http_url + "/readyz") as resp:
        return resp.status


async def wait_for(rn: RunningNode, value: float) -> None:
    for _ in range(200):
        if await ready_gauge(rn) == value:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"tongxin_ready never became {value}")


@pytest.mark.integration
async def test_ready_gauge_follows_the_store(server: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    node = server.node
    watcher = asyncio.create_task(node._watch_readiness(0.02))
    try:
        await wait_for(server, 1)
        assert await readyz(server) == 200

        async def down() -> bool:
            return False

        monkeypatch.setattr(node.store, "ping", down)  # the store stops answering
        await wait_for(server, 0)
        assert await readyz(server) == 503
        monkeypatch.undo()
        await wait_for(server, 1)
        assert await readyz(server) == 200
    finally:
        watcher.cancel()

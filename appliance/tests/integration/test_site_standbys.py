"""GET /api/v1/admin/site lists the DR standbys with their lag (issue 21).

An active node of dc1 configured with ``site.standby_status_urls``: one URL is a
standby answering /readyz as StandbyNode does (503 and its lag), the other a
port nobody listens on. The sysadmin's site panel gets both, the first with its
numbers, the second unreachable with the reason, and the answer does not wait
for what cannot answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]
from test_compliance_admin import call, trio  # type: ignore[import-not-found, unused-ignore]

from tongxin.config import load_config
from tongxin.server.standby import StandbyNode


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class _Reader:
    lag_at_advance = 0.9
    error = ""

    def lag(self) -> float:
        return 3.25

    def silent_for(self) -> float:
        return 0.5


async def test_site_status_lists_the_standbys_with_their_lag(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    cfg = load_config()
    cfg.site.name, cfg.site.role, cfg.node_id = "dr", "standby", "dr-appliance-01"
    standby = StandbyNode(cfg)
    standby.reader = _Reader()  # type: ignore[assignment]
    app = web.Application()
    app.router.add_get("/readyz", standby.readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    good = f"http://127.0.0.1:{runner.addresses[0][1]}"
    gone = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    refused = f"http://127.0.0.1:{gone.sockets[0].getsockname()[1]}"
    gone.close()
    await gone.wait_closed()
    try:
        rn: RunningNode = await node_factory(
            site={"name": "dc1", "standby_status_urls": f"{good}/, {refused}"})
        admins = await trio(rn, http)
        started = time.monotonic()
        status, body = await call(http, rn, "GET", "/site", admins["sysadmin"].token)
        assert status == 200, body
        assert time.monotonic() - started < 5
        assert body["site"] == "dc1" and body["role"] == "active"
        first, second = body["standbys"]
        assert first == {"url": good, "site": "dr", "node": "dr-appliance-01", "reachable": True,
                         "replication_lag_seconds": 3.25, "replication_silent_seconds": 0.5,
                         "replication_lag_at_last_advance_seconds": 0.9, "error": None}
        assert second["url"] == refused and second["reachable"] is False
        assert second["error"].startswith("cannot connect: ")
        assert second["replication_lag_seconds"] is None
    finally:
        await runner.cleanup()


async def test_no_standbys_configured_is_an_empty_list(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory(site={"name": "dc1"})
    admins = await trio(rn, http)
    status, body = await call(http, rn, "GET", "/site", admins["sysadmin"].token)
    assert status == 200 and body["standbys"] == []

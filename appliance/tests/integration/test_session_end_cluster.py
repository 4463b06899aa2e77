"""A disabled user's socket is closed on every node within seconds.

Two node processes on the real engines (Kafka delivery, Redis Cluster
presence and revocations) sharing one store: the user is connected to node B,
a system administrator disables them through node A's admin API, and B closes
the socket with 4010 (docs/protocol.md, section 12) within 5 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from engines import NodeProcess, isolated_backends, service_env, services, start_node_process
from test_compliance_multinode import PW, call, create_admin, steady_clock
from test_multinode import login

from tongxin.client import Client, TongxinError
from tongxin.wire import closecodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, str]]:
    services("start", "redis", "kafka")
    yield service_env()


@pytest.fixture
async def pair(engines: dict[str, str], tmp_path: Path) -> AsyncIterator[list[NodeProcess]]:
    config: dict[str, Any] = isolated_backends(engines)
    home = tmp_path / "shared"
    nodes: list[NodeProcess] = []
    try:
        for name in ("se-node-a", "se-node-b"):
            nodes.append(await start_node_process(name, home, config, tmp_path))
        yield nodes
    finally:
        for n in nodes:
            n.stop()


async def closed_within(c: Client, seconds: float) -> tuple[int | None, float]:
    start = time.monotonic()
    async with asyncio.timeout(seconds):
        while not c.closed:  # noqa: ASYNC110 -- the client has no close event to await
            await asyncio.sleep(0.02)
    return c.close_code, time.monotonic() - start


async def test_disable_on_node_a_closes_the_socket_on_node_b(pair: list[NodeProcess],
                                                             tmp_path: Path) -> None:
    a, b = pair
    secret = await create_admin(tmp_path / "se-node-a.yml", "ops", "sysadmin")
    victim = await login(b.ws_url, "mallory", "laptop", register=True)
    bystander = await login(b.ws_url, "trent", "pc", register=True)
    await steady_clock()
    async with aiohttp.ClientSession() as http:
        status, body = await call(http, a, "POST", "/login", body={
            "username": "ops", "password": PW, "totp": pyotp.TOTP(secret).now()})
        assert status == 200, body
        status, body = await call(http, a, "POST", "/users/mallory/disable", body["token"])
        assert status == 200, body
    assert victim.auth is not None
    token = victim.auth.token
    code, took = await closed_within(victim, 5.0)
    assert code == closecodes.SESSION_REVOKED, (code, took)
    # Only the revoked user's sessions end; B keeps serving the others.
    assert not bystander.closed
    assert (await bystander.direct("mallory")).conversation_id
    # And the token cannot come back on either node.
    for node in (a, b):
        c = Client(node.ws_url, device_id="laptop")
        await c.connect()
        with pytest.raises(TongxinError, match=r"ACCOUNT_LOCKED|TOKEN_REVOKED"):
            await c.resume(token)
        await c.close()
    await victim.close()
    await bystander.close()

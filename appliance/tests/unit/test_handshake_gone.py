"""A client gone before its WebSocket handshake is answered (issue 18).

In a reconnect storm of 100,000 clients over seven workers, clients whose
30 s handshake timeout ran out while their connection waited in the listen
queue were gone by the time a worker answered. Each such handshake logged a
traceback ("Call .prepare() first": the handler returned the half-prepared
WebSocket, which aiohttp then tried to end), 5,342 of them in one storm, on
workers that had no time to spare. Here a real node meets such a client: the
handshake's answer is written only once the client has reset the connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.web_request import BaseRequest
from conftest import RunningNode, make_config, start_node  # type: ignore[import-not-found, unused-ignore]

from tongxin.server.wsarrival import ArrivalWebSocketResponse

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_node(make_config(tmp_path / "node"))
    yield running
    await running.stop()


def gone_after_asking(port: int) -> None:
    """Ask for the handshake, then reset the connection (SO_LINGER 0: an RST)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(UPGRADE)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


async def test_a_client_gone_before_the_handshake_costs_no_traceback(
        node: RunningNode, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    real_prepare = ArrivalWebSocketResponse.prepare
    resets = 0

    async def prepare_once_gone(self: ArrivalWebSocketResponse, request: BaseRequest,
                                ) -> object:
        nonlocal resets
        # Answer only once the reset has arrived, as a worker that was busy does.
        for _ in range(3000):
            if request.transport is None or request.transport.is_closing():
                break
            await asyncio.sleep(0.01)
        try:
            return await real_prepare(self, request)
        except ConnectionResetError:
            resets += 1
            raise

    monkeypatch.setattr(ArrivalWebSocketResponse, "prepare", prepare_once_gone)
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    for _ in range(5):
        await asyncio.to_thread(gone_after_asking, node.port)
    for _ in range(3000):  # bounds for a loaded box; each step ends as soon as it can
        if resets >= 5:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # aiohttp's end of each request runs after the handler
    assert resets >= 5, f"the handshakes did not meet a reset connection: {resets}"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]

    monkeypatch.setattr(ArrivalWebSocketResponse, "prepare", real_prepare)
    alice = await node.user("alice")
    assert alice.user_id


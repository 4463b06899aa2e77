"""A connection that never completes its request head is closed, not held."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tongxin.cli.main import http_runner
from tongxin.config import Config


async def _closed_after(port: int, data: bytes, limit: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        got = await asyncio.wait_for(reader.read(), limit)  # EOF when the server closes
    finally:
        writer.close()
    assert got == b""  # closed without an answer: there was no request to answer


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_partial_request_line_and_silent_connection_are_closed() -> None:
    cfg = Config()
    cfg.server.http_idle_timeout = 0.5
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = http_runner(app, cfg)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        # aiohttp's default would hold both for 75 s; the bound is 0.5 s.
        # A TimeoutError here means the connection was still held after 20 s.
        await _closed_after(port, b"GET / HTTP/1.1\r\n", 20)
        await _closed_after(port, b"", 20)
        # A complete request is still answered.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await runner.cleanup()

"""Garbage on the HTTP port costs one short warning line, not a traceback at ERROR."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import NodeFactory  # type: ignore[import-not-found, unused-ignore]

from tongxin.server.http_log import MalformedRequestFilter

GARBAGE = [
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    b"GET /\x00\x1b[31m HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/9.9.9\r\n\r\n",
    # A bad method on the second request of a keep-alive connection (aiohttp
    # logs only the first one at DEBUG).
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nG\x01T / HTTP/1.1\r\n\r\n",
]


async def _send(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_garbage_logs_no_traceback_and_is_rate_limited(
        node_factory: NodeFactory, caplog: pytest.LogCaptureFixture) -> None:
    node = await node_factory()
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    for data in GARBAGE:
        # Refused with 400 (after the 200 of a keep-alive's good first request).
        assert b" 400 Bad Request\r\n" in await _send(node.port, data)
    for _ in range(40):
        await _send(node.port, GARBAGE[0])
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records, "aiohttp logged nothing: the requests were not refused"
    assert all(r.exc_info is None and r.levelno <= logging.WARNING for r in records)
    assert "Traceback" not in caplog.text
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings[0].startswith("malformed HTTP request from 127.0.0.1: ")
    assert all("\n" not in w and "\x1b" not in w for w in warnings)
    assert len(warnings) <= 10  # 44 malformed requests, one burst of lines
    # A well-formed request is still answered.
    assert (await _send(node.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                        b"Connection: close\r\n\r\n")).startswith(b"HTTP/1.1 200")


def test_filter_counts_what_it_left_out() -> None:
    from aiohttp.http_exceptions import BadStatusLine

    now = [0.0]
    f = MalformedRequestFilter(burst=2, period=60, clock=lambda: now[0])

    def rec() -> logging.LogRecord:
        exc = BadStatusLine("x")
        return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                                 "Error handling request from %s", ("10.0.0.9",),
                                 (type(exc), exc, None))

    assert [f.filter(rec()) for _ in range(5)] == [True, True, False, False, False]
    now[0] = 61.0
    r = rec()
    assert f.filter(r) and r.getMessage().endswith("(3 more since the last such line)")
    assert r.levelno == logging.WARNING and r.exc_info is None
    # A handler's own exception is a bug: left as it is.
    bug = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Unhandled", (),
                            (ValueError, ValueError("x"), None))
    assert f.filter(bug) and bug.exc_info is not None

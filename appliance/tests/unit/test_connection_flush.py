"""Outgoing frames: written by a scheduled callback, and by a task only while the
socket makes the writer wait (server/connection.py ``_flush``). Order, the queue's
accounting, failures and cancellation are what the drain task gave."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from tongxin.config import ServerConfig
from tongxin.server.connection import Connection
from tongxin.wire.codec import WireLimits


class FakeWs:
    """send_bytes like aiohttp's: writes at once, then waits for a drain when told to."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self.drain: asyncio.Future[None] | None = None  # set: the next send waits on it
        self.fail_with: BaseException | None = None

    async def send_bytes(self, data: bytes) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(data)
        if self.drain is not None:
            waiter, self.drain = self.drain, None
            await asyncio.shield(waiter)


class Spawner:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def __call__(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task


def _conn(ws: FakeWs, frames: int = 100) -> tuple[Connection, Spawner]:
    spawn = Spawner()
    metrics = SimpleNamespace(frame_out=lambda ftype: None,
                              send_queue_overflows=SimpleNamespace(inc=lambda: None),
                              closes=SimpleNamespace(labels=lambda name: SimpleNamespace(
                                  inc=lambda: None)))
    cfg = SimpleNamespace(server=ServerConfig(send_queue_frames=frames))
    node = SimpleNamespace(limits=WireLimits(), fragment_budget=None, cfg=cfg,
                           metrics=metrics, spawn=spawn)
    return Connection(ws, node, "test"), spawn  # type: ignore[arg-type]


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_frames_go_out_in_order_on_the_next_turn_without_a_task() -> None:
    ws = FakeWs()
    conn, spawn = _conn(ws)
    conn.push([b"a", b"b"], 1)
    conn.push([b"c"], 1)
    # Nothing is written inside push: a burst in one turn queues (and counts) first.
    assert ws.sent == [] and list(conn.queue) == [b"a", b"b", b"c"] and conn.queued_bytes == 3
    await _turns()
    assert ws.sent == [b"a", b"b", b"c"]
    assert not conn.queue and conn.queued_bytes == 0
    assert spawn.tasks == [] and conn.drain_task is None


async def test_a_send_that_must_wait_hands_the_rest_to_a_task_in_order() -> None:
    ws = FakeWs()
    conn, spawn = _conn(ws)
    loop = asyncio.get_running_loop()
    ws.drain = loop.create_future()
    drain = ws.drain
    conn.push([b"1", b"2", b"3"], 1)
    await _turns()
    # "1" was written and its send waits for the drain: "2" and "3" wait behind it.
    assert ws.sent == [b"1"] and list(conn.queue) == [b"2", b"3"]
    assert conn.drain_task is not None and len(spawn.tasks) == 1
    conn.push([b"4"], 1)  # while the task drains: queued to it, no new callback or task
    await _turns()
    assert ws.sent == [b"1"] and not conn.flush_scheduled
    drain.set_result(None)
    await asyncio.wait_for(spawn.tasks[0], 5)
    assert ws.sent == [b"1", b"2", b"3", b"4"]
    assert conn.drain_task is None and conn.queued_bytes == 0
    conn.push([b"5"], 1)  # afterwards the callback path again
    await _turns()
    assert ws.sent[-1] == b"5" and len(spawn.tasks) == 1


async def test_a_failed_drain_fails_the_send_and_marks_the_connection_closing() -> None:
    ws = FakeWs()
    conn, spawn = _conn(ws)
    ws.drain = asyncio.get_running_loop().create_future()
    drain = ws.drain
    conn.push([b"1", b"2"], 1)
    await _turns()
    drain.set_exception(ConnectionResetError("peer gone"))
    await asyncio.wait_for(spawn.tasks[0], 5)
    assert conn.closing and ws.sent == [b"1"] and conn.drain_task is None


async def test_a_write_error_in_the_callback_marks_the_connection_closing() -> None:
    ws = FakeWs()
    conn, _ = _conn(ws)
    ws.fail_with = ConnectionResetError("transport closing")
    conn.push([b"1"], 1)
    await _turns()
    assert conn.closing and ws.sent == []
    conn.push([b"2"], 1)  # a closing connection takes nothing more
    assert not conn.queue


async def test_cancelling_the_drain_task_reaches_the_waiting_send() -> None:
    ws = FakeWs()
    conn, spawn = _conn(ws)
    ws.drain = asyncio.get_running_loop().create_future()
    conn.push([b"1", b"2"], 1)
    await _turns()
    task = spawn.tasks[0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.drain_task is None and ws.sent == [b"1"]


async def test_nothing_is_written_to_a_closed_socket() -> None:
    ws = FakeWs()
    conn, _ = _conn(ws)
    conn.push([b"1"], 1)
    ws.closed = True
    await _turns()
    assert ws.sent == [] and list(conn.queue) == [b"1"]


async def test_real_websocket_that_must_drain_gets_every_frame_in_order() -> None:
    """aiohttp's writer really suspends on a peer that does not read: the frames
    written before, the one whose send waited, and those queued behind it all
    arrive, in order, once the peer reads."""
    import aiohttp
    from aiohttp import web

    frames = [bytes([i % 251]) * 65_536 for i in range(160)]  # 10 MiB: more than the socket buffers
    used_task: list[bool] = []
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        conn, spawn = _conn(ws, frames=1000)  # type: ignore[arg-type]
        conn.node.cfg.server.send_queue_bytes = 1 << 30
        for f in frames:
            conn.push([f], 1)
        for _ in range(3000):  # at most 30 s
            if not (conn.queue or conn.drain_task is not None or conn.flush_scheduled):
                break
            await asyncio.sleep(0.01)
        used_task.append(bool(spawn.tasks))
        await done.wait()
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"http://127.0.0.1:{port}/ws", max_msg_size=0) as ws:
            await asyncio.sleep(0.5)  # not reading: the server's writer has to wait
            got = []
            for _ in frames:
                msg = await asyncio.wait_for(ws.receive(), 10)
                got.append(msg.data)
            done.set()
        assert got == frames
        assert used_task == [True]
    finally:
        await runner.cleanup()

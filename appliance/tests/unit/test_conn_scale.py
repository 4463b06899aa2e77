"""What a held connection costs the cyclic GC, and what a mass close gets back (issue 18).

The clients run in a subprocess of their own, so that the node's process,
this one, holds only the server side of each connection when its objects are
counted. Figures are from bench/conn_objects.py; speed belongs to
bench/conn_bench.py, not here.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop
from conftest import NodeFactory  # type: ignore[import-not-found, unused-ignore]

from tongxin.server.gcschedule import GcSchedule

# Server-side objects the collector tracks per authenticated connection, after
# the first few: 68.5-70.7 measured here and 69 in bench/conn_objects.py, both under uvloop as
# `tongxin serve` runs (bench/conn_objects.py; aiohttp 3.14.5: request,
# response, reader, parser, writer, two tasks and the coroutines the idle read
# loop is suspended in; Connection, session, claims, user). The bound leaves
# room for noise, not for another task or a per-connection cache.
MAX_OBJECTS_PER_CONNECTION = 76

# A client process: opens N connections, REGISTERs each, prints "ready", then
# on "close" closes them all at once and prints the close codes it got back.
_CLIENTS = r"""
import asyncio, json, sys
import aiohttp
from tongxin.proto import tongxin_pb2 as pb
from tongxin.wire.codec import Encoder, WireLimits

async def main(url, n, prefix):
    enc = Encoder(WireLimits())
    timeout = aiohttp.ClientWSTimeout(ws_close=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def one(i):
            ws = await http.ws_connect(url, timeout=timeout)
            req = pb.RegisterRequest(username=f"{prefix}{i}", password="password-1",
                                     device_id="d")
            await ws.send_bytes(enc.encode(pb.REGISTER, 1, req.SerializeToString())[0])
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.BINARY and msg.data[1] == pb.AUTH_OK, msg
            return ws
        sem = asyncio.Semaphore(16)
        async def bounded(i):
            async with sem:
                return await one(i)
        conns = await asyncio.gather(*(bounded(i) for i in range(n)))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        async def close(ws):
            await ws.close()
            return ws.close_code
        codes = await asyncio.gather(*(close(ws) for ws in conns))
        print(json.dumps(codes), flush=True)
        sys.stdin.readline()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


class Clients:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(60):
            return (await self.proc.stdout.readline()).decode()

    async def close_all(self) -> list[int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"close\n")
        await self.proc.stdin.drain()
        codes: list[int] = json.loads(await self.line())
        return codes

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def open_clients(url: str, n: int, prefix: str) -> Clients:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLIENTS, url, str(n), prefix,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    clients = Clients(proc)
    assert (await clients.line()).strip() == "ready"
    return clients


async def settle(node: Any, n: int) -> None:
    """Until the node holds ``n`` authenticated connections (polled, not timed)."""
    for _ in range(500):
        if sum(1 for c in node.hub.all if c.session is not None) == n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the node holds {len(node.hub.all)} connections, not {n}")


@pytest.fixture
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """uvloop, as `tongxin serve` runs: asyncio's own loop leaves a reference cycle of
    6 objects per closed socket (its transport and a bound method of it), uvloop none."""
    policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
    return policy


@pytest.fixture
def thawed() -> Iterator[None]:
    """These tests freeze objects; nothing stays frozen for the next test."""
    yield
    gc.unfreeze()


async def test_objects_per_connection_stay_under_the_measured_bound(
        node_factory: NodeFactory, thawed: None) -> None:
    node = await node_factory(server={"gc_freeze": False})
    n = 100
    # First connections make one-off objects (caches, first use of code paths).
    warm = await open_clients(node.ws_url, 10, "w")
    await settle(node.node, 10)
    gc.collect()
    before = len(gc.get_objects())
    clients = await open_clients(node.ws_url, n, "o")
    try:
        await settle(node.node, n + 10)
        gc.collect()
        per_connection = (len(gc.get_objects()) - before) / n
        print(f"{per_connection:.1f} tracked objects per connection")
        assert per_connection <= MAX_OBJECTS_PER_CONNECTION, per_connection

        # The schedule freezes them: a full collection no longer examines them.
        GcSchedule(interval=1, threshold=1000).step(open_connections=n)
        assert len(gc.get_objects()) - before < n, "held connections were not frozen"
        assert gc.get_freeze_count() >= per_connection * n

        # Frozen connections that close are freed by reference counting: they
        # leave no cycles that only an (unfrozen) full collection would find.
        codes = await clients.close_all()
        assert codes == [1000] * n
        await settle(node.node, 10)
        await asyncio.sleep(0.1)  # the handlers' last steps after the close
        gc.unfreeze()
        assert gc.collect() < n, "closed connections left reference cycles"
    finally:
        await clients.stop()
        await warm.stop()


async def test_every_client_of_a_mass_close_gets_the_close_reply(
        node_factory: NodeFactory) -> None:
    node = await node_factory()
    n = 300
    clients = await open_clients(node.ws_url, n, "m")
    try:
        await settle(node.node, n)
        # All close at once: each must get the server's close frame (1000), not
        # give up on it (aiohttp's client then reports 1006).
        assert await clients.close_all() == [1000] * n
        await settle(node.node, 0)
    finally:
        await clients.stop()


def test_schedule_collects_and_freezes_once_generation_2_has_grown(thawed: None) -> None:
    schedule = GcSchedule(interval=1, threshold=5000)
    gc.collect()
    schedule.step(open_connections=0)
    frozen = gc.get_freeze_count()
    held = [[i] for i in range(10000)]
    gc.collect()  # now in generation 2
    schedule.step(open_connections=0)
    assert schedule.freezes >= 1
    assert gc.get_freeze_count() >= frozen + len(held)
    assert len(gc.get_objects(2)) < 5000


def test_heap_is_trimmed_after_a_mass_disconnect_only() -> None:
    schedule = GcSchedule(interval=1, threshold=10**9, trim_after=10)
    if schedule._trim is None:
        pytest.skip("no malloc_trim (not glibc)")
    for _ in range(10):
        schedule.closed()
    schedule.step(open_connections=50)  # fewer closed than still open: ordinary churn
    assert schedule.trims == 0
    schedule.step(open_connections=5)
    assert schedule.trims == 1
    assert schedule.closed_since_trim == 0

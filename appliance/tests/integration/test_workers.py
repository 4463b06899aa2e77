"""``server.workers: 2``: one ``tongxin serve`` supervising two node processes
that share the port (SO_REUSEPORT), on Kafka + Redis with one SQLite store.

* the kernel spreads connections over both workers (each answers /healthz
  with its own node id, ``<node_id>/w<i>``);
* two users whose connections landed on different workers chat (the
  delivery crosses workers through Kafka, routed by Redis presence);
* a worker killed with SIGKILL is restarted by the supervisor, and the
  restarted worker serves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from engines import free_port, isolated_backends, service_env, services
from redis.asyncio.cluster import RedisCluster
from test_multinode import login, next_chat

from tongxin.client import Client
from tongxin.presence.redis_presence import parse_nodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, str]]:
    services("start", "redis", "kafka")
    yield service_env()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


async def _node_ids(url: str, tries: int) -> set[str]:
    """Node ids answering /healthz over ``tries`` fresh TCP connections."""
    seen: set[str] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(tries):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/healthz") as r:
                    seen.add((await r.json())["node"])
    return seen


def _spawn_supervisor(cfg_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tongxin.cli.main", "serve", "--config",
                                 str(cfg_path)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.fixture
async def workers(engines: dict[str, str], tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    port = free_port()
    config: dict[str, Any] = {**isolated_backends(engines)}
    config.update({
        "data_dir": str(tmp_path / "data"), "node_id": "mp",
        "server": {"listen": f"127.0.0.1:{port}", "workers": 2, "gc_freeze": False},
        "accounts": {"scrypt_n": 1024, "self_registration": True},
        "logging": {"level": "info", "json": True},
    })
    cfg_path = tmp_path / "tongxin.yml"
    cfg_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = tmp_path / "serve.log"
    proc = _spawn_supervisor(cfg_path, log)
    url = f"http://127.0.0.1:{port}"
    redis = RedisCluster(startup_nodes=parse_nodes(engines["TONGXIN_REDIS_NODES"]),
                         decode_responses=True)
    try:
        deadline = time.monotonic() + 90
        while await _node_ids(url, 8) != {"mp/w0", "mp/w1"}:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"workers did not come up:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.5)
        yield {"proc": proc, "url": url, "ws": f"ws://127.0.0.1:{port}/ws", "log": log,
               "redis": redis, "prefix": config["presence"]["key_prefix"]}
    finally:
        await redis.aclose()
        workers_left = _children(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the supervisor forwards it to the workers
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in workers_left:  # by PID, in case a worker outlived its supervisor
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _node_of(w: dict[str, Any], c: Client) -> str:
    """The worker holding this connection, from Redis presence (device -> node)."""
    key = f"{w['prefix']}:{{{c.user_id}}}:dev"
    for _ in range(50):
        node = await w["redis"].hget(key, c.device_id)
        if node:
            return str(node)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no presence entry for {c.user_id}/{c.device_id}")


async def _on_other_worker(w: dict[str, Any], username: str, avoid: str,
                           register: bool) -> tuple[Client, str]:
    for i in range(40):
        c = await login(w["ws"], username, f"d{i}", register=register and i == 0)
        node = await _node_of(w, c)
        if node != avoid:
            return c, node
        await c.close()
    raise AssertionError(f"40 connections all landed on {avoid}")


async def test_two_workers_share_the_port_and_restart(workers: dict[str, Any]) -> None:
    w = workers
    assert await _node_ids(w["url"], 16) == {"mp/w0", "mp/w1"}

    alice = await login(w["ws"], "alice", "pc", register=True)
    alice_node = await _node_of(w, alice)
    bob, bob_node = await _on_other_worker(w, "bob", alice_node, register=True)
    assert {alice_node, bob_node} == {"mp/w0", "mp/w1"}
    try:
        conv = (await alice.direct("bob")).conversation_id
        ack = await alice.send_text(conv, "across workers")
        got = await next_chat(bob)
        assert (got.content.text, got.seq) == ("across workers", ack.seq)

        # SIGKILL bob's worker: the supervisor notices and starts it again.
        before = _children(w["proc"].pid)
        assert len(before) == 2
        victim = next(pid for pid in before if _worker_index(pid) == int(bob_node[-1]))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            now = _children(w["proc"].pid)
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() < deadline, f"worker not restarted: {now}"
            await asyncio.sleep(0.2)
        assert "exited with -9; restarting" in w["log"].read_text()
        deadline = time.monotonic() + 60
        while await _node_ids(w["url"], 8) != {"mp/w0", "mp/w1"}:
            assert time.monotonic() < deadline, "the restarted worker does not answer"
            await asyncio.sleep(0.5)

        # Bob reconnects and lands on the restarted worker; chat works across again.
        await bob.close()
        bob, node = await _on_other_worker(w, "bob", alice_node, register=False)
        assert node == bob_node
        ack = await alice.send_text(conv, "after the restart")
        got = await next_chat(bob)
        # Bob's new device may first be sent what it never had (seq 2, delivered to the
        # device it replaced): catching up is right; the new message must follow.
        while got.seq < ack.seq:
            assert got.content.text == "across workers", got
            got = await next_chat(bob)
        assert (got.content.text, got.seq) == ("after the restart", ack.seq)
        assert w["proc"].poll() is None  # the supervisor itself carried on
    finally:
        await alice.close()
        await bob.close()


def _worker_index(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for item in env:
        if item.startswith(b"TONGXIN_WORKER="):
            return int(item.split(b"=", 1)[1])
    raise AssertionError(f"pid {pid} is not a worker")

"""The SDK given several entry points (docs/protocol.md section 15), on real nodes.

Two node processes share a fresh MariaDB database (TiDB's stand-in), Kafka topics,
Redis keys and the token key: two entries of one installation, as dc1 and dc2 are.
The DR standby is played by a tiny aiohttp app that answers every request, the
WebSocket upgrade included, with 503 ``{"reason": "standby"}`` as a standby node
does; a closed port plays an entry that refuses connections. A TCP relay in front
of one node plays a load balancer that can swallow the node's answers and then cut
the connection, which loses an ACK after its message was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from engines import (
    NodeProcess,
    create_mysql_database,
    drop_mysql_database,
    free_port,
    isolated_backends,
    service_env,
    services,
    start_node_process,
)

from tongxin.client import (
    CONNECTION_LOST,
    RECONNECT_FAILED,
    RECONNECTED,
    Backoff,
    Client,
    ConnectionClosed,
    ConnectionEvent,
    NoEndpointAvailable,
    pb,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PASSWORD = "password-1"


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, str]]:
    services("start", "redis", "kafka", "mariadb")
    yield service_env()


@pytest.fixture
async def entries(engines: dict[str, str], tmp_path: Path) -> AsyncIterator[list[NodeProcess]]:
    """dc1 and dc2: two nodes of one installation."""
    server_dsn = engines["TONGXIN_MYSQL_DSN"]
    dsn = await create_mysql_database(server_dsn)
    config = isolated_backends(engines)
    config["storage"] = {"backend": "mysql", "mysql_dsn": dsn, "mysql_pool_size": 8}
    home = tmp_path / "shared"  # one token key for every node, as in production
    nodes: list[NodeProcess] = []
    try:
        for name in ("dc1", "dc2"):
            nodes.append(await start_node_process(name, home, config, tmp_path))
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        await drop_mysql_database(server_dsn, dsn)


@pytest.fixture
async def standby() -> AsyncIterator[str]:
    """A DR entry before promotion: 503 standby to /readyz and to the upgrade."""
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"ready": False, "reason": "standby"}, status=503)

    app = web.Application()
    app.router.add_get("/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        await runner.cleanup()


class Relay:
    """A TCP relay to one node; ``mute`` drops what the node sends, ``cut`` aborts
    every relayed connection (an entry whose link dies)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mute = False
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, down: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if down and self.mute:
                        continue
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    def cut(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def closed_port_url() -> str:
    return f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there


async def register(url: str, username: str) -> None:
    async with Client(url, device_id="setup") as c:
        await c.register(username, PASSWORD)


async def stored(reader: Client, conv: str, client_msg_id: str, within: float = 20.0) -> list[int]:
    """Seqs of the entries with ``client_msg_id`` (waits until there is one)."""
    deadline = time.monotonic() + within
    while True:
        seqs = [m.seq for m in await reader.sync_all(conv) if m.client_msg_id == client_msg_id]
        if seqs or time.monotonic() > deadline:
            return seqs
        await asyncio.sleep(0.1)


async def test_killed_entry_client_moves_on_with_its_token_and_misses_nothing(
        entries: list[NodeProcess]) -> None:
    dc1, dc2 = entries
    await register(dc2.ws_url, "bob")
    await register(dc2.ws_url, "alice")
    changes: list[ConnectionEvent] = []
    bob = Client([dc1.ws_url, dc2.ws_url], device_id="bob-laptop",
                 reconnect=Backoff(deadline=60.0), on_reconnect=changes.append)
    await bob.connect()
    assert bob.endpoint == dc1.ws_url  # the first entry of the list answers
    await bob.login("bob", PASSWORD)
    token = bob.auth.token if bob.auth else ""

    alice = Client(dc2.ws_url, device_id="alice-pc")  # the other user, on the live entry
    await alice.connect()
    await alice.login("alice", PASSWORD)
    conv = (await alice.direct("bob")).conversation_id
    await bob.conversations()  # bob knows the conversation before anything is sent

    total = 60
    got: list[str] = []
    events: list[int] = []

    async def read() -> None:
        while len(set(got)) < total:
            ev = await bob.next_event(pb.DELIVER, CONNECTION_LOST, RECONNECTED, wait=60)
            events.append(ev.type)
            if ev.type == pb.DELIVER and ev.message.kind == pb.CHAT:
                got.append(ev.message.content.text)

    reader = asyncio.create_task(read())
    try:
        for i in range(total):
            if i == 20:
                dc1.kill9()  # bob's entry dies mid-stream, no goodbye
            await alice.send_text(conv, f"m{i:03d}", client_msg_id=f"alice-{i}")
            await asyncio.sleep(0.02)
        await asyncio.wait_for(reader, 60)
    finally:
        reader.cancel()
        await alice.close()

    # Every message exactly once, none lost while bob was away.
    assert Counter(got) == Counter(f"m{i:03d}" for i in range(total))
    assert dc1.proc.returncode == -9
    # He moved to the other entry by himself, with the token he held (he never had
    # the password again), and said so.
    assert bob.endpoint == dc2.ws_url and bob.reconnects == 1
    assert bob.auth is not None and bob.auth.token == token
    assert [c.kind for c in changes] == [CONNECTION_LOST, RECONNECTED]
    assert changes[0].endpoint == dc1.ws_url
    assert changes[1].moved and changes[1].endpoint == dc2.ws_url
    assert events.index(CONNECTION_LOST) < events.index(RECONNECTED)
    # Requests go on over the new entry.
    ack = await bob.send_text(conv, "still here")
    assert ack.seq > total
    await bob.close()


async def test_send_whose_ack_was_lost_is_stored_once(entries: list[NodeProcess]) -> None:
    dc1, dc2 = entries
    await register(dc2.ws_url, "carol")
    await register(dc2.ws_url, "dave")
    relay = Relay(dc1.port)  # carol's first entry: dc1 behind a load balancer
    await relay.start()
    dave = Client(dc2.ws_url, device_id="dave-pc")
    carol = Client([relay.ws_url, dc2.ws_url], device_id="carol-phone")
    try:
        await carol.connect()
        await carol.login("carol", PASSWORD)
        conv = (await carol.direct("dave")).conversation_id
        await dave.connect()
        await dave.login("dave", PASSWORD)

        relay.mute = True  # dc1 will store the message, but its ACK never arrives
        sending = asyncio.create_task(carol.send_text(conv, "once only", client_msg_id="c-1"))
        seqs = await stored(dave, conv, "c-1")
        assert len(seqs) == 1 and not sending.done()
        relay.cut()  # and then the connection is gone

        ack = await asyncio.wait_for(sending, 30)
        # The same client_msg_id went again through dc2, which answered from the log:
        # the ACK names the one stored entry, and nothing was stored twice.
        assert carol.endpoint == dc2.ws_url
        assert ack.seq == seqs[0] and ack.client_msg_id == "c-1"
        assert await stored(dave, conv, "c-1") == seqs
        # And the DELIVER to dave happened once (the re-send pushes nothing new
        # that the SDK would pass on twice).
        pushed = [ev.message.seq for ev in dave.drain_events()
                  if ev.type == pb.DELIVER and ev.message.client_msg_id == "c-1"]
        assert pushed in ([], seqs)
    finally:
        await carol.close()
        await dave.close()
        await relay.close()


async def test_refused_and_standby_entries_are_skipped(entries: list[NodeProcess],
                                                       standby: str) -> None:
    dc1, dc2 = entries
    await register(dc2.ws_url, "erin")
    refused = closed_port_url()

    # Connecting: the refused entry and the standby are passed over, in order.
    first = Client([refused, standby, dc2.ws_url], device_id="erin-1")
    await first.connect()
    assert first.endpoint == dc2.ws_url
    await first.login("erin", PASSWORD)
    await first.close()

    # Nothing answers: one error that says why for each entry.
    with pytest.raises(NoEndpointAvailable) as info:
        await Client([refused, standby], device_id="erin-x").connect()
    assert "HTTP 503" in str(info.value) and len(info.value.failures) == 2

    # Reconnecting: round robin from the entry lost, over the refused one and the
    # standby, to the one that answers.
    changes: list[ConnectionEvent] = []
    c = Client([dc1.ws_url, refused, standby, dc2.ws_url], device_id="erin-2",
               reconnect=Backoff(initial=0.05, deadline=30.0), on_reconnect=changes.append)
    await c.connect()
    await c.login("erin", PASSWORD)
    assert c.endpoint == dc1.ws_url
    dc1.kill9()
    ev = await c.next_event(RECONNECTED, wait=30)
    assert ev.message.endpoint == dc2.ws_url and ev.message.attempts == 3
    assert [x.kind for x in changes] == [CONNECTION_LOST, RECONNECTED]
    assert (await c.ping()).server_time_ms > 0
    await c.close()


async def test_a_refused_resume_ends_reconnecting(entries: list[NodeProcess]) -> None:
    """A token the installation no longer accepts is not retried on every entry."""
    dc1, dc2 = entries
    await register(dc2.ws_url, "frank")
    c = Client([dc1.ws_url, dc2.ws_url], device_id="frank-1",
               reconnect=Backoff(initial=0.05, deadline=30.0))
    await c.connect()
    await c.login("frank", PASSWORD)
    assert c.auth is not None
    c.auth.token = "v1.forged.token"
    dc1.kill9()
    ev = await c.next_event(RECONNECT_FAILED, wait=30)
    assert "TOKEN_INVALID" in ev.message.error
    assert ev.message.attempts == 1
    with pytest.raises(ConnectionClosed, match="reconnect failed"):
        await c.ping()
    await c.close()


async def _read_until(proc: asyncio.subprocess.Process, needle: str,
                      wait: float = 30.0) -> list[str]:
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(wait):
            while True:
                raw = await proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"chat ended before {needle!r}: {lines}")
                lines.append(raw.decode())
                if needle in lines[-1]:
                    return lines
    except TimeoutError:
        raise AssertionError(f"no {needle!r} within {wait}s: {lines}") from None


async def test_terminal_chat_moves_to_the_next_entry_and_says_so(
        entries: list[NodeProcess]) -> None:
    dc1, dc2 = entries
    await register(dc2.ws_url, "gina")
    await register(dc2.ws_url, "hugo")
    hugo = Client(dc2.ws_url, device_id="hugo-pc")
    await hugo.connect()
    await hugo.login("hugo", PASSWORD)
    conv = (await hugo.direct("gina")).conversation_id
    # The list form and the repeated option together: a refused entry is skipped.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", "chat", "--url",
        f"{closed_port_url()},{dc1.ws_url}", "--url", dc2.ws_url, "--user", "gina",
        "--password-stdin", "--to", "hugo", "--device", "cli-gina",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "TONGXIN_LANG": "en"})  # the lines below are the English ones
    try:
        assert proc.stdin is not None
        proc.stdin.write(f"{PASSWORD}\n".encode())
        await proc.stdin.drain()
        first = await _read_until(proc, "-- now chatting with hugo")
        assert any(f"logged in as gina via {dc1.ws_url}" in line for line in first)
        await hugo.send_text(conv, "before the outage")
        await _read_until(proc, "hugo: before the outage")

        dc1.kill9()
        await hugo.send_text(conv, "while you were away")
        moved = await _read_until(proc, "已切换到备用入口")
        assert any("连接已断开" in line for line in moved)
        assert dc2.ws_url in moved[-1]
        await _read_until(proc, "hugo: while you were away")

        proc.stdin.write(b"back on dc2\n")
        await proc.stdin.drain()
        await _read_until(proc, "sent #")
        ev = await hugo.next_event(pb.DELIVER, wait=20)
        assert ev.message.content.text == "back on dc2"
        proc.stdin.write(b"/quit\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await hugo.close()


async def test_info_publishes_the_entry_list_in_order(node_factory: Any) -> None:
    entries_list = "wss://im-dc1.example.cn/ws, wss://im-dc2.example.cn/ws,wss://im-dr.example.cn/ws"
    node = await node_factory(server={"client_endpoints": entries_list})
    plain = await node_factory()
    async with aiohttp.ClientSession() as http:
        async with http.get(node.http_url + "/api/v1/info") as r:
            body = await r.json()
        async with http.get(plain.http_url + "/api/v1/info") as r:
            default = await r.json()
    assert body["endpoints"] == ["wss://im-dc1.example.cn/ws", "wss://im-dc2.example.cn/ws",
                                 "wss://im-dr.example.cn/ws"]
    assert default["endpoints"] == []  # only the entry the client came through

"""Ordered database endpoints against the real MariaDB (scripts/services.sh).

The DSN's first endpoint is a TCP proxy in front of MariaDB, the second is
MariaDB itself: both reach the same database, as two Galera members would.
Cutting the proxy (listener closed, every connection reset) plays the
preferred member's site going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import asyncmy
import pytest
from engines import free_port, service_env, services
from prometheus_client import CollectorRegistry, generate_latest

from tongxin.site.metrics import register_endpoint_metrics
from tongxin.store.dsn import MysqlDsn, parse_dsn
from tongxin.store.mysql_store import MysqlStore
from tongxin.store.ports import ConversationRow, Entry, Unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass
class Proxy:
    """Forwards 127.0.0.1:port to the target until cut."""

    target: tuple[str, int]
    port: int = field(default_factory=free_port)
    accepted: int = 0
    _server: asyncio.Server | None = None
    _transports: set[asyncio.Transport] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer.transport, up_writer.transport)
        self._transports.update(pair)  # type: ignore[arg-type]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._transports.difference_update(pair)

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        assert self._server is not None
        self._server.close()
        for t in list(self._transports):
            t.abort()
        await self._server.wait_closed()


@pytest.fixture(scope="module")
def mariadb() -> Iterator[MysqlDsn]:
    services("start", "mariadb")
    yield parse_dsn(service_env()["TONGXIN_MYSQL_DSN"])


async def _admin(server: MysqlDsn, sql: str) -> None:
    conn = await asyncmy.connect(host=server.host, port=server.port, user=server.user,
                                 password=server.password, database=server.database,
                                 autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
async def database(mariadb: MysqlDsn) -> AsyncIterator[str]:
    name = f"tongxin_t_{uuid.uuid4().hex[:12]}"
    await _admin(mariadb, f"CREATE DATABASE `{name}`")
    yield name
    await _admin(mariadb, f"DROP DATABASE IF EXISTS `{name}`")


def _dsn(server: MysqlDsn, hosts: list[str], database: str) -> MysqlDsn:
    return parse_dsn(f"mysql://{quote(server.user, safe='')}:{quote(server.password, safe='')}@"
                     f"{','.join(hosts)}/{database}")


def _endpoint_metric(registry: CollectorRegistry) -> tuple[str, float]:
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("tongxin_db_endpoint_index{"):
            label = line.split('endpoint="', 1)[1].split('"', 1)[0]
            return label, float(line.rsplit(" ", 1)[1])
    raise AssertionError("no tongxin_db_endpoint_index sample")


def _entry(cid: str) -> Entry:
    return Entry(conversation_id="c1", sender_id="u_a", sender_device="d", client_msg_id=cid,
                 sent_at=1, kind=1, content=cid.encode())


async def test_failover_to_the_next_endpoint_and_back(mariadb: MysqlDsn, database: str) -> None:
    proxy = Proxy((mariadb.host, mariadb.port))
    await proxy.start()
    direct = f"{mariadb.host}:{mariadb.port}"
    dsn = _dsn(mariadb, [f"127.0.0.1:{proxy.port}", direct], database)
    store = MysqlStore(dsn, pool_size=4, timeout=3.0, failback_after=1.0)
    registry = CollectorRegistry()
    register_endpoint_metrics(registry, store)
    await store.open()
    try:
        assert store.endpoints is not None
        assert _endpoint_metric(registry) == (f"127.0.0.1:{proxy.port}", 0.0)
        await store.create_conversation(ConversationRow("c1", 1, "", 1, "u_a", 0, 0),
                                        [("u_a", 1), ("u_b", 1)], _entry("create"))
        for i in range(5):
            await store.append(_entry(f"before-{i}"))
        assert proxy.accepted >= 1

        await proxy.cut()
        # The operation that meets the dead endpoint may fail (the client re-sends it);
        # the one after it goes to the second endpoint and succeeds.
        failures = 0
        for i in range(5):
            for _attempt in range(2):
                try:
                    await store.append(_entry(f"after-{i}"))
                    break
                except Unavailable:
                    failures += 1
            else:
                raise AssertionError(f"after-{i} failed twice in a row")
        assert failures <= 1
        assert store.endpoints.index == 1
        assert _endpoint_metric(registry) == (direct, 1.0)
        # Nothing lost, nothing twice, seqs dense across the move.
        stored = await store.entries_after("c1", 0, 100)
        assert [e.client_msg_id for e in stored] == (
            ["create"] + [f"before-{i}" for i in range(5)] + [f"after-{i}" for i in range(5)])
        assert [e.seq for e in stored] == list(range(1, 12))

        # The preferred endpoint returns: within failback_after (plus a probe) the pool
        # moves back, so every node converges on the first endpoint again.
        proxy = Proxy((mariadb.host, mariadb.port), port=proxy.port)
        await proxy.start()
        deadline = time.monotonic() + 10
        while store.endpoints.index != 0:
            assert time.monotonic() < deadline, "never moved back to the preferred endpoint"
            assert await store.ping()
            await asyncio.sleep(0.1)
        assert _endpoint_metric(registry) == (f"127.0.0.1:{proxy.port}", 0.0)
        before = proxy.accepted
        await store.append(_entry("back"))
        assert proxy.accepted >= before and proxy.accepted >= 1
        assert store.endpoints.switches == 2
        assert "tongxin_db_endpoint_switches_total 2.0" in generate_latest(registry).decode()
    finally:
        await store.close()
        with contextlib.suppress(Exception):
            await proxy.cut()


async def test_a_dead_first_endpoint_is_skipped_at_start(mariadb: MysqlDsn,
                                                         database: str) -> None:
    closed = free_port()  # nothing listens here: connections are refused
    direct = f"{mariadb.host}:{mariadb.port}"
    store = MysqlStore(_dsn(mariadb, [f"127.0.0.1:{closed}", direct], database),
                       pool_size=2, timeout=3.0)
    registry = CollectorRegistry()
    register_endpoint_metrics(registry, store)
    await store.open()  # migrates through the second endpoint
    try:
        assert store.endpoints is not None and store.endpoints.index == 1
        assert _endpoint_metric(registry) == (direct, 1.0)
        assert await store.schema_version() >= 5
        await store.write_heartbeat("n1", "dc1", 1234)
        assert await store.newest_heartbeat() == ("n1", "dc1", 1234)
    finally:
        await store.close()


async def test_no_endpoint_answers(mariadb: MysqlDsn, database: str) -> None:
    a, b = free_port(), free_port()
    store = MysqlStore(_dsn(mariadb, [f"127.0.0.1:{a}", f"127.0.0.1:{b}"], database),
                       pool_size=1, timeout=2.0)
    with pytest.raises(Unavailable) as info:
        await store.open()
    message = str(info.value)
    assert f"127.0.0.1:{a}" in message and f"127.0.0.1:{b}" in message
    assert mariadb.password not in message

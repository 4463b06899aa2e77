"""E2EE on the production path: MySQL protocol (MariaDB for TiDB), Kafka and Redis Cluster
from services.sh, with a database, topics and keys of this test's own. Two users with two
devices each exchange E2EE messages 1:1 and in a group (with a member removed); afterwards
neither the database tables nor the Kafka topics' bytes hold any of the plaintexts, while a
plaintext control message is found in both (so the search itself works)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncmy
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]
from engines import (
    create_mysql_database,
    drop_mysql_database,
    isolated_backends,
    service_env,
    services,
)
from test_e2ee_chat import device, next_opened

from tongxin.client import pb
from tongxin.e2ee import NoSenderKeyError
from tongxin.store.dsn import parse_dsn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, str]]:
    services("start", "redis", "kafka", "mariadb")
    yield service_env()


@pytest.fixture
async def mysql_dsn(engines: dict[str, str]) -> AsyncIterator[str]:
    """A database of this test's own; requested before node_factory, so that it is
    dropped only after the node has stopped."""
    server_dsn = engines["TONGXIN_MYSQL_DSN"]
    dsn = await create_mysql_database(server_dsn)
    yield dsn
    await drop_mysql_database(server_dsn, dsn)


async def table_bytes(dsn: str) -> bytes:
    """Every value of every row of every table in the test database."""
    d = parse_dsn(dsn)
    conn = await asyncmy.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                                 database=d.database)
    out = bytearray()
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = %s", (d.database,))
            tables = [r[0] for r in await cur.fetchall()]
            assert "messages" in tables and "e2ee_devices" in tables
            for t in tables:
                await cur.execute(f"SELECT * FROM `{t}`")
                for row in await cur.fetchall():
                    for v in row:
                        out += v if isinstance(v, bytes | bytearray) else str(v).encode()
    finally:
        conn.close()
    return bytes(out)


async def topic_bytes(bootstrap: str, prefix: str) -> bytes:
    """Every record (key and value) on every topic whose name starts with ``prefix``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    parts = [TopicPartition(d["topic"], p["partition"]) for d in described
             for p in d["partitions"]]
    assert topics and parts
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    out = bytearray()
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        async with asyncio.timeout(60):
            while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for r in records:
                        out += (r.key or b"") + (r.value or b"")
    finally:
        await consumer.stop()
    return bytes(out)


async def test_e2ee_on_mysql_kafka_redis_leaves_no_plaintext(
        engines: dict[str, str], mysql_dsn: str, node_factory: NodeFactory,
        tmp_path: Path) -> None:
    dsn = mysql_dsn
    backends = isolated_backends(engines)
    prefix = backends["kafka"]["topic_prefix"]
    rn: RunningNode = await node_factory(
        storage={"backend": "mysql", "mysql_dsn": dsn, "mysql_pool_size": 8,
                 "encryption": False},  # only E2EE may keep plaintext out
        **backends)
    keys = tmp_path / "client-keys"
    a1, a2 = await device(rn, "alice", "a1", keys), await device(rn, "alice", "a2", keys)
    b1, b2 = await device(rn, "bob", "b1", keys), await device(rn, "bob", "b2", keys)
    c1 = await device(rn, "carol", "c1", keys)
    tag = uuid.uuid4().hex
    secrets = []

    conv = (await a1.client.direct("bob")).conversation_id
    for i, (sender, readers) in enumerate([(a1, (a2, b1, b2)), (b2, (a1, a2, b1)),
                                           (a2, (a1, b1, b2))]):
        text = f"prod-direct-{i}-{tag}"
        secrets.append(text)
        await sender.send_text(conv, text)
        for r in readers:
            _, got = await next_opened(r)
            assert got.payload.text == text

    group = (await a1.client.create_group("ops", ["bob", "carol"])).conversation_id
    text = f"prod-group-1-{tag}"
    secrets.append(text)
    await b1.send_text(group, text)
    for r in (a1, a2, b2, c1):
        _, got = await next_opened(r)
        assert got.payload.text == text
    await a1.change_members(group, pb.MemberChange.REMOVE, ["carol"])
    text = f"prod-group-2-{tag}"
    secrets.append(text)
    await b1.send_text(group, text)
    for r in (a1, a2):
        msg, got = await next_opened(r)
        assert got.payload.text == text
    with pytest.raises(NoSenderKeyError):
        await c1.open(msg)

    control = f"prod-control-plaintext-{tag}"
    await a1.client.send_text(conv, control)
    _ = await b1.client.next_event(pb.DELIVER)

    rows = await table_bytes(dsn)
    topics = await topic_bytes(backends["kafka"]["bootstrap_servers"], prefix)
    assert control.encode() in rows and control.encode() in topics
    for s in secrets:
        assert s.encode() not in rows, s
        assert s.encode() not in topics, s

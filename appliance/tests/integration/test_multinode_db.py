"""The database fails under two nodes: MariaDB or TiDB + Kafka + Redis.

Run once per MySQL-protocol engine of services.sh (engines.py: MariaDB, and
tidb-server with its embedded unistore storage, which stands for the whole of a
TiDB cluster here: killing it is losing every TiDB server and TiKV at once;
engines.py says what keeps unistore from losing acknowledged rows then).
Two node processes share a fresh MySQL-protocol database, Kafka topics and
Redis keys of their own. A sender on one node streams numbered messages to a
reader on the other; mid-stream the database is killed with SIGKILL (no
clean shutdown, as a crashed server or a lost host) and restarted a few
seconds later. The contract:

* while it is down, a send fails with UNAVAILABLE ("message not stored") and
  no ACK arrives for a message sent in that time;
* nothing is ACKed that is not stored: every ACK's seq holds that message,
  exactly once, in the order the ACKs came;
* when the database returns the nodes serve again without a restart, and the
  sender's retries (same client_msg_id) complete the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from engines import (
    DB_ENGINES,
    NodeProcess,
    create_mysql_database,
    db_engine,
    drop_mysql_database,
    isolated_backends,
    kill_database,
    service_env,
    services,
    start_database,
    start_node_process,
)
from test_multinode import ResilientSender, chat_entries, login, next_chat

from tongxin.checker import DeliveryChecker
from tongxin.client import Client, TongxinError, pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module", params=DB_ENGINES)
def engines(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """services.sh's environment, with ``DB`` naming the database engine under test."""
    services("start", "redis", "kafka", request.param)
    yield {**service_env(), "DB": str(request.param)}


@pytest.fixture
async def db_cluster(engines: dict[str, str], tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    server_dsn = engines[db_engine(engines["DB"]).dsn_var]
    dsn = await create_mysql_database(server_dsn)
    config = isolated_backends(engines)
    config["storage"] = {"backend": "mysql", "mysql_dsn": dsn, "mysql_pool_size": 8,
                         "mysql_timeout": 3.0}
    home = tmp_path / "shared"  # the token key (and files/compliance SQLite) are shared
    nodes: list[NodeProcess] = []
    try:
        for name in ("db-node-a", "db-node-b"):
            nodes.append(await start_node_process(name, home, config, tmp_path))
        yield {"nodes": nodes, "dsn": dsn}
    finally:
        for n in nodes:
            n.stop()
        start_database(engines["DB"])  # never leave the database down for other tests
        await drop_mysql_database(server_dsn, dsn)


async def _ready(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as r:
        return r.status


async def test_database_crash_mid_stream(db_cluster: dict[str, Any],
                                         engines: dict[str, str]) -> None:
    a, b = db_cluster["nodes"]
    db = engines["DB"]
    await (await login(b.ws_url, "bob", "pc", register=True)).close()
    alice = await login(a.ws_url, "alice", "pc", register=True)
    conv = (await alice.direct("bob")).conversation_id
    await alice.close()

    checker = DeliveryChecker()
    sender = ResilientSender([a.ws_url, b.ws_url], "alice", conv, checker)
    bob = await login(b.ws_url, "bob", "pc")
    seen: list[pb.Message] = []

    async def read_live() -> None:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            while True:
                seen.append(await next_chat(bob, wait=60))

    reader = asyncio.create_task(read_live())
    total, crash_at, outage = 90, 30, 3.0
    down: dict[str, float] = {}
    restart: asyncio.Task[None] | None = None

    async def restart_later() -> None:
        # The sender keeps retrying against a dead database, then it returns.
        await asyncio.sleep(outage)
        down["until"] = time.monotonic()
        await asyncio.to_thread(start_database, db)

    try:
        for i in range(total):
            if i == crash_at:
                await asyncio.to_thread(kill_database, db)
                down["from"] = time.monotonic()
                restart = asyncio.create_task(restart_later())
                # The refusal is immediate and says what happened.
                assert sender.client is not None
                with pytest.raises(TongxinError) as info:
                    await asyncio.wait_for(sender.client.send_text(
                        conv, "during outage", client_msg_id="alice-outage"), 10)
                assert info.value.code == pb.UNAVAILABLE
                assert "not stored" in info.value.message
                assert info.value.retry_after_ms > 0
                assert await _ready(a.http_url) == 503 and await _ready(b.http_url) == 503
                # A login needs the store too: the same clear answer, not INTERNAL.
                other = Client(b.ws_url, device_id="tablet")
                await other.connect()
                try:
                    with pytest.raises(TongxinError) as info:
                        await asyncio.wait_for(other.login("bob", "password-1"), 10)
                    assert info.value.code == pb.UNAVAILABLE
                finally:
                    await other.close()
            await sender.send(i)  # retries (same client_msg_id) until it is ACKed
        assert restart is not None
        await restart
    finally:
        if restart is None:
            start_database(db)
        elif not restart.done():
            await restart
        if sender.client is not None:
            await sender.client.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    # Nothing was ACKed while the database was down (half a second of grace
    # for answers to commits that completed just before the kill).
    outage_ms = (down["from"] + 0.5, down["until"])
    t0_ms = time.time() * 1000 - time.monotonic() * 1000
    during = [x.client_msg_id for x in checker.acks
              if outage_ms[0] * 1000 < x.acked_at_ms - t0_ms < outage_ms[1] * 1000]
    assert not during, f"ACKed while the database was down: {during}"
    # Every failure the sender saw was the clear one.
    assert sender.errors, "the outage made no send fail"
    assert set(sender.errors) == {"UNAVAILABLE"}, sender.errors
    assert await _ready(a.http_url) == 200 and await _ready(b.http_url) == 200

    for m in seen:
        checker.record_seen("bob", m.conversation_id, m.seq)
    log = await chat_entries(bob, conv)
    for m in log:
        checker.record_seen("bob", m.conversation_id, m.seq)
    report = checker.check({conv: log}, readers=["bob"])
    assert report.ok, report.summary()
    assert report.acked == total
    # The probe sent during the outage was refused, not stored; its re-send
    # now is stored once.
    cids = [m.client_msg_id for m in log]
    assert "alice-outage" not in cids
    assert cids == [f"alice-{i}" for i in range(total)]  # in order, each once
    resend = await login(a.ws_url, "alice", "pc")
    ack = await resend.send_text(conv, "during outage", client_msg_id="alice-outage")
    again = await resend.send_text(conv, "during outage", client_msg_id="alice-outage")
    assert not ack.duplicate and again.duplicate and again.seq == ack.seq
    await resend.close()
    await bob.close()

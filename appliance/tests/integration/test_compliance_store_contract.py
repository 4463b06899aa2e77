"""The ComplianceStore contract, run against both adapters.

``sqlite`` is one node's ``compliance.db``; ``mariadb`` and ``tidb`` are the
shared adapter on the real engines scripts/services.sh starts (engines.py), each
test in a database of its own. Opening a second store over the same data is, on
MySQL, a second node; on SQLite a second process of the same node (a CLI beside
it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from asyncmy.cursors import Cursor
from engines import DB_ENGINES, create_mysql_database, drop_mysql_database, start_database

from tongxin.compliance import chain
from tongxin.compliance.mysql_store import MysqlComplianceStore
from tongxin.compliance.ports import AdminSession, ComplianceStore, SmsCode, SmsPhone, TotpRow
from tongxin.compliance.sqlite_store import SqliteComplianceStore
from tongxin.store.ports import StoreError

pytestmark = pytest.mark.integration

Opener = Callable[[], Awaitable[ComplianceStore]]


async def _opener(backend: str, tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[ComplianceStore] = []
    server = dsn = ""
    if backend != "sqlite":
        server = await asyncio.to_thread(start_database, backend)
        dsn = await create_mysql_database(server)

    async def open_one() -> ComplianceStore:
        s: ComplianceStore = (MysqlComplianceStore.from_dsn(dsn, 4, 5.0) if dsn
                              else SqliteComplianceStore(tmp_path / "compliance.db"))
        await s.open()
        opened.append(s)
        return s

    yield open_one
    for s in opened:
        await s.close()
    if dsn:
        await drop_mysql_database(server, dsn)


@pytest.fixture(params=["sqlite", *DB_ENGINES])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    async for open_one in _opener(request.param, tmp_path):
        yield open_one


@pytest.fixture(params=DB_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def mysql_opener(engine: str, tmp_path: Path) -> AsyncIterator[Opener]:
    """For what only a shared store has (migrations, cross-node locks)."""
    async for open_one in _opener(engine, tmp_path):
        yield open_one


def fields(event: str, node: str = "n1", **details: object) -> dict[str, object]:
    return {"ts": 1_700_000_000_000, "node": node, "event": event, "actor": "u_x",
            "target": "t", "details": details}


async def test_appends_link_into_one_chain_across_two_openers(opener: Opener) -> None:
    a, b = await opener(), await opener()
    assert await a.audit_state() == (0, chain.GENESIS)

    async def burst(store: ComplianceStore, node: str) -> None:
        for i in range(40):
            await store.append_audit(fields("test.append", node, i=i))

    await asyncio.gather(burst(a, "a"), burst(b, "b"), burst(a, "a2"), burst(b, "b2"))
    rows = await b.audit_records(0, 1000)
    assert [r.seq for r in rows] == list(range(1, 161))
    prev = chain.GENESIS
    for r in rows:
        body = json.loads(r.body)
        assert body["prev"] == prev and chain.digest(r.body) == r.hash, r.seq
        assert (r.event, r.actor, r.target, r.ts) == ("test.append", "u_x", "t", body["ts"])
        prev = r.hash
    assert {json.loads(r.body)["node"] for r in rows} == {"a", "b", "a2", "b2"}
    assert await a.audit_state() == (160, prev)
    # The archive's primitives: a prefix by age, deletion through a seq.
    assert [r.seq for r in await a.audit_older_than(1_700_000_000_001, 5)] == [1, 2, 3, 4, 5]
    assert await a.audit_older_than(1_700_000_000_000, 5) == []
    assert await a.delete_audit_through(100) == 100
    assert (await b.audit_records(0, 1))[0].seq == 101
    assert (await b.audit_state())[0] == 160  # the head outlives the deleted records


async def test_text_round_trips_byte_exact(opener: Opener) -> None:
    s = await opener()
    rec = await s.append_audit({"ts": 5, "event": "hold.set", "actor": "cli:审计员",
                                "target": "conversation:g:案件 17 ", "details": {"why": "诉讼 😀"}})
    back = (await s.audit_records(0, 10))[0]
    assert back == rec
    assert json.loads(back.body)["details"]["why"] == "诉讼 😀"
    assert back.target.endswith(" ")  # no trailing-space padding


async def test_second_factor_state_is_shared_and_replay_safe(opener: Opener) -> None:
    a, b = await opener(), await opener()
    secret = bytes(range(40))
    await a.put_totp(TotpRow("u_1", secret, 10, 0, "u_sec"))
    assert await b.get_totp("u_1") == TotpRow("u_1", secret, 10, 0, "u_sec")
    assert await b.get_totp("u_2") is None
    assert await a.use_totp_step("u_1", 100)
    assert not await b.use_totp_step("u_1", 100)  # the same code on the other opener
    assert not await b.use_totp_step("u_1", 99)
    racers = await asyncio.gather(*(s.use_totp_step("u_1", 101) for s in (a, b, a, b)))
    assert sorted(racers) == [False, False, False, True]
    assert await b.totp_user_ids() == ["u_1"]
    assert await b.delete_totp("u_1") and not await a.delete_totp("u_1")

    await a.put_sms_phone(SmsPhone("u_1", b"\x00enc", 7, "u_sec"))
    assert await b.get_sms_phone("u_1") == SmsPhone("u_1", b"\x00enc", 7, "u_sec")
    await a.put_sms_code(SmsCode("u_1", "ab" * 32, 1000, 2000))
    assert await b.sms_code_failed("u_1", 1000) == 1
    assert await a.sms_code_failed("u_1", 1000) == 2
    assert await a.sms_code_failed("u_1", 999) == 0  # a replaced code counts nothing
    assert not await b.use_sms_code("u_1", 999, 1500)
    racers = await asyncio.gather(*(s.use_sms_code("u_1", 1000, 1500) for s in (a, b, a, b)))
    assert sorted(racers) == [False, False, False, True]
    code = await a.get_sms_code("u_1")
    assert code is not None and (code.used_at, code.attempts) == (1500, 2)
    assert await a.sms_user_ids() == ["u_1"]
    assert await b.delete_sms_phone("u_1")
    assert await a.get_sms_code("u_1") is None and await a.get_sms_phone("u_1") is None


async def test_sms_rate_limit_counts_sends_from_every_opener(opener: Opener) -> None:
    a, b = await opener(), await opener()
    t = 10_000_000
    # Racing first sends: exactly one passes the 60 s interval.
    waits = await asyncio.gather(*(s.reserve_sms_send("u_1", t, 60_000, 3) for s in (a, b, a, b)))
    assert sorted(waits) == [0, 60_000, 60_000, 60_000]
    assert await b.reserve_sms_send("u_1", t + 20_000, 60_000, 3) == 40_000
    assert await b.reserve_sms_send("u_1", t + 60_000, 60_000, 3) == 0
    assert await a.reserve_sms_send("u_1", t + 120_000, 60_000, 3) == 0
    # Three in the hour: the fourth waits for the first to leave the window.
    assert await b.reserve_sms_send("u_1", t + 180_000, 60_000, 3) == 3_600_000 - 180_000
    assert await a.reserve_sms_send("u_2", t + 180_000, 60_000, 3) == 0  # per user
    assert await a.reserve_sms_send("u_1", t + 3_600_001, 60_000, 3) == 0


async def test_admin_sessions_settings_holds_and_runs_are_shared(opener: Opener) -> None:
    a, b = await opener(), await opener()
    await a.add_admin_session(AdminSession("tk_1", "u_sec", "secadmin", 1, 900, 5))
    await b.set_factor_at("tk_1", 50)
    await a.set_factor_at("tk_1", 20)  # never moves back
    assert await b.get_admin_session("tk_1") == AdminSession("tk_1", "u_sec", "secadmin", 1, 900,
                                                             50)
    assert await a.get_admin_session("tk_2") is None

    assert await a.get_setting("audit.retention") is None
    await a.set_setting("audit.retention", {"days": 200.0, "reason": "审计"}, 1, "u_sec")
    assert await b.get_setting("audit.retention") == {"days": 200.0, "reason": "审计"}

    h1 = await a.add_hold("conversation", "g:1", "case 17", "u_sec", 100)
    h2 = await b.add_hold("user", "u_carol", "litigation", "u_sec", 101)
    assert h1.id != h2.id
    assert [(h.kind, h.target) for h in await b.holds()] == [("conversation", "g:1"),
                                                             ("user", "u_carol")]
    released = await b.release_hold(h1.id, "u_sec2", 200)
    assert released is not None and (released.released_at, released.released_by) == (200, "u_sec2")
    assert await a.release_hold(h1.id, "u_sec2", 201) is None  # once
    assert [h.id for h in await a.holds()] == [h2.id]
    assert [h.id for h in await a.holds(active_only=False)] == [h1.id, h2.id]

    await a.set_policy("default", 30)
    await b.set_policy("conversation:g:1", 0)
    assert await b.policies() == {"conversation:g:1": 0.0, "default": 30.0}
    await b.set_policy("default", None)
    assert await a.policies() == {"conversation:g:1": 0.0}

    assert await a.open_run() is None and await a.last_run() is None
    run = await a.start_run(1000, "cli:root", {"default": 500})
    run.cursor, run.deleted = "d:a:b", 7
    await a.save_run(run)
    again = await b.open_run()
    assert again is not None and (again.id, again.cursor, again.deleted, again.cutoffs) == (
        run.id, "d:a:b", 7, {"default": 500})
    run.finished_at = 2000
    await b.save_run(run)
    assert await a.open_run() is None
    last = await a.last_run()
    assert last is not None and last.finished_at == 2000


async def test_heads_and_published_keys(opener: Opener) -> None:
    from tongxin.compliance.ports import SignedHead

    a, b = await opener(), await opener()
    await a.add_head(SignedHead(3, "h3", 30, "n1", "fp1", "sig"))
    await b.add_head(SignedHead(2, "h2", 20, "n2", "fp2", "sig"))
    assert [(h.seq, h.node) for h in await a.heads()] == [(2, "n2"), (3, "n1")]
    await a.publish_key("fp1", b"-----PEM-----\n", "n1", 1)
    await b.publish_key("fp1", b"-----PEM-----\n", "n2", 2)  # once per key
    expected = {"fp1": b"-----PEM-----\n"} if a.shared else {}
    assert await b.published_keys() == expected


# On mariadb this is GET_LOCK. On tidb it is the row lock of compliance_job_locks: the
# tidb-server of services.sh (TiDB's master of March 2022) refuses GET_LOCK (error
# 1235, "only noop implementation"), and TiDB 6.1 and later implement GET_LOCK as a
# lock on a row of their own, so the store uses a row lock on every TiDB.
async def test_exclusive_is_installation_wide_on_the_shared_store(opener: Opener) -> None:
    a, b = await opener(), await opener()
    async with a.exclusive("retention") as first:
        assert first
        async with b.exclusive("retention") as second:
            # One node's store leaves locking to its callers (a lock file).
            assert second is not a.shared
        async with b.exclusive("audit-archive") as other:
            assert other  # another name is free
    async with b.exclusive("retention") as after:
        assert after


async def test_mysql_migrations_are_recorded_and_refuse_a_changed_file(
        mysql_opener: Opener, request: pytest.FixtureRequest) -> None:
    opener = mysql_opener
    s = await opener()
    assert isinstance(s, MysqlComplianceStore)
    from tongxin.compliance import migrations

    assert await s.schema_version() == len(migrations.load())
    await s.close()
    again = await opener()  # re-open: nothing to apply, the chain head row is still one row
    assert await again.audit_state() == (0, chain.GENESIS)

    async def tamper(cur: Cursor) -> None:
        await cur.execute(
            f"UPDATE {migrations.TABLE} SET checksum = REPEAT('0', 64) WHERE version = 1")

    assert isinstance(again, MysqlComplianceStore)
    await again._db._write(tamper)
    with pytest.raises(StoreError, match="changed after it was applied"):
        await opener()


# ---- the message store's index for retention and exports --------------------------


async def test_message_stores_index_messages_by_conversation_and_time(tmp_path: Path,
                                                                     engine: str) -> None:
    import sqlite3

    from tongxin.store.migrations import latest_version
    from tongxin.store.mysql_store import MysqlStore
    from tongxin.store.sqlite_store import SqliteStore

    lite = SqliteStore(tmp_path / "t.db")
    await lite.open()
    await lite.close()
    with sqlite3.connect(tmp_path / "t.db") as conn:
        cols = [r[2] for r in conn.execute("PRAGMA index_info(messages_by_time)")]
        plan = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM messages WHERE conversation_id = 'g:1' "
            "AND sent_at >= 5 AND sent_at < 10"))
    assert cols == ["conversation_id", "sent_at"]
    assert "messages_by_time" in plan

    server = await asyncio.to_thread(start_database, engine)
    dsn = await create_mysql_database(server)
    try:
        store = MysqlStore.from_dsn(dsn, 2, 5.0)
        await store.open()

        async def index_cols(cur: Cursor) -> list[str]:
            await cur.execute("SELECT column_name FROM information_schema.statistics WHERE "
                              "table_schema = DATABASE() AND table_name = 'messages' AND "
                              "index_name = 'messages_by_time' ORDER BY seq_in_index")
            return [str(r[0]) for r in await cur.fetchall()]

        async def forget_version(cur: Cursor) -> None:
            # As if the node died after CREATE INDEX, before recording the migration.
            await cur.execute("DELETE FROM schema_migrations WHERE name = 'message_time_index'")

        try:
            assert await store._read(index_cols) == ["conversation_id", "sent_at"]
            await store._write(forget_version)
            assert await store.migrate() == [4]  # re-runs without an error
            assert await store.schema_version() == latest_version()
            assert await store._read(index_cols) == ["conversation_id", "sent_at"]
        finally:
            await store.close()
    finally:
        await drop_mysql_database(server, dsn)


async def test_retention_and_archive_runs_take_turns_across_nodes(mysql_opener: Opener,
                                                                 tmp_path: Path) -> None:
    opener = mysql_opener
    from conftest import make_config  # type: ignore[import-not-found, unused-ignore]

    from tongxin.compliance.retention import RetentionBusy, run_retention
    from tongxin.compliance.service import Compliance
    from tongxin.store.sqlite_store import SqliteStore

    a, b = await opener(), await opener()
    assert a.shared and b.shared
    cfg = make_config(tmp_path / "home")
    history = SqliteStore(tmp_path / "t.db")
    await history.open()
    comp = Compliance(cfg, "node-a", store=a)
    try:
        await comp.audit("test.append", actor="t")
        async with b.exclusive("retention") as held:
            assert held
            with pytest.raises(RetentionBusy, match="another retention run"):
                await run_retention(cfg, a, history, actor="node-a")
            assert await a.last_run() is None  # refused before it started
        res = await run_retention(cfg, a, history, actor="node-a")
        assert res.finished
        # Archive: a run elsewhere holds the lock, so this one archives nothing.
        far_future = 10 ** 15
        async with b.exclusive("audit-archive"):
            assert (await comp.run_archive(now=far_future)).archived == 0
        assert (await a.audit_state())[0] >= 1 and await a.audit_records(0, 10)
        assert (await comp.run_archive(now=far_future)).archived >= 1
    finally:
        await history.close()
        await comp.archive.objects.close()

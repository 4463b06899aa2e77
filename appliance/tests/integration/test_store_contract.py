"""The ChatStore contract, run against both adapters.

``sqlite`` is the embedded default; ``mariadb`` and ``tidb`` are the
MySQL-protocol adapter against the real engines scripts/services.sh starts
(Debian's MariaDB; tidb-server with unistore, built from TiDB's Go module: see
engines.py). Each test gets a fresh SQLite file or a fresh database. The fault
tests stop or kill the database in the middle of a stream of appends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncmy
import pytest
from conftest import NodeFactory
from engines import DB_ENGINES, kill_database, start_database, stop_database

from tongxin.client import pb
from tongxin.org import units as org
from tongxin.store import migrations
from tongxin.store.dsn import MysqlDsn, parse_dsn
from tongxin.store.mysql_store import MysqlStore, run_ddl
from tongxin.store.ports import (
    ChatStore,
    Conflict,
    ConversationRow,
    CursorMark,
    Entry,
    GroupFull,
    MemberOps,
    NodeBeat,
    NodeStatus,
    NoSuchConversation,
    OrgUnit,
    StoreError,
    TooLarge,
    Unavailable,
    User,
)
from tongxin.store.sqlite_store import SqliteStore

pytestmark = pytest.mark.integration

DIRECT, GROUP = 1, 2


def entry(conv: str, cid: str, sender: str = "u_a", content: bytes = b"x") -> Entry:
    return Entry(conversation_id=conv, sender_id=sender, sender_device="d", client_msg_id=cid,
                 sent_at=1, kind=1, content=content)


def user(uid: str, name: str, created_at: int = 1) -> User:
    return User(id=uid, username=name, display_name=name.title(), password_hash="h$" + name,
                role="user", created_at=created_at)


# ---- the two backends ------------------------------------------------------------


def _server(engine: str) -> MysqlDsn:
    """The services.sh engine (started if needed). Fails, never skips."""
    try:
        return parse_dsn(start_database(engine))
    except Exception as exc:  # the message carries services.sh's own output
        pytest.fail(f"{engine} could not be started with `appliance/scripts/services.sh start "
                    f"{engine}` (the mysql store tests need it):\n{exc}", pytrace=False)


@pytest.fixture(params=DB_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The MySQL-protocol engine under test: mariadb or tidb."""
    return str(request.param)


@pytest.fixture
def db_server(engine: str) -> MysqlDsn:
    return _server(engine)


async def _admin(dsn: MysqlDsn, sql: str) -> None:
    conn = await asyncmy.connect(host=dsn.host, port=dsn.port, user=dsn.user,
                                 password=dsn.password, database=dsn.database, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


async def _create_database(server: MysqlDsn) -> MysqlDsn:
    """A database of its own for one test (the test user may create tongxin_*)."""
    name = f"tongxin_t_{uuid.uuid4().hex[:12]}"
    await _admin(server, f"CREATE DATABASE `{name}`")
    return MysqlDsn(server.host, server.port, server.user, server.password, name)


@pytest.fixture
async def fresh_mysql(db_server: MysqlDsn) -> AsyncIterator[MysqlDsn]:
    dsn = await _create_database(db_server)
    yield dsn
    await _admin(db_server, f"DROP DATABASE IF EXISTS `{dsn.database}`")


Opener = Callable[[], Awaitable[ChatStore]]


@pytest.fixture(params=["sqlite", *DB_ENGINES])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def opener(backend: str, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a new store over the same data each call; everything opened is closed after."""
    opened: list[ChatStore] = []
    server: MysqlDsn | None = None
    if backend != "sqlite":
        server = await asyncio.to_thread(_server, backend)
        dsn = await _create_database(server)

        def make() -> ChatStore:
            return MysqlStore(dsn, pool_size=16, timeout=5.0)
    else:
        def make() -> ChatStore:
            return SqliteStore(tmp_path / "t.db")

    async def open_one() -> ChatStore:
        s = make()
        await s.open()
        opened.append(s)
        return s

    yield open_one
    for s in opened:
        await s.close()
    if server is not None:
        await _admin(server, f"DROP DATABASE IF EXISTS `{dsn.database}`")


@pytest.fixture
async def store(opener: Opener) -> ChatStore:
    """A store holding group g:1 with members u_a (owner) and u_b; its seq 1 is 'create'."""
    s = await opener()
    conv = ConversationRow("g:1", GROUP, "g", 0, "u_a", 0, 0)
    await s.create_conversation(conv, [("u_a", 3), ("u_b", 1)], entry("g:1", "create"))
    return s


# ---- the log -------------------------------------------------------------------------


# On tidb this test and test_accounts depend on the pessimistic transactions MysqlStore
# asks for per session. The tidb-server of services.sh (unistore) defaults to optimistic ones, as
# any TiDB whose operator set tidb_txn_mode so; a TiDB 7.x/8.x cluster on TiKV defaults
# to pessimistic. Left optimistic, 300 appends to one row mostly end in write conflicts
# and a taken username surfaces at COMMIT as Unavailable instead of Conflict.
async def test_concurrent_appends_get_dense_increasing_seqs(store: ChatStore, backend: str) -> None:
    results = await asyncio.gather(*(store.append(entry("g:1", f"m{i}")) for i in range(300)))
    seqs = [e.seq for e, dup in results]
    assert not any(dup for _, dup in results)
    assert sorted(seqs) == list(range(2, 302))
    if backend == "sqlite":
        # One FIFO writer thread: submission order is seq order. With a pool,
        # concurrent transactions take the conversation's lock in any order;
        # the chat layer relies only on the sequential case below.
        assert seqs == sorted(seqs)
    conv = await store.get_conversation("g:1")
    assert conv is not None and conv.last_seq == 301
    stored = await store.entries_after("g:1", 1, 1000)
    assert [e.seq for e in stored] == list(range(2, 302))


async def test_sequential_appends_are_in_order(store: ChatStore) -> None:
    seqs = [(await store.append(entry("g:1", f"s{i}")))[0].seq for i in range(20)]
    assert seqs == list(range(2, 22))


async def test_duplicate_client_id_returns_the_original(store: ChatStore) -> None:
    first, dup1 = await store.append(entry("g:1", "same"))
    again, dup2 = await store.append(entry("g:1", "same", content=b"other"))
    assert (dup1, dup2) == (False, True)
    assert again.seq == first.seq and again.content == b"x"
    other, dup3 = await store.append(entry("g:1", "same", sender="u_b"))
    assert not dup3 and other.seq == first.seq + 1  # ids are per sender


async def test_concurrent_resends_store_once(store: ChatStore) -> None:
    results = await asyncio.gather(*(store.append(entry("g:1", "racy")) for _ in range(10)))
    assert len({e.seq for e, _ in results}) == 1
    assert sorted(dup for _, dup in results) == [False] + [True] * 9
    conv = await store.get_conversation("g:1")
    assert conv is not None and conv.last_seq == 2  # no seq was spent on the duplicates


async def test_ids_are_byte_exact(store: ChatStore) -> None:
    # No collation: case and trailing spaces make different ids, as in SQLite.
    a, _ = await store.append(entry("g:1", "m1"))
    b, dup_b = await store.append(entry("g:1", "m1 "))
    c, dup_c = await store.append(entry("g:1", "M1"))
    assert not dup_b and not dup_c and len({a.seq, b.seq, c.seq}) == 3
    found = await store.find_by_client_id("g:1", "u_a", "m1 ")
    assert found is not None and found.seq == b.seq and found.client_msg_id == "m1 "


async def test_content_round_trips(store: ChatStore) -> None:
    blob = bytes(range(256)) * 64 + b"\x00"
    e = entry("g:1", "bin", content=blob)
    e.system = b"\x00sys\xff"
    e.target_seq, e.sent_at, e.kind = 7, 1_700_000_000_123, 5
    stored, _ = await store.append(e)
    got = await store.get_entry("g:1", stored.seq)
    assert got == stored
    assert got is not None and got.content == blob and got.system == b"\x00sys\xff"
    assert got.sent_at == 1_700_000_000_123 and got.kind == 5 and got.target_seq == 7


async def test_failing_job_does_not_undo_the_others(store: ChatStore) -> None:
    jobs = [store.append(entry("g:1", f"ok{i}")) for i in range(20)]
    jobs.insert(10, store.append(entry("g:missing", "bad")))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert isinstance(results[10], NoSuchConversation)
    stored = await store.entries_after("g:1", 1, 100)
    assert sorted(e.client_msg_id for e in stored) == sorted(f"ok{i}" for i in range(20))
    assert [e.seq for e in stored] == list(range(2, 22))


async def test_append_to_missing_conversation(store: ChatStore) -> None:
    with pytest.raises(NoSuchConversation):
        await store.append(entry("g:nope", "x"))
    assert await store.get_conversation("g:nope") is None
    assert await store.find_by_client_id("g:nope", "u_a", "x") is None


# ---- group commit of appends (MysqlStore batches what waits; SqliteStore's writer does too)


def _count_commits(store: ChatStore) -> list[int]:
    """On a MysqlStore, counts its group-commit COMMITs (one item per batch)."""
    commits: list[int] = []
    if isinstance(store, MysqlStore):
        real = store._commit

        async def counting(conn: asyncmy.Connection) -> None:
            await real(conn)
            commits.append(1)

        store._commit = counting  # type: ignore[method-assign]
    return commits


async def test_concurrent_appends_to_many_conversations(store: ChatStore, backend: str) -> None:
    convs = [f"g:many{i}" for i in range(12)]
    for c in convs:
        await store.create_conversation(ConversationRow(c, GROUP, c, 0, "u_a", 0, 0),
                                        [("u_a", 3)], entry(c, "create"))
    commits = _count_commits(store)
    # Interleaved (conversation i, then i+1, ...) so every batch spans conversations
    # and g:1 (the fixture's) gets a share as large as all the others together.
    jobs = [(c, f"m{n}") for n in range(25) for c in [*convs, "g:1"]]
    jobs += [("g:1", f"x{n}") for n in range(275)]
    results = await asyncio.gather(*(store.append(entry(c, cid)) for c, cid in jobs))
    assert not any(dup for _, dup in results)
    assert [(e.conversation_id, e.client_msg_id) for e, _ in results] == jobs
    for c in [*convs, "g:1"]:
        mine = {e.client_msg_id: e.seq for e, _ in results if e.conversation_id == c}
        assert sorted(mine.values()) == list(range(2, 2 + len(mine)))  # gap-free, each once
        stored = await store.entries_after(c, 1, 1000)
        assert {e.client_msg_id: e.seq for e in stored} == mine  # each caller got its own seq
        conv = await store.get_conversation(c)
        assert conv is not None and conv.last_seq == 1 + len(mine)
    if backend != "sqlite":
        assert 1 <= len(commits) < len(jobs) // 4  # batched, and every batch committed


async def test_duplicates_inside_one_batch(store: ChatStore, backend: str) -> None:
    old, _ = await store.append(entry("g:1", "old"))
    commits = _count_commits(store)
    results = await asyncio.gather(
        store.append(entry("g:1", "new")), store.append(entry("g:1", "old", content=b"y")),
        store.append(entry("g:1", "new", content=b"z")), store.append(entry("g:1", "new2")),
        store.append(entry("g:1", "new", sender="u_b")))
    (new, d0), (old2, d1), (new_again, d2), (new2, d3), (other, d4) = results
    assert (d0, d1, d2, d3, d4) == (False, True, True, False, False)
    assert old2.seq == old.seq and old2.content == b"x"  # the stored one, not the re-send
    assert new_again.seq == new.seq and new_again.content == b"x"
    assert sorted([new.seq, new2.seq, other.seq]) == [3, 4, 5]  # no seq spent on duplicates
    conv = await store.get_conversation("g:1")
    assert conv is not None and conv.last_seq == 5
    stored = await store.entries_after("g:1", 1, 100)
    assert [(e.seq, e.client_msg_id, e.sender_id) for e in stored] == sorted(
        [(old.seq, "old", "u_a"), (new.seq, "new", "u_a"), (new2.seq, "new2", "u_a"),
         (other.seq, "new", "u_b")])
    if backend != "sqlite":
        # One batch, refused at its INSERT for the re-sent "old", then one by one.
        assert len(commits) == 0


# Not on SQLite, which takes a value of any length: nothing there to refuse.
@pytest.mark.parametrize("backend", DB_ENGINES, indirect=True)
async def test_refused_value_fails_only_its_append(store: ChatStore, backend: str) -> None:
    commits = _count_commits(store)
    bad = entry("g:1", "bad")
    bad.sender_device = "d" * 300  # VARBINARY(255): strict mode refuses it
    jobs = [store.append(entry("g:1", f"ok{i}")) for i in range(10)]
    jobs.insert(5, store.append(bad))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert isinstance(results[5], Unavailable)
    good = [r for i, r in enumerate(results) if i != 5]
    assert all(isinstance(r, tuple) and not r[1] for r in good)
    stored = await store.entries_after("g:1", 1, 100)
    assert [e.client_msg_id for e in stored] == [f"ok{i}" for i in range(10)]  # arrival order
    assert [e.seq for e in stored] == list(range(2, 12))
    assert commits == []  # the batch was refused, its appends then went one by one


# The MySQL store's COMMIT over the network; SQLite's writer has its own unit test.
@pytest.mark.parametrize("backend", DB_ENGINES, indirect=True)
async def test_failed_commit_fails_the_whole_batch(store: ChatStore, backend: str) -> None:
    assert isinstance(store, MysqlStore)
    real = store._commit
    killed: list[int] = []

    async def killed_before_commit(conn: asyncmy.Connection) -> None:
        # The server loses the connection with the batch's transaction open.
        async with conn.cursor() as cur:
            await cur.execute("SELECT CONNECTION_ID()")
            row = await cur.fetchone()
        await _admin(store.dsn, f"KILL {'TIDB ' if backend == 'tidb' else ''}{row[0]}")
        killed.append(int(row[0]))
        await real(conn)

    store._commit = killed_before_commit  # type: ignore[method-assign]
    results = await asyncio.gather(*(store.append(entry("g:1", f"k{i}")) for i in range(8)),
                                   return_exceptions=True)
    assert len(killed) == 1  # one batch held all eight
    assert all(isinstance(r, Unavailable) for r in results)
    assert await store.entries_after("g:1", 1, 100) == []
    conv = await store.get_conversation("g:1")
    assert conv is not None and conv.last_seq == 1
    store._commit = real  # type: ignore[method-assign]
    again = await asyncio.gather(*(store.append(entry("g:1", f"k{i}")) for i in range(8)))
    assert sorted(e.seq for e, dup in again if not dup) == list(range(2, 10))


async def test_recall_and_edit_update_the_target(store: ChatStore) -> None:
    original, _ = await store.append(entry("g:1", "orig", content=b"v1"))
    edit = entry("g:1", "edit1")
    edit.kind, edit.target_seq, edit.sent_at = 3, original.seq, 99
    stored_edit, _ = await store.append(edit, mark_edited=b"v2")
    got = await store.get_entry("g:1", original.seq)
    assert got is not None and got.content == b"v2" and got.edited_at == 99
    recall = entry("g:1", "recall1")
    recall.kind, recall.target_seq = 2, original.seq
    await store.append(recall, mark_recalled=True)
    got = await store.get_entry("g:1", original.seq)
    assert got is not None and got.recalled and got.content == b"v2"
    assert stored_edit.seq == original.seq + 1


async def test_entries_after_and_before_with_min_seq(store: ChatStore) -> None:
    for i in range(10):
        await store.append(entry("g:1", f"p{i}"))  # seqs 2..11
    after = await store.entries_after("g:1", 0, 100)
    assert [e.seq for e in after] == list(range(1, 12))
    assert [e.seq for e in await store.entries_after("g:1", 3, 4)] == [4, 5, 6, 7]
    assert [e.seq for e in await store.entries_after("g:1", 0, 3, min_seq=6)] == [6, 7, 8]
    assert [e.seq for e in await store.entries_after("g:1", 8, 100, min_seq=6)] == [9, 10, 11]
    assert await store.entries_after("g:1", 11, 10) == []
    assert [e.seq for e in await store.entries_before("g:1", 12, 3)] == [9, 10, 11]
    assert [e.seq for e in await store.entries_before("g:1", 6, 100)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in await store.entries_before("g:1", 12, 100, min_seq=9)] == [9, 10, 11]
    assert [e.seq for e in await store.entries_before("g:1", 8, 2, min_seq=4)] == [6, 7]
    assert await store.entries_before("g:1", 1, 10) == []
    assert await store.entries_after("g:other", 0, 10) == []


async def test_find_by_client_id(store: ChatStore) -> None:
    stored, _ = await store.append(entry("g:1", "findme", sender="u_b"))
    found = await store.find_by_client_id("g:1", "u_b", "findme")
    assert found == stored
    assert await store.find_by_client_id("g:1", "u_a", "findme") is None
    assert await store.find_by_client_id("g:1", "u_b", "other") is None
    created = await store.find_by_client_id("g:1", "u_a", "create")
    assert created is not None and created.seq == 1


async def test_entries_survive_reopen(opener: Opener, store: ChatStore) -> None:
    stored, _ = await store.append(entry("g:1", "durable"))
    await store.close()
    again = await opener()
    assert await again.find_by_client_id("g:1", "u_a", "durable") == stored
    conv = await again.get_conversation("g:1")
    assert conv is not None and conv.last_seq == stored.seq
    nxt, _ = await again.append(entry("g:1", "after-reopen"))
    assert nxt.seq == stored.seq + 1


# ---- conversations and members -----------------------------------------------------


async def test_create_conversation_is_idempotent(store: ChatStore) -> None:
    conv = await store.get_conversation("g:1")
    assert conv == ConversationRow("g:1", GROUP, "g", 0, "u_a", 1, 2)
    again, created = await store.create_conversation(
        ConversationRow("g:1", GROUP, "other", 5, "u_b", 0, 0), [("u_b", 3)], entry("g:1", "c2"))
    assert not created and again == conv
    assert sorted(await store.member_ids("g:1")) == ["u_a", "u_b"]
    first = await store.get_entry("g:1", 1)
    assert first is not None and first.client_msg_id == "create"


async def test_concurrent_creates_make_one_conversation(store: ChatStore) -> None:
    results = await asyncio.gather(*(
        store.create_conversation(ConversationRow("d:u_a:u_c", DIRECT, "", 10, "u_a", 0, 0),
                                  [("u_a", 1), ("u_c", 1)], entry("d:u_a:u_c", f"create{i}"))
        for i in range(5)))
    assert sorted(created for _, created in results) == [False] * 4 + [True]
    assert {c.last_seq for c, _ in results} == {1}
    assert len(await store.entries_after("d:u_a:u_c", 0, 10)) == 1


async def test_members(store: ChatStore) -> None:
    member = await store.get_member("g:1", "u_b")
    assert member is not None and (member.role, member.joined_seq, member.read_seq) == (1, 1, 0)
    assert await store.get_member("g:1", "u_z") is None
    assert await store.get_member("g:none", "u_a") is None
    rows = await store.list_members("g:1", 10)
    assert [(m.user_id, m.role) for m in rows] == [("u_a", 3), ("u_b", 1)]
    assert len(await store.list_members("g:1", 1)) == 1
    assert await store.member_ids("g:none") == []


async def test_change_members(store: ChatStore) -> None:
    ops = MemberOps(add=[("u_c", 1), ("u_d", 1), ("u_b", 1)], remove=["u_b", "u_x"],
                    set_role=[("u_c", 2)], rename="新名字")
    e = await store.change_members("g:1", ops, entry("g:1", "change"), max_members=10)
    assert e.seq == 2
    assert sorted(await store.member_ids("g:1")) == ["u_a", "u_c", "u_d"]
    conv = await store.get_conversation("g:1")
    assert conv is not None and (conv.name, conv.member_count, conv.last_seq) == ("新名字", 3, 2)
    c = await store.get_member("g:1", "u_c")
    assert c is not None and (c.role, c.joined_seq) == (2, 2)
    stored = await store.get_entry("g:1", 2)
    assert stored is not None and stored.client_msg_id == "change"
    with pytest.raises(NoSuchConversation):
        await store.change_members("g:none", MemberOps(add=[("u_a", 1)]), entry("g:none", "x"),
                                   max_members=10)


async def test_group_size_limit_is_atomic(store: ChatStore) -> None:
    ops = MemberOps(add=[(f"u_{i}", 1) for i in range(5)])
    with pytest.raises(GroupFull) as info:
        await store.change_members("g:1", ops, entry("g:1", "add"), max_members=4)
    assert isinstance(info.value, Conflict)
    assert sorted(await store.member_ids("g:1")) == ["u_a", "u_b"]
    conv = await store.get_conversation("g:1")
    assert conv is not None and conv.last_seq == 1  # the refused change left no entry


async def test_large_membership_change(store: ChatStore) -> None:
    adds = [(f"u_{i:05d}", 1) for i in range(1200)]
    await store.change_members("g:1", MemberOps(add=adds), entry("g:1", "big"), max_members=2000)
    conv = await store.get_conversation("g:1")
    assert conv is not None and conv.member_count == 1202
    await store.change_members("g:1", MemberOps(remove=[u for u, _ in adds[:700]]),
                               entry("g:1", "shrink"), max_members=2000)
    assert len(await store.member_ids("g:1")) == 502


async def test_conversations_of_with_peers(store: ChatStore) -> None:
    await store.create_conversation(ConversationRow("d:u_a:u_b", DIRECT, "", 5, "u_a", 0, 0),
                                    [("u_a", 1), ("u_b", 1)], entry("d:u_a:u_b", "c"))
    await store.create_conversation(ConversationRow("d:u_a:u_c", DIRECT, "", 7, "u_c", 0, 0),
                                    [("u_a", 1), ("u_c", 1)], entry("d:u_a:u_c", "c"))
    await store.append(entry("d:u_a:u_c", "hello", sender="u_c"))
    views = await store.conversations_of("u_a")
    assert [v.conversation.id for v in views] == ["g:1", "d:u_a:u_b", "d:u_a:u_c"]
    by_id = {v.conversation.id: v for v in views}
    assert by_id["g:1"].peer_id == "" and by_id["g:1"].me.role == 3
    assert by_id["d:u_a:u_b"].peer_id == "u_b"
    assert by_id["d:u_a:u_c"].peer_id == "u_c"
    assert by_id["d:u_a:u_c"].conversation.last_seq == 2
    assert by_id["d:u_a:u_c"].me.user_id == "u_a"
    views_b = await store.conversations_of("u_b")
    assert [(v.conversation.id, v.peer_id) for v in views_b] == [("g:1", ""), ("d:u_a:u_b", "u_a")]
    assert await store.conversations_of("u_nobody") == []


async def test_cursor_only_moves_forward(store: ChatStore) -> None:
    for i in range(5):
        await store.append(entry("g:1", f"c{i}"))
    assert await store.set_cursor("g:1", "u_b", "read", 4) == 4
    assert await store.set_cursor("g:1", "u_b", "read", 2) == 4
    assert await store.set_cursor("g:1", "u_b", "read", 4) == 4
    assert await store.set_cursor("g:1", "u_b", "delivered", 6) == 6
    member = await store.get_member("g:1", "u_b")
    assert member is not None and (member.read_seq, member.delivered_seq) == (4, 6)
    assert await store.set_cursor("g:1", "u_nobody", "read", 3) == 0


async def test_cursors_in_one_batch(store: ChatStore) -> None:
    # More members than one multi-row statement holds (the MySQL adapter's
    # chunk of 500), so the batch spans statements of the same transaction.
    many = [f"u_m{i:03d}" for i in range(600)]
    await store.change_members("g:1", MemberOps(add=[(u, 1) for u in many]),
                               entry("g:1", "add"), max_members=1000)
    for i in range(5):
        await store.append(entry("g:1", f"c{i}"))
    assert await store.set_cursor("g:1", "u_b", "read", 5) == 5
    marks = [CursorMark("g:1", "u_b", "read", 3),  # behind the stored 5: stays 5
             CursorMark("g:1", "u_a", "read", 6),
             CursorMark("g:1", "u_b", "delivered", 4),
             CursorMark("g:1", "u_nobody", "read", 3)]
    marks += [CursorMark("g:1", u, "read", 2 + i % 5) for i, u in enumerate(many)]
    assert await store.set_cursors(marks) == [5, 6, 4, 0] + [2 + i % 5 for i in range(600)]
    b = await store.get_member("g:1", "u_b")
    assert b is not None and (b.read_seq, b.delivered_seq) == (5, 4)
    for i in (0, 499, 500, 599):
        m = await store.get_member("g:1", many[i])
        assert m is not None and (m.read_seq, m.delivered_seq) == (2 + i % 5, 0)
    assert await store.get_member("g:1", "u_nobody") is None
    assert await store.set_cursors([]) == []


# ---- accounts and tokens ------------------------------------------------------------


async def test_accounts(opener: Opener) -> None:
    # Conflict for a taken username on tidb needs pessimistic transactions (see
    # test_concurrent_appends_get_dense_increasing_seqs).
    s = await opener()
    alice = await s.create_user(user("u_1", "alice", 10))
    await s.create_user(user("u_2", "bob", 20))
    with pytest.raises(Conflict):
        await s.create_user(user("u_3", "alice"))
    assert await s.get_user("u_1") == alice
    assert await s.get_user("u_3") is None
    assert await s.get_user_by_name("bob") == User("u_2", "bob", "Bob", "h$bob", "user", 20)
    assert await s.get_user_by_name("Alice") is None  # usernames are stored lower-case
    assert [u.username for u in await s.list_users()] == ["alice", "bob"]
    await s.update_login_state("u_1", 3, 1000, 5000)
    got = await s.get_user("u_1")
    assert got is not None and (got.failed_logins, got.first_failure_at, got.locked_until) == (
        3, 1000, 5000)
    await s.set_password("u_1", "h$new")
    await s.set_disabled("u_1", True)
    got = await s.get_user("u_1")
    assert got is not None and got.password_hash == "h$new" and got.disabled
    assert (got.failed_logins, got.locked_until, got.first_failure_at) == (0, 0, 1000)
    await s.set_disabled("u_1", False)
    got = await s.get_user("u_1")
    assert got is not None and not got.disabled
    await s.set_role("u_2", "auditor")
    got = await s.get_user("u_2")
    assert got is not None and got.role == "auditor"
    await s.create_user(User("u_4", "chén", "陈 👋", "h", "admin", 1))
    got = await s.get_user_by_name("chén")
    assert got is not None and got.display_name == "陈 👋" and got.role == "admin"


async def test_tokens(opener: Opener) -> None:
    s = await opener()
    assert await s.token_revoked("t1") is None
    await s.add_token("t1", "u_1", "d1", 100, 200)
    await s.add_token("t2", "u_1", "d2", 100, 200)
    await s.add_token("t3", "u_1", "d3", 100, 200)
    await s.add_token("t4", "u_2", "d1", 100, 200)
    assert await s.token_revoked("t1") is False
    assert await s.revoke_token("t1", 150) is True
    assert await s.revoke_token("t1", 160) is False
    assert await s.revoke_token("nope", 160) is False
    assert await s.token_revoked("t1") is True
    assert await s.revoke_user_tokens("u_1", 170) == 2
    assert await s.revoke_user_tokens("u_1", 180) == 0
    assert await s.token_revoked("t2") is True
    assert await s.token_revoked("t4") is False


async def test_live_tokens(opener: Opener) -> None:
    """The secadmin's sessions page (server/sessions_api.py): valid tokens, newest first,
    paged by (issued_at, id), of one user or everyone, one by id, with their last use."""
    s = await opener()
    for i in range(5):
        await s.add_token(f"t{i}", "u_1" if i % 2 else "u_2", f"d{i}", 100 + i, 1000)
    await s.add_token("t9", "u_1", "d9", 104, 1000)  # the same login time as t4
    await s.add_token("old", "u_1", "d", 50, 200)  # expired at 500
    await s.revoke_token("t3", 150)
    await s.touch_token("t1", 700)
    rows = await s.live_tokens("", 500, None, 10)
    assert [r.token_id for r in rows] == ["t9", "t4", "t2", "t1", "t0"]
    assert rows[3].last_used_at == 700 and rows[0].last_used_at == 0
    assert (rows[3].user_id, rows[3].device_id, rows[3].issued_at, rows[3].expires_at) == \
        ("u_1", "d1", 101, 1000)
    first = await s.live_tokens("", 500, None, 1)
    rest = await s.live_tokens("", 500, (first[0].issued_at, first[0].token_id), 10)
    assert [r.token_id for r in first + rest] == ["t9", "t4", "t2", "t1", "t0"]
    assert [r.token_id for r in await s.live_tokens("u_1", 500, None, 10)] == ["t9", "t1"]
    assert [r.token_id for r in await s.live_tokens("", 150, None, 10, token_id="old")] == ["old"]
    assert await s.live_tokens("", 500, None, 10, token_id="t3") == []
    assert await s.revoke_user_tokens("u_1", 600) == 3
    assert [r.token_id for r in await s.live_tokens("", 500, None, 10)] == ["t4", "t2", "t0"]


async def test_password_history_and_token_use(opener: Opener) -> None:
    s = await opener()
    await s.create_user(user("u_1", "alice", 10))
    assert await s.password_history("u_1", 5) == []
    for at in (100, 200, 300, 400):
        await s.record_password("u_1", f"h{at}", at, keep=3)
    got = await s.get_user("u_1")
    assert got is not None and got.password_hash == "h400"
    assert await s.password_history("u_1", 5) == [(400, "h400"), (300, "h300"), (200, "h200")]
    assert await s.password_history("u_1", 1) == [(400, "h400")]
    await s.record_password("u_1", "h500", 500, keep=0)  # no history asked: the newest stays
    assert await s.password_history("u_1", 5) == [(500, "h500")]
    assert await s.token_last_used("t1") == 0
    await s.touch_token("t1", 1000)
    await s.touch_token("t1", 900)  # never moves back
    assert await s.token_last_used("t1") == 1000
    await s.touch_token("t1", 1500)
    assert await s.token_last_used("t1") == 1500


async def test_ping(opener: Opener) -> None:
    s = await opener()
    assert await s.ping() is True


# ---- MySQL adapter specifics -----------------------------------------------------------


async def test_migrations_are_recorded_and_idempotent(fresh_mysql: MysqlDsn,
                                                       engine: str) -> None:
    s = MysqlStore(fresh_mysql, pool_size=2, timeout=5.0)
    await s.open()
    try:
        # The flavor comes from SELECT VERSION(): 'TiDB' in it means tidb, anything else
        # (MariaDB's '10.11.6-MariaDB-0+deb12u1', MySQL's '8.0.36') means mysql.
        assert s.flavor == {"mariadb": "mysql", "tidb": "tidb"}[engine]
        assert ("TiDB" in s.server_version) == (engine == "tidb")
        assert await s.schema_version() == migrations.latest_version()
        assert await s.migrate() == []  # nothing pending: applying again is a no-op
    finally:
        await s.close()


async def _has_named_locks(dsn: MysqlDsn) -> bool:
    conn = await asyncmy.connect(host=dsn.host, port=dsn.port, user=dsn.user,
                                 password=dsn.password, database=dsn.database, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT GET_LOCK('tongxin.test.probe', 0)")
            await cur.fetchall()
            await cur.execute("SELECT RELEASE_LOCK('tongxin.test.probe')")
            await cur.fetchall()
        return True
    except asyncmy.errors.MySQLError:
        return False
    finally:
        conn.close()


async def test_nodes_starting_together_migrate_once(fresh_mysql: MysqlDsn) -> None:
    stores = [MysqlStore(fresh_mysql, pool_size=1, timeout=5.0) for _ in range(4)]
    applied = await asyncio.gather(*(s.migrate() for s in stores))
    every = list(range(1, migrations.latest_version() + 1))
    # Each version is recorded exactly once, whoever applied it, and the schema is whole.
    assert sorted(v for versions in applied for v in versions) == every
    s = MysqlStore(fresh_mysql, pool_size=1, timeout=5.0)
    await s.open()
    try:
        assert await s.schema_version() == every[-1] and await s.migrate() == []
    finally:
        await s.close()
    if await _has_named_locks(fresh_mysql):
        # MariaDB, MySQL, TiDB 6.1 and later: GET_LOCK makes the nodes take turns, so
        # the first applies everything and the others find nothing pending.
        assert sorted(applied) == [[]] * 3 + [every]
    # else: the tidb-server of services.sh (TiDB's master of March 2022, about v6.0)
    # refuses GET_LOCK (error 1235, "only noop implementation"; TiDB implements it from
    # 6.1 on). The four nodes then run the same re-runnable statements side by side
    # and the recording (INSERT IGNORE, then a checksum check) decides who applied
    # which version: recorded once each, but not necessarily all by one node.


async def test_tongxin_migrate_applies_the_schema(fresh_mysql: MysqlDsn, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tongxin.cli.main import main

    d = fresh_mysql
    cfg = tmp_path / "tongxin.yml"
    cfg.write_text(f"data_dir: {tmp_path / 'home'}\nstorage:\n  backend: mysql\n"
                   f"  mysql_dsn: mysql://{d.user}@{d.host}:{d.port}/{d.database}\n",
                   encoding="utf-8")
    os.environ["TONGXIN_MYSQL_PASSWORD"] = d.password
    try:
        assert await asyncio.to_thread(main, ["migrate", "--config", str(cfg)]) == 0
    finally:
        del os.environ["TONGXIN_MYSQL_PASSWORD"]
    assert "schema up to date (mysql)" in capsys.readouterr().out
    s = MysqlStore(d, pool_size=1, timeout=5.0)
    await s.open()
    try:
        assert await s.schema_version() == migrations.latest_version()
    finally:
        await s.close()


async def test_newer_schema_is_refused(fresh_mysql: MysqlDsn) -> None:
    s = MysqlStore(fresh_mysql, pool_size=2, timeout=5.0)
    await s.open()
    await s.close()
    await _admin(fresh_mysql, f"INSERT INTO `{fresh_mysql.database}`.schema_migrations "
                 "VALUES (999, 'future', REPEAT('0', 64), 0)")
    with pytest.raises(StoreError, match="newer than this release"):
        await MysqlStore(fresh_mysql, pool_size=2, timeout=5.0).open()


async def test_edited_migration_is_refused(fresh_mysql: MysqlDsn) -> None:
    s = MysqlStore(fresh_mysql, pool_size=2, timeout=5.0)
    await s.open()
    await s.close()
    await _admin(fresh_mysql, f"UPDATE `{fresh_mysql.database}`.schema_migrations "
                 "SET checksum = REPEAT('0', 64) WHERE version = 1")
    with pytest.raises(StoreError, match="was changed after it was applied"):
        await MysqlStore(fresh_mysql, pool_size=2, timeout=5.0).open()


async def test_heartbeat_rows_carry_each_nodes_status(fresh_mysql: MysqlDsn, engine: str) -> None:
    """Schema version 8: the beat (one upsert of the node's own row) also carries what
    the console's node list shows; node_beats reads every row since a time, by site and
    node. A node of an earlier release writes only the first three columns."""
    s = MysqlStore(fresh_mysql, pool_size=2, timeout=5.0)
    await s.open()
    try:
        st = NodeStatus("0.1.0", "dc1-app-01:8080", 42, 1_700_000_000_000)
        await s.write_heartbeat("dc1-app-01", "dc1", 2_000, st)
        await s.write_heartbeat("dc2-app-01", "dc2", 3_000)
        await s.write_heartbeat("dc1-app-00", "dc1", 500, NodeStatus("0.1.0", "x:1", 0, 1))
        assert await s.node_beats(1_000) == [NodeBeat("dc1-app-01", "dc1", 2_000, st),
                                             NodeBeat("dc2-app-01", "dc2", 3_000, NodeStatus())]
        st2 = NodeStatus("0.1.1", "[::1]:8080", 7, 1_700_000_100_000)
        await s.write_heartbeat("dc1-app-01", "dc1", 4_000, st2)  # the same row, rewritten
        beats = await s.node_beats(0)
        assert [b.node_id for b in beats] == ["dc1-app-00", "dc1-app-01", "dc2-app-01"]
        assert beats[1] == NodeBeat("dc1-app-01", "dc1", 4_000, st2)
        assert await s.newest_heartbeat() == ("dc1-app-01", "dc1", 4_000)
        # The statement of a release before schema 8 (rolling upgrade) still works and
        # leaves the status of the row as it was.
        await _admin(fresh_mysql, "INSERT INTO site_heartbeat (node_id, site, beat_ms) "
                     "VALUES ('dc1-app-01', 'dc1', 5000) ON DUPLICATE KEY UPDATE "
                     "site = VALUES(site), beat_ms = VALUES(beat_ms)")
        assert (await s.node_beats(4_500)) == [NodeBeat("dc1-app-01", "dc1", 5_000, st2)]
        # Migration 8 runs again without harm (an interrupted migration, nodes side by
        # side): an existing column counts as added.
        conn = await asyncmy.connect(host=fresh_mysql.host, port=fresh_mysql.port,
                                     user=fresh_mysql.user, password=fresh_mysql.password,
                                     database=fresh_mysql.database, autocommit=True)
        try:
            async with conn.cursor() as cur:
                (mig,) = [m for m in migrations.load() if m.version == 8]
                for sql in mig.statements(s.flavor):
                    await run_ddl(cur, sql)
        finally:
            conn.close()
    finally:
        await s.close()


async def test_unreachable_server_is_unavailable(db_server: MysqlDsn) -> None:
    from engines import free_port

    dsn = MysqlDsn("127.0.0.1", free_port(), db_server.user, db_server.password,
                   db_server.database)
    s = MysqlStore(dsn, pool_size=2, timeout=2.0)
    with pytest.raises(Unavailable):
        await s.open()
    assert await s.ping() is False
    with pytest.raises(Unavailable):
        await s.get_user("u_1")


async def test_hung_database_times_out(fresh_mysql: MysqlDsn, engine: str) -> None:
    """A server that stops answering (SIGSTOP) costs one timeout, then Unavailable."""
    s = MysqlStore(fresh_mysql, pool_size=4, timeout=1.5)
    await s.open()
    try:
        await s.create_conversation(ConversationRow("g:h", GROUP, "h", 0, "u_a", 0, 0),
                                    [("u_a", 3)], entry("g:h", "create"))
        pid = stop_database(engine)
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await s.append(entry("g:h", "stuck"))
            assert time.monotonic() - started < 5
            assert await s.ping() is False
        finally:
            os.kill(pid, signal.SIGCONT)
        stored, _ = await s.append(entry("g:h", "stuck"))  # the client's re-send
        again, dup = await s.append(entry("g:h", "stuck"))
        assert dup and again.seq == stored.seq
        history = await s.entries_after("g:h", 0, 10)
        assert [e.client_msg_id for e in history] == ["create", "stuck"]
    finally:
        await s.close()


async def test_database_crash_mid_stream(fresh_mysql: MysqlDsn, engine: str) -> None:
    """Kill -9 the database while appends stream in: every append either returned (and
    is stored exactly once) or raised Unavailable; the pool reconnects after restart.
    On tidb this holds only because services.sh keeps a small transaction's keys in one
    region (split-table = false): unistore, unlike TiKV, keeps locks in memory, and
    lost acknowledged rows in about one run in four without it (engines.py)."""
    s = MysqlStore(fresh_mysql, pool_size=8, timeout=3.0)
    await s.open()
    try:
        await s.create_conversation(ConversationRow("g:f", GROUP, "f", 0, "u_a", 0, 0),
                                    [("u_a", 3)], entry("g:f", "create"))
        acked: dict[str, int] = {}
        failed: list[str] = []
        other: list[BaseException] = []
        phase = {"down": False}
        enough = asyncio.Event()  # set once 100 appends are acknowledged
        during_outage: list[str] = []

        async def sender(n: int, count: int) -> None:
            for i in range(count):
                cid = f"w{n}-{i}"
                try:
                    e, dup = await s.append(entry("g:f", cid))
                except Unavailable:
                    failed.append(cid)
                    await asyncio.sleep(0.01)
                    continue
                except BaseException as exc:  # anything else breaks the contract
                    other.append(exc)
                    return
                assert not dup
                acked[cid] = e.seq
                if len(acked) >= 100:
                    enough.set()
                if phase["down"]:
                    during_outage.append(cid)

        async def crash() -> None:
            await enough.wait()
            await asyncio.to_thread(kill_database, engine)
            await asyncio.sleep(0.1)  # answers read before the kill are handled by now
            phase["down"] = True
            await asyncio.sleep(1.0)  # appends keep coming in and must all fail
            phase["down"] = False
            await asyncio.to_thread(start_database, engine)

        try:
            await asyncio.gather(crash(), *(sender(n, 150) for n in range(4)))
        finally:
            start_database(engine)  # never leave the database down for other tests
        assert not other, other
        assert failed, "the crash made no append fail"
        assert not during_outage, f"appends acknowledged while the database was down: {during_outage}"
        assert await s.ping() is True

        # After the restart the pool reconnects and appends succeed again.
        e, dup = await s.append(entry("g:f", "after-restart"))
        assert not dup
        acked["after-restart"] = e.seq

        stored = await s.entries_after("g:f", 0, 10_000)
        by_cid: dict[str, list[int]] = {}
        for st in stored:
            by_cid.setdefault(st.client_msg_id, []).append(st.seq)
        for cid, seq in acked.items():
            assert by_cid.get(cid) == [seq], f"acknowledged {cid} (seq {seq}) lost or duplicated"
        assert all(len(v) == 1 for v in by_cid.values())
        assert [st.seq for st in stored] == list(range(1, len(stored) + 1))  # no holes

        # Clients re-send what failed; each ends up stored exactly once.
        for cid in failed:
            await s.append(entry("g:f", cid))
        stored = await s.entries_after("g:f", 0, 10_000)
        cids = [st.client_msg_id for st in stored]
        assert len(cids) == len(set(cids)) == 1 + len(acked) + len(failed)
    finally:
        await s.close()


# An entry bigger than TiDB stores in one row. TiDB refuses a key-value entry over
# txn-entry-size-limit (6 MiB by default, in the 2022 tidb-server of services.sh as in
# TiDB 7.x/8.x, where the session variable tidb_txn_entry_size_limit can also change
# it) with error 8025; MariaDB takes up to max_allowed_packet (16 MiB by default) in a
# MEDIUMBLOB.
BIG = 7 * 1024 * 1024


async def test_entry_over_the_row_limit_is_too_large_not_unavailable(
        fresh_mysql: MysqlDsn, engine: str) -> None:
    s = MysqlStore(fresh_mysql, pool_size=2, timeout=10.0)
    await s.open()
    try:
        await s.create_conversation(ConversationRow("g:big", GROUP, "b", 0, "u_a", 0, 0),
                                    [("u_a", 3)], entry("g:big", "create"))
        big = entry("g:big", "big", content=os.urandom(BIG))
        if engine == "tidb":
            # Refused for good (a re-send cannot help), and nothing of it committed.
            with pytest.raises(TooLarge, match="8025"):
                await s.append(big)
            assert await s.find_by_client_id("g:big", "u_a", "big") is None
        else:
            stored, _ = await s.append(big)
            assert stored.seq == 2
        after, _ = await s.append(entry("g:big", "small"))  # the store goes on
        assert after.seq == (2 if engine == "tidb" else 3)
    finally:
        await s.close()


async def test_content_over_the_limit_is_refused_up_front(fresh_mysql: MysqlDsn, engine: str,
                                                         node_factory: NodeFactory) -> None:
    """chat.max_content_size (4 MiB) keeps content under what TiDB stores in a row: a
    larger SEND is answered PAYLOAD_TOO_LARGE at once, not UNAVAILABLE (which clients
    retry for ever). Set above the database's limit, the database's refusal still
    comes back as PAYLOAD_TOO_LARGE."""
    from tongxin.client import TongxinError

    d = fresh_mysql
    storage = {"backend": "mysql",
               "mysql_dsn": f"mysql://{d.user}:{d.password}@{d.host}:{d.port}/{d.database}"}
    node = await node_factory(storage=storage)
    alice = await node.user("alice")
    await node.user("bob")
    conv = (await alice.direct("bob")).conversation_id
    with pytest.raises(TongxinError) as info:
        await alice.send(conv, pb.Content(encrypted=os.urandom(5 * 1024 * 1024)))
    assert info.value.code == pb.PAYLOAD_TOO_LARGE and not info.value.fatal
    assert "chat.max_content_size (4194304)" in info.value.message
    ok = await alice.send(conv, pb.Content(encrypted=os.urandom(3 * 1024 * 1024)))
    assert ok.seq > 0

    node.node.chat.cfg.max_content_size = BIG + 1024  # as if configured so
    content = pb.Content(encrypted=os.urandom(BIG))
    if engine == "tidb":
        with pytest.raises(TongxinError) as info:
            await alice.send(conv, content, client_msg_id="too-big")
        assert info.value.code == pb.PAYLOAD_TOO_LARGE
        assert "refused the row as too large" in info.value.message
    else:
        assert (await alice.send(conv, content, client_msg_id="too-big")).seq == ok.seq + 1


# ---- end to end ----------------------------------------------------------------------


async def test_two_users_chat_on_mysql(node_factory: NodeFactory, fresh_mysql: MysqlDsn) -> None:
    d = fresh_mysql
    dsn = f"mysql://{d.user}:{d.password}@{d.host}:{d.port}/{d.database}"
    server = await node_factory(storage={"backend": "mysql", "mysql_dsn": dsn})
    assert isinstance(server.node.store, MysqlStore)
    alice = await server.user("alice")
    bob = await server.user("bob")
    conv = await alice.direct("bob")
    ack = await alice.send_text(conv.conversation_id, "你好, bob")
    assert ack.seq == conv.last_seq + 1
    ev = await bob.next_event(pb.DELIVER)
    while ev.message.kind != pb.CHAT:
        ev = await bob.next_event(pb.DELIVER)
    assert ev.message.content.text == "你好, bob"
    assert ev.message.seq == ack.seq
    reply = await bob.send_text(conv.conversation_id, "hi alice")
    assert reply.seq == ack.seq + 1
    got = await alice.next_event(pb.DELIVER)
    while got.message.kind != pb.CHAT:
        got = await alice.next_event(pb.DELIVER)
    assert got.message.content.text == "hi alice"
    # The history is in the database: a second store over the same one sees it.
    other = MysqlStore(d, pool_size=1, timeout=5.0)
    other.atrest_config = server.cfg  # content is sealed at rest: open with the node's keys
    await other.open()
    try:
        history = await other.entries_after(conv.conversation_id, 0, 10)
        assert [e.seq for e in history][-2:] == [ack.seq, reply.seq]
        assert pb.Content.FromString(history[-1].content).text == "hi alice"
        assert (await other.get_user_by_name("alice")) is not None
    finally:
        await other.close()


# ---- compliance: retention and export read and delete through the port ----------------


def timed(conv: str, cid: str, sent_at: int, sender: str = "u_a") -> Entry:
    e = entry(conv, cid, sender)
    e.sent_at = sent_at
    return e


async def test_time_range_reads_for_export(store: ChatStore) -> None:
    await store.create_conversation(ConversationRow("d:u_a:u_c", DIRECT, "", 0, "u_a", 0, 0),
                                    [("u_a", 1), ("u_c", 1)], entry("d:u_a:u_c", "create"))
    for i in range(6):  # g:1 seqs 2..7 at 100, 200, ..., 600; alternating senders
        await store.append(timed("g:1", f"t{i}", 100 * (i + 1), "u_a" if i % 2 else "u_b"))
    await store.append(timed("d:u_a:u_c", "d0", 250, "u_c"))
    assert await store.conversation_ids("", 10) == ["d:u_a:u_c", "g:1"]
    assert await store.conversation_ids("d:u_a:u_c", 10) == ["g:1"]
    assert await store.conversation_ids("", 1) == ["d:u_a:u_c"]
    assert await store.memberships("u_a") == [("d:u_a:u_c", 1), ("g:1", 1)]
    assert await store.memberships("u_c") == [("d:u_a:u_c", 1)]
    assert await store.memberships("u_z") == []
    got = await store.entries_between("g:1", 200, 600, 0, 100)
    assert [(e.seq, e.sent_at) for e in got] == [(3, 200), (4, 300), (5, 400), (6, 500)]
    assert [e.seq for e in await store.entries_between("g:1", 200, 600, 3, 2)] == [4, 5]
    assert [e.seq for e in await store.entries_between("g:1", 0, 10_000, 0, 100, min_seq=6)] == [6, 7]
    assert await store.entries_between("g:1", 700, 800, 0, 100) == []
    sent = await store.sent_by("u_b", 0, 10_000)
    assert [(e.conversation_id, e.seq) for e in sent] == [("g:1", 2), ("g:1", 4), ("g:1", 6)]
    assert [e.seq for e in await store.sent_by("u_b", 200, 500)] == [4]
    assert [(e.conversation_id, e.seq) for e in await store.sent_by("u_c", 0, 10_000)] == [
        ("d:u_a:u_c", 2)]


async def test_delete_before_in_batches_sparing_senders(store: ChatStore) -> None:
    for i in range(6):  # seqs 2..7 at 100..600: u_b sends 2, 4, 6
        await store.append(timed("g:1", f"t{i}", 100 * (i + 1), "u_a" if i % 2 else "u_b"))
    # seq 1 (the create entry, sent_at 1) and 2..5 are before 450; u_a's are 1, 3, 5.
    assert await store.delete_before("g:1", 450, ["u_b"], 2) == 2
    assert [e.seq for e in await store.entries_after("g:1", 0, 100)] == [2, 4, 5, 6, 7]
    assert await store.delete_before("g:1", 450, ["u_b"], 2) == 1
    assert await store.delete_before("g:1", 450, ["u_b"], 2) == 0
    assert [e.seq for e in await store.entries_after("g:1", 0, 100)] == [2, 4, 6, 7]
    assert await store.delete_before("g:1", 450, [], 10) == 2
    assert [e.seq for e in await store.entries_after("g:1", 0, 100)] == [6, 7]
    assert await store.delete_before("g:other", 10_000, [], 10) == 0
    # The log goes on from its last seq: deleting old entries never reuses seqs.
    e, dup = await store.append(timed("g:1", "after", 700))
    assert not dup and e.seq == 8


# ---- organisation units (tongxin.org.units) and the sysadmin's group list -------------


async def _org_snapshot(s: ChatStore) -> list[tuple[str, str, str, int]]:
    return [(u.id, u.parent_id, u.name, u.member_count) for u in await s.org_units()]


async def test_org_units_tree_and_refusals(opener: Opener) -> None:
    s = await opener()
    assert await s.org_units() == [] and await s.org_assignments() == {}
    hq = await s.org_create("ou_hq", "", " 总部 ", 10)
    assert (hq.name, hq.parent_id, hq.created_at) == ("总部", "", 10)
    await s.org_create("ou_off", "ou_hq", "办公厅", 11)
    await s.org_create("ou_sec", "ou_off", "秘书处", 12)
    await s.org_create("ou_br", "", "分公司", 13)
    await s.org_create("ou_br_off", "ou_br", "办公厅", 14)  # the same name under another parent
    assert await s.org_assign("u_1", "ou_sec", 20) == ""
    assert await s.org_assign("u_2", "ou_sec", 21) == ""
    assert await s.org_assign("u_2", "ou_off", 22) == "ou_sec"  # one unit at a time: a move
    assert await s.org_assignments() == {"u_1": "ou_sec", "u_2": "ou_off"}
    before = await _org_snapshot(s)
    assert before == [("ou_br", "", "分公司", 0), ("ou_hq", "", "总部", 0),
                      ("ou_br_off", "ou_br", "办公厅", 0), ("ou_off", "ou_hq", "办公厅", 1),
                      ("ou_sec", "ou_off", "秘书处", 1)]
    # Every refusal leaves the tree and the assignments exactly as they were.
    refused: list[tuple[Callable[[], Awaitable[object]], type[Exception]]] = [
        (lambda: s.org_create("ou_x", "ou_nope", "x", 1), org.UnitNotFound),
        (lambda: s.org_create("ou_x", "ou_hq", "办公厅", 1), org.NameTaken),
        (lambda: s.org_create("ou_x", "", "", 1), org.OrgRefused),
        (lambda: s.org_update("ou_hq", parent_id="ou_sec"), org.OrgRefused),  # a cycle
        (lambda: s.org_update("ou_hq", parent_id="ou_hq"), org.OrgRefused),
        (lambda: s.org_update("ou_br_off", parent_id="ou_hq"), org.NameTaken),
        (lambda: s.org_update("ou_br", name="总部"), org.NameTaken),
        (lambda: s.org_update("ou_nope", name="x"), org.UnitNotFound),
        (lambda: s.org_delete("ou_off"), org.UnitNotEmpty),  # a sub-unit and a member
        (lambda: s.org_delete("ou_sec"), org.UnitNotEmpty),  # a member
        (lambda: s.org_assign("u_1", "ou_nope", 30), org.UnitNotFound),
    ]
    for attempt, error in refused:
        with pytest.raises(error):
            await attempt()
        assert await _org_snapshot(s) == before
        assert await s.org_assignments() == {"u_1": "ou_sec", "u_2": "ou_off"}
    # Rename and move in one change; then empty a unit and delete it.
    old, new = await s.org_update("ou_sec", name="机要处", parent_id="ou_hq")
    assert (old.name, old.parent_id, new.name, new.parent_id) == ("秘书处", "ou_off", "机要处", "ou_hq")
    assert await s.org_assign("u_1", "", 40) == "ou_sec"
    assert await s.org_assign("u_1", "", 41) == ""
    gone = await s.org_delete("ou_sec")
    assert gone.name == "机要处"
    assert [u.id for u in await s.org_units()] == ["ou_br", "ou_hq", "ou_br_off", "ou_off"]


async def test_org_concurrent_changes_cannot_make_a_cycle_or_twins(opener: Opener) -> None:
    # Two nodes (two stores on one database) change the tree at the same time.
    s1, s2 = await opener(), await opener()
    await s1.org_create("ou_a", "", "A", 1)
    await s1.org_create("ou_b", "", "B", 1)
    got = await asyncio.gather(s1.org_update("ou_a", parent_id="ou_b"),
                               s2.org_update("ou_b", parent_id="ou_a"), return_exceptions=True)
    assert sorted(type(g).__name__ for g in got) == ["OrgRefused", "tuple"], got
    parents = {u.id: u.parent_id for u in await s1.org_units()}
    assert parents in ({"ou_a": "ou_b", "ou_b": ""}, {"ou_a": "", "ou_b": "ou_a"})
    twins = await asyncio.gather(*(st.org_create(f"ou_t{i}", "", "同名", 2)
                                   for i, st in enumerate((s1, s2, s1, s2))),
                                 return_exceptions=True)
    assert sum(isinstance(t, OrgUnit) for t in twins) == 1, twins
    assert all(isinstance(t, OrgUnit | org.NameTaken) for t in twins), twins


async def test_list_groups_pages_and_searches_by_name(store: ChatStore) -> None:
    for i, name in enumerate(["项目组 甲", "Lunch", "项目组 乙", "lunch club"]):
        cid = f"g:{i + 2}"
        await store.create_conversation(ConversationRow(cid, GROUP, name, 10 + i, "u_a", 0, 0),
                                        [("u_a", 3)], entry(cid, "create"))
    await store.create_conversation(ConversationRow("d:u_a:u_b", DIRECT, "", 5, "u_a", 0, 0),
                                    [("u_a", 1), ("u_b", 1)], entry("d:u_a:u_b", "create"))
    every = await store.list_groups("", "", 100)
    assert [c.id for c in every] == ["g:1", "g:2", "g:3", "g:4", "g:5"]  # no direct chats
    assert every[0].member_count == 2 and every[1].created_at == 10
    assert [c.id for c in await store.list_groups("", "g:2", 2)] == ["g:3", "g:4"]
    assert [c.name for c in await store.list_groups("项目组", "", 100)] == ["项目组 甲", "项目组 乙"]
    assert [c.name for c in await store.list_groups("Lunch", "", 100)] == ["Lunch"]  # case kept
    assert [c.name for c in await store.list_groups("%", "", 100)] == []  # not a pattern

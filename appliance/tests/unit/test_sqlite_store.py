"""The SQLite adapter: seq assignment, idempotency and group commit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tongxin.store.ports import ConversationRow, Entry, GroupFull, MemberOps, NoSuchConversation
from tongxin.store.sqlite_store import SqliteStore
from tongxin.store.sqlite_worker import private_file


def entry(conv: str, cid: str, sender: str = "u_a") -> Entry:
    return Entry(conversation_id=conv, sender_id=sender, sender_device="d", client_msg_id=cid,
                 sent_at=1, kind=1, content=b"x")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "t.db")
    await s.open()
    conv = ConversationRow("g:1", 2, "g", 0, "u_a", 0, 0)
    await s.create_conversation(conv, [("u_a", 3), ("u_b", 1)], entry("g:1", "create"))
    yield s
    await s.close()


async def test_concurrent_appends_get_dense_increasing_seqs(store: SqliteStore) -> None:
    results = await asyncio.gather(*(store.append(entry("g:1", f"m{i}")) for i in range(300)))
    seqs = [e.seq for e, dup in results]
    assert not any(dup for _, dup in results)
    assert sorted(seqs) == list(range(2, 302))
    # Submission order is seq order: the writer is one FIFO thread.
    assert seqs == sorted(seqs)
    conv = await store.get_conversation("g:1")
    assert conv is not None and conv.last_seq == 301


async def test_duplicate_client_id_returns_the_original(store: SqliteStore) -> None:
    first, dup1 = await store.append(entry("g:1", "same"))
    again, dup2 = await store.append(entry("g:1", "same"))
    assert (dup1, dup2) == (False, True)
    assert again.seq == first.seq
    other, dup3 = await store.append(entry("g:1", "same", sender="u_b"))
    assert not dup3 and other.seq == first.seq + 1  # ids are per sender


async def test_failing_job_does_not_undo_its_batch(store: SqliteStore) -> None:
    jobs = [store.append(entry("g:1", f"ok{i}")) for i in range(20)]
    jobs.insert(10, store.append(entry("g:missing", "bad")))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert isinstance(results[10], NoSuchConversation)
    stored = await store.entries_after("g:1", 1, 100)
    assert [e.client_msg_id for e in stored] == [f"ok{i}" for i in range(20)]


async def test_entries_survive_reopen(tmp_path: Path, store: SqliteStore) -> None:
    await store.append(entry("g:1", "durable"))
    await store.close()
    with sqlite3.connect(tmp_path / "t.db") as raw:
        assert raw.execute("SELECT count(*) FROM messages WHERE client_msg_id='durable'"
                           ).fetchone() == (1,)
    await store.open()


async def test_group_size_limit_is_atomic(store: SqliteStore) -> None:
    ops = MemberOps(add=[(f"u_{i}", 1) for i in range(5)])
    with pytest.raises(GroupFull):
        await store.change_members("g:1", ops, entry("g:1", "add"), max_members=4)
    assert sorted(await store.member_ids("g:1")) == ["u_a", "u_b"]
    conv = await store.get_conversation("g:1")
    assert conv is not None and conv.last_seq == 1  # the refused change left no entry


async def test_cursor_only_moves_forward(store: SqliteStore) -> None:
    for i in range(5):
        await store.append(entry("g:1", f"c{i}"))
    assert await store.set_cursor("g:1", "u_b", "read", 4) == 4
    assert await store.set_cursor("g:1", "u_b", "read", 2) == 4
    member = await store.get_member("g:1", "u_b")
    assert member is not None and member.read_seq == 4


async def test_database_and_its_wal_are_private_to_the_service_user(tmp_path: Path) -> None:
    # Password hashes and token state: a umask of 022 must not make them world-readable.
    home = tmp_path / "home"
    s = SqliteStore(home / "tongxin.db")
    await s.open()
    conv = ConversationRow("g:1", 2, "g", 0, "u_a", 0, 0)
    await s.create_conversation(conv, [("u_a", 3)], entry("g:1", "create"))
    wal = home / "tongxin.db-wal"
    assert wal.exists() and wal.stat().st_mode & 0o777 == 0o600
    await s.close()
    assert (home / "tongxin.db").stat().st_mode & 0o777 == 0o600
    assert home.stat().st_mode & 0o777 == 0o700


def test_an_existing_readable_database_and_its_wal_are_tightened(tmp_path: Path) -> None:
    # Straight on private_file: a store's close checkpoints and deletes the -wal, so
    # through open/close a loose -wal could not be told from a removed one.
    db = tmp_path / "t.db"
    for name, body in (("t.db", b"SQLite format 3\x00"), ("t.db-wal", b"w"), ("t.db-shm", b"s")):
        (tmp_path / name).write_bytes(body)
        (tmp_path / name).chmod(0o644)
    (tmp_path / "other").write_bytes(b"")
    (tmp_path / "other").chmod(0o644)
    private_file(db)
    for name in ("t.db", "t.db-wal", "t.db-shm"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    assert db.read_bytes() == b"SQLite format 3\x00"  # tightened, not rewritten
    assert (tmp_path / "other").stat().st_mode & 0o777 == 0o644

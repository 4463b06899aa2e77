"""Read receipts: cursor writes coalesced into batches, answered after the write."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tongxin.chat.cursors import CursorBatcher, KnownLastSeq
from tongxin.chat.members import MemberCache
from tongxin.chat.service import Actor, ChatService
from tongxin.config import ChatConfig
from tongxin.delivery.ports import Delivery
from tongxin.errors import RequestError
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import ConversationRow, CursorMark, Entry, MemberOps, Unavailable
from tongxin.store.sqlite_store import SqliteStore

USERS = [f"u_{i:03d}" for i in range(300)]


def entry(cid: str) -> Entry:
    return Entry(conversation_id="g:1", sender_id="u_000", sender_device="d", client_msg_id=cid,
                 sent_at=1, kind=1, content=b"x")


class Recording:
    """A store wrapper that counts set_cursors calls and can refuse them."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.batches: list[list[CursorMark]] = []
        self.down = False

    async def set_cursors(self, marks: list[CursorMark]) -> list[int]:
        self.batches.append(list(marks))
        if self.down:
            raise Unavailable("database is down")
        return await self.inner.set_cursors(marks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Bus:
    republish_duplicates = False

    def __init__(self) -> None:
        self.published: list[Delivery] = []

    async def start(self, handler: Any) -> None:
        pass

    async def publish(self, delivery: Delivery) -> None:
        self.published.append(delivery)

    async def close(self) -> None:
        pass


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "t.db")
    await s.open()
    await s.create_conversation(ConversationRow("g:1", 2, "g", 0, "u_000", 0, 0),
                                [(u, 1) for u in USERS], entry("create"))
    for i in range(9):
        await s.append(entry(f"m{i}"))  # last_seq 10
    yield s
    await s.close()


async def cursor(store: SqliteStore, user: str) -> int:
    member = await store.get_member("g:1", user)
    assert member is not None
    return member.read_seq


async def test_raises_of_one_user_end_at_the_highest(store: SqliteStore) -> None:
    rec = Recording(store)
    batcher = CursorBatcher(rec)
    seqs = list(range(1, 11)) * 5
    random.Random(7).shuffle(seqs)
    answers = await asyncio.gather(*(batcher.raise_to("g:1", "u_001", "read", s) for s in seqs))
    assert await cursor(store, "u_001") == 10
    # Each answer is the cursor as stored by the write that held the raise:
    # never below the raise itself, and the last write's answer is the highest.
    assert all(a >= s for a, s in zip(answers, seqs, strict=True))
    assert max(answers) == 10
    # Coalesced: 50 raises of one key are far fewer writes, one row each.
    assert len(rec.batches) <= 2
    assert all(len(b) == 1 for b in rec.batches)


async def test_a_lower_raise_never_moves_the_cursor_back(store: SqliteStore) -> None:
    batcher = CursorBatcher(store)
    assert await batcher.raise_to("g:1", "u_001", "read", 8) == 8
    assert await batcher.raise_to("g:1", "u_001", "read", 3) == 8
    assert await cursor(store, "u_001") == 8


async def test_concurrent_raises_of_different_users_are_all_stored(store: SqliteStore) -> None:
    rec = Recording(store)
    batcher = CursorBatcher(rec, max_batch=64)
    want = {u: 1 + i % 10 for i, u in enumerate(USERS)}
    answers = await asyncio.gather(*(batcher.raise_to("g:1", u, "read", s)
                                     for u, s in want.items()))
    assert answers == list(want.values())
    for u, s in want.items():
        assert await cursor(store, u) == s
    # Batched, and no write larger than max_batch.
    assert 300 / 64 <= len(rec.batches) < 300 / 10
    assert max(len(b) for b in rec.batches) <= 64


async def test_failed_batch_fails_every_waiter_and_stores_none_of_it(
        store: SqliteStore, tmp_path: Path) -> None:
    # A real database error in the middle of the batch's statements: the rows
    # before it were already updated inside the transaction.
    with sqlite3.connect(tmp_path / "t.db") as raw:
        raw.execute("CREATE TRIGGER refuse BEFORE UPDATE OF read_seq ON members "
                    "WHEN NEW.user_id = 'u_150' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
    batcher = CursorBatcher(store, max_batch=1000)
    results = await asyncio.gather(*(batcher.raise_to("g:1", u, "read", 7) for u in USERS),
                                   return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert [await cursor(store, u) for u in USERS] == [0] * len(USERS)
    # The batcher is not wedged by the failure: the next raise is written.
    with sqlite3.connect(tmp_path / "t.db") as raw:
        raw.execute("DROP TRIGGER refuse")
    assert await batcher.raise_to("g:1", "u_001", "read", 7) == 7


async def test_a_cancelled_waiter_does_not_cancel_the_others(store: SqliteStore) -> None:
    batcher = CursorBatcher(store)
    first = asyncio.create_task(batcher.raise_to("g:1", "u_001", "read", 4))
    second = asyncio.create_task(batcher.raise_to("g:1", "u_001", "read", 5))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == 5
    assert await cursor(store, "u_001") == 5


# ---- through ChatService.receipt ---------------------------------------------------


def service(store: Any, bus: Bus, fanout_limit: int = 500) -> ChatService:
    return ChatService(store, bus, MemberCache(store), ChatConfig(receipt_fanout_limit=fanout_limit),
                       1 << 20)


def receipt(seq: int, kind: int = pb.READ) -> pb.Receipt:
    return pb.Receipt(conversation_id="g:1", kind=kind, seq=seq)


async def test_receipt_event_carries_the_stored_cursor(store: SqliteStore) -> None:
    bus = Bus()
    chat = service(store, bus, fanout_limit=10)
    await chat.receipt(Actor("u_001", "d1"), receipt(9))
    await chat.receipt(Actor("u_001", "d2"), receipt(4))  # behind: the event says 9
    events = [pb.Receipt.FromString(d.payload) for d in bus.published]
    assert [(e.seq, e.device_id) for e in events] == [(9, "d1"), (9, "d2")]
    # Above receipt_fanout_limit members: only the reader's own devices.
    assert all(d.user_ids == ("u_001",) for d in bus.published)


async def test_receipts_of_a_group_are_answered_after_their_write(store: SqliteStore) -> None:
    rec = Recording(store)
    bus = Bus()
    chat = service(rec, bus)
    await asyncio.gather(*(chat.receipt(Actor(u, "d"), receipt(10)) for u in USERS))
    assert [await cursor(store, u) for u in USERS] == [10] * len(USERS)
    assert len(bus.published) == len(USERS)
    assert len(rec.batches) < 10


async def test_unavailable_store_answers_unavailable_with_a_retry_hint(
        store: SqliteStore) -> None:
    rec = Recording(store)
    rec.down = True
    bus = Bus()
    chat = service(rec, bus)
    results = await asyncio.gather(*(chat.receipt(Actor(u, "d"), receipt(5)) for u in USERS[:20]),
                                   return_exceptions=True)
    for r in results:
        assert isinstance(r, RequestError)
        assert r.code == pb.UNAVAILABLE and r.retry_after_ms > 0
    assert bus.published == []  # no event for a cursor that was not stored
    assert await cursor(store, "u_001") == 0


async def test_receipt_checks_membership_and_seq(store: SqliteStore) -> None:
    chat = service(store, Bus())
    with pytest.raises(RequestError) as err:
        await chat.receipt(Actor("u_stranger", "d"), receipt(5))
    assert err.value.code == pb.NOT_FOUND
    with pytest.raises(RequestError) as err:
        await chat.receipt(Actor("u_001", "d"), receipt(11))
    assert err.value.code == pb.INVALID_ARGUMENT
    # A message sent since the last read makes the higher seq valid.
    await store.append(entry("m-new"))
    await chat.receipt(Actor("u_001", "d"), receipt(11))
    assert await cursor(store, "u_001") == 11


async def test_receipt_of_a_member_removed_meanwhile_is_not_found(store: SqliteStore) -> None:
    chat = service(store, Bus())
    await chat.members.get("g:1")  # cached before the removal reaches this node
    await store.change_members("g:1", MemberOps(remove=["u_002"]), entry("rm"), max_members=1000)
    with pytest.raises(RequestError) as err:
        await chat.receipt(Actor("u_002", "d"), receipt(5))
    assert err.value.code == pb.NOT_FOUND


async def test_a_short_answer_from_the_store_fails_the_waiters(store: SqliteStore) -> None:
    class Short(Recording):
        async def set_cursors(self, marks: list[CursorMark]) -> list[int]:
            return (await super().set_cursors(marks))[:-1]

    batcher = CursorBatcher(Short(store))
    results = await asyncio.wait_for(asyncio.gather(
        *(batcher.raise_to("g:1", u, "read", 3) for u in USERS[:5]), return_exceptions=True), 5)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_known_last_seq_reads_again_after_joining_an_older_read() -> None:
    last = {"g": 5}
    gate = asyncio.Event()
    reads: list[int] = []
    started: asyncio.Queue[None] = asyncio.Queue()

    async def read(conversation_id: str) -> int:
        value = last[conversation_id]  # what the database held when the read ran
        reads.append(value)
        started.put_nowait(None)
        await gate.wait()
        return value

    known = KnownLastSeq(read)
    first = asyncio.create_task(known.last_seq("g", 5))
    await started.get()
    last["g"] = 6  # a message stored after that read ran, and read by a member
    second = asyncio.create_task(known.last_seq("g", 6))
    await asyncio.sleep(0)
    gate.set()
    assert await first == 5
    assert await second == 6  # not refused on the older read's answer
    assert reads == [5, 6]
    assert await known.last_seq("g", 6) == 6 and len(reads) == 2  # now known, no read

"""The member cache never keeps an answer read before a membership change."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tongxin.chat.members import MemberCache
from tongxin.chat.service import Actor, ChatService
from tongxin.config import ChatConfig
from tongxin.errors import RequestError
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import Unavailable


class SlowStore:
    def __init__(self) -> None:
        self.members = {"g": ["a", "b"]}
        self.reads = 0
        self.gate = asyncio.Event()
        self.started: asyncio.Queue[None] = asyncio.Queue()  # one item per read begun

    async def member_ids(self, conversation_id: str) -> list[str]:
        self.reads += 1
        snapshot = list(self.members[conversation_id])
        self.started.put_nowait(None)
        await self.gate.wait()
        return snapshot


async def test_read_racing_an_invalidation_is_not_cached() -> None:
    store = SlowStore()
    cache = MemberCache(store)  # type: ignore[arg-type]
    pending = asyncio.create_task(cache.get("g"))
    await store.started.get()  # the read has taken its snapshot
    store.members["g"] = ["a"]  # b removed while the read is in flight
    cache.invalidate("g")
    store.gate.set()
    assert await pending == frozenset({"a", "b"})  # that caller saw the old set
    assert await cache.get("g") == frozenset({"a"})  # but it was not cached
    assert store.reads == 2


async def test_concurrent_misses_share_one_read() -> None:
    store = SlowStore()
    cache = MemberCache(store)  # type: ignore[arg-type]
    waiting = [asyncio.create_task(cache.get("g")) for _ in range(50)]
    await store.started.get()
    waiting[0].cancel()  # one caller giving up does not cancel the others' read
    store.gate.set()
    results = await asyncio.gather(*waiting[1:])
    assert results == [frozenset({"a", "b"})] * 49
    assert store.reads == 1


async def test_miss_after_an_invalidation_does_not_join_the_older_read() -> None:
    store = SlowStore()
    cache = MemberCache(store)  # type: ignore[arg-type]
    old = asyncio.create_task(cache.get("g"))
    await store.started.get()
    store.members["g"] = ["a"]
    cache.invalidate("g")
    new = asyncio.create_task(cache.get("g"))
    await store.started.get()
    store.gate.set()
    assert await old == frozenset({"a", "b"})
    assert await new == frozenset({"a"})
    assert await cache.get("g") == frozenset({"a"})
    assert store.reads == 2


async def test_hits_do_not_read_the_store() -> None:
    store: Any = SlowStore()
    store.gate.set()
    cache = MemberCache(store)
    await cache.get("g")
    await cache.get("g")
    assert store.reads == 1
    cache.invalidate("g")
    await cache.get("g")
    assert store.reads == 2


class DownStore:
    """A database that refuses every read, as when it is down."""

    def __init__(self) -> None:
        self.appends = 0

    async def member_ids(self, conversation_id: str) -> list[str]:
        raise Unavailable("database error: connection refused")

    async def append(self, *args: object) -> None:
        self.appends += 1


async def test_send_on_a_cold_member_cache_during_an_outage_says_not_stored() -> None:
    # The member read comes before the append; a client must learn the same
    # thing from either: the message is not stored, retry with the same id.
    store: Any = DownStore()
    chat = ChatService(store, bus=None, members=MemberCache(store),  # type: ignore[arg-type]
                       cfg=ChatConfig(), max_message_size=1 << 20)
    req = pb.SendRequest(conversation_id="g", client_msg_id="m1",
                         content=pb.Content(text="hello"))
    with pytest.raises(RequestError) as info:
        await chat.send(Actor("a", "dev"), req)
    assert info.value.code == pb.UNAVAILABLE
    assert info.value.message.startswith("message not stored: ")
    assert "connection refused" in info.value.message
    assert info.value.retry_after_ms == 1000
    assert store.appends == 0

"""The member cache never keeps an answer read before a membership change."""

from __future__ import annotations

import asyncio
from typing import Any

from tongxin.chat.members import MemberCache


class SlowStore:
    def __init__(self) -> None:
        self.members = {"g": ["a", "b"]}
        self.reads = 0
        self.gate = asyncio.Event()

    async def member_ids(self, conversation_id: str) -> list[str]:
        self.reads += 1
        snapshot = list(self.members[conversation_id])
        await self.gate.wait()
        return snapshot


async def test_read_racing_an_invalidation_is_not_cached() -> None:
    store = SlowStore()
    cache = MemberCache(store)  # type: ignore[arg-type]
    pending = asyncio.create_task(cache.get("g"))
    await asyncio.sleep(0)
    store.members["g"] = ["a"]  # b removed while the read is in flight
    cache.invalidate("g")
    store.gate.set()
    assert await pending == frozenset({"a", "b"})  # that caller saw the old set
    assert await cache.get("g") == frozenset({"a"})  # but it was not cached
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

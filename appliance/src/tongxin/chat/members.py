"""A bounded cache of conversation member lists for fan-out.

Every message to a group needs its member list; reading 10,000 rows per
message would make the store the bottleneck. Entries are dropped when a
membership change passes through the delivery bus (on every node).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from tongxin.store.ports import ChatStore


class MemberCache:
    def __init__(self, store: ChatStore, capacity: int = 4096) -> None:
        self.store = store
        self.capacity = capacity
        self._cache: OrderedDict[str, frozenset[str]] = OrderedDict()
        # Bumped by invalidate(): a read that started before a membership
        # change must not put its (old) answer back into the cache after it.
        self._generation: dict[str, int] = {}
        # conversation -> (generation, the read in flight for it)
        self._loading: dict[str, tuple[int, asyncio.Future[frozenset[str]]]] = {}

    async def get(self, conversation_id: str) -> frozenset[str]:
        members = self._cache.get(conversation_id)
        if members is not None:
            self._cache.move_to_end(conversation_id)
            return members
        generation = self._generation.get(conversation_id, 0)
        loading = self._loading.get(conversation_id)
        if loading is None or loading[0] != generation:
            # One read per miss, shared: a large group's members all sending
            # receipts at once after a membership change would otherwise each
            # read the whole list (10,000 reads of 10,000 rows).
            loading = (generation, asyncio.ensure_future(self._load(conversation_id, generation)))
            self._loading[conversation_id] = loading
        # Shielded: one caller giving up must not cancel the others' read.
        return await asyncio.shield(loading[1])

    async def _load(self, conversation_id: str, generation: int) -> frozenset[str]:
        try:
            members = frozenset(await self.store.member_ids(conversation_id))
        finally:
            if (cur := self._loading.get(conversation_id)) is not None and cur[0] == generation:
                del self._loading[conversation_id]
        if self._generation.get(conversation_id, 0) == generation:
            self._cache[conversation_id] = members
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return members

    def invalidate(self, conversation_id: str) -> None:
        self._cache.pop(conversation_id, None)
        self._generation[conversation_id] = self._generation.get(conversation_id, 0) + 1
        if len(self._generation) > 4 * self.capacity:
            # Old generations only matter while a read is in flight.
            self._generation.clear()

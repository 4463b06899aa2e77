"""Read/delivered cursors written in batches.

Why: every member of a large group sends a READ receipt for the same message
at about the same moment. One store write per receipt made 10,000 receipts
cost the embedded node ~2 s of CPU (a writer job, a SAVEPOINT and a
cross-thread wake-up each) and queued SENDs of other conversations behind
them. Raises that arrive while a write is in flight wait for the next one and
go in together; two raises of the same (conversation, user, kind) keep the
higher seq, as the store would.

A waiter is answered only after the batch holding its raise has committed,
with the stored cursor; a failed batch fails every one of its waiters and
(one transaction) stores none of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tongxin.store.ports import ChatStore, CursorMark

CursorKey = tuple[str, str, str]  # conversation id, user id, kind


@dataclass(slots=True)
class _Pending:
    seq: int
    # One future per waiter, not a shared one: a waiter that gives up
    # (cancelled) must not cancel the others' answer.
    waiters: list[asyncio.Future[int]] = field(default_factory=list)


class CursorBatcher:
    """Coalesces ``store.set_cursors`` calls; one batch in flight at a time."""

    def __init__(self, store: ChatStore, max_batch: int = 500) -> None:
        self.store = store
        # Bounds one write so that a SEND queued behind it on the store's
        # writer waits for at most one batch, not for a whole burst.
        self.max_batch = max_batch
        self._pending: dict[CursorKey, _Pending] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def raise_to(self, conversation_id: str, user_id: str, kind: str, seq: int) -> int:
        """Raise the cursor to at least ``seq``; the stored value once committed."""
        key = (conversation_id, user_id, kind)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(seq)
        elif seq > pending.seq:
            pending.seq = seq
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        pending.waiters.append(done)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        while self._pending:
            # One loop turn lets the receipts read in the same turn join.
            await asyncio.sleep(0)
            batch: list[tuple[CursorKey, _Pending]] = []
            for key in list(self._pending)[:self.max_batch]:
                batch.append((key, self._pending.pop(key)))
            marks = [CursorMark(k[0], k[1], k[2], p.seq) for k, p in batch]
            try:
                stored = await self.store.set_cursors(marks)
            except Exception as exc:
                for _, p in batch:
                    _fail(p.waiters, exc)
                continue
            except BaseException as exc:
                # Cancelled (shutdown): no waiter may hang on a write that was dropped.
                for p in [p for _, p in batch] + list(self._pending.values()):
                    _fail(p.waiters, exc)
                self._pending.clear()
                raise
            if len(stored) != len(batch):
                # A store bug must fail the waiters, not leave them waiting forever.
                for _, p in batch:
                    _fail(p.waiters, RuntimeError(
                        f"set_cursors answered {len(stored)} of {len(batch)} cursors"))
                continue
            for (_, p), value in zip(batch, stored, strict=True):
                for fut in p.waiters:
                    if not fut.done():
                        fut.set_result(value)


def _fail(waiters: list[asyncio.Future[int]], exc: BaseException) -> None:
    for fut in waiters:
        if fut.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(exc)


class KnownLastSeq:
    """The highest last_seq seen per conversation, to validate receipts without a read.

    A conversation's last_seq only grows, so a receipt at or below a value
    seen before is valid on every node; only a seq above it costs a read,
    shared by the receipts that need it at the same moment.
    """

    def __init__(self, read: Callable[[str], Awaitable[int]], capacity: int = 4096) -> None:
        self.read = read
        self.capacity = capacity
        self._seen: dict[str, int] = {}
        self._reading: dict[str, asyncio.Future[int]] = {}

    async def last_seq(self, conversation_id: str, at_least: int) -> int:
        """A last_seq of the conversation: the one seen before if it covers
        ``at_least``, else a fresh read."""
        seen = self._seen.get(conversation_id, 0)
        if at_least <= seen:
            return seen
        value = 0
        for _ in range(2):
            reading = self._reading.get(conversation_id)
            joined = reading is not None
            if reading is None:
                reading = asyncio.ensure_future(self._read(conversation_id))
                self._reading[conversation_id] = reading
            value = await asyncio.shield(reading)
            # A read joined in flight may have run before the entry at_least
            # was stored; one read begun after this call has seen it.
            if value >= at_least or not joined:
                break
        return value

    async def _read(self, conversation_id: str) -> int:
        try:
            value = await self.read(conversation_id)
        finally:
            del self._reading[conversation_id]
        if len(self._seen) >= self.capacity and conversation_id not in self._seen:
            # Rebuilt from reads as receipts come: cheaper than an LRU per receipt.
            self._seen.clear()
        if value > self._seen.get(conversation_id, 0):
            self._seen[conversation_id] = value
        return value

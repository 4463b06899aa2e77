"""KEK rotation: a new key-encryption key, then every data key re-wrapped under it.

The data itself is never re-encrypted: only the ``data_keys`` rows change, each with a
compare-and-set on its old KEK id, in batches, so nodes keep serving (they hold their DEKs
unwrapped in memory) and an interrupted run is simply run again: it finds the rows not yet
under the current KEK and finishes them before making yet another KEK. Old KEKs are retired
only after a full pass finds no row left under them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tongxin.atrest.errors import AtRestError
from tongxin.atrest.keyring import DataKeyRow, DekStore, wrap_aad
from tongxin.atrest.providers import MasterKeyProvider

BATCH = 100
MAX_PASSES = 5  # passes that find rows to re-wrap (new DEKs made during the run) before giving up


@dataclass(slots=True)
class RotateResult:
    kek_id: str
    resumed: bool
    rewrapped: int = 0
    retired: list[str] = field(default_factory=list)
    complete: bool = False


@dataclass(slots=True)
class KeyStatus:
    provider: str
    current_kek: str
    by_kek: dict[str, int]

    @property
    def pending(self) -> int:
        """Data keys not yet wrapped under the current KEK (an unfinished rotation)."""
        return sum(n for kek, n in self.by_kek.items() if kek != self.current_kek)


async def all_data_keys(store: DekStore, batch: int = 1000) -> list[DataKeyRow]:
    """Every row of data_keys (one or a few a day: small, unlike the messages)."""
    rows: list[DataKeyRow] = []
    after = -1
    while True:
        got = await store.data_keys(after, batch)
        rows += got
        if len(got) < batch:
            return rows
        after = got[-1].id


async def key_status(provider: MasterKeyProvider, store: DekStore,
                     rows: list[DataKeyRow] | None = None) -> KeyStatus:
    """``rows``: data_keys already read by the caller (else read here)."""
    current = await asyncio.to_thread(provider.current_id)
    if rows is None:
        rows = await all_data_keys(store)
    counts = Counter(r.kek_id for r in rows)
    return KeyStatus(provider.name, current, dict(counts))


async def rotate(provider: MasterKeyProvider, store: DekStore, batch: int = BATCH,
                 progress: Callable[[int], None] | None = None,
                 max_batches: int | None = None) -> RotateResult:
    """Rotate (or finish an interrupted rotation); see the module docstring.

    ``max_batches`` stops early (for tests of resuming and for bounded maintenance windows);
    the result then has ``complete`` False.
    """
    status = await key_status(provider, store)
    resumed = status.pending > 0
    kek = status.current_kek if resumed else await asyncio.to_thread(provider.rotate)
    result = RotateResult(kek, resumed)
    batches = 0
    for _ in range(MAX_PASSES):
        after, found = -1, 0
        while True:
            rows = await store.data_keys(after, batch)
            todo = [r for r in rows if r.kek_id != kek]
            for row in todo:
                aad = wrap_aad(row.id, row.suite)
                new_kek, wrapped = await asyncio.to_thread(_rewrap, provider, row, aad)
                if new_kek != kek:
                    kek = result.kek_id = new_kek  # the KMS rotated again meanwhile
                if await store.rewrap_data_key(row.id, row.kek_id, new_kek, wrapped):
                    result.rewrapped += 1
            found += len(todo)
            if todo:
                batches += 1
                if progress:
                    progress(result.rewrapped)
                if max_batches is not None and batches >= max_batches:
                    return result
            if len(rows) < batch:
                break
            after = rows[-1].id
        if not found:
            in_use = {r.kek_id for r in await all_data_keys(store)}
            result.retired = await asyncio.to_thread(provider.retire, in_use)
            result.complete = True
            return result
    return result


Record = Callable[..., Awaitable[None]]
"""``record(event, outcome, **details)``: writes one audit record as the authorising
administrator (the CLI's and the admin API's; see :func:`rotate_audited`)."""


async def rotate_audited(provider: MasterKeyProvider, store: DekStore, record: Record | None,
                         batch: int = BATCH, progress: Callable[[int], None] | None = None,
                         max_batches: int | None = None) -> RotateResult:
    """:func:`rotate` with its ``keys.rotate`` audit record: outcome ``ok`` (complete),
    ``partial`` (stopped early: run again) or ``failed`` (the error, then re-raised).
    ``tongxin keys rotate`` and the admin API's ``POST /keys/atrest/rotate`` both run this."""
    try:
        res = await rotate(provider, store, batch=batch, progress=progress,
                           max_batches=max_batches)
    except AtRestError as exc:
        if record is not None:
            await record("keys.rotate", "failed", error=str(exc))
        raise
    if record is not None:
        details: dict[str, Any] = {"kek": res.kek_id, "resumed": res.resumed,
                                   "rewrapped": res.rewrapped, "retired": res.retired}
        await record("keys.rotate", "ok" if res.complete else "partial", **details)
    return res


def _rewrap(provider: MasterKeyProvider, row: DataKeyRow, aad: bytes) -> tuple[str, bytes]:
    dek = provider.unwrap(row.kek_id, row.wrapped, aad)
    return provider.wrap(dek, aad)

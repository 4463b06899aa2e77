"""Searching the hot audit trail: the filters of the console's audit page and a walk
over every matching record, oldest or newest first, a batch at a time.

``GET /api/v1/admin/audit`` (a page) and ``GET /api/v1/admin/audit/download`` (the
whole result as a file) both filter with :class:`AuditFilter`, so a download holds
exactly the records the page finds. :func:`walk` reads the store in batches of
:data:`BATCH` records and never holds more than one batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tongxin.compliance.ports import AuditRecord

BATCH = 1000
"""Records read from the store at a time."""


class FilterInvalid(ValueError):
    """A filter parameter that is not what it should be (the API answers 400)."""


class AuditReader(Protocol):
    async def audit_records(self, after_seq: int, limit: int) -> list[AuditRecord]: ...

    async def audit_state(self) -> tuple[int, str]: ...


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """``actor`` (a user id once resolved, or e.g. ``system``), ``event`` (exact, or a
    prefix ending in ``.`` or ``*``), ``outcome``, ``from_ms`` and ``to_ms`` (record
    time, ``to_ms`` exclusive). Empty fields match everything."""

    actor: str = ""
    event: str = ""
    outcome: str = ""
    from_ms: int | None = None
    to_ms: int | None = None

    @classmethod
    def from_query(cls, q: Mapping[str, str]) -> AuditFilter:
        """The filters of a query string; ``actor`` as written (the caller resolves a
        username to its id with :meth:`with_actor`)."""
        try:
            from_ms = int(q["from_ms"]) if q.get("from_ms") else None
            to_ms = int(q["to_ms"]) if q.get("to_ms") else None
        except ValueError:
            raise FilterInvalid("from_ms and to_ms are integers") from None
        return cls(q.get("actor", "").strip(), q.get("event", "").strip(),
                   q.get("outcome", "").strip(), from_ms, to_ms)

    def with_actor(self, actor: str) -> AuditFilter:
        return AuditFilter(actor, self.event, self.outcome, self.from_ms, self.to_ms)

    def __bool__(self) -> bool:
        return bool(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The filters set (for the audit record of a read or a download)."""
        return {k: v for k, v in (("actor", self.actor), ("event", self.event),
                                  ("outcome", self.outcome), ("from_ms", self.from_ms),
                                  ("to_ms", self.to_ms)) if v}

    def matches(self, r: AuditRecord) -> bool:
        if self.actor and r.actor != self.actor:
            return False
        e = self.event
        if e and not (r.event == e or (e[-1] in ".*" and r.event.startswith(e.rstrip("*")))):
            return False
        if self.outcome and r.outcome != self.outcome:
            return False
        if self.from_ms is not None and r.ts < self.from_ms:
            return False
        return self.to_ms is None or r.ts < self.to_ms


async def walk(store: AuditReader, f: AuditFilter, *, newest_first: bool,
               upto: int) -> AsyncIterator[list[AuditRecord]]:
    """Every record with seq <= ``upto`` that ``f`` matches, a batch (list, maybe empty)
    per store read: oldest first, or newest first. ``upto`` fixes the result when the
    walk starts (records written during it, the download's own among them, are left
    out), so the walk ends however busy the trail is. Gaps in seq (records purged
    below the archive cut) are skipped."""
    if newest_first:
        hi = upto
        while hi >= 1:
            lo = max(0, hi - BATCH)
            batch = [r for r in await store.audit_records(lo, hi - lo) if r.seq <= hi]
            yield [r for r in reversed(batch) if f.matches(r)]
            hi = lo
        return
    cursor = 0
    while cursor < upto:
        batch = await store.audit_records(cursor, BATCH)
        if not batch:
            return
        cursor = batch[-1].seq
        yield [r for r in batch if r.seq <= upto and f.matches(r)]
        if len(batch) < BATCH:
            return

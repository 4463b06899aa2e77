"""The "acknowledged vs delivered" check, shared by fault tests and DR drills.

While a workload runs, record every ACK a sender got (``record_ack``) and
every entry each reader saw (``record_seen``). Afterwards, hand the checker
each conversation's log as read back from the system (``check``): it reports

* missing   — ACKed but absent from the log (data loss: the RPO breach);
* duplicated — one client_msg_id stored under more than one seq;
* mismatched — the seq an ACK named holds another message;
* disorder  — the log's seqs are not strictly increasing, or a sender's
  messages are stored out of the order they were ACKed;
* unseen    — per reader: ACKed entries it never received (after sync).

``Report.ok`` is true only when all lists are empty. ``Report.as_dict`` is
what a drill writes into its JSON report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class LogEntry(Protocol):
    """What the checker reads of a stored entry (tongxin.v1.Message fits)."""

    @property
    def conversation_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def sender_id(self) -> str: ...
    @property
    def client_msg_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Acked:
    conversation_id: str
    sender_id: str
    client_msg_id: str
    seq: int
    acked_at_ms: int = 0


@dataclass
class Report:
    acked: int = 0
    stored: int = 0
    missing: list[Acked] = field(default_factory=list)
    duplicated: list[tuple[str, str, list[int]]] = field(default_factory=list)
    mismatched: list[tuple[Acked, str]] = field(default_factory=list)
    disorder: list[str] = field(default_factory=list)
    unseen: dict[str, list[Acked]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.mismatched or self.disorder
                    or any(self.unseen.values()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "acked": self.acked, "stored": self.stored,
            "missing": [_acked(a) for a in self.missing],
            "duplicated": [{"conversation_id": c, "client_msg_id": m, "seqs": s}
                           for c, m, s in self.duplicated],
            "mismatched": [{"ack": _acked(a), "found": f} for a, f in self.mismatched],
            "disorder": self.disorder,
            "unseen": {r: [_acked(a) for a in lst] for r, lst in self.unseen.items() if lst},
        }

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.acked} acknowledged, all stored once and in order"
        unseen = sum(len(v) for v in self.unseen.values())
        return (f"FAILED: {len(self.missing)} missing, {len(self.duplicated)} duplicated, "
                f"{len(self.mismatched)} mismatched, {len(self.disorder)} out of order, "
                f"{unseen} unseen of {self.acked} acknowledged")


def _acked(a: Acked) -> dict[str, Any]:
    return {"conversation_id": a.conversation_id, "sender_id": a.sender_id,
            "client_msg_id": a.client_msg_id, "seq": a.seq, "acked_at_ms": a.acked_at_ms}


class DeliveryChecker:
    def __init__(self) -> None:
        self.acks: list[Acked] = []
        self.seen: dict[str, dict[str, set[int]]] = {}

    def record_ack(self, conversation_id: str, sender_id: str, client_msg_id: str, seq: int,
                   acked_at_ms: int = 0) -> None:
        self.acks.append(Acked(conversation_id, sender_id, client_msg_id, seq, acked_at_ms))

    def record_seen(self, reader: str, conversation_id: str, seq: int) -> None:
        self.seen.setdefault(reader, {}).setdefault(conversation_id, set()).add(seq)

    def check(self, logs: Mapping[str, Iterable[LogEntry]],
              readers: Iterable[str] = ()) -> Report:
        """``logs``: conversation id -> every entry, as read back after the run."""
        report = Report(acked=len(self.acks))
        by_seq: dict[tuple[str, int], LogEntry] = {}
        by_client: dict[tuple[str, str, str], list[int]] = {}
        for conv, entries in logs.items():
            last = 0
            for e in entries:
                report.stored += 1
                if e.seq <= last:
                    report.disorder.append(f"{conv}: seq {e.seq} after {last}")
                last = max(last, e.seq)
                by_seq[(conv, e.seq)] = e
                by_client.setdefault((conv, e.sender_id, e.client_msg_id), []).append(e.seq)
        for (conv, _sender, cid), seqs in by_client.items():
            if len(seqs) > 1:
                report.duplicated.append((conv, cid, seqs))
        last_by_sender: dict[tuple[str, str], Acked] = {}
        for a in self.acks:
            found = by_seq.get((a.conversation_id, a.seq))
            if found is None:
                report.missing.append(a)
                continue
            if (found.sender_id, found.client_msg_id) != (a.sender_id, a.client_msg_id):
                report.mismatched.append((a, f"{found.sender_id}/{found.client_msg_id}"))
            prev = last_by_sender.get((a.conversation_id, a.sender_id))
            if prev is not None and a.acked_at_ms >= prev.acked_at_ms and a.seq < prev.seq:
                report.disorder.append(
                    f"{a.conversation_id}: {a.client_msg_id} acked after {prev.client_msg_id} "
                    f"but stored at seq {a.seq} < {prev.seq}")
            last_by_sender[(a.conversation_id, a.sender_id)] = a
        for reader in readers:
            got = self.seen.get(reader, {})
            report.unseen[reader] = [a for a in self.acks
                                     if a.seq not in got.get(a.conversation_id, set())]
        return report

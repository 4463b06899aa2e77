"""RPO, RTO and per-step timings from the workload's log and the playbook's marks.

Pure functions over parsed records, so the arithmetic is tested on synthetic
logs (tests/unit/test_drill_measure.py). Definitions (docs/operations.md,
"DR drill report"):

* a **new message after** a mark is one whose first send attempt started after
  it (a retry of a message sent before the mark does not count: its first
  attempt may have reached the old site);
* **RTO** = the disaster mark -> the first ACK of a new message after it;
* **RTO, all users** = the disaster mark -> the time by which every workload
  user had a new message ACKed (each logged in again where its connection was
  lost); unmeasured (None) while any user has not;
* **lost** = ACKed messages the read-back does not hold as ACKed: missing (no
  entry at the ACKed seq) or mismatched (another message sits there, as when a
  promoted replica reuses the seqs of an unreplicated tail);
* **RPO** = the age at the disaster of the oldest lost message, 0 when none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tongxin.checker import Acked, DeliveryChecker, LogEntry, Report

INCITY, DR = "incity", "dr"
KINDS = (INCITY, DR)
DEFAULT_TARGETS = {"rpo": 15.0, "rto": 300.0}
TARGET_KEYS = ("rpo", "rto", "rto_all_users")
DISASTER = "disaster"


@dataclass(frozen=True, slots=True)
class AckRecord:
    user: str
    user_id: str
    conversation: str
    seq: int
    client_msg_id: str
    acked_at: int
    sent_at: int  # this attempt
    first_sent_at: int  # the message's first attempt
    entry: str = ""
    latency_ms: float = 0.0

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> AckRecord:
        return cls(user=r["user"], user_id=r.get("user_id", ""), conversation=r["conversation"],
                   seq=int(r["seq"]), client_msg_id=r["client_msg_id"], acked_at=int(r["at"]),
                   sent_at=int(r.get("sent_at", r["at"])),
                   first_sent_at=int(r.get("first_sent_at", r.get("sent_at", r["at"]))),
                   entry=r.get("entry", ""), latency_ms=float(r.get("latency_ms", 0.0)))


@dataclass(frozen=True, slots=True)
class Mark:
    event: str
    at: int
    note: str = ""


@dataclass
class DrillLog:
    """The workload's records and the marks, parsed."""

    users: list[str]
    acks: list[AckRecord] = field(default_factory=list)
    sends: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    logins: list[dict[str, Any]] = field(default_factory=list)
    disconnects: list[dict[str, Any]] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    started_at: int | None = None
    stopped_at: int | None = None

    @classmethod
    def from_records(cls, users: Iterable[str], workload: Iterable[Mapping[str, Any]],
                     marks: Iterable[Mapping[str, Any]] = ()) -> DrillLog:
        log = cls(users=list(users))
        seen: set[tuple[str, str, str]] = set()
        for r in workload:
            kind = r.get("type")
            if kind == "ack":
                a = AckRecord.from_record(r)
                # One ACK per message: a re-send answered as a duplicate names the same entry.
                if (a.conversation, a.user, a.client_msg_id) not in seen:
                    seen.add((a.conversation, a.user, a.client_msg_id))
                    log.acks.append(a)
            elif kind == "send":
                log.sends += 1
            elif kind == "error":
                log.errors.append(dict(r))
            elif kind == "login":
                log.logins.append(dict(r))
            elif kind == "disconnect":
                log.disconnects.append(dict(r))
            elif kind == "start":
                log.started_at = int(r["at"])
            elif kind == "stop":
                log.stopped_at = int(r["at"])
        log.acks.sort(key=lambda a: a.acked_at)
        log.marks = sorted((Mark(str(m["event"]), int(m["at"]), str(m.get("note", "")))
                            for m in marks if m.get("type", "mark") == "mark"),
                           key=lambda m: m.at)
        return log


def find_mark(marks: Sequence[Mark], event: str) -> Mark | None:
    """The latest mark of that name (a drill that fails over and back marks twice)."""
    found = [m for m in marks if m.event == event]
    return found[-1] if found else None


def first_ack_after(acks: Iterable[AckRecord], at: int) -> AckRecord | None:
    best: AckRecord | None = None
    for a in acks:
        if a.first_sent_at > at and (best is None or a.acked_at < best.acked_at):
            best = a
    return best


def recovered_at(acks: Iterable[AckRecord], users: Iterable[str], at: int) -> dict[str, int | None]:
    """Per user: when its first new message after ``at`` was ACKed (None: not yet)."""
    out: dict[str, int | None] = dict.fromkeys(users)
    for a in acks:
        if a.first_sent_at > at and a.user in out:
            prev = out[a.user]
            if prev is None or a.acked_at < prev:
                out[a.user] = a.acked_at
    return out


def relogin_at(logins: Iterable[Mapping[str, Any]], users: Iterable[str],
               at: int) -> dict[str, int | None]:
    """Per user: its first login after ``at`` (None: it kept its connection, or has not yet)."""
    out: dict[str, int | None] = dict.fromkeys(users)
    for r in logins:
        t = int(r["at"])
        u = r.get("user", "")
        if t > at and u in out:
            prev = out[u]
            if prev is None or t < prev:
                out[u] = t
    return out


def all_recovered(recovered: Mapping[str, int | None]) -> int | None:
    """The time by which every user had recovered, or None while one has not."""
    if not recovered or any(v is None for v in recovered.values()):
        return None
    return max(v for v in recovered.values() if v is not None)


@dataclass
class Delivery:
    """The checker's verdict, split into what a kind of drill may allow and what it may not."""

    raw: Report  # every ACK against the read-back
    survivors: Report  # the ACKs not lost, checked again: duplicates and disorder among them
    lost: list[Acked]

    @property
    def missing(self) -> int:
        return len(self.raw.missing)

    @property
    def mismatched(self) -> int:
        return len(self.raw.mismatched)

    @property
    def duplicated(self) -> int:
        return len(self.survivors.duplicated)

    @property
    def disorder(self) -> int:
        return len(self.survivors.disorder)


def check_delivery(acks: Sequence[AckRecord], logs: Mapping[str, Iterable[LogEntry]]) -> Delivery:
    """Run the checker (tongxin.checker) on the ACKs and the read-back logs.

    The first pass finds the lost ACKs (missing or mismatched). Entries a lost
    ACK named are gone, so the disorder the first pass reports around them is
    the loss seen again; the second pass, on the other ACKs only, reports
    duplicates and disorder that are faults of their own.
    """
    entries = {c: list(es) for c, es in logs.items()}
    first = DeliveryChecker()
    for a in sorted(acks, key=lambda a: a.acked_at):
        first.record_ack(a.conversation, a.user_id, a.client_msg_id, a.seq, a.acked_at)
    raw = first.check(entries)
    lost = [*raw.missing, *(a for a, _found in raw.mismatched)]
    gone = {(a.conversation_id, a.sender_id, a.client_msg_id) for a in lost}
    second = DeliveryChecker()
    second.acks = [k for k in first.acks
                   if (k.conversation_id, k.sender_id, k.client_msg_id) not in gone]
    survivors = second.check(entries)
    return Delivery(raw=raw, survivors=survivors, lost=lost)


def rpo_seconds(lost: Iterable[Acked], disaster_at: int) -> float:
    """Age at the disaster of the oldest lost message; 0 when nothing was lost."""
    oldest = min((a.acked_at_ms for a in lost), default=None)
    if oldest is None:
        return 0.0
    return max(0.0, (disaster_at - oldest) / 1000)


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    started_at: int
    duration: float | None  # seconds to the next mark (the last: to the workload's stop)
    since_disaster: float | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "started_at": self.started_at, "duration": self.duration,
                "since_disaster": self.since_disaster, "note": self.note}


def steps(marks: Sequence[Mark], end_at: int | None, disaster_at: int | None) -> list[Step]:
    out = []
    for i, m in enumerate(marks):
        nxt = marks[i + 1].at if i + 1 < len(marks) else end_at
        out.append(Step(m.event, m.at,
                        None if nxt is None else round(max(0, nxt - m.at) / 1000, 3),
                        None if disaster_at is None else round((m.at - disaster_at) / 1000, 3),
                        m.note))
    return out


@dataclass(frozen=True, slots=True)
class Bucket:
    t: float  # seconds since the workload started (the bucket's start)
    acks: int
    errors: int
    latency_p50_ms: float | None
    latency_max_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"t": self.t, "acks": self.acks, "errors": self.errors,
                "latency_p50_ms": self.latency_p50_ms, "latency_max_ms": self.latency_max_ms}


def timeline(acks: Iterable[AckRecord], errors: Iterable[Mapping[str, Any]], start: int,
             end: int, bucket_ms: int = 1000) -> list[Bucket]:
    """ACKs, errors and ACK latency per bucket from ``start`` to ``end`` (ms)."""
    n = max(1, -(-(end - start) // bucket_ms))
    lat: list[list[float]] = [[] for _ in range(n)]
    errs = [0] * n
    for a in acks:
        i = (a.acked_at - start) // bucket_ms
        if 0 <= i < n:
            lat[i].append(a.latency_ms)
    for e in errors:
        i = (int(e["at"]) - start) // bucket_ms
        if 0 <= i < n:
            errs[i] += 1
    out = []
    for i in range(n):
        ls = sorted(lat[i])
        out.append(Bucket(round(i * bucket_ms / 1000, 3), len(ls), errs[i],
                          round(ls[(len(ls) - 1) // 2], 1) if ls else None,
                          round(ls[-1], 1) if ls else None))
    return out


def parse_targets(text: str) -> dict[str, float]:
    """``rpo=15,rto=300[,rto_all_users=600]`` (seconds) over the defaults."""
    out = dict(DEFAULT_TARGETS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in TARGET_KEYS:
            raise ValueError(f"bad target {part!r}: use {', '.join(k + '=SECONDS' for k in TARGET_KEYS)}")
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"bad target {part!r}: {value!r} is not a number of seconds") from None
        if out[key] < 0:
            raise ValueError(f"bad target {part!r}: negative")
    return out


def _secs(ms: int | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)


@dataclass
class Measurement:
    kind: str
    disaster_at: int | None
    rto_seconds: float | None
    rto_all_users_seconds: float | None
    rpo_seconds: float | None
    lost_after_disaster: int
    recovered: dict[str, int | None]
    relogins: dict[str, int | None]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def evaluate(kind: str, log: DrillLog, delivery: Delivery, targets: Mapping[str, float],
             disaster_event: str = DISASTER) -> Measurement:
    """The figures and, in ``problems``, every reason the drill is not ``ok``.

    ``incity`` (synchronous replication) may lose nothing; ``dr`` (asynchronous)
    may lose messages ACKed before the disaster, within the RPO target, and
    nothing ACKed after it. Neither may store a message twice or out of order.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    problems: list[str] = []
    disaster = find_mark(log.marks, disaster_event)
    if not log.acks:
        problems.append("the workload had no message acknowledged")
    if delivery.duplicated:
        problems.append(f"{delivery.duplicated} message(s) stored more than once")
    if delivery.disorder:
        problems.append(f"{delivery.disorder} ordering fault(s) among the surviving messages")
    lost = len(delivery.lost)
    if kind == INCITY and lost:
        problems.append(f"{lost} acknowledged message(s) lost ({delivery.missing} missing, "
                        f"{delivery.mismatched} replaced); an in-city failover may lose none")
    if disaster is None:
        problems.append(f"no {disaster_event!r} mark: RPO and RTO not measured "
                        f"(`tongxin drill mark {disaster_event}` when the disaster is injected)")
        return Measurement(kind, None, None, None, None, 0, {}, {}, problems)
    at = disaster.at
    after = [a for a in delivery.lost if a.acked_at_ms > at]
    if after and kind == DR:
        problems.append(f"{len(after)} message(s) acknowledged after the disaster were lost")
    rpo = round(rpo_seconds(delivery.lost, at), 3)
    first = first_ack_after(log.acks, at)
    rto = None if first is None else _secs(first.acked_at - at)
    recovered = recovered_at(log.acks, log.users, at)
    done = all_recovered(recovered)
    rto_all = None if done is None else _secs(done - at)
    if rpo > targets["rpo"]:
        problems.append(f"RPO {rpo:g} s is above the target {targets['rpo']:g} s")
    if rto is None:
        problems.append("no new message was acknowledged after the disaster: RTO not reached")
    elif rto > targets["rto"]:
        problems.append(f"RTO {rto:g} s is above the target {targets['rto']:g} s")
    all_target = targets.get("rto_all_users", targets["rto"])
    if rto_all is None:
        waiting = sorted(u for u, v in recovered.items() if v is None)
        if rto is not None:
            problems.append(f"{len(waiting)} user(s) never sent again after the disaster: "
                            + ", ".join(waiting[:10]) + (" ..." if len(waiting) > 10 else ""))
    elif rto_all > all_target:
        problems.append(f"RTO for all users {rto_all:g} s is above the target {all_target:g} s")
    return Measurement(kind, at, rto, rto_all, rpo, len(after), recovered,
                       relogin_at(log.logins, log.users, at), problems)

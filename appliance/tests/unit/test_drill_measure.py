"""RPO/RTO arithmetic and the checker's verdict per kind of drill, on synthetic logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tongxin.drill.measure import (
    DR,
    INCITY,
    AckRecord,
    DrillLog,
    check_delivery,
    evaluate,
    first_ack_after,
    parse_targets,
    recovered_at,
    steps,
    timeline,
)

T = 1_700_000_000_000  # the disaster
TARGETS = {"rpo": 15.0, "rto": 300.0}


@dataclass(frozen=True)
class Entry:
    conversation_id: str
    seq: int
    sender_id: str
    client_msg_id: str


def ack(user: str, seq: int, acked: int, first: int | None = None, conv: str = "c1",
        cid: str = "", latency: float = 5.0) -> dict[str, Any]:
    first = acked - 5 if first is None else first
    return {"type": "ack", "at": acked, "user": user, "user_id": f"u_{user}",
            "conversation": conv, "seq": seq, "client_msg_id": cid or f"{user}.{seq}",
            "sent_at": max(first, acked - 5), "first_sent_at": first, "entry": "ws://a/ws",
            "latency_ms": latency}


def stored(records: list[dict[str, Any]]) -> dict[str, list[Entry]]:
    """The log as a faithful store holds it: every ACKed entry at its seq."""
    out: dict[str, list[Entry]] = {}
    for r in sorted(records, key=lambda r: r["seq"]):
        out.setdefault(r["conversation"], []).append(
            Entry(r["conversation"], r["seq"], r["user_id"], r["client_msg_id"]))
    return out


def mark(event: str, at: int) -> dict[str, Any]:
    return {"type": "mark", "event": event, "at": at, "note": ""}


def test_rto_counts_only_messages_first_sent_after_the_disaster() -> None:
    records = [
        ack("a", 1, T - 1000),
        # Sent before the disaster, re-sent and ACKed after it: the old site may have taken it.
        ack("a", 2, T + 2000, first=T - 10),
        ack("b", 3, T + 4500, first=T + 100),
        ack("a", 4, T + 6000, first=T + 5000),
    ]
    log = DrillLog.from_records(["a", "b"], records, [mark("disaster", T)])
    first = first_ack_after(log.acks, T)
    assert first is not None and first.acked_at == T + 4500
    m = evaluate(INCITY, log, check_delivery(log.acks, stored(records)), TARGETS)
    assert m.ok, m.problems
    assert m.rto_seconds == 4.5
    assert m.rto_all_users_seconds == 6.0  # a is back at T+6000, b at T+4500
    assert m.rpo_seconds == 0.0
    assert m.recovered == {"a": T + 6000, "b": T + 4500}


def test_a_user_that_never_sends_again_leaves_rto_all_users_unmeasured() -> None:
    records = [ack("a", 1, T - 1000), ack("b", 2, T - 500), ack("a", 3, T + 3000, first=T + 10)]
    log = DrillLog.from_records(["a", "b"], records, [mark("disaster", T)])
    rec = recovered_at(log.acks, log.users, T)
    assert rec == {"a": T + 3000, "b": None}
    m = evaluate(INCITY, log, check_delivery(log.acks, stored(records)), TARGETS)
    assert m.rto_seconds == 3.0 and m.rto_all_users_seconds is None
    assert not m.ok and any("never sent again" in p and "b" in p for p in m.problems)


def test_targets_are_enforced() -> None:
    records = [ack("a", 1, T - 1000), ack("a", 2, T + 400_000, first=T + 399_000)]
    log = DrillLog.from_records(["a"], records, [mark("disaster", T)])
    m = evaluate(INCITY, log, check_delivery(log.acks, stored(records)), TARGETS)
    assert m.rto_seconds == 400.0
    assert any("RTO 400 s is above the target 300 s" in p for p in m.problems)
    relaxed = evaluate(INCITY, log, check_delivery(log.acks, stored(records)),
                       {"rpo": 15, "rto": 500, "rto_all_users": 450})
    assert relaxed.ok, relaxed.problems


def test_no_disaster_mark_measures_nothing_and_fails() -> None:
    records = [ack("a", 1, T)]
    log = DrillLog.from_records(["a"], records, [mark("promoted", T)])
    m = evaluate(DR, log, check_delivery(log.acks, stored(records)), TARGETS)
    assert m.rto_seconds is None and m.rpo_seconds is None
    assert not m.ok and "no 'disaster' mark" in m.problems[0]


def test_the_latest_disaster_mark_counts() -> None:
    records = [ack("a", 1, T + 1000, first=T + 900), ack("a", 2, T + 61_000, first=T + 60_500)]
    log = DrillLog.from_records(["a"], records, [mark("disaster", T), mark("disaster", T + 60_000)])
    m = evaluate(INCITY, log, check_delivery(log.acks, stored(records)), TARGETS)
    assert m.disaster_at == T + 60_000 and m.rto_seconds == 1.0


def test_dr_tail_lost_and_its_seqs_reused_is_rpo_not_disorder() -> None:
    """The standby had c1 up to seq 2; seqs 3-4 were ACKed at the old site and never
    replicated; after the promotion seqs 3 and 4 went to new messages, and c2's last one
    is simply gone."""
    before = [ack("a", 1, T - 9000), ack("a", 2, T - 6000), ack("a", 3, T - 4000),
              ack("b", 4, T - 1000), ack("b", 1, T - 3000, conv="c2")]
    after = [ack("b", 3, T + 20_000, first=T + 19_000, cid="b.new"),
             ack("a", 4, T + 21_000, first=T + 19_500, cid="a.new")]
    log = DrillLog.from_records(["a", "b"], before + after, [mark("disaster", T)])
    logs = {"c1": stored(before[:2] + after)["c1"], "c2": []}
    d = check_delivery(log.acks, logs)
    assert d.missing == 1 and d.mismatched == 2  # c2's seq 1 gone; c1's 3 and 4 hold others
    assert {a.client_msg_id for a in d.lost} == {"a.3", "b.4", "b.1"}
    assert d.raw.disorder  # the first pass sees the loss as disorder too ...
    assert d.duplicated == 0 and d.disorder == 0  # ... the survivors are clean
    m = evaluate(DR, log, d, TARGETS)
    assert m.rpo_seconds == 4.0  # the oldest lost message was ACKed 4 s before the disaster
    assert m.lost_after_disaster == 0
    assert m.ok, m.problems
    # The same loss in an in-city drill is a failure, and a tighter RPO target fails a DR drill.
    assert not evaluate(INCITY, log, d, TARGETS).ok
    tight = evaluate(DR, log, d, {"rpo": 3.0, "rto": 300.0})
    assert any("RPO 4 s is above the target 3 s" in p for p in tight.problems)


def test_dr_losing_a_message_acked_after_the_disaster_fails() -> None:
    records = [ack("a", 1, T - 1000), ack("a", 2, T + 5000, first=T + 4000)]
    log = DrillLog.from_records(["a"], records, [mark("disaster", T)])
    d = check_delivery(log.acks, stored(records[:1]))
    m = evaluate(DR, log, d, TARGETS)
    assert m.lost_after_disaster == 1 and m.rpo_seconds == 0.0
    assert any("acknowledged after the disaster were lost" in p for p in m.problems)


def test_duplicates_and_disorder_fail_any_kind() -> None:
    records = [ack("a", 1, T - 2000), ack("a", 2, T - 1000), ack("a", 3, T + 2000, first=T + 1)]
    log = DrillLog.from_records(["a"], records, [mark("disaster", T)])
    logs = stored(records)
    logs["c1"].append(Entry("c1", 4, "u_a", "a.2"))  # a.2 stored a second time
    d = check_delivery(log.acks, logs)
    assert d.duplicated == 1 and not d.lost
    for kind in (INCITY, DR):
        assert any("stored more than once" in p for p in evaluate(kind, log, d, TARGETS).problems)
    # a.2 ACKed after a.1 but stored before it.
    swapped = {"c1": [Entry("c1", 1, "u_a", "a.2"), Entry("c1", 2, "u_a", "a.1"),
                      Entry("c1", 3, "u_a", "a.3")]}
    reordered = [ack("a", 2, T - 2000, cid="a.1"), ack("a", 1, T - 1000, cid="a.2"),
                 ack("a", 3, T + 2000, first=T + 1)]
    log2 = DrillLog.from_records(["a"], reordered, [mark("disaster", T)])
    d2 = check_delivery(log2.acks, swapped)
    assert d2.disorder == 1 and not d2.lost
    assert any("ordering fault" in p for p in evaluate(DR, log2, d2, TARGETS).problems)


def test_a_resent_message_acked_twice_counts_once() -> None:
    records = [ack("a", 1, T - 1000), {**ack("a", 1, T - 900), "duplicate": True}]
    log = DrillLog.from_records(["a"], records, [])
    assert len(log.acks) == 1


def test_steps_run_from_mark_to_mark() -> None:
    marks = [mark("disaster", T), mark("failover-started", T + 2000), mark("promoted", T + 47_500)]
    log = DrillLog.from_records([], [], list(reversed(marks)))  # sorted by time on reading
    out = steps(log.marks, T + 60_000, T)
    assert [(s.name, s.duration, s.since_disaster) for s in out] == [
        ("disaster", 2.0, 0.0), ("failover-started", 45.5, 2.0), ("promoted", 12.5, 47.5)]
    assert steps(log.marks, None, None)[-1].duration is None


def test_timeline_buckets_acks_errors_and_latency() -> None:
    acks = [AckRecord.from_record(ack("a", i, T + 100 * i, latency=float(i))) for i in range(1, 25)]
    errors = [{"at": T + 1500}, {"at": T + 1600}, {"at": T + 99_000}]
    out = timeline(acks, errors, T, T + 3000)
    assert [b.t for b in out] == [0.0, 1.0, 2.0]
    assert [b.acks for b in out] == [9, 10, 5]  # 100..900 ms, 1000..1900, 2000..2400
    assert [b.errors for b in out] == [0, 2, 0]
    assert out[0].latency_p50_ms == 5.0 and out[0].latency_max_ms == 9.0


def test_parse_targets() -> None:
    assert parse_targets("") == {"rpo": 15.0, "rto": 300.0}
    assert parse_targets("rpo=5, rto=120,rto-all-users=240") == {
        "rpo": 5.0, "rto": 120.0, "rto_all_users": 240.0}
    for bad in ("rpo", "rpo=x", "mttr=3", "rto=-1"):
        with pytest.raises(ValueError):
            parse_targets(bad)


def test_unknown_kind_is_refused() -> None:
    log = DrillLog.from_records([], [], [])
    with pytest.raises(ValueError):
        evaluate("drill", log, check_delivery([], {}), TARGETS)

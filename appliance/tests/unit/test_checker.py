"""The acknowledged-vs-delivered checker finds each kind of fault it names."""

from __future__ import annotations

from dataclasses import dataclass

from tongxin.checker import DeliveryChecker


@dataclass
class E:
    conversation_id: str
    seq: int
    sender_id: str
    client_msg_id: str


def acked(n: int) -> DeliveryChecker:
    c = DeliveryChecker()
    for i in range(1, n + 1):
        c.record_ack("c", "alice", f"m{i}", i, acked_at_ms=i)
    return c


def log(*pairs: tuple[int, str]) -> dict[str, list[E]]:
    return {"c": [E("c", seq, "alice", cid) for seq, cid in pairs]}


def test_clean_run_is_ok() -> None:
    c = acked(3)
    for seq in (1, 2, 3):
        c.record_seen("bob", "c", seq)
    r = c.check(log((1, "m1"), (2, "m2"), (3, "m3")), readers=["bob"])
    assert r.ok, r.summary()
    assert (r.acked, r.stored) == (3, 3)


def test_missing_entry_is_reported() -> None:
    r = acked(3).check(log((1, "m1"), (3, "m3")))
    assert not r.ok
    assert [a.client_msg_id for a in r.missing] == ["m2"]
    assert "1 missing" in r.summary()


def test_duplicate_client_id_is_reported() -> None:
    r = acked(2).check(log((1, "m1"), (2, "m2"), (3, "m2")))
    assert r.duplicated == [("c", "m2", [2, 3])]


def test_seq_holding_another_message_is_reported() -> None:
    r = acked(2).check(log((1, "m1"), (2, "other")))
    assert len(r.mismatched) == 1 and r.mismatched[0][1] == "alice/other"


def test_out_of_order_log_is_reported() -> None:
    r = acked(2).check({"c": [E("c", 2, "alice", "m2"), E("c", 1, "alice", "m1")]})
    assert any("seq 1 after 2" in d for d in r.disorder)


def test_reader_that_missed_an_entry_is_reported() -> None:
    c = acked(2)
    c.record_seen("bob", "c", 1)
    r = c.check(log((1, "m1"), (2, "m2")), readers=["bob"])
    assert [a.seq for a in r.unseen["bob"]] == [2]
    assert r.as_dict()["unseen"]["bob"][0]["client_msg_id"] == "m2"

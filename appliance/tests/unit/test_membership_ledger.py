"""The membership ledger: what the conversation log announced, against the server's list."""

from __future__ import annotations

from tongxin.e2ee.membership import MembershipLedger
from tongxin.proto import tongxin_pb2 as pb

CID = "g:1"
EV = pb.SystemEvent


def system(seq: int, kind: int, actor: str, users: list[str], cid: str = CID) -> pb.Message:
    return pb.Message(conversation_id=cid, seq=seq, kind=pb.SYSTEM, sender_id=actor,
                      system=pb.SystemEvent(kind=kind, actor_id=actor, user_ids=users))


def chat(seq: int) -> pb.Message:
    return pb.Message(conversation_id=CID, seq=seq, kind=pb.CHAT, sender_id="alice",
                      content=pb.Content(text="hi"))


def created_log() -> list[pb.Message]:
    return [system(1, EV.CREATED, "alice", ["alice", "bob"]), chat(2),
            system(3, EV.MEMBERS_ADDED, "alice", ["carol"]), chat(4),
            system(5, EV.MEMBERS_REMOVED, "alice", ["bob"]), system(6, EV.MEMBER_LEFT, "carol", [])]


def test_a_replayed_log_from_creation_gives_the_members_and_reports_each_change() -> None:
    led = MembershipLedger()
    assert led.unannounced(CID, ["alice"]) == ["alice"]  # no record yet: nothing is known
    changes = led.replay(CID, created_log(), ["alice"])
    assert led.members(CID) == {"alice"}
    assert [(c.seq, c.added, c.removed) for c in changes] == [
        (1, ("alice", "bob"), ()), (3, ("carol",), ()), (5, (), ("bob",)), (6, (), ("carol",))]
    assert not any(c.first_seen for c in changes)
    assert led.groups[CID].checked_seq == 6


def test_a_member_the_server_lists_but_the_log_never_announced_is_unannounced() -> None:
    led = MembershipLedger()
    led.replay(CID, created_log()[:4], ["alice", "bob", "carol"])
    assert led.unannounced(CID, ["alice", "bob", "carol", "mallory"]) == ["mallory"]
    # A log entry that is not a membership change announces nobody.
    led.replay(CID, [chat(5), system(6, EV.RENAMED, "alice", ["mallory"])],
               ["alice", "bob", "carol", "mallory"])
    assert led.unannounced(CID, ["alice", "mallory"]) == ["mallory"]
    led.replay(CID, [system(7, EV.MEMBERS_ADDED, "bob", ["mallory"])], [])
    assert led.unannounced(CID, ["alice", "mallory"]) == []


def test_without_creation_in_view_the_first_list_is_taken_and_reported_as_first_seen() -> None:
    led = MembershipLedger()
    # A late joiner sees the log only from its own MEMBERS_ADDED.
    changes = led.replay(CID, [system(9, EV.MEMBERS_ADDED, "alice", ["dave"]), chat(10)],
                         ["alice", "bob", "dave"])
    assert len(changes) == 1 and changes[0].first_seen
    assert changes[0].added == ("alice", "bob", "dave")
    assert led.groups[CID].checked_seq == 10
    assert led.unannounced(CID, ["alice", "bob", "dave", "eve"]) == ["eve"]


def test_pushed_entries_apply_once_and_a_later_replay_does_not_apply_them_again() -> None:
    led = MembershipLedger()
    led.replay(CID, created_log()[:2], ["alice", "bob"])
    added = system(3, EV.MEMBERS_ADDED, "alice", ["carol"])
    change = led.apply(added)
    assert change is not None and change.added == ("carol",)
    assert led.apply(added) is None  # the same entry again (DELIVER and SYNC both bring it)
    removed = system(4, EV.MEMBERS_REMOVED, "alice", ["carol"])
    led.apply(removed)
    assert led.members(CID) == {"alice", "bob"}
    # Replaying 3..4 must not add carol back after her removal.
    assert led.replay(CID, [added, removed], ["alice", "bob"]) == []
    assert led.members(CID) == {"alice", "bob"}
    assert led.groups[CID].applied == set()


def test_a_delta_for_an_unknown_group_waits_for_a_replay_but_creation_starts_a_record() -> None:
    led = MembershipLedger()
    assert led.apply(system(3, EV.MEMBERS_ADDED, "alice", ["carol"])) is None
    assert led.members(CID) is None
    assert led.apply(chat(4)) is None
    other = "g:2"
    change = led.apply(system(1, EV.CREATED, "bob", ["bob", "erin"], cid=other))
    assert change is not None and led.members(other) == {"bob", "erin"}


def test_the_ledger_survives_a_round_trip_through_its_saved_form() -> None:
    led = MembershipLedger()
    led.replay(CID, created_log()[:3], ["alice", "bob", "carol"])
    led.apply(system(9, EV.MEMBERS_ADDED, "alice", ["frank"]))
    again = MembershipLedger.from_dict(led.to_dict())
    assert again.members(CID) == {"alice", "bob", "carol", "frank"}
    assert again.groups[CID].checked_seq == 3 and again.groups[CID].applied == {9}

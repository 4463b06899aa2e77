"""A group's membership as the conversation log shows it (docs/e2ee.md section 7.1).

The server answers CONV_GET with a group's member list, and a client that
encrypted to whatever that list says would encrypt to anyone the server chose
to add. Every legitimate membership change is an entry of the conversation's
log (CREATED, MEMBERS_ADDED, MEMBERS_REMOVED, MEMBER_LEFT), which every member's
devices receive. The ledger replays those entries; a user on the server's list
whom the log never announced is not encrypted to, so a member the server adds
on its own is either refused or shows up in everybody's log first.

What it does not prove: who wrote an announcement (the server can still write a
false MEMBERS_ADDED, but then every member sees it), and the membership before
this device's first look at a group it did not see created (a member who joins
late sees the log only from their joining; that first list is trusted as given
and reported as such).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tongxin.proto import tongxin_pb2 as pb

MEMBERSHIP_KINDS = frozenset({pb.SystemEvent.CREATED, pb.SystemEvent.MEMBERS_ADDED,
                              pb.SystemEvent.MEMBERS_REMOVED, pb.SystemEvent.MEMBER_LEFT})


@dataclass(frozen=True)
class MembershipChange:
    """One change a device learnt of; ``seq`` 0 with ``first_seen``: the server's list,
    taken as given because the log does not reach back to the group's creation."""

    conversation_id: str
    seq: int
    actor_id: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    first_seen: bool = False


@dataclass
class GroupLedger:
    members: set[str]
    checked_seq: int
    """The log is replayed up to here."""
    applied: set[int] = field(default_factory=set)
    """Membership entries beyond ``checked_seq`` already applied (pushed ones)."""


def _delta(entry: pb.Message) -> tuple[set[str], set[str]]:
    ev = entry.system
    users = set(ev.user_ids)
    if ev.kind == pb.SystemEvent.MEMBERS_ADDED:
        return users, set()
    if ev.kind == pb.SystemEvent.MEMBERS_REMOVED:
        return set(), users
    if ev.kind == pb.SystemEvent.MEMBER_LEFT:
        return set(), users or {ev.actor_id}
    return set(), set()


def is_membership_entry(entry: pb.Message) -> bool:
    return entry.kind == pb.SYSTEM and entry.system.kind in MEMBERSHIP_KINDS


class MembershipLedger:
    def __init__(self, groups: dict[str, GroupLedger] | None = None) -> None:
        self.groups: dict[str, GroupLedger] = groups or {}

    def members(self, conversation_id: str) -> set[str] | None:
        g = self.groups.get(conversation_id)
        return None if g is None else set(g.members)

    def unannounced(self, conversation_id: str, listed: Iterable[str]) -> list[str]:
        """Users on the server's list the log has not announced (all of them when this
        device has no record of the group yet)."""
        g = self.groups.get(conversation_id)
        known = set() if g is None else g.members
        return sorted(set(listed) - known)

    def apply(self, entry: pb.Message) -> MembershipChange | None:
        """A membership entry that arrived on its own (DELIVER). Applied once per seq; a
        delta for a group without a record waits for :meth:`replay`."""
        if not is_membership_entry(entry):
            return None
        cid = entry.conversation_id
        g = self.groups.get(cid)
        if g is None:
            if entry.system.kind != pb.SystemEvent.CREATED:
                return None
            g = self.groups[cid] = GroupLedger(set(), 0)
        if entry.seq <= g.checked_seq or entry.seq in g.applied:
            return None
        g.applied.add(entry.seq)
        return self._apply(g, entry)

    def replay(self, conversation_id: str, entries: Iterable[pb.Message],
               listed: Iterable[str]) -> list[MembershipChange]:
        """The log after ``checked_seq`` (all of it the device may see, for a group without
        a record). Without a record and without CREATED at the start, the server's list
        becomes the record and is reported as ``first_seen``."""
        entries = sorted((e for e in entries if e.conversation_id == conversation_id),
                         key=lambda e: e.seq)
        changes: list[MembershipChange] = []
        g = self.groups.get(conversation_id)
        if g is None:
            first = entries[0] if entries else None
            if first is not None and is_membership_entry(first) \
                    and first.system.kind == pb.SystemEvent.CREATED:
                g = self.groups[conversation_id] = GroupLedger(set(), 0)
            else:
                members = set(listed)
                last = entries[-1].seq if entries else 0
                self.groups[conversation_id] = GroupLedger(members, last)
                return [MembershipChange(conversation_id, 0, "", tuple(sorted(members)), (),
                                         first_seen=True)]
        for e in entries:
            if e.seq <= g.checked_seq:
                continue
            if is_membership_entry(e) and e.seq not in g.applied:
                changes.append(self._apply(g, e))
            g.checked_seq = e.seq
        g.applied = {s for s in g.applied if s > g.checked_seq}
        return changes

    @staticmethod
    def _apply(g: GroupLedger, entry: pb.Message) -> MembershipChange:
        ev = entry.system
        if ev.kind == pb.SystemEvent.CREATED:
            added, removed = set(ev.user_ids) | {ev.actor_id}, set[str]()
            g.members = set(added)
        else:
            added, removed = _delta(entry)
            g.members = (g.members | added) - removed
        return MembershipChange(entry.conversation_id, entry.seq, ev.actor_id,
                                tuple(sorted(added)), tuple(sorted(removed)))

    def to_dict(self) -> dict[str, Any]:
        return {cid: {"members": sorted(g.members), "checked_seq": g.checked_seq,
                      "applied": sorted(g.applied)} for cid, g in self.groups.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MembershipLedger:
        return cls({cid: GroupLedger(set(v["members"]), int(v["checked_seq"]),
                                     {int(s) for s in v.get("applied", [])})
                    for cid, v in d.items()})

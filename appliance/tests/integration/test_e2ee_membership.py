"""A node that plays the malicious server with a group's membership (issue 16; docs/e2ee.md
section 7.1): it puts a user into a group without a membership entry in the conversation's
log. The SDK refuses to encrypt to the group while the server lists that user, and the
user's devices get nothing; once the log announces the user (as every legitimate addition
does), every member's device has seen the change before anything is encrypted to them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]

from tongxin.client import pb
from tongxin.client.e2ee import E2EEClient
from tongxin.clock import now_ms
from tongxin.e2ee import UnannouncedMemberError
from tongxin.e2ee.membership import MembershipChange
from tongxin.store.ports import Entry, MemberOps

pytestmark = pytest.mark.integration


async def ghost_member(rn: RunningNode, conversation_id: str, user_id: str) -> None:
    """What a compromised server can do: a member row and a log entry announcing nobody."""
    event = pb.SystemEvent(kind=pb.SystemEvent.RENAMED, actor_id="", name="team")
    entry = Entry(conversation_id=conversation_id, sender_id="", sender_device="",
                  client_msg_id="sys-" + uuid.uuid4().hex, sent_at=now_ms(), kind=pb.SYSTEM,
                  system=event.SerializeToString())
    await rn.node.store.change_members(conversation_id, MemberOps(add=[(user_id, pb.MEMBER)]),
                                       entry, 1000)
    rn.node.chat.members.invalidate(conversation_id)


async def test_a_member_added_without_a_log_entry_is_refused_and_gets_nothing(
        node_factory: NodeFactory, tmp_path: Path) -> None:
    rn: RunningNode = await node_factory(crypto={"suite": "international"})
    seen: list[MembershipChange] = []
    alice_c = await rn.user("alice", device_id="a1")
    alice: E2EEClient = await alice_c.e2ee(tmp_path / "alice", on_membership_change=seen.append)
    bob_c = await rn.user("bob", device_id="b1")
    bob = await bob_c.e2ee(tmp_path / "bob")
    mallory_c = await rn.user("mallory", device_id="m1")
    mallory = await mallory_c.e2ee(tmp_path / "mallory")
    ids = {u.username: u.user_id for u in await alice_c.users(["alice", "bob", "mallory"])}
    group = (await alice_c.create_group("team", ["bob"])).conversation_id

    await alice.send_text(group, "before the ghost")
    assert [(c.seq, c.added, c.first_seen) for c in seen] == [
        (1, tuple(sorted([ids["alice"], ids["bob"]])), False)]

    await ghost_member(rn, group, ids["mallory"])
    listed = {m.user_id for m in (await alice_c.conversation(group)).members}
    assert ids["mallory"] in listed  # the server does list her now
    with pytest.raises(UnannouncedMemberError) as refused:
        await alice.send_text(group, "secret while the ghost is listed")
    assert refused.value.user_ids == [ids["mallory"]]
    # The refusal holds on a fresh login of the same device (which replaces the first
    # connection) ...
    alice_c = await rn.user("alice", device_id="a1")
    alice = await alice_c.e2ee(tmp_path / "alice", on_membership_change=seen.append)
    with pytest.raises(UnannouncedMemberError):
        await alice.send_text(group, "secret after a restart")
    # ... and on bob's device, which never sent to the group before.
    with pytest.raises(UnannouncedMemberError):
        await bob.send_text(group, "bob's secret")

    # The refused sends stored nothing: mallory's view of the log holds no message.
    assert [m.kind for m in await mallory_c.sync_all(group)] == [pb.SYSTEM]

    # The log now announces her (a member with the right to add her does): every member's
    # SDK sees the change in the log first, then encrypts to her.
    seen.clear()
    await alice_c.change_members(group, pb.MemberChange.REMOVE, ["mallory"])
    await alice_c.change_members(group, pb.MemberChange.ADD, ["mallory"])
    await alice.send_text(group, "now she is announced")
    assert [(c.added, c.removed) for c in seen] == [((), (ids["mallory"],)),
                                                    ((ids["mallory"],), ())]
    while True:
        ev = await mallory_c.next_event(pb.DELIVER)
        opened = await mallory.open(ev.message)
        if opened is not None and opened.payload.WhichOneof("body") == "text":
            assert opened.payload.text == "now she is announced"
            break

"""Chat semantics through real nodes and real WebSocket clients.

Absence of a push is checked with a ping fence: fan-out happens while the
server handles a frame, before the answer to that frame is queued, and every
connection's frames leave in order. So once a request that was handled after
the event has been answered, and the recipient's own PING has been answered,
every push the event caused is already in the recipient's event queue.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

# conftest is importable under pytest (pythonpath) and when mypy checks tests/ whole.
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]

from tongxin.client import Client, Event, TongxinError, pb

NO_RATE_LIMIT: dict[str, Any] = {"rate_limit_per_second": 0.0}


# ---- helpers -------------------------------------------------------------------


async def next_chat(c: Client, wait: float = 10.0) -> Any:
    """The next DELIVER of a CHAT entry (system, recall and edit entries skipped)."""
    while True:
        ev = await c.next_event(pb.DELIVER, wait=wait)
        if ev.message.kind == pb.CHAT:
            return ev.message


async def next_deliver(c: Client, kind: int, wait: float = 10.0) -> Any:
    while True:
        ev = await c.next_event(pb.DELIVER, wait=wait)
        if ev.message.kind == kind:
            return ev.message


async def settled(c: Client) -> list[Event]:
    """Every event pushed to ``c`` before its PING was answered (see module doc)."""
    await c.ping()
    return c.drain_events()


def delivers(events: list[Event], kind: int | None = None) -> list[Any]:
    return [e.message for e in events
            if e.type == pb.DELIVER and (kind is None or e.message.kind == kind)]


async def error_code(call: Awaitable[Any]) -> int:
    with pytest.raises(TongxinError) as info:
        await call
    return int(info.value.code)


async def until(cond: Callable[[], bool], wait: float = 10.0) -> None:
    """Wait for a server-side condition that no client event announces."""
    async with asyncio.timeout(wait):
        while not cond():  # noqa: ASYNC110 - the condition is in the server, no event to await
            await asyncio.sleep(0.01)


async def role_of(c: Client, conversation_id: str) -> int | None:
    for conv in await c.conversations():
        if conv.conversation_id == conversation_id:
            return int(conv.my_role)
    return None


def code_name(code: int) -> str:
    return str(pb.ErrorCode.Name(code))


# ---- ordering and exactly-once -------------------------------------------------


async def test_group_of_50_every_member_gets_every_message_once_in_order(
        node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(chat=NO_RATE_LIMIT)
    owner = await node.user("owner")
    users = await node.bulk_users("g", 49)
    members = list(await asyncio.gather(*(node.user(u.username) for u in users)))
    conv = await owner.create_group("fifty", [u.id for u in users])
    cid = conv.conversation_id
    assert conv.member_count == 50
    clients = [owner, *members]
    senders = [owner, members[0], members[12], members[25], members[48]]
    per_sender = 12

    async def talk(i: int, c: Client) -> list[tuple[int, str]]:
        out = []
        for n in range(per_sender):
            text = f"sender {i} message {n}"
            ack = await c.send_text(cid, text)
            assert not ack.duplicate
            out.append((int(ack.seq), text))
        return out

    sent = await asyncio.gather(*(talk(i, c) for i, c in enumerate(senders)))
    text_of = {seq: text for batch in sent for seq, text in batch}
    total = len(senders) * per_sender
    assert len(text_of) == total
    first = conv.last_seq + 1
    # No entry other than these CHAT messages was written meanwhile, so the
    # interleaved sends hold one contiguous run of seqs: no gaps, no reuse.
    assert sorted(text_of) == list(range(first, first + total))
    # Each sender's own messages got increasing seqs in the order it sent them.
    for batch in sent:
        assert [s for s, _ in batch] == sorted(s for s, _ in batch)

    for c in clients:
        own = {seq for batch, s in zip(sent, senders, strict=True) if s is c for seq, _ in batch}
        got = delivers(await settled(c), pb.CHAT)
        seqs = [int(m.seq) for m in got]
        assert seqs == sorted(set(seqs)), f"{c.user_id}: not strictly increasing: {seqs}"
        assert set(seqs) == set(text_of) - own, f"{c.user_id}: wrong set of messages"
        assert not own & set(seqs), "a sending device got its own message pushed back"
        for m in got:
            assert m.conversation_id == cid
            assert m.content.text == text_of[m.seq]

    # The log agrees: between consecutive CHAT entries there is nothing but
    # (here: no) system entries.
    log = await members[7].sync_all(cid)
    chat = [m for m in log if m.kind == pb.CHAT]
    assert [m.seq for m in chat] == sorted(text_of)
    assert {m.seq for m in log} - {m.seq for m in chat} == {1}
    assert log[0].kind == pb.SYSTEM and log[0].system.kind == pb.SystemEvent.CREATED


async def test_offline_device_syncs_200_messages_exactly_once_with_paging(
        node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(chat={"sync_page_max": 50, **NO_RATE_LIMIT})
    alice = await node.user("alice")
    bob = await node.user("bob", device_id="bob-phone")
    assert bob.auth is not None and bob.auth.sync_page_max == 50
    cid = (await alice.direct("bob")).conversation_id
    await alice.send_text(cid, "before the tunnel")
    last_seen = (await next_chat(bob)).seq
    await bob.close()

    texts = [f"while offline {i:03d}" for i in range(200)]
    acks = [await alice.send_text(cid, t) for t in texts]

    back = await node.user("bob", device_id="bob-phone")
    msgs = await back.sync_all(cid, last_seen)
    assert len(msgs) == 200
    assert [m.seq for m in msgs] == [a.seq for a in acks]
    assert [m.seq for m in msgs] == list(range(last_seen + 1, last_seen + 201))
    assert [m.content.text for m in msgs] == texts
    assert all(m.kind == pb.CHAT and m.sender_id == alice.user_id for m in msgs)

    # Page by page by hand: at most sync_page_max each, has_more until the end,
    # and every entry exactly once across pages.
    pages = []
    after = last_seen
    while True:
        page = await back.sync(cid, after, limit=1000)  # capped by the server
        assert 0 < len(page.messages) <= 50
        assert page.last_seq == acks[-1].seq
        pages.append(page)
        after = page.messages[-1].seq
        if not page.has_more:
            break
    assert [p.has_more for p in pages] == [True, True, True, False]
    paged = [m.seq for p in pages for m in p.messages]
    assert paged == [a.seq for a in acks]
    empty = await back.sync(cid, acks[-1].seq)
    assert not empty.messages and not empty.has_more

    # Scrolling back from the end pages the same entries newest-first by page.
    back_pages = []
    before = acks[-1].seq + 1
    while before > last_seen + 1:
        page = await back.sync(cid, before_seq=before, limit=50)
        back_pages.append([m.seq for m in page.messages])
        before = page.messages[0].seq
    assert sorted(s for p in back_pages for s in p if s > last_seen) == paged


# ---- several devices of one user -----------------------------------------------


async def test_second_device_sees_sends_receipts_recalls_and_edits(server: RunningNode) -> None:
    laptop = await server.user("alice", device_id="alice-laptop")
    phone = await server.user("alice", device_id="alice-phone")
    bob = await server.user("bob")
    cid = (await laptop.direct("bob")).conversation_id

    ack = await laptop.send_text(cid, "from the laptop")
    for c in (phone, bob):
        m = await next_chat(c)
        assert (m.seq, m.content.text) == (ack.seq, "from the laptop")
        assert (m.sender_id, m.sender_device) == (laptop.user_id, "alice-laptop")
    assert ack.seq not in [m.seq for m in delivers(await settled(laptop))]

    # The other direction too: the laptop hears what the phone sends.
    ack_phone = await phone.send_text(cid, "from the phone")
    m = await next_chat(laptop)
    assert (m.seq, m.sender_device) == (ack_phone.seq, "alice-phone")
    assert ack_phone.seq not in [m.seq for m in delivers(await settled(phone))]
    await next_chat(bob)

    # A READ receipt from one device reaches the other device and the peer,
    # not the device that sent it.
    await laptop.read(cid, ack_phone.seq)
    for c in (phone, bob):
        r = (await c.next_event(pb.RECEIPT)).message
        assert (r.kind, r.seq, r.user_id, r.device_id) == (
            pb.READ, ack_phone.seq, laptop.user_id, "alice-laptop")
    assert not [e for e in await settled(laptop) if e.type == pb.RECEIPT]

    # Recall and edit from the laptop arrive live on the phone and at bob.
    doomed = await laptop.send_text(cid, "this was a mistake")
    typo = await laptop.send_text(cid, "helo wrold")
    for c in (phone, bob):
        assert (await next_chat(c)).seq == doomed.seq
        assert (await next_chat(c)).seq == typo.seq
    recall = await laptop.recall(cid, doomed.seq)
    edit = await laptop.edit(cid, typo.seq, "hello world")
    assert not recall.duplicate and not edit.duplicate
    for c in (phone, bob):
        r = await next_deliver(c, pb.RECALLED)
        assert (r.seq, r.target_seq, r.sender_id) == (recall.seq, doomed.seq, laptop.user_id)
        assert not r.HasField("content")
        e = await next_deliver(c, pb.EDITED)
        assert (e.seq, e.target_seq, e.content.text) == (edit.seq, typo.seq, "hello world")

    # And in sync: the CHAT entries carry the outcome, the log the events.
    for c in (phone, bob):
        log = {m.seq: m for m in await c.sync_all(cid)}
        gone = log[doomed.seq]
        assert gone.kind == pb.CHAT and gone.recalled
        assert not gone.HasField("content") and gone.content.text == ""
        fixed = log[typo.seq]
        assert fixed.kind == pb.CHAT and not fixed.recalled
        assert fixed.content.text == "hello world"
        assert fixed.edited_at_ms >= fixed.sent_at_ms > 0
        assert log[ack.seq].edited_at_ms == 0 and not log[ack.seq].recalled
        assert (log[recall.seq].kind, log[recall.seq].target_seq) == (pb.RECALLED, doomed.seq)
        assert (log[edit.seq].kind, log[edit.seq].target_seq) == (pb.EDITED, typo.seq)
        assert log[edit.seq].content.text == "hello world"


# ---- idempotency ---------------------------------------------------------------


async def test_resent_client_msg_id_is_stored_once(server: RunningNode) -> None:
    alice = await server.user("alice", device_id="alice-1")
    bob = await server.user("bob")
    cid = (await alice.direct("bob")).conversation_id
    await settled(bob)

    first = await alice.send_text(cid, "exactly once", client_msg_id="cmid-1")
    again = await alice.send_text(cid, "exactly once", client_msg_id="cmid-1")
    assert not first.duplicate and again.duplicate
    assert again.seq == first.seq and again.sent_at_ms == first.sent_at_ms
    assert again.client_msg_id == "cmid-1"
    # The same user retrying from another device is the same sender.
    other = await server.user("alice", device_id="alice-2")
    third = await other.send_text(cid, "exactly once", client_msg_id="cmid-1")
    assert third.duplicate and third.seq == first.seq

    log = await bob.sync_all(cid)
    assert [m.seq for m in log if m.client_msg_id == "cmid-1"] == [first.seq]
    assert log[-1].seq == first.seq
    pushed = delivers(await settled(bob), pb.CHAT)
    assert [m.seq for m in pushed] == [first.seq]

    # Another user may use the same client id: it is per sender.
    bobs = await bob.send_text(cid, "mine", client_msg_id="cmid-1")
    assert not bobs.duplicate and bobs.seq == first.seq + 1

    # A recall retried after it succeeded gets the same ACK, not CONFLICT.
    r1 = await alice.recall(cid, first.seq, client_msg_id="recall-1")
    r2 = await alice.recall(cid, first.seq, client_msg_id="recall-1")
    assert not r1.duplicate and r2.duplicate and r2.seq == r1.seq
    assert await error_code(alice.recall(cid, first.seq)) == pb.CONFLICT
    # An edit retried likewise.
    target = await alice.send_text(cid, "draft")
    e1 = await alice.edit(cid, target.seq, "final", client_msg_id="edit-1")
    e2 = await alice.edit(cid, target.seq, "final", client_msg_id="edit-1")
    assert not e1.duplicate and e2.duplicate and e2.seq == e1.seq

    log = await bob.sync_all(cid, first.seq)
    assert [m.kind for m in log] == [pb.CHAT, pb.RECALLED, pb.CHAT, pb.EDITED]
    got = delivers(await settled(bob))
    assert [(m.kind, m.seq) for m in got] == [
        (pb.RECALLED, r1.seq), (pb.CHAT, target.seq), (pb.EDITED, e1.seq)]


# ---- recall and edit rules -----------------------------------------------------


async def test_recall_after_window_is_refused(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(chat={"recall_window": 0.2})
    alice = await node.user("alice")
    await node.user("bob")
    cid = (await alice.direct("bob")).conversation_id
    ack = await alice.send_text(cid, "too late to take back")
    await asyncio.sleep(0.5)  # the window is wall-clock time; nothing announces its end
    with pytest.raises(TongxinError) as info:
        await alice.recall(cid, ack.seq)
    assert info.value.code == pb.RECALL_WINDOW_EXPIRED
    # Nothing was written, and the (longer) edit window still applies.
    log = await alice.sync_all(cid)
    assert log[-1].seq == ack.seq and not log[-1].recalled
    edit = await alice.edit(cid, ack.seq, "but it can be edited")
    assert edit.seq == ack.seq + 1


async def test_recall_and_edit_permissions_in_a_group(server: RunningNode) -> None:
    owner = await server.user("owner")
    admin = await server.user("admin")
    m1 = await server.user("m1")
    m2 = await server.user("m2")
    conv = await owner.create_group("perms", ["admin", "m1", "m2"])
    cid = conv.conversation_id
    await owner.change_members(cid, pb.MemberChange.SET_ROLE, [admin.user_id], role=pb.ADMIN)

    a = await m1.send_text(cid, "m1 one")
    b = await m1.send_text(cid, "m1 two")
    c = await m2.send_text(cid, "m2 one")
    assert await error_code(m2.recall(cid, a.seq)) == pb.FORBIDDEN
    assert await error_code(m2.edit(cid, a.seq, "hijacked")) == pb.FORBIDDEN
    assert await error_code(admin.edit(cid, a.seq, "hijacked")) == pb.FORBIDDEN
    assert await error_code(owner.edit(cid, c.seq, "hijacked")) == pb.FORBIDDEN
    # Recall of a system entry or a seq that does not exist: NOT_FOUND.
    assert await error_code(owner.recall(cid, 1)) == pb.NOT_FOUND
    assert await error_code(owner.recall(cid, 999)) == pb.NOT_FOUND

    by_admin = await admin.recall(cid, a.seq)
    by_owner = await owner.recall(cid, c.seq)
    log = {m.seq: m for m in await m1.sync_all(cid)}
    assert log[a.seq].recalled and log[c.seq].recalled and not log[b.seq].recalled
    assert log[b.seq].content.text == "m1 two"
    assert (log[by_admin.seq].kind, log[by_admin.seq].sender_id) == (pb.RECALLED, admin.user_id)
    assert (log[by_owner.seq].kind, log[by_owner.seq].sender_id) == (pb.RECALLED, owner.user_id)
    events = delivers(await settled(m1), pb.RECALLED)
    assert [(e.target_seq, e.sender_id) for e in events] == [
        (a.seq, admin.user_id), (c.seq, owner.user_id)]


# ---- roles and membership ------------------------------------------------------


async def test_roles_membership_changes_and_history_visibility(server: RunningNode) -> None:
    owner = await server.user("owner")
    adm = await server.user("adm")
    adm2 = await server.user("adm2")
    m1 = await server.user("m1")
    m2 = await server.user("m2")
    x = await server.user("xavier")
    y = await server.user("yvonne")
    conv = await owner.create_group("roles", ["adm", "adm2", "m1", "m2"])
    cid = conv.conversation_id
    assert (conv.my_role, conv.member_count) == (pb.OWNER, 5)
    assert await role_of(m1, cid) == pb.MEMBER

    # A plain member changes nothing.
    op = pb.MemberChange
    for call in (m1.change_members(cid, op.ADD, ["xavier"]),
                 m1.change_members(cid, op.REMOVE, ["m2"]),
                 m1.change_members(cid, op.RENAME, name="mine now"),
                 m1.change_members(cid, op.SET_ROLE, ["m2"], role=pb.ADMIN)):
        assert await error_code(call) == pb.FORBIDDEN
    # The owner adds, removes and appoints admins.
    info = await owner.change_members(cid, op.ADD, ["xavier"])
    assert info.member_count == 6
    assert await role_of(x, cid) == pb.MEMBER
    info = await owner.change_members(cid, op.REMOVE, [x.user_id])
    assert info.member_count == 5 and await role_of(x, cid) is None
    info = await owner.change_members(cid, op.SET_ROLE, ["adm", "adm2"], role=pb.ADMIN)
    roles = {m.user_id: m.role for m in info.members}
    assert roles == {owner.user_id: pb.OWNER, adm.user_id: pb.ADMIN, adm2.user_id: pb.ADMIN,
                     m1.user_id: pb.MEMBER, m2.user_id: pb.MEMBER}

    # An admin removes members, but neither another admin nor the owner, and
    # cannot change roles.
    assert await error_code(adm.change_members(cid, op.REMOVE, ["adm2"])) == pb.FORBIDDEN
    assert await error_code(adm.change_members(cid, op.REMOVE, ["owner"])) == pb.FORBIDDEN
    assert await error_code(
        adm.change_members(cid, op.SET_ROLE, ["m1"], role=pb.ADMIN)) == pb.FORBIDDEN
    assert (await adm.change_members(cid, op.RENAME, name="renamed")).name == "renamed"
    await settled(m2)
    info = await adm.change_members(cid, op.REMOVE, ["m2"])
    assert info.member_count == 4

    # The removed member heard of it, and can no longer write or read.
    removed = await next_deliver(m2, pb.SYSTEM)
    assert removed.system.kind == pb.SystemEvent.MEMBERS_REMOVED
    assert list(removed.system.user_ids) == [m2.user_id]
    assert removed.system.actor_id == adm.user_id
    assert removed.seq == info.last_seq
    assert await error_code(m2.send_text(cid, "still here?")) == pb.NOT_FOUND
    assert await error_code(m2.sync(cid)) == pb.NOT_FOUND
    assert await error_code(m2.sync(cid, before_seq=info.last_seq)) == pb.NOT_FOUND
    assert await role_of(m2, cid) is None
    # Nor does it get what is said afterwards.
    after = await owner.send_text(cid, "said after m2 left")
    assert after.seq not in [m.seq for m in delivers(await settled(m2))]

    # A new member sees the log from its join entry on, nothing before it.
    secret = await owner.send_text(cid, "before yvonne joined")
    info = await owner.change_members(cid, op.ADD, ["yvonne"])
    join_seq = info.last_seq
    assert join_seq > secret.seq
    joined = await next_deliver(y, pb.SYSTEM)
    assert joined.seq == join_seq and joined.system.kind == pb.SystemEvent.MEMBERS_ADDED
    welcome = await owner.send_text(cid, "welcome yvonne")
    log = await y.sync_all(cid)
    assert log[0].seq == join_seq and log[0].kind == pb.SYSTEM
    assert all(m.seq >= join_seq for m in log)
    assert [m.content.text for m in log if m.kind == pb.CHAT] == ["welcome yvonne"]
    assert (await y.sync(cid, before_seq=join_seq)).messages == []
    older = await y.sync(cid, before_seq=welcome.seq + 1, limit=100)
    assert [m.seq for m in older.messages] == [join_seq, welcome.seq]
    assert await error_code(y.recall(cid, secret.seq)) == pb.NOT_FOUND

    # The owner leaving hands ownership to another member (an admin first).
    await settled(m1)
    left = await owner.change_members(cid, op.LEAVE)
    assert left.member_count == 4
    note = await next_deliver(m1, pb.SYSTEM)
    assert note.system.kind == pb.SystemEvent.MEMBER_LEFT
    assert list(note.system.user_ids) == [owner.user_id]
    assert await role_of(owner, cid) is None
    assert await error_code(owner.send_text(cid, "gone")) == pb.NOT_FOUND
    new_roles = {c.user_id: await role_of(c, cid) for c in (adm, adm2, m1, y)}
    assert list(new_roles.values()).count(pb.OWNER) == 1
    heir = next(c for c in (adm, adm2) if new_roles[c.user_id] == pb.OWNER)
    # The heir now has the owner's powers.
    info = await heir.change_members(cid, op.SET_ROLE, ["m1"], role=pb.ADMIN)
    assert {m.user_id: m.role for m in info.members}[m1.user_id] == pb.ADMIN


# ---- size limits ---------------------------------------------------------------


async def test_group_of_ten_thousand_members(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(chat={"max_group_members": 10001, **NO_RATE_LIMIT})
    users = await node.bulk_users("big", 10000)
    ids = [u.id for u in users]
    owner = await node.user("bigowner")
    listeners = [await node.user(f"big{i}") for i in (0, 1, 5000, 9999)]
    chunk = node.cfg.chat.max_members_per_change
    assert chunk == 1000

    # One request may not name more than max_members_per_change users.
    assert await error_code(owner.create_group("too many at once", ids[:chunk + 1])) == \
        pb.INVALID_ARGUMENT
    conv = await owner.create_group("ten thousand", ids[:chunk])
    cid = conv.conversation_id
    assert conv.member_count == chunk + 1
    for start in range(chunk, len(ids), chunk):
        info = await owner.change_members(cid, pb.MemberChange.ADD, ids[start:start + chunk])
        assert info.member_count == start + chunk + 1
    assert info.member_count == 10001
    assert len(info.members) == 500  # the view is capped at member_page

    extra = await node.user("one-too-many")
    with pytest.raises(TongxinError) as full:
        await owner.change_members(cid, pb.MemberChange.ADD, [extra.user_id])
    assert full.value.code == pb.GROUP_FULL
    [listed] = [c for c in await owner.conversations() if c.conversation_id == cid]
    assert listed.member_count == 10001

    ack = await owner.send_text(cid, "hello, ten thousand")
    assert ack.seq == info.last_seq + 1
    for c in listeners:
        m = await next_chat(c)
        assert (m.seq, m.content.text, m.sender_id) == (ack.seq, "hello, ten thousand",
                                                          owner.user_id)
    assert await error_code(extra.sync(cid)) == pb.NOT_FOUND


async def test_group_full_with_a_small_limit(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(chat={"max_group_members": 3})
    owner = await node.user("owner")
    for name in ("u1", "u2", "u3"):
        await node.user(name)
    assert await error_code(owner.create_group("four", ["u1", "u2", "u3"])) == pb.GROUP_FULL
    conv = await owner.create_group("three", ["u1", "u2"])
    assert conv.member_count == 3
    assert await error_code(
        owner.change_members(conv.conversation_id, pb.MemberChange.ADD, ["u3"])) == pb.GROUP_FULL
    # Nothing changed: no entry was written and u3 is not a member.
    log = await owner.sync_all(conv.conversation_id)
    assert [m.seq for m in log] == [1]
    # Making room makes it fit.
    await owner.change_members(conv.conversation_id, pb.MemberChange.REMOVE, ["u2"])
    info = await owner.change_members(conv.conversation_id, pb.MemberChange.ADD, ["u3"])
    assert info.member_count == 3


# ---- receipts, presence, typing ------------------------------------------------


async def test_read_receipts(server: RunningNode) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    cid = (await alice.direct("bob")).conversation_id
    acks = [await alice.send_text(cid, f"m{i}") for i in range(3)]
    await settled(alice)

    await bob.read(cid, acks[2].seq)
    r = (await alice.next_event(pb.RECEIPT)).message
    assert (r.conversation_id, r.kind, r.seq, r.user_id) == (cid, pb.READ, acks[2].seq,
                                                            bob.user_id)
    assert r.device_id == bob.device_id and r.at_ms > 0

    # A lower READ afterwards does not move the cursor back.
    await bob.read(cid, acks[0].seq)
    [mine] = [c for c in await bob.conversations() if c.conversation_id == cid]
    assert mine.my_read_seq == acks[2].seq
    again = (await alice.next_event(pb.RECEIPT)).message
    assert again.seq == acks[2].seq
    view = await alice.direct("bob")
    assert {m.user_id: m.read_seq for m in view.members}[bob.user_id] == acks[2].seq

    # DELIVERED is a separate cursor.
    await bob.delivered(cid, acks[1].seq)
    d = (await alice.next_event(pb.RECEIPT)).message
    assert (d.kind, d.seq) == (pb.DELIVERED, acks[1].seq)

    # Beyond the last seq: an ERROR event naming the receipt frame.
    ref = await bob.notify(pb.RECEIPT, pb.Receipt(conversation_id=cid, kind=pb.READ,
                                                  seq=acks[2].seq + 5))
    err = (await bob.next_event(pb.ERROR)).message
    assert err.code == pb.INVALID_ARGUMENT and err.ref_seq == ref and not err.fatal
    [mine] = [c for c in await bob.conversations() if c.conversation_id == cid]
    assert mine.my_read_seq == acks[2].seq
    assert not [e for e in await settled(alice) if e.type == pb.RECEIPT]


async def test_presence_follows_the_last_device(server: RunningNode) -> None:
    alice = await server.user("alice")
    bob_user = await server.node.accounts.create_user("bob", "password-1")
    hub = server.node.hub
    await alice.direct("bob")  # presence.visibility: shared

    first = await alice.subscribe_presence([bob_user.id])
    assert [(e.user_id, e.status, e.devices) for e in first.entries] == [
        (bob_user.id, pb.OFFLINE, 0)]

    phone = await server.user("bob", device_id="bob-phone")
    up = (await alice.next_event(pb.PRESENCE)).message
    assert [(e.user_id, e.status) for e in up.entries] == [(bob_user.id, pb.ONLINE)]

    # A second device is no news; losing one of two is not OFFLINE either.
    laptop = await server.user("bob", device_id="bob-laptop")
    assert not [e for e in await settled(alice) if e.type == pb.PRESENCE]
    await phone.close()
    await until(lambda: "bob-phone" not in hub.devices.get(bob_user.id, {}))
    assert not [e for e in await settled(alice) if e.type == pb.PRESENCE]
    status = await alice.subscribe_presence([bob_user.id])
    assert [(e.status, e.devices) for e in status.entries] == [(pb.ONLINE, 1)]

    await laptop.close()
    down = (await alice.next_event(pb.PRESENCE)).message
    assert [(e.user_id, e.status) for e in down.entries] == [(bob_user.id, pb.OFFLINE)]
    assert down.entries[0].last_seen_ms > 0

    # Unsubscribing (an empty subscription) stops the pushes.
    await alice.subscribe_presence([])
    again = await server.user("bob", device_id="bob-phone")
    assert again.user_id == bob_user.id
    assert not [e for e in await settled(alice) if e.type == pb.PRESENCE]


async def test_typing_reaches_only_the_other_member(server: RunningNode) -> None:
    alice = await server.user("alice")
    alice_phone = await server.user("alice", device_id="alice-phone")
    bob = await server.user("bob")
    carol = await server.user("carol")
    cid = (await alice.direct("bob")).conversation_id
    await alice.direct("carol")
    for c in (alice, alice_phone, bob, carol):
        await settled(c)

    await alice.typing(cid, True)
    t = (await bob.next_event(pb.TYPING)).message
    assert (t.conversation_id, t.user_id, t.typing) == (cid, alice.user_id, True)
    await alice.typing(cid, False)
    t = (await bob.next_event(pb.TYPING)).message
    assert (t.user_id, t.typing) == (alice.user_id, False)
    await alice.ping()  # both TYPING frames have been handled
    assert not [e for e in await settled(alice) if e.type == pb.TYPING]
    assert not [e for e in await settled(carol) if e.type == pb.TYPING]
    # Own other devices are told too (they show the draft state).
    phone_typing = [e.message for e in await settled(alice_phone) if e.type == pb.TYPING]
    assert [(m.user_id, m.typing) for m in phone_typing] == [(alice.user_id, True),
                                                             (alice.user_id, False)]
    # Typing into a conversation one is not in is refused.
    await carol.typing(cid, True)
    assert (await carol.next_event(pb.ERROR)).message.code == pb.NOT_FOUND


async def test_direct_conversation_is_idempotent(server: RunningNode) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    a = await alice.direct("bob")
    b = await bob.direct("alice")
    c = await alice.direct(bob.user_id)
    assert a.conversation_id == b.conversation_id == c.conversation_id
    assert a.conversation_id.startswith("d:")
    assert (a.kind, a.member_count, a.peer_id) == (pb.DIRECT, 2, bob.user_id)
    assert b.peer_id == alice.user_id
    # Only one CREATED entry exists.
    assert a.last_seq == b.last_seq == c.last_seq == 1
    log = await bob.sync_all(a.conversation_id)
    assert [(m.seq, m.kind) for m in log] == [(1, pb.SYSTEM)]
    assert [x.conversation_id for x in await alice.conversations()] == [a.conversation_id]

    assert await error_code(alice.direct("alice")) == pb.INVALID_ARGUMENT
    assert await error_code(alice.direct(alice.user_id)) == pb.INVALID_ARGUMENT
    assert await error_code(alice.direct("nobody-" + uuid.uuid4().hex[:6])) == pb.NOT_FOUND
    # Members of a direct conversation are fixed.
    carol = await server.user("carol")
    assert await error_code(alice.change_members(
        a.conversation_id, pb.MemberChange.ADD, [carol.user_id])) == pb.FORBIDDEN


async def test_sync_pages_fit_in_the_advertised_message_size(node_factory: NodeFactory) -> None:
    # Long CJK messages: a page of sync_page_max of them is far larger than
    # the message size the server advertises (and clients enforce).
    node: RunningNode = await node_factory(server={"max_message_size": 262144},
                                           chat=NO_RATE_LIMIT)
    alice = await node.user("alice")
    bob = await node.user("bob")
    assert bob.auth is not None
    cap = bob.auth.max_message_size
    assert cap == 262144
    cid = (await alice.direct("bob")).conversation_id
    rng = random.Random(7)
    texts = ["".join(chr(rng.randrange(0x4E00, 0x9FA5)) for _ in range(16000))
             for _ in range(30)]
    acks = [await alice.send_text(cid, t) for t in texts]

    seqs: list[int] = []
    after = 0
    while True:
        page = await bob.sync(cid, after)
        assert page.ByteSize() <= cap, f"SYNC_RESULT of {page.ByteSize()} bytes > {cap}"
        assert page.messages
        seqs += [m.seq for m in page.messages]
        after = page.messages[-1].seq
        if not page.has_more:
            break
    assert seqs == [1, *(a.seq for a in acks)]
    got = [m.content.text for m in await bob.sync_all(cid) if m.kind == pb.CHAT]
    assert got == texts

    # Scrolling back is bounded the same way and keeps the newest entries.
    back: list[int] = []
    before = acks[-1].seq + 1
    while True:
        page = await bob.sync(cid, before_seq=before)
        assert page.ByteSize() <= cap
        assert page.messages[-1].seq == before - 1
        back = [m.seq for m in page.messages] + back
        before = page.messages[0].seq
        if not page.has_more:
            break
    assert back == seqs

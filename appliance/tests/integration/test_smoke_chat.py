"""Two users chat through a real node on loopback."""

from __future__ import annotations

from conftest import RunningNode

from tongxin.client import pb


async def test_two_users_chat(server: RunningNode) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    conv = await alice.direct("bob")
    ack = await alice.send_text(conv.conversation_id, "你好, bob")
    assert ack.seq == conv.last_seq + 1
    ev = await bob.next_event(pb.DELIVER)
    while ev.message.kind != pb.CHAT:
        ev = await bob.next_event(pb.DELIVER)
    assert ev.message.content.text == "你好, bob"
    assert ev.message.sender_id == alice.user_id
    assert ev.message.seq == ack.seq
    reply = await bob.send_text(conv.conversation_id, "hi alice")
    assert reply.seq == ack.seq + 1
    got = await alice.next_event(pb.DELIVER)
    assert got.message.content.text == "hi alice"

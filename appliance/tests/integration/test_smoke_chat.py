"""Two users chat through a real node on loopback."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from conftest import RunningNode

from tongxin.client import TongxinError, pb


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


async def test_conversation_get_shows_member_cursors(server: RunningNode) -> None:
    alice = await server.user("alice")
    bob = await server.user("bob")
    conv = await alice.direct("bob")
    ack = await alice.send_text(conv.conversation_id, "read me")
    await bob.read(conv.conversation_id, ack.seq)
    receipt = await alice.next_event(pb.RECEIPT)
    assert receipt.message.seq == ack.seq
    info = await alice.conversation(conv.conversation_id)
    cursors = {m.user_id: m.read_seq for m in info.members}
    assert cursors[bob.user_id] == ack.seq
    assert cursors[alice.user_id] == 0
    assert alice.auth is not None
    assert alice.auth.recall_window_ms == int(server.cfg.chat.recall_window * 1000)
    carol = await server.user("carol")
    with pytest.raises(TongxinError) as info_err:
        await carol.conversation(conv.conversation_id)
    assert info_err.value.code == pb.NOT_FOUND


async def test_info_endpoint_tells_clients_about_registration(node_factory: Any) -> None:
    closed = await node_factory(accounts={"self_registration": False})
    async with aiohttp.ClientSession() as http, http.get(closed.http_url + "/api/v1/info") as r:
        body = await r.json()
    assert r.status == 200
    assert body["self_registration"] is False
    assert body["websocket"] == "/ws"


async def test_backend_outage_is_503_on_http_api(server: RunningNode,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tongxin.store.ports import Unavailable

    async def down(*_: Any, **__: Any) -> None:
        raise Unavailable("database unreachable")

    monkeypatch.setattr(server.node.store, "get_user_by_name", down)
    async with aiohttp.ClientSession() as http, http.post(
            server.http_url + "/api/v1/login",
            json={"username": "alice", "password": "password-1"}) as r:
        body = await r.json()
    assert r.status == 503
    assert body["error"] == "UNAVAILABLE" and r.headers["Retry-After"] == "1"

"""A revocation ends the live sessions it covers (server/session_end.py).

Embedded node: the hub closes them at once. Two nodes sharing a store and a
bus stand in for the cluster (the Redis/Kafka run is
tests/integration/test_session_end_cluster.py): the signal reaches the node
that did not revoke.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import (  # type: ignore[import-not-found, unused-ignore]
    NodeFactory,
    RunningNode,
    make_config,
)
from fake_bus import SharedBus  # type: ignore[import-not-found, unused-ignore]

from tongxin.client import Client, TongxinError
from tongxin.delivery.ports import Handler
from tongxin.proto import tongxin_pb2 as pb
from tongxin.server.node import Node
from tongxin.server.session_end import END_SESSIONS, EndSessions, parse
from tongxin.wire import closecodes
from tongxin.wire.codec import Encoder, WireLimits
from tongxin.wire.frame import decode_frame

PASSWORD = "password-1"


async def closed_code(c: Client, within: float = 5.0) -> int | None:
    async with asyncio.timeout(within):
        while not c.closed:  # noqa: ASYNC110 -- the client has no close event to await
            await asyncio.sleep(0.02)
    return c.close_code


def test_signal_round_trips_and_matches_only_what_it_revokes() -> None:
    sig = EndSessions("u_a", issued_before_ms=1000)
    d = sig.delivery()
    assert d.frame_type == END_SESSIONS > 0xFF and d.user_ids == ("u_a",)
    assert parse(d.payload) == sig
    assert sig.matches("u_a", "t1", 1000) and not sig.matches("u_a", "t1", 1001)
    assert not sig.matches("u_b", "t1", 10)
    one = EndSessions("u_a", token_id="t1")
    assert one.matches("u_a", "t1", 5) and not one.matches("u_a", "t2", 5)
    assert parse(b"not json") is None and parse(b'{"token_id": "x"}') is None


async def test_disable_closes_every_device_with_4010(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory()
    pc = await node.user("alice", PASSWORD, device_id="pc")
    phone = await node.user("alice", PASSWORD, device_id="phone")
    bob = await node.user("bob", PASSWORD)
    uid = pc.user_id
    await node.node.store.set_disabled(uid, True)
    await node.node.accounts.revoke_user(uid)  # what the admin API's disable does
    assert await closed_code(pc) == closecodes.SESSION_REVOKED
    assert await closed_code(phone) == closecodes.SESSION_REVOKED
    assert uid not in node.node.hub.devices
    # Others are untouched.
    assert (await bob.direct("alice")).conversation_id


async def test_error_frame_then_close_reason(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory()
    await node.node.accounts.create_user("carol", PASSWORD)
    enc = Encoder(WireLimits())
    auth = pb.AuthRequest(device_id="raw")
    auth.password.username, auth.password.password = "carol", PASSWORD
    async with aiohttp.ClientSession() as http, http.ws_connect(node.ws_url) as ws:
        for f in enc.encode(pb.AUTH, 1, auth.SerializeToString()):
            await ws.send_bytes(f)
        ok = decode_frame((await ws.receive()).data, 1 << 20)
        assert ok.type == pb.AUTH_OK
        user_id = pb.AuthResponse.FromString(ok.payload).user_id
        await node.node.accounts.revoke_user(user_id)
        async with asyncio.timeout(5):
            msg = await ws.receive()
            err = pb.Error.FromString(decode_frame(msg.data, 1 << 20).payload)
            assert (err.code, err.fatal) == (pb.TOKEN_REVOKED, True)
            msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (closecodes.SESSION_REVOKED, "session revoked")


async def test_one_token_and_later_logins_survive(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory()
    await node.node.accounts.create_user("zed", PASSWORD)
    pc = await node.user("dave", PASSWORD, device_id="pc")
    phone = await node.user("dave", PASSWORD, device_id="phone")
    claims = node.node.hub.devices[pc.user_id]["phone"].session.claims  # type: ignore[union-attr]
    await node.node.accounts.revoke(claims.token_id, claims.user_id, claims.expires_at_ms)
    assert await closed_code(phone) == closecodes.SESSION_REVOKED
    assert not pc.closed and (await pc.direct("zed")).conversation_id

    # A password reset ends the pc session; a login after it is a new session.
    user = await node.node.store.get_user_by_name("dave")
    assert user is not None
    await node.node.accounts.set_password(user, "password-2-new", actor="test", via="admin",
                                          check_history=False)
    assert await closed_code(pc) == closecodes.SESSION_REVOKED
    again = await node.user("dave", "password-2-new", device_id="pc")
    await asyncio.sleep(0.3)  # the bus's copy of the signal has come and gone
    assert not again.closed and (await again.direct("zed")).conversation_id


async def test_own_logout_still_closes_normally(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory()
    c = await node.user("erin", PASSWORD)
    await c.logout(revoke_token=True)
    assert await closed_code(c) == closecodes.NORMAL


async def test_revocation_on_one_node_closes_the_socket_on_another(tmp_path: Path) -> None:
    handlers: list[Handler] = []
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    nodes: list[Node] = []
    for name in ("a", "b"):
        cfg = make_config(tmp_path / "shared")  # one SQLite file, one token key
        cfg.node_id = name
        n = Node(cfg, bus=SharedBus(handlers))
        runner = web.AppRunner(n.app(), access_log=None, handle_signals=False)
        await runner.setup()
        host, port = cfg.listen_address()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
        nodes.append(n)
        urls.append(f"ws://127.0.0.1:{port}/ws")
    try:
        await nodes[0].accounts.create_user("frank", PASSWORD)
        c = Client(urls[1], device_id="pc")
        await c.connect()
        await c.login("frank", PASSWORD)
        await nodes[0].accounts.revoke_user(c.user_id)  # node a revokes; b holds the socket
        assert await closed_code(c) == closecodes.SESSION_REVOKED
        await c.close()
    finally:
        for r in reversed(runners):
            await r.cleanup()


async def test_a_revocation_racing_the_auth_still_ends_the_session(
        node_factory: NodeFactory) -> None:
    # The other node's signal never arrives here (routed before presence listed
    # this node): the node rechecks the store after registering the device.
    node: RunningNode = await node_factory()
    await node.node.accounts.create_user("gail", PASSWORD)
    node.node.accounts.end_sessions = None  # no signal at all, only the store
    presence = node.node.presence
    device_online = presence.device_online

    async def revoked_meanwhile(user_id: str, device_id: str, node_id: str) -> bool:
        await node.node.accounts.revoke_user(user_id)
        return await device_online(user_id, device_id, node_id)

    presence.device_online = revoked_meanwhile  # type: ignore[method-assign]
    c = await node.client("pc")
    with pytest.raises(TongxinError, match="TOKEN_REVOKED"):
        await c.login("gail", PASSWORD)
    assert await closed_code(c) == closecodes.SESSION_REVOKED


async def test_the_sdk_does_not_try_to_resume_a_revoked_session(
        node_factory: NodeFactory) -> None:
    # A reconnecting client (what several endpoints give an application) must stop at
    # 4010 instead of resuming with the revoked token, which every node refuses.
    node: RunningNode = await node_factory()
    await node.user("carol", PASSWORD)
    c = Client(node.ws_url, device_id="laptop", reconnect=True)
    node.clients.append(c)
    await c.connect()
    await c.login("carol", PASSWORD)
    await node.node.accounts.revoke_user(c.user_id)
    assert await closed_code(c) == closecodes.SESSION_REVOKED
    await asyncio.sleep(0.5)  # a reconnect would have started by now (first backoff ~0.25 s)
    assert c.closed and c.close_code == closecodes.SESSION_REVOKED
    assert c._reconnector is None or c._reconnector.done()

"""Accounts, tokens, connection lifecycle, rate limits, slow consumers and metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

# conftest is importable under pytest (pythonpath) and when mypy checks tests/ whole.
from conftest import (  # type: ignore[import-not-found, unused-ignore]
    NodeFactory,
    RunningNode,
    make_config,
    start_node,
)
from prometheus_client.parser import text_string_to_metric_families

from tongxin.client import Client, TongxinError, pb
from tongxin.server.admin_api import ADMIN_API
from tongxin.wire import closecodes
from tongxin.wire.codec import Decoder, Encoder, WireLimits
from tongxin.wire.frame import decode_frame

PASSWORD = "password-1"


# ---- helpers -------------------------------------------------------------------


async def error_of(call: Any) -> TongxinError:
    with pytest.raises(TongxinError) as info:
        await call
    return info.value


async def register_records(node: RunningNode) -> list[dict[str, Any]]:
    """The node's ``user.register`` audit records, oldest first."""
    comp = node.runner.app[ADMIN_API].c
    return [r.fields() for r in await comp.store.audit_records(0, 100000)
            if r.event == "user.register"]


async def closed_with(c: Client, wait: float = 10.0) -> int | None:
    """Wait until the server has closed ``c``; return the close code."""
    reader = c._reader
    assert reader is not None
    async with asyncio.timeout(wait):
        await asyncio.shield(reader)
    return c.close_code


async def fresh(node: RunningNode, device_id: str = "") -> Client:
    """A connected client that has not authenticated."""
    c: Client = await node.client(device_id)
    return c


def flip(text: str, index: int) -> str:
    """``text`` with the base64url character at ``index`` replaced by another."""
    ch = text[index]
    return text[:index] + ("B" if ch == "A" else "A") + text[index + 1:]


async def metrics(node: RunningNode) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(node.metrics_url) as resp:
        assert resp.status == 200
        text = await resp.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def sample(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


# ---- password login and lockout ------------------------------------------------


async def test_wrong_password_then_lockout(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(accounts={"lockout_threshold": 3})
    await node.node.accounts.create_user("alice", PASSWORD)

    unknown = await error_of((await fresh(node)).login("nobody", PASSWORD))
    assert unknown.code == pb.AUTH_FAILED
    for _ in range(2):
        err = await error_of((await fresh(node)).login("alice", "wrong-password"))
        assert err.code == pb.AUTH_FAILED
    # Below the threshold the right password still works (and resets the count).
    ok = await (await fresh(node)).login("alice", PASSWORD)
    assert ok.username == "alice"
    for _ in range(2):
        err = await error_of((await fresh(node)).login("alice", "wrong-password"))
        assert err.code == pb.AUTH_FAILED
    third = await error_of((await fresh(node)).login("alice", "wrong-password"))
    assert third.code == pb.AUTH_FAILED

    locked = await error_of((await fresh(node)).login("alice", PASSWORD))
    assert locked.code == pb.ACCOUNT_LOCKED
    assert 0 < locked.retry_after_ms <= node.cfg.accounts.lockout_duration * 1000
    async with aiohttp.ClientSession() as http, http.post(
            f"{node.http_url}/api/v1/login",
            json={"username": "alice", "password": PASSWORD}) as resp:
        assert resp.status == 423
        body = await resp.json()
    assert body["error"] == "ACCOUNT_LOCKED" and body["retry_after_ms"] > 0


async def test_http_login_issues_a_resumable_token(server: RunningNode) -> None:
    await server.node.accounts.create_user("alice", PASSWORD)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.http_url}/api/v1/login",
                             json={"username": "alice", "password": "nope-nope"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "AUTH_FAILED"
        async with http.post(f"{server.http_url}/api/v1/login",
                             json={"username": "alice", "password": PASSWORD,
                                   "device_id": "web-1"}) as resp:
            assert resp.status == 200
            body = await resp.json()
    c = await server.client("web-1")
    auth = await c.resume(body["token"])
    assert (auth.user_id, auth.device_id) == (body["user_id"], "web-1")


# ---- registration --------------------------------------------------------------


async def test_registration_disabled(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(accounts={"self_registration": False})
    err = await error_of((await fresh(node)).register("newbie", PASSWORD))
    assert err.code == pb.REGISTRATION_DISABLED
    async with aiohttp.ClientSession() as http, http.post(
            f"{node.http_url}/api/v1/register",
            json={"username": "newbie", "password": PASSWORD}) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "REGISTRATION_DISABLED"
    assert await node.node.store.get_user_by_name("newbie") is None
    refused = await register_records(node)
    assert [(r["outcome"], r["target"]) for r in refused] == [("denied", "newbie")] * 2
    assert refused[0]["details"]["reason"] == "self-registration is disabled"


async def test_registration_enabled(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(accounts={"self_registration": True})
    c = await fresh(node, "reg-dev")
    auth = await c.register("newbie", PASSWORD, display_name="New Bie")
    assert (auth.username, auth.display_name, auth.device_id) == ("newbie", "New Bie", "reg-dev")
    assert auth.token and auth.user_id.startswith("u_")
    assert (await c.ping()).server_time_ms > 0  # the connection is authenticated
    # The account is real: a password login works.
    again = await (await fresh(node)).login("newbie", PASSWORD)
    assert again.user_id == auth.user_id

    dup = await error_of((await fresh(node)).register("newbie", "another-password"))
    assert dup.code == pb.CONFLICT
    short = await error_of((await fresh(node)).register("shorty", "short"))
    assert short.code == pb.INVALID_ARGUMENT
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.http_url}/api/v1/register",
                             json={"username": "newbie", "password": PASSWORD}) as resp:
            assert resp.status == 409
            assert (await resp.json())["error"] == "CONFLICT"
        async with http.post(f"{node.http_url}/api/v1/register",
                             json={"username": "viahttp", "password": PASSWORD}) as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["user_id"].startswith("u_") and body["token"]
    # Every account made by self-registration is in the audit trail, and so is every refusal.
    recs = [(r["outcome"], r["target"], r["actor"]) for r in await register_records(node)]
    assert recs == [("ok", "newbie", auth.user_id), ("denied", "newbie", ""),
                    ("denied", "shorty", ""), ("denied", "newbie", ""),
                    ("ok", "viahttp", body["user_id"])]


# ---- tokens --------------------------------------------------------------------


async def test_token_resume_and_rejections(server: RunningNode) -> None:
    first = await server.user("alice", device_id="alice-dev")
    await server.node.accounts.create_user("bob", PASSWORD)
    assert first.auth is not None
    token = first.auth.token
    assert first.auth.token_expires_at_ms > first.auth.server_time_ms

    resumed = await server.client("alice-dev")
    auth = await resumed.resume(token)
    assert (auth.user_id, auth.device_id, auth.token) == (first.user_id, "alice-dev", token)
    bob = await server.user("bob")
    cid = (await resumed.direct("bob")).conversation_id
    ack = await resumed.send_text(cid, "via a resumed session")
    assert ack.seq > 0
    assert (await bob.next_event(pb.DELIVER)).message.kind == pb.SYSTEM

    prefix, claims, mac = token.split(".")
    forged_mac = f"{prefix}.{claims}.{flip(mac, 0)}"
    data = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    data["uid"] = bob.user_id
    other_claims = base64.urlsafe_b64encode(
        json.dumps(data, separators=(",", ":"), sort_keys=True).encode()).rstrip(b"=").decode()
    forged_claims = f"{prefix}.{other_claims}.{mac}"
    for bad in (forged_mac, forged_claims, flip(token, len(prefix) + 5), "v1.x.y", "garbage"):
        err = await error_of((await server.client("alice-dev")).resume(bad))
        assert err.code == pb.TOKEN_INVALID, bad
    # A genuine token presented by another device.
    err = await error_of((await server.client("thief-dev")).resume(token))
    assert err.code == pb.TOKEN_INVALID


async def test_token_expires(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(accounts={"token_ttl": 0.5})
    c = await node.user("alice", device_id="d1")
    assert c.auth is not None
    token = c.auth.token
    await c.close()
    await asyncio.sleep(0.8)  # tokens expire by the wall clock
    err = await error_of((await node.client("d1")).resume(token))
    assert err.code == pb.TOKEN_EXPIRED
    # A password login still works and issues a fresh token.
    assert (await (await node.client("d1")).login("alice", PASSWORD)).token != token


async def test_revoked_tokens(server: RunningNode) -> None:
    c = await server.user("alice", device_id="d1")
    assert c.auth is not None
    token = c.auth.token
    await c.logout(revoke_token=True)
    assert await closed_with(c) == closecodes.NORMAL
    err = await error_of((await server.client("d1")).resume(token))
    assert err.code == pb.TOKEN_REVOKED

    # `tongxin user revoke-tokens` against the same data directory, while the
    # node runs: the token of a connected device stops working for resumes.
    c2 = await server.user("alice", device_id="d2")
    assert c2.auth is not None
    token2 = c2.auth.token
    keep = await (await server.client("d2")).resume(token2)  # valid before
    assert keep.user_id == c2.user_id
    env = {**os.environ, "TONGXIN_HOME": str(server.cfg.home)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", "user", "revoke-tokens", "alice",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(30):
            out, errout = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, errout.decode()
    assert out.decode().startswith("revoked ")
    assert int(out.split()[1]) >= 1
    err = await error_of((await server.client("d2")).resume(token2))
    assert err.code == pb.TOKEN_REVOKED


# ---- connection lifecycle ------------------------------------------------------


async def test_frames_before_auth(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(server={"max_unauthenticated_errors": 3})
    c = await fresh(node)
    # PING is allowed before AUTH.
    assert (await c.ping()).client_time_ms > 0
    for _ in range(2):
        err = await error_of(c.sync("d:whatever"))
        assert err.code == pb.NOT_AUTHENTICATED and not err.fatal
    assert not c.closed
    # A fire-and-forget frame gets its error as an event.
    ref = await c.notify(pb.TYPING, pb.Typing(conversation_id="x", typing=True))
    ev = (await c.next_event(pb.ERROR)).message
    assert (ev.code, ev.ref_seq, ev.fatal) == (pb.NOT_AUTHENTICATED, ref, True)
    assert await closed_with(c) == closecodes.AUTH_REQUIRED

    # Failed AUTH attempts count too.
    d = await fresh(node)
    for _ in range(3):
        with pytest.raises(TongxinError):
            await d.login("nobody", PASSWORD)
    assert await closed_with(d) == closecodes.AUTH_REQUIRED


async def test_auth_timeout(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(server={"auth_timeout": 0.5})
    authed = await node.user("alice")
    idle = await fresh(node)
    assert await closed_with(idle) == closecodes.AUTH_REQUIRED
    # The authenticated connection, as old as the dropped one, is untouched.
    assert not authed.closed
    assert (await authed.ping()).server_time_ms > 0


async def test_same_device_replaces_the_connection(server: RunningNode) -> None:
    first = await server.user("alice", device_id="phone")
    bob = await server.user("bob")
    cid = (await bob.direct("alice")).conversation_id
    second = await server.user("alice", device_id="phone")
    assert await closed_with(first) == closecodes.REPLACED
    ack = await bob.send_text(cid, "to the new connection")
    ev = (await second.next_event(pb.DELIVER)).message
    while ev.kind != pb.CHAT:
        ev = (await second.next_event(pb.DELIVER)).message
    assert ev.seq == ack.seq
    assert (await second.send_text(cid, "still works")).seq == ack.seq + 1
    # Replacing is not going offline: the user stays present.
    status = await bob.subscribe_presence([second.user_id])
    assert [(e.status, e.devices) for e in status.entries] == [(pb.ONLINE, 1)]


# ---- rate limit ----------------------------------------------------------------


async def test_rate_limit_refuses_and_does_not_store(node_factory: NodeFactory) -> None:
    # A burst of 5; refilling at 1/s keeps "the 6th rapid frame" the 6th even
    # when a loaded machine takes a few hundred ms over the first five.
    node: RunningNode = await node_factory(
        chat={"rate_limit_per_second": 1.0, "rate_limit_burst": 5.0},
        storage={"sqlite_synchronous": "normal"})
    alice = await node.user("alice")
    bob = await node.user("bob")
    # Bob creates the conversation so that all of alice's burst is left for sends.
    cid = (await bob.direct("alice")).conversation_id
    ids = [f"burst-{i}" for i in range(6)]
    results = await asyncio.gather(*(alice.send_text(cid, f"burst {i}", client_msg_id=ids[i])
                                     for i in range(6)), return_exceptions=True)
    for r in results[:5]:
        assert isinstance(r, pb.Ack), r
    over = results[5]
    assert isinstance(over, TongxinError), over
    assert over.code == pb.RATE_LIMITED and over.retry_after_ms > 0
    log = await bob.sync_all(cid)
    stored = [m.client_msg_id for m in log if m.kind == pb.CHAT]
    assert stored == ids[:5]
    assert "burst 5" not in [m.content.text for m in log]
    # PING is free; after the advised wait a send goes through again.
    assert (await alice.ping()).server_time_ms > 0
    await asyncio.sleep(over.retry_after_ms / 1000)
    retry = await alice.send_text(cid, "burst 5", client_msg_id=ids[5])
    assert not retry.duplicate and retry.seq == log[-1].seq + 1


# ---- slow consumer -------------------------------------------------------------


def _small_receive_buffer(addr_info: Any) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def _stuck_reader(node: RunningNode, session: aiohttp.ClientSession,
                        username: str) -> aiohttp.ClientWebSocketResponse:
    """A raw WebSocket that authenticates as ``username`` and then never reads."""
    ws = await session.ws_connect(node.ws_url, autoping=False, max_msg_size=0)
    auth = pb.AuthRequest(password=pb.PasswordCredentials(username=username, password=PASSWORD),
                          device_id=f"{username}-dev")
    for frame in Encoder(WireLimits()).encode(pb.AUTH, 1, auth.SerializeToString()):
        await ws.send_bytes(frame)
    msg = await ws.receive(timeout=10)
    whole = Decoder(WireLimits()).feed(decode_frame(msg.data, 1 << 20))
    assert whole is not None and whole.type == pb.AUTH_OK
    return ws


async def test_slow_consumer_is_disconnected(node_factory: NodeFactory) -> None:
    node: RunningNode = await node_factory(
        server={"send_queue_frames": 50},
        chat={"max_text_length": 300_000, "rate_limit_per_second": 0.0},
        storage={"sqlite_synchronous": "normal"})
    sender = await node.user("sender")
    observer = await node.user("observer")
    slow_user = await node.node.accounts.create_user("slow", PASSWORD)

    # The slow receiver: a raw WebSocket with a tiny receive buffer that
    # authenticates and never reads again.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(socket_factory=_small_receive_buffer))
    try:
        ws = await _stuck_reader(node, session, "slow")
        to_slow = (await sender.direct("slow")).conversation_id
        to_observer = (await sender.direct("observer")).conversation_id
        registry = node.node.metrics.registry

        def dropped() -> float:
            return registry.get_sample_value("tongxin_slow_consumer_disconnects_total") or 0.0

        # ~200 KB of incompressible text per message fills the socket buffers
        # and then the 50-frame queue; stop as soon as the server gives up.
        sent = 0
        while dropped() < 1 and sent < 400:
            text = base64.b64encode(os.urandom(150_000)).decode()
            await sender.send_text(to_slow, text)
            sent += 1
        assert dropped() >= 1, f"slow receiver still connected after {sent} large messages"

        # The server lets go of it while it still reads nothing: the device
        # leaves the hub (no client event can announce that, hence polling).
        hub = node.node.hub
        async with asyncio.timeout(15):
            while slow_user.id in hub.devices:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        # Reading now, the client finds the stream ended: after what was in
        # flight, with 4008 if the close frame made it before the socket was dropped.
        async with asyncio.timeout(20):
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                    break
        if msg.type == aiohttp.WSMsgType.CLOSE:
            assert msg.data == closecodes.SLOW_CONSUMER
        assert slow_user.id not in node.node.hub.devices

        # Everyone else carries on.
        ack = await sender.send_text(to_observer, "still here")
        got = (await observer.next_event(pb.DELIVER)).message
        while got.kind != pb.CHAT:
            got = (await observer.next_event(pb.DELIVER)).message
        assert got.seq == ack.seq
        m = await metrics(node)
        assert sample(m, "tongxin_slow_consumer_disconnects_total") >= 1
        assert sample(m, "tongxin_closes_total", reason="slow_consumer") >= 1
        # What it missed is in the log for its next sync (in small pages: one
        # page of 200 such entries would overflow this tiny send queue again).
        slow_again = await node.user("slow", device_id="slow-dev")
        chat, after = [], 0
        while True:
            page = await slow_again.sync(to_slow, after, limit=4)
            chat += [m.seq for m in page.messages if m.kind == pb.CHAT]
            after = page.messages[-1].seq
            if not page.has_more:
                break
        assert len(chat) == len(set(chat)) == sent
    finally:
        await session.close()


async def test_shutdown_does_not_hang_on_a_reader_that_stopped(tmp_path: Path) -> None:
    # Enough queued for it to fill the socket buffers, not enough to be dropped
    # as a slow consumer: stopping the node must still close it and finish.
    node = await start_node(make_config(
        tmp_path / "node", chat={"max_text_length": 300_000, "rate_limit_per_second": 0.0},
        storage={"sqlite_synchronous": "normal"}))
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(socket_factory=_small_receive_buffer))
    try:
        sender = await node.user("sender")
        await node.node.accounts.create_user("stuck", PASSWORD)
        stuck = await _stuck_reader(node, session, "stuck")
        cid = (await sender.direct("stuck")).conversation_id
        for _ in range(60):  # ~9 MB
            await sender.send_text(cid, base64.b64encode(os.urandom(150_000)).decode())
        assert node.node.metrics.registry.get_sample_value(
            "tongxin_slow_consumer_disconnects_total") == 0
        async with asyncio.timeout(20):  # a liveness bound: it used to wait forever
            await node.stop()
        assert not node.node.hub.all
        # Reading at last, the client finds the stream ended (1001, or dropped).
        async with asyncio.timeout(20):
            while (msg := await stuck.receive()).type == aiohttp.WSMsgType.BINARY:
                pass
        assert msg.type != aiohttp.WSMsgType.CLOSE or msg.data == closecodes.GOING_AWAY
    finally:
        await session.close()


# ---- HTTP endpoints and metrics ------------------------------------------------


async def test_health_ready_and_metrics(server: RunningNode) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
        async with http.get(f"{server.http_url}/readyz") as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["ready"] is True and body["store"] is True

    alice = await server.user("alice")
    bob = await server.user("bob")
    cid = (await alice.direct("bob")).conversation_id
    before = await metrics(server)
    assert sample(before, "tongxin_connections") == 2
    assert sample(before, "tongxin_authenticated_connections") == 2
    n = 7
    for i in range(n):
        await alice.send_text(cid, f"counted {i}")
    await alice.send_text(cid, "counted 0", client_msg_id="dup")
    await alice.send_text(cid, "counted 0", client_msg_id="dup")
    after = await metrics(server)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("tongxin_messages_stored_total") == n + 1
    assert delta("tongxin_duplicate_sends_total") == 1
    assert delta("tongxin_frames_in_total", type="send") == n + 2
    assert delta("tongxin_ack_latency_seconds_count") == n + 2
    assert delta("tongxin_ack_latency_seconds_sum") > 0
    assert sample(after, "tongxin_connections") == 2

    extra = await server.client()
    await extra.ping()
    assert sample(await metrics(server), "tongxin_connections") == 3
    await extra.close()
    await bob.close()
    # The gauge goes down once the server has noticed the closes.
    async with asyncio.timeout(10):
        while sample(await metrics(server), "tongxin_connections") != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

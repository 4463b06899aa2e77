"""The security administrator's sessions page (server/sessions_api.py) on a real node:
live sessions listed with what this node knows of their connections, force logout of
one session or all of a user's through the revocation every other path uses (the
client's connection closed with 4010, its token refused afterwards), step-up, the
other roles refused, and everything audited."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from aiohttp import web
from conftest import (  # type: ignore[import-not-found, unused-ignore]
    NodeFactory,
    RunningNode,
    make_config,
)
from fake_bus import SharedBus  # type: ignore[import-not-found, unused-ignore]

from tongxin.client import Client
from tongxin.compliance import roles
from tongxin.delivery.ports import Handler
from tongxin.errors import RequestError
from tongxin.presence.memory import MemoryPresence
from tongxin.proto import tongxin_pb2 as pb
from tongxin.server.admin_api import ADMIN_API
from tongxin.server.node import Node
from tongxin.wire import closecodes

PW = "admin-password-1"
API = "/api/v1/admin"


class Admin:
    def __init__(self, name: str, user_id: str, secret: str) -> None:
        self.name, self.user_id, self.secret, self.token = name, user_id, secret, ""

    def code(self, steps: int = 0) -> str:
        return pyotp.TOTP(self.secret).at(time.time() + 30 * steps)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call(http: aiohttp.ClientSession, rn: RunningNode, method: str, path: str,
               admin: Admin, totp: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {admin.token}"}
    if totp:
        headers["X-Tongxin-TOTP"] = totp
    async with http.request(method, rn.http_url + API + path, headers=headers) as r:
        return r.status, json.loads(await r.text())


async def admins(rn: RunningNode, http: aiohttp.ClientSession) -> dict[str, Admin]:
    t = time.time() % 30  # stay clear of a TOTP step boundary
    if not 1.0 <= t <= 26.0:
        await asyncio.sleep((31.0 - t) % 30 + 0.05)
    comp = rn.runner.app[ADMIN_API].c
    out = {}
    for role in roles.ADMIN_ROLES:
        user = await rn.node.accounts.create_user(f"{role}1", PW, role=role)
        secret, _ = await comp.totp.enroll(user.id, user.username, "test")
        a = Admin(user.username, user.id, secret)
        async with http.post(rn.http_url + API + "/login", json={
                "username": a.name, "password": PW, "totp": a.code(-1)}) as r:
            a.token = (await r.json())["token"]
        out[role] = a
    return out


async def events(rn: RunningNode, event: str) -> list[dict[str, Any]]:
    rows = await rn.runner.app[ADMIN_API].c.store.audit_records(0, 100000)
    return [f for f in (r.fields() for r in rows) if f["event"] == event]


async def closed(c: Client, within: float = 5.0) -> int | None:
    async with asyncio.timeout(within):
        while not c.closed:  # noqa: ASYNC110 -- the client has no close event to await
            await asyncio.sleep(0.02)
    return c.close_code


async def test_live_tokens_pages_newest_first_without_revoked_or_expired(
        node_factory: NodeFactory) -> None:
    rn: RunningNode = await node_factory()
    store = rn.node.store
    for i in range(5):
        await store.add_token(f"{i:032x}", "u_a" if i % 2 else "u_b", f"d{i}", 1000 + i, 10_000)
    await store.add_token("f" * 32, "u_a", "old", 900, 2000)  # expired at now=5000
    await store.revoke_token(f"{3:032x}", 1500)
    rows = await store.live_tokens("", 5000, None, 10)
    assert [r.device_id for r in rows] == ["d4", "d2", "d1", "d0"]
    first = await store.live_tokens("", 5000, None, 2)
    rest = await store.live_tokens("", 5000, (first[-1].issued_at, first[-1].token_id), 10)
    assert [r.device_id for r in first + rest] == ["d4", "d2", "d1", "d0"]
    assert [r.device_id for r in await store.live_tokens("u_a", 5000, None, 10)] == ["d1"]
    assert [r.device_id for r in await store.live_tokens("", 1950, None, 10, "f" * 32)] == ["old"]
    await store.touch_token(f"{1:032x}", 4321)
    assert (await store.live_tokens("u_a", 5000, None, 10))[0].last_used_at == 4321


async def test_secadmin_lists_and_forces_out_one_session_then_all(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory(compliance={"step_up_window": 0})
    a = await admins(rn, http)
    sec = a["secadmin"]
    pc = await rn.user("alice", device_id="pc")
    phone = await rn.user("alice", device_id="phone")
    bob = await rn.user("bob", device_id="bob-pc")
    assert pc.auth is not None and phone.auth is not None

    status, body = await call(http, rn, "GET", "/sessions?user=alice", sec)
    assert status == 200, body
    rows = {r["device_id"]: r for r in body["sessions"]}
    assert set(rows) == {"pc", "phone"}
    assert rows["pc"]["username"] == "alice" and rows["pc"]["here"]["node"] == rn.node.node_id
    assert rows["pc"]["here"]["address"] == "127.0.0.1"
    assert rows["pc"]["issued_at"] <= rows["pc"]["last_seen"] <= rows["pc"]["expires_at"]
    assert not body["more"]
    # Everyone's, a page at a time: the admins' console sessions too, this one marked.
    seen: list[dict[str, Any]] = []
    before = ""
    while True:
        status, page = await call(http, rn, "GET", f"/sessions?limit=2&before={before}", sec)
        assert status == 200 and len(page["sessions"]) <= 2
        seen += page["sessions"]
        if not page["more"]:
            break
        before = page["next_before"]
    assert {r["username"] for r in seen} == {"alice", "bob", "sysadmin1", "secadmin1", "auditor1"}
    assert [r["current"] for r in seen if r["username"] == "secadmin1"] == [True]
    assert len({r["token_id"] for r in seen}) == len(seen) == 6

    pc_token = rows["pc"]["token_id"]
    # Sensitive: a fresh second factor first, nothing revoked without it.
    status, body = await call(http, rn, "DELETE", f"/sessions/{pc_token}", sec)
    assert status == 403 and body["error"] == "STEP_UP_REQUIRED"
    assert not pc.closed
    rn.cfg.compliance.step_up_window = 300.0
    status, body = await call(http, rn, "DELETE", f"/sessions/{pc_token}", sec, sec.code(1))
    assert status == 200 and body == {"username": "alice", "token_id": pc_token,
                                      "device_id": "pc", "revoked_tokens": 1}
    assert await closed(pc) == closecodes.SESSION_REVOKED
    with pytest.raises(RequestError) as refused:
        await rn.node.accounts.resume(pc.auth.token, "")
    assert refused.value.code == pb.TOKEN_REVOKED
    assert not phone.closed and not bob.closed
    await rn.node.accounts.resume(phone.auth.token, "")  # the other device's still works
    status, body = await call(http, rn, "GET", "/sessions?user=alice", sec)
    assert [r["device_id"] for r in body["sessions"]] == ["phone"]
    # Gone: a second force logout of it finds nothing.
    status, body = await call(http, rn, "DELETE", f"/sessions/{pc_token}", sec)
    assert status == 404

    status, body = await call(http, rn, "DELETE", "/users/alice/sessions", sec)
    assert status == 200 and body == {"username": "alice", "revoked_tokens": 1}
    assert await closed(phone) == closecodes.SESSION_REVOKED
    with pytest.raises(RequestError):
        await rn.node.accounts.resume(phone.auth.token, "")
    assert not bob.closed

    done = await events(rn, "user_session.revoke")
    assert [(e["actor"], e["target"], e["outcome"], e["details"].get("scope"))
            for e in done] == [(sec.user_id, "alice", "ok", "one"),
                               (sec.user_id, pc_token, "denied", "one"),
                               (sec.user_id, "alice", "ok", "all")]
    assert done[0]["details"]["device"] == "pc"
    revoked = await events(rn, "auth.token_revoked")
    assert [e["details"]["reason"] for e in revoked if e["target"] == pc_token] == ["force logout"]
    lists = await events(rn, "user_session.list")
    assert lists[0]["target"] == "alice" and lists[0]["details"]["count"] == 2


async def test_other_roles_and_own_sessions_are_refused(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory()
    a = await admins(rn, http)
    sec = a["secadmin"]
    carol = await rn.user("carol", device_id="pc")
    status, body = await call(http, rn, "GET", "/sessions?user=carol", sec)
    token = body["sessions"][0]["token_id"]
    for role in ("sysadmin", "auditor"):
        other = a[role]
        for method, path in (("GET", "/sessions"), ("DELETE", f"/sessions/{token}"),
                             ("DELETE", "/users/carol/sessions")):
            status, body = await call(http, rn, method, path, other, other.code(1))
            assert status == 403 and body["required_role"] == "secadmin", (role, path, body)
    assert not carol.closed
    forbidden = await events(rn, "admin.forbidden")
    assert {(e["actor"], e["target"]) for e in forbidden} == {
        (a[r].user_id, op) for r in ("sysadmin", "auditor")
        for op in ("user_session.list", "user_session.revoke")}
    # Not one's own session here (log out instead), nor an unknown user or id.
    status, body = await call(http, rn, "GET", "/sessions?user=secadmin1", sec)
    own = body["sessions"][0]
    assert own["current"]
    status, body = await call(http, rn, "DELETE", f"/sessions/{own['token_id']}", sec)
    assert status == 403 and body["error"] == "FORBIDDEN"
    status, body = await call(http, rn, "DELETE", "/users/secadmin1/sessions", sec)
    assert status == 403
    assert (await call(http, rn, "GET", "/whoami", sec))[0] == 200  # still signed in
    assert (await call(http, rn, "DELETE", "/users/nobody/sessions", sec))[0] == 404
    assert (await call(http, rn, "DELETE", "/sessions/not-an-id", sec))[0] == 400
    assert (await call(http, rn, "GET", "/sessions?before=x", sec))[0] == 400
    assert (await call(http, rn, "GET", "/sessions?limit=0", sec))[0] == 400
    assert [e["outcome"] for e in await events(rn, "user_session.revoke")] == ["denied"] * 4


def test_the_operations_are_the_secadmins_alone_and_force_logout_is_stepped_up() -> None:
    for op in ("user_session.list", "user_session.revoke"):
        assert roles.owner_of(op) == roles.SECADMIN
        assert [r for r in roles.ADMIN_ROLES if roles.allowed(r, op)] == [roles.SECADMIN]
    assert "user_session.revoke" in roles.SENSITIVE and "user_session.list" not in roles.SENSITIVE


async def test_force_logout_through_one_node_ends_a_session_held_by_another(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Two nodes sharing a store, a bus and presence (the cluster in miniature): node a's
    page lists the client node b holds, with b as its node and no address (a does not
    hold the connection), and its force logout closes the connection on b."""
    handlers: list[Handler] = []
    presence = MemoryPresence()
    running: list[RunningNode] = []
    try:
        for name in ("a", "b"):
            cfg = make_config(tmp_path / "shared")  # one SQLite file, one token key
            cfg.node_id = name
            n = Node(cfg, bus=SharedBus(handlers), presence=presence)
            runner = web.AppRunner(n.app(), access_log=None, handle_signals=False)
            await runner.setup()
            host, port = cfg.listen_address()
            await web.TCPSite(runner, host, port).start()
            running.append(RunningNode(n, runner, cfg))
        a, b = running
        sec = (await admins(a, http))["secadmin"]
        phone = await b.user("henry", device_id="phone")
        assert phone.auth is not None
        status, body = await call(http, a, "GET", "/sessions?user=henry", sec)
        assert status == 200 and body["node"] == "a", body
        [row] = body["sessions"]
        assert row["device_id"] == "phone" and row["here"] is None and row["online_nodes"] == ["b"]
        status, body = await call(http, a, "DELETE", f"/sessions/{row['token_id']}", sec)
        assert status == 200, body
        assert await closed(phone) == closecodes.SESSION_REVOKED
        with pytest.raises(RequestError):
            await b.node.accounts.resume(phone.auth.token, "")
    finally:
        for rn in reversed(running):
            await rn.stop()

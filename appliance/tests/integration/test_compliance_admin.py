"""The admin API on a real node: 三员分立, TOTP at login and step-up, audit of
every refusal, retention limits, signed exports and the 等保 report."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pyotp
import pytest
from conftest import NodeFactory, RunningNode, pin_and_sign  # type: ignore[import-not-found, unused-ignore]
from engines import storage_section

from tongxin.compliance.export import verify_export
from tongxin.compliance.service import Compliance
from tongxin.crypto import sm2_available
from tongxin.server.admin_api import ADMIN_API

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")]

PW = "admin-password-1"
API = "/api/v1/admin"


@dataclass
class Admin:
    name: str
    role: str
    user_id: str
    secret: str
    token: str = ""

    def code(self, steps: int = 0) -> str:
        return pyotp.TOTP(self.secret).at(time.time() + 30 * steps)


def compliance(rn: RunningNode) -> Compliance:
    return rn.runner.app[ADMIN_API].c


async def steady_clock() -> None:
    """Stay clear of a TOTP step boundary so codes made here match the server's step."""
    t = time.time() % 30
    if not 1.0 <= t <= 26.0:
        await asyncio.sleep((31.0 - t) % 30 + 0.05)


async def make_admin(rn: RunningNode, name: str, role: str) -> Admin:
    user = await rn.node.accounts.create_user(name, PW, role=role)
    secret, _ = await compliance(rn).totp.enroll(user.id, name, "test")
    return Admin(name, role, user.id, secret)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call(http: aiohttp.ClientSession, rn: RunningNode, method: str, path: str,
               token: str = "", body: Any = None, totp: str = "") -> tuple[int, Any]:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if totp:
        headers["X-Tongxin-TOTP"] = totp
    async with http.request(method, rn.http_url + API + path, json=body, headers=headers) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def login(http: aiohttp.ClientSession, rn: RunningNode, admin: Admin, steps: int = -1) -> str:
    status, body = await call(http, rn, "POST", "/login", body={
        "username": admin.name, "password": PW, "totp": admin.code(steps)})
    assert status == 200, body
    admin.token = body["token"]
    return admin.token


async def events(rn: RunningNode, event: str = "") -> list[dict[str, Any]]:
    rows = await compliance(rn).store.audit_records(0, 100000)
    out = [r.fields() for r in rows]
    return [r for r in out if not event or r["event"] == event]


async def trio(rn: RunningNode, http: aiohttp.ClientSession) -> dict[str, Admin]:
    await steady_clock()
    admins = {role: await make_admin(rn, f"{role}1", role)
              for role in ("sysadmin", "secadmin", "auditor")}
    for a in admins.values():
        await login(http, rn, a)
    return admins


async def test_admin_login_needs_a_valid_unreplayed_totp(node_factory: NodeFactory,
                                                         http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory()
    await steady_clock()
    admin = await make_admin(rn, "sec", "secadmin")
    status, body = await call(http, rn, "POST", "/login",
                              body={"username": "sec", "password": PW, "totp": "000000"
                                    if admin.code() != "000000" else "111111"})
    assert status == 401 and "token" not in body
    status, body = await call(http, rn, "POST", "/login",
                              body={"username": "sec", "password": PW})
    assert status == 401
    code = admin.code()
    status, body = await call(http, rn, "POST", "/login",
                              body={"username": "sec", "password": PW, "totp": code})
    assert status == 200 and body["role"] == "secadmin" and body["token"]
    status, body = await call(http, rn, "POST", "/login",
                              body={"username": "sec", "password": PW, "totp": code})
    assert status == 401 and "replayed" in body["message"]
    # An older step than the one already used is a replay as well.
    status, body = await call(http, rn, "POST", "/login",
                              body={"username": "sec", "password": PW, "totp": admin.code(-1)})
    assert status == 401 and "replayed" in body["message"]
    # The chat login does not hand administrative accounts a token at all.
    async with http.post(rn.http_url + "/api/v1/login",
                         json={"username": "sec", "password": PW}) as r:
        assert r.status in (401, 403)
        assert "token" not in await r.json()
    outcomes = [(e["outcome"], e["details"].get("reason", "")) for e in await events(rn, "admin.login")]
    assert outcomes == [("failed", "TOTP wrong"), ("failed", "TOTP wrong"), ("ok", ""),
                        ("failed", "TOTP replayed"), ("failed", "TOTP replayed")]
    # The failed second factors counted towards the lockout like wrong passwords.
    user = await rn.node.store.get_user_by_name("sec")
    assert user is not None and user.failed_logins == 2


async def test_login_without_enrolled_totp_is_refused(node_factory: NodeFactory,
                                                      http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory()
    await rn.node.accounts.create_user("aud", PW, role="auditor")
    status, body = await call(http, rn, "POST", "/login",
                              body={"username": "aud", "password": PW, "totp": "123456"})
    assert status == 403 and body["error"] == "NO_SECOND_FACTOR"
    assert [e["outcome"] for e in await events(rn, "admin.login")] == ["denied"]


# Operation -> (method, path, body) exercised against every role that does not own it.
OPERATIONS: dict[str, tuple[str, str, Any]] = {
    "user.list": ("GET", "/users", None),
    "user.create": ("POST", "/users", {"username": "zed", "password": "password-9"}),
    "user.disable": ("POST", "/users/carol/disable", None),
    "user.delete": ("DELETE", "/users/carol", None),
    "role.assign": ("PUT", "/users/carol/role", {"role": "auditor"}),
    "totp.reset": ("POST", "/users/carol/totp", None),
    "key.rotate": ("POST", "/keys/audit/rotate", None),
    "retention.set": ("PUT", "/retention", {"audit_retention_days": 365}),
    "policy.set": ("PUT", "/policy", {"settings": {"password_min_length": 12}}),
    "hold.set": ("POST", "/holds", {"kind": "user", "target": "carol", "reason": "case 1"}),
    "audit.read": ("GET", "/audit", None),
    "audit.verify": ("POST", "/audit/verify", None),
    "export.messages": ("POST", "/export", {"user": "carol"}),
    "report.read": ("GET", "/report", None),
    "org.list": ("GET", "/org", None),
    "org.manage": ("POST", "/org", {"name": "总部"}),
    "group.list": ("GET", "/groups", None),
}
OWNER = {"user.list": "sysadmin", "user.create": "sysadmin", "user.disable": "sysadmin",
         "user.delete": "sysadmin", "role.assign": "secadmin", "totp.reset": "secadmin",
         "key.rotate": "secadmin", "retention.set": "secadmin", "hold.set": "secadmin",
         "policy.set": "secadmin",
         "audit.read": "auditor", "audit.verify": "auditor", "export.messages": "auditor",
         "report.read": "auditor", "org.list": "sysadmin", "org.manage": "sysadmin",
         "group.list": "sysadmin"}


async def test_each_role_is_refused_the_others_work_and_it_is_audited(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory()
    admins = await trio(rn, http)
    await rn.node.accounts.create_user("carol", "password-1")
    dave = await rn.user("dave")
    assert dave.auth is not None
    ordinary_token = dave.auth.token
    before = len(await events(rn, "admin.forbidden"))
    refused = 0
    for op, (method, path, body) in OPERATIONS.items():
        for role, admin in admins.items():
            if role == OWNER[op]:
                continue
            status, answer = await call(http, rn, method, path, admin.token, body,
                                        totp=admin.code(1))
            assert status == 403, (role, op, answer)
            assert answer["required_role"] == OWNER[op], (role, op)
            refused += 1
        status, answer = await call(http, rn, method, path, ordinary_token, body)
        assert status == 403, (op, answer)
        refused += 1
    forbidden = (await events(rn, "admin.forbidden"))[before:]
    assert len(forbidden) == refused
    assert {e["actor_role"] for e in forbidden} == {"sysadmin", "secadmin", "auditor", "user"}
    assert all(e["outcome"] == "denied" for e in forbidden)
    # Nothing the refusals asked for happened.
    carol = await rn.node.store.get_user_by_name("carol")
    assert carol is not None and not carol.disabled and carol.role == "user"
    assert await rn.node.store.get_user_by_name("zed") is None
    assert await rn.node.store.org_units() == []
    # No token, or a bad one: 401, audited too.
    status, _ = await call(http, rn, "GET", "/users")
    assert status == 401
    status, _ = await call(http, rn, "GET", "/users", "v1.bogus.token")
    assert status == 401
    assert len(await events(rn, "admin.unauthenticated")) == 2
    # Each owner can do its own work.
    status, body = await call(http, rn, "GET", "/users", admins["sysadmin"].token)
    assert status == 200 and any(u["username"] == "carol" for u in body["users"])
    status, body = await call(http, rn, "GET", "/audit?limit=1000", admins["auditor"].token)
    assert status == 200 and any(r["event"] == "admin.forbidden" for r in body["records"])
    status, body = await call(http, rn, "POST", "/holds", admins["secadmin"].token,
                              {"kind": "user", "target": "carol", "reason": "case 1"})
    assert status == 201
    hold_id = body["id"]
    # The auditor checks retention and holds, read only, through its own route: sees the
    # hold, cannot release it (nor set one, nor change retention: OPERATIONS above).
    status, mine = await call(http, rn, "GET", "/retention", admins["secadmin"].token)
    status, answer = await call(http, rn, "GET", "/audit/retention", admins["auditor"].token)
    assert status == 200, answer
    assert [h["reason"] for h in answer["holds"]] == ["case 1"] and answer == mine
    for role in ("sysadmin", "secadmin"):
        status, _ = await call(http, rn, "GET", "/audit/retention", admins[role].token)
        assert status == 403
    status, answer = await call(http, rn, "DELETE", f"/holds/{hold_id}", admins["auditor"].token,
                                totp=admins["auditor"].code(1))
    assert status == 403 and answer["required_role"] == "secadmin"
    # Administrative accounts are out of the sysadmin's reach; no one changes their own role.
    status, _ = await call(http, rn, "POST", "/users/auditor1/disable", admins["sysadmin"].token)
    assert status == 403
    status, _ = await call(http, rn, "PUT", "/users/secadmin1/role", admins["secadmin"].token,
                           {"role": "auditor"}, totp=admins["secadmin"].code(1))
    assert status == 403


async def test_sensitive_operations_need_a_fresh_second_factor(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory(compliance={"step_up_window": 0.0})
    admins = await trio(rn, http)
    await rn.node.accounts.create_user("carol", "password-1")
    sys_, sec, aud = admins["sysadmin"], admins["secadmin"], admins["auditor"]
    cases = [(sys_, "DELETE", "/users/carol", None),
             (sec, "POST", "/keys/audit/rotate", None),
             (sec, "PUT", "/retention", {"audit_retention_days": 365}),
             (aud, "POST", "/export", {"user": "carol"})]
    steps = {a.name: 0 for a in admins.values()}
    for admin, method, path, body in cases:
        status, answer = await call(http, rn, method, path, admin.token, body)
        assert status == 403 and answer["error"] == "STEP_UP_REQUIRED", (path, answer)
        # The login used the previous step; the current one (then the next) is fresh.
        code = admin.code(steps[admin.name])
        steps[admin.name] += 1
        wrong = "123456" if code != "123456" else "654321"
        status, answer = await call(http, rn, method, path, admin.token, body, totp=wrong)
        assert status == 403 and answer["error"] == "STEP_UP_FAILED", (path, answer)
        status, answer = await call(http, rn, method, path, admin.token, body, totp=code)
        assert status == 200, (path, answer)
        status, answer = await call(http, rn, method, path, admin.token, body, totp=code)
        assert status == 403 and "replayed" in answer["message"], (path, answer)
    carol = await rn.node.store.get_user_by_name("carol")
    assert carol is not None and carol.disabled
    step_ups = [(e["actor_role"], e["outcome"]) for e in await events(rn, "auth.step_up")]
    assert step_ups.count(("sysadmin", "ok")) == 1
    assert len([s for s in step_ups if s[1] != "ok"]) == 3 * len(cases)
    assert [e["event"] for e in await events(rn) if e["event"] in (
        "user.delete", "key.rotate", "retention.audit.set", "export.messages")] == [
        "user.delete", "key.rotate", "retention.audit.set", "export.messages"]


async def test_step_up_window_counts_the_login_as_fresh(node_factory: NodeFactory,
                                                        http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory(compliance={"step_up_window": 300.0})
    admins = await trio(rn, http)
    status, body = await call(http, rn, "POST", "/keys/audit/rotate", admins["secadmin"].token)
    assert status == 200 and body["fingerprint"] != body["old_fingerprint"]


async def test_audit_retention_below_minimum_needs_an_override(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory()
    admins = await trio(rn, http)
    sec = admins["secadmin"]
    status, body = await call(http, rn, "PUT", "/retention", sec.token, {"audit_retention_days": 90})
    assert status == 400 and body["error"] == "BELOW_LEGAL_MINIMUM"
    status, body = await call(http, rn, "PUT", "/retention", sec.token,
                              {"audit_retention_days": 90, "override": True,
                               "reason": "regulator approval 2026-3"})
    assert status == 200 and body["audit_retention_days"] == 90
    trail = [(e["event"], e["outcome"]) for e in await events(rn)
             if e["event"].startswith("retention.audit")]
    assert trail == [("retention.audit.set", "denied"), ("retention.audit.override", "ok")]


async def test_login_events_recall_and_revocation_are_audited(server: RunningNode) -> None:
    alice = await server.user("alice")
    await server.user("bob")
    conv = await alice.direct("bob")
    ack = await alice.send_text(conv.conversation_id, "oops")
    await alice.recall(conv.conversation_id, ack.seq)
    bad = await server.client()
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises its own error type
        await bad.login("alice", "wrong-password")
    await alice.logout()
    for _ in range(50):  # LOGOUT has no answer frame: wait for its record
        got = await events(server)
        if any(e["event"] == "auth.token_revoked" for e in got):
            break
        await asyncio.sleep(0.05)
    names = [e["event"] for e in got]
    assert names[:3] == ["config.initial", "node.start", "auth.login"]
    assert "chat.recall" in names and "auth.token_revoked" in names
    failed = [e for e in got if e["event"] == "auth.login" and e["outcome"] == "failed"]
    assert failed and failed[0]["details"]["reason"] == "wrong password"
    recall = next(e for e in got if e["event"] == "chat.recall")
    assert recall["actor"] == alice.user_id and recall["details"]["seq"] == ack.seq
    await pin_and_sign(compliance(server))
    assert (await compliance(server).verify()).ok


async def test_lockout_is_audited(node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory(accounts={"lockout_threshold": 2})
    await rn.node.accounts.create_user("erin", "password-1")
    for _ in range(3):
        async with http.post(rn.http_url + "/api/v1/login",
                             json={"username": "erin", "password": "nope-nope"}):
            pass
    lock = await events(rn, "auth.lockout")
    assert len(lock) == 1 and lock[0]["target"] == "erin"
    denied = [e for e in await events(rn, "auth.login") if e["outcome"] == "denied"]
    assert denied and denied[0]["details"]["reason"] == "account locked"


@pytest.fixture(params=["sqlite", "mysql"])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    async with storage_section(str(request.param)) as section:
        yield section


async def test_sysadmin_keeps_units_and_sees_groups_without_their_messages(
        storage: dict[str, Any], node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    """组织机构 and 群组 through the node's HTTP API on both kinds of store: the tree's
    refusals are 4xx with nothing changed, every change and refusal audited with the actor."""
    rn: RunningNode = await node_factory(storage=storage)
    alice = await rn.user("alice")
    await rn.user("bob")
    group = await alice.create_group("项目组", ["bob"])
    await alice.send_text(group.conversation_id, "机密内容")
    sysadmin = (await trio(rn, http))["sysadmin"]
    tok = sysadmin.token
    status, hq = await call(http, rn, "POST", "/org", tok, {"name": "总部"})
    assert status == 201, hq
    status, sub = await call(http, rn, "POST", "/org", tok, {"name": "办公厅", "parent_id": hq["id"]})
    assert status == 201, sub
    status, body = await call(http, rn, "PUT", "/users/alice/unit", tok, {"unit_id": sub["id"]})
    assert status == 200 and body["previous_unit_id"] == "", body
    refusals = [("POST", "/org", {"name": "办公厅", "parent_id": hq["id"]}, 409, "CONFLICT"),
                ("POST", "/org", {"name": "x", "parent_id": "ou_none"}, 404, "NOT_FOUND"),
                ("POST", "/org", {"name": " "}, 400, "INVALID_ARGUMENT"),
                ("PATCH", f"/org/{hq['id']}", {"parent_id": sub["id"]}, 400, "INVALID_ARGUMENT"),
                ("DELETE", f"/org/{hq['id']}", None, 409, "NOT_EMPTY"),
                ("DELETE", f"/org/{sub['id']}", None, 409, "NOT_EMPTY"),
                ("PUT", "/users/bob/unit", {"unit_id": "ou_none"}, 404, "NOT_FOUND")]
    for method, path, payload, want, error in refusals:
        status, body = await call(http, rn, method, path, tok, payload)
        assert (status, body["error"]) == (want, error), (method, path, body)
    status, tree = await call(http, rn, "GET", "/org", tok)
    assert [(u["name"], u["parent_id"], u["member_count"]) for u in tree["units"]] == [
        ("总部", "", 0), ("办公厅", hq["id"], 1)]
    status, people = await call(http, rn, "GET", "/users", tok)
    assert {u["username"]: u["unit_path"] for u in people["users"]}["alice"] == "总部 / 办公厅"
    org_records = [e for e in await events(rn) if e["event"].startswith("org.")]
    assert [(e["event"], e["outcome"]) for e in org_records] == [
        ("org.create", "ok"), ("org.create", "ok"), ("org.assign", "ok"),
        ("org.create", "denied"), ("org.create", "denied"), ("org.create", "denied"),
        ("org.move", "denied"), ("org.delete", "denied"), ("org.delete", "denied"),
        ("org.assign", "denied"), ("org.list", "ok")]
    assert {e["actor"] for e in org_records} == {sysadmin.user_id}
    status, groups = await call(http, rn, "GET", "/groups?q=项目", tok)
    assert status == 200 and [g["name"] for g in groups["groups"]] == ["项目组"]
    assert groups["groups"][0]["created_by_username"] == "alice"
    status, members = await call(http, rn, "GET", f"/groups/{group.conversation_id}/members", tok)
    assert status == 200 and {(m["username"], m["role"]) for m in members["members"]} == {
        ("alice", "owner"), ("bob", "member")}
    assert "机密内容" not in json.dumps(groups) + json.dumps(members)
    assert [e["target"] for e in await events(rn, "group.members")] == [group.conversation_id]


async def test_export_is_signed_verifiable_and_audited(storage: dict[str, Any],
                                                       node_factory: NodeFactory,
                                                       http: aiohttp.ClientSession) -> None:
    # storage first: its database outlives the node (the node's last audit record)
    rn: RunningNode = await node_factory(storage=storage)
    alice = await rn.user("alice")
    await rn.user("bob")
    conv = await alice.direct("bob")
    for i in range(3):
        await alice.send_text(conv.conversation_id, f"message {i}")
    admins = await trio(rn, http)
    aud = admins["auditor"]
    status, body = await call(http, rn, "POST", "/export", aud.token,
                              {"user": "alice", "from_ms": 0}, totp=aud.code(0))
    assert status == 200, body
    path = Path(body["path"])
    lines = [json.loads(x) for x in (path / "messages.jsonl").read_text().splitlines()]
    texts = [x["content"]["text"] for x in lines if x["content"] and "text" in x["content"]]
    assert texts == ["message 0", "message 1", "message 2"]
    assert body["manifest"]["records"] == len(lines)
    # The console downloads the files (inside the step-up window of the export).
    export_id = body["manifest"]["export_id"]
    for name in ("messages.jsonl", "manifest.json", "manifest.sig"):
        async with http.get(f"{rn.http_url}{API}/exports/{export_id}/{name}",
                            headers={"Authorization": f"Bearer {aud.token}"}) as r:
            assert r.status == 200, await r.text()
            assert await r.read() == (path / name).read_bytes()
            assert export_id in r.headers["Content-Disposition"]
    for bad in (f"{export_id}/secrets.key", "..%2F..%2Fsecrets/token.key", f"exp_1_{'0' * 8}/manifest.json"):
        status, answer = await call(http, rn, "GET", f"/exports/{bad}", aud.token)
        assert status in (400, 404), (bad, status, answer)
    status, _ = await call(http, rn, "GET", f"/exports/{export_id}/manifest.json",
                           admins["sysadmin"].token)
    assert status == 403
    downloads = await events(rn, "export.download")
    assert [d["target"] for d in downloads] == [
        f"{export_id}/messages.jsonl", f"{export_id}/manifest.json", f"{export_id}/manifest.sig"]
    pins = [compliance(rn).keys.current_fingerprint() or ""]
    assert verify_export(path, compliance(rn).keys, pins) == []
    (path / "messages.jsonl").write_text((path / "messages.jsonl").read_text().replace("1", "7"))
    assert verify_export(path, compliance(rn).keys, pins) == [
        "messages.jsonl does not match its SM3 digest"]
    exported = await events(rn, "export.messages")
    assert exported[0]["actor"] == aud.user_id and exported[0]["target"] == f"user:{alice.user_id}"


def _item(report: dict[str, Any], item_id: str) -> dict[str, Any]:
    return next(i for i in report["items"] if i["id"] == item_id)


async def test_report_shows_evidence_and_turns_red_when_it_goes(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory()
    admins = await trio(rn, http)
    aud = admins["auditor"]
    evidence = rn.cfg.home / "evidence"
    evidence.mkdir()
    (evidence / "backup-1.json").write_text(json.dumps({"finished_at": int(time.time() * 1000),
                                                        "ok": True}))
    await pin_and_sign(compliance(rn))
    status, report = await call(http, rn, "GET", "/report", aud.token)
    # Backups nobody has restored: a gap, until a restore test leaves its evidence.
    assert _item(report, "BR-1")["status"] == "gap"
    assert any("no restore" in f for f in _item(report, "BR-1")["findings"])
    assert "未测试过备份恢复（evidence/restore-*.json）" in _item(report, "BR-1")["findings_zh"]
    (evidence / "restore-1.json").write_text(json.dumps(
        {"finished_at": "2026-12-01T10:00:00Z", "ok": True, "backup": "dc1-20261201T090000Z"}))
    status, report = await call(http, rn, "GET", "/report", aud.token)
    assert status == 200
    assert _item(report, "IA-4")["status"] == "pass"
    assert report["two_factor_coverage"]["secadmin"] == {"accounts": 1, "totp": 1, "sms": 0}
    assert _item(report, "AC-1")["status"] == "pass"
    assert _item(report, "AU-2")["status"] == "pass", _item(report, "AU-2")
    pinned = compliance(rn).keys.current_fingerprint()
    assert f"trusted audit keys (compliance.audit_trusted_keys): {pinned}" in _item(
        report, "AU-2")["evidence"]
    assert _item(report, "BR-1")["status"] == "pass"
    assert _item(report, "BR-2")["status"] == "gap"  # no DR drill result: a gap, not a pass
    assert any("accounts.password_min_length = 8" in e for e in _item(report, "IA-1")["evidence"])
    # Remove evidence: one admin loses the second factor, the backup record goes,
    # one audit record is edited.
    await compliance(rn).store.delete_totp(admins["sysadmin"].user_id)
    (evidence / "backup-1.json").unlink()
    conn = sqlite3.connect(rn.cfg.home / "compliance.db", isolation_level=None)
    conn.execute("UPDATE audit SET body = replace(body, 'node.start', 'node.stopp') WHERE seq = 2")
    conn.close()
    status, report = await call(http, rn, "GET", "/report", aud.token)
    assert status == 200
    ia4 = _item(report, "IA-4")
    assert ia4["status"] == "fail" and any("sysadmin1" in f for f in ia4["findings"])
    assert _item(report, "AU-2")["status"] == "fail"
    assert _item(report, "BR-1")["status"] == "gap"
    # Every finding in Chinese too (findings_zh), beside the English the API always had.
    for i in report["items"]:
        assert len(i["findings_zh"]) == len(i["findings"]), i
        assert not set(i["findings_zh"]) & set(i["findings"]), i
    assert "系统管理员 sysadmin1 未绑定第二鉴别因子" in ia4["findings_zh"]
    assert "没有备份结果（evidence/backup-*.json）" in _item(report, "BR-1")["findings_zh"]
    assert any(f.startswith("审计链校验问题（被修改）：") for f in _item(report, "AU-2")["findings_zh"])
    assert _item(report, "AU-2")["remedy_zh"].startswith("对每个问题运行 `tongxin audit verify`")
    # The CLI writes the same report as JSON and HTML; failing items are red.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", "report", "compliance", "--out",
        str(rn.cfg.home / "rep"), env={**os.environ, "TONGXIN_HOME": str(rn.cfg.home)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 1, err  # failing items: non-zero exit
    # Chinese first, the English counts, codes and item ids kept for scripts.
    summary = out.decode().splitlines()[0]
    assert re.fullmatch(r"通过 \d+，不符合 \d+，差距 \d+（pass \d+, fail \d+, gap \d+）", summary)
    assert re.search(r"^  不符合 FAIL  IA-4 ", out.decode(), re.M)
    assert re.search(r"^  通过   PASS  AU-3 ", out.decode(), re.M)
    assert re.search(r"^  差距   GAP   BR-1 ", out.decode(), re.M)
    assert f"wrote {rn.cfg.home / 'rep' / 'compliance-report.json'}" in out.decode()
    html = (rn.cfg.home / "rep" / "compliance-report.html").read_text()
    assert '<tr class="red" id="IA-4">' in html and '<tr class="red" id="AU-2">' in html
    assert '<tr class="green" id="AU-3">' in html
    # Without a session idle timeout in the configuration IA-2 is a gap, not a pass.
    assert '<tr class="red" id="IA-2">' in html
    assert "<th>条款 " in html and "证据与发现" in html and "没有备份结果" in html
    saved = json.loads((rn.cfg.home / "rep" / "compliance-report.json").read_text())
    assert _item(saved, "AU-2")["status"] == "fail"
    s = saved["summary"]
    assert summary.endswith(f"（pass {s['pass']}, fail {s['fail']}, gap {s['gap']}）")


async def test_site_status_shows_the_newest_evidence_to_the_sysadmin_only(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory(site={"name": "dc1"})
    admins = await trio(rn, http)
    status, body = await call(http, rn, "GET", "/site", admins["sysadmin"].token)
    assert status == 200, body
    assert body["site"] == "dc1" and body["role"] == "active" and body["storage"] == "sqlite"
    assert body["evidence"] == {"backup": None, "restore": None, "dr-drill": None}
    evidence = rn.cfg.home / "evidence"
    evidence.mkdir()
    (evidence / "backup-20261201T023000Z.json").write_text(json.dumps(
        {"ok": True, "finished_at": "2026-12-01T02:31:00Z", "id": "dc1-20261201T023000Z",
         "bytes": 4096, "target": "/var/backups/tongxin/x"}))
    # A newer failed backup is the one shown: the console must not hide a failure.
    (evidence / "backup-20261202T023000Z.json").write_text(json.dumps(
        {"ok": False, "finished_at": "2026-12-02T02:31:00Z", "error": "disk full"}))
    (evidence / "dr-drill-1.json").write_text(json.dumps(
        {"ok": True, "finished_at": "2026-11-20T10:00:00Z", "rpo_seconds": 0.4, "rto_seconds": 41}))
    status, body = await call(http, rn, "GET", "/site", admins["sysadmin"].token)
    assert status == 200
    backup = body["evidence"]["backup"]
    assert backup["file"] == "backup-20261202T023000Z.json" and backup["ok"] is False
    assert backup["error"] == "disk full" and "target" not in backup
    assert body["evidence"]["dr-drill"]["rpo_seconds"] == 0.4 and body["evidence"]["restore"] is None
    for role in ("secadmin", "auditor"):
        status, body = await call(http, rn, "GET", "/site", admins[role].token)
        assert status == 403, (role, body)


async def test_config_view_shows_the_sysadmin_every_key_and_no_secret(
        node_factory: NodeFactory, http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    db_password = "Sup3r-Secret-DB-pw"
    monkeypatch.setenv("TONGXIN_REDIS_PASSWORD", "redis-env-secret-77")
    monkeypatch.setenv("TONGXIN_MYSQL_PASSWORD", "mysql-env-secret-88")
    rn: RunningNode = await node_factory(
        storage={"mysql_dsn": f"mysql://tongxin:{db_password}@db.internal:4000/tongxin"},
        chat={"recall_window": 60.0})
    admins = await trio(rn, http)
    status, body = await call(http, rn, "GET", "/config", admins["sysadmin"].token)
    assert status == 200, body
    text = json.dumps(body)
    for secret in (db_password, "redis-env-secret-77", "mysql-env-secret-88", "db.internal"):
        assert secret not in text
    rows = {r["key"]: r for r in body["keys"]}
    assert rows["chat.recall_window"]["value"] == 60.0 and rows["chat.recall_window"]["default"] == 120.0
    assert rows["chat.recall_window"]["differs"] is True and rows["chat.edit_window"]["differs"] is False
    assert rows["storage.mysql_dsn"]["redacted"] is True and rows["storage.mysql_dsn"]["set"] is True
    assert rows["storage.mysql_dsn"]["value"] is None
    env = {e["name"]: e["set"] for e in body["environment"]}
    assert env["TONGXIN_REDIS_PASSWORD"] is True and env["TONGXIN_SMS_WEBHOOK_SECRET"] is False
    reads = await events(rn, "config.read")
    assert [(r["actor"], r["outcome"]) for r in reads] == [(admins["sysadmin"].user_id, "ok")]
    for role in ("secadmin", "auditor"):
        status, body = await call(http, rn, "GET", "/config", admins[role].token)
        assert status == 403 and body["required_role"] == "sysadmin", (role, body)
    user = await rn.node.accounts.create_user("plainuser", PW)
    token = (await rn.node.accounts.login("plainuser", PW, "dev1")).token
    status, body = await call(http, rn, "GET", "/config", token)
    assert status == 403, body
    refused = [r for r in await events(rn, "admin.forbidden") if r.get("target") == "config.read"]
    assert {r["actor"] for r in refused} == {admins["secadmin"].user_id, admins["auditor"].user_id,
                                              user.id}
    status, _ = await call(http, rn, "GET", "/config")
    assert status == 401
    assert len(await events(rn, "config.read")) == 1


async def test_auditor_lists_and_opens_the_evidence_and_no_other_file(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from drill_sample import drill_report

    from tongxin.drill.report import write_report

    rn: RunningNode = await node_factory()
    admins = await trio(rn, http)
    aud = admins["auditor"].token
    status, body = await call(http, rn, "GET", "/evidence", aud)
    assert status == 200 and body == {"records": []}
    evidence = rn.cfg.home / "evidence"
    report = drill_report(run_id="run<script>alert(1)</script>")
    report["problems"] = ["<img src=x onerror=alert(2)>"]
    drill_json, _html = write_report(report, evidence)
    (evidence / "backup-20261202T023000Z.json").write_text(json.dumps(
        {"ok": False, "finished_at": "2026-12-02T02:31:00Z", "error": "disk full"}))
    status, body = await call(http, rn, "GET", "/evidence", aud)
    assert status == 200, body
    assert [(r["file"], r["ok"]) for r in body["records"]] == [
        ("backup-20261202T023000Z.json", False), (drill_json.name, True)]
    drill = body["records"][1]
    assert drill["rpo_seconds"] == 2.0 and drill["rto_seconds"] == 12.0 and drill["html"] is True
    status, body = await call(http, rn, "GET", f"/evidence/{drill_json.name}", aud)
    assert status == 200 and body["report"]["run_id"] == report["run_id"] and body["type"] == "dr-drill"
    headers = {"Authorization": f"Bearer {aud}"}
    async with http.get(f"{rn.http_url}{API}/evidence/{drill_json.name}?download=1",
                        headers=headers) as r:
        assert r.status == 200 and json.loads(await r.read()) == json.loads(drill_json.read_text())
        assert drill_json.name in r.headers["Content-Disposition"]
    async with http.get(f"{rn.http_url}{API}/evidence/{drill_json.name}/html", headers=headers) as r:
        page = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "sandbox" in csp and "script-src" not in csp
    assert "<script>" not in page and "<img src=x" not in page
    assert "run&lt;script&gt;alert(1)&lt;/script&gt;" in page and "RPO" in page
    status, _ = await call(http, rn, "GET", "/evidence/backup-20261202T023000Z.json/html", aud)
    assert status == 404
    # Nothing but an evidence file's own name: a path, a parent, an absolute name.
    (rn.cfg.home / "secret.json").write_text('{"finished_at": 1, "ok": true, "k": "s3cr3t"}')
    for name, want in (("..%2Fsecret.json", (400, 404)), ("%2Fetc%2Fpasswd", (400, 404)),
                       ("..", (400, 404)), ("tls.json", (400,)),
                       ("backup-20991231T000000Z.json", (404,))):
        status, body = await call(http, rn, "GET", f"/evidence/{name}", aud)
        assert status in want and "s3cr3t" not in json.dumps(body), (name, status, body)
    async with http.get(f"{rn.http_url}{API}/evidence/../secret.json", headers=headers) as r:
        assert r.status in (400, 404) and "s3cr3t" not in await r.text()
    reads = await events(rn, "evidence.read")
    assert {(r["target"], r["outcome"]) for r in reads} >= {
        (drill_json.name, "ok"), ("tls.json", "denied"), ("backup-20991231T000000Z.json", "failed")}
    assert all(r["actor"] == admins["auditor"].user_id for r in reads)
    assert [r["outcome"] for r in await events(rn, "evidence.list")] == ["ok", "ok"]
    for role in ("sysadmin", "secadmin"):
        for path in ("/evidence", f"/evidence/{drill_json.name}", f"/evidence/{drill_json.name}/html"):
            status, body = await call(http, rn, "GET", path, admins[role].token)
            assert status == 403 and body["required_role"] == "auditor", (role, path, body)
    await rn.node.accounts.create_user("plainuser", PW)
    token = (await rn.node.accounts.login("plainuser", PW, "dev1")).token
    status, _ = await call(http, rn, "GET", "/evidence", token)
    assert status == 403
    assert len(await events(rn, "evidence.list")) == 2


async def test_policy_page_shows_the_rules_to_the_secadmin_only(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory(accounts={"password_min_classes": 3, "password_history": 4})
    admins = await trio(rn, http)
    status, body = await call(http, rn, "GET", "/policy", admins["secadmin"].token)
    assert status == 200, body
    rules = {r["key"]: r for r in body["rules"]}
    assert rules["password_min_classes"] == {"key": "password_min_classes", "value": 3,
                                             "required": ">= 3", "ok": True}
    assert rules["password_history"]["value"] == 4 and rules["password_history"]["ok"] is True
    assert rules["password_max_age_days"]["ok"] is False and body["meets_dengbao"] is False
    assert [e["actor"] for e in await events(rn, "policy.read")] == [admins["secadmin"].user_id]
    for role in ("sysadmin", "auditor"):
        status, _ = await call(http, rn, "GET", "/policy", admins[role].token)
        assert status == 403, role


async def test_secadmin_changes_the_policy_with_a_step_up_and_it_is_in_force(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    from tongxin.compliance.account_policy import POLICY_SETTING

    # No step-up window: the login's second factor does not count for the change.
    rn: RunningNode = await node_factory(compliance={"step_up_window": 0})
    admins = await trio(rn, http)
    sec = admins["secadmin"]
    await rn.node.accounts.create_user("dave", "dave-pass-1")
    comp = compliance(rn)

    async def policy() -> dict[str, Any]:
        status, body = await call(http, rn, "GET", "/policy", sec.token)
        assert status == 200, body
        return cast("dict[str, Any]", body)

    def values(body: dict[str, Any]) -> dict[str, Any]:
        return {r["key"]: r["value"] for r in body["rules"]}

    start = await policy()
    assert values(start)["password_min_length"] == 8 and start["overrides"] == {}
    assert start["editable"]["password_min_length"] == {
        "min": 6, "max": 128, "integer": True, "zero_off": False, "unit": ""}
    assert "scrypt_n" not in start["editable"] and start["configured"]["lockout_threshold"] == 5
    change = {"settings": {"password_min_length": 12, "password_min_classes": 3,
                           "lockout_threshold": 3}, "reason": "等保 整改 2026-3"}

    # The other two administrators may not (separation of duties), whatever code they send.
    for role in ("sysadmin", "auditor"):
        status, body = await call(http, rn, "PUT", "/policy", admins[role].token, change,
                                  totp=admins[role].code(0))
        assert status == 403 and body["error"] == "FORBIDDEN", (role, body)
        assert body["required_role"] == "secadmin"
    # The secadmin needs a fresh second factor: none, then a wrong one, are refused.
    status, body = await call(http, rn, "PUT", "/policy", sec.token, change)
    assert status == 403 and body["error"] == "STEP_UP_REQUIRED", body
    wrong = "000000" if sec.code(0) != "000000" else "111111"
    status, body = await call(http, rn, "PUT", "/policy", sec.token, change, totp=wrong)
    assert status == 403 and body["error"] == "STEP_UP_FAILED", body
    assert await comp.store.get_setting(POLICY_SETTING) is None

    # Invalid values: 400 naming each refused field; the valid one beside them is not applied.
    status, body = await call(http, rn, "PUT", "/policy", sec.token, {"settings": {
        "password_min_length": 200, "lockout_threshold": 2.5, "token_ttl": "a week",
        "session_idle_timeout": 30, "scrypt_n": 1024, "colour": "red", "password_history": 5}},
        totp=sec.code(0))
    assert status == 400 and body["error"] == "INVALID_ARGUMENT", body
    fields = body["fields"]
    assert set(fields) == {"password_min_length", "lockout_threshold", "token_ttl",
                           "session_idle_timeout", "scrypt_n", "colour"}
    assert fields["password_min_length"]["reason"] == "range"
    assert fields["password_min_length"]["message"] == \
        "password_min_length: must be a whole number from 6 to 128, got 200"
    assert fields["lockout_threshold"]["reason"] == "integer"
    assert fields["token_ttl"]["reason"] == "number"
    assert fields["session_idle_timeout"]["reason"] == "range"
    assert fields["session_idle_timeout"]["zero_off"] is True
    assert fields["scrypt_n"]["reason"] == "fixed" and fields["colour"]["reason"] == "unknown"
    for key in fields:
        assert key in body["message"], key
    assert await comp.store.get_setting(POLICY_SETTING) is None
    assert values(await policy()) == values(start)
    assert rn.node.accounts.cfg.password_history == 0
    (refused,) = [e for e in await events(rn, "policy.set")]
    assert refused["outcome"] == "denied" and refused["actor"] == sec.user_id
    assert "password_min_length: must be a whole number" in refused["details"]["reason"]

    # From here a verified code counts for five minutes (the one above was fresh).
    rn.cfg.compliance.step_up_window = 300.0
    status, body = await call(http, rn, "PUT", "/policy", sec.token, {"password_min_length": 12})
    assert status == 400 and "settings" in body["message"]
    status, body = await call(http, rn, "PUT", "/policy", sec.token, {"settings": {}})
    assert status == 400 and body["fields"]["settings"]["reason"] == "empty"
    assert await comp.store.get_setting(POLICY_SETTING) is None
    status, body = await call(http, rn, "PUT", "/policy", sec.token, change)
    assert status == 200, body
    assert body["changed"] == {"password_min_length": {"from": 8, "to": 12},
                               "password_min_classes": {"from": 1, "to": 3},
                               "lockout_threshold": {"from": 5, "to": 3}}
    assert values(body)["password_min_length"] == 12
    assert body["overrides"] == {"password_min_length": 12, "password_min_classes": 3,
                                 "lockout_threshold": 3}
    assert body["configured"]["password_min_length"] == 8
    assert body["changed_by"] == sec.user_id
    after = await policy()
    assert values(after)["password_min_classes"] == 3 and values(after)["lockout_threshold"] == 3
    rules = {r["key"]: r for r in after["rules"]}
    assert rules["password_min_classes"]["ok"] is True  # >= 3 classes is what 等保 asks
    (_, _, ok) = [e for e in await events(rn, "policy.set")]
    assert ok["outcome"] == "ok" and ok["actor"] == sec.user_id and ok["actor_role"] == "secadmin"
    assert ok["target"] == "accounts" and ok["details"]["reason"] == "等保 整改 2026-3"
    assert ok["details"]["changed"] == body["changed"]

    # The new rules are in force for the next password change and the next logins.
    pw = {"username": "dave", "old_password": "dave-pass-1"}
    async with http.post(rn.http_url + "/api/v1/password",
                         json={**pw, "new_password": "Dave-pass-2"}) as r:  # 11 characters
        assert r.status == 400
        assert "at least 12 characters" in (await r.json())["message"]
    async with http.post(rn.http_url + "/api/v1/password",
                         json={**pw, "new_password": "dave-pass-two"}) as r:  # one class short
        assert r.status == 400
        assert "at least 3 of" in (await r.json())["message"]
    async with http.post(rn.http_url + "/api/v1/password",
                         json={**pw, "new_password": "Dave-pass-two"}) as r:
        assert r.status == 200, await r.text()
    async with http.get(rn.http_url + "/api/v1/info") as r:
        assert (await r.json())["password_min_length"] == 12
    for _ in range(3):  # the lockout comes after three failures now, not five
        async with http.post(rn.http_url + "/api/v1/login",
                             json={"username": "dave", "password": "wrong"}) as r:
            assert r.status == 401
    async with http.post(rn.http_url + "/api/v1/login",
                         json={"username": "dave", "password": "Dave-pass-two"}) as r:
        assert r.status == 423 and (await r.json())["error"] == "ACCOUNT_LOCKED"
    assert [e["target"] for e in await events(rn, "auth.lockout")] == ["dave"]

    # null drops a change: the configuration file's value is in force again.
    status, body = await call(http, rn, "PUT", "/policy", sec.token,
                              {"settings": {"password_min_length": None}})
    assert status == 200, body
    assert body["changed"] == {"password_min_length": {"from": 12, "to": 8}}
    assert "password_min_length" not in body["overrides"] and values(body)["password_min_length"] == 8
    assert rn.node.accounts.cfg.password_min_length == 8
    assert rn.node.accounts.cfg.password_min_classes == 3
    # The 等保 report judges the policy in force and says where it comes from.
    status, report = await call(http, rn, "GET", "/report", admins["auditor"].token)
    assert status == 200
    ia1 = _item(report, "IA-1")["evidence"]
    assert "accounts.password_min_classes = 3" in ia1
    assert any("changed by the security administrator" in e and "accounts.password_min_classes" in e
               for e in ia1), ia1


async def test_secadmin_signs_out_another_administrator(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    # No step-up window: the login's second factor does not count for the sign-out.
    rn: RunningNode = await node_factory(compliance={"step_up_window": 0})
    admins = await trio(rn, http)
    sec, aud = admins["secadmin"], admins["auditor"]
    dave = await rn.user("dave")
    assert (await call(http, rn, "GET", "/audit", aud.token))[0] == 200
    # A fresh second factor is needed, as for other sensitive operations.
    status, body = await call(http, rn, "POST", f"/users/{aud.name}/sign-out", sec.token)
    assert status == 403 and body["error"] == "STEP_UP_REQUIRED"
    assert (await call(http, rn, "GET", "/audit", aud.token))[0] == 200
    # From here a verified code counts for five minutes, so the refusals below get
    # past the step-up to the checks of their own.
    rn.cfg.compliance.step_up_window = 300.0
    status, body = await call(http, rn, "POST", f"/users/{aud.name}/sign-out", sec.token,
                              totp=sec.code(1))
    assert status == 200 and body["revoked_tokens"] >= 1, body
    status, body = await call(http, rn, "GET", "/audit", aud.token)
    assert status == 401, body  # the auditor's console session is over
    # Not for ordinary users (the sysadmin's revoke-tokens), not for oneself.
    for name in ("dave", sec.name):
        status, body = await call(http, rn, "POST", f"/users/{name}/sign-out", sec.token)
        assert status == 403 and body["error"] == "FORBIDDEN", (name, body)
    assert dave.auth is not None
    # Nor for the other roles.
    status, body = await call(http, rn, "POST", f"/users/{sec.name}/sign-out",
                              admins["sysadmin"].token, totp=admins["sysadmin"].code(1))
    assert status == 403 and body["required_role"] == "secadmin"
    done = await events(rn, "admin.sign_out")
    assert [(e["actor"], e["target"]) for e in done] == [(sec.user_id, aud.name)]

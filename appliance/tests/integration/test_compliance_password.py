"""Password policy from the configuration (classes, history, expiry), the
session idle timeout, and SMS as an administrator's second factor — on a real
node, with every change and refusal found in the audit trail."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from conftest import (  # type: ignore[import-not-found, unused-ignore]
    NodeFactory,
    RunningNode,
    make_config,
    pin_and_sign,
)

from tongxin.client import TongxinError
from tongxin.compliance.service import Compliance
from tongxin.crypto import sm2_available
from tongxin.proto import tongxin_pb2 as pb
from tongxin.server.admin_api import ADMIN_API

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")]

API = "/api/v1/admin"
STRICT = {"password_min_classes": 3, "password_history": 3}
ADMIN_PW = "Admin-pass-1"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def compliance(rn: RunningNode) -> Compliance:
    return rn.runner.app[ADMIN_API].c


async def events(rn: RunningNode, event: str) -> list[dict[str, Any]]:
    return [r.fields() for r in await compliance(rn).store.audit_records(0, 100000)
            if r.event == event]


async def post(http: aiohttp.ClientSession, rn: RunningNode, path: str, body: Any,
               token: str = "", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    async with http.post(rn.http_url + path, json=body, headers=h) as r:
        return r.status, await r.json()


async def steady_clock() -> None:
    t = time.time() % 30
    if not 1.0 <= t <= 26.0:
        await asyncio.sleep((31.0 - t) % 30 + 0.05)


async def error_code(call: Any) -> int:
    with pytest.raises(TongxinError) as info:
        await call
    return int(info.value.code)


# ---- password policy ----------------------------------------------------------


async def test_complexity_and_history_refusals_are_audited(node_factory: NodeFactory,
                                                           http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory(accounts=STRICT)
    c = await rn.client()
    assert await error_code(c.register("weak", "alllowercase1")) == pb.INVALID_ARGUMENT
    await rn.node.accounts.create_user("alice", "First-pass-1")
    # The user changes their own password with the old one; each refusal says why.
    change = {"username": "alice", "old_password": "First-pass-1"}
    status, body = await post(http, rn, "/api/v1/password", {**change, "new_password": "short"})
    assert status == 400 and "at least 8" in body["message"]
    status, body = await post(http, rn, "/api/v1/password",
                              {**change, "new_password": "onlylower1"})
    assert status == 400 and "at least 3 of" in body["message"]
    status, body = await post(http, rn, "/api/v1/password",
                              {**change, "new_password": "First-pass-1"})
    assert status == 400 and "last 3 passwords" in body["message"]
    status, body = await post(http, rn, "/api/v1/password",
                              {"username": "alice", "old_password": "wrong-Pass-1",
                               "new_password": "Second-pass-2"})
    assert status == 401 and body["error"] == "AUTH_FAILED"
    # Sessions end with the change.
    alice = await rn.user("alice", "First-pass-1", device_id="d1")
    assert alice.auth is not None
    token = alice.auth.token
    for pw in ("Second-pass-2", "Third-pass-3", "Fourth-pass-4"):
        status, body = await post(http, rn, "/api/v1/password", {**change, "new_password": pw})
        assert status == 200 and body["changed"], body
        change["old_password"] = pw
    assert await error_code((await rn.client("d1")).resume(token)) == pb.TOKEN_REVOKED
    # History 3 covers the current and the two before it; the first has left it.
    for pw in ("Fourth-pass-4", "Third-pass-3", "Second-pass-2"):
        status, _ = await post(http, rn, "/api/v1/password", {**change, "new_password": pw})
        assert status == 400, pw
    status, _ = await post(http, rn, "/api/v1/password", {**change, "new_password": "First-pass-1"})
    assert status == 200
    await (await rn.client()).login("alice", "First-pass-1")

    refused = await events(rn, "password.policy")
    assert [e["details"]["via"] for e in refused] == ["create"] + ["self"] * 6
    assert all(e["outcome"] == "denied" and e["details"]["reason"] for e in refused)
    changes = await events(rn, "password.change")
    assert [(e["outcome"], e["details"].get("reason", "")) for e in changes] == [
        ("failed", "wrong password")] + [("ok", "")] * 4
    assert changes[1]["actor"] == changes[1]["details"]["user_id"]  # the user themself
    assert changes[1]["details"]["revoked_tokens"] == 1
    await pin_and_sign(compliance(rn))
    assert (await compliance(rn).verify()).ok


async def test_expired_password_logs_in_only_to_change_it(node_factory: NodeFactory,
                                                          http: aiohttp.ClientSession) -> None:
    # 0.00002 days = 1.7 s.
    rn: RunningNode = await node_factory(accounts={"password_max_age_days": 0.00002})
    await rn.node.accounts.create_user("bob", "bob-pass-1")
    bob = await rn.user("bob", "bob-pass-1", device_id="d1")
    assert bob.auth is not None
    await asyncio.sleep(2.0)
    # A token from before still resumes (expiry is checked at the password login) ...
    await (await rn.client("d1")).resume(bob.auth.token)
    # ... but the password no longer opens a session, over WebSocket or HTTP.
    assert await error_code((await rn.client()).login("bob", "bob-pass-1")) == pb.PASSWORD_EXPIRED
    async with http.post(rn.http_url + "/api/v1/login",
                         json={"username": "bob", "password": "bob-pass-1"}) as r:
        body = await r.json()
        assert r.status == 403 and body["error"] == "PASSWORD_EXPIRED"
        assert body["password_expired"] is True and body["change_password"] == "/api/v1/password"
        assert "token" not in body
    # A wrong password is still a wrong password (no hint that the account exists).
    assert await error_code((await rn.client()).login("bob", "nope-nope-1")) == pb.AUTH_FAILED
    status, _ = await post(http, rn, "/api/v1/password", {
        "username": "bob", "old_password": "bob-pass-1", "new_password": "bob-pass-2"})
    assert status == 200
    await (await rn.client()).login("bob", "bob-pass-2")
    denied = [e for e in await events(rn, "auth.login") if e["outcome"] == "denied"]
    assert [e["details"]["reason"] for e in denied] == ["password expired"] * 2


async def test_idle_tokens_are_refused_on_resume(node_factory: NodeFactory) -> None:
    rn: RunningNode = await node_factory(accounts={"session_idle_timeout": 1.0})
    c = await rn.user("carol", device_id="d1")
    assert c.auth is not None
    token = c.auth.token
    # An open connection is a session in use: the idle clock starts when it closes.
    await asyncio.sleep(1.5)
    await c.close()
    await asyncio.sleep(0.2)
    again = await rn.client("d1")
    await again.resume(token)
    for _ in range(3):  # used every 0.6 s: stays alive past the timeout
        await asyncio.sleep(0.6)
        await again.close()
        again = await rn.client("d1")
        await again.resume(token)
    await again.close()
    await asyncio.sleep(1.4)
    assert await error_code((await rn.client("d1")).resume(token)) == pb.TOKEN_EXPIRED
    (rec,) = await events(rn, "auth.idle_timeout")
    assert rec["outcome"] == "denied" and rec["actor"] == c.auth.user_id
    assert rec["details"]["idle_ms"] > 1000
    await (await rn.client("d1")).login("carol", "password-1")


# ---- the report turns green when the policy is configured -------------------------


async def test_report_password_items_follow_the_configuration(node_factory: NodeFactory,
                                                              tmp_path: Path) -> None:
    from tongxin.compliance.report import build_report

    # (the test default scrypt N of 1024 is itself too weak for a pass)
    weak: RunningNode = await node_factory(accounts={"scrypt_n": 16384})
    strong: RunningNode = await node_factory(accounts={
        "password_min_length": 10, "password_min_classes": 3, "password_history": 5,
        "password_max_age_days": 90.0, "session_idle_timeout": 900.0, "scrypt_n": 16384})
    half: RunningNode = await node_factory(accounts={
        "password_min_classes": 2, "password_max_age_days": 365.0, "session_idle_timeout": 7200.0})

    async def items(rn: RunningNode) -> dict[str, dict[str, Any]]:
        report = await build_report(rn.cfg, compliance(rn), await rn.node.store.list_users())
        return {i["id"]: i for i in report["items"]}

    got = await items(weak)
    assert got["IA-1"]["status"] == "gap" and got["IA-2"]["status"] == "gap"
    assert any("not configured" in f and "password_max_age_days" in f
               for f in got["IA-1"]["findings"])
    got = await items(strong)
    assert got["IA-1"]["status"] == "pass", got["IA-1"]
    assert got["IA-2"]["status"] == "pass", got["IA-2"]
    assert "accounts.password_history = 5" in got["IA-1"]["evidence"]
    got = await items(half)
    assert got["IA-1"]["status"] == "fail" and got["IA-2"]["status"] == "fail"
    assert any("too weak: accounts.password_min_classes = 2" in f for f in got["IA-1"]["findings"])
    assert any("too weak: accounts.scrypt_n = 1024" in f for f in got["IA-1"]["findings"])
    assert any("session_idle_timeout = 7200 s" in f for f in got["IA-2"]["findings"])
    assert "accounts.session_idle_timeout" in got["IA-2"]["remedy"]
    # A report run with another configuration than the node's (a CLI run without
    # the node's --config) names the keys that differ, and renders a warning.
    from tongxin.compliance.report import render_html

    report = await build_report(make_config(strong.cfg.home), compliance(strong),
                                await strong.node.store.list_users())
    assert {"accounts.password_history", "accounts.session_idle_timeout"} <= set(
        report["config_differs_from_node"])
    assert "differs from the one the node last started with" in render_html(report)
    report = await build_report(strong.cfg, compliance(strong), await strong.node.store.list_users())
    assert report["config_differs_from_node"] == []
    assert "Warning" not in render_html(report)


# ---- SMS as the administrators' second factor ------------------------------------


def sms_script(folder: Path) -> Path:
    """The operator's gateway command: appends the code it was given to a file."""
    script = folder / "send-sms"
    script.write_text(f"""#!{sys.executable}
import json, os
with open({str(folder / "outbox.jsonl")!r}, "a") as fh:
    fh.write(json.dumps({{"phone": os.environ["TONGXIN_SMS_PHONE"],
                         "code": os.environ["TONGXIN_SMS_CODE"]}}) + "\\n")
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def last_code(folder: Path) -> str:
    return str(json.loads((folder / "outbox.jsonl").read_text().splitlines()[-1])["code"])


async def test_sms_code_as_second_factor(node_factory: NodeFactory, tmp_path: Path,
                                         http: aiohttp.ClientSession) -> None:
    script = sms_script(tmp_path)
    rn: RunningNode = await node_factory(compliance={
        "sms_provider": "command", "sms_command": f"{script}", "sms_send_interval": 1.0,
        "step_up_window": 0.0, "sms_code_ttl": 3.0})
    comp = compliance(rn)
    accounts = rn.node.accounts
    sec = await accounts.create_user("sec", ADMIN_PW, role="secadmin")
    sec_secret, _ = await comp.totp.enroll(sec.id, "sec", "test")
    await accounts.create_user("aud", ADMIN_PW, role="auditor")
    await steady_clock()
    status, body = await post(http, rn, f"{API}/login", {
        "username": "sec", "password": ADMIN_PW, "totp": pyotp.TOTP(sec_secret).now()})
    assert status == 200
    sec_token = body["token"]
    # Without TOTP or a number the auditor cannot log in at all.
    status, body = await post(http, rn, f"{API}/login",
                              {"username": "aud", "password": ADMIN_PW, "sms_code": "123456"})
    assert status == 403 and body["error"] == "NO_SECOND_FACTOR"
    # Enrolling a number is the secadmin's, with a step-up (here: TOTP in the header),
    # and completes only when the code sent to the number comes back (no second
    # step-up: the code itself is the proof).
    sec_auth = {"Authorization": f"Bearer {sec_token}"}
    async with http.put(rn.http_url + f"{API}/users/aud/sms", json={"phone": "+86 138 0013 8000"},
                        headers={**sec_auth,
                                 "X-Tongxin-TOTP": pyotp.TOTP(sec_secret).at(time.time() + 30)}
                        ) as r:
        pending = await r.json()
        assert r.status == 202, pending
    assert pending["phone"] == "+86*******8000" and pending["pending"]
    confirm_code = last_code(tmp_path)
    status, body = await post(http, rn, f"{API}/login/sms",
                              {"username": "aud", "password": ADMIN_PW})
    assert status == 409 and body["error"] == "SMS_UNAVAILABLE"  # not enrolled yet
    confirm = rn.http_url + pending["confirm"]
    async with http.post(confirm, json={"code": "000000" if confirm_code != "000000" else "1"},
                         headers=sec_auth) as r:
        assert r.status == 400 and (await r.json())["error"] == "INVALID_CODE"
    async with http.post(confirm, json={"code": confirm_code},
                         headers=sec_auth) as r:
        enrolled = await r.json()
        assert r.status == 200, enrolled
    assert enrolled["phone"] == "+86*******8000" and enrolled["enrolled"]
    steps = [(r["outcome"], r["details"].get("step")) for r in await events(rn, "sms.enroll")]
    assert steps == [("ok", "code_sent"), ("failed", "confirm"), ("ok", "confirmed")]
    await asyncio.sleep(1.1)  # sms_send_interval since the confirmation code

    # Step 1: the password asks for a code; a wrong password sends nothing.
    outbox = (tmp_path / "outbox.jsonl").read_text()
    status, body = await post(http, rn, f"{API}/login/sms", {"username": "aud", "password": "x"})
    assert status == 401 and (tmp_path / "outbox.jsonl").read_text() == outbox
    status, body = await post(http, rn, f"{API}/login/sms",
                              {"username": "aud", "password": ADMIN_PW})
    assert status == 200 and body["phone"] == "+86*******8000", body
    code = last_code(tmp_path)
    status, body = await post(http, rn, f"{API}/login/sms",
                              {"username": "aud", "password": ADMIN_PW})
    assert status == 429 and body["error"] == "RATE_LIMITED" and body["retry_after_ms"] > 0
    # Step 2: wrong code, right code, replayed code.
    wrong = "000000" if code != "000000" else "111111"
    login = {"username": "aud", "password": ADMIN_PW}
    status, body = await post(http, rn, f"{API}/login", {**login, "sms_code": wrong})
    assert status == 401 and "wrong" in body["message"]
    status, body = await post(http, rn, f"{API}/login", {**login, "sms_code": code})
    assert status == 200 and body["role"] == "auditor"
    aud_token = body["token"]
    status, body = await post(http, rn, f"{API}/login", {**login, "sms_code": code})
    assert status == 401 and "replayed" in body["message"]
    # An expired code (ttl 3 s).
    await asyncio.sleep(1.1)
    status, _ = await post(http, rn, f"{API}/sms", {}, token=aud_token)
    assert status == 200
    code = last_code(tmp_path)
    await asyncio.sleep(3.1)
    status, body = await post(http, rn, f"{API}/login", {**login, "sms_code": code})
    assert status == 401 and "expired" in body["message"]
    # Step-up with an SMS code in X-Tongxin-SMS (the export is sensitive).
    status, _ = await post(http, rn, f"{API}/sms", {}, token=aud_token)
    assert status == 200
    code = last_code(tmp_path)
    status, body = await post(http, rn, f"{API}/audit/sign", {}, token=aud_token)
    assert status == 200  # not sensitive
    status, body = await post(http, rn, f"{API}/export", {"user": "sec"}, token=aud_token,
                              headers={"X-Tongxin-SMS": code})
    assert status == 200, body
    status, body = await post(http, rn, f"{API}/export", {"user": "sec"}, token=aud_token,
                              headers={"X-Tongxin-SMS": code})
    assert status == 403 and body["error"] == "STEP_UP_FAILED" and "replayed" in body["message"]

    logins = [(e["outcome"], e["details"].get("reason", ""), e["details"].get("factor", ""))
              for e in await events(rn, "admin.login") if e["target"] == "aud"]
    assert logins == [("denied", "no second factor enrolled", ""), ("failed", "SMS wrong", ""),
                      ("ok", "", "SMS"), ("failed", "SMS replayed", ""),
                      ("failed", "SMS expired", "")]
    sends = [(e["outcome"], e["details"].get("reason", "")) for e in await events(rn, "sms.send")]
    assert sends == [("denied", "no phone number is enrolled for this account"),
                     ("failed", "wrong password"), ("ok", ""), ("denied", "rate limited"),
                     ("ok", ""), ("ok", "")]
    assert [e["details"].get("phone") for e in await events(rn, "sms.enroll")] == [
        "+86*******8000", None, "+86*******8000"]
    step_ups = [(e["outcome"], e["details"].get("factor")) for e in await events(rn, "auth.step_up")]
    assert ("ok", "SMS") in step_ups and ("failed", "SMS") in step_ups
    # No audit record carries a code or the whole number.
    bodies = " ".join(r.body for r in await comp.store.audit_records(0, 100000))
    assert code not in bodies and "13800138000" not in bodies
    # Wrong, replayed and expired codes counted towards the lockout like wrong passwords.
    user = await rn.node.store.get_user_by_name("aud")
    assert user is not None and user.failed_logins == 3
    # The report counts the SMS-only auditor as covered, but not by a cryptographic factor.
    report = await build(rn)
    ia4 = next(i for i in report["items"] if i["id"] == "IA-4")
    assert report["two_factor_coverage"]["auditor"] == {"accounts": 1, "totp": 0, "sms": 1}
    assert ia4["status"] == "gap" and any("only an SMS code" in f for f in ia4["findings"])


async def build(rn: RunningNode) -> dict[str, Any]:
    from tongxin.compliance.report import build_report

    return await build_report(rn.cfg, compliance(rn), await rn.node.store.list_users())


async def test_admin_password_expiry_and_change(node_factory: NodeFactory,
                                                http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory(accounts={"password_max_age_days": 0.00002,
                                                   **STRICT})
    comp = compliance(rn)
    aud = await rn.node.accounts.create_user("aud", ADMIN_PW, role="auditor")
    secret, _ = await comp.totp.enroll(aud.id, "aud", "test")
    await asyncio.sleep(2.0)
    await steady_clock()
    totp = pyotp.TOTP(secret)
    status, body = await post(http, rn, f"{API}/login",
                              {"username": "aud", "password": ADMIN_PW, "totp": totp.now()})
    assert status == 403 and body["error"] == "PASSWORD_EXPIRED" and body["password_expired"]
    assert body["change_password"] == f"{API}/password"
    # Ordinary users' endpoint refuses administrative accounts.
    status, body = await post(http, rn, "/api/v1/password", {
        "username": "aud", "old_password": ADMIN_PW, "new_password": "Admin-pass-2"})
    assert status == 403
    change = {"username": "aud", "old_password": ADMIN_PW, "new_password": "Admin-pass-2"}
    status, body = await post(http, rn, f"{API}/password", change)  # no second factor
    assert status == 401
    status, body = await post(http, rn, f"{API}/password", {**change, "totp": totp.now()})
    assert status == 200 and body["changed"], body
    status, body = await post(http, rn, f"{API}/login", {
        "username": "aud", "password": "Admin-pass-2", "totp": totp.at(time.time() + 30)})
    assert status == 200, body
    changes = [(e["outcome"], e["details"].get("reason", ""))
               for e in await events(rn, "password.change")]
    assert changes == [("denied", "administrative account: use /api/v1/admin/password"),
                       ("failed", "TOTP wrong"), ("ok", "")]


async def test_cli_passwd_applies_the_policy(node_factory: NodeFactory, tmp_path: Path) -> None:
    home = tmp_path / "home"
    rn: RunningNode = await node_factory(home=home, accounts=STRICT)
    await rn.node.accounts.create_user("dave", "Dave-pass-1")
    config = tmp_path / "tongxin.yml"
    config.write_text("accounts:\n  password_min_classes: 3\n  scrypt_n: 1024\n")

    async def passwd(pw: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tongxin.cli.main", "user", "passwd", "dave", "--password-stdin",
            "--config", str(config), env={**os.environ, "TONGXIN_HOME": str(home)},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate(pw.encode() + b"\n")
        return int(proc.returncode or 0), out.decode()

    rc, out = await passwd("lowercase-only")
    assert rc == 1 and "at least 3 of" in out
    rc, out = await passwd("Dave-pass-2")
    assert rc == 0, out
    await (await rn.client()).login("dave", "Dave-pass-2")
    policy = await events(rn, "password.policy")
    assert [(e["actor"].startswith("cli:"), e["details"]["via"]) for e in policy] == [(True, "cli")]
    (change,) = await events(rn, "password.change")
    assert change["details"]["via"] == "cli"
    resets = [e["outcome"] for e in await events(rn, "user.reset_password")]
    assert resets == ["failed", "ok"]

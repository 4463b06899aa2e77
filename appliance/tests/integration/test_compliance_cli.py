"""The compliance commands as subprocesses: bootstrap an admin on the node, log in
with the printed secret, verify the trail (and see a tamper), export."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
import pyotp
import pytest
from conftest import NodeFactory, RunningNode, audit_pubkeys  # type: ignore[import-not-found, unused-ignore]

from tongxin.crypto import sm2_available

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")]


async def tongxin(home: Path, *args: str, stdin: bytes = b"",
                  env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", *args,
        env={**os.environ, "TONGXIN_HOME": str(home), **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate(stdin)
    return int(proc.returncode or 0), out.decode()


async def test_bootstrap_login_verify_tamper_and_export(node_factory: NodeFactory,
                                                        tmp_path: Path) -> None:
    home = tmp_path / "home"
    rc, out = await tongxin(home, "admin", "create", "--role", "auditor", "audrey",
                            "--password-stdin", stdin=b"audit-pass-1\n")
    assert rc == 0, out
    secret = re.search(r"TOTP secret: ([A-Z2-7]+)", out)
    assert secret is not None
    rc, out = await tongxin(home, "admin", "list")
    assert "audrey\tauditor\tactive\ttotp" in out
    rn: RunningNode = await node_factory(home=home)
    alice = await rn.user("alice")
    await rn.user("bob")
    conv = await alice.direct("bob")
    await alice.send_text(conv.conversation_id, "for the record")
    t = time.time() % 30
    if not 1.0 <= t <= 26.0:
        await asyncio.sleep((31.0 - t) % 30 + 0.05)
    async with aiohttp.ClientSession() as http:
        async with http.post(rn.http_url + "/api/v1/admin/login", json={
                "username": "audrey", "password": "audit-pass-1",
                "totp": pyotp.TOTP(secret.group(1)).now()}) as r:
            assert r.status == 200, await r.text()
            token = (await r.json())["token"]
        async with http.get(rn.http_url + "/api/v1/admin/audit?limit=1000",
                            headers={"Authorization": f"Bearer {token}"}) as r:
            records = (await r.json())["records"]
    assert [x["event"] for x in records][:2] == ["admin.create", "config.initial"]

    # An export needs the auditor's password and a fresh TOTP code (the login used this
    # step's code: the next step's is accepted, one step of drift).
    rc, out = await tongxin(home, "export", "--user", "alice", "--out", str(tmp_path / "exp"))
    assert rc == 1 and "needs --admin" in out, out
    rc, out = await tongxin(home, "export", "--user", "alice", "--out", str(tmp_path / "exp"),
                            "--admin", "audrey", env={
                                "TONGXIN_ADMIN_PASSWORD": "audit-pass-1",
                                "TONGXIN_ADMIN_TOTP": pyotp.TOTP(secret.group(1)).at(
                                    time.time() + 30)})
    assert rc == 0, out
    export_dir = next((tmp_path / "exp").iterdir())
    rc, out = await tongxin(home, "export", "--verify", str(export_dir))
    assert rc == 1 and "not trusted" in out, out  # no key pinned, none given
    rc, out = await tongxin(home, "export", "--verify", str(export_dir), *audit_pubkeys(home))
    assert rc == 0 and "OK" in out

    rc, out = await tongxin(home, "audit", "sign")
    assert rc == 0, out
    rc, out = await tongxin(home, "audit", "verify", *audit_pubkeys(home))
    assert rc == 0 and "OK: the audit chain is intact" in out, out
    conn = sqlite3.connect(home / "compliance.db", isolation_level=None)
    conn.execute("DELETE FROM audit WHERE seq = 3")
    conn.close()
    rc, out = await tongxin(home, "audit", "verify", *audit_pubkeys(home))
    assert rc == 1
    assert "BROKEN: first problem at record 3 (database): record 3 is missing" in out


async def test_policy_set_on_the_cli_reaches_the_running_node(
        node_factory: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tongxin admin policy set` is the console's change from the node's shell: the
    secadmin's password and TOTP, checked fields, audited with old and new values; a
    node that did not make the change (here: another process) puts it in force."""
    from tongxin.server import admin_api

    monkeypatch.setattr(admin_api, "POLICY_REFRESH_SECONDS", 0.2)
    home = tmp_path / "home"
    rc, out = await tongxin(home, "admin", "create", "--role", "secadmin", "secadm",
                            "--password-stdin", stdin=b"Sec-admin-pass-1\n")
    assert rc == 0, out
    secret = re.search(r"TOTP secret: ([A-Z2-7]+)", out)
    assert secret is not None
    totp = pyotp.TOTP(secret.group(1))
    rn: RunningNode = await node_factory(home=home)
    await rn.node.accounts.create_user("dave", "dave-pass-1")

    # A value out of range: refused before any code is asked for, nothing stored.
    rc, out = await tongxin(home, "admin", "policy", "set", "password_min_length=3",
                            "lockout_threshold=5")
    assert rc == 2 and "password_min_length: must be a whole number from 6 to 128, got 3" in out
    # Without an administrator: refused and audited.
    rc, out = await tongxin(home, "admin", "policy", "set", "password_min_length=14")
    assert rc == 1 and "needs --admin" in out, out
    t = time.time() % 30
    if not 1.0 <= t <= 26.0:
        await asyncio.sleep((31.0 - t) % 30 + 0.05)
    admin_env = {"TONGXIN_ADMIN_PASSWORD": "Sec-admin-pass-1"}
    rc, out = await tongxin(home, "admin", "policy", "set", "password_min_length=14",
                            "accounts.lockout_duration=1800", "--reason", "audit finding 7",
                            "--admin", "secadm", env={**admin_env, "TONGXIN_ADMIN_TOTP": totp.now()})
    assert rc == 0, out
    assert "accounts.password_min_length: 8 -> 14" in out
    assert "accounts.lockout_duration: 900 -> 1800" in out

    # The running node reads the stored change (POLICY_REFRESH_SECONDS) and enforces it.
    for _ in range(50):
        if rn.node.accounts.cfg.password_min_length == 14:
            break
        await asyncio.sleep(0.1)
    assert rn.node.accounts.cfg.password_min_length == 14
    assert rn.node.accounts.cfg.lockout_duration == 1800.0
    async with aiohttp.ClientSession() as http, http.post(
            rn.http_url + "/api/v1/password", json={
                "username": "dave", "old_password": "dave-pass-1",
                "new_password": "dave-pass-123"}) as r:  # 13 characters
        assert r.status == 400 and "at least 14" in (await r.json())["message"]
    # So do the other commands: `tongxin user add` applies the policy in force.
    rc, out = await tongxin(home, "user", "add", "frank", "--password-stdin",
                            stdin=b"frank-pass-12\n")
    assert rc == 1 and "at least 14 characters" in out, out
    rc, out = await tongxin(home, "admin", "policy", "show")
    assert rc == 0, out
    assert "accounts.password_min_length = 14\t(changed by the security administrator; " \
           "configuration file: 8; 等保 >= 8: meets)" in out
    assert "accounts.scrypt_n = 16384\t(configuration file only" in out

    # unset: the configuration file's value applies again.
    rc, out = await tongxin(home, "admin", "policy", "unset", "password_min_length",
                            "--admin", "secadm", env={**admin_env, "TONGXIN_ADMIN_TOTP":
                                                      totp.at(time.time() + 30)})
    assert rc == 0, out
    assert "accounts.password_min_length: 14 -> 8" in out
    comp = rn.runner.app[admin_api.ADMIN_API].c
    records = [r.fields() for r in await comp.store.audit_records(0, 10000)
               if r.event == "policy.set"]
    assert [(r["outcome"], r["details"].get("via")) for r in records] == [
        ("denied", "cli"), ("ok", "cli"), ("ok", "cli")]
    ok = records[1]
    assert ok["actor_role"] == "secadmin" and ok["details"]["admin"] == "secadm"
    assert ok["details"]["changed"] == {"password_min_length": {"from": 8, "to": 14},
                                        "lockout_duration": {"from": 900, "to": 1800}}
    assert ok["details"]["reason"] == "audit finding 7"
    assert records[2]["details"]["changed"] == {"password_min_length": {"from": 14, "to": 8}}

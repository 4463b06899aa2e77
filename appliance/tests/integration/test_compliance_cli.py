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
              pytest.mark.skipif(not sm2_available(), reason="SM2 (gmssl-pyx) is not available")]


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

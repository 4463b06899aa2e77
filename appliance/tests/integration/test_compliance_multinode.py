"""Compliance state shared by two nodes on the production backends.

Two node processes (MariaDB as TiDB's stand-in, Kafka, Redis Cluster) with
data directories of their own, as on two hosts: the shared secrets
(``secrets/token.key``, ``secrets/totp.key``, ...) are copied from the first
to the second, the audit signing key is each node's own. What must hold:

* a legal hold placed through node A stops a retention run on node B;
* an administrator enrolled (TOTP) against A signs in on B, a code used on
  B is refused on A, and the admin session works behind either node;
* records appended from both nodes at once form one chain that
  ``tongxin audit verify`` accepts on either node; a row edited in the
  database is named by seq.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from conftest import audit_pubkeys  # type: ignore[import-not-found, unused-ignore]
from engines import (
    NodeProcess,
    _mysql_admin,
    create_mysql_database,
    drop_mysql_database,
    isolated_backends,
    service_env,
    services,
    start_node_process,
)
from test_multinode import login

from tongxin.clock import now_ms
from tongxin.compliance.archive import DAY_MS
from tongxin.compliance.retention import run_retention
from tongxin.compliance.service import Compliance
from tongxin.config import Config, load_config
from tongxin.crypto import sm2_available
from tongxin.server.node import make_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300),
              pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")]

PW = "admin-password-1"
API = "/api/v1/admin"


@dataclass
class Pair:
    a: NodeProcess
    b: NodeProcess
    cfg_a: Path
    cfg_b: Path
    dsn: str


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, str]]:
    services("start", "redis", "kafka", "mariadb")
    yield service_env()


@pytest.fixture
async def pair(engines: dict[str, str], tmp_path: Path) -> AsyncIterator[Pair]:
    server_dsn = engines["TONGXIN_MYSQL_DSN"]
    dsn = await create_mysql_database(server_dsn)
    config: dict[str, Any] = isolated_backends(engines)
    config["storage"] = {"backend": "mysql", "mysql_dsn": dsn, "mysql_pool_size": 8,
                         "mysql_timeout": 5.0}
    config["compliance"] = {"message_retention_days": 30.0}
    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"
    nodes: list[NodeProcess] = []
    try:
        nodes.append(await start_node_process("cx-node-a", home_a, config, tmp_path))
        (home_b / "secrets").mkdir(parents=True, mode=0o700)
        # The installation's secrets are the same on every node (the installer
        # distributes them); the audit signing key is each node's own.
        for key in (home_a / "secrets").iterdir():
            if key.name != "audit_sign.key":
                shutil.copy2(key, home_b / "secrets" / key.name)
        nodes.append(await start_node_process("cx-node-b", home_b, config, tmp_path))
        yield Pair(nodes[0], nodes[1], tmp_path / "cx-node-a.yml", tmp_path / "cx-node-b.yml",
                   dsn)
    finally:
        for n in nodes:
            n.stop()
        await drop_mysql_database(server_dsn, dsn)


async def tongxin(*args: str, stdin: str = "") -> tuple[int, str]:
    """Exit status and stdout of a ``tongxin`` command (stderr is appended to stdout
    when it fails, for the assertion message)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode())
    code = int(proc.returncode or 0)
    return code, out.decode() if code in (0, 1) else out.decode() + err.decode()


async def create_admin(cfg: Path, name: str, role: str) -> str:
    """``tongxin admin create`` against the shared database; returns the TOTP secret."""
    code, out = await tongxin("admin", "create", "--config", str(cfg), "--role", role,
                              "--password-stdin", name, stdin=PW + "\n")
    assert code == 0, out
    return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.startswith("TOTP secret:"))


async def steady_clock() -> None:
    """Stay clear of a TOTP step boundary so the code made here is the server's step."""
    t = time.time() % 30
    if not 1.0 <= t <= 26.0:
        await asyncio.sleep((31.0 - t) % 30 + 0.05)


async def call(http: aiohttp.ClientSession, node: NodeProcess, method: str, path: str,
               token: str = "", body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, node.http_url + API + path, json=body,
                            headers=headers) as r:
        return r.status, json.loads(await r.text())


async def open_compliance(cfg_path: Path, node_id: str) -> tuple[Config, Compliance]:
    cfg = load_config(cfg_path)
    comp = Compliance(cfg, node_id)
    await comp.open()
    return cfg, comp


async def test_hold_totp_and_session_are_shared_between_nodes(pair: Pair) -> None:
    secret = await create_admin(pair.cfg_a, "sec", "secadmin")
    await steady_clock()
    code = pyotp.TOTP(secret).now()
    async with aiohttp.ClientSession() as http:
        # Enrolled through A's configuration, signed in on B ...
        status, body = await call(http, pair.b, "POST", "/login",
                                  body={"username": "sec", "password": PW, "totp": code})
        assert status == 200, body
        token = body["token"]
        # ... and the same code is spent on A too (one replay guard).
        status, body = await call(http, pair.a, "POST", "/login",
                                  body={"username": "sec", "password": PW, "totp": code})
        assert status == 401, body

        # Chat on A: two conversations with messages.
        alice = await login(pair.a.ws_url, "alice", "pc", register=True)
        await (await login(pair.a.ws_url, "bob", "pc", register=True)).close()
        await (await login(pair.a.ws_url, "carol", "pc", register=True)).close()
        held = (await alice.direct("bob")).conversation_id
        plain = (await alice.direct("carol")).conversation_id
        for conv in (held, plain):
            for i in range(3):
                await alice.send_text(conv, f"m{i}")
        await alice.close()

        # B's session places the hold through A (sessions are shared too).
        status, hold = await call(http, pair.a, "POST", "/holds", token,
                                  {"kind": "conversation", "target": held, "reason": "case 17"})
        assert status == 201, hold
        status, listed = await call(http, pair.b, "GET", "/holds", token)
        assert status == 200 and [h["target"] for h in listed["holds"]] == [held]

    # Retention on node B, 31 days on: the plain conversation goes, the held one stays.
    cfg_b, comp_b = await open_compliance(pair.cfg_b, "cx-node-b")
    history = make_store(cfg_b)
    await history.open()
    try:
        before = {c: len(await history.entries_after(c, 0, 1000)) for c in (held, plain)}
        res = await run_retention(cfg_b, comp_b.store, history, actor="test",
                                  now=now_ms() + 31 * DAY_MS)
        after = {c: len(await history.entries_after(c, 0, 1000)) for c in (held, plain)}
    finally:
        await history.close()
        await comp_b.close()
    assert res.finished and res.skipped_on_hold == 1
    assert after[held] == before[held]
    assert after[plain] == 0 and res.deleted == before[plain]


async def test_concurrent_appends_from_both_nodes_form_one_verified_chain(pair: Pair) -> None:
    _, comp_a = await open_compliance(pair.cfg_a, "cx-node-a")
    _, comp_b = await open_compliance(pair.cfg_b, "cx-node-b")

    async def burst(comp: Compliance, n: int) -> None:
        for i in range(n):
            await comp.audit("test.append", actor="test", i=i)

    async def refused_logins(node: NodeProcess, n: int) -> None:
        # The running nodes append too: every refused admin login is audited.
        async with aiohttp.ClientSession() as http:
            for _ in range(n):
                status, _body = await call(http, node, "POST", "/login",
                                           body={"username": "nobody", "password": "x",
                                                 "totp": "000000"})
                assert status == 401

    try:
        await asyncio.gather(burst(comp_a, 60), burst(comp_b, 60), refused_logins(pair.a, 15),
                             refused_logins(pair.b, 15))
        # A head signed on each side, each with that node's own key.
        assert await comp_a.sign_head(force=True) is not None
        assert await comp_b.sign_head(force=True) is not None
        rows = await comp_a.store.audit_records(0, 100_000)
        assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
        nodes = {r.fields()["node"] for r in rows if r.event in ("test.append", "admin.login")}
        assert {"cx-node-a", "cx-node-b"} <= nodes
        assert comp_a.keys.current_fingerprint() != comp_b.keys.current_fingerprint()
    finally:
        await comp_a.close()
        await comp_b.close()

    # Each node's own key, as the installation pins them.
    trusted = audit_pubkeys(pair.cfg_a.parent / "home-a", pair.cfg_b.parent / "home-b")
    for cfg in (pair.cfg_a, pair.cfg_b):
        code, out = await tongxin("audit", "verify", "--config", str(cfg), "--json", *trusted)
        assert code == 0, out
        report = json.loads(out)
        assert report["ok"] and report["problems"] == []
        assert report["heads_verified"] >= 2 and len(report["key_fingerprints"]) >= 2

    # Tamper with one record in the shared database: verification names it.
    victim = next(r.seq for r in rows[len(rows) // 2:] if r.event == "test.append")
    await _mysql_admin(pair.dsn, "UPDATE audit_records SET body = REPLACE(body, "
                                 f"'\"actor\":\"test\"', '\"actor\":\"evil\"') WHERE seq = {victim}")
    code, out = await tongxin("audit", "verify", "--config", str(pair.cfg_b), "--json", *trusted)
    assert code == 1, out
    report = json.loads(out)
    assert not report["ok"]
    assert report["problems"][0]["seq"] == victim
    assert report["problems"][0]["kind"] == "edited"

"""Two-person escrow decryption (issue 16): the escrow private key is on the node only
sealed; the auditor requests one conversation and time range with their share, a security
administrator approves with a second share, the auditor collects; each step with a fresh
second factor and audited. One person alone decrypts nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]

from tongxin.clock import now_ms
from tongxin.compliance import escrow_shares, roles
from tongxin.crypto import sm2_available
from tongxin.crypto.suite import get_suite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee import escrow_trust
from tongxin.server.admin_api import ADMIN_API

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")]

PW = "admin-password-1"
P = "/api/v1/admin"
SUITE = get_suite("international")


async def steady_clock() -> None:
    """Stay clear of a TOTP step boundary so that codes made here match the server's."""
    t = time.time() % 30
    if not 1.0 <= t <= 20.0:
        await asyncio.sleep((31.0 - t) % 30 + 0.05)


async def admin(rn: RunningNode, http: aiohttp.ClientSession, name: str,
                role: str) -> tuple[str, pyotp.TOTP]:
    user = await rn.node.accounts.create_user(name, PW, role=role)
    secret, _ = await rn.runner.app[ADMIN_API].c.totp.enroll(user.id, name, "test")
    totp = pyotp.TOTP(secret)
    async with http.post(rn.http_url + f"{P}/login", json={
            "username": name, "password": PW, "totp": totp.at(time.time() - 30)}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["token"]), totp


async def call(http: aiohttp.ClientSession, rn: RunningNode, method: str, path: str,
               token: str, body: Any = None, totp: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    if totp:
        headers["X-Tongxin-TOTP"] = totp
    async with http.request(method, rn.http_url + P + path, json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_escrow_decryption_needs_the_auditor_and_a_second_person(
        node_factory: NodeFactory, tmp_path: Path) -> None:
    escrow, root = SUITE.generate_kem_keypair(), SUITE.generate_signing_keypair()
    key_id = enc.escrow_key_id(SUITE, escrow.public_key)
    sealed, shares = escrow_shares.split(SUITE, escrow.private_key, key_id, 2, 2)
    (tmp_path / "escrow.der").write_bytes(escrow.public_key)
    (tmp_path / "sealed.json").write_text(sealed.to_json())
    (tmp_path / "root.der").write_bytes(root.public_key)
    (tmp_path / "statement.json").write_text(escrow_trust.sign(
        SUITE, root.private_key, root.public_key, escrow.public_key, now_ms() - 1000,
        1).to_json())
    # No plain escrow_private_key_file: the sealed key is all the node has.
    rn: RunningNode = await node_factory(
        crypto={"suite": SUITE.name}, compliance={"step_up_window": 5.0},
        e2ee={"required": True, "escrow_public_key_file": str(tmp_path / "escrow.der"),
              "escrow_sealed_key_file": str(tmp_path / "sealed.json"),
              "escrow_statement_file": str(tmp_path / "statement.json")})
    alice_c = await rn.user("alice", device_id="a1")
    bob_c = await rn.user("bob", device_id="b1")
    await bob_c.e2ee(tmp_path / "bob", trusted_org_root=tmp_path / "root.der")
    alice = await alice_c.e2ee(tmp_path / "alice", trusted_org_root=tmp_path / "root.der")
    conv = (await alice_c.direct("bob")).conversation_id
    await alice.send_text(conv, "before the scope")
    await asyncio.sleep(0.02)
    start = now_ms()
    await asyncio.sleep(0.02)
    ack = await alice.send_text(conv, "inside the scope")
    scope = {"conversation_id": conv, "from_ms": start, "to_ms": now_ms() + 60_000,
             "reason": "case 2026-17"}

    async with aiohttp.ClientSession() as http:
        await steady_clock()
        aud, aud_totp = await admin(rn, http, "auditor1", "auditor")
        aud2, _ = await admin(rn, http, "auditor2", "auditor")
        sec, sec_totp = await admin(rn, http, "secadmin1", "secadmin")

        # The single-person decryption has no key to use.
        status, _ = await call(http, rn, "POST", "/e2ee/escrow-decrypt", aud,
                               {"conversation_id": conv, "seq": ack.seq}, aud_totp.now())
        assert status == 503
        # The security administrator cannot ask. Every step needs a fresh second factor
        # (the guard's step-up; here the codes of the logins count for step_up_window).
        assert {"escrow.request", "escrow.approve", "escrow.decrypt"} <= roles.SENSITIVE
        status, answer = await call(http, rn, "POST", "/e2ee/escrow-requests", sec,
                                    {**scope, "share": str(shares[1])})
        assert status == 403 and answer["required_role"] == "auditor"

        status, answer = await call(http, rn, "POST", "/e2ee/escrow-requests", aud,
                                    {**scope, "share": str(shares[0])},
                                    aud_totp.at(time.time() + 30))
        assert status == 201, answer
        rid = answer["request_id"]
        # The security administrator sees what waits for approval (no step-up to look),
        # with who asked and why, and never the requester's share; the auditor does not.
        status, answer = await call(http, rn, "GET", "/e2ee/escrow-requests", sec)
        assert status == 200, answer
        assert [(r["request_id"], r["requester"], r["conversation_id"], r["reason"],
                 r["from_ms"], r["approved"]) for r in answer["requests"]] == [
            (rid, "auditor1", conv, "case 2026-17", start, False)]
        assert 0 < answer["requests"][0]["expires_in_s"] <= 3600
        assert str(shares[0]).split(":")[-1] not in str(answer)
        status, answer = await call(http, rn, "GET", "/e2ee/escrow-requests", aud)
        assert status == 403 and answer["required_role"] == "secadmin"
        # One person: not collectable before a second approves; the auditor cannot approve.
        status, answer = await call(http, rn, "GET", f"/e2ee/escrow-requests/{rid}", aud)
        assert status == 409 and answer["error"] == "NOT_APPROVED"
        status, answer = await call(http, rn, "POST", f"/e2ee/escrow-requests/{rid}/approve",
                                    aud, {"share": str(shares[1])})
        assert status == 403 and answer["required_role"] == "secadmin"
        # The approver must bring the other share, with their own fresh factor.
        status, answer = await call(http, rn, "POST", f"/e2ee/escrow-requests/{rid}/approve",
                                    sec, {"share": str(shares[0])}, sec_totp.now())
        assert status == 403 and "second, different share" in answer["message"]
        status, answer = await call(http, rn, "POST", f"/e2ee/escrow-requests/{rid}/approve",
                                    sec, {"share": str(shares[1])})
        assert status == 200 and answer == {"request_id": rid, "approved": True, "entries": 1}
        assert "inside the scope" not in str(answer)  # the approver sees no plaintext
        status, answer = await call(http, rn, "GET", "/e2ee/escrow-requests", sec)
        assert [r["approved"] for r in answer["requests"]] == [True]
        assert "inside the scope" not in str(answer)

        # Only the requesting auditor collects, once, and gets only the scope.
        status, _ = await call(http, rn, "GET", f"/e2ee/escrow-requests/{rid}", aud2)
        assert status == 404
        status, answer = await call(http, rn, "GET", f"/e2ee/escrow-requests/{rid}", aud)
        assert status == 200, answer
        assert [e["text"] for e in answer["entries"]] == ["inside the scope"]
        assert answer["entries"][0]["seq"] == ack.seq
        status, _ = await call(http, rn, "GET", f"/e2ee/escrow-requests/{rid}", aud)
        assert status == 404
        # Collected: no longer open.
        status, answer = await call(http, rn, "GET", "/e2ee/escrow-requests", sec)
        assert status == 200 and answer["requests"] == []

    records = await rn.runner.app[ADMIN_API].c.store.audit_records(0, 100000)
    rows = [r.fields() for r in records]
    trail = [(r["event"], r.get("outcome", "ok"), r.get("actor_role"))
             for r in rows if r["event"] in ("escrow.request", "escrow.approve", "escrow.decrypt")]
    assert trail == [
        ("escrow.decrypt", "failed", "auditor"),   # the single-person endpoint: no key
        ("escrow.request", "ok", "auditor"),
        ("escrow.decrypt", "denied", "auditor"),   # collect before approval
        ("escrow.approve", "denied", "secadmin"),  # the requester's share again
        ("escrow.approve", "ok", "secadmin"),
        ("escrow.decrypt", "denied", "auditor"),   # another auditor
        ("escrow.decrypt", "ok", "auditor"),
        ("escrow.decrypt", "denied", "auditor"),   # a second collection
    ]
    listed = [(r.get("outcome", "ok"), r["details"]["count"]) for r in rows
              if r["event"] == "escrow.list"]
    assert listed == [("ok", 1), ("ok", 1), ("ok", 0)]
    done = [r for r in rows if r["event"] == "escrow.decrypt" and r.get("outcome", "ok") == "ok"]
    details = done[0]["details"]
    assert done[0]["target"] == f"conversation:{conv}" and details["entries"] == 1, done[0]
    assert details["reason"] == "case 2026-17" and details["from_ms"] == start
    # No share ever reaches the audit trail.
    assert not any(str(s).split(":")[-1] in str(rows) for s in shares)

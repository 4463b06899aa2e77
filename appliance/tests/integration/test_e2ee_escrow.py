"""Compliance escrow and ``e2ee.required`` (docs/e2ee.md section 10): the server refuses
plaintext and envelopes without a wrap to the current escrow key; decrypting with the
escrow key is an auditor operation that needs a fresh second factor and is audited."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]

from tongxin.client import TongxinError, pb
from tongxin.crypto import sm2_available
from tongxin.crypto.suite import get_suite
from tongxin.e2ee import escrow_trust
from tongxin.server.admin_api import ADMIN_API

# The admin API's compliance state signs with SM2, so these tests need it whatever the suite.
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")]

PW = "admin-password-1"
API = "/api/v1/admin/e2ee/escrow-decrypt"


async def steady_clock() -> None:
    """Stay clear of a TOTP step boundary so codes made here match the server's step."""
    t = time.time() % 30
    if not 1.0 <= t <= 26.0:
        await asyncio.sleep((31.0 - t) % 30 + 0.05)


async def admin(rn: RunningNode, http: aiohttp.ClientSession, name: str,
                role: str) -> tuple[str, pyotp.TOTP]:
    user = await rn.node.accounts.create_user(name, PW, role=role)
    secret, _ = await rn.runner.app[ADMIN_API].c.totp.enroll(user.id, name, "test")
    totp = pyotp.TOTP(secret)
    async with http.post(rn.http_url + "/api/v1/admin/login", json={
            "username": name, "password": PW, "totp": totp.at(time.time() - 30)}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["token"]), totp


async def decrypt(http: aiohttp.ClientSession, rn: RunningNode, token: str, body: Any,
                  totp: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    if totp:
        headers["X-Tongxin-TOTP"] = totp
    async with http.post(rn.http_url + API, json=body, headers=headers) as r:
        return r.status, json.loads(await r.text())


def escrow_files(tmp_path: Path, suite: str) -> dict[str, str]:
    """An escrow key pair and the statement of an organisation root (its public key in
    tmp_path / "org-root.der", which the SDK is given as trusted_org_root)."""
    s = get_suite(suite)
    pair, root = s.generate_kem_keypair(), s.generate_signing_keypair()
    pub, priv = tmp_path / "escrow.pub.der", tmp_path / "escrow.key.der"
    pub.write_bytes(pair.public_key)
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.private_key)
    (tmp_path / "org-root.der").write_bytes(root.public_key)
    statement = tmp_path / "escrow-statement.json"
    statement.write_text(escrow_trust.sign(s, root.private_key, root.public_key,
                                           pair.public_key, int(time.time() * 1000) - 1000,
                                           1).to_json())
    return {"escrow_public_key_file": str(pub), "escrow_private_key_file": str(priv),
            "escrow_statement_file": str(statement),
            "org_root_public_key_file": str(tmp_path / "org-root.der")}


@pytest.mark.parametrize("suite", ["international", "gm"])
async def test_escrow_decrypt_needs_auditor_and_fresh_2fa_and_is_audited(
        node_factory: NodeFactory, tmp_path: Path, suite: str) -> None:
    rn: RunningNode = await node_factory(
        crypto={"suite": suite}, compliance={"step_up_window": 0.0},
        e2ee={"required": True, **escrow_files(tmp_path, suite)})
    alice_c = await rn.user("alice", device_id="a1")
    bob_c = await rn.user("bob", device_id="b1")
    assert alice_c.auth is not None and alice_c.auth.e2ee_required
    assert len(alice_c.auth.escrow_key_id) == 16 and alice_c.auth.escrow_public_key
    alice = await alice_c.e2ee(tmp_path / "alice", trusted_org_root=tmp_path / "org-root.der")
    bob = await bob_c.e2ee(tmp_path / "bob", trusted_org_root=tmp_path / "org-root.der")
    assert alice.escrow_enabled and bob.escrow_enabled
    conv = (await alice_c.direct("bob")).conversation_id

    # e2ee.required: plaintext is refused, on SEND and on EDIT.
    with pytest.raises(TongxinError) as err:
        await alice_c.send_text(conv, "plaintext")
    assert err.value.code == pb.INVALID_ARGUMENT and "required" in err.value.message
    ack = await alice.send_text(conv, "the quarterly numbers")
    with pytest.raises(TongxinError) as err:
        await alice_c.edit(conv, ack.seq, "plaintext edit")
    assert err.value.code == pb.INVALID_ARGUMENT
    # An envelope without the escrow wrap is refused.
    saved, alice.device.escrow = alice.device.escrow, None
    with pytest.raises(TongxinError) as err:
        await alice.send_text(conv, "no escrow")
    assert err.value.code == pb.INVALID_ARGUMENT and "escrow" in err.value.message
    alice.device.escrow = saved
    with pytest.raises(TongxinError) as err:
        await alice_c.send(conv, pb.Content(encrypted=b"\x08\x01garbage"))
    assert err.value.code == pb.INVALID_ARGUMENT

    ev = await bob_c.next_event(pb.DELIVER)
    while ev.message.kind != pb.CHAT:
        ev = await bob_c.next_event(pb.DELIVER)
    opened = await bob.open(ev.message)
    assert opened is not None and opened.payload.text == "the quarterly numbers"

    async with aiohttp.ClientSession() as http:
        await steady_clock()
        aud_token, aud_totp = await admin(rn, http, "auditor1", "auditor")
        sec_token, sec_totp = await admin(rn, http, "secadmin1", "secadmin")
        body = {"conversation_id": conv, "seq": ack.seq}
        status, answer = await decrypt(http, rn, sec_token, body, sec_totp.now())
        assert status == 403 and answer["required_role"] == "auditor"
        status, answer = await decrypt(http, rn, aud_token, body)
        assert status == 403 and answer["error"] == "STEP_UP_REQUIRED"
        status, answer = await decrypt(http, rn, aud_token, body, aud_totp.now())
        assert status == 200, answer
        assert answer["text"] == "the quarterly numbers"
        assert answer["sender_id"] == alice_c.user_id
        status, answer = await decrypt(http, rn, aud_token, {"conversation_id": conv,
                                                             "seq": ack.seq + 100},
                                       aud_totp.at(time.time() + 30))
        assert status == 404
    records = await rn.runner.app[ADMIN_API].c.store.audit_records(0, 100000)
    rows = [r.fields() for r in records]
    done = [r for r in rows if r["event"] == "escrow.decrypt"]
    assert [r.get("outcome", "ok") for r in done] == ["ok", "failed"]
    assert done[0]["actor"] and done[0]["target"] == f"conversation:{conv}:{ack.seq}"
    denied = [r for r in rows if r["event"] in ("admin.forbidden", "auth.step_up")
              and r.get("target") == "escrow.decrypt" and r.get("outcome") == "denied"]
    assert len(denied) == 2


async def test_escrow_public_key_of_the_wrong_suite_refuses_to_start(
        tmp_path: Path, node_factory: NodeFactory) -> None:
    from tongxin.config import ConfigError

    files = escrow_files(tmp_path, "international")
    with pytest.raises(ConfigError, match="escrow_public_key_file"):
        await node_factory(crypto={"suite": "gm"}, e2ee=files)

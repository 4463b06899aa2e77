"""The at-rest master key through the admin API (issue 21): GET /keys/atrest and
GET /keys/audit show the keys to the security administrator, POST /keys/atrest/rotate
runs the rotation ``tongxin keys rotate`` runs, as a task with its progress in the GET;
the other roles are refused and the refusals audited."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]
from test_compliance_admin import call, compliance, events, trio  # type: ignore[import-not-found, unused-ignore]

import tongxin.atrest.rotate as rotate_module
from tongxin.atrest.rotate import key_status
from tongxin.crypto import sm2_available

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def settled(http: aiohttp.ClientSession, rn: RunningNode, token: str) -> dict[str, Any]:
    """As the console does: the light GET /keys/atrest/rotation until this node's rotation
    is no longer running, then GET /keys/atrest once."""
    for _ in range(200):
        status, body = await call(http, rn, "GET", "/keys/atrest/rotation", token)
        assert status == 200, body
        if body["rotation"] and body["rotation"]["state"] != "running":
            status, body = await call(http, rn, "GET", "/keys/atrest", token)
            assert status == 200, body
            return dict(body)
        await asyncio.sleep(0.05)
    raise AssertionError("the rotation did not finish")


async def test_secadmin_sees_the_keys_and_rotates_the_master_key(
        node_factory: NodeFactory, http: aiohttp.ClientSession, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    rn: RunningNode = await node_factory(home=home, compliance={"step_up_window": 0.0})
    keyring = rn.node.keyring
    assert keyring is not None
    for _ in range(5):  # data keys as an installation gathers them
        await keyring._new_dek()
    alice = await rn.user("alice")
    bob = await rn.user("bob")
    conv = (await alice.direct("bob")).conversation_id
    for i in range(5):
        await alice.send_text(conv, f"before {i}")
    old_kek = keyring.provider.current_id()
    key_line = (home / "secrets" / "master.key").read_text().split()
    admins = await trio(rn, http)
    sec = admins["secadmin"]

    # The audit signing key's fingerprint, before any rotation.
    status, body = await call(http, rn, "GET", "/keys/audit", sec.token)
    assert status == 200, body
    assert body["fingerprint"] == compliance(rn).keys.current_fingerprint()
    assert body["key"] == "audit_sign" and body["public_keys"] >= 1

    status, body = await call(http, rn, "GET", "/keys/atrest", sec.token)
    assert status == 200, body
    assert body["in_use"] and body["encryption"] and body["provider"] == "file"
    assert (body["suite"], body["cipher"]) == ("gm", "SM4-GCM")
    assert body["source"]["kind"] == "file"
    assert body["source"]["path"] == str(home / "secrets" / "master.key")
    assert body["source"]["modified_at"] > 0
    assert body["kek"]["id"] == old_kek and body["older_keks"] == []
    total = body["data_keys"]["total"]
    assert total >= 6 and body["data_keys"]["pending"] == 0
    assert body["kek"]["data_keys"] == total and body["rotation"] is None
    assert key_line[3] not in json.dumps(body)  # never the key material

    # A rotation is stepped up like the audit key's.
    status, body = await call(http, rn, "POST", "/keys/atrest/rotate", sec.token)
    assert status == 403 and body["error"] == "STEP_UP_REQUIRED", body

    # Held between its first status read and the re-wrapping: a second one is refused.
    release = asyncio.Event()
    real_rotate = rotate_module.rotate

    async def held(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await real_rotate(*args, **kwargs)

    monkeypatch.setattr(rotate_module, "rotate", held)
    status, body = await call(http, rn, "POST", "/keys/atrest/rotate", sec.token,
                              totp=sec.code(0))
    assert status == 202, body
    assert body["rotation"]["state"] == "running" and body["rotation"]["old_kek"] == old_kek
    assert body["rotation"]["total"] == total and body["rotation"]["by"] == sec.name
    status, body = await call(http, rn, "POST", "/keys/atrest/rotate", sec.token,
                              totp=sec.code(1))
    assert status == 409 and body["error"] == "ROTATION_RUNNING", body
    status, body = await call(http, rn, "GET", "/keys/atrest", sec.token)
    assert status == 200 and body["rotation"]["state"] == "running"
    release.set()

    done = await settled(http, rn, sec.token)
    rotation = done["rotation"]
    assert rotation["state"] == "done" and not rotation["error"], rotation
    assert rotation["rewrapped"] == total and rotation["retired"] == [old_kek]
    new_kek = rotation["kek"]
    assert new_kek != old_kek and done["kek"]["id"] == new_kek
    assert done["older_keks"] == [] and done["data_keys"]["pending"] == 0
    assert done["kek"]["data_keys"] == total
    status_after = await key_status(keyring.provider, rn.node.store)  # type: ignore[arg-type]
    assert status_after.current_kek == new_kek and list(status_after.by_kek) == [new_kek]
    assert old_kek not in (home / "secrets" / "master.key").read_text()

    # What was stored before still opens, and new messages too.
    await alice.send_text(conv, "after")
    texts = {m.content.text for m in await bob.sync_all(conv)}
    assert {f"before {i}" for i in range(5)} | {"after"} <= texts

    trail = [(e["event"], e["outcome"], e["actor"], e["details"]) for e in await events(rn)
             if e["event"] in ("keys.rotate", "keys.status", "key.read")]
    assert ("key.read", "ok", sec.user_id) == trail[0][:3]
    rotations = [(o, d) for ev, o, a, d in trail if ev == "keys.rotate" and a == sec.user_id]
    assert [o for o, _ in rotations] == ["denied", "ok"]
    assert rotations[0][1]["reason"] == "a rotation is already running on this node"
    assert rotations[1][1]["via"] == "admin-api" and rotations[1][1]["kek"] == new_kek
    assert rotations[1][1]["retired"] == [old_kek] and rotations[1][1]["rewrapped"] == total
    # The three full status reads; the progress polls in between are not audited.
    assert sum(1 for ev, *_ in trail if ev == "keys.status") == 3

    # A restart with only the new KEK in the key file reads every message.
    await rn.stop()
    rn = await node_factory(home=home)
    again = await rn.user("bob")
    assert {f"before {i}" for i in range(5)} <= {m.content.text for m in await again.sync_all(conv)}


async def test_the_other_roles_are_refused_the_key_routes(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory()
    admins = await trio(rn, http)
    keyring = rn.node.keyring
    assert keyring is not None
    kek = keyring.provider.current_id()
    routes = [("GET", "/keys/atrest", "key.read"), ("GET", "/keys/atrest/rotation", "key.read"),
              ("GET", "/keys/audit", "key.read"),
              ("POST", "/keys/atrest/rotate", "key.rotate")]
    for role in ("sysadmin", "auditor"):
        admin = admins[role]
        for method, path, op in routes:
            status, body = await call(http, rn, method, path, admin.token, totp=admin.code(1))
            assert status == 403 and body["error"] == "FORBIDDEN", (role, path, body)
            assert (body["operation"], body["required_role"]) == (op, "secadmin")
    forbidden = [(e["actor_role"], e["target"], e["details"]["path"])
                 for e in await events(rn, "admin.forbidden")]
    assert forbidden == [(role, op, "/api/v1/admin" + path) for role in ("sysadmin", "auditor")
                         for _, path, op in routes]
    assert keyring.provider.current_id() == kek  # nothing rotated
    assert not await events(rn, "keys.rotate") and not await events(rn, "keys.status")

"""``tongxin keys rotate`` (a real CLI process) while a client keeps sending to a running
node: nothing acknowledged is lost, everything still opens, the old KEK goes at the end."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pyotp
from conftest import NodeFactory, RunningNode

from tongxin.atrest.rotate import key_status
from tongxin.checker import DeliveryChecker
from tongxin.clock import now_ms
from tongxin.server.admin_api import ADMIN_API

SEC_PW = "Sec-admin-pw-1"


async def cli(home: Path, *args: str, code: str = "") -> tuple[int, str]:
    """The CLI; ``code``: the TOTP code an administrator (--admin) gives."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", *args,
        env={**os.environ, "TONGXIN_HOME": str(home), "TONGXIN_ADMIN_PASSWORD": SEC_PW,
             "TONGXIN_ADMIN_TOTP": code},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode()


async def test_rotation_while_a_client_sends(node_factory: NodeFactory, tmp_path: Path) -> None:
    home = tmp_path / "home"
    rn: RunningNode = await node_factory(home=home, chat={"rate_limit_per_second": 10000.0,
                                                          "rate_limit_burst": 10000.0})
    keyring = rn.node.keyring
    assert keyring is not None
    for _ in range(60):  # DEKs as a long-lived installation gathers them
        await keyring._new_dek()
    old_kek = keyring.provider.current_id()
    alice = await rn.user("alice")
    bob = await rn.user("bob")
    conv = (await alice.direct("bob")).conversation_id
    checker = DeliveryChecker()
    stop = asyncio.Event()

    async def send() -> int:
        n = 0
        while not stop.is_set() or n < 20:
            ack = await alice.send_text(conv, f"rotating {n}")
            checker.record_ack(conv, alice.auth.user_id if alice.auth else "", ack.client_msg_id,
                               ack.seq, now_ms())
            n += 1
            await asyncio.sleep(0.005)
        return n

    comp = rn.runner.app[ADMIN_API].c
    sec = await rn.node.accounts.create_user("sec", SEC_PW, role="secadmin")
    secret, _ = await comp.totp.enroll(sec.id, "sec", "test")
    sender = asyncio.create_task(send())
    rc, out = await cli(home, "keys", "rotate", "--batch", "7", "--admin", "sec",
                        code=pyotp.TOTP(secret).now())
    stop.set()
    sent = await sender
    assert rc == 0, out
    assert "complete" in out and f"retired KEKs {old_kek}" in out, out
    assert out.count("re-wrapped") >= 9  # 61 data keys in batches of 7, progress per batch

    # A new DEK made by the running node after the rotation is under the new KEK.
    await keyring._new_dek()
    status = await key_status(keyring.provider, rn.node.store)  # type: ignore[arg-type]
    assert status.pending == 0 and list(status.by_kek) == [status.current_kek]
    assert status.current_kek != old_kek

    log = await bob.sync_all(conv)
    report = checker.check({conv: log})
    assert report.ok and report.acked == sent, report.summary()
    texts = {m.content.text for m in log}
    assert {f"rotating {i}" for i in range(sent)} <= texts

    rc, out = await cli(home, "keys", "status")
    assert rc == 0 and f"current KEK: {status.current_kek}" in out, out
    records = await rn.runner.app[ADMIN_API].c.store.audit_records(0, 100000)
    rotations = [r.fields() for r in records if r.fields()["event"] == "keys.rotate"]
    assert len(rotations) == 1 and rotations[0]["outcome"] == "ok"
    assert (rotations[0]["actor"], rotations[0]["actor_role"]) == (sec.id, "secadmin")
    assert rotations[0]["details"]["os_user"].startswith("cli:")
    assert rotations[0]["details"]["retired"] == [old_kek]

    # A restart with only the new KEK in the key file reads every message.
    assert old_kek not in (home / "secrets" / "master.key").read_text()
    await rn.stop()
    rn = await node_factory(home=home)
    again = await rn.user("bob")
    assert {m.content.text for m in await again.sync_all(conv)} == texts


async def test_keys_commands_refuse_bad_key_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rc, out = await cli(home, "keys", "status")
    assert rc == 1 and "keys init" in out, out
    rc, out = await cli(home, "keys", "init")  # no administrator, no break-glass
    key = home / "secrets" / "master.key"
    assert rc == 1 and "needs --admin" in out and not key.exists(), out
    glass = ("--break-glass", "first install, no security administrator yet")
    rc, out = await cli(home, "keys", "init", *glass)
    assert rc == 0 and "created" in out and oct(key.stat().st_mode & 0o777) == "0o600"
    before = key.read_bytes()
    rc, out = await cli(home, "keys", "init", *glass)
    assert rc == 0 and "kept the existing" in out and key.read_bytes() == before
    key.chmod(0o644)
    rc, out = await cli(home, "keys", "rotate", "--admin", "nobody", code="123456")
    assert rc == 1 and "chmod 600" in out, out
    assert key.read_bytes() == before  # nothing rotated
    rc, out = await cli(home, "keys", "rotate", "--batch", "0")
    assert rc == 2 and "positive" in out, out


async def test_key_commands_need_the_security_administrator(node_factory: NodeFactory,
                                                            tmp_path: Path) -> None:
    """三员分立 and a second factor on the node too: refusals change nothing and are
    audited with their reason; break-glass is gone once a secadmin has a TOTP."""
    home = tmp_path / "home"
    rn: RunningNode = await node_factory(home=home)
    comp = rn.runner.app[ADMIN_API].c
    sec = await rn.node.accounts.create_user("sec", SEC_PW, role="secadmin")
    sec_secret, _ = await comp.totp.enroll(sec.id, "sec", "test")
    aud = await rn.node.accounts.create_user("aud", SEC_PW, role="auditor")
    aud_secret, _ = await comp.totp.enroll(aud.id, "aud", "test")
    kek = (await key_status(rn.node.keyring.provider,  # type: ignore[union-attr]
                            rn.node.store)).current_kek  # type: ignore[arg-type]

    rc, out = await cli(home, "keys", "rotate")
    assert rc == 1 and "key.rotate needs --admin" in out, out
    rc, out = await cli(home, "keys", "rotate", "--admin", "aud",
                        code=pyotp.TOTP(aud_secret).now())
    assert rc == 1 and "role auditor may not key.rotate" in out, out
    rc, out = await cli(home, "keys", "rotate", "--admin", "sec", code="12345x")
    assert rc == 1 and "TOTP wrong" in out, out
    rc, out = await cli(home, "keys", "rotate", "--break-glass", "urgent")
    assert rc == 1 and "not accepted for keys.rotate" in out, out
    rc, out = await cli(home, "keys", "init", "--break-glass", "reinstall")
    assert rc == 1 and "break-glass refused: secadmin sec" in out, out
    rc, out = await cli(home, "audit", "rotate-key", "--admin", "aud",
                        code=pyotp.TOTP(aud_secret).now())
    assert rc == 1 and "role auditor may not key.rotate" in out, out
    status = await key_status(rn.node.keyring.provider,  # type: ignore[union-attr]
                              rn.node.store)  # type: ignore[arg-type]
    assert status.current_kek == kek  # nothing rotated

    records = [r.fields() for r in await comp.store.audit_records(0, 100000)]
    refused = [(r["event"], r["outcome"], r["details"].get("reason", "")) for r in records
               if r["event"] in ("keys.rotate", "keys.init", "key.rotate")]
    assert [(e, o) for e, o, _ in refused] == [
        ("keys.rotate", "denied"), ("keys.rotate", "denied"), ("keys.rotate", "failed"),
        ("keys.rotate", "denied"), ("keys.init", "denied"), ("key.rotate", "denied")]
    assert refused[2][2] == "TOTP wrong" and "三员分立" in refused[1][2]
    assert records[-1]["actor"] == aud.id  # the refused administrator is named

    rc, out = await cli(home, "keys", "rotate", "--admin", "sec",
                        code=pyotp.TOTP(sec_secret).now())
    assert rc == 0 and "complete" in out, out
    done = [r for r in await comp.store.audit_records(0, 100000) if r.event == "keys.rotate"]
    assert (done[-1].fields()["outcome"], done[-1].fields()["actor"]) == ("ok", sec.id)

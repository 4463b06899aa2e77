"""Message retention against a running node's database: only what has expired
goes, never what a legal hold covers, in batches that resume."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from conftest import NodeFactory, RunningNode, audit_pubkeys  # type: ignore[import-not-found, unused-ignore]
from engines import storage_section

from tongxin.clock import now_ms
from tongxin.compliance.archive import DAY_MS
from tongxin.compliance.retention import conversation_scope, run_retention
from tongxin.compliance.service import Compliance
from tongxin.server.admin_api import ADMIN_API
from tongxin.server.node import make_store
from tongxin.store.ports import ChatStore

pytestmark = pytest.mark.integration


async def counts(rn: RunningNode) -> dict[str, int]:
    """Entries per conversation (those with any), read through the node's store."""
    store = rn.node.store
    out: dict[str, int] = {}
    for cid in await store.conversation_ids("", 1000):
        n = len(await store.entries_after(cid, 0, 100_000))
        if n:
            out[cid] = n
    return out


@pytest.fixture(params=["sqlite", "mysql"])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    async with storage_section(str(request.param)) as section:
        yield section


async def history(rn: RunningNode) -> ChatStore:
    """A store of its own, as `tongxin retention run` opens one beside the node."""
    h = make_store(rn.cfg)
    await h.open()
    return h


async def test_retention_deletes_only_expired_messages_and_never_held_ones(
        storage: dict[str, Any], node_factory: NodeFactory) -> None:
    # storage first: its database outlives the node (the node's last audit record)
    rn: RunningNode = await node_factory(compliance={"message_retention_days": 30.0},
                                         storage=storage)
    comp: Compliance = rn.runner.app[ADMIN_API].c
    alice, bob = await rn.user("alice"), await rn.user("bob")
    carol, dave = await rn.user("carol"), await rn.user("dave")
    erin = await rn.user("erin")
    plain = await alice.direct("bob")  # no hold: expires
    user_held = await carol.direct("dave")  # carol is on hold
    conv_held = await erin.create_group("case-17", ["bob"])  # the conversation is on hold
    forever = await alice.direct("erin")  # policy: keep forever
    longer = await bob.direct("dave")  # policy: 60 days
    for conv, who in ((plain, alice), (user_held, dave), (conv_held, bob), (forever, erin),
                      (longer, dave)):
        for i in range(3):
            await who.send_text(conv.conversation_id, f"m{i}")
    carol_id = carol.user_id
    await comp.store.add_hold("user", carol_id, "litigation", "u_sec", now_ms())
    await comp.store.add_hold("conversation", conv_held.conversation_id, "case 17", "u_sec", now_ms())
    await comp.store.set_policy(conversation_scope(forever.conversation_id), 0)
    await comp.store.set_policy(conversation_scope(longer.conversation_id), 60)
    before = await counts(rn)
    h = await history(rn)
    try:
        # Today nothing is 30 days old.
        res = await run_retention(rn.cfg, comp.store, h, actor="test")
        assert res.finished and res.deleted == 0
        assert (await counts(rn)) == before
        # Thirty-one days on: the plain conversation loses its log, nothing else.
        res = await run_retention(rn.cfg, comp.store, h, actor="test", now=now_ms() + 31 * DAY_MS)
        after = await counts(rn)
        assert res.deleted == before[plain.conversation_id]
        assert plain.conversation_id not in after
        for kept in (user_held, conv_held, forever, longer):
            assert after[kept.conversation_id] == before[kept.conversation_id]
        assert res.skipped_on_hold == 2
        # The hold on carol ends: her conversation goes on the next run.
        hold = next(x for x in await comp.store.holds() if x.target == carol_id)
        await comp.store.release_hold(hold.id, "u_sec", now_ms())
        res = await run_retention(rn.cfg, comp.store, h, actor="test", now=now_ms() + 31 * DAY_MS)
        assert user_held.conversation_id not in (await counts(rn))
        assert (await counts(rn))[conv_held.conversation_id] == before[conv_held.conversation_id]
    finally:
        await h.close()
    # The node still serves what is left.
    again = await bob.sync_all(conv_held.conversation_id)
    assert [m.content.text for m in again if m.content.text] == ["m0", "m1", "m2"]


async def test_retention_runs_in_batches_and_resumes(node_factory: NodeFactory) -> None:
    rn: RunningNode = await node_factory(compliance={"message_retention_days": 1.0,
                                                     "retention_batch": 2})
    comp: Compliance = rn.runner.app[ADMIN_API].c
    alice = await rn.user("alice")
    convs = []
    for name in ("bob", "carol", "dave"):
        await rn.user(name)
        conv = await alice.direct(name)
        convs.append(conv)
        for i in range(5):
            await alice.send_text(conv.conversation_id, f"{name} {i}")
    total = sum((await counts(rn)).values())
    later = now_ms() + 2 * DAY_MS
    h = await history(rn)
    try:
        first = await run_retention(rn.cfg, comp.store, h, actor="test", max_batches=3, now=later)
        assert not first.finished and first.deleted == 6
        assert sum((await counts(rn)).values()) == total - 6
        # A hold placed while the run is open protects what is not deleted yet.
        last = sorted(c.conversation_id for c in convs)[-1]
        await comp.store.add_hold("conversation", last, "late hold", "u_sec", now_ms())
        second = await run_retention(rn.cfg, comp.store, h, actor="test", now=later)
        assert second.resumed and second.finished and second.run_id == first.run_id
        left = await counts(rn)
        assert set(left) == {last}
        assert left[last] == 6  # the created event and five messages
    finally:
        await h.close()


async def test_cli_retention_run_and_show(node_factory: NodeFactory, tmp_path: Path) -> None:
    rn: RunningNode = await node_factory()
    alice = await rn.user("alice")
    await rn.user("bob")
    conv = await alice.direct("bob")
    await alice.send_text(conv.conversation_id, "hello")
    env = {**os.environ, "TONGXIN_HOME": str(rn.cfg.home)}
    comp = rn.runner.app[ADMIN_API].c
    sec = await rn.node.accounts.create_user("sec", "Sec-admin-pw-1", role="secadmin")
    secret, _ = await comp.totp.enroll(sec.id, "sec", "test")

    async def run_retention_cli(*admin: str, code: str = "") -> tuple[int | None, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tongxin.cli.main", "retention", "run", *admin,
            env={**env, "TONGXIN_ADMIN_PASSWORD": "Sec-admin-pw-1", "TONGXIN_ADMIN_TOTP": code},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode, out, err

    # Deleting messages is the security administrator's, with a second factor.
    rc, out, err = await run_retention_cli()
    assert rc == 1 and b"needs --admin" in err, err
    rc, out, err = await run_retention_cli("--admin", "sec", code="000000")
    assert rc == 1 and b"TOTP wrong" in err, err
    rc, out, err = await run_retention_cli("--admin", "sec", code=pyotp.TOTP(secret).now())
    assert rc == 0, err
    assert b"finished: 0 log entries" in out  # default: messages are kept forever
    runs = [r.fields() for r in await comp.store.audit_records(0, 1000)
            if r.event == "retention.run"]
    assert [(r["outcome"], r["actor"]) for r in runs] == [
        ("denied", runs[0]["actor"]), ("failed", sec.id), ("ok", sec.id)]
    assert runs[0]["actor"].startswith("cli:") and runs[1]["details"]["reason"] == "TOTP wrong"
    # `show` names the person a user hold is on, not only the id.
    await rn.runner.app[ADMIN_API].c.store.add_hold("user", alice.user_id, "case 9", "u_sec",
                                                     now_ms())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", "retention", "show", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert f"hold #1: user alice ({alice.user_id}) — case 9".encode() in out, out
    assert await rn.runner.app[ADMIN_API].c.sign_head(force=True) is not None
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", "audit", "verify",
        *audit_pubkeys(rn.cfg.home), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, out + err
    assert b"OK: the audit chain is intact" in out
    events = [r.event for r in await rn.runner.app[ADMIN_API].c.store.audit_records(0, 1000)]
    assert "retention.run" in events and "audit.verify" in events

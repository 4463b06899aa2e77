"""The audit chain: SM3 links, SM2-signed heads, archive segments and verification."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard
from conftest import make_config  # type: ignore[import-not-found, unused-ignore]

from tongxin.clock import now_ms
from tongxin.compliance import chain
from tongxin.compliance.anchor import encode_anchor
from tongxin.compliance.archive import DAY_MS, MANIFEST
from tongxin.compliance.keys import AuditKeys, fingerprint
from tongxin.compliance.ports import SignedHead
from tongxin.compliance.service import Compliance, RetentionBelowMinimum
from tongxin.config import ConfigError, load_config
from tongxin.crypto import SM2PublicKey, sm2_available, sm3_digest

pytestmark = pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")


@pytest.fixture
async def comp(tmp_path: Path) -> AsyncIterator[Compliance]:
    c = Compliance(make_config(tmp_path / "home"), "test-node")
    await c.open()
    pin(c)
    yield c
    await c.close()


def pin(c: Compliance) -> str:
    """Trust the node's signing key as an installation's configuration would."""
    fp = fingerprint(c.keys.signing_key().public_key())
    c.cfg.compliance.audit_trusted_keys = fp
    return fp


def db(c: Compliance) -> sqlite3.Connection:
    return sqlite3.connect(c.cfg.home / "compliance.db", isolation_level=None)


async def fill(c: Compliance, n: int, ts: int | None = None) -> None:
    for i in range(n):
        await c.audit("auth.login", actor=f"u_{i}", target=f"user{i}", n=i)
    if ts is not None:
        rechain(c, ts)  # as if all records so far had been written at ts


def rechain(c: Compliance, ts: int) -> None:
    """Test helper: set every record's ts and rebuild hashes (as if written at ts)."""
    conn = db(c)
    prev = chain.GENESIS
    for seq, body in conn.execute("SELECT seq, body FROM audit ORDER BY seq").fetchall():
        rec = json.loads(body)
        rec["ts"], rec["prev"] = ts + seq, prev
        new = chain.canonical(rec)
        prev = chain.digest(new)
        conn.execute("UPDATE audit SET body=?, hash=?, ts=? WHERE seq=?", (new, prev, ts + seq, seq))
    conn.execute("UPDATE audit_state SET last_hash=?", (prev,))
    conn.close()


def test_canonical_encoding_is_sorted_compact_and_refuses_floats() -> None:
    assert chain.canonical({"b": 1, "a": "同信"}) == '{"a":"同信","b":1}'
    with pytest.raises(chain.CanonicalError):
        chain.canonical({"x": 1.5})
    record, body, digest = chain.seal({"ts": 5, "event": "e", "details": {"f": 0.5}}, 1, chain.GENESIS)
    assert record["details"] == {"f": "0.5"}
    assert digest == sm3_digest(body.encode()).hex()
    assert json.loads(body)["prev"] == chain.GENESIS


async def test_records_link_and_heads_verify(comp: Compliance) -> None:
    await fill(comp, 5)
    head = await comp.sign_head()
    assert head is not None and head.seq == 5
    rows = await comp.store.audit_records(0, 10)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    for a, b in itertools.pairwise(rows):
        assert b.fields()["prev"] == a.hash
    pub = SM2PublicKey.from_pem((comp.cfg.home / "audit-keys" / f"{head.key_fp}.pem").read_bytes())
    pub.verify(bytes.fromhex(head.signature), chain.head_message(5, head.hash, head.ts, "test-node"))
    report = await comp.verify()
    assert report.ok, report.problems
    assert report.heads_verified == 1 and report.last_seq == 5
    key = comp.cfg.home / "secrets" / "audit_sign.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"


async def test_edit_delete_and_truncation_are_named(comp: Compliance) -> None:
    await fill(comp, 6)
    await comp.sign_head()
    conn = db(comp)
    conn.execute("UPDATE audit SET body = replace(body, '\"n\":2', '\"n\":9') WHERE seq = 3")
    conn.execute("DELETE FROM audit WHERE seq = 5")
    conn.close()
    report = await comp.verify()
    assert not report.ok
    assert report.first_problem is not None and report.first_problem.seq == 3
    kinds = {(p.seq, p.kind) for p in report.problems}
    assert (3, "edited") in kinds
    assert (5, "missing") in kinds
    # Deleting the newest records is seen against the chain state and the signed head.
    conn = db(comp)
    conn.execute("DELETE FROM audit WHERE seq >= 6")
    conn.close()
    report = await comp.verify()
    assert any(p.kind == "missing" and "at the end" in p.message for p in report.problems)
    assert any(p.where == "heads" for p in report.problems)


async def test_full_rewrite_is_caught_by_the_signed_head(comp: Compliance) -> None:
    await fill(comp, 4)
    await comp.sign_head()
    conn = db(comp)
    conn.execute("UPDATE audit SET body = replace(body, 'user1', 'mallory'), "
                 "target = replace(target, 'user1', 'mallory') WHERE seq = 2")
    conn.close()
    rechain(comp, 1_000)  # a consistent chain again: only the signature can tell
    report = await comp.verify()
    assert [p.where.split(":")[0] for p in report.problems] == ["heads", "anchor"]
    assert "chain rewritten" in report.problems[0].message
    assert report.problems[1].kind == "diverged"


async def test_archive_then_verify_across_the_boundary_and_name_both_tampers(
        comp: Compliance, tmp_path: Path) -> None:
    old = now_ms() - 60 * DAY_MS  # past the 30 hot days, within the 180 days of retention
    await fill(comp, 8, ts=old)  # records 1..8, long ago
    await fill(comp, 4)  # records 9..12, now
    await comp.sign_head()
    res = await comp.run_archive()
    assert res.archived == 8 and res.segments == 1
    hot = await comp.store.audit_records(0, 100)
    assert hot[0].seq == 9  # 8 archived + the audit.archive record at 13
    report = await comp.verify()
    assert report.ok, report.problems
    assert report.archived_records == 8 and report.manifest_signed
    # Tamper with record 4 inside the archive (recompressed, so the file still reads)
    # and with record 10 in the database.
    archive = comp.archive.lock_dir
    seg = json.loads((archive / MANIFEST).read_text())["segments"][0]["file"]
    lines = zstandard.ZstdDecompressor().stream_reader((archive / seg).read_bytes()).read().decode()
    edited = lines.replace('"target":"user3"', '"target":"nobody"')
    assert edited != lines
    (archive / seg).write_bytes(zstandard.ZstdCompressor().compress(edited.encode()))
    conn = db(comp)
    conn.execute("UPDATE audit SET body = replace(body, 'user1\"', 'userX\"'), "
                 "target = 'userX' WHERE seq = 10")
    conn.close()
    report = await comp.verify()
    assert not report.ok
    named = {(p.where, p.seq, p.kind) for p in report.problems}
    assert (f"archive:{seg}", 4, "edited") in named
    assert ("database", 10, "edited") in named
    assert any(p.kind == "segment-altered" for p in report.problems)
    assert report.first_problem is not None and report.first_problem.seq == 1  # segment digest


async def test_manifest_edit_breaks_its_signature(comp: Compliance) -> None:
    await fill(comp, 3, ts=now_ms() - 60 * DAY_MS)
    await comp.run_archive()
    m = comp.archive.lock_dir / MANIFEST
    m.write_text(m.read_text().replace('"records":3', '"records":2'))
    report = await comp.verify()
    assert report.manifest_signed is False
    assert any(p.kind == "bad-signature" for p in report.problems)


async def test_purged_segments_keep_the_chain_anchored(comp: Compliance) -> None:
    very_old = 1_000_000_000_000
    await fill(comp, 5, ts=very_old)
    await comp.run_archive(now=very_old + 40 * DAY_MS)  # archived, within retention
    await fill(comp, 2)
    await comp.sign_head()
    assert (await comp.verify()).ok
    res = await comp.run_archive()  # now: the segment is far past 180 days
    assert res.purged_segments == 1
    report = await comp.verify()
    assert report.ok, report.problems
    assert report.purged_records == 5 and report.first_seq == 6


async def test_retention_below_the_legal_minimum(comp: Compliance) -> None:
    with pytest.raises(RetentionBelowMinimum):
        await comp.set_audit_retention(90, False, "", actor="u_sec", actor_role="secadmin")
    with pytest.raises(RetentionBelowMinimum):
        await comp.set_audit_retention(90, True, "  ", actor="u_sec", actor_role="secadmin")
    assert await comp.audit_retention() == (180.0, False)
    await comp.set_audit_retention(90, True, "court order 2026-17", actor="u_sec",
                                   actor_role="secadmin")
    assert await comp.audit_retention() == (90.0, True)
    events = [(r.event, r.outcome) for r in await comp.store.audit_records(0, 10)]
    assert events == [("retention.audit.set", "denied"), ("retention.audit.set", "denied"),
                      ("retention.audit.override", "ok")]


def test_config_refuses_retention_below_minimum_without_override(tmp_path: Path) -> None:
    p = tmp_path / "c.yml"
    p.write_text("compliance:\n  audit_retention_days: 30\n")
    with pytest.raises(ConfigError, match="legal minimum is 180 days"):
        load_config(p)
    p.write_text("compliance:\n  audit_retention_days: 30\n  audit_retention_override: true\n")
    assert load_config(p).compliance.audit_retention_days == 30.0


async def test_config_override_and_changes_are_audited(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "h")
    c = Compliance(cfg)
    await c.open()
    try:
        assert await c.record_config()
        cfg.compliance.audit_retention_days = 60.0
        cfg.compliance.audit_retention_override = True
        changed = await c.record_config()
        assert "compliance.audit_retention_days" in changed
        events = [r.event for r in await c.store.audit_records(0, 10)]
        assert events == ["config.initial", "config.change", "retention.audit.override"]
    finally:
        await c.close()


async def test_records_appended_during_verification_are_not_missing(
        comp: Compliance, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other appenders (this node, a CLI, other nodes on a shared store) keep
    appending while verify walks: it checks the chain up to the head it read first."""
    await fill(comp, 3)
    await comp.sign_head()
    real_state = comp.store.audit_state
    appended: list[int] = []

    async def state_then_append() -> tuple[int, str]:
        state = await real_state()
        if not appended:  # after verify has taken its snapshot
            for i in range(2):
                appended.append((await comp.audit("auth.login", actor="late", n=i)).seq)
        return state

    monkeypatch.setattr(comp.store, "audit_state", state_then_append)
    report = await comp.verify()
    assert appended == [4, 5]
    assert report.ok, report.problems
    assert report.last_seq == 3 and report.hot_records == 3
    monkeypatch.undo()
    report = await comp.verify()
    assert report.ok and report.last_seq == 5


async def test_heads_signed_with_a_published_key_verify(comp: Compliance, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a shared store another node's key comes from the database, not audit-keys/;
    a published row whose PEM does not match its fingerprint is no key at all."""
    await fill(comp, 2)
    await comp.sign_head()
    other = AuditKeys(tmp_path / "other-node")  # another node's key, not in comp's audit-keys/
    pub = other.signing_key().public_key()
    fp = fingerprint(pub)
    comp.cfg.compliance.audit_trusted_keys += f",{fp}"  # pinned, as every node's key is
    _, sig = other.sign(chain.head_message(2, (await comp.store.audit_state())[1], 7, "node-b"))
    await comp.store.add_head(SignedHead(2, (await comp.store.audit_state())[1], 7, "node-b", fp,
                                         sig))
    report = await comp.verify()
    assert not report.ok and report.problems[0].kind == "bad-signature"

    async def published(pem: bytes) -> dict[str, bytes]:
        return {fp: pem}

    wrong_pem = comp.keys.signing_key().public_key().to_pem()
    monkeypatch.setattr(comp.store, "published_keys", lambda: published(wrong_pem))
    report = await comp.verify()
    assert not report.ok and fp not in report.key_fingerprints
    monkeypatch.setattr(comp.store, "published_keys", lambda: published(pub.to_pem()))
    report = await comp.verify()
    assert report.ok, report.problems
    assert fp in report.key_fingerprints and report.heads_verified == 2  # both nodes'


def test_the_store_and_archive_name_follow_the_message_store(tmp_path: Path) -> None:
    from tongxin.compliance.mysql_store import MysqlComplianceStore
    from tongxin.compliance.service import archive_name, compliance_store
    from tongxin.compliance.sqlite_store import SqliteComplianceStore

    one = make_config(tmp_path / "a")
    one.node_id = "node-7"
    assert isinstance(compliance_store(one), SqliteComplianceStore)
    assert archive_name(one) == "node-7"  # one chain per node
    shared = make_config(tmp_path / "b", storage={
        "backend": "mysql", "mysql_dsn": "mysql://tx@db.internal:4000/tongxin_prod"})
    shared.node_id = "node-7"
    store = compliance_store(shared)
    assert isinstance(store, MysqlComplianceStore) and store.shared
    assert archive_name(shared) == "tongxin_prod"  # one chain for every node
    shared.compliance.audit_archive_name = "explicit"
    assert archive_name(shared) == "explicit"


# ---- trusted keys are pinned (#16) -------------------------------------------------


def forge(c: Compliance, attacker: AuditKeys) -> SignedHead:
    """What someone who can write the data directory does: rewrite a record, rebuild the
    chain, drop the genuine heads, plant their own key and sign the new head (and the
    archive's anchor) with it."""
    conn = db(c)
    conn.execute("UPDATE audit SET body = replace(body, 'user1', 'mallory'), "
                 "target = replace(target, 'user1', 'mallory') WHERE seq = 2")
    conn.execute("DELETE FROM audit_heads")
    conn.close()
    rechain(c, 1_000)
    seq, digest = sqlite3.connect(c.cfg.home / "compliance.db").execute(
        "SELECT last_seq, last_hash FROM audit_state").fetchone()
    fp, sig = attacker.sign(chain.head_message(seq, digest, 5, "test-node"))
    planted = c.cfg.home / "audit-keys" / f"{fp}.pem"
    planted.write_bytes(attacker.signing_key().public_key().to_pem())
    head = SignedHead(seq, digest, 5, "test-node", fp, sig)
    (c.cfg.home / "audit-archive" / "anchor.json").write_bytes(encode_anchor(head))
    return head


async def test_a_planted_key_does_not_make_a_rewritten_chain_verify(
        comp: Compliance, tmp_path: Path) -> None:
    await fill(comp, 4)
    await comp.sign_head()
    head = forge(comp, AuditKeys(tmp_path / "attacker"))
    await comp.store.add_head(head)
    report = await comp.verify()
    assert not report.ok
    assert report.untrusted_keys == {head.key_fp: f"audit-keys/{head.key_fp}.pem"}
    assert head.key_fp not in report.key_fingerprints
    assert {(p.where.split(":")[0], p.kind) for p in report.problems} >= {
        ("heads", "untrusted-key"), ("anchor", "untrusted-key")}


async def test_pubkey_trusts_exactly_the_given_keys(comp: Compliance, tmp_path: Path) -> None:
    await fill(comp, 3)
    await comp.sign_head()
    genuine = tmp_path / "genuine.pem"  # the auditor's own copy of the node's key
    genuine.write_bytes(comp.keys.signing_key().public_key().to_pem())
    other = tmp_path / "other.pem"
    other.write_bytes(AuditKeys(tmp_path / "x").signing_key().public_key().to_pem())
    comp.cfg.compliance.audit_trusted_keys = ""
    report = await comp.verify()
    assert not report.ok and report.problems[0].kind == "no-trusted-key"
    assert list(report.untrusted_keys) == [comp.keys.current_fingerprint()]
    report = await comp.verify([genuine])
    assert report.ok, report.problems
    assert report.trust_source == "--pubkey" and report.untrusted_keys == {}
    # Given another key only, the node's own key in audit-keys/ is not added to it.
    report = await comp.verify([other])
    assert not report.ok
    assert {p.kind for p in report.problems} == {"untrusted-key"}
    pin(comp)  # the pins do not widen --pubkey either
    assert not (await comp.verify([other])).ok
    report = await comp.verify([tmp_path / "absent.pem"])
    assert not report.ok and report.problems[0].kind == "bad-key"


async def test_a_pinned_path_is_trusted_and_a_bad_pin_is_refused(comp: Compliance,
                                                                 tmp_path: Path) -> None:
    await fill(comp, 2)
    await comp.sign_head()
    copy = tmp_path / "etc" / "audit.pem"  # e.g. installed by the role outside the data dir
    copy.parent.mkdir()
    copy.write_bytes(comp.keys.signing_key().public_key().to_pem())
    comp.cfg.compliance.audit_trusted_keys = str(copy)
    assert (await comp.verify()).ok
    with pytest.raises(ConfigError, match="audit_trusted_keys"):
        load_config(overrides_file(tmp_path, "compliance:\n  audit_trusted_keys: 'abc123'\n"))


def overrides_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tongxin.yml"
    p.write_text(text, encoding="utf-8")
    return p


# ---- signed heads are anchored off the node (#16) -----------------------------------


async def test_deleting_every_signed_head_does_not_verify(comp: Compliance) -> None:
    await fill(comp, 3)
    await comp.sign_head()
    conn = db(comp)
    conn.execute("DELETE FROM audit_heads")
    conn.close()
    report = await comp.verify()
    assert not report.ok
    assert [(p.where, p.kind) for p in report.problems] == [("heads", "missing")]
    (comp.cfg.home / "audit-archive" / "anchor.json").unlink()  # the anchor gone as well
    report = await comp.verify()
    assert not report.ok and [p.kind for p in report.problems] == ["unanchored"]


async def test_truncation_since_the_last_anchor_is_detected(comp: Compliance,
                                                            tmp_path: Path) -> None:
    off_node = tmp_path / "anchors"  # e.g. a directory another host exports
    comp.cfg.compliance.audit_anchor_dir = str(off_node)
    await fill(comp, 3)
    await comp.sign_head()
    local_anchor = comp.cfg.home / "audit-archive" / "anchor.json"
    old_anchor = local_anchor.read_bytes()
    await fill(comp, 3)
    await comp.sign_head()
    auditor_copy = tmp_path / "auditor-anchor.json"
    auditor_copy.write_bytes(local_anchor.read_bytes())
    # Cut the chain back to record 3 with its head, as if the rest had never been.
    conn = db(comp)
    conn.execute("DELETE FROM audit WHERE seq > 3")
    conn.execute("DELETE FROM audit_heads WHERE seq > 3")
    h3 = conn.execute("SELECT hash FROM audit WHERE seq = 3").fetchone()[0]
    conn.execute("UPDATE audit_state SET last_seq = 3, last_hash = ?", (h3,))
    conn.close()
    local_anchor.write_bytes(old_anchor)
    comp.cfg.compliance.audit_anchor_dir = ""
    assert (await comp.verify()).ok  # what is left on the node is consistent
    report = await comp.verify(anchors=[str(auditor_copy)])
    assert not report.ok
    assert [(p.seq, p.kind) for p in report.problems] == [(6, "truncated")]
    comp.cfg.compliance.audit_anchor_dir = str(off_node)
    report = await comp.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(6, "truncated")]
    assert str(off_node) in report.problems[0].where
    report = await comp.verify(anchors=[str(off_node)])  # a directory holding the anchor
    assert len(report.problems) == 2
    report = await comp.verify(anchors=[str(tmp_path / "nowhere.json")])
    assert ("missing", 0) in {(p.kind, p.seq) for p in report.problems}


async def test_an_anchor_the_chain_diverges_from(comp: Compliance, tmp_path: Path) -> None:
    await fill(comp, 4)
    await comp.sign_head()
    copy = tmp_path / "anchor.json"
    copy.write_bytes((comp.cfg.home / "audit-archive" / "anchor.json").read_bytes())
    conn = db(comp)
    conn.execute("DELETE FROM audit_heads")
    conn.close()
    rechain(comp, 7_000)  # every hash changes; the seqs stay
    report = await comp.verify(anchors=[str(copy)])
    assert not report.ok
    assert (f"anchor:{copy}", 4, "diverged") in {(p.where, p.seq, p.kind) for p in report.problems}


async def test_an_empty_chain_verifies_only_when_said_to_be_empty(comp: Compliance) -> None:
    report = await comp.verify()
    assert not report.ok and report.problems[0].kind == "unanchored"
    assert (await comp.verify(empty_ok=True)).ok
    await fill(comp, 1)
    assert not (await comp.verify(empty_ok=True)).ok  # records, but nothing signed

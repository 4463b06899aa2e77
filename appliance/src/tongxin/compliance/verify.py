"""``tongxin audit verify``: walk the chain across the archive and the hot table.

Every problem found is reported, the first one first; after a problem the walk
re-anchors on the record's stored hash, so one edit yields one problem and a
second, independent edit elsewhere (say one in an archive segment and one in
the database) is reported as well.

Signatures count only with a trusted key (:func:`tongxin.compliance.keys.resolve_trust`:
pinned in the configuration, or given with ``--pubkey``); keys merely found in
audit-keys/ or the database are listed as untrusted. What proves that the chain was
not cut short are the signed heads and, since those live in the same store as the
records, the anchors (:mod:`tongxin.compliance.anchor`): a chain with neither is
never reported intact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tongxin.compliance import chain
from tongxin.compliance.anchor import AnchorSource, decode_anchor
from tongxin.compliance.archive import MANIFEST, SIGNATURE, Archive, segment_lines
from tongxin.compliance.keys import AuditKeys, Trust, fingerprint, resolve_trust
from tongxin.compliance.ports import ComplianceStore, SignedHead
from tongxin.crypto import SM2PublicKey, sm3_digest
from tongxin.crypto.errors import CryptoError


@dataclass
class Problem:
    where: str  # "archive:<file>", "database", "heads", "manifest", "keys", "anchor:<place>"
    seq: int
    kind: str  # edited, broken-link, missing, reordered, bad-signature, ...
    message: str


@dataclass
class VerifyReport:
    ok: bool = True
    first_seq: int = 0
    last_seq: int = 0
    archived_records: int = 0
    hot_records: int = 0
    segments: int = 0
    purged_records: int = 0
    manifest_signed: bool | None = None  # None: no archive
    heads_total: int = 0
    heads_verified: int = 0
    latest_signed_seq: int = 0
    latest_signed_ts: int = 0
    anchors_total: int = 0
    anchors_verified: int = 0
    latest_anchored_seq: int = 0
    key_fingerprints: list[str] = field(default_factory=list)  # the trusted keys
    trust_source: str = ""  # compliance.audit_trusted_keys, or --pubkey
    untrusted_keys: dict[str, str] = field(default_factory=dict)  # fingerprint -> where found
    pinned_not_found: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, where: str, seq: int, kind: str, message: str) -> None:
        self.ok = False
        self.problems.append(Problem(where, seq, kind, message))

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Walker:
    def __init__(self, report: VerifyReport, start_seq: int, start_prev: str,
                 wanted: set[int]) -> None:
        self.r = report
        self.expect_seq = start_seq
        self.prev = start_prev
        self.wanted = wanted
        self.hashes: dict[int, str] = {}  # seq -> hash, for seqs that have signed heads

    def feed(self, where: str, seq: int, record: dict[str, Any] | None, stored_hash: str,
             body: str | None = None) -> None:
        r = self.r
        if seq < self.expect_seq:
            r.add(where, seq, "reordered",
                  f"record {seq} appears after record {self.expect_seq - 1} (duplicate or reordered)")
            return
        if seq > self.expect_seq:
            r.add(where, self.expect_seq, "missing",
                  f"records {self.expect_seq}..{seq - 1} are missing" if seq - 1 > self.expect_seq
                  else f"record {self.expect_seq} is missing")
            # The next record cannot link to a record we never saw.
            self.prev = ""
        if record is None:
            r.add(where, seq, "unreadable", f"record {seq} is not valid JSON")
        else:
            try:
                canon = chain.canonical(record)
            except chain.CanonicalError as exc:
                canon = ""
                r.add(where, seq, "edited", f"record {seq} cannot be encoded: {exc}")
            if canon:
                if body is not None and canon != body:
                    r.add(where, seq, "edited", f"record {seq} is not in canonical form (edited)")
                elif chain.digest(canon) != stored_hash:
                    r.add(where, seq, "edited",
                          f"record {seq} was edited: its SM3 hash does not match its content")
                elif record.get("seq") != seq:
                    r.add(where, seq, "edited", f"record {seq} claims seq {record.get('seq')}")
                elif self.prev and record.get("prev") != self.prev:
                    r.add(where, seq, "broken-link",
                          f"record {seq} does not link to record {seq - 1}: "
                          f"record {seq - 1} was altered or replaced")
        self.prev = stored_hash
        self.expect_seq = seq + 1
        if seq in self.wanted:
            self.hashes[seq] = stored_hash


async def verify_chain(store: ComplianceStore, keys: AuditKeys, archive: Archive | None,
                       pins: Sequence[str] = (), given: Sequence[Path] = (),
                       anchors: Sequence[AnchorSource] = (), empty_ok: bool = False,
                       page: int = 5000) -> VerifyReport:
    """Walk and check the chain. ``pins`` are ``compliance.audit_trusted_keys``;
    ``given`` (``--pubkey``) replaces them; ``anchors`` were read before the call;
    ``empty_ok`` accepts a chain that has no record at all (and so nothing signed)."""
    report = VerifyReport()
    # On a shared store every node signs with its own key and publishes it in
    # the database; a row whose PEM does not hash to its fingerprint is ignored.
    found = keys.found_keys()
    for fp, pem in (await store.published_keys()).items():
        try:
            pub = SM2PublicKey.from_pem(pem)
        except (CryptoError, ValueError):
            continue
        if fingerprint(pub) == fp:
            found.setdefault(fp, (pub, "the database (published by a node)"))
    trust = resolve_trust(found, pins, given)
    pubkeys = trust.keys
    _report_trust(trust, report)
    # Anchors are read (by the caller) before the heads, and the heads before the
    # chain state: a node writes a head, then its anchor, so whatever anchor was
    # read has its head in the store and its record below the state read next.
    heads = await store.heads()
    # The chain head before the walk: records appended while it runs (by this
    # node or, on a shared store, by others) are after it and not walked, so
    # they are not mistaken for records "missing at the end".
    last_seq, last_hash = await store.audit_state()
    anchored = _read_anchors(anchors, pubkeys, report)
    wanted = {h.seq for h in heads} | {a.seq for _, a in anchored}
    start_seq, start_prev = 1, chain.GENESIS
    manifest: dict[str, Any] | None = None
    if archive is not None:
        manifest = await _check_manifest(archive, pubkeys, report)
    if manifest is not None and manifest.get("purged"):
        last = manifest["purged"][-1]
        start_seq, start_prev = int(last["last_seq"]) + 1, str(last["last_hash"])
        report.purged_records = sum(int(p["records"]) for p in manifest["purged"])
    report.first_seq = start_seq
    walker = _Walker(report, start_seq, start_prev, wanted)
    archived_through = 0
    if manifest is not None and archive is not None:
        for seg in manifest.get("segments", []):
            report.segments += 1
            await _walk_segment(archive, seg, walker, report)
            archived_through = int(seg["last_seq"])
    after = 0
    while True:
        rows = await store.audit_records(after, page)
        if not rows:
            break
        for row in rows:
            after = row.seq
            if row.seq > last_seq:
                break  # appended after the walk started
            if row.seq <= archived_through:
                continue  # archived by a run that stopped before deleting it
            report.hot_records += 1
            try:
                record: dict[str, Any] | None = json.loads(row.body)
            except ValueError:
                record = None
            if record is not None and chain.digest(row.body) == row.hash and (
                    record.get("event") != row.event or record.get("actor") != row.actor
                                       or record.get("outcome") != row.outcome
                                       or record.get("target") != row.target or record.get("ts") != row.ts):
                report.add("database", row.seq, "edited",
                           f"record {row.seq}: the indexed columns disagree with the record")
            walker.feed("database", row.seq, record, row.hash, body=row.body)
        if rows[-1].seq > last_seq:
            break
    report.last_seq = walker.expect_seq - 1
    if last_seq > report.last_seq:
        report.add("database", report.last_seq + 1, "missing",
                   f"records {report.last_seq + 1}..{last_seq} are missing at the end of the chain")
    elif last_seq and last_seq == report.last_seq and walker.prev and walker.prev != last_hash:
        report.add("database", last_seq, "edited", f"record {last_seq} differs from the chain head")
    _check_heads(heads, walker, pubkeys, found, report)
    _check_anchors(anchored, heads, walker, report)
    _check_proof(report, heads, empty_ok)
    return report


def _report_trust(trust: Trust, report: VerifyReport) -> None:
    report.key_fingerprints = sorted(trust.keys)
    report.trust_source = trust.source
    report.untrusted_keys = dict(trust.untrusted)
    report.pinned_not_found = list(trust.unresolved)
    for err in trust.errors:
        report.add("keys", 0, "bad-key", err)
    if not trust.keys:
        report.add("keys", 0, "no-trusted-key",
                   "no audit key is trusted: pin the fingerprints in "
                   "compliance.audit_trusted_keys, or give the keys with --pubkey; a key file "
                   "in audit-keys/ is not trusted for being there")


def _read_anchors(anchors: Sequence[AnchorSource], pubkeys: dict[str, SM2PublicKey],
                  report: VerifyReport) -> list[tuple[str, SignedHead]]:
    """The anchored heads whose signature verifies with a trusted key."""
    out: list[tuple[str, SignedHead]] = []
    for src in anchors:
        where = f"anchor:{src.where}"
        if src.body is None:
            if src.required:
                report.add(where, 0, "missing", f"no anchor at {src.where}")
            continue
        report.anchors_total += 1
        try:
            head = decode_anchor(src.body)
        except ValueError as exc:
            report.add(where, 0, "unreadable", f"anchor at {src.where}: {exc}")
            continue
        key = pubkeys.get(head.key_fp)
        if key is None:
            report.add(where, head.seq, "untrusted-key",
                       f"the anchor at {src.where} (record {head.seq}) is signed by key "
                       f"{head.key_fp[:16]}, which is not trusted")
            continue
        try:
            key.verify(bytes.fromhex(head.signature),
                       chain.head_message(head.seq, head.hash, head.ts, head.node))
        except (ValueError, CryptoError):
            report.add(where, head.seq, "bad-signature",
                       f"the anchor at {src.where} (record {head.seq}) has a signature that "
                       "does not verify")
            continue
        out.append((src.where, head))
    return out


async def _check_manifest(archive: Archive, pubkeys: dict[str, SM2PublicKey],
                          report: VerifyReport) -> dict[str, Any] | None:
    body = await archive.objects.get(MANIFEST)
    if body is None:
        return None
    try:
        manifest: dict[str, Any] = json.loads(body)
    except ValueError:
        report.add("manifest", 0, "unreadable", "archive manifest.json is not valid JSON")
        return None
    report.manifest_signed = False
    sig_body = await archive.objects.get(SIGNATURE)
    if sig_body is None:
        report.add("manifest", 0, "unsigned", "archive manifest has no signature (manifest.sig)")
        return manifest
    try:
        sig = json.loads(sig_body)
        key = pubkeys[str(sig["key_fp"])]
        key.verify(bytes.fromhex(str(sig["signature"])), body)
    except KeyError:
        report.add("manifest", 0, "untrusted-key",
                   "archive manifest is signed by a key that is not trusted (not pinned)")
    except (ValueError, CryptoError):
        report.add("manifest", 0, "bad-signature",
                   "archive manifest signature does not verify (manifest edited)")
    else:
        report.manifest_signed = True
    return manifest


async def _walk_segment(archive: Archive, seg: dict[str, Any], walker: _Walker,
                        report: VerifyReport) -> None:
    name = str(seg["file"])
    where = f"archive:{name}"
    first, last = int(seg["first_seq"]), int(seg["last_seq"])
    data = await archive.objects.get(name)
    if data is None:
        report.add(where, first, "missing", f"archive segment {name} (records {first}..{last}) is missing")
        walker.expect_seq, walker.prev = last + 1, str(seg["last_hash"])
        return
    if sm3_digest(data).hex() != seg["sm3"]:
        report.add(where, first, "segment-altered",
                   f"archive segment {name} does not match the SM3 digest in the manifest")
    try:
        lines = list(segment_lines(data))
    except Exception as exc:  # zstd or UTF-8 errors: the file is damaged
        report.add(where, first, "unreadable", f"archive segment {name} cannot be read: {exc}")
        walker.expect_seq, walker.prev = last + 1, str(seg["last_hash"])
        return
    seen_last = 0
    for line in lines:
        try:
            obj: dict[str, Any] = json.loads(line)
            stored = str(obj.pop("hash"))
            seq = int(obj["seq"])
        except (ValueError, KeyError, TypeError):
            report.add(where, walker.expect_seq, "unreadable",
                       f"a line after record {walker.expect_seq - 1} is damaged")
            continue
        report.archived_records += 1
        walker.feed(where, seq, obj, stored)
        seen_last = seq
    if seen_last < last:
        report.add(where, seen_last + 1, "missing",
                   f"records {seen_last + 1}..{last} are missing from archive segment {name}")
        walker.expect_seq, walker.prev = last + 1, str(seg["last_hash"])


def _check_heads(heads: list[Any], walker: _Walker, pubkeys: dict[str, SM2PublicKey],
                 found: dict[str, tuple[SM2PublicKey, str]], report: VerifyReport) -> None:
    report.heads_total = len(heads)
    for h in heads:
        key = pubkeys.get(h.key_fp)
        if key is None:
            if h.key_fp in found:
                report.add("heads", h.seq, "untrusted-key",
                           f"signed head at record {h.seq} is signed by key {h.key_fp[:16]} "
                           f"(in {found[h.key_fp][1]}), which is not pinned")
            else:
                report.add("heads", h.seq, "bad-signature",
                           f"signed head at record {h.seq} is signed by an unknown key "
                           f"{h.key_fp[:16]}")
            continue
        try:
            key.verify(bytes.fromhex(h.signature), chain.head_message(h.seq, h.hash, h.ts, h.node))
        except (ValueError, CryptoError):
            report.add("heads", h.seq, "bad-signature",
                       f"signed head at record {h.seq} has a signature that does not verify")
            continue
        if h.seq > report.last_seq:
            report.add("heads", h.seq, "missing",
                       f"a signed head covers record {h.seq} but the chain ends at {report.last_seq}: "
                       "records were deleted")
            continue
        if h.seq < report.first_seq:
            report.heads_verified += 1  # covers purged records: only the signature is checkable
            continue
        actual = walker.hashes.get(h.seq)
        if actual is None:
            report.add("heads", h.seq, "missing", f"record {h.seq} named by a signed head is missing")
            continue
        if actual != h.hash:
            report.add("heads", h.seq, "edited",
                       f"record {h.seq} differs from the signed head (chain rewritten)")
            continue
        report.heads_verified += 1
        if h.seq >= report.latest_signed_seq:
            report.latest_signed_seq, report.latest_signed_ts = h.seq, max(h.ts, report.latest_signed_ts)


def _check_anchors(anchored: list[tuple[str, SignedHead]], heads: list[SignedHead],
                   walker: _Walker, report: VerifyReport) -> None:
    in_store = {(h.seq, h.hash) for h in heads}
    for where, a in anchored:
        place = f"anchor:{where}"
        if a.seq > report.last_seq:
            report.add(place, a.seq, "truncated",
                       f"the head anchored at {where} covers record {a.seq} but the chain ends "
                       f"at {report.last_seq}: records were deleted since")
            continue
        if a.seq >= report.first_seq:
            actual = walker.hashes.get(a.seq)
            if actual is None:
                report.add(place, a.seq, "missing",
                           f"record {a.seq} named by the head anchored at {where} is missing")
                continue
            if actual != a.hash:
                report.add(place, a.seq, "diverged",
                           f"record {a.seq} differs from the head anchored at {where} "
                           "(chain rewritten)")
                continue
        report.anchors_verified += 1
        report.latest_anchored_seq = max(report.latest_anchored_seq, a.seq)
        if (a.seq, a.hash) not in in_store:
            # Its node wrote the head to the store before anchoring it.
            report.add("heads", a.seq, "missing",
                       f"the signed head at record {a.seq} (anchored at {where}) is not in the "
                       "store: signed heads were deleted")


def _check_proof(report: VerifyReport, heads: list[SignedHead], empty_ok: bool) -> None:
    """Without a verified head or anchor nothing shows the chain is whole: replaced
    from the start, or cut short together with its heads, it looks the same."""
    if report.heads_verified or report.anchors_verified:
        if heads and not report.anchors_total:
            report.add("anchor", report.latest_signed_seq, "no-anchor",
                       "no anchored head was found (the archive's anchor.json, "
                       "compliance.audit_anchor_dir, --anchor): deleting the newest records "
                       "with their signed heads would go unseen")
        return
    if heads or report.anchors_total:
        return  # each of them that failed is a problem already
    empty = report.last_seq == 0 and not report.purged_records
    if empty and empty_ok:
        return
    report.add("heads", report.last_seq, "unanchored",
               "the audit chain is empty: pass --empty-ok only if it never had a record"
               if empty else
               "no signed head and no anchor verifies: nothing shows that the chain was not "
               "cut short or replaced")

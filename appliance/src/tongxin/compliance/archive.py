"""Audit archive: old records as zstd-compressed JSON lines with a signed manifest.

Layout of the archive directory (``compliance.audit_archive_dir``):

* ``audit-<first>-<last>.jsonl.zst`` — one segment: records ``first..last`` in
  seq order, one per line, each the record's canonical JSON with its ``hash``
  added;
* ``manifest.json`` — canonical JSON listing every segment (seqs, first
  ``prev``, last hash, record count, SM3 of the compressed file) and every
  purged range (segments deleted after the retention period, kept as
  ``first_seq``/``last_seq``/``last_hash`` so the chain still starts from a
  known hash);
* ``manifest.sig`` — JSON ``{"alg", "signer_id", "key_fp", "signature"}``: an SM2
  signature of the exact bytes of ``manifest.json``.

Archiving writes and fsyncs the segment, then the manifest and signature
(each by rename), and only then deletes the hot records it copied; a run that
stops in between is completed by the next one (hot records at or below the
archive's last seq are already archived and are deleted first).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from tongxin.compliance import chain
from tongxin.compliance.keys import AuditKeys
from tongxin.compliance.ports import AuditRecord, ComplianceStore
from tongxin.crypto import SM2_DEFAULT_SIGNER_ID, sm3_digest

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FORMAT = "tongxin-audit-archive"
DAY_MS = 86_400_000


def empty_manifest() -> dict[str, Any]:
    return {"format": FORMAT, "v": 1, "segments": [], "purged": [], "updated_at": 0}


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def segment_lines(data: bytes) -> Iterator[str]:
    text = zstandard.ZstdDecompressor().stream_reader(data).read().decode("utf-8")
    for line in text.splitlines():
        if line.strip():
            yield line


@dataclass
class ArchiveResult:
    archived: int = 0
    segments: int = 0
    purged_segments: int = 0
    deleted_hot: int = 0


class Archive:
    def __init__(self, path: Path, keys: AuditKeys) -> None:
        self.path = path
        self.keys = keys

    def exists(self) -> bool:
        return (self.path / MANIFEST).exists()

    def load_manifest(self) -> dict[str, Any]:
        p = self.path / MANIFEST
        if not p.exists():
            return empty_manifest()
        data: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
        return data

    def last_seq(self) -> int:
        m = self.load_manifest()
        if m["segments"]:
            return int(m["segments"][-1]["last_seq"])
        if m["purged"]:
            return int(m["purged"][-1]["last_seq"])
        return 0

    def _write_manifest(self, manifest: dict[str, Any], now: int) -> None:
        manifest["updated_at"] = now
        body = chain.canonical(manifest).encode("utf-8")
        fp, sig = self.keys.sign(body)
        _atomic_write(self.path / MANIFEST, body)
        _atomic_write(self.path / SIGNATURE, json.dumps({
            "alg": "SM2-with-SM3", "signer_id": SM2_DEFAULT_SIGNER_ID.decode(), "key_fp": fp,
            "signature": sig}, sort_keys=True).encode("utf-8"))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """An advisory lock, so that two processes (workers, a CLI) never archive at once."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+b") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    async def archive(self, store: ComplianceStore, older_than_ms: int, now: int,
                      batch: int = 10000) -> ArchiveResult:
        """Move hot records older than ``older_than_ms`` (a timestamp) into segments.

        Does nothing while another process holds the archive lock.
        """
        with self._exclusive() as mine:
            if not mine:
                return ArchiveResult()
            return await self._archive(store, older_than_ms, now, batch)

    async def _archive(self, store: ComplianceStore, older_than_ms: int, now: int,
                       batch: int) -> ArchiveResult:
        result = ArchiveResult()
        # Finish a run that stopped after its manifest was written.
        done = self.last_seq()
        if done:
            result.deleted_hot += await store.delete_audit_through(done)
        while True:
            records = await store.audit_older_than(older_than_ms, batch)
            if not records:
                return result
            self._write_segment(records, now)
            result.archived += len(records)
            result.segments += 1
            result.deleted_hot += await store.delete_audit_through(records[-1].seq)
            if len(records) < batch:
                return result

    def _write_segment(self, records: list[AuditRecord], now: int) -> None:
        manifest = self.load_manifest()
        lines = []
        for r in records:
            obj = r.fields()
            obj["hash"] = r.hash
            lines.append(chain.canonical(obj))
        data = zstandard.ZstdCompressor(level=10).compress(("\n".join(lines) + "\n").encode())
        first, last = records[0], records[-1]
        name = f"audit-{first.seq:012d}-{last.seq:012d}.jsonl.zst"
        _atomic_write(self.path / name, data)
        manifest["segments"].append({
            "file": name, "first_seq": first.seq, "last_seq": last.seq,
            "first_ts": first.ts, "last_ts": last.ts, "prev": first.fields()["prev"],
            "last_hash": last.hash, "records": len(records), "sm3": sm3_digest(data).hex(),
            "created_at": now,
        })
        self._write_manifest(manifest, now)

    def purge(self, retention_days: float, now: int) -> int:
        """Delete segments whose newest record is older than the retention period."""
        with self._exclusive() as mine:
            return self._purge(retention_days, now) if mine else 0

    def _purge(self, retention_days: float, now: int) -> int:
        manifest = self.load_manifest()
        cutoff = now - int(retention_days * DAY_MS)
        keep: list[dict[str, Any]] = []
        gone = 0
        for seg in manifest["segments"]:
            if not keep and seg["last_ts"] < cutoff:
                manifest["purged"].append({
                    "first_seq": seg["first_seq"], "last_seq": seg["last_seq"],
                    "last_hash": seg["last_hash"], "records": seg["records"],
                    "last_ts": seg["last_ts"], "purged_at": now})
                gone += 1
            else:
                keep.append(seg)
        if gone:
            dropped = manifest["segments"][:gone]
            manifest["segments"] = keep
            self._write_manifest(manifest, now)
            for seg in dropped:
                (self.path / seg["file"]).unlink(missing_ok=True)
        return gone

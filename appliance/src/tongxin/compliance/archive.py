"""Audit archive: old records as zstd-compressed JSON lines with a signed manifest.

Where the objects live is an ``ArchiveObjects``: a directory
(``compliance.audit_archive_dir``, ``DirObjects``) or the files BlobStore
port (``BlobObjects``: object storage, under ``audit-archive/<name>/``).
Layout (file or object names):

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
(each atomically: by rename in a directory, by a single PUT in a bucket), and
only then deletes the hot records it copied; a run that stops in between is
completed by the next one (hot records at or below the archive's last seq
are already archived and are deleted first).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zstandard

from tongxin.compliance import chain
from tongxin.compliance.keys import AuditKeys
from tongxin.compliance.ports import AuditRecord, ComplianceStore
from tongxin.crypto import SM2_DEFAULT_SIGNER_ID, sm3_digest
from tongxin.files.ports import BlobNotFound, BlobStore

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


class ArchiveObjects(Protocol):
    """Named blobs of one archive: segments, ``manifest.json``, ``manifest.sig``."""

    def describe(self) -> str: ...
    async def get(self, name: str) -> bytes | None:
        """The object's bytes, or None if there is none."""
        ...

    async def put(self, name: str, data: bytes) -> None:
        """Store durably and atomically (replacing)."""
        ...

    async def delete(self, names: Sequence[str]) -> None: ...
    async def close(self) -> None: ...


class DirObjects:
    """The archive as a directory (the default; may be a mounted share)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    async def get(self, name: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                return (self.path / name).read_bytes()
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(read)

    async def put(self, name: str, data: bytes) -> None:
        def write() -> None:
            self.path.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.path / name, data)

        await asyncio.to_thread(write)

    async def delete(self, names: Sequence[str]) -> None:
        def remove() -> None:
            for name in names:
                (self.path / name).unlink(missing_ok=True)

        await asyncio.to_thread(remove)

    async def close(self) -> None:
        return None


class BlobObjects:
    """The archive in the files BlobStore port (object storage), under
    ``audit-archive/<name>/``. The store is opened on first use."""

    def __init__(self, blobs: BlobStore, name: str, where: str) -> None:
        self.blobs = blobs
        self.prefix = f"audit-archive/{name}/"
        self.where = where
        self._opened = False
        self._opening = asyncio.Lock()

    def describe(self) -> str:
        return f"{self.where}/{self.prefix}"

    async def _store(self) -> BlobStore:
        async with self._opening:  # the background archive and a verify may start together
            if not self._opened:
                await self.blobs.open()
                self._opened = True
        return self.blobs

    async def get(self, name: str) -> bytes | None:
        blobs = await self._store()
        out = bytearray()
        try:
            async for chunk in blobs.read(self.prefix + name):
                out += chunk
        except BlobNotFound:
            return None
        return bytes(out)

    async def put(self, name: str, data: bytes) -> None:
        await (await self._store()).put_object(self.prefix + name, data)

    async def delete(self, names: Sequence[str]) -> None:
        if names:
            await (await self._store()).delete([self.prefix + n for n in names])

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self.blobs.close()


class Archive:
    def __init__(self, objects: ArchiveObjects, keys: AuditKeys, lock_dir: Path) -> None:
        self.objects = objects
        self.keys = keys
        self.lock_dir = lock_dir

    async def exists(self) -> bool:
        return await self.objects.get(MANIFEST) is not None

    async def load_manifest(self) -> dict[str, Any]:
        body = await self.objects.get(MANIFEST)
        if body is None:
            return empty_manifest()
        data: dict[str, Any] = json.loads(body)
        return data

    async def last_seq(self) -> int:
        m = await self.load_manifest()
        if m["segments"]:
            return int(m["segments"][-1]["last_seq"])
        if m["purged"]:
            return int(m["purged"][-1]["last_seq"])
        return 0

    async def _write_manifest(self, manifest: dict[str, Any], now: int) -> None:
        manifest["updated_at"] = now
        body = chain.canonical(manifest).encode("utf-8")
        fp, sig = self.keys.sign(body)
        await self.objects.put(MANIFEST, body)
        await self.objects.put(SIGNATURE, json.dumps({
            "alg": "SM2-with-SM3", "signer_id": SM2_DEFAULT_SIGNER_ID.decode(), "key_fp": fp,
            "signature": sig}, sort_keys=True).encode("utf-8"))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """An advisory lock, so that two processes of this node (workers, a CLI)
        never archive at once. Local even when the archive is in a bucket: each
        node has its own chain and its own prefix."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_dir / ".lock", "a+b") as fh:
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
        done = await self.last_seq()
        if done:
            result.deleted_hot += await store.delete_audit_through(done)
        while True:
            records = await store.audit_older_than(older_than_ms, batch)
            if not records:
                return result
            await self._write_segment(records, now)
            result.archived += len(records)
            result.segments += 1
            result.deleted_hot += await store.delete_audit_through(records[-1].seq)
            if len(records) < batch:
                return result

    async def _write_segment(self, records: list[AuditRecord], now: int) -> None:
        manifest = await self.load_manifest()
        lines = []
        for r in records:
            obj = r.fields()
            obj["hash"] = r.hash
            lines.append(chain.canonical(obj))
        data = zstandard.ZstdCompressor(level=10).compress(("\n".join(lines) + "\n").encode())
        first, last = records[0], records[-1]
        name = f"audit-{first.seq:012d}-{last.seq:012d}.jsonl.zst"
        await self.objects.put(name, data)
        manifest["segments"].append({
            "file": name, "first_seq": first.seq, "last_seq": last.seq,
            "first_ts": first.ts, "last_ts": last.ts, "prev": first.fields()["prev"],
            "last_hash": last.hash, "records": len(records), "sm3": sm3_digest(data).hex(),
            "created_at": now,
        })
        await self._write_manifest(manifest, now)

    async def purge(self, retention_days: float, now: int) -> int:
        """Delete segments whose newest record is older than the retention period."""
        with self._exclusive() as mine:
            return await self._purge(retention_days, now) if mine else 0

    async def _purge(self, retention_days: float, now: int) -> int:
        manifest = await self.load_manifest()
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
            await self._write_manifest(manifest, now)
            await self.objects.delete([str(seg["file"]) for seg in dropped])
        return gone

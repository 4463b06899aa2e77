"""Taking a backup: what goes in, the manifest, the checksum files, retention.

A backup is one directory ``<target>/<id>/`` (written as ``<id>.partial`` and
renamed when complete, so a half-written backup is never taken for one), or the
same files as objects under ``s3://bucket/prefix/<id>/``, the manifest written
last (target.py, s3_target.py)::

    manifest.json         clear: id, times, suite, recipient, parts with sizes and digests
    SHA256SUMS, SM3SUMS   of every other file, in ``sha256sum -c`` form
    01-database.sql.zst.sealed   or 01-database.tar.zst.sealed (SQLite files)
    02-files.tar.zst.sealed      file blobs (files.backend local or s3)
    03-data.tar.zst.sealed       the data directory: audit archive and keys, secrets, evidence
    04-etc.tar.zst.sealed        the configuration directory (/etc/tongxin): config, CA, trust

Each part is zstd-compressed, then sealed chunk by chunk (backup/stream.py) under
a key that only the holder of the backup key pair's private half can derive:
the suite's KEM to the recipient's public key, as for the DR seal
(site/sealed.py). The host that takes backups holds the public half only, so a
copy of the backup target, or root on that host later, reads nothing.

The manifest also carries a *sealed index*: the parts' names and digests,
sealed under the backup's key. A manifest edited to drop or swap a part no
longer matches it, and restore refuses before it writes anything.
"""

from __future__ import annotations

import base64
import calendar
import json
import os
import re
import socket
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from tongxin import __version__
from tongxin.backup import mysqldump
from tongxin.backup.stream import Digests, SealingWriter
from tongxin.backup.target import (
    MANIFEST,
    BackupError,
    DirTarget,
    PartFile,
    Reader,
    StillLocked,
    Target,
    Writer,
)
from tongxin.config import Config
from tongxin.crypto.suite import CryptoSuite, get_suite
from tongxin.site.sealed import SealKey

FORMAT = "tongxin-backup/v1"
KDF_INFO = b"tongxin/backup/key/v1\x00"
INDEX_PART = 0xFFFFFFFF  # the sealed index's nonce space, apart from every part's
ID_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}-\d{8}T\d{6}Z")
SQLITE_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal")

Progress = Callable[[str], None]
# Signs the manifest: (SM2 private key of the node's audit trail) -> signature block.
Signer = Callable[[bytes], dict[str, str]]


__all__ = ["BackupError", "create", "list_backups", "prune", "read_manifest", "verify_checksums"]


@dataclass
class PartResult:
    index: int
    name: str
    kind: str  # "sql" or "tar"
    file: str
    plain_bytes: int = 0
    sealed_bytes: int = 0
    sha256: str = ""
    sm3: str = ""
    entries: int = 0
    notes: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "kind": self.kind, "file": self.file,
                "plain_bytes": self.plain_bytes, "sealed_bytes": self.sealed_bytes,
                "sha256": self.sha256, "sm3": self.sm3, "entries": self.entries,
                "notes": self.notes}


def backup_key(suite: CryptoSuite, shared_secret: bytes, backup_id: str) -> bytes:
    return suite.hkdf(shared_secret, suite.aead_key_size, info=KDF_INFO + backup_id.encode())


def index_document(parts: list[dict[str, Any]]) -> bytes:
    """What the sealed index holds: each part's name, file and both digests."""
    rows = [{k: p[k] for k in ("index", "name", "kind", "file", "sha256", "sm3")} for p in parts]
    return json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()


def index_aad(backup_id: str) -> bytes:
    return b"tongxin/backup/index/v1\x00" + backup_id.encode()


def index_nonce() -> bytes:
    return INDEX_PART.to_bytes(4, "big") + (0).to_bytes(8, "big")


def new_backup_id(cfg: Config, now: float) -> str:
    who = re.sub(r"[^a-z0-9.-]+", "-", (cfg.site.name or socket.gethostname()).lower())
    return f"{who.strip('-.')[:40] or 'tongxin'}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def files_dir(cfg: Config) -> Path:
    return Path(cfg.files.local_path) if cfg.files.local_path else cfg.home / "files"


def sqlite_files(cfg: Config) -> list[Path]:
    """The SQLite databases of the data directory (the store's, compliance, key directory)."""
    found = sorted(p for p in cfg.home.glob("*.db") if p.is_file())
    if cfg.storage.backend == "sqlite" and cfg.sqlite_file not in found and cfg.sqlite_file.exists():
        found.append(cfg.sqlite_file)
    return found


class _Part:
    """One part being written: file -> sealing -> zstd; ``sink`` is what producers write to."""

    def __init__(self, writer: Writer, result: PartResult, suite: CryptoSuite, key: bytes,
                 backup_id: str) -> None:
        self.result = result
        self._fh: PartFile = writer.open_part(result.file)  # committed in finish()
        self._sealer = SealingWriter(self._fh, suite, key, backup_id, result.name, result.index)
        self.sink = zstandard.ZstdCompressor(level=6, threads=-1).stream_writer(
            self._sealer, closefd=False)  # type: ignore[arg-type]  # a file object in all but name
        self.plain = 0

    def write(self, data: bytes) -> None:
        self.sink.write(data)
        self.plain += len(data)

    def finish(self) -> PartResult:
        self.sink.close()  # type: ignore[no-untyped-call]  # zstandard stub
        self._sealer.close()
        self._fh.commit()
        self.result.plain_bytes = self.plain
        self.result.sealed_bytes = self._sealer.digests.size
        self.result.sha256, self.result.sm3 = self._sealer.digests.hexdigests()
        return self.result

    def abort(self) -> None:
        self._fh.abort()


class _Counting:
    """A file object for tarfile that counts plaintext bytes into the part."""

    def __init__(self, part: _Part) -> None:
        self._part = part

    def write(self, data: bytes) -> int:
        self._part.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def _tar_tree(tar: tarfile.TarFile, root: Path, arc_root: str,
              skip: Callable[[Path], bool], unreadable: list[str] | None = None) -> int:
    """Add the regular files and directories under ``root``; symlinks and sockets are
    left out (nothing the appliance writes is one). With ``unreadable``, what the
    running user may not read is named there instead of failing the backup."""
    count = 0
    if not root.is_dir():
        return 0

    def readable(p: Path) -> bool:
        if unreadable is None or os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
            return True
        unreadable.append(p.relative_to(root).as_posix())
        return False

    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not skip(d / n) and not (d / n).is_symlink()
                             and readable(d / n))
        rel = d.relative_to(root)
        if rel != Path("."):
            tar.add(d, arcname=f"{arc_root}/{rel.as_posix()}", recursive=False)
        for name in sorted(filenames):
            p = d / name
            if skip(p) or p.is_symlink() or not p.is_file() or not readable(p):
                continue
            tar.add(p, arcname=f"{arc_root}/{p.relative_to(root).as_posix()}", recursive=False)
            count += 1
    return count


@contextmanager
def _tar(part: _Part) -> Iterator[tarfile.TarFile]:
    # PAX: names of any length and UTF-8; mode "w|" streams without seeking back.
    with tarfile.open(fileobj=_Counting(part), mode="w|",  # type: ignore[call-overload]
                      format=tarfile.PAX_FORMAT) as tar:
        yield tar


def _database_part(cfg: Config, part: _Part, progress: Progress) -> None:
    if cfg.storage.backend == "mysql":
        dsn = mysqldump.dsn_with_password(cfg.storage.mysql_dsn)
        progress(f"database: dumping {dsn.database} (mariadb-dump, one snapshot)")
        endpoint = mysqldump.dump(dsn, _Counting(part))  # type: ignore[arg-type]
        part.result.notes.append(f"mariadb-dump of {dsn.database} from {endpoint}")
        part.result.entries = 1
        # With the mysql backend the node may still keep SQLite files of its own
        # (a compliance.db from before); they go into the data part's tar.
        return
    with tempfile.TemporaryDirectory(prefix="tongxin-backup-") as tmp, _tar(part) as tar:
        for db in sqlite_files(cfg):
            copy = Path(tmp) / db.name
            # The online backup API: a consistent copy while the node keeps writing.
            src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()
            tar.add(copy, arcname=f"db/{db.name}", recursive=False)
            part.result.entries += 1
            progress(f"database: {db.name} ({copy.stat().st_size} bytes)")


def _files_part(cfg: Config, part: _Part, progress: Progress) -> None:
    backend = cfg.files.backend
    if backend == "database":
        part.result.notes.append("files.backend database: the blobs are in the database part")
        with _tar(part):
            return
    if backend == "s3":
        from tongxin.backup.s3_blobs import add_bucket

        with _tar(part) as tar:
            part.result.entries = add_bucket(cfg, tar, progress)
        part.result.notes.append(f"objects of s3 bucket {cfg.files.s3_bucket}")
        return
    root = files_dir(cfg)
    with _tar(part) as tar:
        # Only finished files: parts/ and tmp/ hold unfinished uploads, which a
        # client completes or starts again (docs/files-api.md), and would restore
        # as uploads nobody resumes.
        part.result.entries = _tar_tree(tar, root / "blobs", "blobs", lambda _p: False)
    progress(f"files: {part.result.entries} blobs")


def _data_part(cfg: Config, part: _Part, target: Path | None, progress: Progress) -> None:
    home = cfg.home.resolve()
    skip_dirs = {files_dir(cfg).resolve()} | ({target.resolve()} if target else set())

    def skip(p: Path) -> bool:
        r = p.resolve()
        if r in skip_dirs:
            return True
        return p.parent.resolve() == home and p.name.endswith(SQLITE_SUFFIXES)

    with _tar(part) as tar:
        part.result.entries = _tar_tree(tar, home, "data", skip)
    progress(f"data directory: {part.result.entries} files")


def _etc_part(etc: Path, part: _Part, progress: Progress) -> None:
    # Root's own files there (a TLS key readable by root alone) are not the node's to
    # copy; they are named, and the role that wrote them writes them again.
    skipped: list[str] = []
    with _tar(part) as tar:
        part.result.entries = _tar_tree(tar, etc, "etc", lambda _p: False, skipped)
    part.result.notes += [f"not readable, not included: {n}" for n in skipped]
    progress(f"configuration {etc}: {part.result.entries} files"
             + (f" ({len(skipped)} not readable by this user, not included)" if skipped else ""))


def _write_sums(writer: Writer, parts: list[PartResult], manifest: bytes) -> None:
    msha, msm3 = file_digests_bytes(manifest)
    sha = [f"{p.sha256}  {p.file}" for p in parts] + [f"{msha}  {MANIFEST}"]
    sm3 = [f"{p.sm3}  {p.file}" for p in parts] + [f"{msm3}  {MANIFEST}"]
    writer.put("SHA256SUMS", ("\n".join(sha) + "\n").encode("ascii"))
    writer.put("SM3SUMS", ("\n".join(sm3) + "\n").encode("ascii"))


def file_digests_bytes(data: bytes) -> tuple[str, str]:
    d = Digests()
    d.update(data)
    return d.hexdigests()


def signed_bytes(manifest: dict[str, Any]) -> bytes:
    """What the manifest's signature covers: the manifest without it, canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return b"tongxin/backup/manifest/v1\x00" + json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def as_target(target: Target | Path) -> Target:
    return DirTarget(target) if isinstance(target, Path) else target


def create(cfg: Config, target: Target | Path, recipient: SealKey, *, etc_dir: Path | None,
           progress: Progress, signer: Signer | None = None,
           now: Callable[[], float] = time.time) -> dict[str, Any]:
    """Take a backup into ``target``; returns the manifest. Raises :class:`BackupError`
    (or the failing component's error) with what was written removed (``<id>.partial``,
    or the objects under ``<id>/``)."""
    if recipient.suite != cfg.crypto.suite:
        # Not an error of security, but of expectation: an operator who chose the GM
        # suite expects SM4 backups.
        raise BackupError(f"the backup key is a {recipient.suite} key but crypto.suite is "
                          f"{cfg.crypto.suite}; make one with `tongxin backup keygen`")
    suite = get_suite(recipient.suite)
    target = as_target(target)
    target.check(cfg)
    started = now()
    backup_id = new_backup_id(cfg, started)
    writer = target.begin(backup_id)
    encap = suite.kem_encapsulate(recipient.public)
    key = backup_key(suite, encap.shared_secret, backup_id)
    plan: list[tuple[str, str, Callable[[_Part], None]]] = [
        ("database", "sql" if cfg.storage.backend == "mysql" else "tar",
         lambda p: _database_part(cfg, p, progress)),
        ("files", "tar", lambda p: _files_part(cfg, p, progress)),
        ("data", "tar", lambda p: _data_part(cfg, p, target.skip_path(), progress)),
    ]
    if etc_dir is not None:
        plan.append(("etc", "tar", lambda p: _etc_part(etc_dir, p, progress)))
    results: list[PartResult] = []
    try:
        for i, (name, kind, produce) in enumerate(plan, start=1):
            ext = "sql" if kind == "sql" else "tar"
            res = PartResult(i, name, kind, f"{i:02d}-{name}.{ext}.zst.sealed")
            part = _Part(writer, res, suite, key, backup_id)
            progress(f"[{i}/{len(plan)}] {name}")
            try:
                produce(part)
                results.append(part.finish())
            except BaseException:
                part.abort()
                raise
            progress(f"[{i}/{len(plan)}] {name}: {res.plain_bytes} bytes in, "
                     f"{res.sealed_bytes} sealed")
        docs = [r.document() for r in results]
        sealed_index = suite.aead_encrypt(key, index_nonce(), index_document(docs),
                                          index_aad(backup_id))
        finished = now()
        manifest = {
            "format": FORMAT, "id": backup_id, "started_at": _utc(started),
            "finished_at": _utc(finished), "duration_seconds": round(finished - started, 3),
            "tongxin_version": __version__, "site": cfg.site.name,
            "node": cfg.node_id or socket.gethostname(),
            "storage_backend": cfg.storage.backend, "files_backend": cfg.files.backend,
            "suite": suite.name, "recipient": recipient.key_id,
            "kem": base64.b64encode(encap.encapsulated_key).decode(),
            "sealed_index": base64.b64encode(sealed_index).decode(),
            "parts": docs,
        }
        # Sealing to a public key gives secrecy, not origin: whoever holds the
        # public half could make a backup. The node's audit key (pinned by
        # fingerprint in compliance.audit_trusted_keys) says which site made it.
        if signer is not None:
            manifest["signature"] = signer(signed_bytes(manifest))
        raw = json.dumps(manifest, ensure_ascii=False, indent=2).encode() + b"\n"
        _write_sums(writer, results, raw)
        writer.commit(raw)  # the manifest: last, it makes the backup complete
    except BaseException:
        writer.abort()
        raise
    return manifest


def as_reader(backup: Reader | Path) -> Reader:
    from tongxin.backup.target import DirReader

    return DirReader(backup) if isinstance(backup, Path) else backup


def read_manifest(backup: Reader | Path) -> dict[str, Any]:
    source = as_reader(backup)
    return parse_manifest(source.read_bytes(MANIFEST), source.locate(MANIFEST))


def parse_manifest(raw: bytes, path: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise BackupError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"{path} is not a Tongxin backup manifest ({FORMAT!r} expected)")
    if not isinstance(doc.get("id"), str) or not ID_RE.fullmatch(doc["id"]):
        raise BackupError(f"{path}: the backup id is missing or malformed")
    if not isinstance(doc.get("parts"), list) or not doc["parts"]:
        raise BackupError(f"{path} lists no parts")
    return doc


def verify_checksums(backup: Reader | Path, progress: Progress) -> dict[str, Any]:
    """Check SHA256SUMS and SM3SUMS against the files and the manifest (no key needed).
    Returns the manifest."""
    source = as_reader(backup)
    raw = source.read_bytes(MANIFEST)  # read once: what is checked is what is used
    doc = parse_manifest(raw, source.locate(MANIFEST))
    sums: dict[str, dict[str, str]] = {}
    for algo, name in (("sha256", "SHA256SUMS"), ("sm3", "SM3SUMS")):
        try:
            lines = source.read_bytes(name).decode("ascii").splitlines()
        except UnicodeDecodeError as exc:
            raise BackupError(f"{source.locate(name)}: {exc}") from None
        for line in lines:
            digest, _, fname = line.partition("  ")
            sums.setdefault(fname, {})[algo] = digest
    msha, msm3 = file_digests_bytes(raw)
    if sums.get("manifest.json") != {"sha256": msha, "sm3": msm3}:
        raise BackupError("manifest.json does not match SHA256SUMS/SM3SUMS: it was edited or "
                          "damaged")
    for p in doc["parts"]:
        fname = str(p.get("file", ""))
        if "/" in fname or fname.startswith(".") or not fname:
            raise BackupError(f"the manifest names an impossible part file {fname!r}")
        where = source.locate(fname)
        if not source.exists(fname):
            raise BackupError(f"part {where} is missing")
        with source.open(fname) as fh:
            size, sha, sm3 = stream_digests(fh)
        want = sums.get(fname, {})
        if (sha, sm3) != (p.get("sha256"), p.get("sm3")) or want != {"sha256": sha, "sm3": sm3}:
            raise BackupError(f"part {where} does not match its SHA-256/SM3 digests: damaged "
                              "or replaced")
        if size != p.get("sealed_bytes"):
            raise BackupError(f"part {where} is {size} bytes, the manifest says "
                              f"{p.get('sealed_bytes')}")
        progress(f"checksums: {fname} ok (SHA-256 and SM3)")
    return doc


def stream_digests(fh: Any, block: int = 1 << 20) -> tuple[int, str, str]:
    """(size, sha256 hex, sm3 hex) of what a file object holds, read in blocks."""
    d = Digests()
    while data := fh.read(block):
        d.update(data)
    sha, sm3 = d.hexdigests()
    return d.size, sha, sm3


def _taken(backup_id: str) -> str:
    return backup_id.rsplit("-", 1)[1]


def list_backups(target: Target | Path) -> list[str]:
    """The ids of the complete backups in ``target``, oldest first (by the time in their id)."""
    ids = [i for i in as_target(target).complete_ids() if ID_RE.fullmatch(i)]
    return sorted(ids, key=lambda i: (_taken(i), i))


def prune(target: Target | Path, *, keep_days: float, keep_min: int, now: float,
          progress: Progress) -> list[str]:
    """Remove complete backups older than ``keep_days``, always keeping the ``keep_min``
    newest; and what a crashed run left more than a day ago (``.partial`` directories;
    in a bucket, backups without their manifest and unfinished multipart uploads)."""
    target = as_target(target)
    removed: list[str] = []
    backups = list_backups(target)
    candidates = backups[:-keep_min] if keep_min > 0 else backups
    for backup_id in candidates:
        taken = calendar.timegm(time.strptime(_taken(backup_id), "%Y%m%dT%H%M%SZ"))
        if keep_days > 0 and now - taken > keep_days * 86400:
            try:
                target.remove(backup_id, now)
            except StillLocked as exc:
                progress(f"retention: kept {backup_id}, older than {keep_days:g} days but "
                         f"still locked: {exc}")
                continue
            removed.append(backup_id)
            progress(f"retention: removed {backup_id} (older than {keep_days:g} days)")
    for name in target.remove_unfinished(now, lambda i: bool(ID_RE.fullmatch(i))):
        removed.append(name)
        progress(f"retention: removed {name} (an unfinished backup)")
    return removed

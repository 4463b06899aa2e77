"""Restoring a backup into an empty site.

Nothing is written until the whole backup has been checked: both checksum files,
the sealed index against the manifest, every chunk of every part opened and
every tar entry read. A damaged, truncated, edited or foreign backup is refused
with the site unchanged. Then, in order: the database (SQL loaded by the
``mariadb`` client, or the SQLite files), the file blobs, the data directory.

An *empty* site is one with no user account and no message: a fresh
installation whose nodes may have started once (and made their schema and a
few audit records of their start, which the dump's ``DROP TABLE`` replaces).
Restoring over a site in use would merge two histories; it is refused.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import zstandard

from tongxin.backup import mysqldump
from tongxin.backup.archive import (
    BackupError,
    as_reader,
    backup_key,
    files_dir,
    index_aad,
    index_document,
    index_nonce,
    sqlite_files,
    verify_checksums,
)
from tongxin.backup.stream import BackupFormatError, OpenedReader, open_chunks
from tongxin.backup.target import Reader
from tongxin.config import Config
from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite, get_suite
from tongxin.site.sealed import SealKey

Progress = Callable[[str], None]
_ARC_ROOTS = {"database": "db", "files": "blobs", "data": "data", "etc": "etc"}


@dataclass
class Opened:
    source: Reader
    manifest: dict[str, Any]
    suite: CryptoSuite
    key: bytes
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)


def open_backup(backup: Reader | Path, private: SealKey, progress: Progress) -> Opened:
    """Checksums, key, sealed index; raises :class:`BackupError` on any mismatch."""
    source = as_reader(backup)
    doc = verify_checksums(source, progress)
    if doc.get("recipient") != private.key_id:
        raise BackupError(f"this backup was sealed to key {doc.get('recipient')}, not to "
                          f"{private.key_id}: use the backup key pair of that time")
    suite = get_suite(private.suite)
    if doc.get("suite") != suite.name:
        raise BackupError(f"the backup uses suite {doc.get('suite')}, the key {suite.name}")
    assert private.private is not None
    try:
        shared = suite.kem_decapsulate(private.private, base64.b64decode(doc["kem"]))
        key = backup_key(suite, shared, doc["id"])
        index = suite.aead_decrypt(key, index_nonce(), base64.b64decode(doc["sealed_index"]),
                                   index_aad(doc["id"]))
    except (CryptoError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"the backup's key or sealed index does not open ({exc}): not made "
                          "for this key, or edited") from None
    if index != index_document(doc["parts"]):
        raise BackupError("the manifest's parts differ from the sealed index: the manifest "
                          "was edited (a part dropped, added or swapped)")
    opened = Opened(source, doc, suite, key)
    for p in doc["parts"]:
        opened.parts[p["name"]] = p
    return opened


def check_origin(manifest: dict[str, Any], pins: list[str], *,
                 allow_unsigned: bool) -> dict[str, Any]:
    """Who made the backup: the manifest's SM2 signature by a node's audit key.

    A bad signature is refused; an unsigned backup only with ``allow_unsigned``.
    A good signature by a key whose fingerprint is pinned (``pins``: the
    configuration's compliance.audit_trusted_keys, or --trust-key) is trusted;
    one by an unpinned key is reported with its fingerprint, for the operator to
    compare with the site's records, and refused when pins exist.
    """
    from tongxin.backup.archive import signed_bytes
    from tongxin.compliance.keys import fingerprint, is_fingerprint, load_public_key
    from tongxin.crypto import SM2PublicKey
    from tongxin.crypto.errors import CryptoError

    sig = manifest.get("signature")
    if sig is None:
        if not allow_unsigned:
            raise BackupError("the backup's manifest is not signed: its origin cannot be "
                              "checked (--allow-unsigned to restore it anyway)")
        return {"signed": False, "trusted": False, "fingerprint": ""}
    try:
        pub = SM2PublicKey.from_pem(str(sig["public_key"]).encode())
        claimed = str(sig["fingerprint"])
        pub.verify(bytes.fromhex(str(sig["sm2"])), signed_bytes(manifest))
    except (KeyError, TypeError, ValueError, CryptoError) as exc:
        raise BackupError(f"the backup's manifest signature does not verify ({exc}): the "
                          "manifest was edited or the backup forged") from None
    fp = fingerprint(pub)
    if claimed != fp:
        raise BackupError("the backup's signature names another key than the one it carries")
    fingerprints = []
    for pin in pins:
        if is_fingerprint(pin):
            fingerprints.append(pin.lower())
            continue
        try:
            fingerprints.append(fingerprint(load_public_key(Path(pin))))
        except ValueError as exc:
            raise BackupError(f"a pinned audit key does not load: {exc}") from None
    if fingerprints and fp not in fingerprints:
        raise BackupError(f"the backup was signed by audit key {fp}, which is not pinned "
                          "(compliance.audit_trusted_keys or --trust-key)")
    return {"signed": True, "trusted": fp in fingerprints, "fingerprint": fp}


def _plain(opened: Opened, name: str) -> zstandard.ZstdDecompressionReader:
    p = opened.parts[name]
    src = opened.source.open(p["file"])  # closed with the reader
    chunks = open_chunks(src, opened.suite, opened.key, opened.manifest["id"], name,
                         int(p["index"]))

    def closing() -> Iterator[bytes]:
        try:
            yield from chunks
        finally:
            src.close()

    return zstandard.ZstdDecompressor().stream_reader(
        OpenedReader(closing()), read_across_frames=True)  # type: ignore[arg-type]


def _blocks(reader: Any, size: int = 1 << 20) -> Iterator[bytes]:
    while data := reader.read(size):
        yield data


@contextmanager
def _tar(opened: Opened, name: str) -> Iterator[tarfile.TarFile]:
    with _plain(opened, name) as reader, tarfile.open(fileobj=reader, mode="r|") as tar:
        yield tar


def _safe_name(member: tarfile.TarInfo, root: str) -> PurePosixPath:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != root:
        raise BackupError(f"the backup holds an entry outside {root}/: {member.name!r}")
    if not (member.isfile() or member.isdir()):
        raise BackupError(f"the backup holds an entry that is not a file or directory: "
                          f"{member.name!r}")
    return PurePosixPath(*path.parts[1:]) if len(path.parts) > 1 else PurePosixPath(".")


def check_all(opened: Opened, progress: Progress) -> dict[str, list[str]]:
    """Open every part to its end, without writing: each chunk authenticates, each
    tar entry is a safe file or directory. Returns the file names per tar part."""
    names: dict[str, list[str]] = {}
    for name, p in opened.parts.items():
        try:
            if p["kind"] == "sql":
                total = sum(len(b) for b in _blocks(_plain(opened, name)))
                progress(f"checked {name}: {total} bytes of SQL")
                continue
            root = _ARC_ROOTS.get(name)
            if root is None:
                raise BackupError(f"unknown part {name!r}")
            found = []
            with _tar(opened, name) as tar:
                for member in tar:
                    rel = _safe_name(member, root)
                    if member.isfile():
                        found.append(rel.as_posix())
            names[name] = found
            progress(f"checked {name}: {len(found)} files")
        except (BackupFormatError, zstandard.ZstdError, tarfile.TarError) as exc:
            raise BackupError(f"part {name} does not open: {exc}") from None
    return names


# ---- the target must be empty ------------------------------------------------------


def _sqlite_rows(db: Path, table: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # no such table: a schema not made yet
    finally:
        con.close()


def site_in_use(cfg: Config) -> str | None:
    """Why the site is not empty, or None."""
    if cfg.storage.backend == "mysql":
        dsn = mysqldump.dsn_with_password(cfg.storage.mysql_dsn)
        for table in ("users", "messages"):
            try:
                out = mysqldump.query(dsn, f"SELECT COUNT(*) FROM `{table}`")
            except mysqldump.DumpError as exc:
                if "doesn't exist" in str(exc):
                    continue
                raise
            if int(out.strip() or 0):
                return f"the database {dsn.database} has rows in {table}"
    else:
        db = cfg.sqlite_file
        if db.exists():
            for table in ("users", "messages"):
                if _sqlite_rows(db, table):
                    return f"{db} has rows in {table}"
    blobs = files_dir(cfg) / "blobs"
    if cfg.files.backend == "local" and blobs.is_dir() and any(
            f for _d, _s, fs in os.walk(blobs) for f in fs):
        return f"{blobs} holds files"
    if cfg.files.backend == "s3":
        from tongxin.backup.s3_blobs import bucket_holds_files

        return bucket_holds_files(cfg)
    return None


# ---- writing -------------------------------------------------------------------------


def _extract(tar: tarfile.TarFile, root: str, dest: Path, mode_mask: int,
             replaced: list[str] | None = None) -> int:
    count = 0
    for member in tar:
        rel = _safe_name(member, root)
        out = dest / rel
        if member.isdir():
            out.mkdir(mode=0o700, parents=True, exist_ok=True)
            continue
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        src = tar.extractfile(member)
        assert src is not None
        data_fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".restore-")
        try:
            with os.fdopen(data_fd, "wb") as fh:
                for block in _blocks(src):
                    fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, member.mode & mode_mask)
            if replaced is not None and out.exists() and out.read_bytes() != Path(tmp).read_bytes():
                replaced.append(rel.as_posix())
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        count += 1
    return count


def restore(cfg: Config, opened: Opened, *, etc_to: Path | None,
            progress: Progress) -> dict[str, Any]:
    """Write the backup into the site of ``cfg`` (call :func:`check_all` first)."""
    reason = site_in_use(cfg)
    if reason is not None:
        raise BackupError(f"the site is not empty ({reason}); restore goes into an empty "
                          "site only (docs/operations.md, \"Backup and restore\")")
    home = cfg.home
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    result: dict[str, Any] = {"backup": opened.manifest["id"], "replaced": []}
    db = opened.parts["database"]
    if db["kind"] == "sql":
        if cfg.storage.backend != "mysql":
            raise BackupError("the backup is of a mysql-backed site; set storage.backend mysql")
        dsn = mysqldump.dsn_with_password(cfg.storage.mysql_dsn)
        progress(f"database: loading into {dsn.database}")
        mysqldump.load(dsn, _blocks(_plain(opened, "database")))
        result["database"] = f"loaded into {dsn.database}"
    else:
        if cfg.storage.backend != "sqlite":
            raise BackupError("the backup is of a SQLite site; set storage.backend sqlite")
        for old in sqlite_files(cfg):
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{old}{suffix}").unlink(missing_ok=True)
        with _tar(opened, "database") as tar:
            result["database"] = f"{_extract(tar, 'db', home, 0o600)} SQLite files"
    progress(f"database: {result['database']}")
    if cfg.files.backend == "s3":
        from tongxin.backup.s3_blobs import restore_bucket

        with _tar(opened, "files") as tar:
            result["files"] = restore_bucket(cfg, tar, progress)
    else:
        with _tar(opened, "files") as tar:
            result["files"] = _extract(tar, "blobs", files_dir(cfg) / "blobs", 0o644)
    progress(f"files: {result['files']} restored")
    with _tar(opened, "data") as tar:
        result["data"] = _extract(tar, "data", home, 0o700, result["replaced"])
    progress(f"data directory: {result['data']} files"
             + (f" ({len(result['replaced'])} replaced: {', '.join(result['replaced'])})"
                if result["replaced"] else ""))
    if etc_to is not None and "etc" in opened.parts:
        with _tar(opened, "etc") as tar:
            result["etc"] = _extract(tar, "etc", etc_to, 0o700)
        progress(f"configuration: {result['etc']} files into {etc_to} (for reading; the "
                 "Ansible roles write /etc/tongxin)")
    return result

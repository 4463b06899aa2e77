"""``tongxin backup``: encrypted, checksummed backups of a site, and their restore.

keygen   make the backup key pair (the private file stays off the hosts)
show-key print a key file's id and suite (--public-only: refuse a private file)
create   back up the database, file blobs, data directory and configuration into
         a target directory or s3://bucket/prefix, sealed to the public key; then
         apply retention
list     the backups in a target (directory or s3://bucket/prefix)
verify   check a backup's SHA-256 and SM3 digests (no key); with --key, open every part
restore  restore a backup into an empty site (the nodes stopped)

An s3:// target takes its endpoint and credentials from $TONGXIN_BACKUP_S3_*
or the node's files.s3_* settings (backup/s3_target.py), never from the
command line. ``create --lock-days N [--lock-mode compliance|governance]`` (or
$TONGXIN_BACKUP_S3_LOCK_DAYS/_MODE) writes every object of the backup under S3
Object Lock until its start plus N days; ``list`` shows each backup's lock.

create and restore write evidence files (<data_dir>/evidence/backup-*.json,
restore-*.json) that the 等保 report's BR-1 reads, and an audit record
(backup.create, backup.restore). docs/operations.md, "Backup and restore".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tongxin.config import Config

_PROG = "tongxin backup"


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"{_PROG}: {msg}")


def _progress(msg: str) -> None:
    print(f"{_PROG}: {msg}", file=sys.stderr, flush=True)


def _config(args: argparse.Namespace) -> Config:
    from tongxin.cli.main import _config as load

    return load(args)


def _key(path: str, *, need_private: bool) -> Any:
    from tongxin.cli.dr_secrets import _read_json
    from tongxin.site.sealed import SealError, load_key

    try:
        return load_key(_read_json(path, "backup key"), need_private=need_private)
    except SealError as exc:
        raise _fail(f"{path}: {str(exc).replace('DR seal key', 'backup key')}") from None


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _evidence(cfg: Config, kind: str, doc: dict[str, Any]) -> Path:
    folder = cfg.home / "evidence"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = folder / f"{kind}-{stamp}.json"
    tmp = folder / f".{path.name}.tmp"
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _audit(cfg: Config, event: str, outcome: str, **details: Any) -> str:
    """One record in the audit trail; a site whose store cannot be opened (the reason
    the backup failed, perhaps) gets the evidence file only, and says so."""
    import asyncio

    from tongxin.cli.compliance import _cli_actor, _open

    async def run() -> None:
        comp = await _open(cfg)
        try:
            await comp.audit(event, actor=_cli_actor(), outcome=outcome, source="backup",
                             **details)
        finally:
            await comp.close()

    try:
        asyncio.run(run())
    except Exception as exc:  # reported; the evidence file says it too
        return f"not recorded in the audit trail: {exc}"
    return "recorded"


def cmd_keygen(args: argparse.Namespace) -> int:
    from tongxin.cli.dr_secrets import write_key_pair

    try:
        private, public = write_key_pair(args.suite, args.out, "a backup key")
    except SystemExit as exc:
        raise _fail(str(exc)) from None
    _progress(f"keep {private} off the hosts (offline, with the restore runbook); "
              f"the backup host needs only {public}")
    return 0


def cmd_show_key(args: argparse.Namespace) -> int:
    from tongxin.cli.dr_secrets import _read_json

    doc = _read_json(args.file, "backup key")
    key = _key(args.file, need_private=isinstance(doc, dict) and "private" in doc)
    if args.public_only and key.private is not None:
        raise _fail(f"{args.file} holds the private key; only the public half (NAME.pub) "
                    "goes to a host")
    print(json.dumps({"key_id": key.key_id, "suite": key.suite,
                      "private": key.private is not None}))
    return 0


def _signer(cfg: Config) -> Any:
    """The manifest's signer: this node's audit key (SM2), as the audit trail's heads."""
    import asyncio

    from tongxin.cli.compliance import _open
    from tongxin.compliance.keys import fingerprint

    async def load() -> Any:
        comp = await _open(cfg)
        try:
            return comp.keys.signing_key()
        finally:
            await comp.close()

    key = asyncio.run(load())
    pub = key.public_key()
    fp, pem = fingerprint(pub), pub.to_pem().decode()

    def sign(data: bytes) -> dict[str, str]:
        return {"algorithm": "SM2-SM3", "fingerprint": fp, "public_key": pem,
                "sm2": key.sign(data).hex()}

    return sign


def cmd_create(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from tongxin.backup.archive import create, file_digests_bytes, prune
    from tongxin.backup.target import MANIFEST, BackupError, open_target

    cfg = _config(args)
    if cfg.site.role != "active":
        raise _fail("this node is on standby; back up from a node of the serving site")
    recipient = _key(args.recipient, need_private=False)
    etc = None if args.no_etc else Path(args.etc or Path(args.config or ".").resolve().parent)
    started = time.time()
    lock = _lock(args)
    with ExitStack() as stack:
        try:
            target = stack.enter_context(open_target(args.to, cfg))
            if lock is not None:
                from tongxin.backup.s3_target import S3Target

                if not isinstance(target, S3Target):
                    raise BackupError("an object lock (--lock-days, "
                                      "$TONGXIN_BACKUP_S3_LOCK_DAYS) is for s3:// targets only")
                target.require_lock(lock)
                _progress(f"object lock: {lock.mode} for {lock.days} days on every object")
            manifest = create(cfg, target, recipient, etc_dir=etc, progress=_progress,
                              signer=_signer(cfg))
        except Exception as exc:  # every failure is evidence, whatever failed
            doc = {"ok": False, "started_at": _utc(started), "finished_at": _utc(time.time()),
                   "target": args.to, "error": str(exc)}
            path = _evidence(cfg, "backup", doc)
            audit = _audit(cfg, "backup.create", "failed", target=args.to, error=str(exc))
            _progress(f"FAILED: {exc} (evidence {path}; {audit})")
            return 1
        where = target.location(manifest["id"])
        manifest_sha256 = file_digests_bytes(
            target.reader(manifest["id"]).read_bytes(MANIFEST))[0]
        lock_seen = target.lock_of(manifest["id"])  # as the store has it
        removed = prune(target, keep_days=args.keep_days, keep_min=args.keep_min,
                        now=time.time(), progress=_progress)
    size = sum(p["sealed_bytes"] for p in manifest["parts"])
    doc = {"ok": True, "id": manifest["id"], "started_at": manifest["started_at"],
           "finished_at": manifest["finished_at"],
           "duration_seconds": manifest["duration_seconds"], "target": where,
           "bytes": size, "suite": manifest["suite"], "recipient": manifest["recipient"],
           "signed_by": manifest["signature"]["fingerprint"],
           "manifest_sha256": manifest_sha256,
           "parts": {p["name"]: p["sealed_bytes"] for p in manifest["parts"]},
           "pruned": removed}
    if lock is not None:
        doc["lock"] = {"days": lock.days, **(lock_seen or {"mode": lock.mode})}
    path = _evidence(cfg, "backup", doc)
    audit = _audit(cfg, "backup.create", "ok", target=where, bytes=size,
                   backup_id=manifest["id"], manifest_sha256=doc["manifest_sha256"])
    _progress(f"done: {where} ({size} bytes, {manifest['duration_seconds']} s); "
              f"evidence {path}; {audit}")
    print(json.dumps(doc, ensure_ascii=False, indent=2))
    return 0


def _lock(args: argparse.Namespace) -> Any:
    """The object lock asked for (flags first, then $TONGXIN_BACKUP_S3_LOCK_*), or None."""
    from tongxin.backup.s3_target import ObjectLock
    from tongxin.backup.target import BackupError

    try:
        lock = ObjectLock.of(args.lock_days, args.lock_mode)
    except BackupError as exc:
        raise _fail(str(exc)) from None
    if lock is not None and 0 < args.keep_days < lock.days:
        _progress(f"note: the object lock ({lock.days} days) outlasts --keep-days "
                  f"({args.keep_days:g}): retention keeps each backup until its lock ends")
    return lock


def _s3_config(args: argparse.Namespace, *specs: str) -> Config | None:
    """The configuration, where an s3:// target needs it for its endpoint."""
    from tongxin.backup.target import is_s3

    return _config(args) if any(is_s3(s) for s in specs) else None


def cmd_list(args: argparse.Namespace) -> int:
    from tongxin.backup.archive import BackupError, list_backups, read_manifest
    from tongxin.backup.target import open_target

    rows: list[dict[str, Any]] = []
    try:
        with open_target(args.to, _s3_config(args, args.to)) as target:
            if args.require_lock:
                _check_lock(target)
            for backup_id in list_backups(target):
                try:
                    m = read_manifest(target.reader(backup_id))
                except BackupError as exc:
                    rows.append({"id": backup_id, "error": str(exc)})
                    continue
                row = {"id": backup_id, "finished_at": m.get("finished_at"),
                       "bytes": sum(int(p.get("sealed_bytes", 0)) for p in m["parts"]),
                       "suite": m.get("suite"), "recipient": m.get("recipient"),
                       "site": m.get("site"), "storage_backend": m.get("storage_backend"),
                       "location": target.location(backup_id)}
                if m["id"] != backup_id:  # copied or renamed: the manifest keeps its own
                    row["manifest_id"] = m["id"]
                lock = target.lock_of(backup_id)
                if lock is not None:
                    row["lock"] = lock
                rows.append(row)
    except BackupError as exc:
        raise _fail(str(exc)) from None
    print(json.dumps(rows, ensure_ascii=False, indent=2))
    return 0


def _check_lock(target: Any) -> None:
    """Refuse a target that cannot take locked backups (a bucket without Object Lock)."""
    from tongxin.backup.s3_target import S3Target
    from tongxin.backup.target import BackupError

    if not isinstance(target, S3Target):
        raise BackupError(f"{target.where}: an object lock is for s3:// targets only")
    if not target.lock_enabled():
        raise BackupError(f"the bucket s3://{target.bucket} has no Object Lock; it can only be "
                          "enabled when a bucket is created (S3 ObjectLockEnabledForBucket, "
                          "`mc mb --with-lock`)")


def cmd_verify(args: argparse.Namespace) -> int:
    from tongxin.backup.archive import BackupError, verify_checksums
    from tongxin.backup.restore import check_all, open_backup
    from tongxin.backup.target import open_reader

    try:
        with open_reader(args.backup, _s3_config(args, args.backup, args.source),
                         within=args.source) as source:
            if args.key:
                opened = open_backup(source, _key(args.key, need_private=True), _progress)
                names = check_all(opened, _progress)
                out: dict[str, Any] = {"ok": True, "id": opened.manifest["id"], "opened": True,
                                       "files": {k: len(v) for k, v in names.items()}}
            else:
                doc = verify_checksums(source, _progress)
                out = {"ok": True, "id": doc["id"], "opened": False}
    except BackupError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False))
        _progress(f"FAILED: {exc}")
        return 1
    print(json.dumps(out, ensure_ascii=False, indent=2))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from tongxin.backup import mysqldump
    from tongxin.backup.archive import BackupError
    from tongxin.backup.target import open_reader

    cfg = _config(args)
    if cfg.site.role != "active":
        raise _fail("this node is on standby; restore into a site set to serve (site.role active)")
    started = time.time()
    try:
        with open_reader(args.backup, cfg, within=args.source) as source:
            return _restore(args, cfg, source, started)
    except (BackupError, mysqldump.DumpError) as exc:
        _progress(f"FAILED: {exc}")
        print(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False))
        return 1


def _restore(args: argparse.Namespace, cfg: Config, source: Any, started: float) -> int:
    """Check, then restore (raises BackupError or DumpError, caught by cmd_restore)."""
    from tongxin.backup.archive import BackupError
    from tongxin.backup.restore import check_all, check_origin, open_backup, restore, site_in_use
    from tongxin.compliance.keys import parse_pins

    opened = open_backup(source, _key(args.key, need_private=True), _progress)
    pins = parse_pins(cfg.compliance.audit_trusted_keys) + list(args.trust_key)
    origin = check_origin(opened.manifest, pins, allow_unsigned=args.allow_unsigned)
    _progress("origin: " + (f"signed by audit key {origin['fingerprint']}, "
                            + ("pinned" if origin["trusted"] else
                               "NOT pinned: compare it with the site's records")
                            if origin["signed"] else "unsigned (--allow-unsigned)"))
    names = check_all(opened, _progress)
    if args.check:
        reason = site_in_use(cfg)
        if reason is not None:
            raise BackupError(f"the site is not empty ({reason}); restore goes into an "
                              "empty site only")
        print(json.dumps({"ok": True, "checked": True, "backup": opened.manifest["id"],
                          "origin": origin,
                          "files": {k: len(v) for k, v in names.items()}}))
        _progress("check: the backup opens whole and the site is empty; nothing written")
        return 0
    result = restore(cfg, opened, etc_to=Path(args.etc_to) if args.etc_to else None,
                     progress=_progress)
    finished = time.time()
    doc = {"ok": True, "backup": opened.manifest["id"],
           "backup_finished_at": opened.manifest.get("finished_at"),
           "started_at": _utc(started), "finished_at": _utc(finished),
           "duration_seconds": round(finished - started, 3), "origin": origin, **result}
    path = _evidence(cfg, "restore", doc)
    doc["audit"] = _audit(cfg, "backup.restore", "ok", backup_id=opened.manifest["id"],
                          duration_seconds=doc["duration_seconds"])
    _progress(f"done in {doc['duration_seconds']} s; evidence {path}; {doc['audit']}")
    print(json.dumps(doc, ensure_ascii=False, indent=2))
    return 0


def add_commands(sub: Any, common: Any) -> None:
    from tongxin.crypto.suite import SUITE_NAMES

    b = sub.add_parser("backup", help="encrypted backups of a site and their restore "
                       "(keygen / create / list / verify / restore)")
    bs = b.add_subparsers(dest="backup_action", required=True)

    k = bs.add_parser("keygen", help="make the backup key pair: OUT.key (private, keep it "
                      "off the hosts) and OUT.pub")
    k.add_argument("--out", required=True, help="path prefix of the two files")
    k.add_argument("--suite", choices=SUITE_NAMES, default="gm")
    k.set_defaults(func=cmd_keygen)

    sk = bs.add_parser("show-key", help="print a backup key file's id and suite")
    sk.add_argument("file")
    sk.add_argument("--public-only", action="store_true",
                    help="refuse a file that holds the private key")
    sk.set_defaults(func=cmd_show_key)

    c = bs.add_parser("create", help="take a backup into a target directory or s3://bucket/prefix")
    common(c)
    c.add_argument("--to", required=True, help="target directory (another disk or a mounted "
                   "backup volume; not inside the data directory), or s3://bucket/prefix "
                   "(endpoint and keys: $TONGXIN_BACKUP_S3_* or files.s3_*)")
    c.add_argument("--recipient", required=True, help="the backup key's public file (OUT.pub)")
    c.add_argument("--etc", default="", help="configuration directory to include (default: "
                   "the directory of --config)")
    c.add_argument("--no-etc", action="store_true", help="leave the configuration out")
    c.add_argument("--keep-days", type=float, default=30.0,
                   help="remove backups older than this many days after a good one (0: never)")
    c.add_argument("--keep-min", type=int, default=3,
                   help="always keep this many newest backups, whatever their age")
    c.add_argument("--lock-days", type=int, default=None, metavar="N",
                   help="s3:// only: write every object under S3 Object Lock until the "
                   "backup's start plus N days (at least 1; the bucket must have Object "
                   "Lock); default $TONGXIN_BACKUP_S3_LOCK_DAYS, else no lock")
    c.add_argument("--lock-mode", choices=("compliance", "governance"), default=None,
                   help="the lock's mode: compliance (default; no one can shorten or remove "
                   "it) or governance (users with s3:BypassGovernanceRetention can); default "
                   "$TONGXIN_BACKUP_S3_LOCK_MODE, else compliance")
    c.set_defaults(func=cmd_create)

    backup_help = ("the backup's directory or s3://bucket/prefix/<id>; with --from, "
                   "its id there")
    from_help = "the target that holds the backup (directory or s3://bucket/prefix)"

    ls = bs.add_parser("list", help="the complete backups in a target")
    common(ls)
    ls.add_argument("--to", required=True, help="target directory or s3://bucket/prefix")
    ls.add_argument("--require-lock", action="store_true",
                    help="fail unless the target is a bucket with S3 Object Lock (what "
                    "create --lock-days needs)")
    ls.set_defaults(func=cmd_list)

    v = bs.add_parser("verify", help="check a backup's digests; with --key, open every part")
    common(v)
    v.add_argument("backup", help=backup_help)
    v.add_argument("--from", dest="source", default="", metavar="TARGET", help=from_help)
    v.add_argument("--key", default="", help="the backup key's private file (OUT.key)")
    v.set_defaults(func=cmd_verify)

    r = bs.add_parser("restore", help="restore a backup into an empty site (nodes stopped)")
    common(r)
    r.add_argument("backup", help=backup_help)
    r.add_argument("--from", dest="source", default="", metavar="TARGET", help=from_help)
    r.add_argument("--key", required=True, help="the backup key's private file (OUT.key)")
    r.add_argument("--trust-key", action="append", default=[], metavar="FINGERPRINT",
                   help="an audit key fingerprint the backup's signature may come from, "
                   "beside compliance.audit_trusted_keys (repeatable)")
    r.add_argument("--allow-unsigned", action="store_true",
                   help="restore a backup whose manifest carries no signature")
    r.add_argument("--check", action="store_true",
                   help="check the backup whole and that the site is empty; write nothing")
    r.add_argument("--etc-to", default="", help="also write the backed-up configuration "
                   "directory here, for reading")
    r.set_defaults(func=cmd_restore)

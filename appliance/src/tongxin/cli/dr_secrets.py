"""``tongxin dr-secrets``: the DR site's sealed copy of the installation's secrets.

keygen   make the DR operators' key pair (the private file stays off the hosts)
seal     seal a directory of secrets (and the CA's) to the public key
show     print a sealed document's clear header (no key needed)
unseal   open a sealed document with the private key and write one part's files

The Ansible role appliance seals on the controller and copies the document to
the standby nodes; promotion (dr-failover.yml, dr-switchover.yml) unseals it
on each node. docs/security.md, "The DR site and its secrets".
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
from pathlib import Path
from typing import Any

from tongxin.site.sealed import (
    PARTS,
    SealError,
    generate_key,
    header,
    is_current,
    load_key,
    part,
    seal,
    unseal,
)

_PROG = "tongxin dr-secrets"
_INPUT_LIMIT = 4 * 1024 * 1024


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"{_PROG}: {msg}")


def _read_json(path: str, what: str) -> Any:
    try:
        if path == "-":
            text = sys.stdin.read(_INPUT_LIMIT + 1)
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(_INPUT_LIMIT + 1)
    except OSError as exc:
        raise _fail(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(text) > _INPUT_LIMIT:
        raise _fail(f"{what} {path} is larger than {_INPUT_LIMIT} bytes")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _fail(f"{what} {path} is not JSON: {exc}") from None


def _write_new(path: Path, data: bytes, *, replace: bool, uid: int = -1, gid: int = -1) -> None:
    """0600, never through a symlink; an existing file is kept unless ``replace``."""
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        target = path
    else:
        target = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if uid >= 0 or gid >= 0:
            os.chown(target, uid, gid, follow_symlinks=False)
        if replace:
            os.replace(target, path)
    except BaseException:
        if replace:
            target.unlink(missing_ok=True)
        raise


def write_key_pair(suite: str, out: str, what: str) -> tuple[Path, Path]:
    """Make a seal key pair and write OUT.key (0600, never over an existing file) and
    OUT.pub; print the key's id. ``what`` names the key in the refusal."""
    key = generate_key(suite)
    private, public = Path(out + ".key"), Path(out + ".pub")
    for p in (private, public):
        if p.exists() or p.is_symlink():
            raise SystemExit(f"{p} exists; {what} is never overwritten (move it away first)")
    public.parent.mkdir(parents=True, exist_ok=True)
    _write_new(private, (json.dumps(key.private_document(), indent=2) + "\n").encode(),
               replace=False)
    public.write_text(json.dumps(key.public_document(), indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"key_id": key.key_id, "suite": key.suite, "private": str(private),
                      "public": str(public)}, indent=2))
    return private, public


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        private, public = write_key_pair(args.suite, args.out, "a DR seal key")
    except SystemExit as exc:
        raise _fail(str(exc)) from None
    print(f"{_PROG}: keep {private} off every host (offline media, two DR operators); "
          f"the inventory needs only {public}", file=sys.stderr)
    return 0


def _files_from_dirs(secrets_dir: Path, ca_dir: Path | None,
                     only: list[str] | None = None) -> dict[str, bytes]:
    """secrets/<f> for the files directly in ``secrets_dir``, ca/<f> for those in ``ca_dir``.

    ``only`` names the secrets files to take: other roles keep their own
    files in the same directory and write them later in a run, and a seal
    that took whatever was there would change on the next run.
    """
    files: dict[str, bytes] = {}
    for prefix, where in (("secrets", secrets_dir), ("ca", ca_dir)):
        if where is None:
            continue
        if not where.is_dir():
            raise _fail(f"{where} is not a directory")
        for f in sorted(where.iterdir()):
            if prefix == "secrets" and only is not None and f.name not in only:
                continue
            if f.is_file() and not f.name.startswith("."):
                files[f"{prefix}/{f.name}"] = f.read_bytes()
    if only is not None:
        missing = sorted(n for n in only if f"secrets/{n}" not in files)
        if missing:
            raise _fail(f"{secrets_dir} has no {', '.join(missing)}")
    return files


def cmd_seal(args: argparse.Namespace) -> int:
    recipient = load_key(_read_json(args.public_key, "key file"), need_private=False)
    current: object = None
    files = _files_from_dirs(Path(args.from_dir), Path(args.ca_dir) if args.ca_dir else None,
                             args.only)
    if args.current == "-":
        text = sys.stdin.read(_INPUT_LIMIT + 1).strip()
        try:
            current = json.loads(text) if text else None
        except ValueError as exc:
            raise _fail(f"the current sealed document on stdin is not JSON: {exc}") from None
    elif args.current:
        current = _read_json(args.current, "sealed document") if Path(args.current).exists() else None
    if current is not None and is_current(current, recipient, files):
        out = current
        print(f"{_PROG}: the sealed copy is current (key {recipient.key_id}); kept",
              file=sys.stderr)
    else:
        out = seal(recipient, files)
        print(f"{_PROG}: sealed {len(files)} files to key {recipient.key_id}", file=sys.stderr)
    text = json.dumps(out, indent=2) + "\n"
    if args.out in ("", "-"):
        sys.stdout.write(text)
    else:
        _write_new(Path(args.out), text.encode(), replace=True)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(json.dumps(header(_read_json(args.sealed, "sealed document")), indent=2))
    return 0


def _owner(spec: str) -> tuple[int, int]:
    if not spec:
        return -1, -1
    try:
        pw = pwd.getpwnam(spec)
    except KeyError:
        raise _fail(f"no such user {spec!r}") from None
    return pw.pw_uid, pw.pw_gid


def cmd_unseal(args: argparse.Namespace) -> int:
    key = load_key(_read_json(args.key, "key file"), need_private=True)
    files = part(unseal(key, _read_json(args.sealed, "sealed document")), args.part)
    target = Path(args.to_dir)
    if not target.is_dir():
        raise _fail(f"{target} is not a directory")
    uid, gid = _owner(args.owner)
    written, kept = [], []
    for name, data in sorted(files.items()):
        path = target / name
        if (path.exists() or path.is_symlink()) and not args.replace:
            kept.append(name)
            continue
        _write_new(path, data, replace=args.replace, uid=uid, gid=gid)
        written.append(name)
    print(json.dumps({"key_id": key.key_id, "part": args.part, "written": written,
                      "kept": kept}, indent=2))
    return 0


def _run(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except SealError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:
            raise _fail(f"{exc.filename or ''}: {exc.strerror}") from None
    return wrapped


def add_commands(sub: Any) -> None:
    p = sub.add_parser("dr-secrets", help="the DR site's sealed copy of the installation's "
                       "secrets: keygen, seal, show, unseal")
    ds = p.add_subparsers(dest="dr_action", required=True)

    k = ds.add_parser("keygen", help="make the DR operators' seal key pair")
    k.add_argument("--suite", default="gm", choices=["gm", "international"],
                   help="SM2 (gm, default) or X25519 (international)")
    k.add_argument("--out", required=True, help="writes OUT.key (private, 0600) and OUT.pub")
    k.set_defaults(func=_run(cmd_keygen))

    s = ds.add_parser("seal", help="seal secrets to the DR public key (JSON document on stdout)")
    s.add_argument("--public-key", required=True, help="the .pub file from keygen")
    s.add_argument("--from-dir", required=True,
                   help="seal the files of DIR as the node's secrets (secrets/)")
    s.add_argument("--only", action="append", metavar="NAME",
                   help="seal only this file of --from-dir (repeat; default: every file)")
    s.add_argument("--ca-dir", default="",
                   help="with --from-dir: also seal the files of DIR as the internal CA's (ca/)")
    s.add_argument("--current", default="",
                   help="an existing sealed document ('-': stdin, empty for none): printed "
                        "unchanged when it already seals the same files to the same key")
    s.add_argument("--out", default="-", help="write here instead of stdout (replaced atomically)")
    s.set_defaults(func=_run(cmd_seal))

    sh = ds.add_parser("show", help="a sealed document's clear header")
    sh.add_argument("sealed")
    sh.set_defaults(func=_run(cmd_show))

    u = ds.add_parser("unseal", help="open a sealed document with the private key")
    u.add_argument("--key", required=True, help="the .key file from keygen ('-': stdin)")
    u.add_argument("--part", required=True, choices=list(PARTS),
                   help="secrets: the node's shared secrets; ca: the internal CA's files")
    u.add_argument("--to-dir", required=True, help="write the part's files here (0600)")
    u.add_argument("--owner", default="", help="chown the written files to this user")
    u.add_argument("--replace", action="store_true",
                   help="replace files that exist (default: keep them and say so)")
    u.add_argument("sealed", help="the sealed document ('-': stdin)")
    u.set_defaults(func=_run(cmd_unseal))

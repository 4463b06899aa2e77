"""``tongxin keys org-root | escrow-key | escrow-sign``: the organisation root and the escrow
key it vouches for (docs/e2ee.md section 10.1; operator steps in docs/security.md).

    keys org-root --out DIR       root signing key pair: DIR/org-root.key (0600) and
                                  DIR/org-root.pem, prints the root's fingerprint
    keys escrow-key --out DIR     escrow KEM key pair: DIR/escrow.key (0600), DIR/escrow.pem
    keys escrow-sign --root-key FILE --escrow-public-key FILE --sequence N
                     [--not-before ISO-8601] --out FILE
                                  the root's statement for that escrow key (the node's
                                  e2ee.escrow_statement_file)

These run offline, on the machine that keeps the root's private key: they read and write
files only, so the root key never has to be on a node (a node that held it could vouch for
a key of its own). Existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite, KeyPair, get_suite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee import escrow_trust
from tongxin.e2ee.errors import E2EEError

ACTIONS = ("org-root", "escrow-key", "escrow-sign")


class _Exists(Exception):
    pass


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (a private key is never readable by
    others, not even for a moment) and refuse to replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise _Exists(f"{path} exists; not overwriting it") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_pair(out: Path, stem: str, pair: KeyPair) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, pub = out / f"{stem}.key", out / f"{stem}.pem"
    for p in (key, pub):
        if p.exists():
            raise _Exists(f"{p} exists; not overwriting it")
    _write_new(key, escrow_trust.pem(pair.private_key, "PRIVATE KEY"), 0o600)
    _write_new(pub, escrow_trust.pem(pair.public_key, "PUBLIC KEY"), 0o644)
    return key, pub


def _not_before(text: str | None) -> int:
    if not text:
        return int(datetime.now(UTC).timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"--not-before: not an ISO 8601 time: {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _sign(suite: CryptoSuite, args: argparse.Namespace) -> int:
    if not (args.root_key and args.escrow_public_key and args.sequence and args.out):
        print("tongxin: escrow-sign needs --root-key, --escrow-public-key, --sequence and "
              "--out", file=sys.stderr)
        return 2
    root_private = escrow_trust.key_bytes(Path(args.root_key).read_bytes())
    root_public = escrow_trust.key_bytes(Path(args.root_public_key).read_bytes()) \
        if args.root_public_key else None
    if root_public is None:
        sibling = Path(args.root_key).with_suffix(".pem")
        if not sibling.exists():
            print(f"tongxin: --root-public-key is needed ({sibling} does not exist)",
                  file=sys.stderr)
            return 2
        root_public = escrow_trust.key_bytes(sibling.read_bytes())
    escrow_public = escrow_trust.key_bytes(Path(args.escrow_public_key).read_bytes())
    st = escrow_trust.sign(suite, root_private, root_public, escrow_public,
                           _not_before(args.not_before), args.sequence)
    _write_new(Path(args.out), st.to_json().encode(), 0o644)
    print(f"signed escrow key {st.key_id} (suite {st.suite}, statement {st.sequence}) with "
          f"organisation root {st.root_key_id}; wrote {args.out}")
    return 0


def run(args: argparse.Namespace, suite_name: str) -> int:
    try:
        suite = get_suite(args.suite or suite_name)
        if args.action == "escrow-sign":
            return _sign(suite, args)
        if not args.out:
            print(f"tongxin: {args.action} needs --out DIR", file=sys.stderr)
            return 2
        if args.action == "org-root":
            pair = suite.generate_signing_keypair()
            key, pub = _write_pair(Path(args.out), "org-root", pair)
            print(f"organisation root ({suite.name}): private key {key} (keep it offline), "
                  f"public key {pub}")
            print(f"fingerprint: {escrow_trust.root_key_id(suite, pair.public_key)}")
            return 0
        pair = suite.generate_kem_keypair()
        key, pub = _write_pair(Path(args.out), "escrow", pair)
        print(f"escrow key {enc.escrow_key_id(suite, pair.public_key)} ({suite.name}): "
              f"private key {key}, public key {pub}; sign it with `tongxin keys escrow-sign`")
        return 0
    except _Exists as exc:
        print(f"tongxin: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, CryptoError, E2EEError) as exc:
        print(f"tongxin: {args.action}: {exc}", file=sys.stderr)
        return 1


def add_arguments(k: argparse.ArgumentParser) -> None:
    g = k.add_argument_group("org-root, escrow-key, escrow-sign (offline)")
    g.add_argument("--suite", choices=["gm", "international"], default=None,
                   help="crypto suite of the keys (default crypto.suite of the configuration)")
    g.add_argument("--out", default="",
                   help="org-root, escrow-key: directory for the pair; escrow-sign: the "
                   "statement file")
    g.add_argument("--root-key", default="", help="escrow-sign: the root's private key file")
    g.add_argument("--root-public-key", default="",
                   help="escrow-sign: the root's public key (default: the .pem beside --root-key)")
    g.add_argument("--escrow-public-key", default="",
                   help="escrow-sign: the escrow public key to vouch for")
    g.add_argument("--sequence", type=int, default=0,
                   help="escrow-sign: statement number, one more than the last one signed")
    g.add_argument("--not-before", default=None,
                   help="escrow-sign: ISO 8601 time from which clients use the key (default now)")

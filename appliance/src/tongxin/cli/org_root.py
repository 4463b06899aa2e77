"""``tongxin keys org-root | escrow-key | escrow-sign``: the organisation root and the escrow
key it vouches for (docs/e2ee.md section 10.1; operator steps in docs/security.md).

    keys org-root --out DIR       root signing key pair: DIR/org-root.key (0600) and
                                  DIR/org-root.pem, prints the root's fingerprint
    keys escrow-key --out DIR     escrow KEM key pair: DIR/escrow.key (0600), DIR/escrow.pem
    keys escrow-sign --root-key FILE --escrow-public-key FILE --sequence N
                     [--not-before ISO-8601] --out FILE
                                  the root's statement for that escrow key (the node's
                                  e2ee.escrow_statement_file)
    keys escrow-split --escrow-key FILE --escrow-public-key FILE [--threshold K]
                      [--shares N] --out DIR
                                  the escrow private key sealed (DIR/escrow.sealed.json, the
                                  node's e2ee.escrow_sealed_key_file) and split into N shares
                                  (DIR/escrow-share-I.txt, 0600), any K of which open it

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

ACTIONS = ("org-root", "escrow-key", "escrow-sign", "escrow-split")


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


def _split(suite: CryptoSuite, args: argparse.Namespace) -> int:
    from tongxin.compliance import escrow_shares

    if not (args.escrow_key and args.escrow_public_key and args.out):
        print("tongxin: escrow-split needs --escrow-key, --escrow-public-key and --out",
              file=sys.stderr)
        return 2
    private = escrow_trust.key_bytes(Path(args.escrow_key).read_bytes())
    public = escrow_trust.key_bytes(Path(args.escrow_public_key).read_bytes())
    encap = suite.kem_encapsulate(public)
    if suite.kem_decapsulate(private, encap.encapsulated_key) != encap.shared_secret:
        print("tongxin: escrow-split: the private key is not the public key's pair",
              file=sys.stderr)
        return 1
    key_id = enc.escrow_key_id(suite, public)
    sealed, shares = escrow_shares.split(suite, private, key_id, args.threshold, args.shares)
    # Any K of them must open it before anything is written (and the key is destroyed).
    k = args.threshold
    for subset in (shares[:k], shares[-k:]):
        if escrow_shares.combine(suite, sealed, subset) != private:
            raise RuntimeError("the shares do not open the sealed key")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = [out / "escrow.sealed.json"] + [out / f"escrow-share-{s.index}.txt" for s in shares]
    for p in paths:
        if p.exists():
            raise _Exists(f"{p} exists; not overwriting it")
    _write_new(paths[0], sealed.to_json().encode(), 0o600)
    for p, s in zip(paths[1:], shares, strict=True):
        _write_new(p, f"{s}\n".encode(), 0o600)
    print(f"sealed escrow key {key_id} in {paths[0]}; {len(shares)} shares, any {k} open it: "
          + ", ".join(str(p) for p in paths[1:]))
    print("hand each share to its holder (the security administrator, the auditor), then "
          f"destroy {args.escrow_key}")
    return 0


def run(args: argparse.Namespace, suite_name: str) -> int:
    try:
        suite = get_suite(args.suite or suite_name)
        if args.action == "escrow-sign":
            return _sign(suite, args)
        if args.action == "escrow-split":
            return _split(suite, args)
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
    except (OSError, ValueError, CryptoError, E2EEError, RuntimeError) as exc:
        print(f"tongxin: {args.action}: {exc}", file=sys.stderr)
        return 1


def add_arguments(k: argparse.ArgumentParser) -> None:
    g = k.add_argument_group("org-root, escrow-key, escrow-sign, escrow-split (offline)")
    g.add_argument("--suite", choices=["gm", "international"], default=None,
                   help="crypto suite of the keys (default crypto.suite of the configuration)")
    g.add_argument("--out", default="",
                   help="org-root, escrow-key: directory for the pair; escrow-sign: the "
                   "statement file")
    g.add_argument("--root-key", default="", help="escrow-sign: the root's private key file")
    g.add_argument("--root-public-key", default="",
                   help="escrow-sign: the root's public key (default: the .pem beside --root-key)")
    g.add_argument("--escrow-public-key", default="",
                   help="escrow-sign, escrow-split: the escrow public key")
    g.add_argument("--escrow-key", default="", help="escrow-split: the escrow private key")
    g.add_argument("--threshold", type=int, default=2,
                   help="escrow-split: shares needed to open the key (at least 2)")
    g.add_argument("--shares", type=int, default=2, help="escrow-split: shares made")
    g.add_argument("--sequence", type=int, default=0,
                   help="escrow-sign: statement number, one more than the last one signed")
    g.add_argument("--not-before", default=None,
                   help="escrow-sign: ISO 8601 time from which clients use the key (default now)")

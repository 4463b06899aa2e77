"""``tongxin bundle``: sign and verify the offline install bundle (see docs/operations.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tongxin.bundle.manifest import (
    BundleError,
    Missing,
    build_manifest,
    load_or_create_signing_key,
    load_public_key,
    sign_manifest,
    verify_bundle,
)
from tongxin.bundle.pack import pack_directory
from tongxin.compliance.keys import fingerprint
from tongxin.crypto import sm2_available, sm2_unavailable_reason


def _read_missing(path: Path | None) -> list[Missing]:
    """Lines ``component<TAB>arch<TAB>name<TAB>reason`` (written by bundle.sh)."""
    if path is None or not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            raise BundleError(f"{path}:{n}: expected 4 tab-separated fields, got {len(parts)}")
        out.append(Missing(*parts))
    return out


def _progress(label: str) -> object:
    step = 0

    def report(done: int, total: int, rel: str) -> None:
        nonlocal step
        # About 20 lines per run, plus the last one: enough to see it move.
        if done == total or done * 20 // max(total, 1) != step:
            step = done * 20 // max(total, 1)
            print(f"bundle: {label} {done}/{total} {rel}", file=sys.stderr, flush=True)

    return report


def cmd_key(args: argparse.Namespace) -> int:
    key, created = load_or_create_signing_key(Path(args.key))
    pub = key.public_key()
    if args.public_out:
        Path(args.public_out).write_bytes(pub.to_pem())
    print(f"{'created' if created else 'using'} signing key {args.key}", file=sys.stderr)
    print(fingerprint(pub))
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    key, created = load_or_create_signing_key(Path(args.key))
    if created:
        print(f"bundle: generated a new SM2 signing key at {args.key} (0600)", file=sys.stderr)
    missing = _read_missing(Path(args.missing_file) if args.missing_file else None)
    data = build_manifest(root, name=args.name, version=args.version, signer=key.public_key(),
                          missing=missing, progress=_progress("checksums"))
    fp = sign_manifest(root, data, key)
    for m in missing:
        print(f"bundle: MISSING {m.component}/{m.arch}: {m.name}: {m.reason}", file=sys.stderr)
    print(f"bundle: manifest signed; signer SM2 key fingerprint (SM3 of the public key): {fp}",
          file=sys.stderr)
    print(fp)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    trusted = load_public_key(Path(args.public_key))
    if args.fingerprint and args.fingerprint.lower() != fingerprint(trusted):
        raise BundleError(f"{args.public_key}: fingerprint {fingerprint(trusted)} is not the "
                          f"expected {args.fingerprint}")
    summary = verify_bundle(Path(args.dir), trusted,
                            progress=None if args.json else _progress("verified"))
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    print(f"bundle {summary['name']} {summary['version']}: {summary['files']} files verified "
          f"(SHA-256 and SM3), signed by {summary['signer']}")
    for comp, agg in sorted(summary["components"].items()):
        print(f"  {comp}: {agg['files']} files, {agg['bytes']} bytes")
    for m in summary["missing"]:
        print(f"  MISSING {m.get('component')}/{m.get('arch')}: {m.get('name')}: {m.get('reason')}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    changed = pack_directory(Path(args.dir), Path(args.archive), args.pattern)
    print(json.dumps({"archive": args.archive, "changed": changed}))
    return 0


def run(args: argparse.Namespace) -> int:
    # Packing reads files the verifier has already checked; it needs no SM2.
    if args.bundle_func is not cmd_pack and not sm2_available():
        print(f"tongxin bundle: {sm2_unavailable_reason()}", file=sys.stderr)
        return 2
    try:
        return int(args.bundle_func(args))
    except BundleError as exc:
        print(f"tongxin bundle: REFUSED: {exc}", file=sys.stderr)
        return 1


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("bundle", help="sign or verify the offline install bundle")
    bsub = b.add_subparsers(dest="bundle_command", required=True)
    b.set_defaults(func=run)

    v = bsub.add_parser("verify", help="check the SM2 signature and every file's SHA-256/SM3")
    v.add_argument("dir", help="the bundle directory (tongxin-<version>/)")
    v.add_argument("--public-key", required=True, help="the trusted signer's SM2 public key (PEM)")
    v.add_argument("--fingerprint", default="", help="also require this key fingerprint (hex SM3)")
    v.add_argument("--json", action="store_true", help="print the summary as JSON")
    v.set_defaults(bundle_func=cmd_verify)

    m = bsub.add_parser("manifest", help="write and sign manifest.json for a bundle directory")
    m.add_argument("dir")
    m.add_argument("--key", required=True, help="SM2 signing key (PEM), generated (0600) if absent")
    m.add_argument("--name", default="tongxin")
    m.add_argument("--version", required=True)
    m.add_argument("--missing-file", help="gaps to record: component, arch, name, reason (TSV)")
    m.set_defaults(bundle_func=cmd_manifest)

    k = bsub.add_parser("key", help="create the signing key if absent; print its fingerprint")
    k.add_argument("--key", required=True)
    k.add_argument("--public-out", help="also write the public key (PEM) here")
    k.set_defaults(bundle_func=cmd_key)

    p = bsub.add_parser("pack", help="pack one directory of a verified bundle as a tar, "
                        "rewriting the archive (atomically) only when its content changed")
    p.add_argument("dir", help="e.g. tongxin-<version>/debs/x86_64")
    p.add_argument("archive", help="the tar to write")
    p.add_argument("--pattern", default="*", help="pack only the files matching this glob "
                   "(default: every file)")
    p.set_defaults(bundle_func=cmd_pack)

"""Manifest of an offline install bundle: every file's size, SHA-256 and SM3, SM2-signed.

Layout of a bundle directory (``tongxin-<version>/``)::

    wheels/<arch>/*.whl          the appliance and every dependency (arch: x86_64, aarch64)
    debs/<arch>/*.deb            Debian packages + Packages(.gz), Release (a flat apt repo)
    images/<arch>/tongxin-<v>.tar  the OCI image for hosts whose Python is too old
    kafka/kafka-<v>.tgz          the Kafka distribution
    manifest.json                this module's output (the signed bytes)
    manifest.sig                 SM2 signature (DER) over manifest.json, signer ID 1234567812345678
    signer.pem                   the signer's public key, for information only

``signer.pem`` is never trusted: verification takes the trusted public key from the
operator (a path they carried separately), and the manifest names the signer only so a
mismatch can be reported as such. Files missing upstream (e.g. a wheel PyPI has
for x86_64 only) are listed under ``missing`` so the gap is visible and signed, not silent.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives import hashes

from tongxin.compliance.keys import fingerprint, write_private
from tongxin.crypto import SM2PrivateKey, SM2PublicKey
from tongxin.crypto.errors import CryptoError, InvalidSignatureError

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
SIGNER_NAME = "signer.pem"
FORMAT = 1
# The files that describe the bundle rather than belong to it.
_META = frozenset({MANIFEST_NAME, SIGNATURE_NAME, SIGNER_NAME})
# Components whose files sit one directory per architecture.
_PER_ARCH = frozenset({"wheels", "debs", "images"})
_ARCHES = frozenset({"x86_64", "aarch64"})
_CHUNK = 1 << 20


class BundleError(Exception):
    """The bundle cannot be built or does not verify; the message names the file and problem."""


@dataclass(frozen=True)
class Missing:
    """Something the bundle should hold but could not (e.g. no wheel for an architecture)."""

    component: str
    arch: str
    name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"component": self.component, "arch": self.arch, "name": self.name, "reason": self.reason}


def _digests(path: Path) -> tuple[int, str, str]:
    """(size, sha256 hex, sm3 hex), reading the file once in chunks (debs reach 100 MB)."""
    sha = hashes.Hash(hashes.SHA256())
    sm3 = hashes.Hash(hashes.SM3())
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            size += len(chunk)
            sha.update(chunk)
            sm3.update(chunk)
    return size, sha.finalize().hex(), sm3.finalize().hex()


def classify(rel: str) -> tuple[str, str]:
    """(component, arch) of a bundle-relative path; arch is ``any`` outside wheels/, debs/ and images/."""
    parts = PurePosixPath(rel).parts
    if len(parts) >= 3 and parts[0] in _PER_ARCH:
        if parts[1] not in _ARCHES:
            raise BundleError(f"{rel}: unknown architecture directory {parts[1]!r} "
                              f"(expected one of {', '.join(sorted(_ARCHES))})")
        return parts[0], parts[1]
    if len(parts) >= 2:
        return parts[0], "any"
    return "meta", "any"


def _walk(root: Path) -> Iterator[str]:
    """Bundle-relative POSIX paths of every regular file, sorted; symlinks are refused."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel in _META:
                continue
            mode = full.lstat().st_mode
            if not stat.S_ISREG(mode):
                # A link could point anywhere on the controller: the bundle holds files only.
                raise BundleError(f"{rel}: not a regular file (symlinks and devices are refused)")
            out.append(rel)
    yield from sorted(out)


def build_manifest(
    root: Path,
    *,
    name: str,
    version: str,
    signer: SM2PublicKey,
    missing: Iterable[Missing] = (),
    progress: Any = None,
) -> bytes:
    """The manifest bytes for every file under ``root`` (written by :func:`sign_manifest`).

    ``progress`` is called as ``progress(done, total, rel_path)`` after each file.
    """
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory")
    rels = list(_walk(root))
    files: list[dict[str, Any]] = []
    for i, rel in enumerate(rels, 1):
        component, arch = classify(rel)
        size, sha256, sm3 = _digests(root / rel)
        files.append({"path": rel, "size": size, "sha256": sha256, "sm3": sm3,
                      "component": component, "arch": arch})
        if progress is not None:
            progress(i, len(rels), rel)
    doc = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "signer": fingerprint(signer),
        "files": files,
        "missing": sorted((m.to_json() for m in missing),
                          key=lambda m: (m["component"], m["arch"], m["name"])),
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def sign_manifest(root: Path, manifest: bytes, key: SM2PrivateKey) -> str:
    """Write manifest.json, manifest.sig and signer.pem into ``root``; returns the fingerprint."""
    signature = key.sign(manifest)
    for fname, data in ((MANIFEST_NAME, manifest), (SIGNATURE_NAME, signature),
                        (SIGNER_NAME, key.public_key().to_pem())):
        tmp = root / (fname + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, root / fname)
    return fingerprint(key.public_key())


def load_or_create_signing_key(path: Path) -> tuple[SM2PrivateKey, bool]:
    """The SM2 signing key at ``path`` (PEM), generated there (0600) on first use.

    Returns (key, created). A key file readable by others is refused: anyone who can read
    it can sign bundles the installation will trust.
    """
    if path.exists():
        mode = path.stat().st_mode
        if mode & 0o077:
            raise BundleError(f"{path}: signing key is accessible by group/others "
                              f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
        try:
            return SM2PrivateKey.from_pem(path.read_bytes()), False
        except (CryptoError, ValueError) as exc:
            raise BundleError(f"{path}: not an SM2 private key (PEM): {exc}") from exc
    key = SM2PrivateKey.generate()
    write_private(path, key.to_pem())
    return key, True


def load_public_key(path: Path) -> SM2PublicKey:
    """The trusted signer's key; BundleError naming the file if it is not one."""
    try:
        return SM2PublicKey.from_pem_file(path)
    except ValueError as exc:
        raise BundleError(f"trusted public key {exc}") from exc


_FILE_KEYS = {"path": str, "size": int, "sha256": str, "sm3": str, "component": str, "arch": str}


def _parse(manifest: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(manifest)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{MANIFEST_NAME}: not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{MANIFEST_NAME}: not a format-{FORMAT} bundle manifest")
    files = doc.get("files")
    if not isinstance(files, list):
        raise BundleError(f"{MANIFEST_NAME}: 'files' is not a list")
    for entry in files:
        if not isinstance(entry, dict) or any(
            not isinstance(entry.get(k), t) for k, t in _FILE_KEYS.items()
        ):
            raise BundleError(f"{MANIFEST_NAME}: malformed file entry {entry!r}")
        p = PurePosixPath(entry["path"])
        if p.is_absolute() or ".." in p.parts or not p.parts or entry["path"] in _META:
            raise BundleError(f"{MANIFEST_NAME}: refusing path {entry['path']!r}")
    return doc


def verify_bundle(root: Path, trusted: SM2PublicKey, *, progress: Any = None) -> dict[str, Any]:
    """Check the signature with ``trusted``, then every file; raise :class:`BundleError`.

    The signature is checked first and the manifest parsed only afterwards, so nothing an
    attacker wrote is acted upon. Then each listed file must exist with the listed size,
    SHA-256 and SM3, and no unlisted file may be present (apt would index it). Returns a
    summary: name, version, signer fingerprint, file counts and bytes per component/arch,
    and the recorded gaps.
    """
    try:
        manifest = (root / MANIFEST_NAME).read_bytes()
        signature = (root / SIGNATURE_NAME).read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{Path(exc.filename).name}: missing from {root}") from exc
    want = fingerprint(trusted)
    try:
        trusted.verify(signature, manifest)
    except InvalidSignatureError as exc:
        claimed = ""
        try:
            signer = json.loads(manifest).get("signer")
            if isinstance(signer, str) and signer != want:
                claimed = f"; the manifest names signer {signer}"
        except (ValueError, AttributeError):
            pass
        raise BundleError(f"{SIGNATURE_NAME}: SM2 signature over {MANIFEST_NAME} does not verify "
                          f"with the trusted key {want}{claimed}") from exc
    doc = _parse(manifest)
    listed = {e["path"]: e for e in doc["files"]}
    present = set(_walk(root))
    unlisted = sorted(present - listed.keys())
    if unlisted:
        raise BundleError(f"{unlisted[0]}: not listed in the signed manifest"
                          + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""))
    summary: dict[str, dict[str, int]] = {}
    total = len(listed)
    for i, (rel, entry) in enumerate(sorted(listed.items()), 1):
        path = root / rel
        if rel not in present:
            raise BundleError(f"{rel}: listed in the manifest but missing")
        size, sha256, sm3 = _digests(path)
        if size != entry["size"]:
            raise BundleError(f"{rel}: size {size} differs from the manifest's {entry['size']}")
        if sha256 != entry["sha256"]:
            raise BundleError(f"{rel}: SHA-256 mismatch (file {sha256}, manifest {entry['sha256']})")
        if sm3 != entry["sm3"]:
            raise BundleError(f"{rel}: SM3 mismatch (file {sm3}, manifest {entry['sm3']})")
        key = f"{entry['component']}/{entry['arch']}"
        agg = summary.setdefault(key, {"files": 0, "bytes": 0})
        agg["files"] += 1
        agg["bytes"] += size
        if progress is not None:
            progress(i, total, rel)
    return {
        "name": doc.get("name"),
        "version": doc.get("version"),
        "signer": want,
        "files": total,
        "components": summary,
        "missing": doc.get("missing", []),
    }

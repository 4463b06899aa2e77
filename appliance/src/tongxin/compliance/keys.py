"""The audit signing key: SM2, in ``<data_dir>/secrets/audit_sign.key`` (0600).

Every public key ever used is kept in ``<data_dir>/audit-keys/<fingerprint>.pem``
so heads and manifests signed before a rotation still verify. A fingerprint is
the hex SM3 of the key's SubjectPublicKeyInfo DER.

Those files are where keys are found, not why they are trusted: whoever can write
the data directory (or the shared database, where nodes publish their keys) can add
one. Verification trusts only the keys pinned in ``compliance.audit_trusted_keys``
(fingerprints or PEM paths, in the configuration file the service user cannot
write), or exactly the keys an auditor passes with ``--pubkey``; see
:func:`resolve_trust`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tongxin.atrest.errors import AtRestError
from tongxin.atrest.records import load_secret_file, read_secret_file, write_secret_file
from tongxin.crypto import SM2PrivateKey, SM2PublicKey, sm3_digest
from tongxin.crypto.errors import CryptoError

if TYPE_CHECKING:
    from tongxin.atrest.keyring import Keyring


def fingerprint(pub: SM2PublicKey) -> str:
    return sm3_digest(pub.to_der()).hex()


_FINGERPRINT = re.compile(r"[0-9a-fA-F]{64}")


def parse_pins(value: str) -> list[str]:
    """``compliance.audit_trusted_keys`` as a list: fingerprints (lower case) and paths."""
    out: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if item:
            out.append(item.lower() if _FINGERPRINT.fullmatch(item) else item)
    return list(dict.fromkeys(out))


def is_fingerprint(pin: str) -> bool:
    return _FINGERPRINT.fullmatch(pin) is not None


def load_public_key(path: Path) -> SM2PublicKey:
    """A trusted key file (a pin or ``--pubkey``); ValueError naming it if it is not one."""
    try:
        return SM2PublicKey.from_pem_file(path)
    except ValueError as exc:
        raise ValueError(f"audit public key {exc}") from exc


@dataclass
class Trust:
    """Which audit keys a verification trusts, and which it saw but does not."""

    keys: dict[str, SM2PublicKey] = field(default_factory=dict)
    source: str = ""  # "compliance.audit_trusted_keys" or "--pubkey"
    untrusted: dict[str, str] = field(default_factory=dict)  # fingerprint -> where it was found
    unresolved: list[str] = field(default_factory=list)  # pinned fingerprints with no key found
    errors: list[str] = field(default_factory=list)  # pinned or given key files that do not load


def resolve_trust(found: dict[str, tuple[SM2PublicKey, str]], pins: Sequence[str],
                  given: Sequence[Path] = ()) -> Trust:
    """The trusted keys among ``found`` (fingerprint -> (key, where it was found)).

    ``given`` (``--pubkey``) replaces the pins: exactly those keys are trusted, so an
    auditor's own copy of the keys decides, not the node's configuration. Otherwise a
    pinned fingerprint trusts the found key that hashes to it (the fingerprint is a
    digest of the key, so a planted file cannot match it) and a pinned path trusts the
    key in that file. Everything else found is reported as untrusted.
    """
    trust = Trust(source="--pubkey" if given else "compliance.audit_trusted_keys")
    if given:
        for path in given:
            try:
                pub = load_public_key(path)
            except ValueError as exc:
                trust.errors.append(str(exc))
                continue
            trust.keys[fingerprint(pub)] = pub
    else:
        for pin in pins:
            if is_fingerprint(pin):
                if pin in found:
                    trust.keys[pin] = found[pin][0]
                else:
                    trust.unresolved.append(pin)
                continue
            try:
                pub = load_public_key(Path(pin))
            except ValueError as exc:
                trust.errors.append(str(exc))
                continue
            trust.keys[fingerprint(pub)] = pub
    trust.untrusted = {fp: where for fp, (_, where) in sorted(found.items())
                       if fp not in trust.keys}
    return trust


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600, atomically (rename over the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class AuditKeys:
    """The private key file is sealed at rest (tongxin.atrest) when ``keyring`` encrypts;
    a plaintext file from before is read and resealed by :meth:`load`. The public keys in
    audit-keys/ are public and stay plaintext, so verification needs no master key."""

    def __init__(self, home: Path, keyring: Keyring | None = None) -> None:
        self.private_path = home / "secrets" / "audit_sign.key"
        self.public_dir = home / "audit-keys"
        self.keyring = keyring
        self._key: SM2PrivateKey | None = None

    def exists(self) -> bool:
        return self.private_path.exists()

    async def load(self) -> None:
        """Load (and migrate to sealed) an existing key while the data key can be fetched
        from the store; signing later runs in threads, which cannot fetch it."""
        pem = await load_secret_file(self.private_path, self.keyring)
        if pem is None or self._key is not None:
            return
        try:
            self._key = SM2PrivateKey.from_pem(pem)
        except CryptoError:
            return  # no SM2 in this process: signing reports it when asked
        self._publish(self._key.public_key())

    def signing_key(self, create: bool = True) -> SM2PrivateKey:
        """Load the key, creating it on first use; raises CryptoError without SM2."""
        if self._key is not None:
            return self._key
        if self.private_path.exists():
            try:
                pem = read_secret_file(self.private_path, self.keyring)
            except AtRestError as exc:
                raise CryptoError(f"audit signing key {self.private_path}: {exc}") from exc
            self._key = SM2PrivateKey.from_pem(pem)
            self._publish(self._key.public_key())
            return self._key
        if not create:
            raise CryptoError(f"no audit signing key at {self.private_path}")
        return self.rotate()

    def rotate(self) -> SM2PrivateKey:
        """A new key pair; the old public key stays in audit-keys/ for verification."""
        key = SM2PrivateKey.generate()
        self._publish(key.public_key())
        write_secret_file(self.private_path, key.to_pem(), self.keyring)
        self._key = key
        return key

    def _publish(self, pub: SM2PublicKey) -> None:
        self.public_dir.mkdir(parents=True, exist_ok=True)
        path = self.public_dir / f"{fingerprint(pub)}.pem"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(pub.to_pem())
            os.replace(tmp, path)

    def current_fingerprint(self) -> str | None:
        try:
            return fingerprint(self.signing_key(create=False).public_key())
        except (CryptoError, OSError):
            return None

    def found_keys(self) -> dict[str, tuple[SM2PublicKey, str]]:
        """The public keys in audit-keys/ by fingerprint, with the file each came from.

        Found, not trusted: :func:`resolve_trust` decides which of them count."""
        out: dict[str, tuple[SM2PublicKey, str]] = {}
        paths = sorted(self.public_dir.glob("*.pem")) if self.public_dir.is_dir() else []
        for p in paths:
            try:
                pub = SM2PublicKey.from_pem_file(p)
            except ValueError:
                continue
            out[fingerprint(pub)] = (pub, f"audit-keys/{p.name}")
        return out

    def sign(self, message: bytes) -> tuple[str, str]:
        """(key fingerprint, hex DER signature)."""
        key = self.signing_key()
        return fingerprint(key.public_key()), key.sign(message).hex()

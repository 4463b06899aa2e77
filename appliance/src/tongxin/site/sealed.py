"""The DR site's copy of the installation's secrets, sealed to the DR operators' key.

A standby site must be able to take over without the controller (which may
be lost with dc1), so it keeps the secrets it will need: the at-rest master
key, the token and TOTP keys, the internal CA. Kept in clear, root on a DR
host (or a copy of its disk) could read history long before any takeover.
So the standby nodes hold one *sealed* document instead, encrypted to a key
pair whose private half the DR operators keep off the hosts; promotion
unseals it (docs/security.md, "The DR site and its secrets").

Construction: the suite's KEM (SM2 encryption of a fresh secret with ``gm``,
DHKEM(X25519) with ``international``) gives a one-use shared secret; the
suite's HKDF turns it into an AEAD key and nonce (SM4-GCM or AES-256-GCM);
the AEAD seals the files with the document's header as associated data, so
no header field can be changed without the document failing to open.

The header carries, in clear, the recipient key's id and a digest of the
sealed files (the suite's hash over their names and contents). The Ansible
role compares them with what it would seal to decide whether a standby's
copy is current without opening it. The files are random keys and a CA key
pair, so their digest lets nobody guess them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite, get_suite

SEALED_FORMAT = "tongxin-dr-sealed/v1"
KEY_FORMAT = "tongxin-dr-key/v1"
_KDF_INFO = b"tongxin/dr-seal/v1"
_DIGEST_PREFIX = b"tongxin/dr-seal/digest/v1\x00"
# What a sealed document may hold: the node's shared secrets (secrets/) and
# the internal CA (ca/). Names are file names, never paths, because unseal
# writes them into a directory.
PARTS = ("secrets", "ca")
_NAME = re.compile(r"(secrets|ca)/[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_FILE = 64 * 1024
_MAX_FILES = 32


class SealError(Exception):
    """A key or sealed document that cannot be used; the message says why."""


@dataclass(frozen=True)
class SealKey:
    """One half (or both) of a DR seal key pair, as read from its JSON file."""

    suite: str
    key_id: str
    public: bytes
    private: bytes | None = None

    def public_document(self) -> dict[str, str]:
        return {"format": KEY_FORMAT, "suite": self.suite, "key_id": self.key_id,
                "public": _b64(self.public)}

    def private_document(self) -> dict[str, str]:
        if self.private is None:
            raise SealError("this is a public key only")
        return {**self.public_document(), "private": _b64(self.private)}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise SealError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealError(f"{what} is not valid base64") from exc


def _suite(name: object) -> CryptoSuite:
    if not isinstance(name, str):
        raise SealError("suite must be a string")
    try:
        return get_suite(name)
    except (ValueError, CryptoError) as exc:
        raise SealError(str(exc)) from exc


def key_id(suite: CryptoSuite, public: bytes) -> str:
    """The first 16 bytes of the suite's hash of the public key, in hex."""
    return suite.hash(b"tongxin/dr-seal/key\x00" + public)[:16].hex()


def generate_key(suite_name: str) -> SealKey:
    suite = _suite(suite_name)
    pair = suite.generate_kem_keypair()
    return SealKey(suite.name, key_id(suite, pair.public_key), pair.public_key, pair.private_key)


def load_key(doc: object, *, need_private: bool) -> SealKey:
    """A key from its JSON document; its id is recomputed, never trusted."""
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
        raise SealError(f"not a DR seal key (format {KEY_FORMAT!r} expected)")
    suite = _suite(doc.get("suite"))
    public = _unb64(doc.get("public"), "the key's public part")
    kid = key_id(suite, public)
    if doc.get("key_id") != kid:
        raise SealError(f"the key file says key_id {doc.get('key_id')!r} but its public key "
                        f"is {kid}: the file was edited or damaged")
    private = None
    if need_private:
        if "private" not in doc:
            raise SealError("this is the public key; unsealing needs the private key file")
        private = _unb64(doc["private"], "the key's private part")
    return SealKey(suite.name, kid, public, private)


def _check_files(files: Mapping[str, bytes]) -> None:
    if not files:
        raise SealError("nothing to seal")
    if len(files) > _MAX_FILES:
        raise SealError(f"at most {_MAX_FILES} files may be sealed, not {len(files)}")
    for name, data in files.items():
        if not _NAME.fullmatch(name):
            raise SealError(f"{name!r} is not a sealable name (secrets/<file> or ca/<file>)")
        if len(data) > _MAX_FILE:
            raise SealError(f"{name} is {len(data)} bytes; at most {_MAX_FILE} may be sealed")


def digest(suite: CryptoSuite, files: Mapping[str, bytes]) -> str:
    """The suite's hash over the files' names and contents, length-prefixed, in name order."""
    parts = [_DIGEST_PREFIX]
    for name in sorted(files):
        raw = name.encode()
        parts += [len(raw).to_bytes(4, "big"), raw,
                  len(files[name]).to_bytes(4, "big"), files[name]]
    return suite.hash(b"".join(parts)).hex()


def _header_aad(header: Mapping[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def _kdf(suite: CryptoSuite, shared_secret: bytes) -> tuple[bytes, bytes]:
    k = suite.aead_key_size
    okm = suite.hkdf(shared_secret, k + suite.aead_nonce_size, info=_KDF_INFO)
    return okm[:k], okm[k:]


_HEADER_FIELDS = ("format", "suite", "recipient", "digest", "names", "sealed_at")


def is_current(doc: object, recipient: SealKey, files: Mapping[str, bytes]) -> bool:
    """Whether ``doc`` already seals exactly ``files`` to ``recipient`` (without opening it)."""
    if not isinstance(doc, dict):
        return False
    suite = _suite(recipient.suite)
    return (doc.get("format") == SEALED_FORMAT and doc.get("suite") == recipient.suite
            and doc.get("recipient") == recipient.key_id
            and doc.get("digest") == digest(suite, files))


def seal(recipient: SealKey, files: Mapping[str, bytes], *,
         now: float | None = None) -> dict[str, Any]:
    _check_files(files)
    suite = _suite(recipient.suite)
    header: dict[str, Any] = {
        "format": SEALED_FORMAT,
        "suite": suite.name,
        "recipient": recipient.key_id,
        "digest": digest(suite, files),
        "names": sorted(files),
        "sealed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    plaintext = json.dumps({n: _b64(files[n]) for n in sorted(files)},
                           separators=(",", ":")).encode()
    try:
        encap = suite.kem_encapsulate(recipient.public)
    except (CryptoError, ValueError) as exc:
        raise SealError(f"the recipient key is not a usable {suite.name} key: {exc}") from exc
    key, nonce = _kdf(suite, encap.shared_secret)
    ciphertext = suite.aead_encrypt(key, nonce, plaintext, _header_aad(header))
    return {**header, "kem": _b64(encap.encapsulated_key), "ciphertext": _b64(ciphertext)}


def header(doc: object) -> dict[str, Any]:
    """The clear fields of a sealed document (what ``tongxin dr-secrets show`` prints)."""
    if not isinstance(doc, dict) or doc.get("format") != SEALED_FORMAT:
        raise SealError(f"not a sealed DR secrets document (format {SEALED_FORMAT!r} expected)")
    missing = [f for f in (*_HEADER_FIELDS, "kem", "ciphertext") if f not in doc]
    if missing:
        raise SealError(f"the sealed document lacks {', '.join(missing)}")
    return {f: doc[f] for f in _HEADER_FIELDS}


def unseal(key: SealKey, doc: object) -> dict[str, bytes]:
    """The sealed files; :class:`SealError` for a wrong key or any change to the document."""
    head = header(doc)
    assert isinstance(doc, dict)
    if key.private is None:
        raise SealError("unsealing needs the private key")
    if head["suite"] != key.suite:
        raise SealError(f"the document is sealed with suite {head['suite']!r}, "
                        f"this key is {key.suite!r}")
    if head["recipient"] != key.key_id:
        raise SealError(f"the document is sealed to key {head['recipient']}, "
                        f"not to this key ({key.key_id})")
    suite = _suite(key.suite)
    try:
        shared = suite.kem_decapsulate(key.private, _unb64(doc["kem"], "kem"))
        k, nonce = _kdf(suite, shared)
        plaintext = suite.aead_decrypt(k, nonce, _unb64(doc["ciphertext"], "ciphertext"),
                                       _header_aad(head))
    except (CryptoError, ValueError) as exc:
        raise SealError("the sealed document does not open with this key: it was changed, "
                        "or the key is not the one it was sealed to") from exc
    try:
        raw = json.loads(plaintext)
    except ValueError as exc:  # authenticated, so only a writer's bug gets here
        raise SealError("the sealed content is not JSON") from exc
    files = {name: _unb64(value, name) for name, value in raw.items()}
    _check_files(files)
    if sorted(files) != head["names"] or digest(suite, files) != head["digest"]:
        raise SealError("the sealed content does not match its header")
    return files


def part(files: Mapping[str, bytes], name: str) -> dict[str, bytes]:
    """The files of one part (``secrets`` or ``ca``), keyed by their bare file names."""
    if name not in PARTS:
        raise SealError(f"unknown part {name!r}; one of: {', '.join(PARTS)}")
    prefix = name + "/"
    return {n[len(prefix):]: data for n, data in files.items() if n.startswith(prefix)}

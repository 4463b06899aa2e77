"""Cross-signing: a user's own signing key vouches for each of their devices (docs/e2ee.md
section 9.1).

Without it, a device id the server invents for an existing user (``bob/ghost``) is trusted
on first sight and receives what others send to that user. With it, each user has one
*user key* (a suite signing key pair made by their first device); the user key signs every
device's identity key, and clients encrypt to, and accept from, only devices whose
signature verifies under the user key they pinned. A new device gets the user key from
another device of the user, or from the *backup*: the private half sealed under a
passphrase the user chooses, which the server stores but cannot open.

The backup's passphrase is stretched with scrypt (hashlib, OpenSSL's implementation) and
the private key is sealed with the suite's AEAD (SM4-GCM or AES-256-GCM); the associated
data binds the suite, the user and the public key, so a backup cannot be moved to another
user or paired with another public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite
from tongxin.e2ee.encoding import NONCE_SIZE, lp
from tongxin.e2ee.errors import E2EEError, MalformedError, TamperedError

L_DEVICE = "tongxin-e2ee-v1/device"
L_BACKUP = "tongxin-e2ee-v1/user-key-backup"
BACKUP_FORMAT = "tongxin-user-key-backup-v1"
MAX_BACKUP_BYTES = 4096
# scrypt cost: N=2^15, r=8 takes 32 MiB and about 0.1 s here; the server holds the
# backup, so an offline guess must cost the same. OpenSSL refuses N above its memory cap,
# which maxmem lifts.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
_MAXMEM = 256 * 1024 * 1024
MIN_PASSPHRASE = 10


def device_statement(suite: str, user_id: str, device_id: str, identity_key: bytes) -> bytes:
    return lp(L_DEVICE) + lp(suite) + lp(user_id) + lp(device_id) + lp(identity_key)


def sign_device(suite: CryptoSuite, user_private: bytes, user_id: str, device_id: str,
                identity_key: bytes) -> bytes:
    return suite.sign(user_private, device_statement(suite.name, user_id, device_id,
                                                     identity_key))


def device_is_signed(suite: CryptoSuite, user_key: bytes, user_id: str, device_id: str,
                     identity_key: bytes, signature: bytes) -> bool:
    if not (user_key and signature):
        return False
    try:
        suite.verify(user_key, device_statement(suite.name, user_id, device_id, identity_key),
                     signature)
    except (CryptoError, ValueError):
        return False
    return True


def _backup_aad(suite: str, user_id: str, public_key: bytes) -> bytes:
    return lp(L_BACKUP) + lp(suite) + lp(user_id) + lp(public_key)


def _stretch(passphrase: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(passphrase.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=_MAXMEM, dklen=size)


@dataclass(frozen=True)
class UserKey:
    public_key: bytes
    private_key: bytes


def seal_backup(suite: CryptoSuite, user_id: str, key: UserKey, passphrase: str, *,
                n: int = SCRYPT_N) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise E2EEError(f"the key backup passphrase needs at least {MIN_PASSPHRASE} characters")
    salt, nonce = os.urandom(16), os.urandom(NONCE_SIZE)
    aead_key = _stretch(passphrase, salt, n, SCRYPT_R, SCRYPT_P, suite.aead_key_size)
    sealed = suite.aead_encrypt(aead_key, nonce, key.private_key,
                                _backup_aad(suite.name, user_id, key.public_key))
    b64 = base64.b64encode
    doc = {"format": BACKUP_FORMAT, "suite": suite.name, "kdf": "scrypt", "n": n,
           "r": SCRYPT_R, "p": SCRYPT_P, "salt": b64(salt).decode(), "nonce": b64(nonce).decode(),
           "sealed": b64(sealed).decode()}
    return json.dumps(doc, separators=(",", ":")).encode()


def open_backup(suite: CryptoSuite, user_id: str, public_key: bytes, backup: bytes,
                passphrase: str) -> UserKey:
    """The user key from its backup; a wrong passphrase, or a backup for another user, suite
    or public key, raises :class:`TamperedError`."""
    try:
        doc = json.loads(backup)
        if doc["format"] != BACKUP_FORMAT or doc["kdf"] != "scrypt":
            raise ValueError(f"unknown backup format {doc.get('format')!r}")
        if doc["suite"] != suite.name:
            raise ValueError(f"the backup is for suite {doc['suite']!r}")
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
        if not (1 << 14 <= n <= 1 << 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 4):
            raise ValueError("scrypt parameters out of range")
        salt, nonce, sealed = (base64.b64decode(doc[k], validate=True)
                               for k in ("salt", "nonce", "sealed"))
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedError(f"the key backup is malformed: {exc}") from exc
    aead_key = _stretch(passphrase, salt, n, r, p, suite.aead_key_size)
    try:
        private = suite.aead_decrypt(aead_key, nonce, sealed,
                                     _backup_aad(suite.name, user_id, public_key))
    except (CryptoError, ValueError) as exc:
        raise TamperedError("the key backup does not open: wrong passphrase, or not this "
                            "user's backup") from exc
    # The pair must match: a signature made with it verifies under the public key.
    probe = b"tongxin-e2ee-v1/user-key-probe"
    try:
        suite.verify(public_key, probe, suite.sign(private, probe))
    except (CryptoError, ValueError) as exc:
        raise TamperedError("the key backup holds another key than the user key") from exc
    return UserKey(public_key, private)

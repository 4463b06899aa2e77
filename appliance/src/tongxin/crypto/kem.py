"""Key encapsulation for the two suites.

* International: DHKEM(X25519, HKDF-SHA256) exactly as RFC 9180 section 4.1 defines it,
  built from ``cryptography``'s X25519 and HKDF so it reproduces the RFC's test vectors.
* GM: SM2 public-key encryption of a fresh 32-byte secret. SM2 encryption is itself a
  KEM-DEM hybrid whose C3 hash makes tampering detectable, so encrypting a random secret
  is an encapsulation built from one standard operation (GB/T 32918.4) that every SM2
  library offers (libcrypto here, sm-crypto-v2 in the web client); the GB/T 32918.3
  key-exchange protocol, which OpenSSL does not implement, is not used.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tongxin.crypto.errors import DecryptionError, KeyFormatError
from tongxin.crypto.sm2 import SM2PrivateKey, SM2PublicKey

KEM_SHARED_SECRET_SIZE = 32
X25519_ENC_SIZE = 32

# RFC 9180 section 7.1: KEM id 0x0020 is DHKEM(X25519, HKDF-SHA256).
_DHKEM_X25519_SUITE_ID = b"KEM" + (0x0020).to_bytes(2, "big")
_HPKE_V1 = b"HPKE-v1"


class Encapsulation(NamedTuple):
    """Result of an encapsulation: keep ``shared_secret``, send ``encapsulated_key``."""

    shared_secret: bytes
    encapsulated_key: bytes


def _labeled_extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
    labeled_ikm = _HPKE_V1 + _DHKEM_X25519_SUITE_ID + label + ikm
    return HKDF.extract(hashes.SHA256(), salt, labeled_ikm)


def _labeled_expand(prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + _HPKE_V1 + _DHKEM_X25519_SUITE_ID + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled_info).derive(prk)


def _x25519_raw(public: x25519.X25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _extract_and_expand(dh: bytes, kem_context: bytes) -> bytes:
    eae_prk = _labeled_extract(b"", b"eae_prk", dh)
    return _labeled_expand(eae_prk, b"shared_secret", kem_context, KEM_SHARED_SECRET_SIZE)


def dhkem_x25519_encapsulate(
    recipient: x25519.X25519PublicKey,
    *,
    ephemeral: x25519.X25519PrivateKey | None = None,
) -> Encapsulation:
    """RFC 9180 ``Encap(pkR)``; ``ephemeral`` exists only for known-answer tests."""
    sk_e = ephemeral if ephemeral is not None else x25519.X25519PrivateKey.generate()
    try:
        dh = sk_e.exchange(recipient)
    except ValueError as exc:
        # OpenSSL refuses an all-zero result, i.e. a small-order recipient key.
        raise KeyFormatError("X25519 recipient key is of small order") from exc
    enc = _x25519_raw(sk_e.public_key())
    secret = _extract_and_expand(dh, enc + _x25519_raw(recipient))
    return Encapsulation(secret, enc)


def dhkem_x25519_decapsulate(recipient: x25519.X25519PrivateKey, enc: bytes) -> bytes:
    """RFC 9180 ``Decap(enc, skR)``; :class:`DecryptionError` on a malformed ``enc``."""
    if len(enc) != X25519_ENC_SIZE:
        raise DecryptionError("X25519 encapsulated key must be 32 bytes")
    try:
        dh = recipient.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    except ValueError as exc:
        raise DecryptionError("X25519 decapsulation failed") from exc
    return _extract_and_expand(dh, enc + _x25519_raw(recipient.public_key()))


def sm2_kem_encapsulate(recipient: SM2PublicKey) -> Encapsulation:
    """Encrypt 32 fresh random bytes to ``recipient``; the DER ciphertext is the ``enc``."""
    secret = os.urandom(KEM_SHARED_SECRET_SIZE)
    return Encapsulation(secret, recipient.encrypt(secret))


def sm2_kem_decapsulate(recipient: SM2PrivateKey, enc: bytes) -> bytes:
    """Recover the secret; :class:`DecryptionError` if ``enc`` is tampered or malformed."""
    secret = recipient.decrypt(enc)
    if len(secret) != KEM_SHARED_SECRET_SIZE:
        raise DecryptionError("SM2 encapsulation does not hold a 32-byte secret")
    return secret

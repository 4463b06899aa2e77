"""HKDF (RFC 5869) instantiated with SM3 or SHA-256, from ``cryptography``.

HKDF-SM3 is the construction RFC 8998 uses for TLS 1.3 with the SM suites. It is not the
SM2 key-derivation function of GB/T 32918.4, which only serves SM2 encryption internally.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _hkdf(
    algorithm: hashes.HashAlgorithm,
    ikm: bytes,
    length: int,
    salt: bytes | None,
    info: bytes,
) -> bytes:
    if length <= 0:
        raise ValueError("HKDF output length must be positive")
    return HKDF(algorithm=algorithm, length=length, salt=salt, info=info).derive(ikm)


def hkdf_sm3(ikm: bytes, length: int, *, salt: bytes | None = None, info: bytes = b"") -> bytes:
    """Derive ``length`` bytes (at most 255 * 32) from ``ikm`` with HKDF-SM3."""
    return _hkdf(hashes.SM3(), ikm, length, salt, info)


def hkdf_sha256(ikm: bytes, length: int, *, salt: bytes | None = None, info: bytes = b"") -> bytes:
    """Derive ``length`` bytes (at most 255 * 32) from ``ikm`` with HKDF-SHA256."""
    return _hkdf(hashes.SHA256(), ikm, length, salt, info)

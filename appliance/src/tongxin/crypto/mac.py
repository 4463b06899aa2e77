"""HMAC-SM3 and HMAC-SHA256 from ``cryptography``.

Verification goes through ``HMAC.verify`` so that the comparison is constant-time; callers
should never compare tags with ``==``.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from tongxin.crypto.errors import InvalidMacError


def _mac(algorithm: hashes.HashAlgorithm, key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, algorithm)
    h.update(data)
    return h.finalize()


def _verify(algorithm: hashes.HashAlgorithm, key: bytes, data: bytes, tag: bytes) -> None:
    h = hmac.HMAC(key, algorithm)
    h.update(data)
    try:
        h.verify(tag)
    except InvalidSignature as exc:
        raise InvalidMacError("HMAC tag does not match") from exc


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    """Return the 32-byte HMAC-SM3 tag of ``data`` under ``key``."""
    return _mac(hashes.SM3(), key, data)


def hmac_sm3_verify(key: bytes, data: bytes, tag: bytes) -> None:
    """Raise :class:`InvalidMacError` unless ``tag`` is the HMAC-SM3 of ``data``."""
    _verify(hashes.SM3(), key, data, tag)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """Return the 32-byte HMAC-SHA256 tag of ``data`` under ``key``."""
    return _mac(hashes.SHA256(), key, data)


def hmac_sha256_verify(key: bytes, data: bytes, tag: bytes) -> None:
    """Raise :class:`InvalidMacError` unless ``tag`` is the HMAC-SHA256 of ``data``."""
    _verify(hashes.SHA256(), key, data, tag)

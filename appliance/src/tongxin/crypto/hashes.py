"""SM3 (GB/T 32905) and SHA-256 digests, both from ``cryptography``."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

SM3_DIGEST_SIZE = 32
SHA256_DIGEST_SIZE = 32


def sm3_digest(data: bytes) -> bytes:
    """Return the 32-byte SM3 digest of ``data``."""
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def sha256_digest(data: bytes) -> bytes:
    """Return the 32-byte SHA-256 digest of ``data``."""
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()

"""Legacy RSA-OAEP(SHA-256) + AES-256-GCM hybrid encryption, for interop only.

Some existing enterprise systems can only hold RSA keys. This helper lets Tongxin exchange
data with them; it is not a suite and no suite falls back to it.

Envelope (all lengths big-endian)::

    0x01 | u16 len(W) | W = RSA-OAEP(SHA-256, MGF1-SHA-256, no label)(K) | nonce[12] | C || tag[16]

where K is a fresh 32-byte AES key and the AES-GCM associated data is the envelope header
(version, length and W) followed by the caller's AAD, so the wrapped key cannot be swapped.
A peer can unwrap W with ``openssl pkeyutl -decrypt -pkeyopt rsa_padding_mode:oaep
-pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tongxin.crypto.errors import DecryptionError, KeyFormatError

LEGACY_RSA_VERSION = 1
LEGACY_RSA_MIN_BITS = 2048
_NONCE = 12
_TAG = 16
_KEY = 32


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _check_size(bits: int) -> None:
    if bits < LEGACY_RSA_MIN_BITS:
        raise KeyFormatError(f"RSA key of {bits} bits is below the {LEGACY_RSA_MIN_BITS} minimum")


def rsa_hybrid_encrypt(public_key: rsa.RSAPublicKey, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt ``plaintext`` of any length to an RSA public key (see module docstring)."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise KeyFormatError("legacy hybrid encryption needs an RSA public key")
    _check_size(public_key.key_size)
    key = AESGCM.generate_key(bit_length=_KEY * 8)
    wrapped = public_key.encrypt(key, _oaep())
    header = bytes([LEGACY_RSA_VERSION]) + len(wrapped).to_bytes(2, "big") + wrapped
    nonce = os.urandom(_NONCE)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header + aad)


def rsa_hybrid_decrypt(private_key: rsa.RSAPrivateKey, envelope: bytes, aad: bytes = b"") -> bytes:
    """Decrypt an envelope from :func:`rsa_hybrid_encrypt`; :class:`DecryptionError` on any
    failure, with one message for every cause so the error is not a padding oracle."""
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise KeyFormatError("legacy hybrid decryption needs an RSA private key")
    _check_size(private_key.key_size)
    failure = DecryptionError("legacy RSA envelope could not be decrypted")
    if len(envelope) < 3 or envelope[0] != LEGACY_RSA_VERSION:
        raise failure
    wlen = int.from_bytes(envelope[1:3], "big")
    header_end = 3 + wlen
    if wlen != (private_key.key_size + 7) // 8 or len(envelope) < header_end + _NONCE + _TAG:
        raise failure
    header, wrapped = envelope[:header_end], envelope[3:header_end]
    nonce = envelope[header_end : header_end + _NONCE]
    body = envelope[header_end + _NONCE :]
    try:
        key = private_key.decrypt(wrapped, _oaep())
    except ValueError:
        raise failure from None
    if len(key) != _KEY:
        raise failure
    try:
        return AESGCM(key).decrypt(nonce, body, header + aad)
    except InvalidTag:
        raise failure from None

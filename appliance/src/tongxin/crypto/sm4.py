"""SM4 (GB/T 32907) in GCM, CBC and CTR modes, from ``cryptography``.

GCM is the only mode the suites use. CBC and CTR exist for interoperability with systems that
mandate them (GM/T 0002 era devices, vendor SDKs); neither authenticates its input, so data
they protect must be covered by a MAC or signature checked *before* decryption.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tongxin.crypto.errors import DecryptionError

SM4_KEY_SIZE = 16
SM4_BLOCK_SIZE = 16
SM4_GCM_NONCE_SIZE = 12
SM4_GCM_TAG_SIZE = 16


def _check_key(key: bytes) -> None:
    if len(key) != SM4_KEY_SIZE:
        raise ValueError(f"SM4 key must be {SM4_KEY_SIZE} bytes, got {len(key)}")


def _check_len(what: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"SM4 {what} must be {size} bytes, got {len(value)}")


class SM4BlockCipher:
    """Raw single-block SM4 under one key.

    Exists for the GB/T 32907 known-answer tests (which chain one million block
    encryptions) and for building standard modes elsewhere; it is not a way to encrypt data.
    One ECB context is kept for the key so a long chain does not re-run the key schedule.
    """

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        cipher = Cipher(algorithms.SM4(key), modes.ECB())
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()

    def encrypt_block(self, block: bytes) -> bytes:
        _check_len("block", block, SM4_BLOCK_SIZE)
        return self._enc.update(block)

    def decrypt_block(self, block: bytes) -> bytes:
        _check_len("block", block, SM4_BLOCK_SIZE)
        return self._dec.update(block)


def sm4_gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt with SM4-GCM; returns ciphertext followed by the 16-byte tag.

    The nonce must be 12 bytes (the RFC 8998 size) and must never repeat under one key.
    """
    _check_key(key)
    _check_len("GCM nonce", nonce, SM4_GCM_NONCE_SIZE)
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    ciphertext = enc.update(plaintext) + enc.finalize()
    return ciphertext + enc.tag


def sm4_gcm_decrypt(key: bytes, nonce: bytes, data: bytes, aad: bytes = b"") -> bytes:
    """Decrypt ciphertext||tag from :func:`sm4_gcm_encrypt`.

    Raises :class:`DecryptionError` if the tag, ciphertext, nonce or AAD do not match.
    Plaintext is only returned after the tag has been checked.
    """
    _check_key(key)
    _check_len("GCM nonce", nonce, SM4_GCM_NONCE_SIZE)
    if len(data) < SM4_GCM_TAG_SIZE:
        raise DecryptionError("SM4-GCM ciphertext is shorter than its tag")
    ciphertext, tag = data[:-SM4_GCM_TAG_SIZE], data[-SM4_GCM_TAG_SIZE:]
    dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
    dec.authenticate_additional_data(aad)
    out = dec.update(ciphertext)
    try:
        return out + dec.finalize()
    except InvalidTag as exc:
        raise DecryptionError("SM4-GCM authentication failed") from exc


def sm4_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """Encrypt with SM4-CBC and PKCS#7 padding. The IV must be unpredictable (random)."""
    _check_key(key)
    _check_len("CBC IV", iv, SM4_BLOCK_SIZE)
    padder = padding.PKCS7(SM4_BLOCK_SIZE * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor()
    return enc.update(padded) + enc.finalize()


def sm4_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Decrypt SM4-CBC with PKCS#7 padding; :class:`DecryptionError` on bad length/padding.

    CBC is unauthenticated: a wrong key or tampered ciphertext is usually, not always,
    detected through the padding. Authenticate the ciphertext first.
    """
    _check_key(key)
    _check_len("CBC IV", iv, SM4_BLOCK_SIZE)
    if not ciphertext or len(ciphertext) % SM4_BLOCK_SIZE:
        raise DecryptionError("SM4-CBC ciphertext length is not a positive multiple of 16")
    dec = Cipher(algorithms.SM4(key), modes.CBC(iv)).decryptor()
    padded = dec.update(ciphertext) + dec.finalize()
    unpadder = padding.PKCS7(SM4_BLOCK_SIZE * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise DecryptionError("SM4-CBC decryption failed") from exc


def sm4_ctr_crypt(key: bytes, counter_block: bytes, data: bytes) -> bytes:
    """SM4-CTR keystream XOR; the same call encrypts and decrypts.

    ``counter_block`` is the full 16-byte initial counter, incremented as one 128-bit
    big-endian integer (the convention of GmSSL and OpenSSL). A counter block must never be
    reused under one key.
    """
    _check_key(key)
    _check_len("CTR counter block", counter_block, SM4_BLOCK_SIZE)
    ctx = Cipher(algorithms.SM4(key), modes.CTR(counter_block)).encryptor()
    return ctx.update(data) + ctx.finalize()

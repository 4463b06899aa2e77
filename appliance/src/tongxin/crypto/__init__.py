"""Cryptographic primitives and suites for Tongxin.

Library split (see docs/security.md): SM3, SM4, HMAC, HKDF and every international
primitive come from ``cryptography``; SM2 comes from the system's OpenSSL 3 libcrypto through
a ctypes binding (``openssl_sm2``), and is reported unavailable, never replaced, where no
such libcrypto loads.
"""

from __future__ import annotations

from tongxin.crypto.errors import (
    CryptoError,
    DecryptionError,
    InvalidMacError,
    InvalidSignatureError,
    KeyFormatError,
    SM2UnavailableError,
)
from tongxin.crypto.hashes import sha256_digest, sm3_digest
from tongxin.crypto.kdf import hkdf_sha256, hkdf_sm3
from tongxin.crypto.kem import Encapsulation
from tongxin.crypto.legacy_rsa import rsa_hybrid_decrypt, rsa_hybrid_encrypt
from tongxin.crypto.mac import hmac_sha256, hmac_sha256_verify, hmac_sm3, hmac_sm3_verify
from tongxin.crypto.sm2 import (
    SM2_DEFAULT_SIGNER_ID,
    SM2PrivateKey,
    SM2PublicKey,
    sm2_available,
    sm2_unavailable_reason,
)
from tongxin.crypto.sm4 import (
    SM4BlockCipher,
    sm4_cbc_decrypt,
    sm4_cbc_encrypt,
    sm4_ctr_crypt,
    sm4_gcm_decrypt,
    sm4_gcm_encrypt,
)
from tongxin.crypto.suite import (
    SUITE_NAMES,
    CryptoSuite,
    GMSuite,
    InternationalSuite,
    KeyPair,
    available_suites,
    get_suite,
)

__all__ = [
    "SM2_DEFAULT_SIGNER_ID",
    "SUITE_NAMES",
    "CryptoError",
    "CryptoSuite",
    "DecryptionError",
    "Encapsulation",
    "GMSuite",
    "InternationalSuite",
    "InvalidMacError",
    "InvalidSignatureError",
    "KeyFormatError",
    "KeyPair",
    "SM2PrivateKey",
    "SM2PublicKey",
    "SM2UnavailableError",
    "SM4BlockCipher",
    "available_suites",
    "get_suite",
    "hkdf_sha256",
    "hkdf_sm3",
    "hmac_sha256",
    "hmac_sha256_verify",
    "hmac_sm3",
    "hmac_sm3_verify",
    "rsa_hybrid_decrypt",
    "rsa_hybrid_encrypt",
    "sha256_digest",
    "sm2_available",
    "sm2_unavailable_reason",
    "sm3_digest",
    "sm4_cbc_decrypt",
    "sm4_cbc_encrypt",
    "sm4_ctr_crypt",
    "sm4_gcm_decrypt",
    "sm4_gcm_encrypt",
]

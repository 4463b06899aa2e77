"""Crypto suites: one interface, a GM (SM2/SM3/SM4) and an international implementation.

Keys cross this interface as bytes in standard containers, private keys as unencrypted PKCS#8
DER and public keys as SubjectPublicKeyInfo DER, the forms ``openssl pkey -outform DER``
reads and writes. The algorithm OID inside each container means a key of one suite handed
to the other is rejected with :class:`KeyFormatError` instead of being misused.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_private_key,
    load_der_public_key,
)

from tongxin.crypto import hashes, kdf, kem, mac, sm4
from tongxin.crypto.errors import (
    CryptoError,
    DecryptionError,
    InvalidSignatureError,
    KeyFormatError,
)
from tongxin.crypto.kem import Encapsulation
from tongxin.crypto.sm2 import SM2PrivateKey, SM2PublicKey, require_sm2


class KeyPair(NamedTuple):
    private_key: bytes
    """PKCS#8 DER, unencrypted."""
    public_key: bytes
    """SubjectPublicKeyInfo DER."""


@runtime_checkable
class SymmetricSuite(Protocol):
    """The part of a suite that needs no public-key algorithm: what encryption at rest
    asks for (hashes, MACs, HKDF, the AEAD). A consumer that needs only this asks for
    it (:func:`get_symmetric_suite`), so the GM suite's SM4 and SM3 work where SM2 does
    not (a host without OpenSSL >= 3.0 libcrypto, e.g. Kylin V10's 1.1.1). Every failure
    of authenticity raises a :class:`~tongxin.crypto.errors.CryptoError` subclass; none
    returns a false value."""

    @property
    def name(self) -> str: ...
    @property
    def hash_size(self) -> int: ...
    @property
    def aead_key_size(self) -> int: ...
    @property
    def aead_nonce_size(self) -> int: ...
    @property
    def aead_tag_size(self) -> int: ...

    def hash(self, data: bytes) -> bytes: ...
    def hmac(self, key: bytes, data: bytes) -> bytes: ...
    def hmac_verify(self, key: bytes, data: bytes, tag: bytes) -> None: ...
    def hkdf(
        self, ikm: bytes, length: int, *, salt: bytes | None = None, info: bytes = b""
    ) -> bytes: ...

    def aead_encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Return ciphertext || tag."""
        ...

    def aead_decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
        """Raise :class:`DecryptionError` unless ciphertext, tag, nonce and AAD all match."""
        ...


@runtime_checkable
class CryptoSuite(SymmetricSuite, Protocol):
    """What a protocol layer may ask of a suite: the symmetric part and signatures and a KEM."""

    def generate_signing_keypair(self) -> KeyPair: ...
    def sign(self, private_key: bytes, message: bytes) -> bytes: ...
    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        """Raise :class:`InvalidSignatureError` unless the signature is valid."""
        ...

    def generate_kem_keypair(self) -> KeyPair: ...
    def kem_encapsulate(self, public_key: bytes) -> Encapsulation: ...
    def kem_decapsulate(self, private_key: bytes, encapsulated_key: bytes) -> bytes: ...


class GMSymmetricSuite:
    """SM3, HMAC-SM3, HKDF-SM3 and SM4-GCM (16-byte key, 12-byte nonce, 16-byte tag), all
    from ``cryptography``: the GM suite without SM2. Construction fails with
    :class:`CryptoError` when the OpenSSL inside ``cryptography`` lacks SM3 or SM4 (some
    distribution builds strip them)."""

    name = "gm"
    hash_size = hashes.SM3_DIGEST_SIZE
    aead_key_size = sm4.SM4_KEY_SIZE
    aead_nonce_size = sm4.SM4_GCM_NONCE_SIZE
    aead_tag_size = sm4.SM4_GCM_TAG_SIZE

    def __init__(self) -> None:
        try:
            hashes.sm3_digest(b"")
            sm4.sm4_gcm_encrypt(bytes(16), bytes(12), b"")
        except UnsupportedAlgorithm as exc:
            raise CryptoError(
                f"the OpenSSL linked into 'cryptography' lacks SM3 or SM4: {exc}"
            ) from exc

    def hash(self, data: bytes) -> bytes:
        return hashes.sm3_digest(data)

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return mac.hmac_sm3(key, data)

    def hmac_verify(self, key: bytes, data: bytes, tag: bytes) -> None:
        mac.hmac_sm3_verify(key, data, tag)

    def hkdf(
        self, ikm: bytes, length: int, *, salt: bytes | None = None, info: bytes = b""
    ) -> bytes:
        return kdf.hkdf_sm3(ikm, length, salt=salt, info=info)

    def aead_encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        return sm4.sm4_gcm_encrypt(key, nonce, plaintext, aad)

    def aead_decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
        return sm4.sm4_gcm_decrypt(key, nonce, ciphertext, aad)


class GMSuite(GMSymmetricSuite):
    """The GM suite: :class:`GMSymmetricSuite` plus SM2 signatures (default signer ID) and
    the SM2-encryption KEM.

    Construction fails with :class:`SM2UnavailableError` when libcrypto is, and with
    :class:`CryptoError` when SM3 or SM4 are missing; the suite is never half-available.
    """

    def __init__(self) -> None:
        require_sm2()
        super().__init__()

    @staticmethod
    def _keypair(key: SM2PrivateKey) -> KeyPair:
        return KeyPair(key.to_der(), key.public_key().to_der())

    @staticmethod
    def _private(der: bytes) -> SM2PrivateKey:
        # The pair check costs an SM2 encrypt+decrypt per call and a mismatched pair fails
        # closed anyway (signatures do not verify, decryption fails), so it is skipped here.
        return SM2PrivateKey.from_der(der, check_pair=False)

    def generate_signing_keypair(self) -> KeyPair:
        return self._keypair(SM2PrivateKey.generate())

    def sign(self, private_key: bytes, message: bytes) -> bytes:
        return self._private(private_key).sign(message)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        SM2PublicKey.from_der(public_key).verify(signature, message)

    def generate_kem_keypair(self) -> KeyPair:
        # Same key type as signing, but callers must keep the two pairs separate.
        return self._keypair(SM2PrivateKey.generate())

    def kem_encapsulate(self, public_key: bytes) -> Encapsulation:
        return kem.sm2_kem_encapsulate(SM2PublicKey.from_der(public_key))

    def kem_decapsulate(self, private_key: bytes, encapsulated_key: bytes) -> bytes:
        return kem.sm2_kem_decapsulate(self._private(private_key), encapsulated_key)


def _load_private(der: bytes) -> object:
    try:
        return load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError("not an unencrypted PKCS#8 private key of this suite") from exc


def _load_public(der: bytes) -> object:
    try:
        return load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError("not a SubjectPublicKeyInfo public key of this suite") from exc


def _pkcs8(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> KeyPair:
    return KeyPair(
        key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption()),
        key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
    )


class InternationalSuite:
    """Ed25519, DHKEM(X25519, HKDF-SHA256) from RFC 9180, SHA-256, HMAC-SHA256,
    HKDF-SHA256, AES-256-GCM with a 32-byte key, 12-byte nonce and 16-byte tag."""

    name = "international"
    hash_size = hashes.SHA256_DIGEST_SIZE
    aead_key_size = 32
    aead_nonce_size = 12
    aead_tag_size = 16

    def hash(self, data: bytes) -> bytes:
        return hashes.sha256_digest(data)

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return mac.hmac_sha256(key, data)

    def hmac_verify(self, key: bytes, data: bytes, tag: bytes) -> None:
        mac.hmac_sha256_verify(key, data, tag)

    def hkdf(
        self, ikm: bytes, length: int, *, salt: bytes | None = None, info: bytes = b""
    ) -> bytes:
        return kdf.hkdf_sha256(ikm, length, salt=salt, info=info)

    def _aead(self, key: bytes, nonce: bytes) -> AESGCM:
        if len(key) != self.aead_key_size:
            raise ValueError(f"AES-256-GCM key must be 32 bytes, got {len(key)}")
        if len(nonce) != self.aead_nonce_size:
            raise ValueError(f"AES-256-GCM nonce must be 12 bytes, got {len(nonce)}")
        return AESGCM(key)

    def aead_encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        return self._aead(key, nonce).encrypt(nonce, plaintext, aad)

    def aead_decrypt(self, key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
        aead = self._aead(key, nonce)
        try:
            return aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag as exc:
            raise DecryptionError("AES-256-GCM authentication failed") from exc

    def generate_signing_keypair(self) -> KeyPair:
        return _pkcs8(ed25519.Ed25519PrivateKey.generate())

    def sign(self, private_key: bytes, message: bytes) -> bytes:
        key = _load_private(private_key)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise KeyFormatError("international suite signs with Ed25519 keys only")
        return key.sign(message)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        key = _load_public(public_key)
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise KeyFormatError("international suite verifies Ed25519 keys only")
        try:
            key.verify(signature, message)
        except InvalidSignature as exc:
            raise InvalidSignatureError("Ed25519 signature verification failed") from exc

    def generate_kem_keypair(self) -> KeyPair:
        return _pkcs8(x25519.X25519PrivateKey.generate())

    def kem_encapsulate(self, public_key: bytes) -> Encapsulation:
        key = _load_public(public_key)
        if not isinstance(key, x25519.X25519PublicKey):
            raise KeyFormatError("international suite encapsulates to X25519 keys only")
        return kem.dhkem_x25519_encapsulate(key)

    def kem_decapsulate(self, private_key: bytes, encapsulated_key: bytes) -> bytes:
        key = _load_private(private_key)
        if not isinstance(key, x25519.X25519PrivateKey):
            raise KeyFormatError("international suite decapsulates with X25519 keys only")
        return kem.dhkem_x25519_decapsulate(key, encapsulated_key)


_SUITES: dict[str, type[GMSuite] | type[InternationalSuite]] = {
    GMSuite.name: GMSuite,
    InternationalSuite.name: InternationalSuite,
}
SUITE_NAMES: tuple[str, ...] = tuple(_SUITES)


def get_suite(name: str) -> CryptoSuite:
    """Return the suite called ``name``.

    Raises ``ValueError`` for an unknown name and :class:`SM2UnavailableError` for ``"gm"``
    where SM2 cannot be used; never substitutes another suite.
    """
    factory = _SUITES.get(name)
    if factory is None:
        raise ValueError(f"unknown crypto suite {name!r}; known suites: {', '.join(SUITE_NAMES)}")
    return factory()


def get_symmetric_suite(name: str) -> SymmetricSuite:
    """The symmetric part of suite ``name``: for ``gm`` it needs SM3 and SM4 only, not SM2.
    Raises ``ValueError`` for an unknown name; never substitutes another suite."""
    if name == GMSuite.name:
        return GMSymmetricSuite()
    if name == InternationalSuite.name:
        return InternationalSuite()
    raise ValueError(f"unknown crypto suite {name!r}; known suites: {', '.join(SUITE_NAMES)}")


def available_suites() -> tuple[str, ...]:
    """Names of the suites that can be constructed in this process."""
    names = []
    for name, factory in _SUITES.items():
        try:
            factory()
        except CryptoError:
            continue
        names.append(name)
    return tuple(names)

"""SM2 (GB/T 32918) signatures and public-key encryption through OpenSSL 3's libcrypto.

libcrypto (OpenSSL >= 3.0; Debian 12's libssl3 on x86_64 and arm64), reached through the
ctypes binding :mod:`tongxin.crypto.openssl_sm2`, is the only SM2 provider used at run
time: key generation, d*G, signing, verification, encryption and decryption all happen in
it. ``cryptography`` has no SM2 curve, and the pure-Python ``gmssl`` package draws its
nonces from Python's non-cryptographic ``random`` module, which leaks private keys. This
module parses and builds the containers, so every key and every signature or ciphertext
has one accepted encoding, and maps libcrypto's failures to the crypto layer's errors.

Formats (all openssl-compatible, checked by the interop tests):

* signature: DER ``SEQUENCE { r INTEGER, s INTEGER }`` over SM3(Z_A || M), with
  Z_A computed from the signer ID (default ``1234567812345678``, GB/T 35276);
* ciphertext: DER ``SEQUENCE { x, y INTEGER, C3 OCTET STRING, C2 OCTET STRING }``
  (GM/T 0009 / GB/T 35276, i.e. C1C3C2 order); raw C1C3C2 / C1C2C3 conversion is offered
  for peers that use the older concatenated form;
* private key: PKCS#8 (``PRIVATE KEY``), id-ecPublicKey with the SM2 curve OID;
  SEC1 ``EC PRIVATE KEY`` / ``SM2 PRIVATE KEY`` is accepted on import;
* public key: SubjectPublicKeyInfo (``PUBLIC KEY``) with an uncompressed point.

Where no usable libcrypto can be loaded (missing, older than 3.0, built without SM2),
every SM2 entry point raises :class:`SM2UnavailableError`; there is no fallback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cryptography.hazmat import asn1

from tongxin.crypto import _der, openssl_sm2
from tongxin.crypto.errors import (
    CryptoError,
    DecryptionError,
    InvalidSignatureError,
    KeyFormatError,
    SM2UnavailableError,
)
from tongxin.crypto.openssl_sm2 import OpenSSLError

SM2_DEFAULT_SIGNER_ID = b"1234567812345678"
# SM2 encryption is for wrapping keys; bulk data goes through SM4-GCM under a wrapped key.
# 255 bytes is GmSSL's limit, kept in both directions so that every ciphertext made here
# can be opened by a GmSSL-based peer and to bound the work done on hostile input.
SM2_MAX_PLAINTEXT_SIZE = 255
# ENTL in Z_A is a 16-bit *bit* length.
SM2_MAX_SIGNER_ID_SIZE = 8191

# Curve order n (GB/T 32918.5); valid private keys are 1 <= d <= n - 2.
_SM2_N = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)
_COORD = 32
_C3_SIZE = 32

RawOrder = Literal["C1C3C2", "C1C2C3"]


def sm2_available() -> bool:
    """True if a libcrypto with SM2 (OpenSSL >= 3.0) loaded, i.e. SM2 can be used here."""
    return openssl_sm2.available()


def sm2_unavailable_reason() -> str | None:
    """Why SM2 is unavailable (names libcrypto and what was found), or None when it is."""
    return openssl_sm2.unavailable_reason()


def require_sm2() -> None:
    """Raise :class:`SM2UnavailableError` unless SM2 can be used in this process."""
    openssl_sm2.libcrypto()


def _check_signer_id(signer_id: bytes) -> None:
    # An empty ID is refused (GmSSL refuses it too), so signatures made by the openssl CLI
    # without -sigopt distid (which signs with an empty ID) cannot be verified here.
    if not 1 <= len(signer_id) <= SM2_MAX_SIGNER_ID_SIZE:
        raise ValueError(f"SM2 signer ID must be 1..{SM2_MAX_SIGNER_ID_SIZE} bytes")


def _spki(point: bytes) -> bytes:
    spki = _der.SubjectPublicKeyInfo(
        algorithm=_der.AlgorithmIdentifier(
            algorithm=_der.OID_EC_PUBLIC_KEY, parameters=_der.OID_SM2_CURVE
        ),
        subject_public_key=asn1.BitString(data=point, padding_bits=0),
    )
    return asn1.encode_der(spki)


def _sec1(scalar: bytes, point: bytes | None) -> bytes:
    """SEC1 ECPrivateKey naming the SM2 curve; without ``point`` libcrypto derives d*G."""
    return asn1.encode_der(
        _der.ECPrivateKey(
            version=1,
            private_key=scalar,
            parameters=_der.OID_SM2_CURVE,
            public_key=None if point is None else asn1.BitString(data=point, padding_bits=0),
        )
    )


class SM2PublicKey:
    """An SM2 public key: a point on the SM2 curve, validated on construction."""

    __slots__ = ("_key", "_xy")

    def __init__(self, point: bytes) -> None:
        """Accept 04||x||y (65 bytes), x||y (64 bytes) or a compressed point (33 bytes)."""
        require_sm2()
        point = bytes(point)
        if len(point) == 2 * _COORD:
            point = b"\x04" + point
        if not (
            (len(point) == 1 + 2 * _COORD and point[0] == 4)
            or (len(point) == 1 + _COORD and point[0] in (2, 3))
        ):
            raise KeyFormatError("not an SM2 point encoding (04||x||y, x||y or 02/03||x)")
        try:
            # libcrypto checks the point is on the curve and not the point at infinity;
            # the curve's cofactor is 1, so that puts it in the group of order n.
            self._key = openssl_sm2.load_public_key(_spki(point))
            self._xy = self._key.public_point()[1:]
        except OpenSSLError as exc:
            raise KeyFormatError(f"not a point on the SM2 curve ({exc})") from exc

    # -- encodings ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Uncompressed point 04||x||y (65 bytes)."""
        return b"\x04" + self._xy

    def to_der(self) -> bytes:
        """SubjectPublicKeyInfo DER, as written by ``openssl pkey -pubout -outform DER``."""
        return _spki(self.to_bytes())

    def to_pem(self) -> bytes:
        return _der.pem_encode("PUBLIC KEY", self.to_der())

    @classmethod
    def from_der(cls, der: bytes) -> SM2PublicKey:
        try:
            spki = asn1.decode_der(_der.SubjectPublicKeyInfo, der)
        except ValueError as exc:
            raise KeyFormatError("not a DER SubjectPublicKeyInfo") from exc
        _check_algorithm(spki.algorithm)
        bits = spki.subject_public_key
        if bits.padding_bits() != 0:
            raise KeyFormatError("SM2 public key BIT STRING has unused bits")
        return cls(bits.as_bytes())

    @classmethod
    def from_pem(cls, pem: bytes) -> SM2PublicKey:
        label, der = _der.pem_decode(pem)
        if label != "PUBLIC KEY":
            raise KeyFormatError(f"expected a PUBLIC KEY PEM block, got {label!r}")
        return cls.from_der(der)

    @classmethod
    def from_pem_file(cls, path: Path) -> SM2PublicKey:
        """The key in a PEM file; ValueError naming the file if it cannot be read or is
        not an SM2 public key (a trusted key given by an operator: say which and why)."""
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{path}: {exc.strerror}") from exc
        try:
            return cls.from_pem(pem)
        except SM2UnavailableError:
            raise  # not the file's fault
        except (CryptoError, ValueError) as exc:
            raise ValueError(f"{path}: not an SM2 public key (PEM): {exc}") from exc

    # -- operations --------------------------------------------------------------------

    def verify(
        self, signature: bytes, message: bytes, signer_id: bytes = SM2_DEFAULT_SIGNER_ID
    ) -> None:
        """Raise :class:`InvalidSignatureError` unless ``signature`` (DER) is valid.

        ``signer_id`` must be the ID the signer used; openssl's CLI uses an *empty* ID unless
        given ``-sigopt distid:1234567812345678`` (``dgst``) or ``-pkeyopt distid:...``
        (``pkeyutl``).
        """
        require_sm2()
        _check_signer_id(signer_id)
        try:
            # Re-encoding rejects BER variants and trailing bytes, so one signature has
            # exactly one accepted encoding (libcrypto 3.0 insists on DER as well).
            parsed = asn1.decode_der(_der.SM2Signature, signature)
            canonical = asn1.encode_der(parsed)
        except ValueError as exc:
            raise InvalidSignatureError("SM2 signature is not DER") from exc
        if canonical != signature or not (0 < parsed.r < _SM2_N and 0 < parsed.s < _SM2_N):
            raise InvalidSignatureError("SM2 signature is not canonical DER")
        try:
            ok = openssl_sm2.verify(self._key, bytes(signer_id), bytes(message), signature)
        except OpenSSLError as exc:
            raise InvalidSignatureError(f"SM2 signature verification failed ({exc})") from exc
        if not ok:
            raise InvalidSignatureError("SM2 signature verification failed")

    def encrypt(self, plaintext: bytes) -> bytes:
        """SM2-encrypt 1..255 bytes; returns the DER (C1C3C2) ciphertext."""
        require_sm2()
        if not 1 <= len(plaintext) <= SM2_MAX_PLAINTEXT_SIZE:
            raise ValueError(
                f"SM2 plaintext must be 1..{SM2_MAX_PLAINTEXT_SIZE} bytes, got {len(plaintext)}"
            )
        return openssl_sm2.encrypt(self._key, bytes(plaintext))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SM2PublicKey) and self._xy == other._xy

    def __hash__(self) -> int:
        return hash(self._xy)

    def __repr__(self) -> str:
        return f"SM2PublicKey({self.to_bytes().hex()})"


class SM2PrivateKey:
    """An SM2 private key together with its public key."""

    __slots__ = ("_d", "_key", "_public")

    _d: bytes
    _key: openssl_sm2.PrivateKey
    _public: SM2PublicKey

    def __init__(self, scalar: bytes, public_key: SM2PublicKey, *, check_pair: bool = True) -> None:
        """``check_pair`` has libcrypto compute d*G and compares it with ``public_key``.

        Skipping it is safe in the sense of failing closed (a mismatched pair produces
        signatures that do not verify and cannot decrypt), and saves one scalar
        multiplication.
        """
        require_sm2()
        scalar = bytes(scalar)
        self._check_scalar(scalar)
        point = public_key.to_bytes()
        key = self._load(_sec1(scalar, None if check_pair else point))
        if check_pair and key.public_point() != point:
            raise KeyFormatError("SM2 public key does not belong to the private key")
        self._d, self._key, self._public = scalar, key, public_key

    @staticmethod
    def _check_scalar(scalar: bytes) -> None:
        if len(scalar) != _COORD:
            raise KeyFormatError(f"SM2 private key must be {_COORD} bytes, got {len(scalar)}")
        if not 1 <= int.from_bytes(scalar, "big") <= _SM2_N - 2:
            raise KeyFormatError("SM2 private key is out of range [1, n-2]")

    @staticmethod
    def _load(sec1: bytes) -> openssl_sm2.PrivateKey:
        try:
            return openssl_sm2.load_private_key(sec1)
        except OpenSSLError as exc:
            raise KeyFormatError(f"libcrypto refused the SM2 private key ({exc})") from exc

    @classmethod
    def _from_key(cls, key: openssl_sm2.PrivateKey, scalar: bytes) -> SM2PrivateKey:
        self = cls.__new__(cls)
        self._d, self._key = scalar, key
        self._public = SM2PublicKey(key.public_point())
        return self

    @classmethod
    def from_scalar(cls, scalar: bytes) -> SM2PrivateKey:
        """The key for a 32-byte scalar d, with the public key d*G computed by libcrypto."""
        require_sm2()
        scalar = bytes(scalar)
        cls._check_scalar(scalar)
        return cls._from_key(cls._load(_sec1(scalar, None)), scalar)

    @classmethod
    def generate(cls) -> SM2PrivateKey:
        """A new key pair from libcrypto's key generation (its DRBG)."""
        require_sm2()
        while True:
            key = openssl_sm2.generate_private_key()
            scalar = key.private_scalar()
            if 1 <= int.from_bytes(scalar, "big") <= _SM2_N - 2:  # n-1: never, in practice
                return cls._from_key(key, scalar)

    def public_key(self) -> SM2PublicKey:
        return self._public

    def private_bytes_raw(self) -> bytes:
        """The 32-byte scalar d; handle with the same care as the key file."""
        return self._d

    # -- encodings ---------------------------------------------------------------------

    def to_der(self) -> bytes:
        """Unencrypted PKCS#8 DER, the layout ``openssl genpkey -algorithm SM2`` writes."""
        inner = _der.ECPrivateKey(
            version=1,
            private_key=self._d,
            parameters=None,
            public_key=asn1.BitString(data=self._public.to_bytes(), padding_bits=0),
        )
        info = _der.PrivateKeyInfo(
            version=0,
            algorithm=_der.AlgorithmIdentifier(
                algorithm=_der.OID_EC_PUBLIC_KEY, parameters=_der.OID_SM2_CURVE
            ),
            private_key=asn1.encode_der(inner),
        )
        return asn1.encode_der(info)

    def to_pem(self) -> bytes:
        return _der.pem_encode("PRIVATE KEY", self.to_der())

    @classmethod
    def from_der(cls, der: bytes, *, check_pair: bool = True) -> SM2PrivateKey:
        """Load PKCS#8 or SEC1 DER (unencrypted)."""
        require_sm2()
        try:
            info = asn1.decode_der(_der.PrivateKeyInfo, der)
        except ValueError:
            info = None
        if info is not None:
            if info.version != 0:
                raise KeyFormatError(f"unsupported PKCS#8 version {info.version}")
            _check_algorithm(info.algorithm)
            return cls._from_sec1(info.private_key, check_pair=check_pair)
        return cls._from_sec1(der, check_pair=check_pair)

    @classmethod
    def _from_sec1(cls, der: bytes, *, check_pair: bool) -> SM2PrivateKey:
        try:
            ec = asn1.decode_der(_der.ECPrivateKey, der)
        except ValueError as exc:
            raise KeyFormatError("not an unencrypted PKCS#8 or SEC1 SM2 private key") from exc
        if ec.version != 1:
            raise KeyFormatError(f"unsupported ECPrivateKey version {ec.version}")
        if ec.parameters is not None and ec.parameters != _der.OID_SM2_CURVE:
            raise KeyFormatError(f"EC key is on curve {ec.parameters.dotted_string}, not SM2")
        # SEC1 allows a scalar shorter than the field size when written by some tools.
        scalar = ec.private_key.rjust(_COORD, b"\x00")
        if ec.public_key is None:
            # e.g. `openssl ec -no_public`: libcrypto computes the public key.
            return cls.from_scalar(scalar)
        if ec.public_key.padding_bits() != 0:
            raise KeyFormatError("SM2 public key BIT STRING has unused bits")
        return cls(scalar, SM2PublicKey(ec.public_key.as_bytes()), check_pair=check_pair)

    @classmethod
    def from_pem(cls, pem: bytes, *, check_pair: bool = True) -> SM2PrivateKey:
        if b"Proc-Type: 4,ENCRYPTED" in pem:
            raise KeyFormatError("encrypted PEM private keys are not supported")
        label, der = _der.pem_decode(pem)
        if label == "ENCRYPTED PRIVATE KEY":
            raise KeyFormatError("encrypted PKCS#8 private keys are not supported")
        if label not in ("PRIVATE KEY", "EC PRIVATE KEY", "SM2 PRIVATE KEY"):
            raise KeyFormatError(f"expected a PRIVATE KEY PEM block, got {label!r}")
        return cls.from_der(der, check_pair=check_pair)

    # -- operations --------------------------------------------------------------------

    def sign(self, message: bytes, signer_id: bytes = SM2_DEFAULT_SIGNER_ID) -> bytes:
        """Sign SM3(Z_A || message); returns a DER signature (random nonce from libcrypto)."""
        require_sm2()
        _check_signer_id(signer_id)
        return openssl_sm2.sign(self._key, bytes(signer_id), bytes(message))

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypt a DER (C1C3C2) ciphertext; :class:`DecryptionError` if C3 does not match."""
        require_sm2()
        try:
            ct = asn1.decode_der(_der.SM2Ciphertext, ciphertext)
        except ValueError as exc:
            raise DecryptionError("SM2 decryption failed") from exc
        # One accepted encoding, as for signatures (libcrypto ignores trailing bytes).
        if (
            asn1.encode_der(ct) != ciphertext
            or len(ct.hash) != _C3_SIZE
            or not 1 <= len(ct.ciphertext) <= SM2_MAX_PLAINTEXT_SIZE
        ):
            raise DecryptionError("SM2 decryption failed")
        try:
            return openssl_sm2.decrypt(self._key, bytes(ciphertext))
        except OpenSSLError as exc:
            # Malformed, off-curve or tampered input all end here, indistinguishably; the
            # cause (libcrypto's reason) stays chained for local debugging only.
            raise DecryptionError("SM2 decryption failed") from exc

    def __repr__(self) -> str:
        return f"SM2PrivateKey(public={self._public.to_bytes().hex()})"


def _check_algorithm(alg: _der.AlgorithmIdentifier) -> None:
    if alg.algorithm != _der.OID_EC_PUBLIC_KEY:
        raise KeyFormatError(f"key algorithm {alg.algorithm.dotted_string} is not EC")
    if alg.parameters != _der.OID_SM2_CURVE:
        raise KeyFormatError(f"EC key is on curve {alg.parameters.dotted_string}, not SM2")


# -- format conversion for peers using raw encodings ---------------------------------------


def signature_der_to_raw(signature: bytes) -> bytes:
    """DER signature -> 64-byte r||s."""
    try:
        sig = asn1.decode_der(_der.SM2Signature, signature)
    except ValueError as exc:
        raise InvalidSignatureError("SM2 signature is not DER") from exc
    if not (0 < sig.r < _SM2_N and 0 < sig.s < _SM2_N):
        raise InvalidSignatureError("SM2 signature r or s out of range")
    return sig.r.to_bytes(_COORD, "big") + sig.s.to_bytes(_COORD, "big")


def signature_raw_to_der(raw: bytes) -> bytes:
    """64-byte r||s -> DER signature."""
    if len(raw) != 2 * _COORD:
        raise InvalidSignatureError("raw SM2 signature must be 64 bytes")
    r = int.from_bytes(raw[:_COORD], "big")
    s = int.from_bytes(raw[_COORD:], "big")
    return asn1.encode_der(_der.SM2Signature(r=r, s=s))


def ciphertext_der_to_raw(ciphertext: bytes, order: RawOrder = "C1C3C2") -> bytes:
    """DER ciphertext -> raw ``04||x||y || C3 || C2`` (or ``C2 || C3`` for C1C2C3)."""
    try:
        ct = asn1.decode_der(_der.SM2Ciphertext, ciphertext)
    except ValueError as exc:
        raise DecryptionError("SM2 ciphertext is not DER") from exc
    if not (0 <= ct.x < 2 ** (8 * _COORD) and 0 <= ct.y < 2 ** (8 * _COORD)):
        raise DecryptionError("SM2 ciphertext point is out of range")
    if len(ct.hash) != 32:
        raise DecryptionError("SM2 ciphertext C3 is not 32 bytes")
    c1 = b"\x04" + ct.x.to_bytes(_COORD, "big") + ct.y.to_bytes(_COORD, "big")
    if order == "C1C3C2":
        return c1 + ct.hash + ct.ciphertext
    if order == "C1C2C3":
        return c1 + ct.ciphertext + ct.hash
    raise ValueError(f"unknown SM2 ciphertext order {order!r}")


def ciphertext_raw_to_der(raw: bytes, order: RawOrder = "C1C3C2") -> bytes:
    """Raw ``04||x||y`` C1 followed by C3/C2 in ``order`` -> DER ciphertext."""
    c1_len = 1 + 2 * _COORD
    if len(raw) < c1_len + 32 + 1 or raw[0] != 4:
        raise DecryptionError("raw SM2 ciphertext must start with an uncompressed point 04||x||y")
    x = int.from_bytes(raw[1 : 1 + _COORD], "big")
    y = int.from_bytes(raw[1 + _COORD : c1_len], "big")
    rest = raw[c1_len:]
    if order == "C1C3C2":
        c3, c2 = rest[:32], rest[32:]
    elif order == "C1C2C3":
        c2, c3 = rest[:-32], rest[-32:]
    else:
        raise ValueError(f"unknown SM2 ciphertext order {order!r}")
    return asn1.encode_der(_der.SM2Ciphertext(x=x, y=y, hash=c3, ciphertext=c2))


__all__ = [
    "SM2_DEFAULT_SIGNER_ID",
    "SM2_MAX_PLAINTEXT_SIZE",
    "SM2PrivateKey",
    "SM2PublicKey",
    "ciphertext_der_to_raw",
    "ciphertext_raw_to_der",
    "require_sm2",
    "signature_der_to_raw",
    "signature_raw_to_der",
    "sm2_available",
    "sm2_unavailable_reason",
]

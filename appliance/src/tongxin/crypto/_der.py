"""DER structures for SM2 keys, signatures and ciphertexts, plus PEM armour.

``cryptography`` cannot load SM2 keys (it has no SM2 curve). The openssl-compatible
containers are parsed and built here, before libcrypto sees them, so that each key,
signature and ciphertext has one accepted encoding; they are described with cryptography's
declarative ASN.1 module rather than hand-written TLV code. That module is marked unstable
upstream; it is confined to this file so that a change in a future ``cryptography`` release
touches only these definitions, and the openssl interop tests catch any drift.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated

from cryptography import x509
from cryptography.hazmat import asn1

from tongxin.crypto.errors import KeyFormatError

# id-ecPublicKey (RFC 5480) and the SM2 curve (GM/T 0006 / GB/T 33560), the pair openssl
# writes into the AlgorithmIdentifier of SM2 PKCS#8 and SubjectPublicKeyInfo structures.
OID_EC_PUBLIC_KEY = x509.ObjectIdentifier("1.2.840.10045.2.1")
OID_SM2_CURVE = x509.ObjectIdentifier("1.2.156.10197.1.301")


@asn1.sequence
class AlgorithmIdentifier:
    algorithm: x509.ObjectIdentifier
    parameters: x509.ObjectIdentifier


@asn1.sequence
class SubjectPublicKeyInfo:
    algorithm: AlgorithmIdentifier
    subject_public_key: asn1.BitString


@asn1.sequence
class ECPrivateKey:
    """RFC 5915 ECPrivateKey; openssl leaves ``parameters`` out inside PKCS#8."""

    version: int
    private_key: bytes
    parameters: Annotated[x509.ObjectIdentifier | None, asn1.Explicit(0)]
    public_key: Annotated[asn1.BitString | None, asn1.Explicit(1)]


@asn1.sequence
class PrivateKeyInfo:
    """PKCS#8 v1 (RFC 5208) without attributes, which is what openssl genpkey writes."""

    version: int
    algorithm: AlgorithmIdentifier
    private_key: bytes


@asn1.sequence
class SM2Signature:
    """GM/T 0009 / GB/T 35276 SM2 signature: SEQUENCE { r INTEGER, s INTEGER }."""

    r: int
    s: int


@asn1.sequence
class SM2Ciphertext:
    """GM/T 0009 / GB/T 35276 SM2 ciphertext, fields in C1 C3 C2 order."""

    x: int
    y: int
    hash: bytes
    ciphertext: bytes


_PEM_RE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)\r?\n?-----END \1-----",
    re.DOTALL,
)


def pem_encode(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        f"-----BEGIN {label}-----\n".encode()
        + b"\n".join(lines)
        + f"\n-----END {label}-----\n".encode()
    )


def pem_decode(data: bytes) -> tuple[str, bytes]:
    """Return (label, der) of the first PEM block in ``data``."""
    match = _PEM_RE.search(data)
    if match is None:
        raise KeyFormatError("no PEM block found")
    label = match.group(1).decode("ascii")
    body = b"".join(match.group(2).split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"PEM block {label!r} is not valid base64") from exc
    return label, der

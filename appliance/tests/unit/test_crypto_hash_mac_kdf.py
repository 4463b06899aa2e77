"""SM3 / SHA-256, HMAC and HKDF: published vectors first, then second implementations
where no vector is published: the pure-Python gmssl package, GmSSL through gmssl-pyx where
it is installed (see gm_references), and the system openssl CLI."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from gm_references import hmac_sm3_references, sm3_references

from tongxin.crypto import (
    InvalidMacError,
    hkdf_sha256,
    hkdf_sm3,
    hmac_sha256,
    hmac_sha256_verify,
    hmac_sm3,
    hmac_sm3_verify,
    sha256_digest,
    sm3_digest,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="system openssl CLI not installed")
SM3_REFS = sm3_references()
HMAC_SM3_REFS = hmac_sm3_references()


def _openssl(*args: str) -> bytes:
    assert OPENSSL is not None
    proc = subprocess.run([OPENSSL, *args], capture_output=True, check=False, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _openssl_kdf_hex(out: bytes) -> bytes:
    return bytes.fromhex(out.decode().strip().replace(":", ""))


# -- SM3: GB/T 32905-2016 Appendix A ---------------------------------------------------------


def test_sm3_gbt32905_example_1_abc() -> None:
    assert sm3_digest(b"abc") == bytes.fromhex(
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )


def test_sm3_gbt32905_example_2_512_bit_message() -> None:
    assert sm3_digest(b"abcd" * 16) == bytes.fromhex(
        "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
    )


@pytest.mark.parametrize("ref", SM3_REFS)
@pytest.mark.parametrize("length", [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000])
def test_sm3_matches_second_implementations_across_padding_boundaries(ref: str, length: int) -> None:
    data = bytes((i * 7 + 3) % 256 for i in range(length))
    assert sm3_digest(data) == SM3_REFS[ref](data)


def test_sha256_fips_180_abc() -> None:
    assert sha256_digest(b"abc") == bytes.fromhex(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# -- HMAC ------------------------------------------------------------------------------------


def test_hmac_sha256_rfc4231_case_1() -> None:
    key, data = b"\x0b" * 20, b"Hi There"
    expected = bytes.fromhex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    assert hmac_sha256(key, data) == expected
    hmac_sha256_verify(key, data, expected)


@pytest.mark.parametrize("ref", HMAC_SM3_REFS)
@pytest.mark.parametrize("key_len", [1, 16, 64, 65, 200])
def test_hmac_sm3_matches_second_implementations(ref: str, key_len: int) -> None:
    key = bytes((i * 13 + 1) % 256 for i in range(key_len))
    data = b"what do ya want for nothing?"
    assert hmac_sm3(key, data) == HMAC_SM3_REFS[ref](key, data)


@needs_openssl
def test_hmac_sm3_matches_openssl_cli(tmp_path: Path) -> None:
    key = bytes(range(1, 41))
    data = b"Tongxin HMAC-SM3 interop" * 5
    msg = tmp_path / "msg"
    msg.write_bytes(data)
    out = _openssl(
        "mac", "-digest", "SM3", "-macopt", f"hexkey:{key.hex()}", "-in", str(msg), "HMAC"
    )
    assert hmac_sm3(key, data) == bytes.fromhex(out.decode().strip())


def test_hmac_verify_rejects_wrong_tag_key_and_data() -> None:
    key, data = b"k" * 32, b"payload"
    tag = hmac_sm3(key, data)
    hmac_sm3_verify(key, data, tag)
    flipped = bytes([tag[0] ^ 1]) + tag[1:]
    for args in (
        (key, data, flipped),
        (key, data, tag[:-1]),
        (b"K" * 32, data, tag),
        (key, b"payloaD", tag),
    ):
        with pytest.raises(InvalidMacError):
            hmac_sm3_verify(*args)
    with pytest.raises(InvalidMacError):
        hmac_sha256_verify(key, data, tag)  # an SM3 tag is not a SHA-256 tag


# -- HKDF ------------------------------------------------------------------------------------

RFC5869_IKM = b"\x0b" * 22
RFC5869_SALT = bytes(range(13))
RFC5869_INFO = bytes(range(0xF0, 0xFA))


def test_hkdf_sha256_rfc5869_case_1() -> None:
    okm = hkdf_sha256(RFC5869_IKM, 42, salt=RFC5869_SALT, info=RFC5869_INFO)
    assert okm == bytes.fromhex(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


@needs_openssl
@pytest.mark.parametrize("length", [16, 32, 42, 100])
def test_hkdf_sm3_matches_openssl_cli(length: int) -> None:
    out = _openssl(
        "kdf",
        "-keylen",
        str(length),
        "-kdfopt",
        "digest:SM3",
        "-kdfopt",
        f"hexkey:{RFC5869_IKM.hex()}",
        "-kdfopt",
        f"hexsalt:{RFC5869_SALT.hex()}",
        "-kdfopt",
        f"hexinfo:{RFC5869_INFO.hex()}",
        "HKDF",
    )
    expected = _openssl_kdf_hex(out)
    assert hkdf_sm3(RFC5869_IKM, length, salt=RFC5869_SALT, info=RFC5869_INFO) == expected


@pytest.mark.parametrize("ref", HMAC_SM3_REFS)
def test_hkdf_sm3_matches_rfc5869_built_on_a_second_hmac(ref: str) -> None:
    # RFC 5869 section 2 written out over an independent HMAC-SM3, against which our
    # cryptography-based HKDF must agree.
    hmac_ref: Callable[[bytes, bytes], bytes] = HMAC_SM3_REFS[ref]
    ikm, salt, info, length = b"input keying material", b"salt value", b"context", 77
    prk = hmac_ref(salt, ikm)
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac_ref(prk, block + info + bytes([counter]))
        okm += block
        counter += 1
    assert hkdf_sm3(ikm, length, salt=salt, info=info) == okm[:length]


def test_hkdf_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError):
        hkdf_sm3(b"ikm", 0)
    with pytest.raises(ValueError):
        hkdf_sha256(b"ikm", 255 * 32 + 1)

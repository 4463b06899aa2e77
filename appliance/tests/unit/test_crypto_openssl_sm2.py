"""The ctypes binding to libcrypto (tongxin.crypto.openssl_sm2) on its own: which libraries it
accepts, that it refuses non-SM2 keys and trailing bytes, that a bad signature is False
rather than an exception, that no call leaves an entry in OpenSSL's per-thread error queue,
and that repeated use does not leak the contexts it allocates."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from tongxin.crypto import openssl_sm2, sm2_available, sm2_unavailable_reason
from tongxin.crypto.openssl_sm2 import OpenSSLError

pytestmark = pytest.mark.skipif(
    not sm2_available(), reason=f"SM2 unavailable: {sm2_unavailable_reason()}"
)

ID = b"1234567812345678"


def _queue_is_empty() -> bool:
    return openssl_sm2.libcrypto().ERR_get_error() == 0


class _FakeFunction:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.argtypes: list[Any] = []
        self.restype: Any = None

    def __call__(self, *args: Any) -> Any:
        return self.result


class _FakeLibrary:
    """Just enough of a CDLL for the version check: an OpenSSL 1.1.1 (Kylin V10)."""

    def __init__(self, number: int, text: bytes) -> None:
        self.OpenSSL_version_num = _FakeFunction(number)
        self.OpenSSL_version = _FakeFunction(text)


def test_the_loaded_library_is_openssl_3() -> None:
    assert openssl_sm2.version().startswith("OpenSSL 3.")
    assert openssl_sm2.unavailable_reason() is None


def test_openssl_older_than_3_is_refused_naming_the_version() -> None:
    fake = cast(ctypes.CDLL, _FakeLibrary(0x1010106F, b"OpenSSL 1.1.1f  31 Mar 2020"))
    with pytest.raises(ValueError, match=r"OpenSSL 1\.1\.1f .*needs OpenSSL 3\.0 or later"):
        openssl_sm2._bind(fake, "libcrypto.so.1.1")


def test_a_library_without_a_needed_function_is_refused() -> None:
    fake = cast(ctypes.CDLL, _FakeLibrary(0x30000020, b"OpenSSL 3.0.2 15 Mar 2022"))
    with pytest.raises(ValueError, match="lacks a function SM2 needs"):
        openssl_sm2._bind(fake, "libcrypto.so.3")


def test_a_library_that_is_not_openssl_is_refused() -> None:
    with pytest.raises(ValueError, match="not OpenSSL"):
        openssl_sm2._open("libc.so.6")
    with pytest.raises(ValueError, match="cannot load"):
        openssl_sm2._open("/nonexistent/libcrypto.so.3")


def test_non_sm2_keys_and_trailing_bytes_are_refused() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    der = p256.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    spki = p256.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(OpenSSLError, match="not an SM2 key"):
        openssl_sm2.load_private_key(der)
    with pytest.raises(OpenSSLError, match="not an SM2 key"):
        openssl_sm2.load_public_key(spki)
    key = openssl_sm2.generate_private_key()
    good = _pkcs8_of(key)
    assert openssl_sm2.load_private_key(good).private_scalar() == key.private_scalar()
    with pytest.raises(OpenSSLError, match="trailing bytes"):
        openssl_sm2.load_private_key(good + b"\x00")
    with pytest.raises(OpenSSLError, match="error:"):  # OpenSSL's own text is carried
        openssl_sm2.load_private_key(good[:-1])
    assert _queue_is_empty()


def _pkcs8_of(key: openssl_sm2.PrivateKey) -> bytes:
    from tongxin.crypto.sm2 import SM2PrivateKey

    return SM2PrivateKey.from_scalar(key.private_scalar()).to_der()


def test_bad_signatures_are_false_and_leave_no_error_behind() -> None:
    key = openssl_sm2.generate_private_key()
    sig = openssl_sm2.sign(key, ID, b"m")
    assert openssl_sm2.verify(key, ID, b"m", sig)
    assert _queue_is_empty()
    for bad in (b"", b"garbage", sig[:-1], sig + b"\x00", os.urandom(72)):
        assert openssl_sm2.verify(key, ID, b"m", bad) is False
        assert _queue_is_empty()
    assert openssl_sm2.verify(key, ID + b"x", b"m", sig) is False
    assert openssl_sm2.verify(key, ID, b"M", sig) is False
    assert _queue_is_empty()


def test_failed_decryption_raises_with_openssl_text_and_leaves_no_error() -> None:
    key = openssl_sm2.generate_private_key()
    ct = openssl_sm2.encrypt(key, b"wrapped key")
    assert openssl_sm2.decrypt(key, ct) == b"wrapped key"
    tampered = ct[:-1] + bytes([ct[-1] ^ 1])
    for bad in (tampered, ct[:40], b"\x30\x00"):
        with pytest.raises(OpenSSLError, match="EVP_PKEY_decrypt"):
            openssl_sm2.decrypt(key, bad)
        assert _queue_is_empty()


def test_public_point_and_scalar_round_trip_through_libcrypto() -> None:
    key = openssl_sm2.generate_private_key()
    point, scalar = key.public_point(), key.private_scalar()
    assert len(point) == 65 and point[0] == 4 and len(scalar) == 32
    again = openssl_sm2.load_private_key(_pkcs8_of(key))
    assert again.public_point() == point


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


def test_repeated_operations_do_not_leak() -> None:
    """Each round allocates and frees EVP_PKEYs, EVP_PKEY_CTXs, EVP_MD_CTXs and BIGNUMs.
    Measured by leaving out one free: an EVP_PKEY_CTX costs about 5 KiB a round, an
    EVP_PKEY 2 KiB, so either would show here; a single BIGNUM or EVP_MD_CTX is too
    small to see this way."""

    def rounds(n: int) -> None:
        for _ in range(n):
            key = openssl_sm2.load_private_key(der)
            key.public_point()
            sig = openssl_sm2.sign(key, ID, b"m")
            assert openssl_sm2.verify(key, ID, b"m", sig)
            assert not openssl_sm2.verify(key, ID, b"m", b"bad")
            assert openssl_sm2.decrypt(key, openssl_sm2.encrypt(key, b"k")) == b"k"
            with pytest.raises(OpenSSLError):
                openssl_sm2.decrypt(key, b"\x30\x00")

    der = _pkcs8_of(openssl_sm2.generate_private_key())
    rounds(200)  # warm up allocator arenas and OpenSSL's caches
    gc.collect()
    before = _rss_kib()
    rounds(1000)
    gc.collect()
    grown = _rss_kib() - before
    assert grown < 1024, f"RSS grew by {grown} KiB over 1000 rounds"

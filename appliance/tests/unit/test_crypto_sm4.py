"""SM4: GB/T 32907 and RFC 8998 vectors, then the openssl CLI, the pure-Python gmssl package
and (where it is installed, see gm_references) GmSSL through gmssl-pyx as second opinions
for the CBC/CTR modes that have no vector in those standards."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from gm_references import GMSSL_PYX
from gmssl import sm4 as gmssl_sm4

from tongxin.crypto import (
    DecryptionError,
    SM4BlockCipher,
    sm4_cbc_decrypt,
    sm4_cbc_encrypt,
    sm4_ctr_crypt,
    sm4_gcm_decrypt,
    sm4_gcm_encrypt,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="system openssl CLI not installed")

GBT_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")

# RFC 8998 Appendix A.1.
RFC8998_KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
RFC8998_IV = bytes.fromhex("00001234567800000000ABCD")
RFC8998_PT = bytes.fromhex(
    "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB"
    "CCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
    "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFF"
    "EEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
)
RFC8998_AAD = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
RFC8998_CT = bytes.fromhex(
    "17F399F08C67D5EE19D0DC9969C4BB7D"
    "5FD46FD3756489069157B282BB200735"
    "D82710CA5C22F0CCFA7CBF93D496AC15"
    "A56834CBCF98C397B4024A2691233B8D"
)
RFC8998_TAG = bytes.fromhex("83DE3541E4C2B58177E065A9BF7B62EC")


def _openssl_enc(mode: str, key: bytes, iv: bytes, data: bytes, *, decrypt: bool) -> bytes:
    assert OPENSSL is not None
    args = [OPENSSL, "enc", f"-sm4-{mode}", "-K", key.hex(), "-iv", iv.hex()]
    if decrypt:
        args.append("-d")
    proc = subprocess.run(args, input=data, capture_output=True, check=False, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


# -- GB/T 32907-2016 Appendix A ---------------------------------------------------------------


def test_sm4_gbt32907_example_1_single_block() -> None:
    cipher = SM4BlockCipher(GBT_KEY)
    expected = bytes.fromhex("681edf34d206965e86b3e94f536e4246")
    assert cipher.encrypt_block(GBT_KEY) == expected
    assert cipher.decrypt_block(expected) == GBT_KEY


def test_sm4_gbt32907_example_2_one_million_encryptions() -> None:
    cipher = SM4BlockCipher(GBT_KEY)
    block = GBT_KEY
    for _ in range(1_000_000):
        block = cipher.encrypt_block(block)
    assert block == bytes.fromhex("595298c7c6fd271f0402f804c33d3f66")


def test_sm4_block_rejects_wrong_sizes() -> None:
    with pytest.raises(ValueError):
        SM4BlockCipher(b"short")
    with pytest.raises(ValueError):
        SM4BlockCipher(GBT_KEY).encrypt_block(b"x" * 15)


# -- SM4-GCM: RFC 8998 Appendix A.1 ------------------------------------------------------------


def test_sm4_gcm_rfc8998_vector_encrypt() -> None:
    out = sm4_gcm_encrypt(RFC8998_KEY, RFC8998_IV, RFC8998_PT, RFC8998_AAD)
    assert out == RFC8998_CT + RFC8998_TAG


def test_sm4_gcm_rfc8998_vector_decrypt() -> None:
    pt = sm4_gcm_decrypt(RFC8998_KEY, RFC8998_IV, RFC8998_CT + RFC8998_TAG, RFC8998_AAD)
    assert pt == RFC8998_PT


def test_sm4_gcm_rejects_every_single_bit_flip() -> None:
    sealed = RFC8998_CT + RFC8998_TAG
    for i in range(len(sealed)):
        for bit in (0x01, 0x80):
            tampered = sealed[:i] + bytes([sealed[i] ^ bit]) + sealed[i + 1 :]
            with pytest.raises(DecryptionError):
                sm4_gcm_decrypt(RFC8998_KEY, RFC8998_IV, tampered, RFC8998_AAD)


def test_sm4_gcm_rejects_wrong_aad_nonce_key_and_truncation() -> None:
    sealed = RFC8998_CT + RFC8998_TAG
    wrong_key = bytes([RFC8998_KEY[0] ^ 1]) + RFC8998_KEY[1:]
    wrong_iv = RFC8998_IV[:-1] + bytes([RFC8998_IV[-1] ^ 1])
    cases = [
        (RFC8998_KEY, RFC8998_IV, sealed, RFC8998_AAD[:-1]),
        (RFC8998_KEY, RFC8998_IV, sealed, b""),
        (RFC8998_KEY, wrong_iv, sealed, RFC8998_AAD),
        (wrong_key, RFC8998_IV, sealed, RFC8998_AAD),
        (RFC8998_KEY, RFC8998_IV, sealed[:-1], RFC8998_AAD),
        (RFC8998_KEY, RFC8998_IV, sealed[16:], RFC8998_AAD),
        (RFC8998_KEY, RFC8998_IV, RFC8998_TAG[:15], RFC8998_AAD),
        (RFC8998_KEY, RFC8998_IV, b"", RFC8998_AAD),
    ]
    for key, iv, data, aad in cases:
        with pytest.raises(DecryptionError):
            sm4_gcm_decrypt(key, iv, data, aad)


def test_sm4_gcm_rejects_bad_parameters_as_value_errors() -> None:
    with pytest.raises(ValueError):
        sm4_gcm_encrypt(RFC8998_KEY[:15], RFC8998_IV, b"x")
    with pytest.raises(ValueError):
        sm4_gcm_encrypt(RFC8998_KEY, RFC8998_IV + b"\x00", b"x")


if GMSSL_PYX is not None:  # GmSSL is the only second SM4-GCM here (see gm_references)

    @pytest.mark.parametrize("pt_len", [1, 15, 16, 17, 1000])  # gmssl-pyx refuses empty input
    def test_sm4_gcm_matches_gmssl_pyx(pt_len: int) -> None:
        assert GMSSL_PYX is not None
        key, iv = os.urandom(16), os.urandom(12)
        aad, pt = os.urandom(pt_len % 37), os.urandom(pt_len)
        ct, tag = GMSSL_PYX.sm4_gcm_encrypt(key, iv, aad, pt)
        assert sm4_gcm_encrypt(key, iv, pt, aad) == ct + tag
        assert sm4_gcm_decrypt(key, iv, ct + tag, aad) == pt


# -- SM4-CBC (PKCS#7) and SM4-CTR ----------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("pt_len", [0, 1, 15, 16, 17, 100])
def test_sm4_cbc_interoperates_with_openssl_both_ways(pt_len: int) -> None:
    key, iv, pt = os.urandom(16), os.urandom(16), os.urandom(pt_len)
    ours = sm4_cbc_encrypt(key, iv, pt)
    assert ours == _openssl_enc("cbc", key, iv, pt, decrypt=False)
    assert _openssl_enc("cbc", key, iv, ours, decrypt=True) == pt
    assert sm4_cbc_decrypt(key, iv, _openssl_enc("cbc", key, iv, pt, decrypt=False)) == pt


def _gmssl_cbc(key: bytes, iv: bytes, pt: bytes) -> bytes:
    cipher = gmssl_sm4.CryptSM4()  # PKCS#7 padding
    cipher.set_key(key, gmssl_sm4.SM4_ENCRYPT)
    return bytes(cipher.crypt_cbc(iv, pt))


CBC_REFS = {"gmssl": _gmssl_cbc}
if GMSSL_PYX is not None:
    CBC_REFS["gmssl-pyx"] = GMSSL_PYX.sm4_cbc_padding_encrypt


@pytest.mark.parametrize("ref", CBC_REFS)
@pytest.mark.parametrize("pt_len", [1, 5, 16, 33])  # gmssl-pyx refuses empty input
def test_sm4_cbc_matches_second_implementations(ref: str, pt_len: int) -> None:
    key, iv, pt = os.urandom(16), os.urandom(16), os.urandom(pt_len)
    assert sm4_cbc_encrypt(key, iv, pt) == CBC_REFS[ref](key, iv, pt)


def test_sm4_cbc_bad_padding_and_length_raise_decryption_error() -> None:
    key, iv = bytes(16), bytes(16)
    # A block whose decryption ends in 0x00 can never carry valid PKCS#7 padding.
    block = SM4BlockCipher(key).encrypt_block(bytes(16))  # CBC with zero IV: D(C) = 0^16
    with pytest.raises(DecryptionError):
        sm4_cbc_decrypt(key, iv, block)
    for bad in (b"", b"x" * 15, b"x" * 17):
        with pytest.raises(DecryptionError):
            sm4_cbc_decrypt(key, iv, bad)


@needs_openssl
@pytest.mark.parametrize(
    "counter",
    [
        "000102030405060708090a0b0c0d0e0f",
        "000000000000000000000000fffffffe",  # carries out of the low 32 bits
        "ffffffffffffffffffffffffffffffff",  # wraps the whole 128-bit counter
    ],
)
def test_sm4_ctr_interoperates_with_openssl(counter: str) -> None:
    key, ctr, data = os.urandom(16), bytes.fromhex(counter), os.urandom(100)
    ours = sm4_ctr_crypt(key, ctr, data)
    assert ours == _openssl_enc("ctr", key, ctr, data, decrypt=False)
    assert sm4_ctr_crypt(key, ctr, ours) == data


if GMSSL_PYX is not None:

    def test_sm4_ctr_matches_gmssl_pyx_across_counter_carry() -> None:
        assert GMSSL_PYX is not None
        key, data = os.urandom(16), os.urandom(80)
        for counter in ("0000000000000000ffffffffffffffff", "00000000000000000000000000000000"):
            ctr = bytes.fromhex(counter)
            assert sm4_ctr_crypt(key, ctr, data) == GMSSL_PYX.sm4_ctr_encrypt(key, ctr, data)

"""The CryptoSuite interface: both suites round-trip through it, published vectors hold when
reached through it, keys of one suite are refused by the other, unknown names and a
missing libcrypto (SM2) fail loudly, and the legacy RSA hybrid interoperates with openssl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

import tongxin.crypto
from tongxin.crypto import (
    SUITE_NAMES,
    CryptoSuite,
    DecryptionError,
    GMSuite,
    InternationalSuite,
    InvalidMacError,
    InvalidSignatureError,
    KeyFormatError,
    available_suites,
    get_suite,
    rsa_hybrid_decrypt,
    rsa_hybrid_encrypt,
    sm2_available,
)
from tongxin.crypto.kem import dhkem_x25519_decapsulate, dhkem_x25519_encapsulate
from tongxin.crypto.openssl_sm2 import LIBCRYPTO_ENV

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="system openssl CLI not installed")
needs_sm2 = pytest.mark.skipif(not sm2_available(), reason="SM2 (libcrypto) is not available")


def _ok(args: Sequence[str], data: bytes | None = None) -> bytes:
    assert OPENSSL is not None
    proc = subprocess.run(
        [OPENSSL, *args], input=data, capture_output=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _suites() -> list[str]:
    return [name for name in SUITE_NAMES if name != "gm" or sm2_available()]


# -- the interface, generically ------------------------------------------------------------------


@pytest.mark.parametrize("name", _suites())
def test_suite_round_trips_through_the_interface(name: str) -> None:
    suite = get_suite(name)
    assert isinstance(suite, CryptoSuite)
    assert suite.name == name

    key = os.urandom(suite.aead_key_size)
    nonce = os.urandom(suite.aead_nonce_size)
    for plaintext in (b"", b"x", os.urandom(1000)):
        sealed = suite.aead_encrypt(key, nonce, plaintext, b"header")
        assert len(sealed) == len(plaintext) + suite.aead_tag_size
        assert suite.aead_decrypt(key, nonce, sealed, b"header") == plaintext

    signing = suite.generate_signing_keypair()
    sig = suite.sign(signing.private_key, b"message")
    suite.verify(signing.public_key, b"message", sig)

    kem_pair = suite.generate_kem_keypair()
    enc = suite.kem_encapsulate(kem_pair.public_key)
    assert len(enc.shared_secret) == 32
    assert suite.kem_decapsulate(kem_pair.private_key, enc.encapsulated_key) == enc.shared_secret
    assert suite.kem_encapsulate(kem_pair.public_key).shared_secret != enc.shared_secret

    assert len(suite.hash(b"abc")) == suite.hash_size
    tag = suite.hmac(b"k", b"d")
    suite.hmac_verify(b"k", b"d", tag)
    with pytest.raises(InvalidMacError):
        suite.hmac_verify(b"k", b"e", tag)
    assert suite.hkdf(b"ikm", 64, salt=b"s", info=b"i") != suite.hkdf(b"ikm", 64, info=b"i")


@pytest.mark.parametrize("name", _suites())
def test_suite_rejects_tampering_with_library_neutral_errors(name: str) -> None:
    suite = get_suite(name)
    key, nonce = os.urandom(suite.aead_key_size), os.urandom(suite.aead_nonce_size)
    sealed = suite.aead_encrypt(key, nonce, b"attack at dawn", b"aad")
    for i in (0, len(sealed) // 2, len(sealed) - 1):
        bad = sealed[:i] + bytes([sealed[i] ^ 0x40]) + sealed[i + 1 :]
        with pytest.raises(DecryptionError):
            suite.aead_decrypt(key, nonce, bad, b"aad")
    with pytest.raises(DecryptionError):
        suite.aead_decrypt(key, nonce, sealed, b"AAD")
    with pytest.raises(DecryptionError):
        suite.aead_decrypt(key, nonce, sealed[: suite.aead_tag_size - 1], b"aad")

    pair = suite.generate_signing_keypair()
    sig = suite.sign(pair.private_key, b"m")
    with pytest.raises(InvalidSignatureError):
        suite.verify(pair.public_key, b"M", sig)
    with pytest.raises(InvalidSignatureError):
        suite.verify(pair.public_key, b"m", sig[:-1] + bytes([sig[-1] ^ 1]))
    other = suite.generate_signing_keypair()
    with pytest.raises(InvalidSignatureError):
        suite.verify(other.public_key, b"m", sig)

    kem_pair = suite.generate_kem_keypair()
    with pytest.raises(DecryptionError):
        suite.kem_decapsulate(kem_pair.private_key, b"\x00" * 7)


@needs_sm2
def test_keys_of_one_suite_are_refused_by_the_other() -> None:
    gm, intl = GMSuite(), InternationalSuite()
    gm_sign, intl_sign = gm.generate_signing_keypair(), intl.generate_signing_keypair()
    gm_kem, intl_kem = gm.generate_kem_keypair(), intl.generate_kem_keypair()
    with pytest.raises(KeyFormatError):
        intl.sign(gm_sign.private_key, b"m")
    with pytest.raises(KeyFormatError):
        gm.sign(intl_sign.private_key, b"m")
    with pytest.raises(KeyFormatError):
        intl.verify(gm_sign.public_key, b"m", b"sig")
    with pytest.raises(KeyFormatError):
        gm.verify(intl_sign.public_key, b"m", b"sig")
    with pytest.raises(KeyFormatError):
        intl.kem_encapsulate(gm_kem.public_key)
    with pytest.raises(KeyFormatError):
        gm.kem_encapsulate(intl_kem.public_key)
    # Within the international suite, an Ed25519 key is not an X25519 key.
    with pytest.raises(KeyFormatError):
        intl.kem_encapsulate(intl_sign.public_key)
    with pytest.raises(KeyFormatError):
        intl.sign(intl_kem.private_key, b"m")


def test_unknown_suite_name_is_a_clear_value_error() -> None:
    for bad in ("aes", "GM", "", "international "):
        with pytest.raises(ValueError, match="unknown crypto suite") as info:
            get_suite(bad)
        assert "gm" in str(info.value) and "international" in str(info.value)


def test_available_suites_reflects_sm2() -> None:
    expected = ("gm", "international") if sm2_available() else ("international",)
    assert available_suites() == expected


# -- published vectors reached through the interface -----------------------------------------------


def test_international_aead_matches_gcm_spec_test_case_16() -> None:
    """AES-256-GCM, 96-bit IV, with AAD (McGrew & Viega GCM specification, test case 16)."""
    key = bytes.fromhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
    iv = bytes.fromhex("cafebabefacedbaddecaf888")
    pt = bytes.fromhex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
    )
    aad = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    expected = bytes.fromhex(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
        "76fc6ece0f4e1768cddf8853bb2d551b"
    )
    suite = get_suite("international")
    assert suite.aead_encrypt(key, iv, pt, aad) == expected
    assert suite.aead_decrypt(key, iv, expected, aad) == pt


def test_international_signature_matches_rfc8032_test_1() -> None:
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    expected = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    priv_der = ed25519.Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
        Encoding.DER, PrivateFormat.PKCS8, NoEncryption()
    )
    pub_der = ed25519.Ed25519PublicKey.from_public_bytes(public).public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    suite = get_suite("international")
    assert suite.sign(priv_der, b"") == expected
    suite.verify(pub_der, b"", expected)


def test_international_kem_matches_rfc9180_a1_dhkem_x25519() -> None:
    sk_e = bytes.fromhex("52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736")
    pk_e = bytes.fromhex("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431")
    sk_r = bytes.fromhex("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8")
    pk_r = bytes.fromhex("3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d")
    shared = bytes.fromhex("fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc")
    recipient = x25519.X25519PrivateKey.from_private_bytes(sk_r)
    enc = dhkem_x25519_encapsulate(
        x25519.X25519PublicKey.from_public_bytes(pk_r),
        ephemeral=x25519.X25519PrivateKey.from_private_bytes(sk_e),
    )
    assert enc.encapsulated_key == pk_e
    assert enc.shared_secret == shared
    assert dhkem_x25519_decapsulate(recipient, pk_e) == shared
    # Through the interface, with the recipient key in its PKCS#8 container.
    der = recipient.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    assert get_suite("international").kem_decapsulate(der, pk_e) == shared


def test_x25519_small_order_points_are_refused() -> None:
    recipient = x25519.X25519PrivateKey.generate()
    with pytest.raises(DecryptionError):
        dhkem_x25519_decapsulate(recipient, bytes(32))  # the identity point
    with pytest.raises(KeyFormatError):
        dhkem_x25519_encapsulate(x25519.X25519PublicKey.from_public_bytes(bytes(32)))


@needs_sm2
def test_gm_suite_reaches_the_sm3_and_rfc8998_vectors() -> None:
    suite = get_suite("gm")
    assert suite.hash(b"abc") == bytes.fromhex(
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    iv = bytes.fromhex("00001234567800000000ABCD")
    pt = bytes.fromhex(
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
        "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
    )
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    assert suite.aead_encrypt(key, iv, pt, aad) == bytes.fromhex(
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
        "83DE3541E4C2B58177E065A9BF7B62EC"
    )


@needs_sm2
@needs_openssl
def test_gm_suite_signatures_and_encapsulations_are_openssl_compatible(tmp_path: Path) -> None:
    suite = get_suite("gm")
    pair = suite.generate_signing_keypair()
    (tmp_path / "sign.der").write_bytes(pair.private_key)
    (tmp_path / "sign.pub.der").write_bytes(pair.public_key)
    (tmp_path / "msg").write_bytes(b"suite message")
    (tmp_path / "sig").write_bytes(suite.sign(pair.private_key, b"suite message"))
    _ok(
        [
            "dgst",
            "-sm3",
            "-verify",
            str(tmp_path / "sign.pub.der"),
            "-keyform",
            "DER",
            "-sigopt",
            "distid:1234567812345678",
            "-signature",
            str(tmp_path / "sig"),
            str(tmp_path / "msg"),
        ]
    )
    theirs = _ok(
        [
            "dgst",
            "-sm3",
            "-sign",
            str(tmp_path / "sign.der"),
            "-keyform",
            "DER",
            "-sigopt",
            "distid:1234567812345678",
            str(tmp_path / "msg"),
        ]
    )
    suite.verify(pair.public_key, b"suite message", theirs)

    kem_pair = suite.generate_kem_keypair()
    (tmp_path / "kem.der").write_bytes(kem_pair.private_key)
    enc = suite.kem_encapsulate(kem_pair.public_key)
    (tmp_path / "enc").write_bytes(enc.encapsulated_key)
    secret = _ok(
        [
            "pkeyutl",
            "-decrypt",
            "-inkey",
            str(tmp_path / "kem.der"),
            "-keyform",
            "DER",
            "-in",
            str(tmp_path / "enc"),
        ]
    )
    assert secret == enc.shared_secret


# -- fail closed without libcrypto -


def test_every_sm2_entry_point_fails_closed_without_libcrypto(tmp_path: Path) -> None:
    """$TONGXIN_LIBCRYPTO names the only library tried; a missing one is what a host without
    a usable OpenSSL 3 looks like. Every SM2 entry point must then raise
    SM2UnavailableError naming libcrypto, and nothing else may be lost."""
    src = Path(tongxin.crypto.__file__).resolve().parents[2]
    missing = tmp_path / "no-such-dir" / "libcrypto.so.3"
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from tongxin.crypto import (
            GMSuite, SM2PrivateKey, SM2PublicKey, SM2UnavailableError, available_suites,
            get_suite, sm2_available, sm2_unavailable_reason, sm3_digest, sm4_gcm_encrypt,
        )
        from tongxin.crypto import _der, kem, openssl_sm2, sm2

        missing = sys.argv[1]
        assert not sm2_available()
        reason = sm2_unavailable_reason()
        assert reason is not None and "libcrypto" in reason and missing in reason, reason

        d = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
        point = bytes.fromhex(
            "0409F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
            "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
        )
        spki, sec1 = sm2._spki(point), sm2._sec1(d, point)
        pub_pem, key_pem = _der.pem_encode("PUBLIC KEY", spki), _der.pem_encode("EC PRIVATE KEY", sec1)
        pem_file = Path(sys.argv[2])
        pem_file.write_bytes(pub_pem)
        # Objects made without their constructors: the methods must check before anything.
        bare_public = object.__new__(SM2PublicKey)
        bare_private = object.__new__(SM2PrivateKey)
        attempts = {
            "GMSuite": GMSuite,
            "get_suite": lambda: get_suite("gm"),
            "generate": SM2PrivateKey.generate,
            "from_scalar": lambda: SM2PrivateKey.from_scalar(d),
            "SM2PrivateKey": lambda: SM2PrivateKey(d, bare_public),
            "SM2PrivateKey.from_der": lambda: SM2PrivateKey.from_der(sec1),
            "SM2PrivateKey.from_pem": lambda: SM2PrivateKey.from_pem(key_pem),
            "SM2PublicKey": lambda: SM2PublicKey(point),
            "SM2PublicKey.from_der": lambda: SM2PublicKey.from_der(spki),
            "SM2PublicKey.from_pem": lambda: SM2PublicKey.from_pem(pub_pem),
            "SM2PublicKey.from_pem_file": lambda: SM2PublicKey.from_pem_file(pem_file),
            "sign": lambda: bare_private.sign(b"m"),
            "decrypt": lambda: bare_private.decrypt(b"c"),
            "verify": lambda: bare_public.verify(b"s", b"m"),
            "encrypt": lambda: bare_public.encrypt(b"m"),
            "kem": lambda: kem.sm2_kem_encapsulate(bare_public),
            "require_sm2": sm2.require_sm2,
            "openssl_sm2.version": openssl_sm2.version,
            "openssl_sm2.generate": openssl_sm2.generate_private_key,
            "openssl_sm2.load_public_key": lambda: openssl_sm2.load_public_key(spki),
            "openssl_sm2.load_private_key": lambda: openssl_sm2.load_private_key(sec1),
        }
        for name, attempt in attempts.items():
            try:
                attempt()
            except SM2UnavailableError as exc:
                assert "libcrypto" in str(exc) and missing in str(exc), (name, exc)
            else:
                raise SystemExit(f"{name}: SM2 use did not fail")
        assert available_suites() == ("international",)
        # SM3/SM4 come from cryptography and stay usable for non-SM2 work.
        assert sm3_digest(b"abc").hex().startswith("66c7f0f4")
        assert len(sm4_gcm_encrypt(bytes(16), bytes(12), b"x")) == 17
        suite = get_suite("international")
        pair = suite.generate_signing_keypair()
        suite.verify(pair.public_key, b"m", suite.sign(pair.private_key, b"m"))
        print("FAILED-CLOSED", len(attempts))
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    env[LIBCRYPTO_ENV] = str(missing)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(missing), str(tmp_path / "pub.pem")],
        capture_output=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout.strip() == b"FAILED-CLOSED 21"


# -- legacy RSA-OAEP + AES-256-GCM -----------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[rsa.RSAPrivateKey, Path]:
    path = tmp_path_factory.mktemp("rsa") / "rsa.pem"
    if OPENSSL is not None:
        _ok(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path)])
        key = load_pem_private_key(path.read_bytes(), password=None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    assert isinstance(key, rsa.RSAPrivateKey)
    return key, path


def test_rsa_hybrid_round_trip_and_tampering(rsa_key: tuple[rsa.RSAPrivateKey, Path]) -> None:
    key, _ = rsa_key
    blob = rsa_hybrid_encrypt(key.public_key(), b"legacy payload" * 100, b"ctx")
    assert rsa_hybrid_decrypt(key, blob, b"ctx") == b"legacy payload" * 100
    with pytest.raises(DecryptionError):
        rsa_hybrid_decrypt(key, blob, b"other ctx")
    for i in (0, 1, 3, 100, 3 + 256, len(blob) - 1):  # version, length, wrapped key, nonce, tag
        bad = blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1 :]
        with pytest.raises(DecryptionError):
            rsa_hybrid_decrypt(key, bad, b"ctx")
    for junk in (b"", b"\x01", blob[:300]):
        with pytest.raises(DecryptionError):
            rsa_hybrid_decrypt(key, junk, b"ctx")


def test_rsa_hybrid_refuses_small_keys() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(KeyFormatError):
        rsa_hybrid_encrypt(small.public_key(), b"x")


@needs_openssl
def test_rsa_hybrid_wrapped_key_is_openssl_oaep_sha256(
    rsa_key: tuple[rsa.RSAPrivateKey, Path], tmp_path: Path
) -> None:
    key, pem = rsa_key
    oaep = [
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
    ]
    blob = rsa_hybrid_encrypt(key.public_key(), b"to a legacy peer", b"aad")
    wlen = int.from_bytes(blob[1:3], "big")
    (tmp_path / "wrapped").write_bytes(blob[3 : 3 + wlen])
    aes_key = _ok(
        ["pkeyutl", "-decrypt", "-inkey", str(pem), *oaep, "-in", str(tmp_path / "wrapped")]
    )
    header, nonce, body = blob[: 3 + wlen], blob[3 + wlen : 15 + wlen], blob[15 + wlen :]
    assert AESGCM(aes_key).decrypt(nonce, body, header + b"aad") == b"to a legacy peer"

    # And the other way: openssl wraps a key, the envelope is assembled by hand.
    pub = tmp_path / "pub.pem"
    _ok(["pkey", "-in", str(pem), "-pubout", "-out", str(pub)])
    new_key = os.urandom(32)
    wrapped = _ok(["pkeyutl", "-encrypt", "-pubin", "-inkey", str(pub), *oaep], new_key)
    header = b"\x01" + len(wrapped).to_bytes(2, "big") + wrapped
    nonce = os.urandom(12)
    envelope = header + nonce + AESGCM(new_key).encrypt(nonce, b"from openssl", header)
    assert rsa_hybrid_decrypt(key, envelope) == b"from openssl"

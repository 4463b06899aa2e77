"""SM2 through OpenSSL's libcrypto (tongxin.crypto.openssl_sm2), proved against the GM/T 0003.5
(GB/T 32918) worked examples, the system openssl CLI in both directions (the same library,
so this checks containers, signer IDs and encodings more than the arithmetic), and two
independent implementations: the pure-Python gmssl package, and GmSSL through gmssl-pyx
where it is installed (x86_64 dev installs; those checks exist only there, see
gm_references).

Formats under test: DER signatures (SEQUENCE r, s), DER ciphertexts in C1C3C2 order
(GM/T 0009), PKCS#8 / SubjectPublicKeyInfo keys with id-ecPublicKey + the SM2 curve OID.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gm_references import GMSSL_PYX

from tongxin.crypto import (
    SM2_DEFAULT_SIGNER_ID,
    DecryptionError,
    InvalidSignatureError,
    KeyFormatError,
    SM2PrivateKey,
    SM2PublicKey,
    sm2_available,
    sm2_unavailable_reason,
)
from tongxin.crypto.sm2 import (
    RawOrder,
    ciphertext_der_to_raw,
    ciphertext_raw_to_der,
    signature_der_to_raw,
    signature_raw_to_der,
)

pytestmark = pytest.mark.skipif(
    not sm2_available(), reason=f"SM2 unavailable: {sm2_unavailable_reason()}"
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="system openssl CLI not installed")
DISTID = "distid:" + SM2_DEFAULT_SIGNER_ID.decode()

# GM/T 0003.5-2012 (GB/T 32918.5) Annex A/C worked examples on the recommended curve.
GB_D = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
GB_PUB = bytes.fromhex(
    "04"
    "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
)
GB_SIG_RS = bytes.fromhex(
    "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
)
GB_SIG_DER = bytes.fromhex(
    "3046022100F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    "022100B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
)
GB_CT_DER = bytes.fromhex(
    "307C022004EBFC718E8D1798620432268E77FEB6415E2EDE0E073C0F4F640ECD2E149A73"
    "022100E858F9D81E5430A57B36DAAB8F950A3C64E6EE6A63094D99283AFF767E124DF0"
    "042059983C18F809E262923C53AEC295D30383B54E39D609D160AFCB1908D0BD8766"
    "041321886CA989CA9C7D58087307CA93092D651EFA"
)


def _openssl(args: Sequence[str], data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *args], input=data, capture_output=True, check=False, timeout=30
    )


def _ok(args: Sequence[str], data: bytes | None = None) -> bytes:
    proc = _openssl(args, data)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


@pytest.fixture
def openssl_key(tmp_path: Path) -> tuple[Path, Path]:
    key, pub = tmp_path / "ossl.pem", tmp_path / "ossl.pub.pem"
    _ok(["genpkey", "-algorithm", "SM2", "-out", str(key)])
    _ok(["pkey", "-in", str(key), "-pubout", "-out", str(pub)])
    return key, pub


@pytest.fixture
def our_key(tmp_path: Path) -> tuple[SM2PrivateKey, Path, Path]:
    key = SM2PrivateKey.generate()
    priv, pub = tmp_path / "ours.pem", tmp_path / "ours.pub.pem"
    priv.write_bytes(key.to_pem())
    pub.write_bytes(key.public_key().to_pem())
    return key, priv, pub


# -- the standard's worked examples ------------------------------------------------------------


def test_gbt32918_signature_example_verifies() -> None:
    public = SM2PublicKey(GB_PUB)
    public.verify(GB_SIG_DER, b"message digest")
    with pytest.raises(InvalidSignatureError):
        public.verify(GB_SIG_DER, b"message digesT")
    with pytest.raises(InvalidSignatureError):
        public.verify(GB_SIG_DER, b"message digest", signer_id=b"ALICE123@YAHOO.COM")


def test_gbt32918_example_key_pair_passes_pair_check_and_neighbour_fails() -> None:
    SM2PrivateKey(GB_D, SM2PublicKey(GB_PUB))  # check_pair: encrypt/decrypt probe
    wrong = GB_D[:-1] + bytes([GB_D[-1] ^ 1])
    with pytest.raises(KeyFormatError, match="does not belong"):
        SM2PrivateKey(wrong, SM2PublicKey(GB_PUB))


def test_gbt32918_encryption_example_decrypts() -> None:
    key = SM2PrivateKey(GB_D, SM2PublicKey(GB_PUB))
    assert key.decrypt(GB_CT_DER) == b"encryption standard"


def test_raw_conversions_round_trip_the_published_values() -> None:
    assert signature_der_to_raw(GB_SIG_DER) == GB_SIG_RS
    assert signature_raw_to_der(GB_SIG_RS) == GB_SIG_DER
    for order in ("C1C3C2", "C1C2C3"):
        raw = ciphertext_der_to_raw(GB_CT_DER, order)
        assert raw[:1] == b"\x04" and len(raw) == 65 + 32 + len(b"encryption standard")
        assert ciphertext_raw_to_der(raw, order) == GB_CT_DER


# -- signatures against openssl -------------------------------------------------------------------


@needs_openssl
def test_our_signature_verifies_with_openssl_dgst_and_pkeyutl(
    our_key: tuple[SM2PrivateKey, Path, Path], tmp_path: Path
) -> None:
    key, _, pub = our_key
    msg, sig = tmp_path / "msg", tmp_path / "sig"
    msg.write_bytes(b"Tongxin SM2 interop \x00\xff" * 10)
    sig.write_bytes(key.sign(msg.read_bytes()))
    out = _ok(
        ["dgst", "-sm3", "-verify", str(pub), "-sigopt", DISTID, "-signature", str(sig), str(msg)]
    )
    assert b"Verified OK" in out
    out = _ok(
        [
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(pub),
            "-rawin",
            "-digest",
            "sm3",
            "-pkeyopt",
            DISTID,
            "-in",
            str(msg),
            "-sigfile",
            str(sig),
        ]
    )
    assert b"Verified Successfully" in out
    # The ID really is part of what was signed: openssl with another ID must refuse.
    wrong = _openssl(
        [
            "dgst",
            "-sm3",
            "-verify",
            str(pub),
            "-sigopt",
            "distid:someone-else",
            "-signature",
            str(sig),
            str(msg),
        ]
    )
    assert wrong.returncode != 0


@needs_openssl
def test_openssl_signatures_verify_with_us(openssl_key: tuple[Path, Path], tmp_path: Path) -> None:
    key, pub = openssl_key
    public = SM2PublicKey.from_pem(pub.read_bytes())
    msg = tmp_path / "msg"
    msg.write_bytes(os.urandom(300))
    sig1 = _ok(["dgst", "-sm3", "-sign", str(key), "-sigopt", DISTID, str(msg)])
    sig2 = _ok(
        [
            "pkeyutl",
            "-sign",
            "-inkey",
            str(key),
            "-rawin",
            "-digest",
            "sm3",
            "-pkeyopt",
            DISTID,
            "-in",
            str(msg),
        ]
    )
    for sig in (sig1, sig2):
        public.verify(sig, msg.read_bytes())
        with pytest.raises(InvalidSignatureError):
            public.verify(sig, msg.read_bytes() + b"\x00")


@needs_openssl
def test_custom_signer_id_interoperates_both_ways(
    our_key: tuple[SM2PrivateKey, Path, Path], tmp_path: Path
) -> None:
    key, priv, pub = our_key
    signer_id = b"alice@tongxin.example"
    msg = tmp_path / "msg"
    msg.write_bytes(b"custom id")
    ours = tmp_path / "ours.sig"
    ours.write_bytes(key.sign(msg.read_bytes(), signer_id=signer_id))
    _ok(
        [
            "dgst",
            "-sm3",
            "-verify",
            str(pub),
            "-sigopt",
            f"distid:{signer_id.decode()}",
            "-signature",
            str(ours),
            str(msg),
        ]
    )
    theirs = _ok(
        ["dgst", "-sm3", "-sign", str(priv), "-sigopt", f"distid:{signer_id.decode()}", str(msg)]
    )
    key.public_key().verify(theirs, msg.read_bytes(), signer_id=signer_id)
    with pytest.raises(InvalidSignatureError):
        key.public_key().verify(theirs, msg.read_bytes())  # default ID is a different Z_A
    # pkeyutl -rawin both ways as well, with the same non-default ID.
    pkeyutl = ["pkeyutl", "-rawin", "-digest", "sm3", "-pkeyopt", f"distid:{signer_id.decode()}"]
    _ok([*pkeyutl, "-verify", "-pubin", "-inkey", str(pub), "-in", str(msg), "-sigfile", str(ours)])
    theirs = _ok([*pkeyutl, "-sign", "-inkey", str(priv), "-in", str(msg)])
    key.public_key().verify(theirs, msg.read_bytes(), signer_id=signer_id)
    with pytest.raises(InvalidSignatureError):
        key.public_key().verify(theirs, msg.read_bytes(), signer_id=b"alice@tongxin.examplf")


@needs_openssl
def test_openssl_default_empty_id_is_not_our_default(
    openssl_key: tuple[Path, Path], tmp_path: Path
) -> None:
    key, pub = openssl_key
    msg = tmp_path / "msg"
    msg.write_bytes(b"no distid given")
    sig = _ok(["dgst", "-sm3", "-sign", str(key), str(msg)])  # OpenSSL 3: empty ID
    public = SM2PublicKey.from_pem(pub.read_bytes())
    with pytest.raises(InvalidSignatureError):
        public.verify(sig, msg.read_bytes())
    with pytest.raises(ValueError, match="signer ID"):
        public.verify(sig, msg.read_bytes(), signer_id=b"")  # refused here, as GmSSL does


# -- key containers against openssl ---------------------------------------------------------------


@needs_openssl
def test_openssl_pkcs8_pem_loads_and_re_encodes_byte_for_byte(
    openssl_key: tuple[Path, Path],
) -> None:
    key_pem, pub_pem = openssl_key
    key = SM2PrivateKey.from_pem(key_pem.read_bytes())
    assert key.to_pem() == key_pem.read_bytes()
    assert key.public_key().to_pem() == pub_pem.read_bytes()
    assert SM2PublicKey.from_pem(pub_pem.read_bytes()) == key.public_key()


@needs_openssl
def test_openssl_der_and_sec1_forms_load_to_the_same_key(
    openssl_key: tuple[Path, Path], tmp_path: Path
) -> None:
    key_pem, pub_pem = openssl_key
    reference = SM2PrivateKey.from_pem(key_pem.read_bytes())
    der = _ok(["pkey", "-in", str(key_pem), "-outform", "DER"])
    sec1_pem = _ok(["ec", "-in", str(key_pem)])
    sec1_der = _ok(["ec", "-in", str(key_pem), "-outform", "DER"])
    pub_der = _ok(["pkey", "-pubin", "-in", str(pub_pem), "-outform", "DER"])
    for key in (
        SM2PrivateKey.from_der(der),
        SM2PrivateKey.from_pem(sec1_pem),
        SM2PrivateKey.from_der(sec1_der),
    ):
        assert key.private_bytes_raw() == reference.private_bytes_raw()
        assert key.public_key() == reference.public_key()
    assert SM2PublicKey.from_der(pub_der) == reference.public_key()


@needs_openssl
def test_our_keys_are_read_identically_by_openssl(
    our_key: tuple[SM2PrivateKey, Path, Path],
) -> None:
    key, priv, pub = our_key
    assert _ok(["pkey", "-in", str(priv)]) == key.to_pem()
    assert _ok(["pkey", "-in", str(priv), "-pubout"]) == pub.read_bytes()
    text = _ok(["pkey", "-in", str(priv), "-text", "-noout"]).decode()
    assert "ASN1 OID: SM2" in text
    priv_hex = text.split("priv:")[1].split("pub:")[0]
    assert int("".join(c for c in priv_hex if c in "0123456789abcdef"), 16) == int.from_bytes(
        key.private_bytes_raw(), "big"
    )


@needs_openssl
def test_wrong_algorithm_keys_are_rejected(tmp_path: Path) -> None:
    p256 = tmp_path / "p256.pem"
    _ok(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(p256)])
    ed = tmp_path / "ed.pem"
    _ok(["genpkey", "-algorithm", "ED25519", "-out", str(ed)])
    for path in (p256, ed):
        with pytest.raises(KeyFormatError):
            SM2PrivateKey.from_pem(path.read_bytes())
        pub = _ok(["pkey", "-in", str(path), "-pubout"])
        with pytest.raises(KeyFormatError):
            SM2PublicKey.from_pem(pub)


@needs_openssl
def test_encrypted_keys_are_rejected_clearly(openssl_key: tuple[Path, Path]) -> None:
    key_pem, _ = openssl_key
    encrypted = _ok(
        ["pkcs8", "-topk8", "-in", str(key_pem), "-v2", "aes-256-cbc", "-passout", "pass:secret"]
    )
    with pytest.raises(KeyFormatError, match="encrypted"):
        SM2PrivateKey.from_pem(encrypted)


@needs_openssl
def test_public_less_private_keys_get_their_public_key_from_libcrypto(
    openssl_key: tuple[Path, Path], tmp_path: Path
) -> None:
    key_pem, pub_pem = openssl_key
    no_public = tmp_path / "nopub.pem"
    no_public.write_bytes(_ok(["ec", "-in", str(key_pem), "-no_public"]))
    pkcs8 = _ok(["pkcs8", "-topk8", "-nocrypt", "-in", str(no_public)])
    assert b"BEGIN PRIVATE KEY" in pkcs8
    for pem in (no_public.read_bytes(), pkcs8):
        key = SM2PrivateKey.from_pem(pem)
        assert key.public_key() == SM2PublicKey.from_pem(pub_pem.read_bytes())
        assert key.to_pem() == key_pem.read_bytes()


def test_public_key_of_the_standard_example_scalar_is_the_standard_point() -> None:
    key = SM2PrivateKey.from_scalar(GB_D)
    assert key.public_key().to_bytes() == GB_PUB
    assert key.decrypt(GB_CT_DER) == b"encryption standard"
    for bad in (bytes(32), GB_D[:31]):
        with pytest.raises(KeyFormatError):
            SM2PrivateKey.from_scalar(bad)


@needs_openssl
def test_compressed_points_load_and_re_encode_uncompressed(
    openssl_key: tuple[Path, Path],
) -> None:
    _, pub_pem = openssl_key
    compressed_der = _ok(
        ["ec", "-pubin", "-in", str(pub_pem), "-conv_form", "compressed", "-outform", "DER"]
    )
    compressed = SM2PublicKey.from_der(compressed_der)
    assert compressed == SM2PublicKey.from_pem(pub_pem.read_bytes())
    assert compressed.to_pem() == pub_pem.read_bytes()
    point = compressed.to_bytes()
    assert SM2PublicKey(bytes([2 + (point[-1] & 1)]) + point[1:33]) == compressed
    wrong_parity = SM2PublicKey(bytes([3 - (point[-1] & 1)]) + point[1:33])
    assert wrong_parity != compressed and wrong_parity.to_bytes()[1:33] == point[1:33]
    with pytest.raises(KeyFormatError):
        SM2PublicKey(b"\x06" + point[1:])  # the hybrid form is not accepted


def test_mismatched_pair_in_a_key_file_is_caught_on_load() -> None:
    a, b = SM2PrivateKey.generate(), SM2PrivateKey.generate()
    franken = SM2PrivateKey(a.private_bytes_raw(), b.public_key(), check_pair=False)
    with pytest.raises(KeyFormatError, match="does not belong"):
        SM2PrivateKey.from_der(franken.to_der())
    # Even unchecked, such a key fails closed: its signatures do not verify.
    unchecked = SM2PrivateKey.from_der(franken.to_der(), check_pair=False)
    with pytest.raises(InvalidSignatureError):
        b.public_key().verify(unchecked.sign(b"m"), b"m")


def _x_without_a_point() -> bytes:
    """An x for which x^3 + ax + b is not a square mod p: no compressed point decodes."""
    p = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF", 16)
    b = int("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93", 16)
    x = 1
    while pow((x**3 - 3 * x + b) % p, (p - 1) // 2, p) != p - 1:
        x += 1
    return x.to_bytes(32, "big")


def test_points_off_the_curve_and_bad_scalars_are_rejected() -> None:
    off_curve = GB_PUB[:-1] + bytes([GB_PUB[-1] ^ 1])
    no_point = b"\x02" + _x_without_a_point()
    for bad in (off_curve, b"\x04" + bytes(64), GB_PUB[:40], b"", b"\x00", no_point):
        with pytest.raises(KeyFormatError):
            SM2PublicKey(bad)
    good_der = SM2PublicKey(GB_PUB).to_der()
    with pytest.raises(KeyFormatError):
        SM2PublicKey.from_der(good_der[:-1] + bytes([good_der[-1] ^ 1]))  # off the curve
    with pytest.raises(KeyFormatError):
        SM2PublicKey.from_der(good_der + b"\x00")
    with pytest.raises(KeyFormatError):
        SM2PublicKey.from_der(good_der[:-1])
    n = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)
    for scalar in (bytes(32), (n - 1).to_bytes(32, "big"), n.to_bytes(32, "big"), b"\x01" * 31):
        with pytest.raises(KeyFormatError):
            SM2PrivateKey(scalar, SM2PublicKey(GB_PUB), check_pair=False)
    with pytest.raises(KeyFormatError):
        SM2PrivateKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


# -- encryption against openssl -------------------------------------------------------------------


@needs_openssl
def test_sm2_encryption_interoperates_with_openssl_both_ways(
    our_key: tuple[SM2PrivateKey, Path, Path], tmp_path: Path
) -> None:
    key, priv, pub = our_key
    for size in (1, 32, 255):
        plaintext = os.urandom(size)
        theirs = _ok(["pkeyutl", "-encrypt", "-pubin", "-inkey", str(pub)], plaintext)
        assert key.decrypt(theirs) == plaintext
        ours = tmp_path / "ct"
        ours.write_bytes(key.public_key().encrypt(plaintext))
        assert _ok(["pkeyutl", "-decrypt", "-inkey", str(priv), "-in", str(ours)]) == plaintext


def test_sm2_plaintext_size_limits() -> None:
    public = SM2PrivateKey.generate().public_key()
    for bad in (b"", b"x" * 256):
        with pytest.raises(ValueError, match=r"1\.\.255"):
            public.encrypt(bad)


@needs_openssl
def test_ciphertexts_beyond_the_plaintext_limit_are_refused(
    our_key: tuple[SM2PrivateKey, Path, Path],
) -> None:
    """openssl encrypts any length; the 1..255 limit holds for decryption too."""
    key, _, pub = our_key
    theirs = _ok(["pkeyutl", "-encrypt", "-pubin", "-inkey", str(pub)], os.urandom(256))
    with pytest.raises(DecryptionError):
        key.decrypt(theirs)


# -- tampering never crashes -


def test_every_byte_flip_of_a_ciphertext_raises_decryption_error() -> None:
    key = SM2PrivateKey(GB_D, SM2PublicKey(GB_PUB))
    for i in range(len(GB_CT_DER)):
        tampered = GB_CT_DER[:i] + bytes([GB_CT_DER[i] ^ 0x01]) + GB_CT_DER[i + 1 :]
        with pytest.raises(DecryptionError):
            key.decrypt(tampered)
    for junk in (b"", GB_CT_DER[:-1], GB_CT_DER[:50], GB_CT_DER + b"\x00", os.urandom(120)):
        with pytest.raises(DecryptionError):
            key.decrypt(junk)


def test_every_byte_flip_of_a_signature_raises_invalid_signature() -> None:
    public = SM2PublicKey(GB_PUB)
    for i in range(len(GB_SIG_DER)):
        tampered = GB_SIG_DER[:i] + bytes([GB_SIG_DER[i] ^ 0x01]) + GB_SIG_DER[i + 1 :]
        with pytest.raises(InvalidSignatureError):
            public.verify(tampered, b"message digest")
    non_canonical = [
        GB_SIG_DER + b"\x00",  # trailing byte
        bytes.fromhex("308146") + GB_SIG_DER[2:],  # long-form length
        b"",
        GB_SIG_RS,  # raw r||s is not DER
        signature_raw_to_der(GB_SIG_RS[:32] + bytes(32)),  # s = 0
    ]
    for sig in non_canonical:
        with pytest.raises(InvalidSignatureError):
            public.verify(sig, b"message digest")


def test_signature_from_another_key_is_rejected() -> None:
    a, b = SM2PrivateKey.generate(), SM2PrivateKey.generate()
    with pytest.raises(InvalidSignatureError):
        b.public_key().verify(a.sign(b"m"), b"m")


# -- gmssl (pure Python) as a third opinion -


def _gmssl_pair() -> tuple[SM2PrivateKey, Any, Any]:
    from gmssl import sm2 as gsm2

    while True:
        key = SM2PrivateKey.generate()
        pub_hex = key.public_key().to_bytes()[1:].hex()
        # gmssl strips a leading "04" with str.lstrip, which also eats coordinate digits.
        if not pub_hex.startswith("04"):
            break
    d_hex = key.private_bytes_raw().hex()
    raw = gsm2.CryptSM2(private_key=d_hex, public_key=pub_hex, mode=1)
    der = gsm2.CryptSM2(private_key=d_hex, public_key=pub_hex, mode=1, asn1=True)
    return key, raw, der


def test_signatures_cross_verify_with_gmssl() -> None:
    key, raw, der = _gmssl_pair()
    msg = b"cross-check with gmssl"
    ours = key.sign(msg)
    assert der.verify_with_sm3(ours.hex(), msg)
    assert raw.verify_with_sm3(signature_der_to_raw(ours).hex(), msg)
    k = secrets.token_hex(32)  # never let gmssl pick its nonce from `random`
    theirs = bytes.fromhex(der.sign_with_sm3(msg, k))
    key.public_key().verify(theirs, msg)
    with pytest.raises(InvalidSignatureError):
        key.public_key().verify(theirs, msg + b"!")


@pytest.mark.parametrize(("mode", "order"), [(1, "C1C3C2"), (0, "C1C2C3")])
def test_ciphertexts_cross_decrypt_with_gmssl(mode: int, order: RawOrder) -> None:
    from gmssl import sm2 as gsm2

    key, _, _ = _gmssl_pair()
    g = gsm2.CryptSM2(
        private_key=key.private_bytes_raw().hex(),
        public_key=key.public_key().to_bytes()[1:].hex(),
        mode=mode,
    )
    plaintext = b"wrapped SM4 key material 32 byt"
    ours = key.public_key().encrypt(plaintext)
    # gmssl writes C1 as bare x||y, without the 04 point-format byte.
    assert g.decrypt(ciphertext_der_to_raw(ours, order)[1:]) == plaintext
    theirs = g.encrypt(plaintext)
    assert key.decrypt(ciphertext_raw_to_der(b"\x04" + theirs, order)) == plaintext


def test_gmssl_skips_the_c3_check_that_we_enforce() -> None:
    """Why gmssl is test-only: it returns plaintext for a ciphertext whose hash is wrong."""
    from gmssl import sm2 as gsm2

    key, _, _ = _gmssl_pair()
    g = gsm2.CryptSM2(
        private_key=key.private_bytes_raw().hex(),
        public_key=key.public_key().to_bytes()[1:].hex(),
        mode=1,
    )
    raw = bytearray(ciphertext_der_to_raw(key.public_key().encrypt(b"secret"), "C1C3C2"))
    raw[65] ^= 0xFF  # first byte of C3
    assert g.decrypt(bytes(raw[1:])) == b"secret"
    with pytest.raises(DecryptionError):
        key.decrypt(ciphertext_raw_to_der(bytes(raw), "C1C3C2"))


def test_public_key_file_is_read_or_refused_naming_the_file(tmp_path: Path) -> None:
    key = SM2PrivateKey.generate().public_key()
    good = tmp_path / "signer.pub"
    good.write_bytes(key.to_pem())
    assert SM2PublicKey.from_pem_file(good).to_der() == key.to_der()
    with pytest.raises(ValueError, match=r"absent\.pub: No such file"):
        SM2PublicKey.from_pem_file(tmp_path / "absent.pub")
    private = tmp_path / "signer.key"
    private.write_bytes(SM2PrivateKey.generate().to_pem())
    with pytest.raises(ValueError, match=r"signer\.key: not an SM2 public key \(PEM\)"):
        SM2PublicKey.from_pem_file(private)


# -- GmSSL through gmssl-pyx, where installed ----------------------------------------------

if GMSSL_PYX is not None:  # x86_64 dev installs only; absent elsewhere (see gm_references)

    @pytest.mark.parametrize("signer_id", [SM2_DEFAULT_SIGNER_ID, b"bob@tongxin.example"])
    def test_signatures_cross_verify_with_gmssl_pyx(signer_id: bytes) -> None:
        gm: Any = GMSSL_PYX
        key = SM2PrivateKey.generate()
        xy = key.public_key().to_bytes()[1:]
        msg = os.urandom(100)
        assert gm.sm2_verify(xy, msg, key.sign(msg, signer_id=signer_id), signer_id=signer_id)
        theirs = bytes(gm.sm2_sign(key.private_bytes_raw(), xy, msg, signer_id=signer_id))
        key.public_key().verify(theirs, msg, signer_id=signer_id)
        with pytest.raises(InvalidSignatureError):
            key.public_key().verify(theirs, msg + b"!", signer_id=signer_id)

    @pytest.mark.parametrize("size", [1, 32, 255])
    def test_ciphertexts_cross_decrypt_with_gmssl_pyx(size: int) -> None:
        gm: Any = GMSSL_PYX
        key = SM2PrivateKey.generate()
        plaintext = os.urandom(size)
        ours = key.public_key().encrypt(plaintext)
        assert bytes(gm.sm2_decrypt(key.private_bytes_raw(), ours)) == plaintext
        theirs = bytes(gm.sm2_encrypt(key.public_key().to_bytes()[1:], plaintext))
        assert key.decrypt(theirs) == plaintext


# -- concurrency ----------------------------------------------------------------------------


def test_one_key_serves_many_threads() -> None:
    """ctypes drops the GIL during each libcrypto call; a shared EVP_PKEY is read-only."""
    key = SM2PrivateKey.generate()
    public = key.public_key()

    def round_trip(i: int) -> bool:
        msg = i.to_bytes(4, "big") * 8
        public.verify(key.sign(msg), msg)
        return key.decrypt(public.encrypt(msg)) == msg

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(round_trip, range(200)))

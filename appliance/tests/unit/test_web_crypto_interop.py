"""The web client's crypto suites (appliance/web/src/e2ee/suite.js) interoperate with the
Python suites in both directions.

Python makes keys, a signature, a KEM encapsulation, an AEAD ciphertext and hash/HMAC/HKDF
values for each suite; ``node --test appliance/web/test/`` verifies and opens them, then
makes its own, which Python verifies and opens here. The same node run includes the
suites' own round-trip, tamper and RFC 9180 checks and the E2EE protocol tests
(``protocol.test.mjs``: devices exchanging 1:1 and group messages through an in-memory
key directory), so a failing node test fails this test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from tongxin.crypto import (
    SUITE_NAMES,
    DecryptionError,
    InvalidSignatureError,
    get_suite,
    sm2_available,
)
from tongxin.crypto.kem import dhkem_x25519_encapsulate

WEB = Path(__file__).resolve().parents[2] / "web"


def _suites() -> list[str]:
    return [name for name in SUITE_NAMES if name != "gm" or sm2_available()]


def _python_values(name: str) -> dict[str, Any]:
    suite = get_suite(name)
    sign = suite.generate_signing_keypair()
    message = "签名 signed in Python".encode()
    kem_pair = suite.generate_kem_keypair()
    enc = suite.kem_encapsulate(kem_pair.public_key)
    key = os.urandom(suite.aead_key_size)
    nonce = os.urandom(suite.aead_nonce_size)
    plaintext = "加密 sealed in Python".encode()
    aad = b"header"
    hkdf_cases = [
        (os.urandom(32), None, b"", 32),
        (os.urandom(17), os.urandom(32), b"tongxin e2ee", 80),
    ]
    values: dict[str, Any] = {
        "sign": {
            "public": sign.public_key.hex(),
            "message": message.hex(),
            "signature": suite.sign(sign.private_key, message).hex(),
        },
        "kem": {
            "private": kem_pair.private_key.hex(),
            "public": kem_pair.public_key.hex(),
            "enc": enc.encapsulated_key.hex(),
            "secret": enc.shared_secret.hex(),
        },
        "aead": {
            "key": key.hex(),
            "nonce": nonce.hex(),
            "aad": aad.hex(),
            "plaintext": plaintext.hex(),
            "ciphertext": suite.aead_encrypt(key, nonce, plaintext, aad).hex(),
        },
        "hash": {"data": message.hex(), "digest": suite.hash(message).hex()},
        "hmac": {"key": key.hex(), "data": message.hex(), "tag": suite.hmac(key, message).hex()},
        "hkdf": [
            {
                "ikm": ikm.hex(),
                "salt": None if salt is None else salt.hex(),
                "info": info.hex(),
                "length": length,
                "okm": suite.hkdf(ikm, length, salt=salt, info=info).hex(),
            }
            for ikm, salt, info, length in hkdf_cases
        ],
    }
    if name == "international":
        # A fixed ephemeral key makes DHKEM deterministic, so both sides must give the same
        # enc and secret, not merely ones that decapsulate.
        eph = x25519.X25519PrivateKey.generate()
        recipient = x25519.X25519PrivateKey.generate().public_key()
        known = dhkem_x25519_encapsulate(recipient, ephemeral=eph)
        values["kem_known"] = {
            "ephemeral_private": eph.private_bytes(
                Encoding.DER, PrivateFormat.PKCS8, NoEncryption()
            ).hex(),
            "recipient_public": recipient.public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo
            ).hex(),
            "enc": known.encapsulated_key.hex(),
            "secret": known.shared_secret.hex(),
        }
    return values


def _node() -> str:
    """Fail (not skip) with the command that fixes whatever is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: `make web` installs nodejs and npm", pytrace=False)
    if not (WEB / "node_modules" / "sm-crypto-v2").is_dir():
        pytest.fail("appliance/web/node_modules is missing or stale: run `make web`", pytrace=False)
    return node


@pytest.mark.timeout(300)  # SM2 in pure JS is slow on a loaded machine
def test_web_crypto_suites_interoperate_with_python(tmp_path: Path) -> None:
    node = _node()
    names = _suites()
    vectors = {name: _python_values(name) for name in names}
    inp, out = tmp_path / "python.json", tmp_path / "js.json"
    inp.write_text(json.dumps(vectors))
    proc = subprocess.run(
        [node, "--test", "--test-reporter=spec", "test/"],
        cwd=WEB,
        env={**os.environ, "TONGXIN_INTEROP_IN": str(inp), "TONGXIN_INTEROP_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    # The interop tests ran (not only the standalone ones).
    for name in names:
        assert f"interop: {name} values made by Python" in proc.stdout

    produced = json.loads(out.read_text())
    assert sorted(produced) == sorted(names)
    for name in names:
        suite = get_suite(name)
        js = produced[name]
        h = bytes.fromhex

        suite.verify(h(js["sign"]["public"]), h(js["sign"]["message"]), h(js["sign"]["signature"]))
        with pytest.raises(InvalidSignatureError):
            suite.verify(h(js["sign"]["public"]), b"another message", h(js["sign"]["signature"]))
        # A JS private key signs in Python, i.e. the PKCS#8 container is understood.
        sig = suite.sign(h(js["sign"]["private"]), b"py")
        suite.verify(h(js["sign"]["public"]), b"py", sig)

        # JS encapsulated to the Python KEM key.
        py_kem_private = h(vectors[name]["kem"]["private"])
        assert suite.kem_decapsulate(py_kem_private, h(js["kem"]["enc"])) == h(js["kem"]["secret"])
        # Python encapsulates to a JS-generated KEM key (decapsulated in the JS private
        # container by Python, proving both containers cross).
        enc = suite.kem_encapsulate(h(js["kem_own"]["public"]))
        assert suite.kem_decapsulate(h(js["kem_own"]["private"]), enc.encapsulated_key) == (
            enc.shared_secret
        )

        a = js["aead"]
        opened = suite.aead_decrypt(h(a["key"]), h(a["nonce"]), h(a["ciphertext"]), h(a["aad"]))
        assert opened == h(a["plaintext"])
        with pytest.raises(DecryptionError):
            suite.aead_decrypt(h(a["key"]), h(a["nonce"]), h(a["ciphertext"]), b"other aad")

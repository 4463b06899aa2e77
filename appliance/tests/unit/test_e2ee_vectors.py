"""Interoperability vectors for docs/e2ee.md section 13, recomputed here from fixed inputs
with the library's KDFs, encodings and AEADs; the doc must show exactly these values, so a
second implementation can check itself against the doc byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tongxin.crypto import sm2_available
from tongxin.crypto.suite import get_suite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee.escrow_trust import root_key_id
from tongxin.e2ee.ratchet import kdf_ck, kdf_rk, message_key_material, session_keys
from tongxin.e2ee.senderkeys import group_content_key
from tongxin.proto import e2ee_pb2 as e2

DOC = Path(__file__).resolve().parents[3] / "docs" / "e2ee.md"
SUITES = [pytest.param("international", id="international"),
          pytest.param("gm", id="gm", marks=pytest.mark.skipif(
              not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available"))]


def vectors(name: str) -> list[tuple[str, str]]:
    """(label, hex) pairs in the order the doc lists them."""
    s = get_suite(name)
    out: list[tuple[str, str]] = []
    ss1, ss2 = bytes(range(0, 32)), bytes(range(32, 64))
    session_id = s.hash(b"transcript")
    rk, ck = session_keys(s, ss1, ss2, session_id)
    out += [("session_id = H(\"transcript\")", session_id.hex()), ("RK0", rk.hex()),
            ("CK0", ck.hex())]
    rk1, ck1 = kdf_rk(s, rk, bytes(range(64, 96)))
    out += [("KDF_RK(RK0, ss=40..5f): RK1", rk1.hex()), ("KDF_RK(RK0, ss=40..5f): CK", ck1.hex())]
    chain = ck1
    for i in range(3):
        mk, chain = kdf_ck(s, chain)
        out.append((f"MK{i}", mk.hex()))
        if i == 0:
            key, nonce = message_key_material(s, mk)
            out += [("MK0 key", key.hex()), ("MK0 nonce", nonce.hex())]
    out.append(("CK after MK2", chain.hex()))
    statement = enc.prekey_statement(s.name, "u_alice", "a1", enc.PREKEY_SIGNED, 7,
                                      bytes.fromhex("0102"))
    out.append(("prekey statement (u_alice, a1, kind 1, key_id 7, public key 0102)",
                statement.hex()))
    aad = enc.body_aad(s.name, "d:u_a:u_b", "u_a", "a1", e2.Envelope.PAIRWISE)
    out.append(("body_aad(d:u_a:u_b, u_a, a1, kind 1)", aad.hex()))
    content_key = bytes(range(s.aead_key_size))
    body_nonce = bytes(range(100, 112))
    payload = e2.Payload(text="你好").SerializeToString()
    out.append(("Payload{text: 你好}", payload.hex()))
    ct = s.aead_encrypt(content_key, body_nonce, payload, aad)
    out.append(("AEAD(content_key=00.., nonce=64..6f, Payload, body_aad)", ct.hex()))
    out.append(("body_digest", enc.body_digest(s, body_nonce, ct).hex()))
    out.append(("group content key, chain key 80..9f, iteration 0",
                group_content_key(s, kdf_ck(s, bytes(range(128, 160)))[0]).hex()))
    out.append(("escrow_key_id(public key 0102)", enc.escrow_key_id(s, bytes.fromhex("0102"))))
    key_id = enc.escrow_key_id(s, bytes.fromhex("0102"))
    out.append(("escrow statement (that key id, public key 0102, not_before_ms 1, sequence 2)",
                enc.escrow_statement(s.name, key_id, bytes.fromhex("0102"), 1, 2).hex()))
    out.append(("root_key_id(root public key 0102)", root_key_id(s, bytes.fromhex("0102"))))
    out.append(("safety_number(u_a [0a], u_b [0b])",
                enc.safety_number(s, "u_a", [b"\x0a"], "u_b", [b"\x0b"])))
    return out


def render(name: str) -> str:
    lines = [f"suite: {name}"] + [f"{label}\n  {value}" for label, value in vectors(name)]
    return "```\n" + "\n".join(lines) + "\n```"


@pytest.mark.parametrize("name", SUITES)
def test_doc_shows_the_vectors(name: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    want = render(name)
    assert want in text, f"docs/e2ee.md section 13 should contain:\n{want}"


def test_vectors_differ_between_suites_and_inputs() -> None:
    if not sm2_available():
        pytest.skip("SM2 (OpenSSL libcrypto) is not available")
    intl, gm = dict(vectors("international")), dict(vectors("gm"))
    assert intl["RK0"] != gm["RK0"] and intl["MK0"] != gm["MK0"]
    assert len(bytes.fromhex(intl["MK0 key"])) == 32 and len(bytes.fromhex(gm["MK0 key"])) == 16
    assert re.fullmatch(r"[0-9a-f]{16}", gm["escrow_key_id(public key 0102)"])

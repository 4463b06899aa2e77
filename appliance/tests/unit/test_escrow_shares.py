"""The escrow private key sealed and split k-of-n (issue 16): one share never opens it, any
k distinct shares of that key do, and a wrong, repeated or foreign share is refused."""

from __future__ import annotations

import base64
from itertools import combinations
from pathlib import Path

import pytest

from tongxin.cli.main import main
from tongxin.compliance import escrow_shares as es
from tongxin.crypto import sm2_available
from tongxin.crypto.suite import CryptoSuite, get_suite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee import escrow_trust

SUITES = [pytest.param("international", id="international"),
          pytest.param("gm", id="gm", marks=pytest.mark.skipif(
              not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available"))]


@pytest.fixture(params=SUITES)
def suite(request: pytest.FixtureRequest) -> CryptoSuite:
    return get_suite(str(request.param))


def test_any_k_shares_open_the_key_and_fewer_do_not(suite: CryptoSuite) -> None:
    pair = suite.generate_kem_keypair()
    key_id = enc.escrow_key_id(suite, pair.public_key)
    sealed, shares = es.split(suite, pair.private_key, key_id, 2, 3)
    assert base64.b64encode(pair.private_key).decode() not in sealed.to_json()
    assert [s.index for s in shares] == [1, 2, 3]
    for subset in combinations(shares, 2):
        assert es.combine(suite, sealed, list(subset)) == pair.private_key
    for one in shares:
        with pytest.raises(es.ShareError, match="needs 2"):
            es.combine(suite, sealed, [one])
    with pytest.raises(es.ShareError, match="twice"):
        es.combine(suite, sealed, [shares[0], shares[0]])
    # A share whose value was changed (or made up) does not open it.
    forged = es.Share(key_id, 2, 2, bytes(32))
    with pytest.raises(es.ShareError, match="do not open"):
        es.combine(suite, sealed, [shares[0], forged])
    # A share of another escrow key.
    _, others = es.split(suite, pair.private_key, "0" * 16, 2, 2)
    with pytest.raises(es.ShareError, match="for escrow key"):
        es.combine(suite, sealed, [shares[0], others[1]])
    # The sealed key's header is bound: raising the share count is noticed.
    tampered = es.SealedKey(sealed.suite, key_id, sealed.threshold, 4, sealed.nonce,
                            sealed.ciphertext)
    with pytest.raises(es.ShareError, match="do not open"):
        es.combine(suite, tampered, shares[:2])


def test_text_forms_round_trip_and_bad_input_is_refused(tmp_path: Path) -> None:
    suite = get_suite("international")
    pair = suite.generate_kem_keypair()
    sealed, shares = es.split(suite, pair.private_key, "ab" * 8, 3, 5)
    f = tmp_path / "sealed.json"
    f.write_text(sealed.to_json())
    assert es.SealedKey.read(f) == sealed
    assert [es.Share.parse(str(s)) for s in shares] == shares
    assert es.combine(suite, es.SealedKey.read(f),
                      [es.Share.parse(str(s)) for s in shares[2:]]) == pair.private_key
    for bad in ("", "tongxin-escrow-share-v1:abab:2:1:00", str(shares[0])[:-2]):
        with pytest.raises(es.ShareError):
            es.Share.parse(bad)
    f.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a sealed escrow key"):
        es.SealedKey.read(f)
    for k, n in ((1, 2), (3, 2), (2, 256)):
        with pytest.raises(ValueError):
            es.split(suite, pair.private_key, "ab" * 8, k, n)


def test_cli_splits_a_key_pair_and_refuses_a_mismatched_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "escrow-key", "--suite", "international", "--out", "esc"]) == 0
    assert main(["keys", "escrow-key", "--suite", "international", "--out", "other"]) == 0
    args = ["keys", "escrow-split", "--suite", "international", "--escrow-key", "esc/escrow.key",
            "--threshold", "2", "--shares", "3"]
    assert main([*args, "--escrow-public-key", "other/escrow.pem", "--out", "bad"]) == 1
    assert not (tmp_path / "bad").exists()
    assert main([*args, "--escrow-public-key", "esc/escrow.pem", "--out", "split"]) == 0
    suite = get_suite("international")
    sealed = es.SealedKey.read(tmp_path / "split/escrow.sealed.json")
    shares = [es.Share.parse((tmp_path / f"split/escrow-share-{i}.txt").read_text())
              for i in (1, 2, 3)]
    for i in (1, 2, 3):
        assert (tmp_path / f"split/escrow-share-{i}.txt").stat().st_mode & 0o077 == 0
    private = escrow_trust.key_bytes((tmp_path / "esc/escrow.key").read_bytes())
    assert es.combine(suite, sealed, [shares[2], shares[0]]) == private
    assert sealed.key_id == enc.escrow_key_id(
        suite, escrow_trust.key_bytes((tmp_path / "esc/escrow.pem").read_bytes()))
    # Never over an existing split.
    assert main([*args, "--escrow-public-key", "esc/escrow.pem", "--out", "split"]) == 1
    assert es.SealedKey.read(tmp_path / "split/escrow.sealed.json") == sealed

"""Cross-signing's pure parts (docs/e2ee.md 9.1): device signatures, the user key's backup,
and which listed devices a client uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tongxin.crypto import sm2_available
from tongxin.crypto.suite import CryptoSuite, get_suite
from tongxin.e2ee.cross_signing import (
    UserKey,
    device_is_signed,
    open_backup,
    seal_backup,
    sign_device,
)
from tongxin.e2ee.device_trust import ADDED, REMOVED, UNSIGNED, UNVERIFIED, DeviceTrust
from tongxin.e2ee.errors import E2EEError, MalformedError, TamperedError, UserKeyChangedError
from tongxin.proto import e2ee_pb2 as e2

SUITES = [pytest.param("international", id="international"),
          pytest.param("gm", id="gm", marks=pytest.mark.skipif(
              not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available"))]
FAST_N = 1 << 14  # the smallest cost open_backup accepts; tests need not wait
PASS = "a long enough passphrase"


def user_key(suite: CryptoSuite) -> UserKey:
    pair = suite.generate_signing_keypair()
    return UserKey(pair.public_key, pair.private_key)


@pytest.mark.parametrize("name", SUITES)
def test_a_device_signature_binds_user_device_and_identity_key(name: str) -> None:
    suite = get_suite(name)
    uk, other = user_key(suite), user_key(suite)
    ik = suite.generate_signing_keypair().public_key
    sig = sign_device(suite, uk.private_key, "bob", "b1", ik)
    assert device_is_signed(suite, uk.public_key, "bob", "b1", ik, sig)
    assert not device_is_signed(suite, other.public_key, "bob", "b1", ik, sig)
    assert not device_is_signed(suite, uk.public_key, "bob", "ghost", ik, sig)
    assert not device_is_signed(suite, uk.public_key, "alice", "b1", ik, sig)
    assert not device_is_signed(suite, uk.public_key, "bob", "b1",
                                suite.generate_signing_keypair().public_key, sig)
    assert not device_is_signed(suite, uk.public_key, "bob", "b1", ik, b"")
    assert not device_is_signed(suite, b"not a key", "bob", "b1", ik, sig)


@pytest.mark.parametrize("name", SUITES)
def test_the_backup_opens_only_with_its_passphrase_user_and_public_key(name: str) -> None:
    suite = get_suite(name)
    uk = user_key(suite)
    backup = seal_backup(suite, "bob", uk, PASS, n=FAST_N)
    assert uk.private_key not in backup
    assert open_backup(suite, "bob", uk.public_key, backup, PASS) == uk
    with pytest.raises(TamperedError, match="wrong passphrase"):
        open_backup(suite, "bob", uk.public_key, backup, PASS + "!")
    with pytest.raises(TamperedError):
        open_backup(suite, "mallory", uk.public_key, backup, PASS)
    with pytest.raises(TamperedError):
        open_backup(suite, "bob", user_key(suite).public_key, backup, PASS)


def test_a_malformed_backup_or_short_passphrase_is_a_clear_error() -> None:
    suite = get_suite("international")
    uk = user_key(suite)
    with pytest.raises(E2EEError, match="at least 10"):
        seal_backup(suite, "bob", uk, "short")
    doc = json.loads(seal_backup(suite, "bob", uk, PASS, n=FAST_N))
    for change in ({"n": 1 << 30}, {"n": 3}, {"format": "other"}, {"salt": "%%"},
                   {"suite": "gm"}):
        with pytest.raises(MalformedError):
            open_backup(suite, "bob", uk.public_key, json.dumps({**doc, **change}).encode(), PASS)
    with pytest.raises(MalformedError):
        open_backup(suite, "bob", uk.public_key, b"not json", PASS)


def bundle(suite: CryptoSuite, user: str, device: str, uk: UserKey | None,
           signed: bool = True) -> e2.DeviceBundle:
    ik = suite.generate_signing_keypair().public_key
    sig = sign_device(suite, uk.private_key, user, device, ik) if uk and signed else b""
    return e2.DeviceBundle(user_id=user, device_id=device, identity_key=ik,
                           device_signature=sig)


def listing(devices: list[e2.DeviceBundle], keys: dict[str, UserKey]) -> e2.KeyBundles:
    out = e2.KeyBundles(devices=devices)
    for u, k in keys.items():
        out.user_keys.add(user_id=u, user_key=k.public_key)
    return out


def test_signed_devices_are_used_unsigned_ones_refused_and_each_change_reported_once() -> None:
    suite = get_suite("international")
    bob = user_key(suite)
    b1, ghost = bundle(suite, "bob", "b1", bob), bundle(suite, "bob", "ghost", bob, signed=False)
    trust = DeviceTrust()
    use, changes = trust.evaluate(suite, listing([b1, ghost], {"bob": bob}), ["bob"])
    assert [b.device_id for b in use] == ["b1"]
    assert [(c.device_id, c.change) for c in changes] == [("b1", ADDED), ("ghost", UNSIGNED)]
    assert trust.user_keys["bob"] == bob.public_key
    use, changes = trust.evaluate(suite, listing([b1, ghost], {"bob": bob}), ["bob"])
    assert [b.device_id for b in use] == ["b1"] and changes == []
    # b1 goes away: reported as removed.
    _, changes = trust.evaluate(suite, listing([ghost], {"bob": bob}), ["bob"])
    assert [(c.device_id, c.change) for c in changes] == [("b1", REMOVED)]


def test_a_user_without_a_user_key_keeps_trust_on_first_use_reported_as_unverified() -> None:
    suite = get_suite("international")
    carol = bundle(suite, "carol", "c1", None)
    trust = DeviceTrust()
    use, changes = trust.evaluate(suite, listing([carol], {}), ["carol"])
    assert [b.device_id for b in use] == ["c1"]
    assert [c.change for c in changes] == [UNVERIFIED]


def test_a_changed_or_vanished_user_key_is_refused_until_accepted() -> None:
    suite = get_suite("international")
    bob, forged = user_key(suite), user_key(suite)
    trust = DeviceTrust()
    trust.evaluate(suite, listing([bundle(suite, "bob", "b1", bob)], {"bob": bob}), ["bob"])
    ghost = bundle(suite, "bob", "ghost", forged)
    with pytest.raises(UserKeyChangedError) as err:
        trust.evaluate(suite, listing([ghost], {"bob": forged}), ["bob"])
    assert (err.value.old_key, err.value.new_key) == (bob.public_key, forged.public_key)
    # The server drops the user key to fall back to trust on first use: refused too.
    with pytest.raises(UserKeyChangedError):
        trust.evaluate(suite, listing([bundle(suite, "bob", "ghost2", None)], {}), ["bob"])
    trust.accept_user_key("bob", forged.public_key)
    use, _ = trust.evaluate(suite, listing([ghost], {"bob": forged}), ["bob"])
    assert [b.device_id for b in use] == ["ghost"]


def test_the_trust_state_survives_its_saved_form() -> None:
    suite = get_suite("international")
    bob = user_key(suite)
    trust = DeviceTrust()
    trust.evaluate(suite, listing([bundle(suite, "bob", "b1", bob),
                                   bundle(suite, "bob", "g", bob, signed=False)], {"bob": bob}),
                   ["bob"])
    again = DeviceTrust.from_dict(json.loads(json.dumps(trust.to_dict())))
    assert again == trust


FIXTURE = Path(__file__).resolve().parents[2] / "web" / "test" / "fixtures" / "cross-signing.json"


@pytest.mark.parametrize("name", SUITES)
def test_the_fixture_the_web_client_opens_is_this_implementations(name: str) -> None:
    """appliance/web/test/cross_signing.test.mjs opens the same file: both sides agree on
    the backup's format, KDF, AEAD and associated data, and on the device statement."""
    f = json.loads(FIXTURE.read_text(encoding="utf-8"))[name]
    suite = get_suite(name)
    pub = bytes.fromhex(f["public_key"])
    key = open_backup(suite, f["user_id"], pub, f["backup"].encode(), f["passphrase"])
    assert key.private_key.hex() == f["private_key"]
    assert device_is_signed(suite, pub, f["user_id"], f["device_id"],
                            bytes.fromhex(f["identity_key"]), bytes.fromhex(f["device_signature"]))

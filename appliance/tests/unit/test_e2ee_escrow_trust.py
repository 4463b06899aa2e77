"""The organisation root vouches for the escrow key (docs/e2ee.md section 10.1): a server
that announces a key of its own, or a statement of another root, makes the SDK refuse to
encrypt; a rotation the root signed is accepted and reported; going back is refused."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tongxin.cli.main import main
from tongxin.client import e2ee as client_e2ee
from tongxin.client.e2ee import E2EEClient, load_org_root
from tongxin.config import ConfigError, load_config
from tongxin.crypto import sm2_available
from tongxin.crypto.suite import CryptoSuite, KeyPair, get_suite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee import escrow_trust as et
from tongxin.e2ee.device import Device
from tongxin.e2ee.errors import E2EEError, EscrowUntrustedError
from tongxin.keydir.service import E2eePolicy
from tongxin.proto import tongxin_pb2 as pb

SUITES = [pytest.param("international", id="international"),
          pytest.param("gm", id="gm", marks=pytest.mark.skipif(
              not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available"))]
NOW = int(time.time() * 1000)


@pytest.fixture(params=SUITES)
def suite(request: pytest.FixtureRequest) -> CryptoSuite:
    return get_suite(str(request.param))


def statement(suite: CryptoSuite, root: KeyPair, escrow_pub: bytes, sequence: int = 1,
              not_before_ms: int = NOW - 1000) -> et.EscrowStatement:
    return et.sign(suite, root.private_key, root.public_key, escrow_pub, not_before_ms, sequence)


def test_a_statement_verifies_only_for_its_key_suite_and_root(suite: CryptoSuite) -> None:
    root, other_root = suite.generate_signing_keypair(), suite.generate_signing_keypair()
    escrow, foreign = suite.generate_kem_keypair(), suite.generate_kem_keypair()
    st = statement(suite, root, escrow.public_key)
    assert st.key_id == enc.escrow_key_id(suite, escrow.public_key)
    assert st.root_key_id == suite.hash(root.public_key).hex() and len(st.root_key_id) == 64
    et.verify(suite, root.public_key, st, NOW)

    # The server swaps in its own key, with its id, keeping the root's signature.
    swapped = replace(st, public_key=foreign.public_key,
                      key_id=enc.escrow_key_id(suite, foreign.public_key))
    with pytest.raises(EscrowUntrustedError, match="does not verify"):
        et.verify(suite, root.public_key, swapped, NOW)
    # ... or keeps the vouched-for id beside its own key.
    with pytest.raises(EscrowUntrustedError, match="does not name"):
        et.verify(suite, root.public_key, replace(st, public_key=foreign.public_key), NOW)
    # A statement of a root the server made itself.
    own = statement(suite, other_root, foreign.public_key)
    with pytest.raises(EscrowUntrustedError, match="not the provisioned organisation root"):
        et.verify(suite, root.public_key, own, NOW)
    # ... even when it claims the real root's id.
    with pytest.raises(EscrowUntrustedError, match="does not verify"):
        et.verify(suite, root.public_key, replace(own, root_key_id=st.root_key_id), NOW)
    # Every signed field counts.
    for changed in (replace(st, sequence=2), replace(st, not_before_ms=st.not_before_ms + 1)):
        with pytest.raises(EscrowUntrustedError):
            et.verify(suite, root.public_key, changed, NOW)
    other_suite = "gm" if suite.name == "international" else "international"
    with pytest.raises(EscrowUntrustedError, match="suite"):
        et.verify(suite, root.public_key, replace(st, suite=other_suite), NOW)
    # Signed ahead of a planned rotation: not used before its time.
    later = statement(suite, root, escrow.public_key, not_before_ms=NOW + 3600_000)
    with pytest.raises(EscrowUntrustedError, match="not valid yet"):
        et.verify(suite, root.public_key, later, NOW)
    et.verify(suite, root.public_key, later, NOW + 3600_000)


def test_signing_refuses_a_non_kem_key_and_a_mismatched_root(suite: CryptoSuite) -> None:
    root = suite.generate_signing_keypair()
    with pytest.raises(Exception):  # noqa: B017 - a CryptoError or ValueError, either refuses
        statement(suite, root, root.public_key if suite.name == "international" else b"junk")
    other = suite.generate_signing_keypair()
    with pytest.raises(EscrowUntrustedError):
        et.sign(suite, root.private_key, other.public_key, suite.generate_kem_keypair().public_key,
                NOW, 1)
    with pytest.raises(ValueError, match="sequence"):
        statement(suite, root, suite.generate_kem_keypair().public_key, sequence=0)


def test_statement_file_and_wire_round_trip() -> None:
    suite = get_suite("international")
    root = suite.generate_signing_keypair()
    st = statement(suite, root, suite.generate_kem_keypair().public_key, sequence=7)
    assert et.EscrowStatement.from_json(st.to_json()) == st
    auth = pb.AuthResponse(crypto_suite=suite.name, escrow_key_id=st.key_id,
                           escrow_public_key=st.public_key, escrow_statement=st.to_proto())
    assert et.EscrowStatement.from_auth(pb.AuthResponse.FromString(
        auth.SerializeToString())) == st
    assert et.EscrowStatement.from_auth(pb.AuthResponse(escrow_key_id=st.key_id)) is None
    for bad in ("{}", "[]", "not json", json.dumps({**json.loads(st.to_json()), "sequence": "x"})):
        with pytest.raises(ValueError, match="not an escrow key statement"):
            et.EscrowStatement.from_json(bad)


def test_pin_first_use_rotation_rollback_and_equivocation() -> None:
    suite = get_suite("international")
    root = suite.generate_signing_keypair()
    k1, k2 = suite.generate_kem_keypair(), suite.generate_kem_keypair()
    s1, s2 = statement(suite, root, k1.public_key, 1), statement(suite, root, k2.public_key, 2)
    pin, change = et.advance_pin(None, s1)
    assert change is None and pin == et.EscrowPin(s1.key_id, 1, s1.root_key_id)
    assert et.advance_pin(pin, s1) == (pin, None)
    pin2, change = et.advance_pin(pin, s2)
    assert change is not None and change.old == pin and change.new == pin2
    assert s1.key_id in str(change) and s2.key_id in str(change)
    with pytest.raises(EscrowUntrustedError, match="older"):
        et.advance_pin(pin2, s1)
    rival = statement(suite, root, suite.generate_kem_keypair().public_key, 2)
    with pytest.raises(EscrowUntrustedError, match="two keys with one sequence"):
        et.advance_pin(pin2, rival)
    # Re-signing the same key with a later sequence moves the pin without a change.
    pin3, change = et.advance_pin(pin2, statement(suite, root, k2.public_key, 3))
    assert change is None and pin3.sequence == 3


def test_device_state_keeps_the_pin() -> None:
    suite = get_suite("international")
    dev = Device.create(suite, "u_a", "a1")
    assert Device.from_dict(json.loads(json.dumps(dev.to_dict()))).escrow_pin is None
    dev.escrow_pin = et.EscrowPin("0011223344556677", 4, "ab" * 32)
    again = Device.from_dict(json.loads(json.dumps(dev.to_dict())))
    assert again.escrow_pin == dev.escrow_pin
    old = dev.to_dict()
    del old["escrow_pin"]  # a state written before section 10.1
    assert Device.from_dict(old).escrow_pin is None


# ---- the SDK, against an AUTH_OK a malicious server could send ---------------------------

def auth_for(st: et.EscrowStatement | None, pub: bytes, key_id: str = "") -> Any:
    a = pb.AuthResponse(user_id="u_alice", device_id="a1", crypto_suite="international",
                        escrow_public_key=pub,
                        escrow_key_id=key_id or enc.escrow_key_id(get_suite("international"),
                                                                  pub))
    if st is not None:
        a.escrow_statement.CopyFrom(st.to_proto())
    return SimpleNamespace(auth=a)


def test_sdk_refuses_unvouched_escrow_and_reports_a_signed_rotation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = get_suite("international")
    root, rogue = suite.generate_signing_keypair(), suite.generate_signing_keypair()
    root_file = tmp_path / "org-root.pem"
    root_file.write_bytes(et.pem(root.public_key, "PUBLIC KEY"))
    k1, k2, foreign = (suite.generate_kem_keypair() for _ in range(3))
    s1, s2 = statement(suite, root, k1.public_key, 1), statement(suite, root, k2.public_key, 2)
    changes: list[et.EscrowKeyChange] = []

    def sdk(fake: Any, root_arg: Any = str(root_file)) -> E2EEClient:
        return E2EEClient(fake, tmp_path / "state", trusted_org_root=root_arg,
                          on_escrow_key_change=changes.append)

    # Escrow off: nothing to vouch for.
    off = sdk(SimpleNamespace(auth=pb.AuthResponse(user_id="u_alice", device_id="a1",
                                                   crypto_suite="international")))
    off.require_trusted_escrow()
    assert not off.escrow_enabled and off.device.escrow is None

    # A foreign key: announced bare, with the real statement, or with a rogue root's.
    for fake in (auth_for(None, foreign.public_key),
                 auth_for(s1, foreign.public_key),
                 auth_for(s1, foreign.public_key, key_id=s1.key_id),
                 auth_for(statement(suite, rogue, foreign.public_key, 9), foreign.public_key)):
        e = sdk(fake)
        assert e.escrow_enabled and e.device.escrow is None and e.escrow_key_id == ""
        with pytest.raises(EscrowUntrustedError):
            e.require_trusted_escrow()
    # No root provisioned at all: refused too, with where the root is looked for.
    monkeypatch.delenv("TONGXIN_ORG_ROOT", raising=False)
    monkeypatch.setattr(client_e2ee, "DEFAULT_ORG_ROOT_FILE", str(tmp_path / "none.pem"))
    e = sdk(auth_for(s1, k1.public_key), root_arg=None)
    assert e.org_root is None and e.org_root_fingerprint == ""
    with pytest.raises(EscrowUntrustedError, match="no organisation root"):
        e.require_trusted_escrow()

    e = sdk(auth_for(s1, k1.public_key))
    e.require_trusted_escrow()
    assert e.escrow_key_id == s1.key_id and changes == []
    assert e.org_root_fingerprint == s1.root_key_id
    # The pin survives a restart: the same device state, the legit rotation signed by root.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = sdk(auth_for(s2, k2.public_key))
    e.require_trusted_escrow()
    assert e.escrow_key_id == s2.key_id
    assert [(c.old.key_id, c.new.key_id) for c in changes] == [(s1.key_id, s2.key_id)]
    assert any(issubclass(w.category, et.EscrowKeyChangedWarning) for w in caught)
    # The server now replays the older (properly signed) statement: refused.
    e = sdk(auth_for(s1, k1.public_key))
    with pytest.raises(EscrowUntrustedError, match="older"):
        e.require_trusted_escrow()
    assert len(changes) == 1
    # A reconnect of the same SDK object (Client.auth replaced) is checked again before
    # the next send: a foreign key is refused, the next rotation is reported.
    fake = SimpleNamespace(auth=auth_for(s2, k2.public_key).auth)
    e = sdk(fake)
    e.require_trusted_escrow()
    fake.auth = auth_for(None, foreign.public_key).auth
    with pytest.raises(EscrowUntrustedError):
        e.require_trusted_escrow()
    assert e.device.escrow is None
    k3 = suite.generate_kem_keypair()
    fake.auth = auth_for(statement(suite, root, k3.public_key, 3), k3.public_key).auth
    with pytest.warns(et.EscrowKeyChangedWarning):
        e.require_trusted_escrow()
    assert e.escrow_key_id == enc.escrow_key_id(suite, k3.public_key)
    assert [c.new.sequence for c in changes] == [2, 3]


def test_org_root_is_read_from_bytes_a_path_or_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = get_suite("international")
    root = suite.generate_signing_keypair()
    f = tmp_path / "root.pem"
    f.write_bytes(et.pem(root.public_key, "PUBLIC KEY"))
    assert load_org_root(root.public_key) == root.public_key
    assert load_org_root(f.read_bytes()) == root.public_key
    assert load_org_root(str(f)) == root.public_key
    monkeypatch.setenv("TONGXIN_ORG_ROOT", str(f))
    assert load_org_root(None) == root.public_key
    with pytest.raises(E2EEError, match="cannot read the organisation root"):
        load_org_root(tmp_path / "missing.pem")
    with pytest.raises(E2EEError, match="empty"):
        load_org_root(b"")


# ---- the node's configuration -------------------------------------------------------------

def _node_files(tmp_path: Path, suite: CryptoSuite) -> tuple[KeyPair, KeyPair, Path]:
    root, escrow = suite.generate_signing_keypair(), suite.generate_kem_keypair()
    (tmp_path / "escrow.pem").write_bytes(et.pem(escrow.public_key, "PUBLIC KEY"))
    (tmp_path / "root.pem").write_bytes(et.pem(root.public_key, "PUBLIC KEY"))
    st_file = tmp_path / "statement.json"
    st_file.write_text(statement(suite, root, escrow.public_key).to_json())
    return root, escrow, st_file


def test_node_sends_the_statement_and_refuses_a_wrong_one(tmp_path: Path) -> None:
    suite = get_suite("international")
    root, escrow, st_file = _node_files(tmp_path, suite)
    cfg = load_config()
    cfg.crypto.suite = suite.name
    cfg.e2ee.escrow_public_key_file = str(tmp_path / "escrow.pem")
    cfg.e2ee.escrow_statement_file = str(st_file)
    cfg.e2ee.org_root_public_key_file = str(tmp_path / "root.pem")
    policy = E2eePolicy.from_config(cfg)
    assert policy.escrow_statement is not None
    assert policy.escrow_statement.root_key_id == suite.hash(root.public_key).hex()

    # The statement of another escrow key.
    other = tmp_path / "other.json"
    other.write_text(statement(suite, root, suite.generate_kem_keypair().public_key).to_json())
    cfg.e2ee.escrow_statement_file = str(other)
    with pytest.raises(ConfigError, match="another escrow key"):
        E2eePolicy.from_config(cfg)
    # Signed by a root other than the installed one.
    rogue = tmp_path / "rogue.json"
    rogue.write_text(statement(suite, suite.generate_signing_keypair(),
                               escrow.public_key).to_json())
    cfg.e2ee.escrow_statement_file = str(rogue)
    with pytest.raises(ConfigError, match="organisation root"):
        E2eePolicy.from_config(cfg)
    cfg.e2ee.escrow_statement_file = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="escrow_statement_file"):
        E2eePolicy.from_config(cfg)
    # Without a statement the node starts (clients then refuse) and sends none.
    cfg.e2ee.escrow_statement_file = ""
    assert E2eePolicy.from_config(cfg).escrow_statement is None


def test_cli_makes_a_root_an_escrow_key_and_a_statement(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["keys", "--suite", "international"]
    assert main([*base[:1], "org-root", *base[1:], "--out", "root"]) == 0
    fingerprint = capsys.readouterr().out.split("fingerprint: ")[1].split()[0]
    assert (tmp_path / "root/org-root.key").stat().st_mode & 0o077 == 0
    assert main([*base[:1], "escrow-key", *base[1:], "--out", "esc"]) == 0
    assert (tmp_path / "esc/escrow.key").stat().st_mode & 0o077 == 0
    assert main(["keys", "escrow-sign", "--suite", "international", "--root-key",
                 "root/org-root.key", "--escrow-public-key", "esc/escrow.pem", "--sequence", "1",
                 "--out", "statement.json"]) == 0
    st = et.EscrowStatement.read(tmp_path / "statement.json")
    suite = get_suite("international")
    root_pub = et.key_bytes((tmp_path / "root/org-root.pem").read_bytes())
    et.verify(suite, root_pub, st, int(time.time() * 1000))
    assert st.root_key_id == fingerprint and st.sequence == 1
    assert st.public_key == et.key_bytes((tmp_path / "esc/escrow.pem").read_bytes())
    # The root is never overwritten, nor is a statement.
    before = (tmp_path / "root/org-root.key").read_bytes()
    assert main([*base[:1], "org-root", *base[1:], "--out", "root"]) == 1
    assert (tmp_path / "root/org-root.key").read_bytes() == before
    assert main(["keys", "escrow-sign", "--suite", "international", "--root-key",
                 "root/org-root.key", "--escrow-public-key", "esc/escrow.pem", "--sequence", "2",
                 "--out", "statement.json"]) == 1
    assert et.EscrowStatement.read(tmp_path / "statement.json").sequence == 1

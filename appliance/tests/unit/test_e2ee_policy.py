"""The server's E2EE policy (docs/e2ee.md sections 3 and 10): suite availability fails
closed, e2ee.required refuses plaintext, escrow refuses envelopes without a wrap."""

from __future__ import annotations

from pathlib import Path

import pytest

from tongxin.config import ConfigError, load_config
from tongxin.crypto.errors import SM2UnavailableError
from tongxin.crypto.suite import get_suite
from tongxin.e2ee import Device, Escrow
from tongxin.errors import RequestError
from tongxin.keydir import service
from tongxin.keydir.service import E2eePolicy
from tongxin.proto import e2ee_pb2 as e2
from tongxin.proto import tongxin_pb2 as pb


def _no_sm2(name: str) -> object:
    if name == "gm":
        raise SM2UnavailableError("no OpenSSL 3 libcrypto (simulated)")
    return get_suite(name)


def test_unavailable_suite_is_refused_not_replaced(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(service, "get_suite", _no_sm2)
    cfg = load_config()
    policy = E2eePolicy.from_config(cfg)
    assert policy.suite is None and policy.suite_name == "gm"
    assert "unavailable" in caplog.text
    with pytest.raises(RequestError) as err:
        policy.require_suite()
    assert err.value.code == pb.UNAVAILABLE and "simulated" in err.value.message
    cfg.e2ee.required = True
    with pytest.raises(ConfigError, match="unavailable"):
        E2eePolicy.from_config(cfg)


def test_required_refuses_plaintext_only() -> None:
    cfg = load_config()
    cfg.crypto.suite = "international"
    cfg.e2ee.required = True
    policy = E2eePolicy.from_config(cfg)
    for content in (pb.Content(text="hi"), pb.Content(file=pb.FileInfo(file_id="f")),
                    pb.Content()):
        with pytest.raises(RequestError) as err:
            policy.check_content(content)
        assert err.value.code == pb.INVALID_ARGUMENT
    policy.check_content(pb.Content(encrypted=b"anything"))  # opaque without escrow
    cfg.e2ee.required = False
    E2eePolicy.from_config(cfg).check_content(pb.Content(text="fine when not required"))


def test_escrow_policy_checks_the_wrap(tmp_path: Path) -> None:
    suite = get_suite("international")
    org = suite.generate_kem_keypair()
    pem = tmp_path / "escrow.pem"
    import base64
    pem.write_text("-----BEGIN PUBLIC KEY-----\n"
                   + base64.encodebytes(org.public_key).decode()
                   + "-----END PUBLIC KEY-----\n")
    cfg = load_config()
    cfg.crypto.suite = "international"
    cfg.e2ee.escrow_public_key_file = str(pem)
    policy = E2eePolicy.from_config(cfg)
    assert policy.escrow_public_key == org.public_key and len(policy.escrow_key_id) == 16
    a, b = Device.create(suite, "u_a", "a1"), Device.create(suite, "u_b", "b1")
    pub = b.publish()
    a.add_bundle(e2.DeviceBundle(user_id="u_b", device_id="b1", identity_key=pub.identity_key,
                                 signed_prekey=pub.signed_prekey))
    without = a.seal("c", e2.Payload(text="x"), [("u_b", "b1")]).SerializeToString()
    with pytest.raises(RequestError) as err:
        policy.check_content(pb.Content(encrypted=without))
    assert err.value.code == pb.INVALID_ARGUMENT and policy.escrow_key_id in err.value.message
    a.escrow = Escrow(org.public_key, policy.escrow_key_id)
    policy.check_content(pb.Content(encrypted=a.seal("c", e2.Payload(text="x"),
                                                     [("u_b", "b1")]).SerializeToString()))
    a.escrow = Escrow(org.public_key, "0123456789abcdef")
    with pytest.raises(RequestError):
        policy.check_content(pb.Content(encrypted=a.seal("c", e2.Payload(text="x"),
                                                         [("u_b", "b1")]).SerializeToString()))
    for junk in (b"\xff\xff", b""):
        with pytest.raises(RequestError):
            policy.check_content(pb.Content(encrypted=junk))


def test_escrow_key_file_must_hold_a_kem_key_of_the_suite(tmp_path: Path) -> None:
    cfg = load_config()
    cfg.crypto.suite = "international"
    bad = tmp_path / "sign.der"
    bad.write_bytes(get_suite("international").generate_signing_keypair().public_key)
    cfg.e2ee.escrow_public_key_file = str(bad)
    with pytest.raises(ConfigError, match="escrow_public_key_file"):
        E2eePolicy.from_config(cfg)
    cfg.e2ee.escrow_public_key_file = str(tmp_path / "missing.der")
    with pytest.raises(ConfigError, match="escrow_public_key_file"):
        E2eePolicy.from_config(cfg)

"""Pairwise sessions (docs/e2ee.md sections 4-6): setup, the KEM ratchet, its bounds, and
that every refusal leaves the session as it was."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tongxin.crypto import sm2_available
from tongxin.crypto.suite import CryptoSuite, get_suite
from tongxin.e2ee import (
    Device,
    IdentityChangedError,
    MalformedError,
    NoSessionError,
    ReplayError,
    TamperedError,
    TooFarAheadError,
    WrongSignatureError,
)
from tongxin.e2ee import encoding as enc
from tongxin.e2ee.ratchet import MAX_SKIP
from tongxin.proto import e2ee_pb2 as e2

SUITES = [pytest.param("international", id="international"),
          pytest.param("gm", id="gm", marks=pytest.mark.skipif(
              not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available"))]
CONV = "d:u_a:u_b"


@pytest.fixture(params=SUITES)
def suite(request: pytest.FixtureRequest) -> CryptoSuite:
    return get_suite(str(request.param))


def bundle_of(dev: Device, one_time: bool = True) -> e2.DeviceBundle:
    pub = dev.publish(one_time=1 if one_time else 0)
    b = e2.DeviceBundle(user_id=dev.user_id, device_id=dev.device_id,
                        identity_key=pub.identity_key, signed_prekey=pub.signed_prekey)
    if one_time:
        b.one_time_prekey.CopyFrom(pub.one_time_prekeys[0])
    return b


def pair(suite: CryptoSuite) -> tuple[Device, Device]:
    a = Device.create(suite, "u_a", "a1")
    b = Device.create(suite, "u_b", "b1")
    a.add_bundle(bundle_of(b))
    return a, b


def send(src: Device, dst: Device, text: str) -> bytes:
    env = src.seal(CONV, e2.Payload(text=text), [(dst.user_id, dst.device_id)])
    return bytes(env.SerializeToString())


def recv(dst: Device, src: Device, data: bytes) -> str:
    return str(dst.open(CONV, src.user_id, src.device_id, data).payload.text)


def test_in_order_both_directions_with_ratchet_steps(suite: CryptoSuite) -> None:
    a, b = pair(suite)
    seen_ratchet_keys = set()
    for i in range(4):
        m = send(a, b, f"a{i}")
        seen_ratchet_keys.add(e2.Envelope.FromString(m).recipients[0].header.ratchet_key)
        assert recv(b, a, m) == f"a{i}"
        m = send(b, a, f"b{i}")
        seen_ratchet_keys.add(e2.Envelope.FromString(m).recipients[0].header.ratchet_key)
        assert recv(a, b, m) == f"b{i}"
    # Every turn of the conversation started a new sending chain with a fresh KEM key.
    assert len(seen_ratchet_keys) == 8


def test_session_init_is_sent_until_the_first_answer(suite: CryptoSuite) -> None:
    a, b = pair(suite)
    m1, m2 = send(a, b, "1"), send(a, b, "2")
    assert all(e2.Envelope.FromString(m).recipients[0].HasField("init") for m in (m1, m2))
    assert recv(b, a, m2) == "2" and recv(b, a, m1) == "1"  # second one first: both open
    assert recv(a, b, send(b, a, "ack")) == "ack"
    assert not e2.Envelope.FromString(send(a, b, "3")).recipients[0].HasField("init")


def test_out_of_order_within_the_bound_across_chains(suite: CryptoSuite) -> None:
    a, b = pair(suite)
    first = [send(a, b, f"x{i}") for i in range(5)]
    assert recv(b, a, first[0]) == "x0"
    assert recv(a, b, send(b, a, "turn")) == "turn"
    second = [send(a, b, f"y{i}") for i in range(3)]  # a new chain of a's
    assert recv(b, a, second[2]) == "y2"
    assert recv(b, a, first[4]) == "x4"    # a skipped key of the previous chain
    assert recv(b, a, second[0]) == "y0"
    assert recv(b, a, first[1]) == "x1"
    with pytest.raises(ReplayError):
        recv(b, a, first[4])


def test_replay_is_refused(suite: CryptoSuite) -> None:
    a, b = pair(suite)
    m = send(a, b, "once")
    assert recv(b, a, m) == "once"
    with pytest.raises(ReplayError):
        recv(b, a, m)
    nxt = send(a, b, "next")
    assert recv(b, a, nxt) == "next"
    with pytest.raises(ReplayError):
        recv(b, a, nxt)


def _mutate(data: bytes, fn: Callable[[e2.Envelope], None]) -> bytes:
    env = e2.Envelope.FromString(data)
    fn(env)
    return bytes(env.SerializeToString())


@pytest.mark.parametrize("where", ["body", "recipient", "header_counter", "nonce",
                                   "sender_device"])
def test_tampering_is_refused_and_changes_nothing(suite: CryptoSuite, where: str) -> None:
    a, b = pair(suite)
    m = send(a, b, "hello")

    def body(env: e2.Envelope) -> None:
        env.ciphertext = bytes([env.ciphertext[0] ^ 1]) + env.ciphertext[1:]

    def recipient(env: e2.Envelope) -> None:
        r = env.recipients[0]
        r.ciphertext = r.ciphertext[:-1] + bytes([r.ciphertext[-1] ^ 0x80])

    def header_counter(env: e2.Envelope) -> None:
        env.recipients[0].header.counter = 1

    def nonce(env: e2.Envelope) -> None:
        env.nonce = bytes(12)

    def sender_device(env: e2.Envelope) -> None:
        env.sender_device = "a2"

    fn = {"body": body, "recipient": recipient, "header_counter": header_counter,
          "nonce": nonce, "sender_device": sender_device}[where]
    before = json.dumps(b.to_dict(), sort_keys=True)
    with pytest.raises(TamperedError):
        recv(b, a, _mutate(m, fn))
    assert json.dumps(b.to_dict(), sort_keys=True) == before
    assert recv(b, a, m) == "hello"


def test_conversation_and_sender_are_bound(suite: CryptoSuite) -> None:
    a, b = pair(suite)
    m = send(a, b, "for this conversation")
    with pytest.raises(TamperedError):
        b.open("g:elsewhere", a.user_id, a.device_id, m)
    with pytest.raises(WrongSignatureError):  # the session transcript names the sender
        b.open(CONV, "u_mallory", a.device_id, m)
    assert recv(b, a, m) == "for this conversation"


def test_beyond_the_skip_bound_is_refused(suite: CryptoSuite) -> None:
    a, b = pair(suite)
    assert recv(b, a, send(a, b, "start")) == "start"
    assert recv(a, b, send(b, a, "turn")) == "turn"
    env = e2.Envelope.FromString(send(a, b, "far"))
    env.recipients[0].header.counter = MAX_SKIP + 5
    with pytest.raises(TooFarAheadError):
        recv(b, a, env.SerializeToString())
    # Within the bound the skipping itself is fine (the forged counter then fails the AEAD).
    env.recipients[0].header.counter = MAX_SKIP - 1
    with pytest.raises(TamperedError):
        recv(b, a, env.SerializeToString())


def test_state_survives_serialisation(suite: CryptoSuite) -> None:
    a, b = pair(suite)
    assert recv(b, a, send(a, b, "1")) == "1"
    pending = send(a, b, "late")
    assert recv(a, b, send(b, a, "2")) == "2"
    a2 = Device.from_dict(json.loads(json.dumps(a.to_dict())))
    b2 = Device.from_dict(json.loads(json.dumps(b.to_dict())))
    assert recv(b2, a2, send(a2, b2, "3")) == "3"
    assert recv(b2, a2, pending) == "late"     # a skipped key came back from storage
    assert recv(a2, b2, send(b2, a2, "4")) == "4"
    with pytest.raises(ReplayError):
        recv(b2, a2, pending)


def test_prekey_signed_by_the_wrong_identity_is_refused(suite: CryptoSuite) -> None:
    a = Device.create(suite, "u_a", "a1")
    b = Device.create(suite, "u_b", "b1")
    mallory = Device.create(suite, "u_b", "b1")
    good = bundle_of(b)
    forged = e2.DeviceBundle()
    forged.CopyFrom(good)
    forged.signed_prekey.CopyFrom(mallory.publish().signed_prekey)  # signed by mallory
    with pytest.raises(WrongSignatureError):
        a.add_bundle(forged)
    assert a.active_session("u_b", "b1") is None
    forged_otk = e2.DeviceBundle()
    forged_otk.CopyFrom(good)
    forged_otk.one_time_prekey.CopyFrom(mallory.publish(one_time=1).one_time_prekeys[0])
    with pytest.raises(WrongSignatureError):
        a.add_bundle(forged_otk)
    a.add_bundle(good)
    assert recv(b, a, send(a, b, "ok")) == "ok"


def test_session_init_signed_by_another_identity_is_refused(suite: CryptoSuite) -> None:
    a, b = pair(suite)
    m = send(a, b, "hi")
    other = suite.generate_signing_keypair()
    env = e2.Envelope.FromString(m)
    init = env.recipients[0].init
    init.initiator_identity_key = other.public_key
    with pytest.raises(WrongSignatureError):
        recv(b, a, env.SerializeToString())
    # The refusal pinned nothing and made no session: the genuine message still opens.
    assert b.pins.pinned(a.user_id, a.device_id) is None
    assert b.active_session(a.user_id, a.device_id) is None
    assert recv(b, a, m) == "hi"
    assert b.pins.pinned(a.user_id, a.device_id) == a.identity.public_key


def test_changed_identity_is_refused_until_accepted(suite: CryptoSuite) -> None:
    a, b = pair(suite)
    assert recv(b, a, send(a, b, "first")) == "first"
    seen: list[IdentityChangedError] = []
    b.pins.on_change = seen.append
    a_new = Device.create(suite, "u_a", "a1")  # a reinstalled a1 with a new identity
    a_new.add_bundle(bundle_of(b))
    m = send(a_new, b, "from the new key")
    with pytest.raises(IdentityChangedError) as err:
        recv(b, a_new, m)
    assert err.value.new_key == a_new.identity.public_key and len(seen) == 1
    b.accept_identity("u_a", "a1", a_new.identity.public_key)
    assert recv(b, a_new, m) == "from the new key"


def test_one_time_prekey_is_used_once(suite: CryptoSuite) -> None:
    b = Device.create(suite, "u_b", "b1")
    bundle = bundle_of(b)
    a1, a2 = Device.create(suite, "u_a", "a1"), Device.create(suite, "u_a", "a2")
    a1.add_bundle(bundle)
    a2.add_bundle(bundle)  # a directory that handed the same key out twice
    assert recv(b, a1, send(a1, b, "first")) == "first"
    with pytest.raises(ReplayError):
        recv(b, a2, send(a2, b, "second"))


def test_without_one_time_prekey_and_malformed_input(suite: CryptoSuite) -> None:
    a = Device.create(suite, "u_a", "a1")
    b = Device.create(suite, "u_b", "b1")
    a.add_bundle(bundle_of(b, one_time=False))
    m = send(a, b, "no otk")
    assert recv(b, a, m) == "no otk"
    for junk in (b"", b"\xff\xff\xff", b"\x0a\x05hello"):
        with pytest.raises((MalformedError, TamperedError, NoSessionError)):
            recv(b, a, junk)
    env = e2.Envelope.FromString(m)
    env.version = 2
    with pytest.raises(MalformedError):
        recv(b, a, env.SerializeToString())
    env.version, env.suite = 1, "other"
    with pytest.raises(MalformedError):
        recv(b, a, env.SerializeToString())


def test_multi_device_fan_out_each_device_opens_its_own(suite: CryptoSuite) -> None:
    a1, a2 = Device.create(suite, "u_a", "a1"), Device.create(suite, "u_a", "a2")
    b1, b2 = Device.create(suite, "u_b", "b1"), Device.create(suite, "u_b", "b2")
    for d in (a2, b1, b2):
        a1.add_bundle(bundle_of(d))
    targets = [("u_a", "a1"), ("u_a", "a2"), ("u_b", "b1"), ("u_b", "b2")]
    data = a1.seal(CONV, e2.Payload(text="all"), targets).SerializeToString()
    env = e2.Envelope.FromString(data)
    assert sorted(r.device_id for r in env.recipients) == ["a2", "b1", "b2"]
    for d in (a2, b1, b2):
        assert d.open(CONV, "u_a", "a1", data).payload.text == "all"
    # A recipient cannot swap in another body: the digest in its wrap does not match.
    forged = e2.Envelope.FromString(data)
    forged.ciphertext = a1.seal(CONV, e2.Payload(text="x"), []).ciphertext
    b3 = Device.create(suite, "u_b", "b3")
    a1.add_bundle(bundle_of(b3))
    with pytest.raises(NoSessionError):
        b3.open(CONV, "u_a", "a1", data)  # not addressed to b3


def test_encodings_are_length_prefixed() -> None:
    assert enc.lp("ab") == b"\x00\x00\x00\x02ab"
    assert enc.prekey_statement("gm", "u", "d", 1, 7, b"\x01") == (
        enc.lp("tongxin-e2ee-v1/prekey") + enc.lp("gm") + enc.lp("u") + enc.lp("d")
        + b"\x01" + b"\x00\x00\x00\x07" + enc.lp(b"\x01"))


def test_random_corruption_is_refused_with_typed_errors_only(suite: CryptoSuite) -> None:
    """Hostile bytes never escape as anything but an E2EEError, and never open to
    something other than what was sent."""
    import random

    from tongxin.e2ee import E2EEError

    rng = random.Random(5)
    a, b = pair(suite)
    assert recv(b, a, send(a, b, "confirm")) == "confirm"
    assert recv(a, b, send(b, a, "confirmed")) == "confirmed"  # a stops sending the init
    refused = 0
    for i in range(60):
        good = send(a, b, f"msg{i}")
        data = bytearray(good)
        if i % 3 == 0:
            data = data[:rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        with pytest.raises(E2EEError):  # every field left is bound by an AEAD or checked
            recv(b, a, bytes(data))
        refused += 1
        assert recv(b, a, good) == f"msg{i}"  # the refusal changed nothing
    assert refused == 60

"""Group sender keys (docs/e2ee.md section 7), attachments and escrow wraps."""

from __future__ import annotations

import pytest

from tongxin.crypto import sm2_available
from tongxin.crypto.suite import CryptoSuite, get_suite
from tongxin.e2ee import (
    Device,
    Escrow,
    EscrowError,
    NoSenderKeyError,
    NoSessionError,
    ReplayError,
    TamperedError,
    TooFarAheadError,
    WrongSignatureError,
    attachments,
    escrow,
)
from tongxin.e2ee import encoding as enc
from tongxin.e2ee.ratchet import MAX_SKIP
from tongxin.proto import e2ee_pb2 as e2

SUITES = [pytest.param("international", id="international"),
          pytest.param("gm", id="gm", marks=pytest.mark.skipif(
              not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available"))]
G = "g:0123456789abcdef0123"


@pytest.fixture(params=SUITES)
def suite(request: pytest.FixtureRequest) -> CryptoSuite:
    return get_suite(str(request.param))


def connect(src: Device, *others: Device) -> None:
    for d in others:
        pub = d.publish(one_time=1)
        src.add_bundle(e2.DeviceBundle(user_id=d.user_id, device_id=d.device_id,
                                       identity_key=pub.identity_key,
                                       signed_prekey=pub.signed_prekey,
                                       one_time_prekey=pub.one_time_prekeys[0]))


def group_send(src: Device, members: list[Device], text: str) -> list[bytes]:
    """What the SDK sends: a distribution when needed, then the group message."""
    out = []
    dist = src.sender_key_distribution(G, sorted({src.user_id, *(m.user_id for m in members)}))
    if dist is not None:
        out.append(src.seal(G, dist, [(m.user_id, m.device_id) for m in members])
                   .SerializeToString())
    out.append(src.seal_group(G, e2.Payload(text=text)).SerializeToString())
    return out


def deliver(dst: Device, src: Device, frames: list[bytes]) -> str:
    text = ""
    for f in frames:
        p = dst.open(G, src.user_id, src.device_id, f).payload
        if p.WhichOneof("body") == "text":
            text = p.text
    return text


def test_group_messages_open_for_members_in_any_order(suite: CryptoSuite) -> None:
    a, b, c = (Device.create(suite, f"u_{n}", f"{n}1") for n in "abc")
    connect(a, b, c)
    first = group_send(a, [b, c], "one")
    assert len(first) == 2  # distribution, then the message
    later = [group_send(a, [b, c], f"m{i}")[-1] for i in range(4)]
    assert deliver(b, a, first) == "one"
    assert deliver(b, a, [later[3]]) == "m3"
    assert deliver(b, a, [later[1]]) == "m1"
    with pytest.raises(ReplayError):
        deliver(b, a, [later[3]])
    assert deliver(c, a, first + later) == "m3"
    env = e2.Envelope.FromString(later[0])
    assert env.kind == e2.Envelope.GROUP and not env.recipients


def test_removed_member_cannot_open_after_rotation(suite: CryptoSuite) -> None:
    a, b, c = (Device.create(suite, f"u_{n}", f"{n}1") for n in "abc")
    connect(a, b, c)
    assert deliver(c, a, group_send(a, [b, c], "before")) == "before"
    a.membership_changed(G, ["u_c"])
    frames = group_send(a, [b], "after")
    assert len(frames) == 2
    env_before = e2.Envelope.FromString(frames[1])
    assert env_before.sender_key.epoch == 2
    with pytest.raises(NoSessionError):
        c.open(G, "u_a", "a1", frames[0])  # the new distribution is not for c
    with pytest.raises(NoSenderKeyError):
        c.open(G, "u_a", "a1", frames[1])
    assert deliver(b, a, frames) == "after"


def test_member_list_change_rotates_even_without_the_system_entry(suite: CryptoSuite) -> None:
    a, b, c = (Device.create(suite, f"u_{n}", f"{n}1") for n in "abc")
    connect(a, b, c)
    group_send(a, [b, c], "x")
    assert a.sender_key_distribution(G, ["u_a", "u_b", "u_c"]) is None
    frames = group_send(a, [b], "y")  # c is gone from the member list the SDK passes
    assert e2.Envelope.FromString(frames[-1]).sender_key.epoch == 2


def test_group_signature_tamper_and_bounds(suite: CryptoSuite) -> None:
    a, b = Device.create(suite, "u_a", "a1"), Device.create(suite, "u_b", "b1")
    connect(a, b)
    frames = group_send(a, [b], "hi")
    deliver(b, a, frames[:1])
    env = e2.Envelope.FromString(frames[1])
    bad_sig = e2.Envelope()
    bad_sig.CopyFrom(env)
    bad_sig.sender_key.iteration = 1
    with pytest.raises(WrongSignatureError):
        b.open(G, "u_a", "a1", bad_sig.SerializeToString())
    bad_body = e2.Envelope()
    bad_body.CopyFrom(env)
    bad_body.ciphertext = bytes([env.ciphertext[0] ^ 1]) + env.ciphertext[1:]
    with pytest.raises(WrongSignatureError):
        b.open(G, "u_a", "a1", bad_body.SerializeToString())
    assert deliver(b, a, frames[1:]) == "hi"
    # Forge a far iteration signed with the real sender key: only the bound stops it.
    own = a.own_sender_keys[G]
    own.iteration = MAX_SKIP + 10
    far = a.seal_group(G, e2.Payload(text="far"))
    with pytest.raises(TooFarAheadError):
        b.open(G, "u_a", "a1", far.SerializeToString())


def test_distribution_for_another_conversation_is_refused(suite: CryptoSuite) -> None:
    a, b = Device.create(suite, "u_a", "a1"), Device.create(suite, "u_b", "b1")
    connect(a, b)
    dist = a.sender_key_distribution(G, ["u_a", "u_b"])
    assert dist is not None
    env = a.seal("g:other", dist, [("u_b", "b1")])
    with pytest.raises(TamperedError):
        b.open("g:other", "u_a", "a1", env.SerializeToString())


def test_attachment_round_trip_and_tamper(suite: CryptoSuite) -> None:
    data = b"quarterly report " * 100
    blob, att = attachments.encrypt(suite, data, "r.txt", "text/plain")
    assert data not in blob and len(blob) == len(data) + suite.aead_tag_size
    assert attachments.decrypt(suite, blob, att) == data
    with pytest.raises(TamperedError):
        attachments.decrypt(suite, blob[:-1] + bytes([blob[-1] ^ 1]), att)
    att.digest = suite.hash(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(TamperedError):
        attachments.decrypt(suite, blob[:-1] + bytes([blob[-1] ^ 1]), att)


def test_escrow_wrap_opens_only_with_the_escrow_key(suite: CryptoSuite) -> None:
    org = suite.generate_kem_keypair()
    key_id = enc.escrow_key_id(suite, org.public_key)
    a, b = Device.create(suite, "u_a", "a1"), Device.create(suite, "u_b", "b1")
    a.escrow = Escrow(org.public_key, key_id)
    connect(a, b)
    env = a.seal("d:u_a:u_b", e2.Payload(text="audited"), [("u_b", "b1")])
    data = env.SerializeToString()
    assert escrow.check_structure(suite, data, key_id) is None
    assert "escrow" in (escrow.check_structure(suite, data, "0" * 16) or "")
    payload = escrow.open_envelope(suite, org.private_key, key_id, "d:u_a:u_b", "u_a", data)
    assert payload.text == "audited"
    other = suite.generate_kem_keypair()
    with pytest.raises(EscrowError):
        escrow.open_envelope(suite, other.private_key, key_id, "d:u_a:u_b", "u_a", data)
    with pytest.raises(EscrowError):  # bound to the conversation through the body AAD
        escrow.open_envelope(suite, org.private_key, key_id, "d:u_a:u_x", "u_a", data)
    a.escrow = None
    plain = a.seal("d:u_a:u_b", e2.Payload(text="x"), [("u_b", "b1")]).SerializeToString()
    assert escrow.check_structure(suite, plain, key_id) is not None
    with pytest.raises(EscrowError):
        escrow.open_envelope(suite, org.private_key, key_id, "d:u_a:u_b", "u_a", plain)


def test_safety_number_is_symmetric_and_changes_with_keys(suite: CryptoSuite) -> None:
    k1, k2, k3 = (suite.generate_signing_keypair().public_key for _ in range(3))
    n = enc.safety_number(suite, "u_a", [k1], "u_b", [k2])
    assert n == enc.safety_number(suite, "u_b", [k2], "u_a", [k1])
    assert len(n.replace(" ", "")) == 30 and n.count(" ") == 5
    assert n != enc.safety_number(suite, "u_a", [k1], "u_b", [k3])


def test_group_messages_carry_the_escrow_wrap_too(suite: CryptoSuite) -> None:
    org = suite.generate_kem_keypair()
    key_id = enc.escrow_key_id(suite, org.public_key)
    a, b = Device.create(suite, "u_a", "a1"), Device.create(suite, "u_b", "b1")
    a.escrow = Escrow(org.public_key, key_id)
    connect(a, b)
    frames = group_send(a, [b], "group audited")
    assert all(escrow.check_structure(suite, f, key_id) is None for f in frames)
    assert deliver(b, a, frames) == "group audited"
    payload = escrow.open_envelope(suite, org.private_key, key_id, G, "u_a", frames[1])
    assert payload.text == "group audited"
    with pytest.raises(EscrowError):  # the sender is bound too
        escrow.open_envelope(suite, org.private_key, key_id, G, "u_b", frames[1])

"""End-to-end encryption through a real node (docs/e2ee.md): two users with two devices
each (and a third user in a group) exchange E2EE messages; the server's database holds no
plaintext; membership changes rotate sender keys; tampering, replays and a swapped
directory entry are refused."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]

from tongxin.client import Client, TongxinError, pb
from tongxin.client.e2ee import E2EEClient, Opened
from tongxin.crypto import sm2_available
from tongxin.crypto.suite import get_suite
from tongxin.e2ee import (
    IdentityChangedError,
    NoSenderKeyError,
    NoSessionError,
    ReplayError,
    TamperedError,
)
from tongxin.proto import e2ee_pb2 as e2

pytestmark = pytest.mark.integration

SUITES = [pytest.param("international", id="international"),
          pytest.param("gm", id="gm", marks=pytest.mark.skipif(
              not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available"))]


PASSPHRASE = "correct horse battery staple"


async def device(rn: RunningNode, name: str, dev: str, keys: Path) -> E2EEClient:
    """A device of ``name``: the user's first one makes the user key and its backup, later
    ones open the backup with the same passphrase (docs/e2ee.md 9.1)."""
    c = await rn.user(name, device_id=dev)
    e = await c.e2ee(keys / f"{name}-{dev}", key_backup_passphrase=PASSPHRASE)
    assert e.signed, e.cross.not_signed
    return e


async def next_opened(e: E2EEClient) -> tuple[pb.Message, Opened]:
    """The next DELIVER that opens to something a user would see."""
    while True:
        ev = await e.client.next_event(pb.DELIVER)
        opened = await e.open(ev.message)
        if opened is not None and opened.payload.WhichOneof("body") != "sender_key":
            return ev.message, opened


async def next_raw(c: Client, kind: int = pb.CHAT) -> pb.Message:
    while True:
        ev = await c.next_event(pb.DELIVER)
        if ev.message.kind == kind:
            msg: pb.Message = ev.message
            return msg


def stored_bytes(home: Path) -> bytes:
    """Every byte the node keeps on disk: databases (with their WAL), files, everything."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


def tampered(msg: pb.Message, fn: Any) -> pb.Message:
    out = pb.Message()
    out.CopyFrom(msg)
    env = e2.Envelope.FromString(msg.content.encrypted)
    fn(env)
    out.content.encrypted = env.SerializeToString()
    return out


def flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]


@pytest.mark.parametrize("suite", SUITES)
async def test_two_users_two_devices_direct_and_group(node_factory: NodeFactory, tmp_path: Path,
                                                      suite: str) -> None:
    # At-rest encryption off, so that only E2EE can keep plaintext off the disk.
    rn: RunningNode = await node_factory(crypto={"suite": suite},
                                         storage={"encryption": False})
    keys = tmp_path / "client-keys"
    a1, a2 = await device(rn, "alice", "a1", keys), await device(rn, "alice", "a2", keys)
    b1, b2 = await device(rn, "bob", "b1", keys), await device(rn, "bob", "b2", keys)
    assert a1.client.auth is not None and a1.client.auth.crypto_suite == suite
    assert not a1.escrow_enabled
    tag = uuid.uuid4().hex
    secrets: list[str] = []

    # ---- 1:1, fanned out to the peer's devices and the sender's other device
    conv = (await a1.client.direct("bob")).conversation_id
    text = f"direct-1-{tag}"
    secrets.append(text)
    await a1.send_text(conv, text)
    raw_b1 = await next_raw(b1.client)
    # Tampering is refused and changes nothing: the real message still opens afterwards.
    with pytest.raises(TamperedError):
        await b1.open(tampered(raw_b1, lambda env: setattr(env, "ciphertext",
                                                           flip(env.ciphertext))))
    with pytest.raises(TamperedError):
        await b1.open(tampered(raw_b1, lambda env: setattr(
            env.recipients[[r.device_id for r in env.recipients].index("b1")], "ciphertext",
            flip(env.recipients[[r.device_id for r in env.recipients].index("b1")].ciphertext,
                 5))))
    opened = await b1.open(raw_b1)
    assert opened is not None and opened.payload.text == text
    with pytest.raises(ReplayError):
        await b1.open(raw_b1)
    for other in (b2, a2):
        _, got = await next_opened(other)
        assert got.payload.text == text and got.sender_user == a1.device.user_id

    for i in range(3):  # back and forth: several ratchet steps in each direction
        reply = f"direct-reply-{i}-{tag}"
        secrets.append(reply)
        await b2.send_text(conv, reply)
        for other in (a1, a2, b1):
            _, got = await next_opened(other)
            assert got.payload.text == reply and got.sender_device == "b2"
        again = f"direct-again-{i}-{tag}"
        secrets.append(again)
        await a1.send_text(conv, again)
        for other in (b1, b2, a2):
            _, got = await next_opened(other)
            assert got.payload.text == again

    # ---- attachment: only ciphertext is uploaded
    data = f"attachment-{tag}".encode() * 50
    await a1.send_file(conv, data, "report.txt", "text/plain")
    _, got = await next_opened(b1)
    att = got.payload.attachment
    assert att.name == "report.txt" and await b1.download(att) == data
    for other in (b2, a2):
        await next_opened(other)

    # ---- group with carol: sender keys
    c1 = await device(rn, "carol", "c1", keys)
    group = (await a1.client.create_group("team", ["bob", "carol"])).conversation_id
    g1 = f"group-1-{tag}"
    secrets.append(g1)
    await a1.send_text(group, g1)
    for other in (a2, b1, b2, c1):
        _, got = await next_opened(other)
        assert got.payload.text == g1 and got.kind == e2.Envelope.GROUP
    g2 = f"group-2-{tag}"
    secrets.append(g2)
    await b1.send_text(group, g2)
    for other in (a1, a2, b2, c1):
        _, got = await next_opened(other)
        assert got.payload.text == g2

    # ---- carol removed: new epochs she never receives
    await a1.change_members(group, pb.MemberChange.REMOVE, ["carol"])
    g3 = f"group-3-{tag}"
    secrets.append(g3)
    await a1.send_text(group, g3)
    msg3, got = await next_opened(b1)
    assert got.payload.text == g3
    with pytest.raises(NoSenderKeyError):
        await c1.open(msg3)
    _, got = await next_opened(a2)
    assert got.payload.text == g3
    _, got = await next_opened(b2)
    assert got.payload.text == g3
    g4 = f"group-4-{tag}"
    secrets.append(g4)
    await b1.send_text(group, g4)  # b1 saw the SYSTEM entry: it rotates too
    msg4, got = await next_opened(a1)
    assert got.payload.text == g4
    with pytest.raises(NoSenderKeyError):
        await c1.open(msg4)
    # The redistribution itself was not addressed to carol's device either.
    history = await b2.client.sync_all(group)
    dists = [m for m in history if m.kind == pb.CHAT and m.sender_device == "b1"
             and e2.Envelope.FromString(m.content.encrypted).kind == e2.Envelope.PAIRWISE]
    with pytest.raises(NoSessionError):
        await c1.open(dists[-1])

    # ---- the server's disk holds none of it; a plaintext control message it does hold
    control = f"control-plaintext-{tag}"
    await a1.client.send_text(conv, control)
    disk = stored_bytes(Path(rn.cfg.home))
    assert control.encode() in disk
    for s in secrets:
        assert s.encode() not in disk, s
    assert f"attachment-{tag}".encode() not in disk


@pytest.mark.parametrize("suite", SUITES)
async def test_swapped_directory_entry_raises_identity_changed(node_factory: NodeFactory,
                                                               tmp_path: Path,
                                                               suite: str) -> None:
    rn: RunningNode = await node_factory(crypto={"suite": suite})
    keys = tmp_path / "client-keys"
    seen: list[IdentityChangedError] = []
    alice = await device(rn, "alice", "a1", keys)
    alice.on_identity_change = seen.append
    bob = await device(rn, "bob", "b1", keys)
    conv = (await alice.client.direct("bob")).conversation_id
    await alice.send_text(conv, "before the swap")
    _, got = await next_opened(bob)
    assert got.payload.text == "before the swap"
    # The server (or whoever controls it) puts another identity key into the directory.
    mallory = get_suite(suite).generate_signing_keypair()
    with sqlite3.connect(Path(rn.cfg.home) / "keydir.db") as db:
        n = db.execute("UPDATE e2ee_devices SET identity_key = ? WHERE user_id = ? AND "
                       "device_id = 'b1'", (mallory.public_key, bob.device.user_id)).rowcount
    assert n == 1
    with pytest.raises(IdentityChangedError) as err:
        await alice.send_text(conv, "after the swap")
    assert err.value.new_key == mallory.public_key
    assert err.value.old_key == bob.device.identity.public_key
    assert [e.device_id for e in seen] == ["b1"]
    # Still refused on the next try: the pin is not replaced by the new key.
    with pytest.raises(IdentityChangedError):
        await alice.send_text(conv, "still refused")


@pytest.mark.parametrize("suite", SUITES)
async def test_keys_publish_refuses_bad_keys_and_wrong_signatures(node_factory: NodeFactory,
                                                                  tmp_path: Path,
                                                                  suite: str) -> None:
    server: RunningNode = await node_factory(crypto={"suite": suite})
    alice = await server.user("alice", device_id="a1")
    e = await alice.e2ee(tmp_path / "keys")
    st = await e.status()
    assert st.one_time_prekeys_remaining == e.one_time_prekeys
    assert st.identity_key == e.device.identity.public_key
    cs = e.suite
    # A prekey signed by another identity than the device's is refused, nothing stored.
    other = cs.generate_signing_keypair()
    msg = e.device.publish(one_time=2)
    msg.one_time_prekeys[1].signature = cs.sign(other.private_key, b"x")
    with pytest.raises(TongxinError) as err:
        await alice.request(pb.KEYS_PUBLISH, msg, e2.KeyStatus)
    assert err.value.code == pb.INVALID_ARGUMENT and "signature" in err.value.message
    assert (await e.status()).one_time_prekeys_remaining == st.one_time_prekeys_remaining
    garbage = e2.PublishKeys(suite=cs.name, identity_key=b"\x30\x03garbage",
                             signed_prekey=e2.PreKey(key_id=1, public_key=b"x", signature=b"y"))
    with pytest.raises(TongxinError) as err:
        await alice.request(pb.KEYS_PUBLISH, garbage, e2.KeyStatus)
    assert err.value.code == pb.INVALID_ARGUMENT
    # A validly signed one-time prekey whose id is already stored: CONFLICT, nothing stored.
    existing = min(e.device.one_time_prekeys)
    dup = e2.PublishKeys(suite=cs.name, identity_key=e.device.identity.public_key)
    dup.one_time_prekeys.append(e.device._prekey(2, existing, e.device.one_time_prekeys[existing]))
    with pytest.raises(TongxinError) as err:
        await alice.request(pb.KEYS_PUBLISH, dup, e2.KeyStatus)
    assert err.value.code == pb.CONFLICT
    assert (await e.status()).one_time_prekeys_remaining == st.one_time_prekeys_remaining
    wrong_suite = e.device.publish()
    wrong_suite.suite = "international" if cs.name == "gm" else "gm"
    with pytest.raises(TongxinError) as err:
        await alice.request(pb.KEYS_PUBLISH, wrong_suite, e2.KeyStatus)
    assert err.value.code == pb.INVALID_ARGUMENT
    with pytest.raises(TongxinError) as err:
        await alice.request(pb.KEYS_FETCH, e2.FetchKeys(user_ids=[f"u{i}" for i in range(101)]),
                            e2.KeyBundles)
    assert err.value.code == pb.INVALID_ARGUMENT
    # A fetch consumes one one-time prekey of each device, and hands each out once.
    bob = await server.user("bob", device_id="b1")
    f1 = await (await bob.e2ee(tmp_path / "bob")).fetch([alice.user_id])
    f2 = await bob.request(pb.KEYS_FETCH, e2.FetchKeys(user_ids=[alice.user_id]), e2.KeyBundles)
    assert f1.devices[0].one_time_prekey.key_id != f2.devices[0].one_time_prekey.key_id
    assert (await e.status()).one_time_prekeys_remaining == st.one_time_prekeys_remaining - 2

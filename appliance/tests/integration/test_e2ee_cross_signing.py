"""Ghost devices (issue 16; docs/e2ee.md 9.1): a device the server makes for an existing
user is not signed by that user's key, so nobody encrypts to it and nobody accepts what it
sends; a real new device signs itself by opening the key backup; a user key the directory
swaps is refused until accepted; the server refuses a second user key and bad signatures."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]

from tongxin.client import Client, TongxinError, pb
from tongxin.client.e2ee import E2EEClient
from tongxin.crypto.suite import get_suite
from tongxin.e2ee import (
    DeviceNotSignedError,
    NoSessionError,
    TamperedError,
    UnsignedDeviceError,
    UserKeyChangedError,
)
from tongxin.e2ee.cross_signing import sign_device
from tongxin.e2ee.device_trust import ADDED, UNSIGNED, DeviceChange
from tongxin.proto import e2ee_pb2 as e2

pytestmark = pytest.mark.integration
PASS = "bob's long key backup passphrase"
SUITE = "international"


async def next_text(e: E2EEClient) -> str:
    while True:
        ev = await e.client.next_event(pb.DELIVER)
        opened = await e.open(ev.message)
        if opened is not None and opened.payload.WhichOneof("body") == "text":
            return str(opened.payload.text)


async def test_a_ghost_device_gets_nothing_and_is_not_believed(node_factory: NodeFactory,
                                                               tmp_path: Path) -> None:
    rn: RunningNode = await node_factory(crypto={"suite": SUITE})
    seen: list[DeviceChange] = []
    alice_c = await rn.user("alice", device_id="a1")
    alice = await alice_c.e2ee(tmp_path / "a1", on_device_change=seen.append)
    bob = await (await rn.user("bob", device_id="b1")).e2ee(tmp_path / "b1",
                                                            key_backup_passphrase=PASS)
    assert alice.signed and bob.signed
    conv = (await alice_c.direct("bob")).conversation_id
    await alice.send_text(conv, "hello bob")
    assert await next_text(bob) == "hello bob"
    assert [(c.device_id, c.change) for c in seen] == [("b1", ADDED)]

    # The server logs in as bob on a device of its own making: it publishes keys but
    # cannot sign them with bob's user key (it has neither the key nor the passphrase).
    ghost_c: Client = await rn.user("bob", device_id="ghost")
    ghost = await ghost_c.e2ee(tmp_path / "ghost")
    assert not ghost.signed and "passphrase" in ghost.cross.not_signed
    with pytest.raises(DeviceNotSignedError):
        await ghost.send_text(conv, "refused by its own SDK")
    seen.clear()
    ack = await alice.send_text(conv, "for bob's real devices only")
    assert [(c.device_id, c.change) for c in seen] == [("ghost", UNSIGNED)]
    assert await next_text(bob) == "for bob's real devices only"
    stored = [m for m in await ghost_c.sync_all(conv) if m.seq == ack.seq]
    with pytest.raises(NoSessionError):
        await ghost.open(stored[0])

    # A ghost client that ignores the rule and sends anyway is not believed.
    # It keeps sending: refused each time, and the directory is not asked again for
    # every message.
    ghost.cross.not_signed = ""
    fetches: list[list[str]] = []
    real_fetch = alice.fetch

    async def counted_fetch(user_ids: list[str], with_one_time: bool = True) -> e2.KeyBundles:
        fetches.append(list(user_ids))
        return await real_fetch(user_ids, with_one_time)

    alice.fetch = counted_fetch  # type: ignore[method-assign]
    for text in ("I am bob, trust me", "really"):
        await ghost.send_text(conv, text)
        while True:
            ev = await alice_c.next_event(pb.DELIVER)
            if ev.message.sender_device == "ghost":
                with pytest.raises(UnsignedDeviceError):
                    await alice.open(ev.message)
                break
    assert len(fetches) == 1, fetches
    alice.fetch = real_fetch  # type: ignore[method-assign]

    # Bob's real new device opens the key backup, signs itself and is used from then on.
    b2 = await (await rn.user("bob", device_id="b2")).e2ee(tmp_path / "b2",
                                                           key_backup_passphrase=PASS)
    assert b2.signed
    seen.clear()
    await alice.send_text(conv, "to b1 and b2")
    assert [(c.device_id, c.change) for c in seen] == [("b2", ADDED)]
    assert await next_text(b2) == "to b1 and b2"
    # The safety number covers the user keys: the same on both sides and on bob's new
    # device, so adding a device does not change it.
    alice_id, bob_id = alice.device.user_id, bob.device.user_id
    number = alice.safety_number(bob_id)
    assert len(number.split()) == 6
    assert number == bob.safety_number(alice_id) == b2.safety_number(alice_id)

    # The wrong passphrase opens nothing and signs nothing.
    with pytest.raises(TamperedError, match="wrong passphrase"):
        await (await rn.user("bob", device_id="b3")).e2ee(tmp_path / "b3",
                                                          key_backup_passphrase=PASS + "x")


async def test_a_swapped_user_key_is_refused_and_the_server_keeps_one_per_user(
        node_factory: NodeFactory, tmp_path: Path) -> None:
    rn: RunningNode = await node_factory(crypto={"suite": SUITE})
    suite = get_suite(SUITE)
    alice_c = await rn.user("alice", device_id="a1")
    alice = await alice_c.e2ee(tmp_path / "a1")
    bob = await (await rn.user("bob", device_id="b1")).e2ee(tmp_path / "b1")
    conv = (await alice_c.direct("bob")).conversation_id
    await alice.send_text(conv, "before")

    # The server's own rules: a second user key, a signature by another key, refused.
    forged = suite.generate_signing_keypair()
    sig = sign_device(suite, forged.private_key, bob.device.user_id, "b1",
                      bob.device.identity.public_key)
    with pytest.raises(TongxinError) as err:
        await bob.client.request(pb.KEYS_PUBLISH, e2.PublishKeys(
            user_key=forged.public_key, device_signature=sig), e2.KeyStatus)
    assert err.value.code == pb.CONFLICT
    with pytest.raises(TongxinError) as err:
        await bob.client.request(pb.KEYS_PUBLISH, e2.PublishKeys(device_signature=sig),
                                 e2.KeyStatus)
    assert err.value.code == pb.INVALID_ARGUMENT

    # Whoever controls the database swaps bob's user key (and signs a ghost with it).
    with sqlite3.connect(Path(rn.cfg.home) / "keydir.db") as db:
        db.execute("UPDATE e2ee_user_keys SET user_key = ? WHERE user_id = ?",
                   (forged.public_key, bob.device.user_id))
        db.execute("UPDATE e2ee_device_signatures SET signature = ? WHERE user_id = ?",
                   (sig, bob.device.user_id))
    with pytest.raises(UserKeyChangedError) as changed:
        await alice.send_text(conv, "after the swap")
    assert changed.value.new_key == forged.public_key
    with pytest.raises(UserKeyChangedError):
        await alice.send_text(conv, "still refused")

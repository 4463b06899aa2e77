"""A node that plays the malicious server with the escrow key (issue 16; docs/e2ee.md
section 10.1): it announces a key of its own, or one vouched for by a root of its own, or
an older escrow key; the SDK, which trusts only the organisation root installed on the
client, refuses to encrypt. A rotation the root signed is accepted and reported."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]

from tongxin.client import Client, pb
from tongxin.client.e2ee import E2EEClient
from tongxin.crypto.suite import KeyPair, get_suite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee import escrow, escrow_trust
from tongxin.e2ee.errors import EscrowUntrustedError
from tongxin.keydir.service import E2eePolicy
from tongxin.proto import e2ee_pb2 as e2

pytestmark = pytest.mark.integration
SUITE = get_suite("international")


@dataclass
class Announce:
    """What the node tells clients at login: an escrow key and a statement for it."""
    key: KeyPair
    statement: escrow_trust.EscrowStatement | None

    def apply(self, policy: E2eePolicy) -> None:
        policy.escrow_public_key = self.key.public_key
        policy.escrow_key_id = enc.escrow_key_id(SUITE, self.key.public_key)
        policy.escrow_statement = self.statement.to_proto() if self.statement else None


def sign(root: KeyPair, key: KeyPair, sequence: int) -> escrow_trust.EscrowStatement:
    return escrow_trust.sign(SUITE, root.private_key, root.public_key, key.public_key,
                             int(time.time() * 1000) - 1000, sequence)


async def test_sdk_refuses_a_substituted_escrow_key_and_reports_a_signed_rotation(
        node_factory: NodeFactory, tmp_path: Path) -> None:
    root, rogue_root = SUITE.generate_signing_keypair(), SUITE.generate_signing_keypair()
    k1, k2, foreign = (SUITE.generate_kem_keypair() for _ in range(3))
    (tmp_path / "escrow1.der").write_bytes(k1.public_key)
    (tmp_path / "statement1.json").write_text(sign(root, k1, 1).to_json())
    root_file = tmp_path / "org-root.pem"
    root_file.write_bytes(escrow_trust.pem(root.public_key, "PUBLIC KEY"))
    rn: RunningNode = await node_factory(crypto={"suite": SUITE.name}, e2ee={
        "required": True, "escrow_public_key_file": str(tmp_path / "escrow1.der"),
        "escrow_statement_file": str(tmp_path / "statement1.json"),
        "org_root_public_key_file": str(root_file)})
    policy = rn.node.keydir.policy
    changes: list[escrow_trust.EscrowKeyChange] = []

    async def alice() -> tuple[Client, E2EEClient]:
        """A fresh login of alice's one device: the node's current announcement."""
        c = await rn.user("alice", device_id="a1")
        e = await c.e2ee(tmp_path / "alice", trusted_org_root=root_file,
                         on_escrow_key_change=changes.append)
        return c, e

    bob_c = await rn.user("bob", device_id="b1")
    bob = await bob_c.e2ee(tmp_path / "bob", trusted_org_root=root_file)
    alice_c, a = await alice()
    conv = (await alice_c.direct("bob")).conversation_id
    assert a.escrow_key_id == enc.escrow_key_id(SUITE, k1.public_key)
    ack = await a.send_text(conv, "under the organisation's escrow key")
    await alice_c.close()

    # The malicious node: its own key bare, its own key with the real statement, its own
    # key vouched for by a root of its own.
    for bad in (Announce(foreign, None), Announce(foreign, sign(root, k1, 1)),
                Announce(foreign, sign(rogue_root, foreign, 5))):
        bad.apply(policy)
        c, e = await alice()
        assert e.escrow_enabled and e.escrow_key_id == ""
        with pytest.raises(EscrowUntrustedError):
            await e.send_text(conv, "must not be wrapped to the node's key")
        conv_now = await c.conversation(conv)
        assert conv_now.last_seq == ack.seq  # nothing reached the node
        await c.close()
    assert changes == []

    # The organisation rotates: the root signs k2 with the next sequence.
    Announce(k2, sign(root, k2, 2)).apply(policy)
    with pytest.warns(escrow_trust.EscrowKeyChangedWarning, match="escrow key changed"):
        alice_c, a = await alice()
    assert [(c.old.key_id, c.new.key_id) for c in changes] == [
        (enc.escrow_key_id(SUITE, k1.public_key), enc.escrow_key_id(SUITE, k2.public_key))]
    await a.send_text(conv, "under the rotated escrow key")
    # Bob opens it, and so does the new escrow key (the auditor's), not the old one.
    got: list[pb.Message] = []
    while len(got) < 2:
        ev = await bob_c.next_event(pb.DELIVER)
        if ev.message.kind == pb.CHAT:
            got.append(ev.message)
    opened = await bob.open(got[1])
    assert opened is not None and opened.payload.text == "under the rotated escrow key"
    env = e2.Envelope.FromString(got[1].content.encrypted)
    assert env.escrow.key_id == enc.escrow_key_id(SUITE, k2.public_key)
    payload = escrow.open_envelope(SUITE, k2.private_key, env.escrow.key_id, conv,
                                   alice_c.user_id, got[1].content.encrypted)
    assert payload.text == "under the rotated escrow key"
    await alice_c.close()

    # Back to the older key, with its properly signed (older) statement: refused.
    Announce(k1, sign(root, k1, 1)).apply(policy)
    c, e = await alice()
    with pytest.raises(EscrowUntrustedError, match="older"):
        await e.send_text(conv, "rolled back")
    assert len(changes) == 1

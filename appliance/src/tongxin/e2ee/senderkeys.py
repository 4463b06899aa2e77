"""Group sender keys (docs/e2ee.md section 7): one hash chain and one signing key per
sending device, group conversation and epoch."""

from __future__ import annotations

import base64
import copy
import os
from dataclasses import dataclass, field
from typing import Any

from tongxin.crypto.suite import CryptoSuite, KeyPair
from tongxin.e2ee import encoding as enc
from tongxin.e2ee.errors import ReplayError, TooFarAheadError
from tongxin.e2ee.ratchet import MAX_SKIP, MAX_STORED_SKIPPED, kdf_ck
from tongxin.proto import e2ee_pb2 as e2


def group_content_key(suite: CryptoSuite, message_key: bytes) -> bytes:
    return suite.hkdf(message_key, suite.aead_key_size, info=enc.L_GROUP_KEY)


@dataclass
class OwnSenderKey:
    conversation_id: str
    epoch: int
    chain_key: bytes
    signing: KeyPair
    iteration: int = 0
    members: list[str] = field(default_factory=list)
    """The members (user ids, sorted) this epoch was distributed to."""

    @classmethod
    def create(cls, suite: CryptoSuite, conversation_id: str, epoch: int,
               members: list[str]) -> OwnSenderKey:
        return cls(conversation_id, epoch, os.urandom(enc.CHAIN_KEY_SIZE),
                   suite.generate_signing_keypair(), members=sorted(set(members)))

    def distribution(self) -> e2.SenderKeyDistribution:
        return e2.SenderKeyDistribution(
            conversation_id=self.conversation_id, epoch=self.epoch, iteration=self.iteration,
            chain_key=self.chain_key, signing_key=self.signing.public_key)

    def next_key(self, suite: CryptoSuite) -> tuple[int, bytes]:
        """(iteration, content key) for the next message; the chain moves on."""
        mk, self.chain_key = kdf_ck(suite, self.chain_key)
        iteration = self.iteration
        self.iteration += 1
        return iteration, group_content_key(suite, mk)

    def to_dict(self) -> dict[str, Any]:
        return {"conversation_id": self.conversation_id, "epoch": self.epoch,
                "chain_key": base64.b64encode(self.chain_key).decode(),
                "signing": [base64.b64encode(self.signing.private_key).decode(),
                            base64.b64encode(self.signing.public_key).decode()],
                "iteration": self.iteration, "members": self.members}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OwnSenderKey:
        return cls(d["conversation_id"], int(d["epoch"]), base64.b64decode(d["chain_key"]),
                   KeyPair(base64.b64decode(d["signing"][0]), base64.b64decode(d["signing"][1])),
                   int(d["iteration"]), list(d.get("members", [])))


@dataclass
class PeerSenderKey:
    chain_key: bytes
    iteration: int
    signing_key: bytes
    skipped: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def from_distribution(cls, dist: e2.SenderKeyDistribution) -> PeerSenderKey:
        return cls(bytes(dist.chain_key), dist.iteration, bytes(dist.signing_key))

    def content_key(self, suite: CryptoSuite, iteration: int) -> tuple[bytes, PeerSenderKey]:
        """The content key of ``iteration`` and the state to keep once the message opened."""
        work = copy.deepcopy(self)
        stored = work.skipped.pop(iteration, None)
        if stored is not None:
            return group_content_key(suite, stored), work
        if iteration < work.iteration:
            raise ReplayError(f"group message iteration {iteration} was already used")
        if iteration - work.iteration > MAX_SKIP:
            raise TooFarAheadError(
                f"group message would skip {iteration - work.iteration} keys; "
                f"the bound is {MAX_SKIP}")
        while work.iteration < iteration:
            mk, work.chain_key = kdf_ck(suite, work.chain_key)
            work.skipped[work.iteration] = mk
            work.iteration += 1
        while len(work.skipped) > MAX_STORED_SKIPPED:
            del work.skipped[min(work.skipped)]
        mk, work.chain_key = kdf_ck(suite, work.chain_key)
        work.iteration += 1
        return group_content_key(suite, mk), work

    def to_dict(self) -> dict[str, Any]:
        return {"chain_key": base64.b64encode(self.chain_key).decode(),
                "iteration": self.iteration,
                "signing_key": base64.b64encode(self.signing_key).decode(),
                "skipped": {str(k): base64.b64encode(v).decode()
                            for k, v in self.skipped.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PeerSenderKey:
        return cls(base64.b64decode(d["chain_key"]), int(d["iteration"]),
                   base64.b64decode(d["signing_key"]),
                   {int(k): base64.b64decode(v) for k, v in d["skipped"].items()})

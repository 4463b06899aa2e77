"""Pairwise sessions: X3DH-shaped setup with the suite KEM, then a KEM ratchet
(docs/e2ee.md sections 4 and 5).

State is plain data (:meth:`Session.to_dict`) so a client can persist it. Every
receive works on a copy that replaces the state only after the AEAD opened, so a
tampered, replayed or too-far-ahead message leaves the session as it was.
"""

from __future__ import annotations

import base64
import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite, KeyPair
from tongxin.e2ee import encoding as enc
from tongxin.e2ee.errors import (
    MalformedError,
    NoSessionError,
    ReplayError,
    TamperedError,
    TooFarAheadError,
    WrongSignatureError,
)
from tongxin.proto import e2ee_pb2 as e2

MAX_SKIP = 1000
"""Most message keys one received message may make a session skip."""
MAX_STORED_SKIPPED = 2000
"""Most skipped message keys a session stores; the oldest go first."""
MAX_OLD_CHAINS = 32
"""Finished receiving chains remembered to tell a replay from a forgery."""

T = TypeVar("T")


def kdf_rk(suite: CryptoSuite, root_key: bytes, shared_secret: bytes) -> tuple[bytes, bytes]:
    """Root KDF: (new root key, new chain key)."""
    okm = suite.hkdf(shared_secret, 64, salt=root_key, info=enc.L_RATCHET)
    return okm[:32], okm[32:]


def kdf_ck(suite: CryptoSuite, chain_key: bytes) -> tuple[bytes, bytes]:
    """Chain KDF: (message key, next chain key)."""
    return suite.hmac(chain_key, b"\x01"), suite.hmac(chain_key, b"\x02")


def message_key_material(suite: CryptoSuite, message_key: bytes) -> tuple[bytes, bytes]:
    """AEAD key and nonce from a pairwise message key."""
    k = suite.aead_key_size
    okm = suite.hkdf(message_key, k + enc.NONCE_SIZE, info=enc.L_MESSAGE_KEY)
    return okm[:k], okm[k:]


def session_keys(suite: CryptoSuite, ss_signed: bytes, ss_one_time: bytes,
                 session_id: bytes) -> tuple[bytes, bytes]:
    """(root key, chain-0 key) from the setup secrets."""
    okm = suite.hkdf(ss_signed + ss_one_time, 64, salt=session_id, info=enc.L_SESSION_KEYS)
    return okm[:32], okm[32:]


def _b(v: bytes | None) -> str | None:
    return None if v is None else base64.b64encode(v).decode()


def _ub(v: str | None) -> bytes | None:
    return None if v is None else base64.b64decode(v)


@dataclass
class Ratchet:
    root_key: bytes
    send_chain: bytes | None = None
    send_n: int = 0
    send_kem_ct: bytes = b""
    prev_n: int = 0
    own_ratchet: KeyPair | None = None
    recv_chain: bytes | None = None
    recv_n: int = 0
    peer_ratchet: bytes | None = None
    step_needed: bool = False
    # (peer ratchet key, counter) -> message key, oldest first.
    skipped: OrderedDict[tuple[bytes, int], bytes] = field(default_factory=OrderedDict)
    # Peer ratchet keys of finished receiving chains, newest last: a message on one of them
    # whose key is not among the skipped ones was already opened (or expired).
    old_peer_ratchets: list[bytes] = field(default_factory=list)

    def next_send(self, suite: CryptoSuite) -> tuple[e2.RatchetHeader, bytes]:
        """Header and message key for the next message; steps the ratchet when needed."""
        if self.send_chain is None or self.step_needed:
            if self.peer_ratchet is None:
                raise MalformedError("session has no peer ratchet key to step to")
            pair = suite.generate_kem_keypair()
            encap = suite.kem_encapsulate(self.peer_ratchet)
            self.root_key, self.send_chain = kdf_rk(suite, self.root_key, encap.shared_secret)
            self.prev_n, self.send_n = self.send_n, 0
            self.own_ratchet, self.send_kem_ct = pair, encap.encapsulated_key
            self.step_needed = False
        assert self.own_ratchet is not None
        mk, self.send_chain = kdf_ck(suite, self.send_chain)
        header = e2.RatchetHeader(ratchet_key=self.own_ratchet.public_key,
                                  kem_ciphertext=self.send_kem_ct,
                                  previous_chain_length=self.prev_n, counter=self.send_n)
        self.send_n += 1
        return header, mk

    def _skip_until(self, suite: CryptoSuite, until: int) -> None:
        if self.recv_chain is None or self.peer_ratchet is None:
            return
        if until - self.recv_n > MAX_SKIP:
            raise TooFarAheadError(
                f"message would skip {until - self.recv_n} keys; the bound is {MAX_SKIP}")
        while self.recv_n < until:
            mk, self.recv_chain = kdf_ck(suite, self.recv_chain)
            self.skipped[(self.peer_ratchet, self.recv_n)] = mk
            self.recv_n += 1
        while len(self.skipped) > MAX_STORED_SKIPPED:
            self.skipped.popitem(last=False)

    def receive(self, suite: CryptoSuite, header: e2.RatchetHeader,
                open_with: Callable[[bytes], T]) -> T:
        """Derive the key for ``header`` on a copy, ``open_with(message_key)``, then commit."""
        work = copy.deepcopy(self)
        result = work._receive(suite, header, open_with)
        self.__dict__.update(work.__dict__)
        return result

    def _receive(self, suite: CryptoSuite, header: e2.RatchetHeader,
                 open_with: Callable[[bytes], T]) -> T:
        key = (header.ratchet_key, header.counter)
        stored = self.skipped.pop(key, None)
        if stored is not None:
            return open_with(stored)
        if header.ratchet_key in self.old_peer_ratchets:
            raise ReplayError("message key already used or expired (replayed, duplicated or "
                              "too old)")
        if header.ratchet_key != self.peer_ratchet:
            if self.own_ratchet is None:
                raise MalformedError("a new ratchet chain arrived before this side sent a key")
            if not header.kem_ciphertext:
                raise MalformedError("a new ratchet chain needs a KEM ciphertext")
            self._skip_until(suite, header.previous_chain_length)
            try:
                ss = suite.kem_decapsulate(self.own_ratchet.private_key, header.kem_ciphertext)
            except (CryptoError, ValueError) as exc:
                raise TamperedError("ratchet KEM ciphertext does not open") from exc
            self.root_key, self.recv_chain = kdf_rk(suite, self.root_key, ss)
            if self.peer_ratchet is not None:
                self.old_peer_ratchets = [*self.old_peer_ratchets, self.peer_ratchet][
                    -MAX_OLD_CHAINS:]
            self.recv_n, self.peer_ratchet = 0, header.ratchet_key
            self.step_needed = True
        if self.recv_chain is None:
            raise MalformedError("session has no receiving chain")
        if header.counter < self.recv_n:
            raise ReplayError("message key already used (replayed or duplicated message)")
        self._skip_until(suite, header.counter)
        mk, self.recv_chain = kdf_ck(suite, self.recv_chain)
        self.recv_n += 1
        return open_with(mk)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root_key": _b(self.root_key), "send_chain": _b(self.send_chain),
            "send_n": self.send_n, "send_kem_ct": _b(self.send_kem_ct), "prev_n": self.prev_n,
            "own_ratchet": None if self.own_ratchet is None else
            [_b(self.own_ratchet.private_key), _b(self.own_ratchet.public_key)],
            "recv_chain": _b(self.recv_chain), "recv_n": self.recv_n,
            "peer_ratchet": _b(self.peer_ratchet), "step_needed": self.step_needed,
            "skipped": [[_b(k), n, _b(v)] for (k, n), v in self.skipped.items()],
            "old_peer_ratchets": [_b(k) for k in self.old_peer_ratchets],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ratchet:
        own = d["own_ratchet"]
        root = _ub(d["root_key"])
        assert root is not None
        return cls(
            root_key=root, send_chain=_ub(d["send_chain"]), send_n=int(d["send_n"]),
            send_kem_ct=_ub(d["send_kem_ct"]) or b"", prev_n=int(d["prev_n"]),
            own_ratchet=None if own is None else KeyPair(base64.b64decode(own[0]),
                                                         base64.b64decode(own[1])),
            recv_chain=_ub(d["recv_chain"]), recv_n=int(d["recv_n"]),
            peer_ratchet=_ub(d["peer_ratchet"]), step_needed=bool(d["step_needed"]),
            skipped=OrderedDict(((base64.b64decode(k), int(n)), base64.b64decode(v))
                                for k, n, v in d["skipped"]),
            old_peer_ratchets=[base64.b64decode(k) for k in d.get("old_peer_ratchets", [])])


@dataclass
class Session:
    session_id: bytes
    peer_user: str
    peer_device: str
    peer_identity: bytes
    ratchet: Ratchet
    init: bytes = b""
    """Serialised SessionInit, sent until the first message arrives on this session."""

    def to_dict(self) -> dict[str, Any]:
        return {"session_id": _b(self.session_id), "peer_user": self.peer_user,
                "peer_device": self.peer_device, "peer_identity": _b(self.peer_identity),
                "ratchet": self.ratchet.to_dict(), "init": _b(self.init)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Session:
        return cls(session_id=base64.b64decode(d["session_id"]), peer_user=d["peer_user"],
                   peer_device=d["peer_device"],
                   peer_identity=base64.b64decode(d["peer_identity"]),
                   ratchet=Ratchet.from_dict(d["ratchet"]), init=base64.b64decode(d["init"]))


def verify_prekey(suite: CryptoSuite, user_id: str, device_id: str, identity_key: bytes,
                  kind: int, prekey: e2.PreKey) -> None:
    """Raise :class:`WrongSignatureError` unless ``prekey`` is signed by ``identity_key``."""
    statement = enc.prekey_statement(suite.name, user_id, device_id, kind, prekey.key_id,
                                     prekey.public_key)
    try:
        suite.verify(identity_key, statement, prekey.signature)
    except (CryptoError, ValueError) as exc:
        raise WrongSignatureError(
            f"prekey {prekey.key_id} of {user_id}/{device_id} is not signed by its "
            "identity key") from exc


def initiate(suite: CryptoSuite, own_user: str, own_device: str, own_identity: KeyPair,
             bundle: e2.DeviceBundle) -> Session:
    """Start a session to ``bundle``'s device (the bundle's identity is already pinned)."""
    verify_prekey(suite, bundle.user_id, bundle.device_id, bundle.identity_key,
                  enc.PREKEY_SIGNED, bundle.signed_prekey)
    has_opk = bundle.HasField("one_time_prekey") and bundle.one_time_prekey.key_id != 0
    if has_opk:
        verify_prekey(suite, bundle.user_id, bundle.device_id, bundle.identity_key,
                      enc.PREKEY_ONE_TIME, bundle.one_time_prekey)
    try:
        spk = suite.kem_encapsulate(bundle.signed_prekey.public_key)
        opk = suite.kem_encapsulate(bundle.one_time_prekey.public_key) if has_opk else None
    except (CryptoError, ValueError) as exc:
        raise MalformedError(f"prekey of {bundle.user_id}/{bundle.device_id} is not a "
                             "KEM key of this suite") from exc
    ratchet_pair = suite.generate_kem_keypair()
    opk_id = bundle.one_time_prekey.key_id if opk else 0
    opk_ct = opk.encapsulated_key if opk else b""
    transcript = enc.session_transcript(
        suite.name, own_user, own_device, own_identity.public_key, bundle.user_id,
        bundle.device_id, bundle.identity_key, bundle.signed_prekey.key_id,
        spk.encapsulated_key, opk_id, opk_ct, ratchet_pair.public_key)
    session_id = suite.hash(transcript)
    root, chain0 = session_keys(suite, spk.shared_secret, opk.shared_secret if opk else b"",
                                session_id)
    init = e2.SessionInit(
        initiator_identity_key=own_identity.public_key,
        signed_prekey_id=bundle.signed_prekey.key_id, one_time_prekey_id=opk_id,
        signed_prekey_ciphertext=spk.encapsulated_key, one_time_prekey_ciphertext=opk_ct,
        initiator_ratchet_key=ratchet_pair.public_key,
        signature=suite.sign(own_identity.private_key, transcript))
    ratchet = Ratchet(root_key=root, send_chain=chain0, own_ratchet=ratchet_pair)
    return Session(session_id, bundle.user_id, bundle.device_id, bundle.identity_key, ratchet,
                   init.SerializeToString())


def respond(suite: CryptoSuite, own_user: str, own_device: str, own_identity: bytes,
            peer_user: str, peer_device: str, init: e2.SessionInit, session_id: bytes,
            signed_prekey: Callable[[int], KeyPair | None],
            one_time_prekey: Callable[[int], KeyPair | None]) -> Session:
    """Accept a SessionInit addressed to this device. The caller deletes the one-time
    prekey once the first message on the session has opened."""
    transcript = enc.session_transcript(
        suite.name, peer_user, peer_device, init.initiator_identity_key, own_user, own_device,
        own_identity, init.signed_prekey_id, init.signed_prekey_ciphertext,
        init.one_time_prekey_id, init.one_time_prekey_ciphertext, init.initiator_ratchet_key)
    try:
        suite.verify(init.initiator_identity_key, transcript, init.signature)
    except (CryptoError, ValueError) as exc:
        raise WrongSignatureError(
            f"session setup from {peer_user}/{peer_device} is not signed by its identity "
            "key") from exc
    if suite.hash(transcript) != session_id:
        raise TamperedError("session id does not match the session setup")
    spk = signed_prekey(init.signed_prekey_id)
    if spk is None:
        raise NoSessionError(
            f"signed prekey {init.signed_prekey_id} is unknown or retired on this device")
    opk: KeyPair | None = None
    if init.one_time_prekey_id:
        opk = one_time_prekey(init.one_time_prekey_id)
        if opk is None:
            raise ReplayError(f"one-time prekey {init.one_time_prekey_id} was already used")
    elif init.one_time_prekey_ciphertext:
        raise MalformedError("one-time prekey ciphertext without a key id")
    try:
        ss1 = suite.kem_decapsulate(spk.private_key, init.signed_prekey_ciphertext)
        ss2 = (suite.kem_decapsulate(opk.private_key, init.one_time_prekey_ciphertext)
               if opk else b"")
    except (CryptoError, ValueError) as exc:
        raise TamperedError("session setup KEM ciphertext does not open") from exc
    root, chain0 = session_keys(suite, ss1, ss2, session_id)
    ratchet = Ratchet(root_key=root, recv_chain=chain0, peer_ratchet=init.initiator_ratchet_key)
    return Session(session_id, peer_user, peer_device, init.initiator_identity_key, ratchet)


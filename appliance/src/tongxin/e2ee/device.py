"""One device's E2EE state and the envelope seal/open operations (docs/e2ee.md).

Pure library: no network. :class:`Device` holds the device's own keys, its pins, its
pairwise sessions and its group sender keys; :meth:`Device.to_dict` /
:meth:`Device.from_dict` persist all of it (the SDK writes it to a 0600 file).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite, KeyPair, get_suite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee import escrow as escrow_mod
from tongxin.e2ee.errors import (
    E2EEError,
    IdentityChangedError,
    MalformedError,
    NoSenderKeyError,
    NoSessionError,
    TamperedError,
    WrongSignatureError,
)
from tongxin.e2ee.escrow_trust import EscrowPin
from tongxin.e2ee.identity import IdentityStore
from tongxin.e2ee.ratchet import Session, initiate, message_key_material, respond
from tongxin.e2ee.senderkeys import OwnSenderKey, PeerSenderKey
from tongxin.proto import e2ee_pb2 as e2

MAX_OLD_SESSIONS = 4
"""Sessions kept per peer device besides the active one, for late messages."""
SIGNED_PREKEYS_KEPT = 3

PAIRWISE = e2.Envelope.PAIRWISE
GROUP = e2.Envelope.GROUP


def _b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def _pair(v: list[str]) -> KeyPair:
    return KeyPair(base64.b64decode(v[0]), base64.b64decode(v[1]))


def _pair_out(p: KeyPair) -> list[str]:
    return [_b64(p.private_key), _b64(p.public_key)]


@dataclass(frozen=True)
class Escrow:
    public_key: bytes
    key_id: str


@dataclass(frozen=True)
class Opened:
    """A message that opened: its payload and who sent it."""
    payload: e2.Payload
    sender_user: str
    sender_device: str
    kind: int


class Device:
    def __init__(self, suite: CryptoSuite, user_id: str, device_id: str,
                 identity: KeyPair) -> None:
        self.suite = suite
        self.user_id = user_id
        self.device_id = device_id
        self.identity = identity
        self.signed_prekeys: dict[int, KeyPair] = {}
        self.one_time_prekeys: dict[int, KeyPair] = {}
        self.next_prekey_id = 1
        self.signed_prekey_created_ms = 0
        self.pins = IdentityStore()
        self.sessions: dict[tuple[str, str], list[Session]] = {}
        self.own_sender_keys: dict[str, OwnSenderKey] = {}
        self.peer_sender_keys: dict[tuple[str, str, str, int], PeerSenderKey] = {}
        self.rotate_pending: set[str] = set()
        self.escrow: Escrow | None = None
        self.escrow_pin: EscrowPin | None = None
        """The newest organisation-root statement of an escrow key seen (section 10.1)."""
        self.pins.check(user_id, device_id, identity.public_key)

    @classmethod
    def create(cls, suite: CryptoSuite, user_id: str, device_id: str) -> Device:
        return cls(suite, user_id, device_id, suite.generate_signing_keypair())

    # ---- own keys -------------------------------------------------------------

    def _prekey(self, kind: int, key_id: int, pair: KeyPair) -> e2.PreKey:
        statement = enc.prekey_statement(self.suite.name, self.user_id, self.device_id, kind,
                                         key_id, pair.public_key)
        return e2.PreKey(key_id=key_id, public_key=pair.public_key,
                         signature=self.suite.sign(self.identity.private_key, statement))

    def _new_id(self) -> int:
        key_id = self.next_prekey_id
        self.next_prekey_id += 1
        return key_id

    @property
    def current_signed_prekey_id(self) -> int:
        return max(self.signed_prekeys, default=0)

    def publish(self, one_time: int = 0, rotate_signed: bool = False) -> e2.PublishKeys:
        """A KEYS_PUBLISH payload: identity, the signed prekey (a new one when asked or when
        there is none) and ``one_time`` new one-time prekeys."""
        if rotate_signed or not self.signed_prekeys:
            self.signed_prekeys[self._new_id()] = self.suite.generate_kem_keypair()
            self.signed_prekey_created_ms = int(time.time() * 1000)
            for old in sorted(self.signed_prekeys)[:-SIGNED_PREKEYS_KEPT]:
                del self.signed_prekeys[old]
        spk_id = self.current_signed_prekey_id
        msg = e2.PublishKeys(
            suite=self.suite.name, identity_key=self.identity.public_key,
            signed_prekey=self._prekey(enc.PREKEY_SIGNED, spk_id, self.signed_prekeys[spk_id]))
        for _ in range(one_time):
            key_id = self._new_id()
            pair = self.suite.generate_kem_keypair()
            self.one_time_prekeys[key_id] = pair
            msg.one_time_prekeys.append(self._prekey(enc.PREKEY_ONE_TIME, key_id, pair))
        return msg

    def fingerprint_keys(self) -> list[bytes]:
        return self.pins.user_keys(self.user_id)

    def safety_number(self, peer_user: str) -> str:
        return self.pins.safety_number(self.suite, self.user_id, self.fingerprint_keys(),
                                       peer_user)

    # ---- sessions ---------------------------------------------------------------

    def active_session(self, user_id: str, device_id: str) -> Session | None:
        sessions = self.sessions.get((user_id, device_id))
        return sessions[0] if sessions else None

    def check_identity(self, user_id: str, device_id: str, identity_key: bytes) -> None:
        self.pins.check(user_id, device_id, identity_key)

    def add_bundle(self, bundle: e2.DeviceBundle) -> bool:
        """Check the bundle's identity against the pins and start a session to it unless
        one exists for that identity. True when a session was started."""
        self.check_identity(bundle.user_id, bundle.device_id, bundle.identity_key)
        current = self.active_session(bundle.user_id, bundle.device_id)
        if current is not None and current.peer_identity == bundle.identity_key:
            return False
        session = initiate(self.suite, self.user_id, self.device_id, self.identity, bundle)
        self._install(session)
        return True

    def accept_identity(self, user_id: str, device_id: str, identity_key: bytes) -> None:
        """The user accepted a changed key: pin it and drop sessions bound to the old one."""
        self.pins.accept(user_id, device_id, identity_key)
        kept = [s for s in self.sessions.get((user_id, device_id), [])
                if s.peer_identity == identity_key]
        self.sessions[(user_id, device_id)] = kept

    def _install(self, session: Session) -> None:
        key = (session.peer_user, session.peer_device)
        sessions = [s for s in self.sessions.get(key, []) if s.session_id != session.session_id]
        self.sessions[key] = [session, *sessions][:MAX_OLD_SESSIONS + 1]

    # ---- sealing ------------------------------------------------------------------

    def _body(self, conversation_id: str, kind: int, content_key: bytes,
              payload: e2.Payload) -> e2.Envelope:
        aad = enc.body_aad(self.suite.name, conversation_id, self.user_id, self.device_id, kind)
        nonce = os.urandom(enc.NONCE_SIZE)
        env = e2.Envelope(version=enc.VERSION, suite=self.suite.name,
                          sender_device=self.device_id, kind=kind, nonce=nonce,
                          ciphertext=self.suite.aead_encrypt(content_key, nonce,
                                                             payload.SerializeToString(), aad))
        if self.escrow is not None:
            env.escrow.CopyFrom(escrow_mod.wrap(self.suite, self.escrow.public_key,
                                                self.escrow.key_id, content_key, aad))
        return env

    def seal(self, conversation_id: str, payload: e2.Payload,
             recipients: list[tuple[str, str]]) -> e2.Envelope:
        """A PAIRWISE envelope wrapped to every ``(user, device)`` (which must have an
        active session; this device itself is skipped)."""
        targets = [r for r in dict.fromkeys(recipients) if r != (self.user_id, self.device_id)]
        for user, device in targets:
            session = self.active_session(user, device)
            if session is None:
                raise NoSessionError(f"no session with {user}/{device}; fetch its keys first")
            pinned = self.pins.pinned(user, device)
            if pinned is not None and pinned != session.peer_identity:
                raise IdentityChangedError(user, device, pinned, session.peer_identity)
        content_key = os.urandom(self.suite.aead_key_size)
        env = self._body(conversation_id, PAIRWISE, content_key, payload)
        digest = enc.body_digest(self.suite, env.nonce, env.ciphertext)
        key_payload = e2.KeyPayload(content_key=content_key,
                                    body_digest=digest).SerializeToString()
        for user, device in targets:
            session = self.active_session(user, device)
            assert session is not None
            header, mk = session.ratchet.next_send(self.suite)
            key, nonce = message_key_material(self.suite, mk)
            aad = enc.recipient_aad(
                self.suite.name, conversation_id, self.user_id, self.device_id, user, device,
                session.session_id, header.ratchet_key, header.kem_ciphertext,
                header.previous_chain_length, header.counter)
            rk = env.recipients.add(user_id=user, device_id=device,
                                    session_id=session.session_id,
                                    ciphertext=self.suite.aead_encrypt(key, nonce, key_payload,
                                                                       aad))
            rk.header.CopyFrom(header)
            if session.init:
                rk.init.CopyFrom(e2.SessionInit.FromString(session.init))
        return env

    def membership_changed(self, conversation_id: str, removed_users: list[str] = ()) -> None:  # type: ignore[assignment]
        """Start a new sender-key epoch before the next group send; forget the sender keys
        of ``removed_users``."""
        self.rotate_pending.add(conversation_id)
        gone = set(removed_users)
        for key in [k for k in self.peer_sender_keys if k[0] == conversation_id and k[1] in gone]:
            del self.peer_sender_keys[key]

    def sender_key_distribution(self, conversation_id: str,
                                members: list[str] | None = None) -> e2.Payload | None:
        """The distribution to send (PAIRWISE, to every member device) before the next group
        message, or None when the current sender key was already distributed.

        ``members`` is the conversation's current member list: when it differs from the
        list the current epoch went to, a new epoch starts even if this device has not yet
        processed the SYSTEM entry of the change (a send racing a removal)."""
        own = self.own_sender_keys.get(conversation_id)
        changed = (own is not None and members is not None
                   and own.members != sorted(set(members)))
        if own is not None and conversation_id not in self.rotate_pending and not changed:
            return None
        epoch = own.epoch + 1 if own is not None else 1
        own = OwnSenderKey.create(self.suite, conversation_id, epoch, members or [])
        self.own_sender_keys[conversation_id] = own
        self.rotate_pending.discard(conversation_id)
        return e2.Payload(sender_key=own.distribution())

    def seal_group(self, conversation_id: str, payload: e2.Payload) -> e2.Envelope:
        own = self.own_sender_keys.get(conversation_id)
        if own is None or conversation_id in self.rotate_pending:
            raise NoSenderKeyError("distribute a sender key first (sender_key_distribution)")
        iteration, content_key = own.next_key(self.suite)
        env = self._body(conversation_id, GROUP, content_key, payload)
        statement = enc.group_statement(self.suite.name, conversation_id, self.user_id,
                                        self.device_id, own.epoch, iteration, env.nonce,
                                        env.ciphertext)
        env.sender_key.CopyFrom(e2.SenderKeyHeader(
            epoch=own.epoch, iteration=iteration,
            signature=self.suite.sign(own.signing.private_key, statement)))
        return env

    # ---- opening ------------------------------------------------------------------

    def open(self, conversation_id: str, sender_user: str, sender_device: str,
             encrypted: bytes) -> Opened:
        """Open ``Content.encrypted`` of a message from ``sender_user``/``sender_device``
        (the Message's fields). Raises an :class:`E2EEError`; the state changes only when
        the message opened."""
        try:
            env = e2.Envelope.FromString(encrypted)
        except DecodeError as exc:
            raise MalformedError("content is not an E2EE envelope") from exc
        if env.version != enc.VERSION:
            raise MalformedError(f"envelope version {env.version} is not supported")
        if env.suite != self.suite.name:
            raise MalformedError(f"envelope suite {env.suite!r} is not {self.suite.name!r}")
        if env.sender_device != sender_device:
            raise TamperedError("envelope sender device does not match the message")
        if len(env.nonce) != enc.NONCE_SIZE:
            raise MalformedError("envelope nonce must be 12 bytes")
        if env.kind == PAIRWISE:
            payload = self._open_pairwise(conversation_id, sender_user, env)
            if payload.WhichOneof("body") == "sender_key":
                self._install_sender_key(conversation_id, sender_user, sender_device,
                                         payload.sender_key)
        elif env.kind == GROUP:
            payload = self._open_group(conversation_id, sender_user, env)
        else:
            raise MalformedError(f"unknown envelope kind {env.kind}")
        return Opened(payload, sender_user, sender_device, env.kind)

    def _open_body(self, content_key: bytes, env: e2.Envelope, aad: bytes) -> e2.Payload:
        try:
            plain = self.suite.aead_decrypt(content_key, env.nonce, env.ciphertext, aad)
        except (CryptoError, ValueError) as exc:
            raise TamperedError("message body does not open (tampered or wrong key)") from exc
        try:
            return e2.Payload.FromString(plain)
        except DecodeError as exc:
            raise MalformedError("message payload does not parse") from exc

    def _open_pairwise(self, conversation_id: str, sender_user: str,
                       env: e2.Envelope) -> e2.Payload:
        sender_device = env.sender_device
        mine = [r for r in env.recipients
                if r.user_id == self.user_id and r.device_id == self.device_id]
        if not mine:
            raise NoSessionError("message is not addressed to this device")
        rk = mine[0]
        peer = (sender_user, sender_device)
        session = next((s for s in self.sessions.get(peer, [])
                        if s.session_id == rk.session_id), None)
        new_session = False
        if session is None:
            if not rk.HasField("init"):
                raise NoSessionError(f"no session {rk.session_id.hex()[:16]} with "
                                     f"{sender_user}/{sender_device}")
            self.pins.check(sender_user, sender_device, rk.init.initiator_identity_key, pin=False)
            session = respond(self.suite, self.user_id, self.device_id,
                              self.identity.public_key, sender_user, sender_device, rk.init,
                              rk.session_id, self.signed_prekeys.get,
                              self.one_time_prekeys.get)
            new_session = True
        else:
            pinned = self.pins.pinned(sender_user, sender_device)
            if pinned is not None and pinned != session.peer_identity:
                raise IdentityChangedError(sender_user, sender_device, pinned,
                                           session.peer_identity)
        suite = self.suite
        body_aad = enc.body_aad(suite.name, conversation_id, sender_user, sender_device,
                                PAIRWISE)
        h = rk.header
        aad = enc.recipient_aad(suite.name, conversation_id, sender_user, sender_device,
                                self.user_id, self.device_id, rk.session_id, h.ratchet_key,
                                h.kem_ciphertext, h.previous_chain_length, h.counter)

        def open_with(mk: bytes) -> e2.Payload:
            key, nonce = message_key_material(suite, mk)
            try:
                kp = e2.KeyPayload.FromString(suite.aead_decrypt(key, nonce, rk.ciphertext, aad))
            except (CryptoError, ValueError, DecodeError) as exc:
                raise TamperedError("recipient key does not open (tampered, or not for this "
                                    "session)") from exc
            if kp.body_digest != enc.body_digest(suite, env.nonce, env.ciphertext):
                raise TamperedError("message body does not match what the sender wrapped")
            return self._open_body(kp.content_key, env, body_aad)

        payload = session.ratchet.receive(suite, h, open_with)
        if new_session:
            self.pins.check(sender_user, sender_device, session.peer_identity)
            if rk.init.one_time_prekey_id:
                self.one_time_prekeys.pop(rk.init.one_time_prekey_id, None)
            self._install(session)
        session.init = b""  # a message arrived on it: the peer has the session
        return payload

    def _install_sender_key(self, conversation_id: str, sender_user: str, sender_device: str,
                            dist: e2.SenderKeyDistribution) -> None:
        if dist.conversation_id != conversation_id:
            raise TamperedError("sender key distribution is for another conversation")
        if len(dist.chain_key) != enc.CHAIN_KEY_SIZE or dist.epoch < 1:
            raise MalformedError("sender key distribution is malformed")
        key = (conversation_id, sender_user, sender_device, dist.epoch)
        if key not in self.peer_sender_keys:
            self.peer_sender_keys[key] = PeerSenderKey.from_distribution(dist)

    def _open_group(self, conversation_id: str, sender_user: str,
                    env: e2.Envelope) -> e2.Payload:
        hdr = env.sender_key
        key = (conversation_id, sender_user, env.sender_device, hdr.epoch)
        peer = self.peer_sender_keys.get(key)
        if peer is None:
            raise NoSenderKeyError(f"no sender key of {sender_user}/{env.sender_device} for "
                                   f"epoch {hdr.epoch} in this conversation")
        statement = enc.group_statement(self.suite.name, conversation_id, sender_user,
                                        env.sender_device, hdr.epoch, hdr.iteration, env.nonce,
                                        env.ciphertext)
        try:
            self.suite.verify(peer.signing_key, statement, hdr.signature)
        except (CryptoError, ValueError) as exc:
            raise WrongSignatureError("group message is not signed by the sender key") from exc
        content_key, updated = peer.content_key(self.suite, hdr.iteration)
        aad = enc.body_aad(self.suite.name, conversation_id, sender_user, env.sender_device,
                           GROUP)
        payload = self._open_body(content_key, env, aad)
        self.peer_sender_keys[key] = updated
        return payload

    # ---- persistence ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1, "suite": self.suite.name, "user_id": self.user_id,
            "device_id": self.device_id, "identity": _pair_out(self.identity),
            "signed_prekeys": {str(k): _pair_out(v) for k, v in self.signed_prekeys.items()},
            "one_time_prekeys": {str(k): _pair_out(v)
                                 for k, v in self.one_time_prekeys.items()},
            "next_prekey_id": self.next_prekey_id, "pins": self.pins.to_dict(),
            "signed_prekey_created_ms": self.signed_prekey_created_ms,
            "sessions": [s.to_dict() for ss in self.sessions.values() for s in ss],
            "own_sender_keys": [o.to_dict() for o in self.own_sender_keys.values()],
            "peer_sender_keys": [[list(k), v.to_dict()]
                                 for k, v in self.peer_sender_keys.items()],
            "rotate_pending": sorted(self.rotate_pending),
            "escrow_pin": self.escrow_pin.to_dict() if self.escrow_pin else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], suite: CryptoSuite | None = None) -> Device:
        try:
            suite = suite or get_suite(d["suite"])
            dev = cls(suite, d["user_id"], d["device_id"], _pair(d["identity"]))
            dev.signed_prekeys = {int(k): _pair(v) for k, v in d["signed_prekeys"].items()}
            dev.one_time_prekeys = {int(k): _pair(v) for k, v in d["one_time_prekeys"].items()}
            dev.next_prekey_id = int(d["next_prekey_id"])
            dev.signed_prekey_created_ms = int(d.get("signed_prekey_created_ms", 0))
            dev.pins = IdentityStore.from_dict(d["pins"])
            for sd in d["sessions"]:
                s = Session.from_dict(sd)
                dev.sessions.setdefault((s.peer_user, s.peer_device), []).append(s)
            for od in d["own_sender_keys"]:
                o = OwnSenderKey.from_dict(od)
                dev.own_sender_keys[o.conversation_id] = o
            for k, v in d["peer_sender_keys"]:
                dev.peer_sender_keys[(k[0], k[1], k[2], int(k[3]))] = PeerSenderKey.from_dict(v)
            dev.rotate_pending = set(d["rotate_pending"])
            pin = d.get("escrow_pin")  # absent in states written before section 10.1
            dev.escrow_pin = EscrowPin.from_dict(pin) if pin else None
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise E2EEError(f"stored E2EE state is damaged: {exc}") from exc
        return dev

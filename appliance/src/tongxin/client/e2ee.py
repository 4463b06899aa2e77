"""End-to-end encryption for the Python SDK (docs/e2ee.md).

    async with Client(url, device_id="laptop") as c:
        await c.login("alice", "pw")
        e = await c.e2ee("~/.tongxin/keys")          # loads or creates, publishes keys
        conv = await c.direct("bob")
        await e.send_text(conv.conversation_id, "hello")
        ev = await c.next_event(pb.DELIVER)
        opened = await e.open(ev.message)             # -> Opened | None

The device's keys, pins, sessions and sender keys live in one JSON file per
(user, device) in ``state_dir``, mode 0600, rewritten atomically after every change.
Identity changes raise :class:`IdentityChangedError` and call ``on_identity_change``.

With compliance escrow on, the escrow key the server announces is used only when the
organisation root provisioned at install time (``trusted_org_root``, by default
``$TONGXIN_ORG_ROOT`` or ``/etc/tongxin/trust/org-root.pem``) signed it (docs/e2ee.md
section 10.1); otherwise sending raises :class:`EscrowUntrustedError`. A change of escrow
key calls ``on_escrow_key_change`` and issues an :class:`EscrowKeyChangedWarning`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tongxin.client.cross_signing import CrossSigning
from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import get_suite
from tongxin.e2ee import attachments
from tongxin.e2ee import encoding as enc
from tongxin.e2ee.device import Device, Escrow, Opened
from tongxin.e2ee.device_trust import DeviceChange
from tongxin.e2ee.errors import (
    E2EEError,
    EscrowUntrustedError,
    IdentityChangedError,
    NoSessionError,
    UnannouncedMemberError,
    UnsignedDeviceError,
    UserKeyChangedError,
)
from tongxin.e2ee.escrow_trust import (
    EscrowKeyChange,
    EscrowKeyChangedWarning,
    EscrowStatement,
    advance_pin,
    key_bytes,
    root_key_id,
)
from tongxin.e2ee.escrow_trust import verify as verify_statement
from tongxin.e2ee.membership import MembershipChange, MembershipLedger
from tongxin.proto import e2ee_pb2 as e2
from tongxin.proto import tongxin_pb2 as pb

if TYPE_CHECKING:
    from tongxin.client import Client

__all__ = ["DEFAULT_ORG_ROOT_FILE", "E2EEClient", "EscrowKeyChange", "EscrowKeyChangedWarning",
           "EscrowUntrustedError", "Opened"]

log = logging.getLogger("tongxin.client.e2ee")

DEFAULT_ORG_ROOT_FILE = "/etc/tongxin/trust/org-root.pem"
"""Where the ``pki`` role installs the organisation root's public key on client hosts."""
ORG_ROOT_ENV = "TONGXIN_ORG_ROOT"

FETCH_BATCH = 100
"""Users per KEYS_FETCH (the server's cap)."""
SIGNED_PREKEY_MAX_AGE = 7 * 86400.0
"""Seconds after which :meth:`E2EEClient.setup` publishes a new signed prekey."""

_MEMBERSHIP = {pb.SystemEvent.MEMBERS_ADDED, pb.SystemEvent.MEMBERS_REMOVED,
               pb.SystemEvent.MEMBER_LEFT}
REJUDGE_AFTER = 60.0
"""Seconds before a refused sender device is looked up in the directory again."""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


OrgRoot = bytes | str | os.PathLike[str] | None


def load_org_root(trusted_org_root: OrgRoot) -> bytes | None:
    """The root public key (SPKI DER): given as bytes (DER or PEM) or a file path; None
    looks at ``$TONGXIN_ORG_ROOT``, then the default file, and is None if neither is there.
    A path that was named but cannot be read is an error, not "no root"."""
    if isinstance(trusted_org_root, bytes):
        if not trusted_org_root.strip():
            raise E2EEError("the organisation root key given is empty")
        return key_bytes(trusted_org_root)
    path: str | os.PathLike[str] | None = trusted_org_root
    if path is None:
        path = os.environ.get(ORG_ROOT_ENV) or None
        if path is None:
            if not os.path.exists(DEFAULT_ORG_ROOT_FILE):
                return None
            path = DEFAULT_ORG_ROOT_FILE
    try:
        root = key_bytes(Path(path).expanduser().read_bytes())
        if not root:
            raise ValueError("the file is empty")
        return root
    except (OSError, ValueError) as exc:
        raise E2EEError(f"cannot read the organisation root key {path}: {exc}") from exc


class E2EEClient:
    def __init__(self, client: Client, state_dir: str | os.PathLike[str], *,
                 on_identity_change: Callable[[IdentityChangedError], None] | None = None,
                 one_time_prekeys: int = 20, trusted_org_root: OrgRoot = None,
                 on_escrow_key_change: Callable[[EscrowKeyChange], None] | None = None,
                 on_membership_change: Callable[[MembershipChange], None] | None = None,
                 on_device_change: Callable[[DeviceChange], None] | None = None,
                 key_backup_passphrase: str | None = None,
                 ) -> None:
        if client.auth is None:
            raise RuntimeError("log in before enabling end-to-end encryption")
        self.client = client
        self.state_dir = Path(state_dir).expanduser()
        self.on_identity_change = on_identity_change
        self.one_time_prekeys = one_time_prekeys
        self.sent: dict[str, e2.Payload] = {}
        """Payloads this device sent, by client_msg_id: a sender does not wrap to itself."""
        auth = client.auth
        try:
            self.suite = get_suite(auth.crypto_suite or "gm")
        except (CryptoError, ValueError) as exc:
            raise E2EEError(f"the server's crypto suite {auth.crypto_suite!r} cannot run on "
                            f"this client: {exc}") from exc
        self.path = self.state_dir / f"{_safe(auth.user_id)}.{_safe(auth.device_id)}.json"
        self.ledger = MembershipLedger()
        """Group memberships as the conversation logs announced them (docs/e2ee.md 7.1)."""
        self.on_membership_change = on_membership_change
        self.on_device_change = on_device_change
        self.key_backup_passphrase = key_backup_passphrase
        self._cross_state: dict[str, object] = {}
        self._judged_at: dict[tuple[str, str], float] = {}
        """When the directory was last asked about a sender device this client refused."""
        self.device = self._load() or Device.create(self.suite, auth.user_id, auth.device_id)
        self.cross = CrossSigning(self.suite, auth.user_id, auth.device_id,
                                  self.device.identity.public_key)
        """Cross-signing (docs/e2ee.md 9.1): this device's signature, other users' devices."""
        self.cross.load(self._cross_state)
        self.device.pins.on_change = self._identity_changed
        self.org_root = load_org_root(trusted_org_root)
        self.on_escrow_key_change = on_escrow_key_change
        self.escrow_refusal: EscrowUntrustedError | None = None
        """Why sending is refused while escrow is on (None: trusted, or escrow off)."""
        self._escrow_seen: tuple[str, bytes, bytes] | None = None
        self._trust_escrow()

    # ---- state ----------------------------------------------------------------------

    def _load(self) -> Device | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise E2EEError(f"cannot read E2EE state {self.path}: {exc}") from exc
        dev = Device.from_dict(data)
        self.ledger = MembershipLedger.from_dict(data.get("membership", {}))
        self._cross_state = data.get("cross_signing", {})
        if dev.suite.name != self.suite.name:
            raise E2EEError(f"E2EE state {self.path} is for suite {dev.suite.name!r} but the "
                            f"server uses {self.suite.name!r}")
        return dev

    def save(self) -> None:
        """Write the state atomically, readable by the owner only."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**self.device.to_dict(), "membership": self.ledger.to_dict(),
                           "cross_signing": self.cross.to_dict()}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _identity_changed(self, err: IdentityChangedError) -> None:
        if self.on_identity_change is not None:
            self.on_identity_change(err)

    # ---- compliance escrow (docs/e2ee.md section 10) --------------------------------

    def _trust_escrow(self) -> None:
        """Use the announced escrow key only if the provisioned root signed it and it is not
        older than the pinned statement. Runs again whenever a login (a reconnect) announced
        something else."""
        auth = self.client.auth
        if auth is None:
            return
        seen = (auth.escrow_key_id, bytes(auth.escrow_public_key),
                auth.escrow_statement.SerializeToString())
        if seen == self._escrow_seen:
            return
        self._escrow_seen = seen
        self.device.escrow, self.escrow_refusal = None, None
        if not auth.escrow_key_id and not auth.escrow_public_key:
            return  # escrow off: nobody but the recipients can read, nothing to vouch for
        try:
            if self.org_root is None:
                raise EscrowUntrustedError(
                    "compliance escrow is on but no organisation root is provisioned on this "
                    f"client (trusted_org_root, ${ORG_ROOT_ENV} or {DEFAULT_ORG_ROOT_FILE}): "
                    "the server's escrow key cannot be checked")
            st = EscrowStatement.from_auth(auth)
            if st is None:
                raise EscrowUntrustedError(
                    f"the server announced escrow key {auth.escrow_key_id!r} without the "
                    "organisation root's statement for it")
            verify_statement(self.suite, self.org_root, st, int(time.time() * 1000))
            pin, change = advance_pin(self.device.escrow_pin, st)
        except EscrowUntrustedError as exc:
            self.escrow_refusal = exc
            log.warning("refusing to encrypt: %s", exc)
            return
        self.device.escrow = Escrow(st.public_key, st.key_id)
        if pin != self.device.escrow_pin:
            self.device.escrow_pin = pin
            self.save()
        if change is not None:
            log.warning("%s", change)
            warnings.warn(str(change), EscrowKeyChangedWarning, stacklevel=3)
            if self.on_escrow_key_change is not None:
                self.on_escrow_key_change(change)

    def require_trusted_escrow(self) -> None:
        """Raise :class:`EscrowUntrustedError` while escrow is on with a key the organisation
        root does not vouch for: a wrap to it could be opened by whoever made that key."""
        self._trust_escrow()
        if self.escrow_refusal is not None:
            raise EscrowUntrustedError(str(self.escrow_refusal))

    @property
    def escrow_enabled(self) -> bool:
        """True when the server says compliance escrow is on (show it to the user), whether
        or not its key is trusted (see :attr:`escrow_refusal`)."""
        auth = self.client.auth
        return auth is not None and bool(auth.escrow_key_id or auth.escrow_public_key)

    @property
    def escrow_key_id(self) -> str:
        """The trusted escrow key in use ("" when escrow is off or refused)."""
        return self.device.escrow.key_id if self.device.escrow else ""

    @property
    def org_root_fingerprint(self) -> str:
        """The provisioned root's fingerprint (64 hex digits), to compare with the one the
        installation printed; "" without a root."""
        return root_key_id(self.suite, self.org_root) if self.org_root else ""

    def safety_keys(self, user_id: str) -> list[bytes]:
        """What a user's side of the safety number covers (docs/e2ee.md 9.1): their user
        key when one is known, else their devices' identity keys (this device's own
        included for this user)."""
        user_key = self.cross.trust.user_keys.get(user_id)
        if user_key:
            return [user_key]
        keys = self.device.pins.user_keys(user_id)
        if user_id == self.device.user_id:
            keys = [self.device.identity.public_key, *keys]
        return keys

    def safety_number(self, peer_user: str) -> str:
        """The number both users compare (after exchanging a message, so the peer's keys
        are pinned); the same one the web client shows."""
        return enc.safety_number(self.suite, self.device.user_id,
                                 self.safety_keys(self.device.user_id), peer_user,
                                 self.safety_keys(peer_user))

    def accept_identity(self, user_id: str, device_id: str, identity_key: bytes) -> None:
        self.device.accept_identity(user_id, device_id, identity_key)
        self.save()

    # ---- key directory -----------------------------------------------------------------

    async def publish(self, one_time: int | None = None,
                      rotate_signed: bool = False) -> e2.KeyStatus:
        msg = self.device.publish(self.one_time_prekeys if one_time is None else one_time,
                                  rotate_signed)
        self.save()  # private halves first: a crash after the publish must not lose them
        return await self.client.request(pb.KEYS_PUBLISH, msg, e2.KeyStatus)

    async def status(self) -> e2.KeyStatus:
        return await self.client.request(pb.KEYS_PUBLISH, e2.PublishKeys(), e2.KeyStatus)

    async def setup(self) -> e2.KeyStatus:
        """Publish this device's keys, topping one-time prekeys up when below half and
        rotating the signed prekey once it is older than ``SIGNED_PREKEY_MAX_AGE``; then
        have this device signed by its user's key (docs/e2ee.md 9.1)."""
        st = await self._publish_keys()
        st = await self.cross.establish(st, self._publish_raw, self.key_backup_passphrase)
        self.save()
        if self.cross.not_signed:
            log.warning("%s", self.cross.not_signed)
        return st

    async def _publish_raw(self, msg: e2.PublishKeys) -> e2.KeyStatus:
        return await self.client.request(pb.KEYS_PUBLISH, msg, e2.KeyStatus)

    async def restore_user_key(self, passphrase: str) -> e2.KeyStatus:
        """Open the user key's backup and sign this device with it (a new device)."""
        st = await self.cross.establish(await self.status(), self._publish_raw, passphrase)
        self.save()
        return st

    async def store_key_backup(self, passphrase: str) -> e2.KeyStatus:
        """Seal the user key under ``passphrase`` in the directory, for the user's next
        devices (the server stores it and cannot open it)."""
        return await self.cross.store_backup(passphrase, self._publish_raw)

    @property
    def signed(self) -> bool:
        """Whether this device is signed by its user's key (other clients refuse it if not)."""
        return not self.cross.not_signed

    def accept_user_key(self, user_id: str, user_key: bytes) -> None:
        """The user checked and accepts ``user_id``'s changed user key."""
        self.cross.trust.accept_user_key(user_id, user_key)
        self.save()

    async def _publish_keys(self) -> e2.KeyStatus:
        st = await self.status()
        if st.identity_key != self.device.identity.public_key or not st.signed_prekey_id:
            return await self.publish()
        age_ms = int(time.time() * 1000) - self.device.signed_prekey_created_ms
        if age_ms > SIGNED_PREKEY_MAX_AGE * 1000:
            return await self.publish(
                max(0, self.one_time_prekeys - st.one_time_prekeys_remaining), rotate_signed=True)
        if st.one_time_prekeys_remaining < self.one_time_prekeys // 2:
            return await self.publish(self.one_time_prekeys - st.one_time_prekeys_remaining)
        return st

    async def fetch(self, user_ids: list[str], with_one_time: bool = True) -> e2.KeyBundles:
        """KEYS_FETCH in batches of the server's cap of users per frame."""
        out = e2.KeyBundles()
        users = list(dict.fromkeys(user_ids))
        for i in range(0, len(users), FETCH_BATCH):
            part = await self.client.request(pb.KEYS_FETCH, e2.FetchKeys(
                user_ids=users[i:i + FETCH_BATCH], without_one_time_prekeys=not with_one_time),
                e2.KeyBundles)
            out.devices.extend(part.devices)
            out.user_keys.extend(part.user_keys)
        return out

    async def _judge(self, user_ids: list[str], listing: e2.KeyBundles) -> list[e2.DeviceBundle]:
        """The listed devices this client uses: signed by their user's pinned key (or of a
        user without one), with identity keys matching the pins."""
        try:
            use = self.cross.judge(listing, user_ids, self.on_device_change)
        except UserKeyChangedError as exc:
            self.save()
            self._identity_changed(exc)
            raise
        self.save()
        for b in use:
            self.device.check_identity(b.user_id, b.device_id, b.identity_key)
        for b in listing.devices:
            # A device pinned before that is now refused: its key changed under it (say so,
            # as before cross-signing), but an unknown one is not pinned.
            self.device.pins.check(b.user_id, b.device_id, b.identity_key, pin=False)
        return use

    async def devices_of(self, user_ids: list[str]) -> list[tuple[str, str]]:
        """Every device of ``user_ids`` with a session, after checking the directory's
        identity keys against the pins (:class:`IdentityChangedError` on a change)."""
        listing = await self.fetch(user_ids, with_one_time=False)
        dev = self.device
        targets: list[tuple[str, str]] = []
        missing: set[str] = set()
        for b in await self._judge(list(dict.fromkeys(user_ids)), listing):
            targets.append((b.user_id, b.device_id))
            s = dev.active_session(b.user_id, b.device_id)
            if s is None or s.peer_identity != b.identity_key:
                missing.add(b.user_id)
        if missing:
            full = await self.fetch(sorted(missing))
            for b in full.devices:
                if (b.user_id, b.device_id) in targets:
                    dev.add_bundle(b)
            self.save()
        return targets

    # ---- sending -----------------------------------------------------------------------

    async def _members(self, conversation_id: str) -> tuple[int, list[str]]:
        conv = await self.client.conversation(conversation_id)
        if conv.kind == pb.DIRECT:
            return conv.kind, [self.device.user_id, conv.peer_id]
        if conv.member_count > len(conv.members):
            # CONV_GET lists a bounded number of members; wrapping to only some of them
            # would silently exclude the rest.
            raise E2EEError(f"group has {conv.member_count} members but the server listed "
                            f"{len(conv.members)}; end-to-end encryption needs all of them")
        listed = [m.user_id for m in conv.members]
        if self.ledger.unannounced(conversation_id, listed):
            # Only when the list and the record differ: the log since the record's end
            # says whether the log announced them.
            known = self.ledger.groups.get(conversation_id)
            entries = await self.client.sync_all(conversation_id,
                                                 known.checked_seq if known else 0)
            changes = self.ledger.replay(conversation_id, entries, listed)
            self.save()
            self._membership_changed(changes)
            ghosts = self.ledger.unannounced(conversation_id, listed)
            if ghosts:
                raise UnannouncedMemberError(conversation_id, ghosts)
        return conv.kind, listed

    def _membership_changed(self, changes: list[MembershipChange]) -> None:
        if self.on_membership_change is not None:
            for c in changes:
                self.on_membership_change(c)

    async def _send_envelope(self, conversation_id: str, env: e2.Envelope,
                             client_msg_id: str) -> pb.Ack:
        return await self.client.send(conversation_id,
                                      pb.Content(encrypted=env.SerializeToString()),
                                      client_msg_id)

    async def send_payload(self, conversation_id: str, payload: e2.Payload,
                           client_msg_id: str = "") -> pb.Ack:
        self.require_trusted_escrow()
        self.cross.require_signed()
        payload.sent_at_ms = int(time.time() * 1000)
        client_msg_id = client_msg_id or uuid.uuid4().hex
        kind, members = await self._members(conversation_id)
        targets = await self.devices_of(members)
        peers = {u for u, _ in targets if u != self.device.user_id}
        if kind == pb.DIRECT and not peers and members[1] != self.device.user_id:
            raise E2EEError(f"no device of {members[1]} can receive end-to-end encrypted "
                            "messages (none is published and signed by their user key)")
        dev = self.device
        if kind == pb.GROUP:
            dist = dev.sender_key_distribution(conversation_id, members)
            if dist is not None:
                env = dev.seal(conversation_id, dist, targets)
                self.save()
                await self._send_envelope(conversation_id, env, uuid.uuid4().hex)
            env = dev.seal_group(conversation_id, payload)
        else:
            env = dev.seal(conversation_id, payload, targets)
        self.save()
        self.sent[client_msg_id] = payload
        return await self._send_envelope(conversation_id, env, client_msg_id)

    async def send_text(self, conversation_id: str, text: str, client_msg_id: str = "") -> pb.Ack:
        return await self.send_payload(conversation_id, e2.Payload(text=text), client_msg_id)

    async def send_file(self, conversation_id: str, data: bytes, name: str,
                        content_type: str = "application/octet-stream") -> pb.Ack:
        """Encrypt ``data`` with a fresh key, upload only the ciphertext, send the key
        inside an encrypted message."""
        self.require_trusted_escrow()  # before the upload, which would be wasted
        self.cross.require_signed()
        blob, att = attachments.encrypt(self.suite, data, name, content_type)
        info = await self.client.upload_file(conversation_id, blob, attachments.UPLOAD_NAME,
                                             attachments.UPLOAD_CONTENT_TYPE)
        att.file_id = info.file_id
        return await self.send_payload(conversation_id, e2.Payload(attachment=att))

    async def download(self, att: e2.Attachment) -> bytes:
        return attachments.decrypt(self.suite, await self.client.download_file(att.file_id), att)

    # ---- receiving ------------------------------------------------------------------------

    def membership_changed(self, conversation_id: str, removed: list[str] = ()) -> None:  # type: ignore[assignment]
        self.device.membership_changed(conversation_id, list(removed))
        self.save()

    async def change_members(self, conversation_id: str, op: int,
                             users: list[str]) -> pb.Conversation:
        """MEMBERS, then a new sender-key epoch for this device: the SYSTEM entry is pushed
        to the other devices, not to the one that made the change."""
        conv = await self.client.change_members(conversation_id, op, users)
        if op in (pb.MemberChange.ADD, pb.MemberChange.REMOVE, pb.MemberChange.LEAVE):
            removed = ([u.user_id for u in await self.client.users(users)]
                       if op == pb.MemberChange.REMOVE else [])
            self.membership_changed(conversation_id, removed)
        return conv

    async def open(self, message: pb.Message) -> Opened | None:
        """Open a DELIVER/SYNC entry. Returns None for entries that carry no encrypted
        content (membership changes are noted for sender-key rotation). Raises an
        :class:`E2EEError` for content that must be refused."""
        if message.kind == pb.SYSTEM:
            change = self.ledger.apply(message)
            if change is not None:
                self._membership_changed([change])
                if message.system.kind not in _MEMBERSHIP:
                    self.save()  # CREATED: membership_changed below saves the others
            if message.system.kind in _MEMBERSHIP:
                removed: list[str] = []
                if message.system.kind == pb.SystemEvent.MEMBERS_REMOVED:
                    removed = list(message.system.user_ids)
                elif message.system.kind == pb.SystemEvent.MEMBER_LEFT:
                    removed = list(message.system.user_ids) or [message.system.actor_id]
                self.membership_changed(message.conversation_id, removed)
            return None
        if message.content.WhichOneof("body") != "encrypted":
            return None
        dev = self.device
        if (message.sender_id, message.sender_device) == (dev.user_id, dev.device_id):
            own = self.sent.get(message.client_msg_id)
            if own is None:
                raise NoSessionError("sent by this device; its plaintext is kept locally only")
            return Opened(own, dev.user_id, dev.device_id, 0)
        sender = (message.sender_id, message.sender_device)
        if self.cross.trust.accepted(*sender) is None:
            # A device not seen yet: the directory says whether its user's key signed it.
            # Asked at most once a minute per device, so a refused device that keeps
            # sending does not make this client fetch the directory for each message.
            now = time.monotonic()
            if now - self._judged_at.get(sender, -REJUDGE_AFTER) >= REJUDGE_AFTER:
                self._judged_at[sender] = now
                await self._judge([message.sender_id],
                                  await self.fetch([message.sender_id], with_one_time=False))
            if self.cross.trust.accepted(*sender) is None:
                raise UnsignedDeviceError(*sender)
        opened = dev.open(message.conversation_id, message.sender_id, message.sender_device,
                          message.content.encrypted)
        self.save()
        return opened

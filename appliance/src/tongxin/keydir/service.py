"""Key directory frames and the E2EE content policy (docs/e2ee.md sections 3 and 10).

The server checks what it can without any private key: prekey signatures against the
published identity key, sizes and counts, the suite, and (with escrow on) that every
envelope names the current escrow key. Everything it stores and returns is public.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from tongxin.clock import now_ms
from tongxin.config import Config, ConfigError
from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite, get_suite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee import escrow as escrow_mod
from tongxin.e2ee import escrow_trust
from tongxin.e2ee.cross_signing import MAX_BACKUP_BYTES, device_is_signed
from tongxin.e2ee.errors import E2EEError
from tongxin.errors import RequestError
from tongxin.keydir.ports import (
    DeviceRow,
    DeviceSignatureRow,
    DuplicatePreKey,
    KeyDirStore,
    PreKeyRow,
    TooManyPreKeys,
    UserKeyRow,
)
from tongxin.proto import e2ee_pb2 as e2
from tongxin.proto import tongxin_pb2 as pb

log = logging.getLogger("tongxin.keydir")

MAX_ONE_TIME_PER_PUBLISH = 100
MAX_ONE_TIME_STORED = 200
MAX_KEY_BYTES = 512
MAX_SIGNATURE_BYTES = 256
MAX_FETCH_USERS = 100
MAX_DEVICES_PER_USER = 20


def read_key_file(path: str) -> bytes:
    """DER, or the DER inside a PEM file."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        body = re.sub(rb"-----[^-]+-----", b"", data)
        return base64.b64decode(b"".join(body.split()))
    return data


def _escrow_statement(cfg: Config, suite: CryptoSuite, pub: bytes,
                      root: bytes) -> pb.EscrowStatement | None:
    """The statement file checked against the escrow key it must vouch for, and against the
    organisation root when the node has it: a wrong file fails here, at start, rather than
    on every client."""
    e = cfg.e2ee
    if not e.escrow_statement_file:
        # Clients with a provisioned root will refuse to encrypt; say so where it is fixed.
        log.warning("compliance escrow is on without e2ee.escrow_statement_file: clients "
                    "that pin the organisation root refuse to encrypt (docs/e2ee.md 10.1)")
        return None
    try:
        st = escrow_trust.EscrowStatement.read(e.escrow_statement_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"e2ee.escrow_statement_file: {exc}") from exc
    if st.public_key != pub or st.suite != suite.name:
        raise ConfigError("e2ee.escrow_statement_file vouches for another escrow key or suite "
                          f"(key {st.key_id}, suite {st.suite!r}) than "
                          "e2ee.escrow_public_key_file")
    if root:
        try:
            escrow_trust.verify(suite, root, st)
        except (ValueError, E2EEError) as exc:
            raise ConfigError(f"e2ee.escrow_statement_file: {exc}") from exc
    return st.to_proto()


@dataclass
class E2eePolicy:
    suite_name: str
    suite: CryptoSuite | None
    unavailable: str
    """Why the suite cannot be used here (empty when it can)."""
    required: bool = False
    escrow_public_key: bytes = b""
    escrow_key_id: str = ""
    escrow_private_key_file: str = ""
    escrow_statement: pb.EscrowStatement | None = None
    """The organisation root's statement for the escrow key, sent in AUTH_OK."""
    org_root_public_key: bytes = b""
    """The root's public key (SPKI DER), named in /api/v1/info for the web client to pin on
    first use (docs/e2ee.md, Web client); the SDK never takes it from the server."""

    @classmethod
    def from_config(cls, cfg: Config) -> E2eePolicy:
        name, e = cfg.crypto.suite, cfg.e2ee
        try:
            suite: CryptoSuite | None = get_suite(name)
            reason = ""
        except CryptoError as exc:
            suite, reason = None, f"crypto suite {name!r} is unavailable on this platform: {exc}"
            # Never fall back to the other suite: log it and refuse E2EE until it is fixed.
            log.error("end-to-end encryption is off: %s", reason)
        policy = cls(name, suite, reason, e.required,
                     escrow_private_key_file=e.escrow_private_key_file)
        if e.org_root_public_key_file:
            try:
                policy.org_root_public_key = escrow_trust.key_bytes(
                    Path(e.org_root_public_key_file).read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"e2ee.org_root_public_key_file: {exc}") from exc
        if (e.escrow_public_key_file or e.required) and suite is None:
            raise ConfigError(f"e2ee: required or escrow is configured but {reason}")
        if e.escrow_public_key_file:
            assert suite is not None
            try:
                pub = read_key_file(e.escrow_public_key_file)
                suite.kem_encapsulate(pub)  # proves it is a KEM key of this suite
            except (OSError, ValueError, CryptoError) as exc:
                raise ConfigError(f"e2ee.escrow_public_key_file: not a {name} KEM public key: "
                                  f"{exc}") from exc
            policy.escrow_public_key = pub
            policy.escrow_key_id = enc.escrow_key_id(suite, pub)
            policy.escrow_statement = _escrow_statement(cfg, suite, pub,
                                                        policy.org_root_public_key)
        elif e.escrow_statement_file:
            raise ConfigError("e2ee.escrow_statement_file is set but escrow is off "
                              "(e2ee.escrow_public_key_file)")
        return policy

    def require_suite(self) -> CryptoSuite:
        if self.suite is None:
            raise RequestError(pb.UNAVAILABLE, f"end-to-end encryption is unavailable: "
                                               f"{self.unavailable}")
        return self.suite

    def check_content(self, content: pb.Content) -> None:
        """Refuse plaintext when E2EE is required, and envelopes without a valid-looking
        escrow wrap when escrow is on."""
        body = content.WhichOneof("body")
        if body != "encrypted":
            if self.required:
                raise RequestError(pb.INVALID_ARGUMENT, "end-to-end encryption is required on "
                                   "this server: send Content.encrypted (docs/e2ee.md)")
            return
        if self.escrow_key_id:
            suite = self.require_suite()
            reason = escrow_mod.check_structure(suite, content.encrypted, self.escrow_key_id)
            if reason is not None:
                raise RequestError(pb.INVALID_ARGUMENT, reason)


def _check_sizes(what: str, key: e2.PreKey) -> None:
    if key.key_id < 1:
        raise RequestError(pb.INVALID_ARGUMENT, f"{what}: key_id must be at least 1")
    if not key.public_key or len(key.public_key) > MAX_KEY_BYTES:
        raise RequestError(pb.INVALID_ARGUMENT, f"{what}: public key missing or over "
                                                f"{MAX_KEY_BYTES} bytes")
    if not key.signature or len(key.signature) > MAX_SIGNATURE_BYTES:
        raise RequestError(pb.INVALID_ARGUMENT, f"{what}: signature missing or over "
                                                f"{MAX_SIGNATURE_BYTES} bytes")


class KeyDirectory:
    def __init__(self, store: KeyDirStore, policy: E2eePolicy) -> None:
        self.store = store
        self.policy = policy

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    def _verify(self, suite: CryptoSuite, user_id: str, device_id: str, identity: bytes,
                kind: int, key: e2.PreKey, what: str) -> None:
        _check_sizes(what, key)
        statement = enc.prekey_statement(suite.name, user_id, device_id, kind, key.key_id,
                                         key.public_key)
        try:
            suite.verify(identity, statement, key.signature)
        except (CryptoError, ValueError) as exc:
            raise RequestError(pb.INVALID_ARGUMENT, f"{what} {key.key_id}: signature does not "
                               "verify with the identity key") from exc
        try:
            suite.kem_encapsulate(key.public_key)
        except (CryptoError, ValueError) as exc:
            raise RequestError(pb.INVALID_ARGUMENT, f"{what} {key.key_id}: not a KEM public "
                               f"key of suite {suite.name}") from exc

    async def publish(self, user_id: str, device_id: str, payload: bytes) -> e2.KeyStatus:
        suite = self.policy.require_suite()
        try:
            req = e2.PublishKeys.FromString(payload)
        except DecodeError as exc:
            raise RequestError(pb.BAD_PAYLOAD, "payload is not a valid PublishKeys") from exc
        current = await self.store.get_device(user_id, device_id)
        empty = not (req.suite or req.identity_key or req.HasField("signed_prekey")
                     or req.one_time_prekeys)
        if not empty:
            await self._publish(suite, user_id, device_id, req, current)
            current = await self.store.get_device(user_id, device_id)
        if req.user_key or req.device_signature or req.user_key_backup:
            await self._cross_sign(suite, user_id, device_id, req, current)
        status = e2.KeyStatus(
            one_time_prekeys_remaining=await self.store.count_one_time(user_id, device_id),
            signed_prekey_id=current.spk_id if current else 0,
            identity_key=current.identity_key if current else b"")
        for uk in await self.store.user_keys([user_id]):
            status.user_key, status.user_key_backup = uk.user_key, uk.backup
        for sig in await self.store.device_signatures([user_id]):
            if current is not None and (sig.device_id, sig.identity_key) == (
                    device_id, current.identity_key):
                status.device_signature = sig.signature
        return status

    async def _cross_sign(self, suite: CryptoSuite, user_id: str, device_id: str,
                          req: e2.PublishKeys, current: DeviceRow | None) -> None:
        """The user key, this device's signature by it, and the key's sealed backup
        (docs/e2ee.md 9.1). Clients verify all of it themselves; the server refuses what
        would only confuse them: a second user key, a signature that does not verify."""
        if current is None:
            raise RequestError(pb.INVALID_ARGUMENT, "publish the device's identity key before "
                               "its device_signature")
        if len(req.user_key) > MAX_KEY_BYTES or len(req.device_signature) > MAX_SIGNATURE_BYTES:
            raise RequestError(pb.INVALID_ARGUMENT, "user_key or device_signature is too large")
        if len(req.user_key_backup) > MAX_BACKUP_BYTES:
            raise RequestError(pb.INVALID_ARGUMENT, f"user_key_backup is over "
                                                    f"{MAX_BACKUP_BYTES} bytes")
        if not req.device_signature:
            raise RequestError(pb.INVALID_ARGUMENT, "user_key and user_key_backup need this "
                               "device's device_signature in the same KEYS_PUBLISH")
        stored = next(iter(await self.store.user_keys([user_id])), None)
        if stored is not None and req.user_key and stored.user_key != req.user_key:
            raise RequestError(pb.CONFLICT, "this user already has another user key; a new "
                               "device gets it from the key backup or another device")
        user_key = stored.user_key if stored is not None else bytes(req.user_key)
        if not user_key:
            raise RequestError(pb.INVALID_ARGUMENT, "the user has no user key yet: send "
                               "user_key with the first device_signature")
        if not device_is_signed(suite, user_key, user_id, device_id, current.identity_key,
                                req.device_signature):
            raise RequestError(pb.INVALID_ARGUMENT, "device_signature does not verify with "
                               "the user key over this device's identity key")
        now = now_ms()
        if stored is None:
            row = UserKeyRow(user_id, suite.name, user_key, bytes(req.user_key_backup), now)
            if not await self.store.insert_user_key(row):
                raced = next(iter(await self.store.user_keys([user_id])), None)
                if raced is None or raced.user_key != user_key:
                    raise RequestError(pb.CONFLICT, "another device set a different user key "
                                       "at the same time")
            log.info("user key set", extra={"user": user_id, "device": device_id})
        elif req.user_key_backup:
            await self.store.set_user_key_backup(user_id, user_key, bytes(req.user_key_backup),
                                                 now)
        await self.store.put_device_signature(DeviceSignatureRow(
            user_id, device_id, current.identity_key, bytes(req.device_signature)))

    async def _publish(self, suite: CryptoSuite, user_id: str, device_id: str,
                       req: e2.PublishKeys, current: DeviceRow | None) -> None:
        if req.suite != suite.name:
            raise RequestError(pb.INVALID_ARGUMENT, f"suite must be {suite.name!r} (the "
                               "deployment's crypto.suite)")
        if len(req.one_time_prekeys) > MAX_ONE_TIME_PER_PUBLISH:
            raise RequestError(pb.INVALID_ARGUMENT, f"at most {MAX_ONE_TIME_PER_PUBLISH} "
                               "one-time prekeys per KEYS_PUBLISH")
        identity = bytes(req.identity_key) or (current.identity_key if current else b"")
        if not identity:
            raise RequestError(pb.INVALID_ARGUMENT, "the first KEYS_PUBLISH of a device needs "
                               "identity_key and signed_prekey")
        if len(identity) > MAX_KEY_BYTES:
            raise RequestError(pb.INVALID_ARGUMENT, "identity key is too large")
        try:
            # A signing key of the suite: verifying anything with it must get past parsing.
            suite.verify(identity, b"", b"\x00")
        except ValueError as exc:
            raise RequestError(pb.INVALID_ARGUMENT, "identity_key is not a signing public "
                               f"key of suite {suite.name}") from exc
        except CryptoError:
            pass  # parsed; the dummy signature was refused, as it must be
        new_identity = current is None or current.identity_key != identity
        if new_identity and not req.HasField("signed_prekey"):
            raise RequestError(pb.INVALID_ARGUMENT, "a new identity key needs a signed_prekey "
                               "in the same KEYS_PUBLISH")
        if req.HasField("signed_prekey"):
            self._verify(suite, user_id, device_id, identity, enc.PREKEY_SIGNED,
                         req.signed_prekey, "signed prekey")
        ids = [k.key_id for k in req.one_time_prekeys]
        if len(set(ids)) != len(ids):
            raise RequestError(pb.INVALID_ARGUMENT, "one-time prekey ids repeat")
        for k in req.one_time_prekeys:
            self._verify(suite, user_id, device_id, identity, enc.PREKEY_ONE_TIME, k,
                         "one-time prekey")
        if req.HasField("signed_prekey") or new_identity:
            spk = req.signed_prekey
            await self.store.put_device(DeviceRow(user_id, device_id, suite.name, identity,
                                                  spk.key_id, spk.public_key, spk.signature,
                                                  now_ms()), new_identity)
            if new_identity and current is not None:
                log.info("device identity key replaced",
                         extra={"user": user_id, "device": device_id})
        if req.one_time_prekeys:
            try:
                await self.store.add_one_time(
                    user_id, device_id,
                    [PreKeyRow(k.key_id, k.public_key, k.signature) for k in req.one_time_prekeys],
                    MAX_ONE_TIME_STORED)
            except TooManyPreKeys as exc:
                raise RequestError(pb.INVALID_ARGUMENT, f"a device may store at most "
                                   f"{MAX_ONE_TIME_STORED} one-time prekeys ({exc})") from exc
            except DuplicatePreKey as exc:
                raise RequestError(pb.CONFLICT, "a one-time prekey id is already stored for "
                                   "this device") from exc

    async def fetch(self, user_id: str, device_id: str, payload: bytes) -> e2.KeyBundles:
        self.policy.require_suite()
        try:
            req = e2.FetchKeys.FromString(payload)
        except DecodeError as exc:
            raise RequestError(pb.BAD_PAYLOAD, "payload is not a valid FetchKeys") from exc
        users = list(dict.fromkeys(req.user_ids))
        if len(users) > MAX_FETCH_USERS:
            raise RequestError(pb.INVALID_ARGUMENT, f"fetch keys of at most {MAX_FETCH_USERS} "
                                                    "users")
        out = e2.KeyBundles()
        for uk in await self.store.user_keys(users):
            if uk.suite == self.policy.suite_name:
                out.user_keys.add(user_id=uk.user_id, user_key=uk.user_key)
        signatures = {(s.user_id, s.device_id, s.identity_key): s.signature
                      for s in await self.store.device_signatures(users)}
        for row in await self.store.devices(users, MAX_DEVICES_PER_USER + 1):
            if (row.user_id, row.device_id) == (user_id, device_id):
                continue
            if row.suite != self.policy.suite_name:
                continue  # published under another suite before a suite change: unusable
            bundle = out.devices.add(
                user_id=row.user_id, device_id=row.device_id, identity_key=row.identity_key,
                signed_prekey=e2.PreKey(key_id=row.spk_id, public_key=row.spk_public,
                                        signature=row.spk_signature),
                updated_at_ms=row.updated_at,
                device_signature=signatures.get((row.user_id, row.device_id, row.identity_key),
                                                b""))
            if not req.without_one_time_prekeys:
                opk = await self.store.take_one_time(row.user_id, row.device_id)
                if opk is not None:
                    bundle.one_time_prekey.CopyFrom(e2.PreKey(
                        key_id=opk.key_id, public_key=opk.public_key, signature=opk.signature))
        return out


def make_key_directory(cfg: Config, chat_store: object) -> KeyDirectory:
    """Beside the chat store: MySQL tables in its database, or <data_dir>/keydir.db."""
    policy = E2eePolicy.from_config(cfg)
    store: KeyDirStore
    from tongxin.store.mysql_store import MysqlStore

    if isinstance(chat_store, MysqlStore):
        from tongxin.keydir.mysql_keydir import MysqlKeyDir

        store = MysqlKeyDir(chat_store)
    else:
        from tongxin.keydir.sqlite_keydir import SqliteKeyDir

        store = SqliteKeyDir(cfg.home / "keydir.db", cfg.storage.sqlite_synchronous,
                             cfg.storage.batch_max, "keydir")
    return KeyDirectory(store, policy)

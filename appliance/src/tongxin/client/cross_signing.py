"""The SDK's half of cross-signing (docs/e2ee.md 9.1): this device's signature by its user's
key, the key's backup, and which devices of other users are used.

Kept apart from :mod:`tongxin.client.e2ee` so that the rules live beside their state; the
E2EE client calls :meth:`CrossSigning.establish` after publishing its keys and
:meth:`CrossSigning.judge` on every directory listing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tongxin.crypto.suite import CryptoSuite
from tongxin.e2ee.cross_signing import (
    UserKey,
    device_is_signed,
    open_backup,
    seal_backup,
    sign_device,
)
from tongxin.e2ee.device_trust import DeviceChange, DeviceTrust
from tongxin.e2ee.errors import DeviceNotSignedError, E2EEError
from tongxin.proto import e2ee_pb2 as e2

log = logging.getLogger("tongxin.client.e2ee")

Publish = Callable[[e2.PublishKeys], Awaitable[e2.KeyStatus]]


class CrossSigning:
    def __init__(self, suite: CryptoSuite, user_id: str, device_id: str,
                 identity_key: bytes) -> None:
        self.suite = suite
        self.user_id = user_id
        self.device_id = device_id
        self.identity_key = identity_key
        self.user_key: UserKey | None = None
        """This user's key pair, when this device holds it."""
        self.trust = DeviceTrust()
        self.not_signed = ""
        """Why this device is not signed by its user's key ("" when it is)."""

    def _signature(self, key: UserKey) -> bytes:
        return sign_device(self.suite, key.private_key, self.user_id, self.device_id,
                           self.identity_key)

    async def establish(self, st: e2.KeyStatus, publish: Publish,
                        passphrase: str | None) -> e2.KeyStatus:
        """Make sure this device is signed by its user's key: the first device of a user
        makes the key; a later one opens the backup with ``passphrase``. Without either,
        :attr:`not_signed` says why and sending raises :class:`DeviceNotSignedError`."""
        key = self.user_key
        if not st.user_key:
            if key is None:
                pair = self.suite.generate_signing_keypair()
                key = self.user_key = UserKey(pair.public_key, pair.private_key)
            st = await publish(e2.PublishKeys(
                user_key=key.public_key, device_signature=self._signature(key),
                user_key_backup=(seal_backup(self.suite, self.user_id, key, passphrase)
                                 if passphrase else b"")))
            log.info("made the user key of %s on device %s", self.user_id, self.device_id)
        directory_key = bytes(st.user_key)
        pinned = self.trust.user_keys.get(self.user_id)
        if pinned is not None and pinned != directory_key:
            self.not_signed = ("the directory lists another user key for you than the one "
                               "this device pinned: it may have been replaced; ask the "
                               "security administrator")
            return st
        self.trust.user_keys[self.user_id] = directory_key
        if key is not None and key.public_key != directory_key:
            self.not_signed = "the directory lists another user key than the one this device holds"
            return st
        if key is None:
            if not (passphrase and st.user_key_backup):
                self.not_signed = ("this device is not signed by your user key: open your key "
                                   "backup with its passphrase" if st.user_key_backup else
                                   "this device is not signed by your user key, and your "
                                   "other device stored no key backup")
                return st
            key = self.user_key = open_backup(self.suite, self.user_id, directory_key,
                                              bytes(st.user_key_backup), passphrase)
        signed = device_is_signed(self.suite, directory_key, self.user_id, self.device_id,
                                  self.identity_key, st.device_signature)
        backup = (seal_backup(self.suite, self.user_id, key, passphrase)
                  if passphrase and not st.user_key_backup else b"")
        if not signed or backup:
            st = await publish(e2.PublishKeys(device_signature=self._signature(key),
                                              user_key_backup=backup))
        self.not_signed = ""
        return st

    async def store_backup(self, passphrase: str, publish: Publish) -> e2.KeyStatus:
        """Seal the user key under ``passphrase`` and store it (replacing an older backup)."""
        if self.user_key is None:
            raise DeviceNotSignedError(self.not_signed or "this device does not hold the user key")
        return await publish(e2.PublishKeys(
            device_signature=self._signature(self.user_key),
            user_key_backup=seal_backup(self.suite, self.user_id, self.user_key, passphrase)))

    def require_signed(self) -> None:
        if self.not_signed:
            raise DeviceNotSignedError(self.not_signed)

    def judge(self, listing: e2.KeyBundles, users: list[str],
              report: Callable[[DeviceChange], None] | None) -> list[e2.DeviceBundle]:
        use, changes = self.trust.evaluate(self.suite, listing, users)
        for c in changes:
            (log.warning if c.change == "unsigned" else log.info)(
                "device %s of %s: %s", c.device_id, c.user_id, c.change)
            if report is not None:
                report(c)
        return use

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"trust": self.trust.to_dict()}
        if self.user_key is not None:
            d["user_key"] = {"public": self.user_key.public_key.hex(),
                             "private": self.user_key.private_key.hex()}
        return d

    def load(self, d: dict[str, Any]) -> None:
        try:
            self.trust = DeviceTrust.from_dict(d.get("trust", {}))
            k = d.get("user_key")
            self.user_key = (UserKey(bytes.fromhex(k["public"]), bytes.fromhex(k["private"]))
                             if k else None)
        except (KeyError, ValueError, TypeError) as exc:
            raise E2EEError(f"the cross-signing state is damaged: {exc}") from exc

"""Which devices of a user a client encrypts to and accepts from (docs/e2ee.md 9.1).

A user's devices are those the user key signed. The user key is pinned on first sight like
a device identity key; a different one later, or none where one was pinned, is a change the
user must accept (:class:`UserKeyChangedError`). A user without a user key (their devices
run a client from before cross-signing) keeps the old rule, trust on first use per device,
and every new device of theirs is reported as ``unverified``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tongxin.crypto.suite import CryptoSuite
from tongxin.e2ee.cross_signing import device_is_signed
from tongxin.e2ee.errors import UserKeyChangedError
from tongxin.proto import e2ee_pb2 as e2

ADDED = "added"
"""A device the user key signed, new to this client."""
UNSIGNED = "unsigned"
"""Listed for a user with a user key but not signed by it: refused."""
UNVERIFIED = "unverified"
"""A new device of a user without a user key: trusted on first use, as before 9.1."""
REMOVED = "removed"
"""No longer listed (or no longer signed)."""


@dataclass(frozen=True)
class DeviceChange:
    user_id: str
    device_id: str
    change: str
    identity_key: bytes


@dataclass
class DeviceTrust:
    user_keys: dict[str, bytes] = field(default_factory=dict)
    """Pinned user keys."""
    devices: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """Accepted devices per user: device id -> identity key."""
    refused: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """Unsigned devices already reported, so each is reported once."""

    def accepted(self, user_id: str, device_id: str) -> bytes | None:
        return self.devices.get(user_id, {}).get(device_id)

    def evaluate(self, suite: CryptoSuite, listing: e2.KeyBundles,
                 users: list[str]) -> tuple[list[e2.DeviceBundle], list[DeviceChange]]:
        """The devices of ``users`` to use, and what changed since the last look. Raises
        :class:`UserKeyChangedError` for a user whose user key is not the pinned one."""
        keys = {u.user_id: bytes(u.user_key) for u in listing.user_keys}
        for user in users:
            pinned, listed = self.user_keys.get(user), keys.get(user, b"")
            if pinned is not None and listed != pinned:
                raise UserKeyChangedError(user, pinned, listed)
        by_user: dict[str, list[e2.DeviceBundle]] = {u: [] for u in users}
        for b in listing.devices:
            by_user.setdefault(b.user_id, []).append(b)
        use: list[e2.DeviceBundle] = []
        changes: list[DeviceChange] = []
        for user, bundles in by_user.items():
            user_key = keys.get(user, b"")
            if user_key and user not in self.user_keys:
                self.user_keys[user] = user_key
            before = self.devices.get(user, {})
            now: dict[str, bytes] = {}
            refused = self.refused.setdefault(user, {})
            for b in bundles:
                ik = bytes(b.identity_key)
                if user_key and not device_is_signed(suite, user_key, user, b.device_id, ik,
                                                     b.device_signature):
                    if refused.get(b.device_id) != ik:
                        refused[b.device_id] = ik
                        changes.append(DeviceChange(user, b.device_id, UNSIGNED, ik))
                    continue
                refused.pop(b.device_id, None)
                now[b.device_id] = ik
                use.append(b)
                if before.get(b.device_id) != ik:
                    changes.append(DeviceChange(user, b.device_id,
                                                ADDED if user_key else UNVERIFIED, ik))
            changes.extend(DeviceChange(user, d, REMOVED, ik) for d, ik in before.items()
                           if d not in now)
            self.devices[user] = now
        return use, changes

    def accept_user_key(self, user_id: str, user_key: bytes) -> None:
        """The user accepted a changed user key (after checking the safety number): pin it;
        the user's devices are judged again on the next look."""
        if user_key:
            self.user_keys[user_id] = user_key
        else:
            self.user_keys.pop(user_id, None)
        self.devices.pop(user_id, None)
        self.refused.pop(user_id, None)

    def to_dict(self) -> dict[str, Any]:
        return {"user_keys": {u: k.hex() for u, k in self.user_keys.items()},
                "devices": {u: {d: k.hex() for d, k in ds.items()}
                            for u, ds in self.devices.items()},
                "refused": {u: {d: k.hex() for d, k in ds.items()}
                            for u, ds in self.refused.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceTrust:
        def devs(m: dict[str, dict[str, str]]) -> dict[str, dict[str, bytes]]:
            return {u: {dv: bytes.fromhex(k) for dv, k in ds.items()} for u, ds in m.items()}
        return cls({u: bytes.fromhex(k) for u, k in d.get("user_keys", {}).items()},
                   devs(d.get("devices", {})), devs(d.get("refused", {})))

"""Identity pinning (docs/e2ee.md section 9): trust on first use, then any change of a
device's identity key is refused until the user accepts it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from tongxin.crypto.suite import CryptoSuite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee.errors import IdentityChangedError

IdentityCallback = Callable[[IdentityChangedError], None]


class IdentityStore:
    def __init__(self) -> None:
        self._pins: dict[tuple[str, str], bytes] = {}
        self.on_change: IdentityCallback | None = None

    def pinned(self, user_id: str, device_id: str) -> bytes | None:
        return self._pins.get((user_id, device_id))

    def check(self, user_id: str, device_id: str, identity_key: bytes, pin: bool = True) -> None:
        """Pin on first sight (unless ``pin`` is false: the caller pins once the message
        that carried the key has opened); raise :class:`IdentityChangedError` (after
        calling the callback) when ``identity_key`` differs from the pinned key."""
        old = self._pins.get((user_id, device_id))
        if old is None:
            if pin:
                self._pins[(user_id, device_id)] = bytes(identity_key)
            return
        if old != identity_key:
            err = IdentityChangedError(user_id, device_id, old, bytes(identity_key))
            if self.on_change is not None:
                self.on_change(err)
            raise err

    def accept(self, user_id: str, device_id: str, identity_key: bytes) -> None:
        """The user verified the new key (safety number): pin it."""
        self._pins[(user_id, device_id)] = bytes(identity_key)

    def user_keys(self, user_id: str) -> list[bytes]:
        return [k for (u, _), k in self._pins.items() if u == user_id]

    def safety_number(self, suite: CryptoSuite, own_user: str, own_keys: list[bytes],
                      peer_user: str) -> str:
        return enc.safety_number(suite, own_user, own_keys, peer_user, self.user_keys(peer_user))

    def to_dict(self) -> dict[str, Any]:
        return {"pins": [[u, d, base64.b64encode(k).decode()]
                         for (u, d), k in self._pins.items()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IdentityStore:
        store = cls()
        for u, dev, k in d["pins"]:
            store._pins[(u, dev)] = base64.b64decode(k)
        return store

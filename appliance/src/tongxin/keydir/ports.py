"""What the key directory needs from storage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tongxin.store.ports import StoreError


@dataclass(frozen=True)
class DeviceRow:
    user_id: str
    device_id: str
    suite: str
    identity_key: bytes
    spk_id: int
    spk_public: bytes
    spk_signature: bytes
    updated_at: int


@dataclass(frozen=True)
class PreKeyRow:
    key_id: int
    public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class UserKeyRow:
    """A user's cross-signing key (docs/e2ee.md 9.1) and the sealed backup of its private
    half, which the server cannot open."""

    user_id: str
    suite: str
    user_key: bytes
    backup: bytes
    updated_at: int


@dataclass(frozen=True)
class DeviceSignatureRow:
    """The user key's signature of one device's identity key (kept with the identity key it
    signed, so a device that changes its identity key is unsigned until signed again)."""

    user_id: str
    device_id: str
    identity_key: bytes
    signature: bytes


class DuplicatePreKey(StoreError):
    """A one-time prekey id is already stored for the device. A StoreError so that the
    MySQL store rolls the transaction back and reuses the connection."""


class TooManyPreKeys(StoreError):
    """Storing the one-time prekeys would exceed the per-device cap."""


class KeyDirStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def get_device(self, user_id: str, device_id: str) -> DeviceRow | None: ...

    async def put_device(self, row: DeviceRow, new_identity: bool) -> None:
        """Insert or replace the device entry; ``new_identity`` also deletes its one-time
        prekeys (they were signed by the old identity)."""
        ...

    async def add_one_time(self, user_id: str, device_id: str, keys: list[PreKeyRow],
                           cap: int) -> int:
        """Store ``keys`` (all or none); the number stored afterwards."""
        ...

    async def count_one_time(self, user_id: str, device_id: str) -> int: ...
    async def devices(self, user_ids: list[str], per_user: int) -> list[DeviceRow]: ...

    async def take_one_time(self, user_id: str, device_id: str) -> PreKeyRow | None:
        """Delete and return the device's lowest-id one-time prekey."""
        ...

    async def user_keys(self, user_ids: list[str]) -> list[UserKeyRow]: ...

    async def insert_user_key(self, row: UserKeyRow) -> bool:
        """Store the user's key unless one is stored already; whether this one was."""
        ...

    async def set_user_key_backup(self, user_id: str, user_key: bytes, backup: bytes,
                                  updated_at: int) -> None:
        """Replace the backup of the stored user key ``user_key`` (nothing if it differs)."""
        ...

    async def put_device_signature(self, row: DeviceSignatureRow) -> None: ...
    async def device_signatures(self, user_ids: list[str]) -> list[DeviceSignatureRow]: ...

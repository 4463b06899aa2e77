"""The presence port. In-memory by default; Redis Cluster in production."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    user_id: str
    online: bool
    devices: int
    last_seen_ms: int


class PresenceRegistry(Protocol):
    async def device_online(self, user_id: str, device_id: str, node_id: str) -> bool:
        """Record a connected device; True if the user was offline before."""
        ...

    async def device_offline(self, user_id: str, device_id: str, node_id: str) -> bool:
        """Forget a device; True if the user has no device left."""
        ...

    async def status(self, user_ids: list[str]) -> list[PresenceEntry]: ...

    async def nodes_of(self, user_ids: list[str]) -> dict[str, list[str]]:
        """Route: node id -> those of ``user_ids`` with a device connected there."""
        ...

    async def devices_of(self, user_ids: list[str]) -> dict[str, dict[str, str]]:
        """Route by device: each of ``user_ids`` -> {device id: node id} of its devices
        connected to live nodes ({} when it has none).

        Never older than the call: a device whose ``device_online`` returned before
        this call began is in the answer. The Kafka router relies on it: a device
        that got AUTH_OK gets every message published after, and the router asks
        only after the message was published. An implementation may cache, but
        only in a way that keeps this (see RedisPresence.devices_of).
        """
        ...

    async def live_nodes(self) -> list[str]: ...
    async def start(self, node_id: str) -> None: ...
    async def close(self) -> None: ...

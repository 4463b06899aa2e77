"""Embedded default presence: a dict, valid for one node."""

from __future__ import annotations

from tongxin.clock import now_ms
from tongxin.presence.ports import PresenceEntry


class MemoryPresence:
    def __init__(self) -> None:
        self._devices: dict[str, set[tuple[str, str]]] = {}
        self._last_seen: dict[str, int] = {}
        self._node_id = ""

    async def device_online(self, user_id: str, device_id: str, node_id: str) -> bool:
        devices = self._devices.setdefault(user_id, set())
        was_offline = not devices
        devices.add((node_id, device_id))
        self._last_seen[user_id] = now_ms()
        return was_offline

    async def device_offline(self, user_id: str, device_id: str, node_id: str) -> bool:
        devices = self._devices.get(user_id)
        if devices is None:
            return False
        devices.discard((node_id, device_id))
        self._last_seen[user_id] = now_ms()
        if devices:
            return False
        del self._devices[user_id]
        return True

    async def status(self, user_ids: list[str]) -> list[PresenceEntry]:
        return [
            PresenceEntry(u, bool(self._devices.get(u)), len(self._devices.get(u, ())),
                          self._last_seen.get(u, 0))
            for u in user_ids
        ]

    async def nodes_of(self, user_ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for u in user_ids:
            for node in {n for n, _ in self._devices.get(u, ())}:
                out.setdefault(node, []).append(u)
        return out

    async def devices_of(self, user_ids: list[str]) -> dict[str, dict[str, str]]:
        return {u: {d: n for n, d in self._devices.get(u, ())} for u in user_ids}

    async def live_nodes(self) -> list[str]:
        return [self._node_id] if self._node_id else []

    async def start(self, node_id: str) -> None:
        self._node_id = node_id

    async def close(self) -> None:
        self._devices.clear()

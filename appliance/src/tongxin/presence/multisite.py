"""Presence across sites: this site's registry, plus the other serving sites'
Redis Clusters read for what users are shown (``presence.remote_redis_nodes``).

Each site keeps its own Redis Cluster. Devices and node heartbeats are
written only to the local one, and routing (``nodes_of``, ``live_nodes``)
reads only the local one: a site's routers deliver to that site's nodes, and
deliveries reach the other site through its own routers (MirrorMaker 2, see
delivery/kafka_bus.py). What a user sees of other users, the PRESENCE_SUB
answer (online, device count, last seen), is merged from every site, since a
colleague connected through the other data centre is online too.

A remote read is bounded (``REMOTE_TIMEOUT``) and guarded by a breaker that
stays open until a background probe gets an answer again, so a dead or
cut-off site costs one timeout, once, and nothing on later requests. While
a site cannot be read, its devices are not counted: a user whose only devices
were there shows offline (last seen from the sites that answer) until those
devices reconnect through a site that answers, where they show online.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from tongxin.clock import now_ms
from tongxin.presence.ports import PresenceEntry, PresenceRegistry
from tongxin.presence.redis_presence import dev_key, misconfigured, nodes_key, seen_key
from tongxin.redisutil import FAILURES, Breaker, bounded_cluster

log = logging.getLogger("tongxin.presence")

#: Bound of one remote read. Serving sites are in the same city (a round trip
#: of about a millisecond); a 1,000-user PRESENCE_SUB is one pipelined batch.
REMOTE_TIMEOUT = 0.5
#: How often a site that failed is asked again, in the background.
PROBE_INTERVAL = 2.0
#: Users per pipeline, as in RedisPresence.
CHUNK = 1000


class RemotePresence:
    """Read-only view of another site's presence keys (same layout and prefix).

    It never writes there: stale devices of a dead node are that site's
    nodes' to sweep; here they are only left out, as RedisPresence does.
    """

    def __init__(self, nodes: str, prefix: str, node_ttl: float, *,
                 timeout: float = REMOTE_TIMEOUT, probe_interval: float = PROBE_INTERVAL,
                 on_fallback: Callable[[], None] | None = None, tls_ca_file: str = "") -> None:
        self.nodes = nodes
        self.prefix = prefix
        self.node_ttl_ms = int(node_ttl * 1000)
        self.timeout = timeout
        self.probe_interval = probe_interval
        # An infinite pause: only the probe (or a request already under way)
        # closes the breaker, so requests never wait on a site that failed.
        self.breaker = Breaker(f"presence of site {nodes}", log, float("inf"), on_fallback,
                               explain=lambda exc: misconfigured(exc, nodes, tls_ca_file))
        self.redis = bounded_cluster(nodes, timeout / 2, retries=1, tls_ca_file=tls_ca_file)
        self._probe: asyncio.Task[None] | None = None

    async def status(self, user_ids: Sequence[str]) -> dict[str, PresenceEntry] | None:
        """Entries of ``user_ids`` at that site, or None when it cannot say now."""
        if not user_ids:
            return {}
        if not self.breaker.closed():
            return None
        try:
            out = await asyncio.wait_for(self._read(user_ids), self.timeout)
        except FAILURES as exc:
            self.breaker.failed(exc)
            self._start_probe()
            return None
        self.breaker.ok()
        return out

    async def _read(self, user_ids: Sequence[str]) -> dict[str, PresenceEntry]:
        live = set(await self.redis.zrangebyscore(nodes_key(self.prefix),
                                                  now_ms() - self.node_ttl_ms, "+inf"))
        out: dict[str, PresenceEntry] = {}
        for start in range(0, len(user_ids), CHUNK):
            chunk = user_ids[start:start + CHUNK]
            pipe = self.redis.pipeline()
            for u in chunk:
                pipe.hgetall(dev_key(self.prefix, u))
                pipe.get(seen_key(self.prefix, u))
            replies = await pipe.execute()
            for i, u in enumerate(chunk):
                devs: dict[str, str] = replies[2 * i]
                count = sum(1 for n in devs.values() if n in live)
                out[u] = PresenceEntry(u, count > 0, count, int(replies[2 * i + 1] or 0))
        return out

    def _start_probe(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while self.breaker.down:
            await asyncio.sleep(self.probe_interval)
            try:
                await asyncio.wait_for(self.redis.zcard(nodes_key(self.prefix)), self.timeout)
            except FAILURES:
                continue
            self.breaker.ok()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        with contextlib.suppress(*FAILURES):
            await self.redis.aclose()


def merge(local: Sequence[PresenceEntry],
          remote: Sequence[dict[str, PresenceEntry] | None]) -> list[PresenceEntry]:
    """One entry per user: online anywhere, devices everywhere, the latest last seen."""
    out = []
    for e in local:
        online, devices, seen = e.online, e.devices, e.last_seen_ms
        for site in remote:
            r = site.get(e.user_id) if site else None
            if r is not None:
                online = online or r.online
                devices += r.devices
                seen = max(seen, r.last_seen_ms)
        out.append(PresenceEntry(e.user_id, online, devices, seen))
    return out


class SitesPresence:
    """The local registry for writes and routing; every site for status."""

    def __init__(self, local: PresenceRegistry, remotes: Sequence[RemotePresence]) -> None:
        self.local = local
        self.remotes = list(remotes)

    async def _online_elsewhere(self, user_id: str) -> bool:
        answers = await asyncio.gather(*(r.status([user_id]) for r in self.remotes))
        return any(a is not None and a[user_id].online for a in answers)

    # "Went online / offline" decides whether watchers get a PRESENCE update:
    # a user still connected through another site did not go offline. (Two
    # sites' last devices leaving at the same instant may each see the other
    # and send none; watchers then correct on their next PRESENCE_SUB.)

    async def device_online(self, user_id: str, device_id: str, node_id: str) -> bool:
        if not await self.local.device_online(user_id, device_id, node_id):
            return False
        return not await self._online_elsewhere(user_id)

    async def device_offline(self, user_id: str, device_id: str, node_id: str) -> bool:
        if not await self.local.device_offline(user_id, device_id, node_id):
            return False
        return not await self._online_elsewhere(user_id)

    async def status(self, user_ids: list[str]) -> list[PresenceEntry]:
        # The remote reads run while the local one does (gather starts them now).
        remote = asyncio.gather(*(r.status(user_ids) for r in self.remotes))
        try:
            local = await self.local.status(user_ids)
        except BaseException:
            remote.cancel()
            raise
        return merge(local, await remote)

    async def nodes_of(self, user_ids: list[str]) -> dict[str, list[str]]:
        return await self.local.nodes_of(user_ids)

    async def devices_of(self, user_ids: list[str]) -> dict[str, dict[str, str]]:
        # Routing is per site, as nodes_of.
        return await self.local.devices_of(user_ids)

    async def live_nodes(self) -> list[str]:
        return await self.local.live_nodes()

    async def start(self, node_id: str) -> None:
        # Remote clients connect on first use: a site that is down when this
        # node starts must not stop it from starting.
        await self.local.start(node_id)

    async def close(self) -> None:
        for r in self.remotes:
            await r.close()
        await self.local.close()

"""Presence and device routing in Redis Cluster (seed §4: 会话状态用Redis Cluster).

Keys (``{user}`` is a hash tag, so a user's keys share one slot):

* ``<prefix>:{<user_id>}:dev``  hash device_id -> node_id
* ``<prefix>:{<user_id>}:seen`` last seen, epoch ms
* ``<prefix>:nodes``            sorted set node_id -> last heartbeat ms

A node that dies without cleaning up (kill -9) stops heartbeating; its
devices are then ignored by every query and swept by the survivors, so a
user does not stay "online" through a crashed node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tongxin.clock import now_ms
from tongxin.presence.ports import PresenceEntry

log = logging.getLogger("tongxin.presence")


def dev_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:{{{user_id}}}:dev"


def seen_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:{{{user_id}}}:seen"


def nodes_key(prefix: str) -> str:
    return f"{prefix}:nodes"


def parse_nodes(spec: str) -> list[ClusterNode]:
    nodes = []
    for part in spec.split(","):
        host, _, port = part.strip().rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port)))
    return nodes


class RedisPresence:
    def __init__(self, nodes: str, prefix: str = "tx", node_ttl: float = 15.0) -> None:
        self.prefix = prefix
        self.node_ttl_ms = int(node_ttl * 1000)
        # Retries ride out a primary failover: MOVED/connection errors make
        # the client refresh the slot map and try again.
        self.redis = RedisCluster(
            startup_nodes=parse_nodes(nodes), decode_responses=True,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 8),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            socket_timeout=2.0, socket_connect_timeout=2.0,
        )
        self.node_id = ""
        self._beat: asyncio.Task[None] | None = None
        # The devices connected to this node, to write again after Redis was
        # away: while this node's heartbeat was stale, any reader may have
        # swept their entries as a dead node's, and a restarted Redis may
        # have lost them (or let them expire) altogether.
        self._local: set[tuple[str, str]] = set()
        self._last_beat = 0.0
        self._reregister_beats = 0

    def _dev(self, user_id: str) -> str:
        return dev_key(self.prefix, user_id)

    def _seen(self, user_id: str) -> str:
        return seen_key(self.prefix, user_id)

    @property
    def _nodes(self) -> str:
        return nodes_key(self.prefix)

    async def start(self, node_id: str) -> None:
        self.node_id = node_id
        await self.redis.initialize()
        await self._heartbeat_once()
        self._beat = asyncio.create_task(self._heartbeat())

    async def _heartbeat_once(self) -> None:
        await self.redis.zadd(self._nodes, {self.node_id: now_ms()})
        now = time.monotonic()
        # A beat later than the TTL (Redis away, or this process stalled)
        # means others saw this node as dead in between.
        if self._last_beat and now - self._last_beat > self.node_ttl_ms / 1000:
            self._lapsed()
        self._last_beat = now
        if self._reregister_beats:
            await self._reregister()
            self._reregister_beats -= 1

    def _lapsed(self) -> None:
        # Two beats: a reader that saw the old live set may sweep just after
        # the first re-registration.
        self._reregister_beats = 2

    async def _reregister(self) -> None:
        local = sorted(self._local)
        for start in range(0, len(local), 1000):
            pipe = self.redis.pipeline()
            for user_id, device_id in local[start:start + 1000]:
                pipe.hset(self._dev(user_id), device_id, self.node_id)
            await pipe.execute()
        if local:
            log.info("presence: %d devices of this node registered again after Redis was away",
                     len(local))

    async def _heartbeat(self) -> None:
        interval = self.node_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat_once()
                # Forget nodes dead for a long time so the set stays small.
                await self.redis.zremrangebyscore(self._nodes, 0, now_ms() - 20 * self.node_ttl_ms)
            except Exception as exc:
                # Not only RedisError: after a whole cluster restarts, the
                # cluster client can raise others while it relearns the slot
                # map. The heartbeat must outlive every one of them, or this
                # node's users stay offline for good.
                self._lapsed()
                log.warning("presence heartbeat failed: %s: %s", type(exc).__name__, exc)

    async def live_nodes(self) -> list[str]:
        nodes = await self.redis.zrangebyscore(self._nodes, now_ms() - self.node_ttl_ms, "+inf")
        return [str(n) for n in nodes]

    async def device_online(self, user_id: str, device_id: str, node_id: str) -> bool:
        live = set(await self.live_nodes())
        before = await self.redis.hgetall(self._dev(user_id))
        await self.redis.hset(self._dev(user_id), device_id, node_id)
        if node_id == self.node_id:
            self._local.add((user_id, device_id))
        await self.redis.set(self._seen(user_id), now_ms())
        return not any(n in live for d, n in before.items() if d != device_id)

    async def device_offline(self, user_id: str, device_id: str, node_id: str) -> bool:
        key = self._dev(user_id)
        if node_id == self.node_id:
            self._local.discard((user_id, device_id))
        # Only remove the entry if it still points at this node: the device
        # may already have reconnected through another one.
        if await self.redis.hget(key, device_id) == node_id:
            await self.redis.hdel(key, device_id)
        await self.redis.set(self._seen(user_id), now_ms())
        live = set(await self.live_nodes())
        rest = await self.redis.hgetall(key)
        return not any(n in live for n in rest.values())

    async def _devices(self, user_ids: list[str]) -> dict[str, dict[str, str]]:
        live = set(await self.live_nodes())
        out: dict[str, dict[str, str]] = {}
        # Pipelined in chunks: a 10,000-member group must not cost 10,000
        # sequential round trips.
        for start in range(0, len(user_ids), 1000):
            chunk = user_ids[start:start + 1000]
            pipe = self.redis.pipeline()
            for u in chunk:
                pipe.hgetall(self._dev(u))
            for u, devs in zip(chunk, await pipe.execute(), strict=True):
                stale = [d for d, n in devs.items() if n not in live]
                if stale:
                    with contextlib.suppress(RedisError, RedisClusterException):
                        await self.redis.hdel(self._dev(u), *stale)
                out[u] = {d: n for d, n in devs.items() if n in live}
        return out

    async def status(self, user_ids: list[str]) -> list[PresenceEntry]:
        devices = await self._devices(user_ids)
        pipe = self.redis.pipeline()
        for u in user_ids:
            pipe.get(self._seen(u))
        seen = await pipe.execute() if user_ids else []
        return [PresenceEntry(u, bool(devices[u]), len(devices[u]), int(s or 0))
                for u, s in zip(user_ids, seen, strict=True)]

    async def nodes_of(self, user_ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for u, devs in (await self._devices(user_ids)).items():
            for node in set(devs.values()):
                out.setdefault(node, []).append(u)
        return out

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        with contextlib.suppress(RedisError, RedisClusterException):
            await self.redis.zrem(self._nodes, self.node_id)
        await self.redis.aclose()

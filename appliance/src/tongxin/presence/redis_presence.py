"""Presence and device routing in Redis Cluster (seed §4: 会话状态用Redis Cluster).

Keys (``{user}`` is a hash tag, so a user's keys share one slot):

* ``<prefix>:{<user_id>}:dev``  hash device_id -> node_id
* ``<prefix>:{<user_id>}:seen`` last seen, epoch ms
* ``<prefix>:nodes``            sorted set node_id -> last heartbeat ms
* ``<prefix>:routes``           a random token, set anew after every change of
  where devices are (the version of the router's device cache)

A node that dies without cleaning up (kill -9) stops heartbeating; its
devices are then ignored by every query and swept by the survivors, so a
user does not stay "online" through a crashed node.

The live-node set is cached for a moment (``LIVE_CACHE_SECONDS``), so that a
burst of logins does not read it once per login (see ``_live_for``), and the
Kafka router's device look-ups are cached while ``<prefix>:routes`` does not
change (see ``devices_of``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tongxin.clock import now_ms
from tongxin.config import ConfigError
from tongxin.presence.ports import PresenceEntry
from tongxin.redis_gate import GatedRedisCluster
from tongxin.store.ports import Unavailable
from tongxin.tls_errors import cert_verify_reason

log = logging.getLogger("tongxin.presence")

#: At most this old a live-node set may be taken as proof that a node is live.
LIVE_CACHE_SECONDS = 1.0

#: The router's device cache is dropped at least this often, even while the
#: routes version stays the same: a backstop for a version write that a Redis
#: failover lost (see devices_of).
ROUTES_CACHE_SECONDS = 2.0

#: Failed removals kept for another try (device_offline), at most: past this,
#: an outage's leftovers wait for their device's next connection.
UNREMOVED_MAX = 100_000

#: What a failed call may raise (as tongxin.redisutil.FAILURES, which imports this module).
_FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, TimeoutError,
                                              OSError)


def dev_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:{{{user_id}}}:dev"


def seen_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:{{{user_id}}}:seen"


def nodes_key(prefix: str) -> str:
    return f"{prefix}:nodes"


def routes_key(prefix: str) -> str:
    return f"{prefix}:routes"


#: The environment variable holding the Redis password (requirepass): the
#: same for this site's cluster and the other sites' (one per installation;
#: role appliance writes it to tongxin.env). Unset or empty: no AUTH.
PASSWORD_ENV = "TONGXIN_REDIS_PASSWORD"


def redis_password() -> str | None:
    """The password every Redis client of this node authenticates with, if any."""
    return os.environ.get(PASSWORD_ENV) or None


def auth_failure(exc: BaseException, nodes: str) -> ConfigError | None:
    """A clear configuration error when ``exc`` (or what caused it) is Redis
    refusing this node's credentials; None for any other failure. The cluster
    client reports it as "cannot be connected", caused by the
    AuthenticationError of each startup node."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, RedisAuthenticationError):
        text = str(seen)
        if text.startswith(("NOAUTH", "WRONGPASS")):
            break
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    if redis_password() is None:
        return ConfigError(f"presence.redis_nodes: Redis ({nodes}) requires a password and "
                           f"${PASSWORD_ENV} is not set (role appliance writes it to "
                           "tongxin.env from redis_password)")
    # The driver's text (e.g. "invalid username-password pair"), never the password.
    return ConfigError(f"presence.redis_nodes: Redis ({nodes}) refused the password in "
                       f"${PASSWORD_ENV} ({seen}): it must be the redis role's redis_password")


#: The configuration key of the CA that Redis's certificates are verified against.
TLS_CA_FIELD = "presence.redis_tls_ca_file"


def tls_kwargs(ca_file: str) -> dict[str, Any]:
    """RedisCluster keyword arguments for Redis over TLS, the one place every
    Redis client of the node (presence, the other sites' presence, rate limits,
    revocations) takes them from. ``ca_file`` empty: plaintext, no arguments.
    Otherwise TLS, the server's certificate verified against ``ca_file`` (PEM),
    and its name checked against the address connected to (the IP address an
    instance announces, which role redis puts in the certificate's SANs). No
    client certificate: Redis runs with tls-auth-clients no and clients
    authenticate with the password. (redis-py builds the context with
    ssl.create_default_context(), so the system's CAs are trusted as well.)"""
    if not ca_file:
        return {}
    return {"ssl": True, "ssl_ca_certs": ca_file, "ssl_cert_reqs": "required",
            "ssl_check_hostname": True}


def tls_failure(exc: BaseException, nodes: str, ca_file: str) -> ConfigError | None:
    """A clear configuration error when ``exc`` (or what caused it) is Redis's
    certificate failing verification: not signed by the CA in ``ca_file``, or
    not naming the address connected to. None for any other failure (a
    TLS client at a plaintext Redis only times out: an outage, as it looks)."""
    reason = cert_verify_reason(exc)
    if reason is None:
        return None
    return ConfigError(f"{TLS_CA_FIELD}: the certificate of Redis ({nodes}) is not verified "
                       f"by {ca_file or 'the system CAs'} ({reason}): it must be the CA "
                       "that signed role redis's certificates (redis_tls_ca_file), and "
                       "each certificate must name the address the instance announces")


def misconfigured(exc: BaseException, nodes: str, ca_file: str = "") -> ConfigError | None:
    """auth_failure or tls_failure: this node's settings, not an outage."""
    return auth_failure(exc, nodes) or tls_failure(exc, nodes, ca_file)


def parse_nodes(spec: str) -> list[ClusterNode]:
    nodes = []
    for part in spec.split(","):
        host, _, port = part.strip().rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port)))
    return nodes


class RedisPresence:
    def __init__(self, nodes: str, prefix: str = "tx", node_ttl: float = 15.0, *,
                 tls_ca_file: str = "") -> None:
        self.prefix = prefix
        self.node_ttl_ms = int(node_ttl * 1000)
        # Retries ride out a primary failover: MOVED/connection errors make
        # the client refresh the slot map and try again. Gated: a burst of
        # logins or of closes waits for a connection instead of failing
        # (tongxin.redis_gate).
        self.nodes = nodes
        self.tls_ca_file = tls_ca_file
        self.redis: RedisCluster = GatedRedisCluster(
            startup_nodes=parse_nodes(nodes), decode_responses=True, password=redis_password(),
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 8),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            socket_timeout=2.0, socket_connect_timeout=2.0, **tls_kwargs(tls_ca_file),
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
        # Devices that left this node while Redis failed to remove their
        # entries (device_offline): removed again on the next heartbeat.
        self._unremoved: set[tuple[str, str]] = set()
        self._again: asyncio.Task[None] | None = None
        self._live_cache: frozenset[str] = frozenset()
        self._live_cache_until = 0.0
        self.live_reads = 0  # reads of the live-node set (tests count them)
        # devices_of's cache: user -> {device: node}, valid while the routes
        # version read before it was filled is still the one in Redis.
        self._routes: dict[str, dict[str, str]] = {}
        self._routes_version: str | None = None
        self._routes_until = 0.0

    def _dev(self, user_id: str) -> str:
        return dev_key(self.prefix, user_id)

    def _seen(self, user_id: str) -> str:
        return seen_key(self.prefix, user_id)

    @property
    def _nodes(self) -> str:
        return nodes_key(self.prefix)

    async def _routes_changed(self) -> None:
        """Give the routes a new version, after a change of where devices are is
        written (never before: see devices_of). A random token, not a counter: a
        Redis that lost the key and counted again could give back the very
        number a cache holds."""
        await self.redis.set(routes_key(self.prefix), os.urandom(8).hex())

    async def start(self, node_id: str) -> None:
        self.node_id = node_id
        try:
            await self.redis.initialize()
        except _FAILURES as exc:
            # A wrong or missing password, or a certificate the CA file does not
            # verify, is a configuration error (one line at start, exit 2), not
            # an outage to retry.
            refused = misconfigured(exc, self.nodes, self.tls_ca_file)
            if refused is not None:
                raise refused from None
            raise
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
            await self._routes_changed()
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
                if self._unremoved and (self._again is None or self._again.done()):
                    self._again = asyncio.create_task(self._remove_again())
            except Exception as exc:
                # Not only RedisError: after a whole cluster restarts, the
                # cluster client can raise others while it relearns the slot
                # map. The heartbeat must outlive every one of them, or this
                # node's users stay offline for good.
                self._lapsed()
                log.warning("presence heartbeat failed: %s: %s", type(exc).__name__, exc)

    async def live_nodes(self) -> list[str]:
        """The nodes whose heartbeat is younger than node_ttl, read now."""
        started = time.monotonic()
        self.live_reads += 1
        nodes = [str(n) for n in
                 await self.redis.zrangebyscore(self._nodes, now_ms() - self.node_ttl_ms, "+inf")]
        self._live_cache = frozenset(nodes)
        self._live_cache_until = started + LIVE_CACHE_SECONDS
        return nodes

    async def _live_for(self, nodes: Iterable[str]) -> frozenset[str]:
        """The live nodes, to judge ``nodes`` by: the cached set if it names every one
        of them and is younger than LIVE_CACHE_SECONDS, else read now.

        Why a cached answer is as correct as a fresh one: liveness is already
        a heartbeat younger than node_ttl (15 s) written every node_ttl / 3, so a
        node that died counts as live for up to node_ttl in any case; a set up to
        one second old stretches that to node_ttl + 1 s. The cache is never
        trusted for absence: a node it does not name (one that started a moment
        ago) makes a fresh read, so no device of a live node is swept as a dead
        node's, and no user is announced offline while connected through it.
        A login burst then costs no read of the node set: a user's other
        devices are on the few nodes the cache names.
        """
        wanted = set(nodes)
        if time.monotonic() < self._live_cache_until and wanted <= self._live_cache:
            return self._live_cache
        if not wanted:
            return frozenset()
        await self.live_nodes()
        return self._live_cache

    async def device_online(self, user_id: str, device_id: str, node_id: str) -> bool:
        """Raises Unavailable when Redis fails (also a spent client pool): a login
        answers UNAVAILABLE then, with a retry hint."""
        try:
            # One round trip: the keys share a slot ({user}), and the pipeline
            # runs in order, so ``before`` is the hash as it was before the write.
            pipe = self.redis.pipeline()
            pipe.hgetall(self._dev(user_id))
            pipe.hset(self._dev(user_id), device_id, node_id)
            pipe.set(self._seen(user_id), now_ms())
            before, _, _ = await pipe.execute()
            # After the write is acknowledged, before AUTH_OK (the caller
            # answers it once this returns): see devices_of.
            await self._routes_changed()
            others = {n for d, n in before.items() if d != device_id}
            live = await self._live_for(others)
        except _FAILURES as exc:
            raise Unavailable(f"presence: Redis did not answer ({type(exc).__name__}: {exc})") \
                from exc
        if node_id == self.node_id:
            self._local.add((user_id, device_id))
        return not others & live

    async def device_offline(self, user_id: str, device_id: str, node_id: str) -> bool:
        """Raises Unavailable when Redis fails. The removal is then made again on
        this node's next heartbeats that reach Redis (``_remove_again``): an entry
        left behind would route this user's messages here and show them online
        for as long as this node lives."""
        if node_id == self.node_id:
            self._local.discard((user_id, device_id))
        try:
            return await self._remove(user_id, device_id, node_id)
        except _FAILURES as exc:
            if node_id == self.node_id and len(self._unremoved) < UNREMOVED_MAX:
                self._unremoved.add((user_id, device_id))
            raise Unavailable(f"presence: Redis did not answer ({type(exc).__name__}: {exc})") \
                from exc

    async def _remove(self, user_id: str, device_id: str, node_id: str) -> bool:
        key = self._dev(user_id)
        # Only remove the entry if it still points at this node: the device
        # may already have reconnected through another one.
        if await self.redis.hget(key, device_id) == node_id:
            await self.redis.hdel(key, device_id)
            # Only for fewer routed copies: a cache still naming the device
            # routes one its node pushes to nobody, and misses no push.
            await self._routes_changed()
        await self.redis.set(self._seen(user_id), now_ms())
        rest = [str(n) for n in (await self.redis.hgetall(key)).values()]
        live = await self._live_for(rest)
        return not any(n in live for n in rest)

    async def _remove_again(self) -> None:
        """The removals device_offline could not make, unless the device is
        connected here again, in pipelined chunks. Watchers are not told (they
        were not when it failed either): their next PRESENCE_SUB reads the
        truth. Runs beside the heartbeat, never in it: thousands of removals
        must not make this node's beat late."""
        try:
            pending = sorted(self._unremoved)
            for start in range(0, len(pending), 500):
                chunk = pending[start:start + 500]
                pipe = self.redis.pipeline()
                for user_id, device_id in chunk:
                    pipe.hget(self._dev(user_id), device_id)
                owners = await pipe.execute()
                gone = [(u, d) for (u, d), node in zip(chunk, owners, strict=True)
                        if node == self.node_id and (u, d) not in self._local]
                if gone:
                    pipe = self.redis.pipeline()
                    for user_id, device_id in gone:
                        pipe.hdel(self._dev(user_id), device_id)
                        pipe.set(self._seen(user_id), now_ms())
                    await pipe.execute()
                    await self._routes_changed()
                self._unremoved.difference_update(chunk)
        except Exception as exc:
            # Any error, as in the heartbeat: what is left is tried on the next beat.
            log.warning("presence: %d removals still to make after Redis failed: %s: %s",
                        len(self._unremoved), type(exc).__name__, exc)

    async def _devices(self, user_ids: list[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        # Pipelined in chunks: a 10,000-member group must not cost 10,000
        # sequential round trips.
        for start in range(0, len(user_ids), 1000):
            chunk = user_ids[start:start + 1000]
            pipe = self.redis.pipeline()
            for u in chunk:
                pipe.hgetall(self._dev(u))
            found.update(zip(chunk, await pipe.execute(), strict=True))
        live = await self._live_for({n for devs in found.values() for n in devs.values()})
        out: dict[str, dict[str, str]] = {}
        for u, devs in found.items():
            stale = [d for d, n in devs.items() if n not in live]
            if stale:
                with contextlib.suppress(RedisError, RedisClusterException):
                    await self.redis.hdel(self._dev(u), *stale)
            out[u] = {d: n for d, n in devs.items() if n in live}
        return out

    async def status(self, user_ids: list[str]) -> list[PresenceEntry]:
        """Raises Unavailable when Redis fails: a PRESENCE_SUB is then answered
        UNAVAILABLE with a retry hint, not INTERNAL (a primary failing over is
        the usual cause, seconds long)."""
        try:
            devices = await self._devices(user_ids)
            pipe = self.redis.pipeline()
            for u in user_ids:
                pipe.get(self._seen(u))
            seen = await pipe.execute() if user_ids else []
        except _FAILURES as exc:
            raise Unavailable(f"presence: Redis did not answer ({type(exc).__name__}: {exc})") \
                from exc
        return [PresenceEntry(u, bool(devices[u]), len(devices[u]), int(s or 0))
                for u, s in zip(user_ids, seen, strict=True)]

    async def nodes_of(self, user_ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for u, devs in (await self._devices(user_ids)).items():
            for node in set(devs.values()):
                out.setdefault(node, []).append(u)
        return out

    async def devices_of(self, user_ids: list[str]) -> dict[str, dict[str, str]]:
        """As ``_devices``, from a cache while the routes version has not changed:
        one GET per call instead of one HGETALL per user (the router asks for
        each batch's recipients, mostly the same users again).

        Why the cache never leaves out a device that got AUTH_OK before the
        message being routed was published (the port's promise):
        ``device_online`` writes the device, then, once that write is
        acknowledged, sets the version to a new random token, and only then
        returns, after which AUTH_OK is sent. The router calls this after the
        message was published (it consumed it), so the GET below, which runs
        first, sees that token or a later one. Every cached entry was read
        after the GET of the version it is filed under, so an entry filed
        under the token the device's login set was read after the device was
        written; an entry filed under an earlier token is dropped here because
        the version differs. The order of the two writes is what makes this
        hold: the version first would let a read between them file an entry
        without the device under the new token (the test
        ``test_a_router_read_at_any_point_of_a_login_sees_the_device`` pauses
        a login before each of its round trips to catch that).

        What it relies on: reads from the primaries (this client never reads
        replicas) and a version that does not go back. A failover that loses
        the last version write could give back an older token that a cache
        holds; ``ROUTES_CACHE_SECONDS`` bounds how long such a cache lives.
        (The same failover can lose the device's own entry, which nothing
        cached or not brings back before the device reconnects.)
        A device that went away or a node that died stays in the cache until
        the next change or expiry: a routed copy pushed to nobody, no loss.
        """
        got = await self.redis.get(routes_key(self.prefix))
        version = None if got is None else str(got)  # decode_responses: a str already
        now = time.monotonic()
        if version is None or version != self._routes_version or now >= self._routes_until:
            self._routes = {}
            self._routes_version = version
            self._routes_until = now + ROUTES_CACHE_SECONDS
        # The cache as of the version read above. A call that began later and
        # saw a newer version replaces self._routes while this one waits for
        # Redis; what this one read then fills the replaced dict, which nobody
        # reads again, never the newer one. No version (a Redis that lost it)
        # caches nothing.
        routes = self._routes
        missing = [u for u in user_ids if u not in routes]
        found = await self._devices(missing) if missing else {}
        if version is not None:
            routes.update(found)
        return {u: dict(found[u] if u in found else routes[u]) for u in user_ids}

    async def close(self) -> None:
        for task in (self._beat, self._again):
            if task is not None:
                task.cancel()
        with contextlib.suppress(RedisError, RedisClusterException):
            await self.redis.zrem(self._nodes, self.node_id)
        await self.redis.aclose()

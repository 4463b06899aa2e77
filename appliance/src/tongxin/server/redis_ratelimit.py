"""Per-user rate limits in Redis Cluster, shared by every node.

One key per user, ``<prefix>:{<user_id>}:rl`` (the hash tag puts it in the
slot of the user's presence keys), holding a GCRA "theoretical arrival time"
in microseconds of the Redis server's clock. GCRA is the token bucket of
``RateLimiter`` expressed as one number: with ``T = 1/rate`` a request is
allowed when ``max(tat, now) + T - burst*T <= now``, and then
``tat = max(tat, now) + T``. The whole check-and-update is one Lua script on
the key's primary, so it is atomic, costs one round trip and, having one key,
is cluster-safe. The key expires when the bucket would be full again, so idle
users cost nothing. The script reads the time with ``TIME`` on the server
that owns the key: node clocks do not matter.

Fail safe: Redis is an optimisation of fairness across nodes, not a reason to
refuse or stall traffic. A call is bounded (``timeout``); if Redis errors or
does not answer in time, the request is judged by the local bucket of this
node (the embedded default's exact behaviour), a warning is logged once per
outage, and Redis is not asked again for ``pause`` seconds (``Breaker``), so
an outage costs one timeout per pause, not one per frame. A primary failover
therefore shows up as a few seconds of per-node limits; the client's retry
policy re-reads the slot map on the first call after it (as in
``redis_presence.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

from redis.exceptions import NoScriptError

from tongxin.presence.redis_presence import misconfigured
from tongxin.redisutil import FAILURES, Breaker, bounded_cluster
from tongxin.server.ratelimit import RateLimiter

log = logging.getLogger("tongxin.ratelimit")

# KEYS[1] the user's key; ARGV[1] emission interval (us), ARGV[2] burst * interval (us).
# Returns 0 (allowed) or the microseconds until a request would be allowed.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - tonumber(ARGV[2]) - now
if wait > 0 then return wait end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
           math.floor((new_tat - now) / 1000) + 1)
return 0
"""
GCRA_SHA = hashlib.sha1(GCRA_LUA.encode()).hexdigest()


class RedisRateLimiter:
    def __init__(self, nodes: str, prefix: str, rate: float, burst: float, *,
                 timeout: float = 0.5, pause: float = 1.0,
                 on_fallback: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, tls_ca_file: str = "") -> None:
        self.prefix = prefix
        self.rate = rate
        self.local = RateLimiter(rate, burst, clock)
        self.interval_us = int(1_000_000 / rate) if rate > 0 else 0
        self.tolerance_us = int(burst * 1_000_000 / rate) if rate > 0 else 0
        self.timeout = timeout
        self.breaker = Breaker("rate limits", log, pause, on_fallback, clock,
                               explain=lambda exc: misconfigured(exc, nodes, tls_ca_file))
        # One quick retry: a frame must not wait out a failover.
        self.redis = bounded_cluster(nodes, timeout, retries=1, tls_ca_file=tls_ca_file)

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:rl"

    async def _eval(self, user_id: str) -> int:
        key, args = self.key(user_id), (self.interval_us, self.tolerance_us)
        try:
            return int(await self.redis.evalsha(GCRA_SHA, 1, key, *args))
        except NoScriptError:
            # First use on this primary (or a replica promoted since): EVAL
            # runs the script and leaves it in that server's cache.
            return int(await self.redis.eval(GCRA_LUA, 1, key, *args))

    async def acquire(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        if not self.breaker.closed():
            return self.local.take(key)
        try:
            wait_us = await asyncio.wait_for(self._eval(key), self.timeout * 3)
        except FAILURES as exc:
            self.breaker.failed(exc)
            return self.local.take(key)
        self.breaker.ok()
        return wait_us / 1_000_000

    def forget_idle(self) -> None:
        self.local.forget_idle()

    async def close(self) -> None:
        await self.redis.aclose()

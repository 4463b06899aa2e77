"""Per-user rate limits in Redis Cluster, shared by every node.

One key per user, ``<prefix>:{<user_id>}:rl`` (the hash tag puts it in the
slot of the user's presence keys), holding a GCRA "theoretical arrival time"
in microseconds of the Redis server's clock. GCRA is the token bucket of
``RateLimiter`` expressed as one number: with ``T = 1/rate`` a request is
allowed when ``max(tat, now) + T - burst*T <= now``, and then
``tat = max(tat, now) + T``. The check-and-update is one Lua script on the
key's primary, so it is atomic and, having one key, cluster-safe. The key
expires when the bucket would be full again, so idle users cost nothing. The
script reads the time with ``TIME`` on the server that owns the key: node
clocks do not matter.

Shares instead of a round trip per frame: the script grants up to ``want``
tokens at once (``tat += n*T`` for the ``n`` the budget allows), and this
node spends them locally; Redis is asked again only when they are spent. A
user's first frame on a node asks for 1; each later request asks for what
the user spent on this node in the last ``interval`` (0.5 s) at the rate it
spent the previous share, at most twice the previous share and at most
``max_share`` (5% of the burst, at least 1). A user sending steadily
therefore costs one round trip per ``interval`` per node, a slow one a round
trip per frame as before, an idle one nothing. A refusal is remembered
until its ``retry_after``: Redis would refuse until then too (the arrival
time only moves forward, unless a failover lost the key: then this node
refuses at most that long more than it had to), so a flood of refused frames
costs one round trip per token that comes back, not one per frame.

Tolerance: tokens leave the shared budget when granted, so the grants alone
never exceed the configured limit. What a node holds unspent is at most
``max_share - 1`` (the frame that asked takes one), so in any period of
``t`` seconds a user whose devices sit on ``N`` nodes is allowed at most
``rate*t + burst + N*(max_share - 1)`` frames (defaults: 20/s, burst 100,
share 5: at most 4 more per node), and a share held unspent on one node is
missing on the others until the budget refills it. Shares a node does not
spend are never given back: the user loses them, never gains. The key and its
meaning are those of the one-token script before, so nodes of both versions
share one budget during an upgrade.

Fail safe: Redis is an optimisation of fairness across nodes, not a reason to
refuse or stall traffic. A call is bounded (``timeout``); if Redis errors or
does not answer in time, the request is judged by the local bucket of this
node (the embedded default's exact behaviour) once a share already held is
spent, a warning is logged once per outage, and Redis is not asked again for
``pause`` seconds (``Breaker``), so an outage costs one timeout per pause,
not one per frame. A primary failover therefore shows up as a few seconds of
per-node limits; the client's retry policy re-reads the slot map on the first
call after it (as in ``redis_presence.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable

from redis.exceptions import NoScriptError

from tongxin.presence.redis_presence import misconfigured
from tongxin.redisutil import FAILURES, Breaker, bounded_cluster
from tongxin.server.ratelimit import RateLimiter

log = logging.getLogger("tongxin.ratelimit")

# KEYS[1] the user's key; ARGV[1] emission interval (us), ARGV[2] burst * interval (us),
# ARGV[3] tokens wanted (>= 1). Returns {granted, 0} with 1 <= granted <= wanted,
# or {0, microseconds until one token would be granted}.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local limit = now + tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local n = math.floor((limit - tat) / interval)
if n < 1 then return {0, tat + interval - limit} end
local want = tonumber(ARGV[3])
if n > want then n = want end
local new_tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
           math.floor((new_tat - now) / 1000) + 1)
return {n, 0}
"""
GCRA_SHA = hashlib.sha1(GCRA_LUA.encode()).hexdigest()

#: Seconds of a user's frames one share should cover, so a steady sender
#: reconciles with Redis about this often on each node.
SHARE_INTERVAL = 0.5
#: The most a node holds of a user's budget, as a part of the burst: what N
#: nodes may allow beyond the limit is N times this.
SHARE_OF_BURST = 0.05
#: A user's share is forgotten (and what is left of it lost) after this long
#: without a frame, at the node's next sweep.
IDLE_AFTER = 2.0


class _Share:
    """One user's part of the budget on this node."""

    __slots__ = ("granted", "granted_at", "last_used", "pending", "refused_until", "tokens")

    def __init__(self) -> None:
        self.tokens = 0  # granted by Redis, not yet spent
        self.granted = 0  # size of the last grant
        self.granted_at = -math.inf
        self.refused_until = -math.inf  # Redis refuses every frame until then
        self.last_used = -math.inf
        self.pending: asyncio.Future[None] | None = None  # a request to Redis in flight


class RedisRateLimiter:
    def __init__(self, nodes: str, prefix: str, rate: float, burst: float, *,
                 timeout: float = 0.5, pause: float = 1.0,
                 on_fallback: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, tls_ca_file: str = "",
                 interval: float = SHARE_INTERVAL, share_of_burst: float = SHARE_OF_BURST) -> None:
        self.prefix = prefix
        self.rate = rate
        self.local = RateLimiter(rate, burst, clock)
        # At least 1 us: above 1,000,000/s the limit is off in all but name.
        self.interval_us = max(1, int(1_000_000 / rate)) if rate > 0 else 0
        self.tolerance_us = int(burst * 1_000_000 / rate) if rate > 0 else 0
        self.interval = interval
        self.max_share = max(1, int(burst * share_of_burst))
        self.timeout = timeout
        self._clock = clock
        self._shares: dict[str, _Share] = {}
        self.breaker = Breaker("rate limits", log, pause, on_fallback, clock,
                               explain=lambda exc: misconfigured(exc, nodes, tls_ca_file))
        # One quick retry: a frame must not wait out a failover.
        self.redis = bounded_cluster(nodes, timeout, retries=1, tls_ca_file=tls_ca_file)

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:rl"

    async def _reserve(self, user_id: str, want: int) -> tuple[int, int]:
        """(tokens granted, 0) or (0, microseconds until one would be)."""
        key, args = self.key(user_id), (self.interval_us, self.tolerance_us, want)
        try:
            reply = await self.redis.evalsha(GCRA_SHA, 1, key, *args)
        except NoScriptError:
            # First use on this primary (or a replica promoted since): EVAL
            # runs the script and leaves it in that server's cache.
            reply = await self.redis.eval(GCRA_LUA, 1, key, *args)
        return int(reply[0]), int(reply[1])

    def _want(self, share: _Share, now: float) -> int:
        # The rate at which the last share was spent, over one interval;
        # growth at most doubles, so two quick frames do not take a large share.
        elapsed = now - share.granted_at
        if share.granted < 1 or elapsed <= 0 or math.isinf(elapsed):
            return 1
        wanted = math.ceil(share.granted / elapsed * self.interval)
        return max(1, min(wanted, 2 * share.granted, self.max_share))

    async def acquire(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        share = self._shares.get(key)
        if share is None:
            share = self._shares[key] = _Share()
        while True:
            now = self._clock()
            share.last_used = now
            if share.tokens > 0:
                share.tokens -= 1
                return 0.0
            if share.refused_until > now:
                return share.refused_until - now
            if share.pending is not None:
                # Another device of this user on this node asked already:
                # share its answer (shielded: this frame's cancellation must
                # not cancel the other's request).
                await asyncio.shield(share.pending)
                continue
            if not self.breaker.closed():
                return self.local.take(key)
            return await self._refill(key, share, now)

    async def _refill(self, key: str, share: _Share, now: float) -> float:
        want = self._want(share, now)
        pending = share.pending = asyncio.get_running_loop().create_future()
        try:
            granted, wait_us = await asyncio.wait_for(self._reserve(key, want),
                                                      self.timeout * 3)
        except FAILURES as exc:
            self.breaker.failed(exc)
            return self.local.take(key)
        finally:
            share.pending = None
            if not pending.done():
                pending.set_result(None)
        self.breaker.ok()
        if granted < 1:
            wait = wait_us / 1_000_000
            share.refused_until = now + wait
            return wait
        share.granted, share.granted_at = granted, now
        share.tokens += granted - 1  # this frame takes one
        return 0.0

    def forget_idle(self) -> None:
        self.local.forget_idle()
        now = self._clock()
        idle = [k for k, s in self._shares.items()
                if s.pending is None and now - s.last_used > IDLE_AFTER
                and s.refused_until <= now]
        for k in idle:
            del self._shares[k]

    async def close(self) -> None:
        self._shares.clear()
        await self.redis.aclose()

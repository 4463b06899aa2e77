"""Per-user rate limits: a burst is allowed, a sustained flood is not.

The port is ``RateLimit``. The embedded default, ``RateLimiter``, keeps a
token bucket per user in this process, which is exact for one node. With many
nodes a user's devices may sit on several of them, so the production adapter
(``tongxin.server.redis_ratelimit``) keeps one counter per user in Redis
Cluster, shared by every node, which each node takes in small shares and
spends locally (within a stated tolerance), and falls back to a local bucket
when Redis does not answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class RateLimit(Protocol):
    async def acquire(self, key: str) -> float:
        """Spend one token of ``key``; 0 if allowed, else seconds until one is available."""
        ...

    def forget_idle(self) -> None:
        """Called by the node's sweeper: drop state nobody needs any more."""
        ...

    async def close(self) -> None: ...


class RateLimiter:
    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Spend one token; return 0 if allowed, else seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    async def acquire(self, key: str) -> float:
        return self.take(key)

    async def close(self) -> None:
        self._buckets.clear()

    def forget_idle(self) -> None:
        """Drop full buckets so the dict does not grow with every user ever seen."""
        now = self._clock()
        full = [k for k, (t, last) in self._buckets.items()
                if t + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]

"""Shared pieces of the Redis Cluster adapters that sit on a request's path
(rate limits, token revocation): a client with bounded calls, and a breaker
that stops asking a Redis that just failed.

Presence (``presence/redis_presence.py``) keeps its own client with long
retries: routing must be right or fail. These two have a correct answer
without Redis (the local bucket, the store), so they retry briefly, bound
every call, and fall back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tongxin.config import ConfigError
from tongxin.presence.redis_presence import parse_nodes, redis_password, tls_kwargs
from tongxin.redis_gate import GatedRedisCluster

#: What a failed call may raise: the driver's errors (RedisClusterException,
#: e.g. "no startup node answers" or an uncovered slot, is not a RedisError),
#: our own time bound, sockets.
FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, TimeoutError,
                                             OSError)


def bounded_cluster(nodes: str, timeout: float, retries: int,
                    tls_ca_file: str = "") -> RedisCluster:
    """A cluster client whose retries ride out MOVED and a promoted replica
    (the slot map is re-read after a connection error) but not a long outage.
    It authenticates with $TONGXIN_REDIS_PASSWORD and, with ``tls_ca_file``
    (presence.redis_tls_ca_file), speaks TLS verified against it, as every
    Redis client of the node does (this site's cluster and the other sites').
    Its calls wait for a free connection rather than fail (tongxin.redis_gate);
    the callers' time bounds cover that wait."""
    return GatedRedisCluster(
        startup_nodes=parse_nodes(nodes), decode_responses=True, password=redis_password(),
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_timeout=timeout, socket_connect_timeout=timeout, **tls_kwargs(tls_ca_file),
    )


class Breaker:
    """After a failure, skip Redis for ``pause`` seconds: an outage costs one
    timeout per pause, not one per request. Logs once when Redis goes away
    and once when it answers again. ``explain`` turns a failure that is this
    node's configuration (a wrong password, a certificate the CA file does not
    verify: redis_presence.misconfigured) into the error to log instead; it
    still falls back, as for an outage."""

    def __init__(self, what: str, log: logging.Logger, pause: float = 1.0,
                 on_fallback: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 explain: Callable[[BaseException], ConfigError | None] | None = None) -> None:
        self.what = what
        self.explain = explain
        self.log = log
        self.pause = pause
        self.on_fallback = on_fallback
        self._clock = clock
        self._open_until = 0.0
        self.down = False

    def closed(self) -> bool:
        """True when Redis may be asked; counts a fallback otherwise."""
        if self._clock() >= self._open_until:
            return True
        self.fell_back()
        return False

    def failed(self, exc: BaseException) -> None:
        self._open_until = self._clock() + self.pause
        if not self.down:
            self.down = True
            wrong = self.explain(exc) if self.explain is not None else None
            if wrong is not None:
                self.log.error("%s: configuration error: %s; falling back, asking again every %gs",
                               self.what, wrong, self.pause)
            else:
                self.log.warning("%s: Redis did not answer (%r); falling back, asking again "
                                 "every %gs", self.what, exc, self.pause)
        self.fell_back()

    def ok(self) -> None:
        # Also ends a pause early: a background probe (remote presence,
        # ``pause`` infinite) closes the breaker this way.
        self._open_until = 0.0
        if self.down:
            self.down = False
            self.log.warning("%s: Redis answers again", self.what)

    def fell_back(self) -> None:
        if self.on_fallback is not None:
            self.on_fallback()

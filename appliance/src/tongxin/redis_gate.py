"""A Redis Cluster client whose calls wait for a free connection instead of failing.

redis-py's cluster client keeps at most ``max_connections`` (100) connections
to each Redis node and raises ``MaxConnectionsError`` at once when a call finds
them all busy. A burst of ends of connections does that: 14,000 clients
closing at once start 14,000 presence removals (``device_offline``, several
round trips each), and in a measured run (one worker on the production
engines, docs/performance.md) 13,542 of them failed that way. Each failure
left the device's entry in Redis, and escaped the WebSocket handler, where
aiohttp formatted its traceback: 39% of the worker's loop through the close,
while 5,303 of the clients' closes went unanswered for 15 s.

``GatedRedisCluster`` lets at most ``gate`` calls (a command or a whole
pipeline) of one client run at once; the others wait their turn, first come
first served. A call holds at most one connection to each Redis node, so with
``gate`` below ``max_connections`` the pool never runs out. Callers that must
answer in time bound their own wait, as they bound the call (the AUTH's
presence timeout, the rate limiter's and the revocation check's time limits).

What the driver calls inside a call (a pipeline that retries redirected
commands one by one through the client) runs in its caller's turn: waiting
for a second turn there could wait for itself when every turn is taken.

A connection whose socket was closed under it (by the peer, or by a caller's
time bound cancelling a call mid-way) makes redis-py 8.1.0 raise the
transport's own error on the next write instead of its ConnectionError:
``AttributeError: 'NoneType' object has no attribute 'writelines'``, or
uvloop's ``RuntimeError: unable to perform operation on <TCPTransport
closed=True ...>`` (redis/redis-py#4287 reports the same with TypeError on
CPython 3.12+). None of them is a RedisError, so they passed every fallback
of the node and answered logins INTERNAL: 1,235 times in one reconnect storm
of 5,000 clients. A call of this client that raises one of them raises
``ConnectionError`` instead (the original as its cause); redis-py has already
dropped the broken connection by then (send_packed_command disconnects on
any exception), so the next call connects afresh.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

#: Calls of one client running at once, at most. Below redis-py's default of
#: 100 connections per node: a pipeline that retries a redirected command may
#: take a second connection to a node within its turn.
DEFAULT_GATE = 64

#: What redis-py 8.1.0 lets out of a write on a connection closed under it.
_LEAKED = (AttributeError, TypeError, RuntimeError)

#: True while the current task runs a call in its turn (see the module's text).
_IN_TURN: contextvars.ContextVar[bool] = contextvars.ContextVar("tongxin_redis_in_turn",
                                                                default=False)


class GatedRedisCluster(RedisCluster):
    def __init__(self, *args: Any, gate: int = DEFAULT_GATE, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if gate < 1:
            raise ValueError(f"gate must be at least 1, not {gate}")
        self.gate = asyncio.Semaphore(gate)
        #: Calls that had to wait for a turn (tests and the curious read it).
        self.waited = 0

    async def in_turn(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``await call()`` in a turn of this client's gate. A callable, not a
        coroutine: a wait that is cancelled must not leave one never awaited."""
        if _IN_TURN.get():
            return await _classified(call)
        if self.gate.locked():
            self.waited += 1
        async with self.gate:
            token = _IN_TURN.set(True)
            try:
                return await _classified(call)
            finally:
                _IN_TURN.reset(token)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        run = super().execute_command
        return await self.in_turn(lambda: run(*args, **kwargs))

    def pipeline(self, transaction: Any | None = None,
                 shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return GatedPipeline(self, transaction)  # type: ignore[abstract]  # to mypy only


async def _classified(call: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await call()
    except _LEAKED as exc:
        raise RedisConnectionError(f"Redis connection closed under a call: {exc!r}") from exc


class GatedPipeline(ClusterPipeline):
    """A pipeline that runs in one turn of its client's gate."""

    cluster_client: GatedRedisCluster  # only GatedRedisCluster.pipeline makes one

    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        run = super().execute
        result: list[Any] = await self.cluster_client.in_turn(
            lambda: run(raise_on_error, allow_redirections))
        return result

"""Which of a DSN's ordered database endpoints a pool talks to, and when it moves.

``storage.mysql_dsn`` may list several endpoints of one database in order of
preference (the Galera members in dc1 and dc2, or TiDB servers). A pool is
opened to the first endpoint that answers ``SELECT 1``. When an operation
finds the endpoint gone (connection refused, lost or timed out, or a Galera
node outside the primary component answering 1047 "WSREP has not yet
prepared node for application use"), that pool is dropped: the operation
itself still fails with ``Unavailable`` (the client re-sends; ``client_msg_id``
makes that safe), and the next one opens a pool to the next endpoint in the
list that answers.

**Back to the preferred endpoint.** While a pool is on a later endpoint, every
``FAILBACK_AFTER`` seconds a background probe tries the earlier ones and moves
back to the first that answers. Every node is given the same order, so all
nodes of both sites converge on one writer. With Galera that matters: two
nodes writing the same row (a conversation's ``last_seq`` counter) through
different members conflict at certification, and one of them is rolled back
(reported as a deadlock, which the store retries, but each conflict costs a
round trip across the sites). Until the nodes converge, those conflicts are
the price of having moved, never a wrong result. TiDB has no such preference
(every TiDB server reaches the same leaders); the order is then only the order
of trial.

The pool of the endpoint just left is closed gracefully: statements already
running on it finish or fail on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncmy
from asyncmy import errors as myerrors
from asyncmy.pool import Pool

from tongxin.store.dsn import Endpoint
from tongxin.store.ports import Unavailable

log = logging.getLogger("tongxin.store.endpoints")

FAILBACK_AFTER = 30.0  # seconds on a later endpoint before the earlier ones are tried again

# Client-side codes of a connection that is gone, and server codes of a node that
# cannot serve now: the endpoint is unusable, not the statement wrong.
_ENDPOINT_CODES = {
    1047,  # ER_UNKNOWN_COM_ERROR: Galera "WSREP has not yet prepared node for application use"
    1053,  # ER_SERVER_SHUTDOWN
    1927,  # MariaDB ER_CONNECTION_KILLED
    2002, 2003, 2005,  # cannot connect (socket, TCP, unknown host)
    2006, 2013, 2055,  # server gone away, lost connection (also a read timeout)
}


def _code(exc: BaseException) -> int:
    args = getattr(exc, "args", ())
    return int(args[0]) if args and isinstance(args[0], int) else 0


def is_endpoint_failure(exc: BaseException) -> bool:
    """The endpoint cannot serve (as opposed to a statement the server refused)."""
    if isinstance(exc, OSError | EOFError):  # refused, reset, TimeoutError
        return True
    if isinstance(exc, myerrors.InterfaceError):  # the driver lost the connection
        return True
    return isinstance(exc, myerrors.MySQLError) and _code(exc) in _ENDPOINT_CODES


class EndpointPool:
    """One asyncmy pool at a time, on the first of ``endpoints`` that answers.

    ``connect_kwargs(endpoint)`` are asyncmy's connection arguments for that
    endpoint (credentials, timeouts, flags); the pool never logs them.
    """

    def __init__(self, endpoints: Sequence[Endpoint],
                 connect_kwargs: Callable[[Endpoint], dict[str, Any]], pool_size: int,
                 timeout: float, failback_after: float = FAILBACK_AFTER) -> None:
        if not endpoints:
            raise ValueError("no database endpoints")
        self.endpoints = tuple(endpoints)
        self._kwargs = connect_kwargs
        self._pool_size = pool_size
        self._timeout = timeout
        self.failback_after = failback_after
        self._pool: Pool | None = None
        self.index = -1  # of the endpoint in use; -1 while none is
        self.switches = 0  # times the pool moved to another endpoint (failures and failbacks)
        self._last = -1  # the endpoint used last, kept while none is
        self._next = 0  # where the next selection starts
        self._failback_at = 0.0
        self._errors: dict[int, str] = {}  # why each endpoint did not answer, last selection
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def current(self) -> Endpoint | None:
        return self.endpoints[self.index] if self.index >= 0 else None

    async def get(self) -> Pool:
        """The pool in use, opening one on the first endpoint that answers if needed."""
        pool = self._pool
        if pool is not None:
            if self.index > 0 and time.monotonic() >= self._failback_at:
                self._failback_at = time.monotonic() + self.failback_after
                self._spawn(self._failback())
            return pool
        async with self._lock:
            if self._pool is not None:
                return self._pool
            if self._closed:
                raise Unavailable("the database pool is closed")
            n = len(self.endpoints)
            order = [(self._next + i) % n for i in range(n)]
            found = await self._first_answering(order)
            if found is None:
                self._next = 0  # all down: start from the preferred one when they return
                raise Unavailable(f"no database endpoint answers ({self._describe()})")
            if self._errors:  # (when none answers, the exception alone says why)
                log.warning("database endpoints skipped: %s", self._describe())
            self._use(*found)
            return found[1]

    def failed(self, pool: Pool | None, exc: BaseException) -> None:
        """An operation on ``pool`` failed with ``exc``; move on if the endpoint is gone."""
        if pool is None or pool is not self._pool or not is_endpoint_failure(exc):
            return
        if len(self.endpoints) == 1:
            return  # nowhere to move: the pool reconnects by itself when the server is back
        log.warning("database endpoint %s failed (%s); the next operation tries the next one",
                    self.current, type(exc).__name__)
        self._next = (self.index + 1) % len(self.endpoints)
        self._pool, self.index = None, -1
        self._spawn(self._dispose(pool))

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pool, self._pool, self.index = self._pool, None, -1
        if pool is not None:
            await self._dispose(pool)

    # ---- internals -------------------------------------------------------

    def _use(self, index: int, pool: Pool) -> None:
        if index != self._last:
            if self._last >= 0:
                self.switches += 1
            log.info("database endpoint in use: %s (%d of %d)", self.endpoints[index], index + 1,
                     len(self.endpoints))
        self._pool, self.index, self._last = pool, index, index
        self._failback_at = time.monotonic() + self.failback_after

    async def _failback(self) -> None:
        """Move back to the first earlier endpoint that answers (never further down)."""
        async with self._lock:
            if self._pool is None or self.index <= 0 or self._closed:
                return
            found = await self._first_answering(range(self.index))
            if found is None:
                return
            old = self._pool  # None if it failed meanwhile
            self._use(*found)
        if old is not None:
            await self._dispose(old)

    async def _first_answering(self, order: Sequence[int]) -> tuple[int, Pool] | None:
        self._errors = {}
        for i in order:
            try:
                return i, await self._open(self.endpoints[i])
            except Exception as exc:  # whatever the reason, the next endpoint may answer
                # The driver's reason names the address at most, never the password.
                self._errors[i] = f"{type(exc).__name__}: {exc}"
        return None

    def _describe(self) -> str:
        return "; ".join(f"{self.endpoints[i]}: {why}" for i, why in self._errors.items())

    async def _open(self, ep: Endpoint) -> Pool:
        """A pool on ``ep`` whose first connection answered ``SELECT 1``.

        Connecting is not enough: a Galera member outside the primary component
        accepts connections and refuses every query (1047).
        """
        limit = self._timeout + 1  # past connect_timeout, so the driver's reason surfaces
        pool = await asyncio.wait_for(
            asyncmy.create_pool(minsize=1, maxsize=self._pool_size, pool_recycle=3600,
                                **self._kwargs(ep)), limit)
        try:
            conn = await asyncio.wait_for(pool.acquire(), limit)
            try:
                async with conn.cursor() as cur:
                    await cur.execute("SELECT 1")
                    await cur.fetchall()
            except BaseException:
                conn.close()
                raise
            finally:
                pool.release(conn)
        except BaseException:
            pool.terminate()
            raise
        return pool

    async def _dispose(self, pool: Pool) -> None:
        pool.close()
        try:
            await asyncio.wait_for(pool.wait_closed(), self._timeout)
        except (TimeoutError, myerrors.MySQLError, OSError, RuntimeError):
            pool.terminate()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        exc = task.exception()
        if exc is not None:
            log.warning("database endpoint task failed: %r", exc)

"""Run sqlite3 calls on a dedicated thread, committing writes in batches.

Why a thread of our own rather than one call per thread-pool job: the ACK to
a sender must wait for the fsync of its write, and one fsync per message caps
a disk at a few hundred messages per second. The writer drains everything
queued while the previous commit was in flight and commits it as one
transaction (group commit), each job inside its own SAVEPOINT so that one
failing job does not undo the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tongxin.store.ports import Unavailable

T = TypeVar("T")

Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]



def private_file(path: Path) -> None:
    """Create ``path`` 0600, or take group and other access from an existing one.

    The databases hold password hashes, token state and keys. SQLite gives its
    -wal and -shm files the mode of the database file, so this covers them too
    once they are made again; existing ones are tightened here as well. An
    existing file is never opened here: closing any descriptor of a file drops
    every POSIX lock this process holds on it, SQLite's included.
    """
    for target in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            st = target.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                target.chmod(0o600)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


# Why checkpoint the WAL at 10,000 pages (40 MB at 4 KiB pages) rather than
# SQLite's default of 1,000: an append dirties a leaf of each of the messages
# table's conversation-ordered B-trees, so a commit of messages to different
# conversations writes several pages per message (relay_bench: ~27 KB per
# message), and each checkpoint copies the pages written since the last one
# into the database, reading them back first, and fsyncs it. A page written
# again and again between two checkpoints (a busy conversation's last leaf) is
# copied once. Measured (docs/performance.md): 22 KB written per message
# instead of 27, relay-full's server CPU per message -7%, msgs/s +13%. The WAL
# file grows to this size and stays there (a reader finds a page in it through
# the wal-index hash, not by scanning it).
WAL_AUTOCHECKPOINT_PAGES = 10_000
# After a checkpoint resets it, a WAL that grew beyond this (a long read
# holding a checkpoint back) is truncated instead of keeping its size on disk.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    return conn


def _resolve(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def _resolve_all(outcomes: list[Outcome]) -> None:
    for fut, result, error in outcomes:
        _resolve(fut, result, error)


class SqliteWorker:
    """One connection, one thread. ``batch`` > 1 turns on group commit."""

    def __init__(self, path: Path, synchronous: str, batch: int, name: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self.batch = batch
        self.name = name
        self._q: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None

    def start(self) -> None:
        self._conn = connect(self.path, self.synchronous)
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._thread is None:
            return
        self._q.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise Unavailable(f"{self.name}: store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._q.put((fn, fut, loop))
        return await fut

    def _loop(self) -> None:
        assert self._conn is not None
        conn = self._conn
        while True:
            job = self._q.get()
            if job is None:
                return
            jobs = [job]
            stop = False
            while len(jobs) < self.batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            if self.batch > 1:
                self._run_batch(conn, jobs)
            else:
                for fn, fut, loop in jobs:
                    self._run_one(conn, fn, fut, loop)
            if stop:
                return

    @staticmethod
    def _run_one(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any],
                 fut: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        result: Any = None
        error: Exception | None = None
        try:
            result = fn(conn)
        except sqlite3.Error as exc:
            error = Unavailable(f"database error: {exc}")
        except Exception as exc:
            error = exc
        loop.call_soon_threadsafe(_resolve, fut, result, error)

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, jobs: list[Job]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, _fut, _loop in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((fn(conn), None))
                    conn.execute("RELEASE job")
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    err: Exception = (Unavailable(f"database error: {exc}")
                                      if isinstance(exc, sqlite3.Error) else exc)
                    outcomes.append((None, err))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The commit (or BEGIN) failed: nothing in this batch is durable,
            # so every job fails and no caller sends an ACK.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            failed = Unavailable(f"database commit failed: {exc}")
            outcomes = [(None, failed)] * len(jobs)
        # One wake-up per event loop for the whole batch, not one per job:
        # each call_soon_threadsafe writes to the loop's self-pipe, and under
        # load a batch holds hundreds of ACKs waiting on the same loop.
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for (_fn, fut, loop), (result, error) in zip(jobs, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((fut, result, error))
        for loop, resolved in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, resolved)


class SqliteDatabase:
    """A SQLite file with a group-committing writer thread and a reader thread.

    Subclasses say how their schema is applied; ``executescript()`` commits on
    its own, so that happens on a short-lived connection before the workers
    start rather than inside the writer's batches.
    """

    def __init__(self, path: Path, synchronous: str, batch_max: int, name: str) -> None:
        self.path = path
        self._writer = SqliteWorker(path, synchronous, batch_max, f"tongxin-{name}-writer")
        self._reader = SqliteWorker(path, synchronous, 1, f"tongxin-{name}-reader")

    def apply_schema(self, conn: sqlite3.Connection) -> None:
        raise NotImplementedError

    async def open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_file(self.path)
        conn = connect(self.path, "full")
        try:
            self.apply_schema(conn)
        finally:
            conn.close()
        self._writer.start()
        self._reader.start()

    async def close(self) -> None:
        await self._reader.stop()
        await self._writer.stop()

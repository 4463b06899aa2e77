"""The SQLite writer's group commit: what each caller of a batch is told."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tongxin.store.ports import Unavailable
from tongxin.store.sqlite_worker import SqliteWorker, connect

# A deferred foreign key is checked at COMMIT, so a batch holding a row that
# breaks it fails as a whole there, after every job in it succeeded.
SCHEMA = """
CREATE TABLE parent (id INTEGER PRIMARY KEY);
CREATE TABLE child (id INTEGER PRIMARY KEY,
                    parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
INSERT INTO parent VALUES (1);
"""


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[SqliteWorker]:
    path = tmp_path / "w.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.close()
    w = SqliteWorker(path, "full", 64, "test-writer")
    w.start()
    yield w
    await w.stop()


def _insert_child(parent: int) -> Callable[[sqlite3.Connection], int | None]:
    return lambda c: c.execute("INSERT INTO child (parent_id) VALUES (?)", (parent,)).lastrowid


@contextlib.asynccontextmanager
async def _held(worker: SqliteWorker) -> AsyncIterator[None]:
    """The writer blocked inside a job of its own until the block ends, so that every
    job queued meanwhile lands in the next batch."""
    held = threading.Event()
    release = threading.Event()

    def hold(_conn: sqlite3.Connection) -> None:
        held.set()
        release.wait(10)

    first = asyncio.ensure_future(worker.run(hold))
    assert await asyncio.to_thread(held.wait, 10)
    try:
        yield
        await asyncio.sleep(0.05)  # every job queued behind the held one
    finally:
        release.set()
        await first


async def _one_batch(worker: SqliteWorker, parents: list[int]) -> list[object]:
    """Inserts a child per parent id, all in one batch."""
    async with _held(worker):
        jobs = [asyncio.ensure_future(worker.run(_insert_child(p))) for p in parents]
    return list(await asyncio.gather(*jobs, return_exceptions=True))


async def _children(worker: SqliteWorker) -> list[int]:
    return await worker.run(
        lambda c: [r[0] for r in c.execute("SELECT parent_id FROM child ORDER BY id")])


async def test_a_batch_that_commits_answers_each_job_with_its_own_result(
        worker: SqliteWorker) -> None:
    results = await _one_batch(worker, [1, 1, 1])
    assert results == [1, 2, 3]
    assert await _children(worker) == [1, 1, 1]


async def test_a_failed_commit_fails_every_job_of_the_batch_and_keeps_none(
        worker: SqliteWorker) -> None:
    results = await _one_batch(worker, [1, 99, 1])
    assert all(isinstance(r, Unavailable) for r in results), results
    assert all("commit failed" in str(r) for r in results)
    assert await _children(worker) == []
    # The writer goes on: the next batch commits.
    assert await _one_batch(worker, [1]) == [1]
    assert await _children(worker) == [1]


async def test_a_failing_job_fails_alone(worker: SqliteWorker) -> None:
    def broken(_conn: sqlite3.Connection) -> None:
        raise ValueError("not this one")

    async with _held(worker):
        ok1 = asyncio.ensure_future(worker.run(_insert_child(1)))
        bad = asyncio.ensure_future(worker.run(broken))
        ok2 = asyncio.ensure_future(worker.run(_insert_child(1)))
    assert await ok1 == 1
    with pytest.raises(ValueError, match="not this one"):
        await bad
    assert await ok2 == 2
    assert await _children(worker) == [1, 1]


def test_wal_is_checkpointed_late_not_every_thousand_pages(tmp_path: Path) -> None:
    # SQLite's default checkpoints (and restarts) the WAL once it holds 1,000
    # pages; a store connection lets it grow to WAL_AUTOCHECKPOINT_PAGES first.
    conn = connect(tmp_path / "c.db", "normal")
    try:
        conn.execute("CREATE TABLE t (b BLOB)")
        for _ in range(1500):  # one commit per row, each row past a page
            conn.execute("INSERT INTO t VALUES (?)", (b"x" * 5000,))
        _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        conn.close()
    assert frames > 1000 * 2  # no automatic checkpoint restarted it on the way

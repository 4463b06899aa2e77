"""File bytes in the shared database (``files.backend: database``).

For installations without object storage: the bytes live, replicate and are
backed up with the database (synchronously across dc1/dc2, asynchronously to
dr), with nothing else to run. Large sites use S3 and the object store's own
replication instead (docs/operations.md, "Files across sites").

Tables (store migration 6)::

    file_blob_chunks   (content_id, pos) -> data    bytes, rows of CHUNK (256 KiB)
    file_blob_segments (blob_key, n) -> content_id, blob_pos, size
    file_blobs         blob_key -> size             what a key names, once complete
    file_blob_pending  content_id -> touched_at     contents being written or dropped

**Writes.** ``put_part`` and ``put_object`` stream into chunk rows under a
fresh random content id, each chunk its own short transaction (one large
transaction would hold a part or file in the database's memory, and TiDB
caps a transaction's size), and only then name the content in one small
transaction: the key's ``file_blobs`` row and its segment. A reader looks
the key up first, so it sees the whole content or nothing; a replaced key
points at the new content in the same transaction that lets go of the old.

**Assembly without copying.** ``assemble`` writes the file's segments as the
list of its parts' contents: one small transaction, whatever the file's
size. Deleting the part keys afterwards leaves those contents in place,
because the file still names them; a content's chunks go when no segment
names it any more.

**Nothing half-written stays.** A content has a ``file_blob_pending`` row
from before its first chunk until it is named by a key, and again from the
moment no key names it until its chunks are gone. A write cut off half-way
(client gone, connection killed, node crashed) leaves such a row behind: the
writer drops the chunks itself when it can, and otherwise every node's
background sweep does once the row has not been touched for ``stale_after``
seconds (a live writer touches it as chunks arrive). The sweep marks the row
first (``touched_at = 0``), so a writer that was merely slow finds its
content condemned and fails rather than publish bytes being deleted.

**Costs.** Every byte is written to the chunk table once (and to the
database's redo log, binary log and replicas as for any row); parts are
never copied into the file. Deletes go in small batches, so no transaction
carries more than a few chunks, which keeps Galera write sets and TiDB
transactions small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from asyncmy.cursors import Cursor

from tongxin.config import Config
from tongxin.files.keys import file_key, new_part_key, parts_prefix, valid_key
from tongxin.files.ports import BlobError, BlobNotFound
from tongxin.store.mysql_store import MysqlStore, _s
from tongxin.store.ports import StoreError

log = logging.getLogger("tongxin.files.db")

T = TypeVar("T")

# Bytes per row: far under TiDB's 6 MiB entry limit and max_allowed_packet. Each
# in-flight write holds a few copies of one row while the driver escapes it, so
# the row size bounds the memory of concurrent uploads; 256 KiB keeps that
# near the file service's own blocks, at one more round trip per 256 KiB.
CHUNK = 256 * 1024
DELETE_BATCH = 16  # chunk rows per DELETE: small Galera write sets and TiDB transactions
STALE_AFTER = 3600.0  # seconds a pending content may go untouched before it is swept
SWEEP_INTERVAL = 600.0
TOUCH_EVERY = 60.0  # seconds between a writer's touches of its pending row
_SWEEP_BATCH = 100
_SEGMENT_ROWS = 500  # rows per multi-row INSERT


def _now_ms() -> int:
    return int(time.time() * 1000)


def _rows(cur: Cursor) -> int:
    n = cur.rowcount
    return n if isinstance(n, int) else 0


async def _rechunk(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """Rows of exactly ``size`` bytes (the last one shorter), whatever the caller's blocks."""
    pending: list[bytes] = []
    buffered = 0
    async for chunk in chunks:
        pending.append(chunk)
        buffered += len(chunk)
        if buffered >= size:
            data = b"".join(pending)
            pending.clear()
            offset = 0
            while len(data) - offset >= size:
                yield data[offset:offset + size]
                offset += size
            if offset < len(data):
                pending.append(data[offset:])
            buffered = len(data) - offset
    if buffered:
        yield b"".join(pending)


def mysql_database(cfg: Config, pool_size: int) -> MysqlStore:
    """A pool on ``storage.mysql_dsn`` with the chat store's endpoint handling (ordered
    endpoints with failover, retries, errors as Unavailable); opening it applies
    pending migrations. Used for the file metadata when no chat store pool is at
    hand, for blobs, and for the audit archive."""
    return MysqlStore.from_dsn(cfg.storage.mysql_dsn, pool_size, cfg.storage.mysql_timeout)


class DbBlobStore:
    """``BlobStore`` in the database ``db`` (its own pool unless ``owned`` is False)."""

    def __init__(self, db: MysqlStore, owned: bool = True, *, chunk_size: int = CHUNK,
                 stale_after: float = STALE_AFTER,
                 sweep_interval: float = SWEEP_INTERVAL) -> None:
        self.db = db
        self.owned = owned
        self.chunk_size = chunk_size
        self.stale_after = stale_after
        self.sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        if self.owned:
            try:
                await self.db.open()  # connects and applies pending migrations
            except StoreError as exc:
                raise BlobError(f"database blob store: {exc}") from exc
        if self._sweeper is None and self.sweep_interval > 0:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        if self.owned:
            await self.db.close()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                swept = await self.sweep()
                if swept:
                    log.info("dropped %d unfinished or unnamed blob contents", swept)
            except BlobError as exc:
                log.warning("blob sweep failed (tried again in %.0f s): %s",
                            self.sweep_interval, exc)
            await asyncio.sleep(self.sweep_interval)

    # ---- database access -------------------------------------------------

    async def _tx(self, fn: Callable[[Cursor], Awaitable[T]]) -> T:
        """One transaction; database failures become BlobError (the port's error)."""
        try:
            return await self.db._write(fn)
        except StoreError as exc:
            raise BlobError(str(exc)) from exc

    async def _auto(self, fn: Callable[[Cursor], Awaitable[T]]) -> T:
        """Without BEGIN/COMMIT: a read, or one statement that is its own transaction."""
        try:
            return await self.db._read(fn)
        except StoreError as exc:
            raise BlobError(str(exc)) from exc

    @staticmethod
    def _key(key: str) -> str:
        if not valid_key(key):
            raise BlobError(f"not a blob key: {key!r}")
        return key

    # ---- writes ----------------------------------------------------------

    async def put_part(self, upload_id: str, n: int, chunks: AsyncIterator[bytes]) -> str:
        key = new_part_key(upload_id, n)
        await self._put(key, chunks)
        return key

    async def put_object(self, key: str, data: bytes) -> None:
        async def whole() -> AsyncIterator[bytes]:
            yield data

        await self._put(self._key(key), whole())

    async def _put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        cid = secrets.token_hex(16)
        started = _now_ms()

        async def begin(cur: Cursor) -> None:
            await cur.execute("INSERT INTO file_blob_pending (content_id, touched_at) "
                              "VALUES (%s, %s)", (cid, started))

        await self._auto(begin)
        try:
            size = await self._write_chunks(cid, chunks)
            dropped = await self._publish(key, cid, size)
        except BaseException:
            # Best effort (the connection may be what failed): the sweep finds the rest.
            with contextlib.suppress(Exception):
                await self._release(cid, condemn=True)
            raise
        await self._release_all(dropped)

    async def _write_chunks(self, cid: str, chunks: AsyncIterator[bytes]) -> int:
        size = 0
        touched = time.monotonic()
        async for data in _rechunk(chunks, self.chunk_size):
            pos = size

            async def insert(cur: Cursor, data: bytes = data, pos: int = pos) -> None:
                # A hex literal, not a parameter: the driver escapes bytes a character
                # at a time (about 5 MB/s, and a wide string in between); hex() runs
                # at memory speed and its digits need no escaping.
                await cur.execute("INSERT INTO file_blob_chunks (content_id, pos, data) "
                                  f"VALUES (%s, %s, X'{data.hex()}')", (cid, pos))

            await self._auto(insert)
            size += len(data)
            if time.monotonic() - touched >= TOUCH_EVERY:
                touched = time.monotonic()
                await self._touch(cid)
        return size

    async def _touch(self, cid: str) -> None:
        async def job(cur: Cursor) -> int:
            await cur.execute("UPDATE file_blob_pending SET touched_at=%s "
                              "WHERE content_id=%s AND touched_at>0", (_now_ms(), cid))
            return _rows(cur)

        if await self._auto(job) != 1:
            raise BlobError("the write took too long and was abandoned")

    async def _publish(self, key: str, cid: str, size: int) -> list[str]:
        """Name the content ``cid`` by ``key`` (replacing what it named); return the
        contents the key no longer names."""
        async def job(cur: Cursor) -> list[str] | None:
            await cur.execute("DELETE FROM file_blob_pending WHERE content_id=%s AND touched_at>0",
                              (cid,))
            if _rows(cur) != 1:
                return None  # condemned by a sweep: its chunks are being deleted
            dropped = await self._unlink(cur, [key])
            await self._link(cur, key, size, [(cid, size)] if size else [])
            return dropped

        dropped = await self._tx(job)
        if dropped is None:
            raise BlobError("the write took too long and was abandoned")
        return dropped

    @staticmethod
    async def _unlink(cur: Cursor, keys: Sequence[str]) -> list[str]:
        """Delete the keys' rows; mark the contents they named as pending (to be
        dropped unless another key names them too). Locks the keys' rows first."""
        if not keys:
            return []
        marks = ",".join(["%s"] * len(keys))
        await cur.execute(f"SELECT blob_key FROM file_blobs WHERE blob_key IN ({marks}) FOR UPDATE",
                          tuple(keys))
        if not await cur.fetchall():
            return []
        await cur.execute(f"SELECT DISTINCT content_id FROM file_blob_segments "
                          f"WHERE blob_key IN ({marks})", tuple(keys))
        contents = [_s(r[0]) for r in await cur.fetchall()]
        await cur.execute(f"DELETE FROM file_blob_segments WHERE blob_key IN ({marks})",
                          tuple(keys))
        await cur.execute(f"DELETE FROM file_blobs WHERE blob_key IN ({marks})", tuple(keys))
        for cid in contents:
            await cur.execute("INSERT INTO file_blob_pending (content_id, touched_at) "
                              "VALUES (%s, 0) ON DUPLICATE KEY UPDATE touched_at=0", (cid,))
        return contents

    @staticmethod
    async def _link(cur: Cursor, key: str, size: int, contents: Sequence[tuple[str, int]]) -> None:
        await cur.execute("INSERT INTO file_blobs (blob_key, size, created_at) VALUES (%s, %s, %s)",
                          (key, size, _now_ms()))
        rows: list[Any] = []
        pos = 0
        for n, (cid, length) in enumerate(contents):
            rows.append((key, n, cid, pos, length))
            pos += length
        for i in range(0, len(rows), _SEGMENT_ROWS):
            batch = rows[i:i + _SEGMENT_ROWS]
            await cur.execute(
                "INSERT INTO file_blob_segments (blob_key, n, content_id, blob_pos, size) VALUES "
                + ",".join(["(%s,%s,%s,%s,%s)"] * len(batch)),
                tuple(v for row in batch for v in row))

    async def assemble(self, part_keys: Sequence[str], file_id: str) -> str:
        key = file_key(file_id)
        parts = [self._key(k) for k in part_keys]

        async def job(cur: Cursor) -> tuple[list[str], str]:
            contents: list[tuple[str, int]] = []
            if parts:
                marks = ",".join(["%s"] * len(parts))
                # Locked: a concurrent delete of a part waits until the file names its contents.
                await cur.execute(f"SELECT blob_key FROM file_blobs WHERE blob_key IN ({marks}) "
                                  "FOR UPDATE", tuple(parts))
                found = {_s(r[0]) for r in await cur.fetchall()}
                missing = [k for k in parts if k not in found]
                if missing:
                    return [], missing[0]
                await cur.execute(f"SELECT blob_key, content_id, size FROM file_blob_segments "
                                  f"WHERE blob_key IN ({marks}) ORDER BY blob_key, n", tuple(parts))
                by_key: dict[str, list[tuple[str, int]]] = {}
                for k, cid, length in await cur.fetchall():
                    by_key.setdefault(_s(k), []).append((_s(cid), int(length)))
                for k in parts:
                    contents.extend(by_key.get(k, []))
            dropped = await self._unlink(cur, [key])
            await self._link(cur, key, sum(n for _, n in contents), contents)
            return dropped, ""

        dropped, missing = await self._tx(job)
        if missing:
            raise BlobNotFound(missing)
        await self._release_all(dropped)
        return key

    async def delete(self, keys: Sequence[str]) -> None:
        checked = [self._key(k) for k in keys]
        for i in range(0, len(checked), _SEGMENT_ROWS):
            batch = checked[i:i + _SEGMENT_ROWS]

            async def job(cur: Cursor, batch: list[str] = batch) -> list[str]:
                return await self._unlink(cur, batch)

            await self._release_all(await self._tx(job))

    # ---- dropping contents ---------------------------------------------------

    async def _release_all(self, contents: Sequence[str]) -> None:
        for cid in contents:
            try:
                await self._release(cid)
            except BlobError as exc:  # the key is gone already; the sweep drops the bytes
                log.warning("could not drop blob content %s yet: %s", cid, exc)

    async def _release(self, cid: str, condemn: bool = False, older_than: int | None = None) -> bool:
        """Drop a pending content's chunks unless a key names it; True if this call did.

        ``condemn``: mark it first (a writer giving up). ``older_than``: mark it
        only if untouched since then (the sweep), so a live writer keeps it.
        """
        if condemn or older_than is not None:
            async def mark(cur: Cursor) -> int:
                if older_than is None:
                    await cur.execute("UPDATE file_blob_pending SET touched_at=0 "
                                      "WHERE content_id=%s", (cid,))
                else:
                    await cur.execute("UPDATE file_blob_pending SET touched_at=0 "
                                      "WHERE content_id=%s AND touched_at<%s", (cid, older_than))
                return _rows(cur)

            if await self._auto(mark) != 1:
                return False

        async def named(cur: Cursor) -> bool:
            await cur.execute("SELECT 1 FROM file_blob_segments WHERE content_id=%s LIMIT 1",
                              (cid,))
            return await cur.fetchone() is not None

        if not await self._auto(named):
            async def drop_batch(cur: Cursor) -> int:
                await cur.execute("DELETE FROM file_blob_chunks WHERE content_id=%s "
                                  "ORDER BY pos LIMIT %s", (cid, DELETE_BATCH))
                return _rows(cur)

            while await self._auto(drop_batch) == DELETE_BATCH:
                pass

        async def done(cur: Cursor) -> None:
            await cur.execute("DELETE FROM file_blob_pending WHERE content_id=%s AND touched_at=0",
                              (cid,))

        await self._auto(done)
        return True

    async def sweep(self, now_ms: int | None = None) -> int:
        """Drop contents pending longer than ``stale_after`` (writes cut off, drops
        interrupted); returns how many."""
        cutoff = (now_ms if now_ms is not None else _now_ms()) - int(self.stale_after * 1000)
        swept = 0
        while True:
            async def stale(cur: Cursor) -> list[str]:
                await cur.execute("SELECT content_id FROM file_blob_pending WHERE touched_at<%s "
                                  "ORDER BY touched_at LIMIT %s", (cutoff, _SWEEP_BATCH))
                return [_s(r[0]) for r in await cur.fetchall()]

            batch = await self._auto(stale)
            for cid in batch:
                if await self._release(cid, older_than=cutoff):
                    swept += 1
            if len(batch) < _SWEEP_BATCH:
                return swept

    # ---- reads -----------------------------------------------------------

    async def list_parts(self, upload_id: str) -> list[str]:
        prefix = parts_prefix(upload_id)

        async def job(cur: Cursor) -> list[str]:
            await cur.execute("SELECT blob_key FROM file_blobs WHERE blob_key LIKE %s "
                              "ORDER BY blob_key", (prefix + "%",))
            return [_s(r[0]) for r in await cur.fetchall()]

        return [k for k in await self._auto(job) if valid_key(k)]

    async def read(self, key: str, start: int = 0, stop: int | None = None) -> AsyncGenerator[bytes]:
        self._key(key)

        async def segments(cur: Cursor) -> tuple[int, list[tuple[str, int, int]]] | None:
            # One statement, so the size and the segments come from one snapshot.
            await cur.execute(
                "SELECT b.size, s.content_id, s.blob_pos, s.size FROM file_blobs b "
                "LEFT JOIN file_blob_segments s ON s.blob_key = b.blob_key "
                "AND s.blob_pos + s.size > %s AND (%s IS NULL OR s.blob_pos < %s) "
                "WHERE b.blob_key=%s ORDER BY s.n", (start, stop, stop, key))
            rows = await cur.fetchall()
            if not rows:
                return None
            return int(rows[0][0]), [(_s(c), int(p), int(n)) for _, c, p, n in rows
                                     if c is not None]

        found = await self._auto(segments)
        if found is None:
            raise BlobNotFound(key)
        size, segs = found
        end = size if stop is None else min(stop, size)
        for cid, blob_pos, length in segs:
            offset = max(start, blob_pos) - blob_pos  # within this content
            until = min(end, blob_pos + length) - blob_pos
            while offset < until:
                data = await self._chunk(cid, offset, until - offset)
                if not data:
                    # The key was replaced or deleted while it was being read.
                    raise BlobNotFound(f"{key} (changed while being read)")
                offset += len(data)
                yield data

    async def _chunk(self, cid: str, offset: int, most: int) -> bytes:
        """Up to ``most`` bytes of content ``cid`` from ``offset``, from one chunk row
        (cut server-side, so a small range moves only its bytes)."""
        async def job(cur: Cursor) -> bytes:
            await cur.execute(
                "SELECT SUBSTRING(data, %s - pos + 1, %s) FROM file_blob_chunks "
                "WHERE content_id=%s AND pos<=%s ORDER BY pos DESC LIMIT 1",
                (offset, min(most, self.chunk_size), cid, offset))
            row = await cur.fetchone()
            return bytes(row[0]) if row and row[0] is not None else b""

        return await self._auto(job)

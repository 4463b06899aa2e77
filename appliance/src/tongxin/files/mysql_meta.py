"""File metadata in the shared MySQL-protocol database (TiDB, MariaDB Galera in the lab).

Selected with ``storage.backend: mysql``. The tables (store migration 6) sit
beside history and accounts, so an upload begun through a node of dc1 is
resumed, completed and downloaded through any node of dc2, and after a DR
takeover through dr (the tables replicate with the rest of the database).

The store runs on the chat store's connection handling (``MysqlStore``: the
ordered endpoints with failover, retries of deadlocks and TiDB write
conflicts, errors mapped to ``Unavailable``), normally on the very same pool.

**Races between nodes.** ``record_part`` and ``complete`` both begin by
locking the upload's row (``SELECT ... FOR UPDATE``), so a part recorded
through one node while another completes the upload is either in the
completed file's part list or refused with ``NoSuchUpload``; ``complete``
compares the recorded part keys with the ones it assembled under that lock
and answers ``PartsChanged`` if they differ. Every method is one
transaction: a lost connection leaves all of it or none of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asyncmy.cursors import Cursor

from tongxin.files.ports import FileRow, NoSuchUpload, PartRow, PartsChanged, UploadRow
from tongxin.store.mysql_store import MysqlStore, _s

_UPLOAD_COLS = ("id, owner_id, conversation_id, name, size, content_type, sha256, sm3, part_size, "
                "part_count, created_at, expires_at, file_id")
_FILE_COLS = "id, conversation_id, owner_id, name, size, content_type, sha256, sm3, blob_key, created_at"


def _upload(r: Any) -> UploadRow:
    return UploadRow(_s(r[0]), _s(r[1]), _s(r[2]), str(r[3]), int(r[4]), str(r[5]), _s(r[6]),
                     _s(r[7]), int(r[8]), int(r[9]), int(r[10]), int(r[11]), _s(r[12]))


def _file(r: Any) -> FileRow:
    return FileRow(_s(r[0]), _s(r[1]), _s(r[2]), str(r[3]), int(r[4]), str(r[5]), _s(r[6]),
                   _s(r[7]), _s(r[8]), int(r[9]))


def _part(r: Any) -> PartRow:
    return PartRow(_s(r[0]), int(r[1]), int(r[2]), _s(r[3]), _s(r[4]))


def _rows(cur: Cursor) -> int:
    n = cur.rowcount
    return n if isinstance(n, int) else 0


async def _live_upload(cur: Cursor, upload_id: str) -> bool:
    """Lock the upload's row; True if it exists and is not completed."""
    await cur.execute("SELECT file_id FROM uploads WHERE id=%s FOR UPDATE", (upload_id,))
    row = await cur.fetchone()
    return row is not None and not _s(row[0])


class MysqlFileMeta:
    """``FileMetaStore`` on ``db``. With ``owned`` False the pool is the chat
    store's: opening and closing it is the node's business, not this store's."""

    def __init__(self, db: MysqlStore, owned: bool = False) -> None:
        self.db = db
        self.owned = owned

    async def open(self) -> None:
        # An owned database is migrated here; a shared one was when the chat store opened.
        if self.owned:
            await self.db.open()

    async def close(self) -> None:
        if self.owned:
            await self.db.close()

    async def create_upload(self, upload: UploadRow) -> None:
        u = upload

        async def job(cur: Cursor) -> None:
            await cur.execute(
                f"INSERT INTO uploads ({_UPLOAD_COLS}) VALUES "
                "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (u.id, u.owner_id, u.conversation_id, u.name, u.size, u.content_type, u.sha256,
                 u.sm3, u.part_size, u.part_count, u.created_at, u.expires_at, u.file_id))

        await self.db._write(job)

    async def get_upload(self, upload_id: str) -> UploadRow | None:
        async def job(cur: Cursor) -> UploadRow | None:
            await cur.execute(f"SELECT {_UPLOAD_COLS} FROM uploads WHERE id=%s", (upload_id,))
            row = await cur.fetchone()
            return _upload(row) if row else None

        return await self.db._read(job)

    async def list_parts(self, upload_id: str) -> list[PartRow]:
        async def job(cur: Cursor) -> list[PartRow]:
            await cur.execute("SELECT upload_id, n, size, sha256, blob_key FROM upload_parts "
                              "WHERE upload_id=%s ORDER BY n", (upload_id,))
            return [_part(r) for r in await cur.fetchall()]

        return await self.db._read(job)

    async def record_part(self, part: PartRow, expires_at: int) -> str | None:
        p = part

        # Refusals come back as values, not exceptions: the transaction then
        # ends with an (empty) COMMIT and its connection goes back to the pool.
        async def job(cur: Cursor) -> tuple[bool, str | None]:
            if not await _live_upload(cur, p.upload_id):
                return False, None
            await cur.execute("SELECT blob_key FROM upload_parts WHERE upload_id=%s AND n=%s",
                              (p.upload_id, p.n))
            old = await cur.fetchone()
            await cur.execute(
                "INSERT INTO upload_parts (upload_id, n, size, sha256, blob_key) "
                "VALUES (%s,%s,%s,%s,%s) ON DUPLICATE KEY UPDATE size=VALUES(size), "
                "sha256=VALUES(sha256), blob_key=VALUES(blob_key)",
                (p.upload_id, p.n, p.size, p.sha256, p.key))
            await cur.execute("UPDATE uploads SET expires_at=GREATEST(expires_at, %s) WHERE id=%s",
                              (expires_at, p.upload_id))
            replaced = _s(old[0]) if old is not None else None
            return True, replaced if replaced != p.key else None

        live, replaced = await self.db._write(job)
        if not live:
            raise NoSuchUpload(p.upload_id)
        return replaced

    async def forget_part(self, upload_id: str, n: int, key: str) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute("DELETE FROM upload_parts WHERE upload_id=%s AND n=%s AND blob_key=%s",
                              (upload_id, n, key))

        await self.db._write(job)

    async def complete(self, upload_id: str, file: FileRow, part_keys: Sequence[str]) -> None:
        f = file

        async def job(cur: Cursor) -> type[Exception] | None:
            if not await _live_upload(cur, upload_id):
                return NoSuchUpload
            await cur.execute("SELECT blob_key FROM upload_parts WHERE upload_id=%s ORDER BY n",
                              (upload_id,))
            if [_s(r[0]) for r in await cur.fetchall()] != list(part_keys):
                return PartsChanged
            await cur.execute(
                f"INSERT INTO files ({_FILE_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (f.id, f.conversation_id, f.owner_id, f.name, f.size, f.content_type, f.sha256,
                 f.sm3, f.key, f.created_at))
            await cur.execute("UPDATE uploads SET file_id=%s WHERE id=%s", (f.id, upload_id))
            await cur.execute("DELETE FROM upload_parts WHERE upload_id=%s", (upload_id,))
            return None

        refused = await self.db._write(job)
        if refused is not None:
            raise refused(upload_id)

    async def delete_upload(self, upload_id: str, expired_before: int | None = None) -> bool:
        async def job(cur: Cursor) -> bool:
            if expired_before is None:
                await cur.execute("DELETE FROM uploads WHERE id=%s", (upload_id,))
            else:
                await cur.execute("DELETE FROM uploads WHERE id=%s AND expires_at<=%s",
                                  (upload_id, expired_before))
            deleted = _rows(cur) == 1
            if deleted:  # what ON DELETE CASCADE does on SQLite
                await cur.execute("DELETE FROM upload_parts WHERE upload_id=%s", (upload_id,))
            return deleted

        return await self.db._write(job)

    async def expired_uploads(self, now: int, limit: int) -> list[UploadRow]:
        async def job(cur: Cursor) -> list[UploadRow]:
            await cur.execute(f"SELECT {_UPLOAD_COLS} FROM uploads WHERE expires_at<=%s "
                              "ORDER BY expires_at LIMIT %s", (now, limit))
            return [_upload(r) for r in await cur.fetchall()]

        return await self.db._read(job)

    async def get_file(self, file_id: str) -> FileRow | None:
        async def job(cur: Cursor) -> FileRow | None:
            await cur.execute(f"SELECT {_FILE_COLS} FROM files WHERE id=%s", (file_id,))
            row = await cur.fetchone()
            return _file(row) if row else None

        return await self.db._read(job)

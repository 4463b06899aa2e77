"""File metadata in the node's SQLite database (the embedded default).

The tables live in the same file as history and accounts (tongxin.db), so one
backup holds both, but are written through a writer thread of their own: the
chat store keeps its group-commit queue to itself, and the file tables stay
out of the ``ChatStore`` port (a TiDB adapter implements ``FileMetaStore``
separately). Two writers on one WAL database take turns on its write lock; a
part record is one short transaction per part (8 MiB by default), so the
chat writer rarely waits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tongxin.files.ports import FileRow, NoSuchUpload, PartRow, PartsChanged, UploadRow
from tongxin.store.sqlite_worker import SqliteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    sm3 TEXT NOT NULL,
    part_size INTEGER NOT NULL,
    part_count INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    file_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS uploads_by_expiry ON uploads(expires_at);
CREATE TABLE IF NOT EXISTS upload_parts (
    upload_id TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    PRIMARY KEY (upload_id, n)
);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    sm3 TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_conversation ON files(conversation_id);
"""

_UPLOAD_COLS = ("id, owner_id, conversation_id, name, size, content_type, sha256, sm3, part_size, "
                "part_count, created_at, expires_at, file_id")
_FILE_COLS = "id, conversation_id, owner_id, name, size, content_type, sha256, sm3, blob_key, created_at"


def _upload(row: Any) -> UploadRow:
    return UploadRow(*row)


def _file(row: Any) -> FileRow:
    return FileRow(*row)


def _live_upload(conn: sqlite3.Connection, upload_id: str) -> None:
    row = conn.execute("SELECT file_id FROM uploads WHERE id=?", (upload_id,)).fetchone()
    if row is None or row[0]:
        raise NoSuchUpload(upload_id)


class SqliteFileMeta(SqliteDatabase):
    def __init__(self, path: Path, synchronous: str = "full") -> None:
        super().__init__(path, synchronous, 64, "files")

    def apply_schema(self, conn: sqlite3.Connection) -> None:
        # CREATE ... IF NOT EXISTS: the tables appear on the first start of a
        # release that has them; later column changes get migrations here.
        conn.executescript(SCHEMA)

    async def create_upload(self, upload: UploadRow) -> None:
        u = upload
        await self._writer.run(lambda c: c.execute(
            f"INSERT INTO uploads ({_UPLOAD_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (u.id, u.owner_id, u.conversation_id, u.name, u.size, u.content_type, u.sha256,
             u.sm3, u.part_size, u.part_count, u.created_at, u.expires_at, u.file_id)))

    async def get_upload(self, upload_id: str) -> UploadRow | None:
        def job(conn: sqlite3.Connection) -> UploadRow | None:
            row = conn.execute(f"SELECT {_UPLOAD_COLS} FROM uploads WHERE id=?",
                               (upload_id,)).fetchone()
            return _upload(row) if row else None

        return await self._reader.run(job)

    async def list_parts(self, upload_id: str) -> list[PartRow]:
        return await self._reader.run(lambda c: [PartRow(*r) for r in c.execute(
            "SELECT upload_id, n, size, sha256, blob_key FROM upload_parts WHERE upload_id=? "
            "ORDER BY n", (upload_id,))])

    async def record_part(self, part: PartRow, expires_at: int) -> str | None:
        def job(conn: sqlite3.Connection) -> str | None:
            _live_upload(conn, part.upload_id)
            old = conn.execute("SELECT blob_key FROM upload_parts WHERE upload_id=? AND n=?",
                               (part.upload_id, part.n)).fetchone()
            conn.execute(
                "INSERT INTO upload_parts (upload_id, n, size, sha256, blob_key) VALUES (?,?,?,?,?) "
                "ON CONFLICT (upload_id, n) DO UPDATE SET size=excluded.size, "
                "sha256=excluded.sha256, blob_key=excluded.blob_key",
                (part.upload_id, part.n, part.size, part.sha256, part.key))
            conn.execute("UPDATE uploads SET expires_at=MAX(expires_at, ?) WHERE id=?",
                         (expires_at, part.upload_id))
            return str(old[0]) if old is not None and old[0] != part.key else None

        return await self._writer.run(job)

    async def forget_part(self, upload_id: str, n: int, key: str) -> None:
        await self._writer.run(lambda c: c.execute(
            "DELETE FROM upload_parts WHERE upload_id=? AND n=? AND blob_key=?", (upload_id, n, key)))

    async def complete(self, upload_id: str, file: FileRow, part_keys: Sequence[str]) -> None:
        f = file

        def job(conn: sqlite3.Connection) -> None:
            _live_upload(conn, upload_id)
            keys = [r[0] for r in conn.execute(
                "SELECT blob_key FROM upload_parts WHERE upload_id=? ORDER BY n", (upload_id,))]
            if keys != list(part_keys):
                raise PartsChanged(upload_id)
            conn.execute(f"INSERT INTO files ({_FILE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (f.id, f.conversation_id, f.owner_id, f.name, f.size, f.content_type,
                          f.sha256, f.sm3, f.key, f.created_at))
            conn.execute("UPDATE uploads SET file_id=? WHERE id=?", (f.id, upload_id))
            conn.execute("DELETE FROM upload_parts WHERE upload_id=?", (upload_id,))

        await self._writer.run(job)

    async def delete_upload(self, upload_id: str, expired_before: int | None = None) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            if expired_before is None:
                cur = conn.execute("DELETE FROM uploads WHERE id=?", (upload_id,))
            else:
                cur = conn.execute("DELETE FROM uploads WHERE id=? AND expires_at<=?",
                                   (upload_id, expired_before))
            return cur.rowcount == 1

        return await self._writer.run(job)

    async def expired_uploads(self, now: int, limit: int) -> list[UploadRow]:
        return await self._reader.run(lambda c: [_upload(r) for r in c.execute(
            f"SELECT {_UPLOAD_COLS} FROM uploads WHERE expires_at<=? ORDER BY expires_at LIMIT ?",
            (now, limit))])

    async def get_file(self, file_id: str) -> FileRow | None:
        def job(conn: sqlite3.Connection) -> FileRow | None:
            row = conn.execute(f"SELECT {_FILE_COLS} FROM files WHERE id=?", (file_id,)).fetchone()
            return _file(row) if row else None

        return await self._reader.run(job)

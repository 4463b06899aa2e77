"""What retention and export need from message history, beyond the chat port.

The chat port (``tongxin.store.ports.ChatStore``) is shaped for chat: one
conversation, one member at a time. Retention walks every conversation and
deletes in batches; export reads by time range. :class:`SqliteHistory` does
that on the embedded SQLite message store with its own connection (WAL lets
it run beside the node). A MySQL/TiDB adapter is not written yet.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Protocol

from tongxin.config import Config
from tongxin.store.ports import Entry
from tongxin.store.sqlite_worker import SqliteWorker

_ENTRY_COLS = ("conversation_id, sender_id, sender_device, client_msg_id, sent_at, kind, content, "
               "target_seq, system, seq, recalled, edited_at")


def _entry(row: Any) -> Entry:
    return Entry(row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6]), row[7],
                 bytes(row[8]), row[9], bool(row[10]), row[11])


class HistoryPort(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def conversation_ids(self, after: str, limit: int) -> list[str]: ...
    async def member_ids(self, conversation_id: str) -> list[str]: ...
    async def delete_before(self, conversation_id: str, cutoff_ms: int, spare_senders: list[str],
                            limit: int) -> int:
        """Delete up to ``limit`` entries sent before ``cutoff_ms`` (one transaction)."""
        ...
    async def entries_between(self, conversation_id: str, from_ms: int, to_ms: int, after_seq: int,
                              limit: int, min_seq: int = 0) -> list[Entry]: ...
    async def memberships(self, user_id: str) -> list[tuple[str, int]]:
        """(conversation id, joined seq) of every conversation the user is in."""
        ...
    async def sent_by(self, user_id: str, from_ms: int, to_ms: int) -> list[Entry]: ...
    async def count(self) -> int: ...


class HistoryUnsupported(RuntimeError):
    """Retention and export are implemented for the SQLite message store only, so far."""


def make_history(cfg: Config) -> HistoryPort:
    if cfg.storage.backend != "sqlite":
        raise HistoryUnsupported(
            f"retention and export support the sqlite message store; {cfg.storage.backend!r} "
            "has no adapter yet")
    return SqliteHistory(cfg.sqlite_file, cfg.storage.sqlite_synchronous)


class SqliteHistory:
    def __init__(self, path: Path, synchronous: str = "full") -> None:
        self.path = path
        self._writer = SqliteWorker(path, synchronous, 16, "tongxin-retention-writer")
        self._reader = SqliteWorker(path, synchronous, 1, "tongxin-retention-reader")

    async def open(self) -> None:
        if not self.path.exists():
            raise FileNotFoundError(f"no message database at {self.path}")
        self._writer.start()
        self._reader.start()

    async def close(self) -> None:
        await self._reader.stop()
        await self._writer.stop()

    async def conversation_ids(self, after: str, limit: int) -> list[str]:
        return await self._reader.run(lambda c: [r[0] for r in c.execute(
            "SELECT id FROM conversations WHERE id > ? ORDER BY id LIMIT ?", (after, limit))])

    async def member_ids(self, conversation_id: str) -> list[str]:
        return await self._reader.run(lambda c: [r[0] for r in c.execute(
            "SELECT user_id FROM members WHERE conversation_id = ?", (conversation_id,))])

    async def delete_before(self, conversation_id: str, cutoff_ms: int, spare_senders: list[str],
                            limit: int) -> int:
        marks = ",".join("?" * len(spare_senders))
        spare = f"AND sender_id NOT IN ({marks})" if spare_senders else ""

        def job(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages "
                f"WHERE conversation_id = ? AND sent_at < ? {spare} ORDER BY seq LIMIT ?)",
                (conversation_id, cutoff_ms, *spare_senders, limit)).rowcount

        return await self._writer.run(job)

    async def entries_between(self, conversation_id: str, from_ms: int, to_ms: int, after_seq: int,
                              limit: int, min_seq: int = 0) -> list[Entry]:
        return await self._reader.run(lambda c: [_entry(r) for r in c.execute(
            f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id = ? AND seq > ? "
            "AND sent_at >= ? AND sent_at < ? ORDER BY seq LIMIT ?",
            (conversation_id, max(after_seq, min_seq - 1), from_ms, to_ms, limit))])

    async def memberships(self, user_id: str) -> list[tuple[str, int]]:
        return await self._reader.run(lambda c: [(r[0], int(r[1])) for r in c.execute(
            "SELECT conversation_id, joined_seq FROM members WHERE user_id = ? "
            "ORDER BY conversation_id", (user_id,))])

    async def sent_by(self, user_id: str, from_ms: int, to_ms: int) -> list[Entry]:
        return await self._reader.run(lambda c: [_entry(r) for r in c.execute(
            f"SELECT {_ENTRY_COLS} FROM messages WHERE sender_id = ? AND sent_at >= ? "
            "AND sent_at < ? ORDER BY conversation_id, seq", (user_id, from_ms, to_ms))])

    async def count(self) -> int:
        return await self._reader.run(
            lambda c: int(c.execute("SELECT COUNT(*) FROM messages").fetchone()[0]))

"""Key directory in its own SQLite file (<data_dir>/keydir.db), written through the same
group-committing worker as the chat store but on a separate file so that key traffic
never takes the chat store's write lock."""

from __future__ import annotations

import sqlite3
from typing import Any

from tongxin.keydir.ports import (
    DeviceRow,
    DeviceSignatureRow,
    DuplicatePreKey,
    PreKeyRow,
    TooManyPreKeys,
    UserKeyRow,
)
from tongxin.store.sqlite_worker import SqliteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS e2ee_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    suite TEXT NOT NULL,
    identity_key BLOB NOT NULL,
    spk_id INTEGER NOT NULL,
    spk_public BLOB NOT NULL,
    spk_signature BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE IF NOT EXISTS e2ee_one_time_prekeys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_id INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id)
);
CREATE TABLE IF NOT EXISTS e2ee_user_keys (
    user_id TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    user_key BLOB NOT NULL,
    backup BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS e2ee_device_signatures (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    identity_key BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
"""

_DEV_COLS = ("user_id, device_id, suite, identity_key, spk_id, spk_public, spk_signature, "
             "updated_at")


def _dev(r: Any) -> DeviceRow:
    return DeviceRow(r[0], r[1], r[2], bytes(r[3]), int(r[4]), bytes(r[5]), bytes(r[6]),
                     int(r[7]))


class SqliteKeyDir(SqliteDatabase):
    def apply_schema(self, conn: sqlite3.Connection) -> None:
        conn.executescript(SCHEMA)

    async def get_device(self, user_id: str, device_id: str) -> DeviceRow | None:
        def job(c: sqlite3.Connection) -> DeviceRow | None:
            r = c.execute(f"SELECT {_DEV_COLS} FROM e2ee_devices WHERE user_id = ? AND "
                          "device_id = ?", (user_id, device_id)).fetchone()
            return None if r is None else _dev(r)
        return await self._reader.run(job)

    async def put_device(self, row: DeviceRow, new_identity: bool) -> None:
        def job(c: sqlite3.Connection) -> None:
            if new_identity:
                c.execute("DELETE FROM e2ee_one_time_prekeys WHERE user_id = ? AND "
                          "device_id = ?", (row.user_id, row.device_id))
            c.execute(f"INSERT OR REPLACE INTO e2ee_devices ({_DEV_COLS}) "
                      "VALUES (?,?,?,?,?,?,?,?)",
                      (row.user_id, row.device_id, row.suite, row.identity_key, row.spk_id,
                       row.spk_public, row.spk_signature, row.updated_at))
        await self._writer.run(job)

    async def add_one_time(self, user_id: str, device_id: str, keys: list[PreKeyRow],
                           cap: int) -> int:
        def job(c: sqlite3.Connection) -> int:
            have = c.execute("SELECT COUNT(*) FROM e2ee_one_time_prekeys WHERE user_id = ? "
                             "AND device_id = ?", (user_id, device_id)).fetchone()[0]
            if have + len(keys) > cap:
                raise TooManyPreKeys(f"{have} stored + {len(keys)} new exceeds {cap}")
            try:
                c.executemany("INSERT INTO e2ee_one_time_prekeys (user_id, device_id, key_id, "
                              "public_key, signature) VALUES (?,?,?,?,?)",
                              [(user_id, device_id, k.key_id, k.public_key, k.signature)
                               for k in keys])
            except sqlite3.IntegrityError as exc:
                raise DuplicatePreKey(str(exc)) from exc
            return int(have) + len(keys)
        return await self._writer.run(job)

    async def count_one_time(self, user_id: str, device_id: str) -> int:
        def job(c: sqlite3.Connection) -> int:
            return int(c.execute("SELECT COUNT(*) FROM e2ee_one_time_prekeys WHERE user_id = ? "
                                 "AND device_id = ?", (user_id, device_id)).fetchone()[0])
        return await self._reader.run(job)

    async def devices(self, user_ids: list[str], per_user: int) -> list[DeviceRow]:
        def job(c: sqlite3.Connection) -> list[DeviceRow]:
            out: list[DeviceRow] = []
            for uid in user_ids:
                out.extend(_dev(r) for r in c.execute(
                    f"SELECT {_DEV_COLS} FROM e2ee_devices WHERE user_id = ? ORDER BY device_id "
                    "LIMIT ?", (uid, per_user)))
            return out
        return await self._reader.run(job)

    async def take_one_time(self, user_id: str, device_id: str) -> PreKeyRow | None:
        def job(c: sqlite3.Connection) -> PreKeyRow | None:
            r = c.execute("DELETE FROM e2ee_one_time_prekeys WHERE rowid = (SELECT rowid FROM "
                          "e2ee_one_time_prekeys WHERE user_id = ? AND device_id = ? ORDER BY "
                          "key_id LIMIT 1) RETURNING key_id, public_key, signature",
                          (user_id, device_id)).fetchone()
            return None if r is None else PreKeyRow(int(r[0]), bytes(r[1]), bytes(r[2]))
        return await self._writer.run(job)

    async def user_keys(self, user_ids: list[str]) -> list[UserKeyRow]:
        def job(c: sqlite3.Connection) -> list[UserKeyRow]:
            out: list[UserKeyRow] = []
            for uid in user_ids:
                r = c.execute("SELECT user_id, suite, user_key, backup, updated_at FROM "
                              "e2ee_user_keys WHERE user_id = ?", (uid,)).fetchone()
                if r is not None:
                    out.append(UserKeyRow(r[0], r[1], bytes(r[2]), bytes(r[3]), int(r[4])))
            return out
        return await self._reader.run(job)

    async def insert_user_key(self, row: UserKeyRow) -> bool:
        def job(c: sqlite3.Connection) -> bool:
            cur = c.execute("INSERT OR IGNORE INTO e2ee_user_keys (user_id, suite, user_key, "
                            "backup, updated_at) VALUES (?,?,?,?,?)",
                            (row.user_id, row.suite, row.user_key, row.backup, row.updated_at))
            return cur.rowcount == 1
        return await self._writer.run(job)

    async def set_user_key_backup(self, user_id: str, user_key: bytes, backup: bytes,
                                  updated_at: int) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.execute("UPDATE e2ee_user_keys SET backup = ?, updated_at = ? WHERE user_id = ? "
                      "AND user_key = ?", (backup, updated_at, user_id, user_key))
        await self._writer.run(job)

    async def put_device_signature(self, row: DeviceSignatureRow) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR REPLACE INTO e2ee_device_signatures (user_id, device_id, "
                      "identity_key, signature) VALUES (?,?,?,?)",
                      (row.user_id, row.device_id, row.identity_key, row.signature))
        await self._writer.run(job)

    async def device_signatures(self, user_ids: list[str]) -> list[DeviceSignatureRow]:
        def job(c: sqlite3.Connection) -> list[DeviceSignatureRow]:
            out: list[DeviceSignatureRow] = []
            for uid in user_ids:
                out.extend(DeviceSignatureRow(r[0], r[1], bytes(r[2]), bytes(r[3])) for r in c.execute(
                    "SELECT user_id, device_id, identity_key, signature FROM "
                    "e2ee_device_signatures WHERE user_id = ?", (uid,)))
            return out
        return await self._reader.run(job)

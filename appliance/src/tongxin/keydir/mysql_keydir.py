"""Key directory tables in the MySQL/TiDB database of the chat store, sharing its pool.

The tables are created idempotently when the directory opens (``CREATE TABLE IF NOT
EXISTS``), in the SQL subset TiDB runs. Taking a one-time prekey is one transaction with a
locking read so that two fetches never hand out the same key.
"""

from __future__ import annotations

from typing import Any

from asyncmy.cursors import Cursor
from asyncmy.errors import IntegrityError

from tongxin.keydir.ports import (
    DeviceRow,
    DeviceSignatureRow,
    DuplicatePreKey,
    PreKeyRow,
    TooManyPreKeys,
    UserKeyRow,
)
from tongxin.store.mysql_store import MysqlStore

TABLES = (
    """CREATE TABLE IF NOT EXISTS e2ee_devices (
        user_id VARCHAR(64) NOT NULL,
        device_id VARCHAR(191) NOT NULL,
        suite VARCHAR(32) NOT NULL,
        identity_key VARBINARY(512) NOT NULL,
        spk_id BIGINT NOT NULL,
        spk_public VARBINARY(512) NOT NULL,
        spk_signature VARBINARY(256) NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id)
    )""",
    """CREATE TABLE IF NOT EXISTS e2ee_one_time_prekeys (
        user_id VARCHAR(64) NOT NULL,
        device_id VARCHAR(191) NOT NULL,
        key_id BIGINT NOT NULL,
        public_key VARBINARY(512) NOT NULL,
        signature VARBINARY(256) NOT NULL,
        PRIMARY KEY (user_id, device_id, key_id)
    )""",
    """CREATE TABLE IF NOT EXISTS e2ee_user_keys (
        user_id VARCHAR(64) NOT NULL,
        suite VARCHAR(32) NOT NULL,
        user_key VARBINARY(512) NOT NULL,
        backup VARBINARY(4096) NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (user_id)
    )""",
    """CREATE TABLE IF NOT EXISTS e2ee_device_signatures (
        user_id VARCHAR(64) NOT NULL,
        device_id VARCHAR(191) NOT NULL,
        identity_key VARBINARY(512) NOT NULL,
        signature VARBINARY(256) NOT NULL,
        PRIMARY KEY (user_id, device_id)
    )""",
)

_DEV_COLS = ("user_id, device_id, suite, identity_key, spk_id, spk_public, spk_signature, "
             "updated_at")


def _dev(r: Any) -> DeviceRow:
    return DeviceRow(str(r[0]), str(r[1]), str(r[2]), bytes(r[3]), int(r[4]), bytes(r[5]),
                     bytes(r[6]), int(r[7]))


class MysqlKeyDir:
    def __init__(self, store: MysqlStore) -> None:
        self.store = store

    # The chat store owns the pool and its error mapping (driver errors -> Unavailable);
    # the directory runs its statements through the same helpers.
    async def _read(self, fn: Any) -> Any:
        return await self.store._read(fn)

    async def _write(self, fn: Any) -> Any:
        return await self.store._write(fn)

    async def open(self) -> None:
        async def job(cur: Cursor) -> None:
            for sql in TABLES:
                await cur.execute(sql)
        await self._write(job)

    async def close(self) -> None:
        """The pool belongs to the chat store, which closes it."""

    async def get_device(self, user_id: str, device_id: str) -> DeviceRow | None:
        async def job(cur: Cursor) -> DeviceRow | None:
            await cur.execute(f"SELECT {_DEV_COLS} FROM e2ee_devices WHERE user_id = %s AND "
                              "device_id = %s", (user_id, device_id))
            r = await cur.fetchone()
            return None if r is None else _dev(r)
        result: DeviceRow | None = await self._read(job)
        return result

    async def put_device(self, row: DeviceRow, new_identity: bool) -> None:
        async def job(cur: Cursor) -> None:
            if new_identity:
                await cur.execute("DELETE FROM e2ee_one_time_prekeys WHERE user_id = %s AND "
                                  "device_id = %s", (row.user_id, row.device_id))
            await cur.execute(
                f"INSERT INTO e2ee_devices ({_DEV_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON DUPLICATE KEY UPDATE suite = VALUES(suite), "
                "identity_key = VALUES(identity_key), spk_id = VALUES(spk_id), "
                "spk_public = VALUES(spk_public), spk_signature = VALUES(spk_signature), "
                "updated_at = VALUES(updated_at)",
                (row.user_id, row.device_id, row.suite, row.identity_key, row.spk_id,
                 row.spk_public, row.spk_signature, row.updated_at))
        await self._write(job)

    async def add_one_time(self, user_id: str, device_id: str, keys: list[PreKeyRow],
                           cap: int) -> int:
        async def job(cur: Cursor) -> int:
            # Lock the device row so that two concurrent publishes cannot both pass the cap.
            await cur.execute("SELECT user_id FROM e2ee_devices WHERE user_id = %s AND "
                              "device_id = %s FOR UPDATE", (user_id, device_id))
            await cur.fetchone()
            await cur.execute("SELECT COUNT(*) FROM e2ee_one_time_prekeys WHERE user_id = %s "
                              "AND device_id = %s", (user_id, device_id))
            have = int((await cur.fetchone())[0])
            if have + len(keys) > cap:
                raise TooManyPreKeys(f"{have} stored + {len(keys)} new exceeds {cap}")
            try:
                await cur.executemany(
                    "INSERT INTO e2ee_one_time_prekeys (user_id, device_id, key_id, public_key, "
                    "signature) VALUES (%s,%s,%s,%s,%s)",
                    [(user_id, device_id, k.key_id, k.public_key, k.signature) for k in keys])
            except IntegrityError as exc:
                raise DuplicatePreKey(str(exc)) from exc
            return have + len(keys)
        result: int = await self._write(job)
        return result

    async def count_one_time(self, user_id: str, device_id: str) -> int:
        async def job(cur: Cursor) -> int:
            await cur.execute("SELECT COUNT(*) FROM e2ee_one_time_prekeys WHERE user_id = %s "
                              "AND device_id = %s", (user_id, device_id))
            return int((await cur.fetchone())[0])
        result: int = await self._read(job)
        return result

    async def devices(self, user_ids: list[str], per_user: int) -> list[DeviceRow]:
        async def job(cur: Cursor) -> list[DeviceRow]:
            out: list[DeviceRow] = []
            for uid in user_ids:
                await cur.execute(f"SELECT {_DEV_COLS} FROM e2ee_devices WHERE user_id = %s "
                                  "ORDER BY device_id LIMIT %s", (uid, per_user))
                out.extend(_dev(r) for r in await cur.fetchall())
            return out
        result: list[DeviceRow] = await self._read(job)
        return result

    async def take_one_time(self, user_id: str, device_id: str) -> PreKeyRow | None:
        async def job(cur: Cursor) -> PreKeyRow | None:
            await cur.execute("SELECT key_id, public_key, signature FROM e2ee_one_time_prekeys "
                              "WHERE user_id = %s AND device_id = %s ORDER BY key_id LIMIT 1 "
                              "FOR UPDATE", (user_id, device_id))
            r = await cur.fetchone()
            if r is None:
                return None
            await cur.execute("DELETE FROM e2ee_one_time_prekeys WHERE user_id = %s AND "
                              "device_id = %s AND key_id = %s", (user_id, device_id, r[0]))
            return PreKeyRow(int(r[0]), bytes(r[1]), bytes(r[2]))
        result: PreKeyRow | None = await self._write(job)
        return result

    async def user_keys(self, user_ids: list[str]) -> list[UserKeyRow]:
        async def job(cur: Cursor) -> list[UserKeyRow]:
            out: list[UserKeyRow] = []
            for uid in user_ids:
                await cur.execute("SELECT user_id, suite, user_key, backup, updated_at FROM "
                                  "e2ee_user_keys WHERE user_id = %s", (uid,))
                r = await cur.fetchone()
                if r is not None:
                    out.append(UserKeyRow(str(r[0]), str(r[1]), bytes(r[2]), bytes(r[3]),
                                          int(r[4])))
            return out
        result: list[UserKeyRow] = await self._read(job)
        return result

    async def insert_user_key(self, row: UserKeyRow) -> bool:
        async def job(cur: Cursor) -> bool:
            # INSERT IGNORE would also hide other errors; a duplicate key is the only
            # expected refusal.
            try:
                await cur.execute("INSERT INTO e2ee_user_keys (user_id, suite, user_key, backup, "
                                  "updated_at) VALUES (%s,%s,%s,%s,%s)",
                                  (row.user_id, row.suite, row.user_key, row.backup,
                                   row.updated_at))
            except IntegrityError:
                return False
            return True
        result: bool = await self._write(job)
        return result

    async def set_user_key_backup(self, user_id: str, user_key: bytes, backup: bytes,
                                  updated_at: int) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute("UPDATE e2ee_user_keys SET backup = %s, updated_at = %s WHERE "
                              "user_id = %s AND user_key = %s",
                              (backup, updated_at, user_id, user_key))
        await self._write(job)

    async def put_device_signature(self, row: DeviceSignatureRow) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute(
                "INSERT INTO e2ee_device_signatures (user_id, device_id, identity_key, "
                "signature) VALUES (%s,%s,%s,%s) ON DUPLICATE KEY UPDATE "
                "identity_key = VALUES(identity_key), signature = VALUES(signature)",
                (row.user_id, row.device_id, row.identity_key, row.signature))
        await self._write(job)

    async def device_signatures(self, user_ids: list[str]) -> list[DeviceSignatureRow]:
        async def job(cur: Cursor) -> list[DeviceSignatureRow]:
            out: list[DeviceSignatureRow] = []
            for uid in user_ids:
                await cur.execute("SELECT user_id, device_id, identity_key, signature FROM "
                                  "e2ee_device_signatures WHERE user_id = %s", (uid,))
                out.extend(DeviceSignatureRow(str(r[0]), str(r[1]), bytes(r[2]), bytes(r[3]))
                           for r in await cur.fetchall())
            return out
        result: list[DeviceSignatureRow] = await self._read(job)
        return result

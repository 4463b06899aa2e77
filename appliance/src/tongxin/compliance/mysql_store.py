"""The compliance store on MySQL/TiDB: the state every node of an installation shares.

Selected with ``storage.backend: mysql``: the tables live in the message
store's database (created by :mod:`tongxin.compliance.migrations`, recorded
in ``compliance_migrations``), so a legal hold placed through one node stops
a retention run on another, a TOTP enrolled on one node signs in on all of
them, and an admin session is valid behind any node of the load balancer.

**One audit chain for all nodes.** ``append_audit`` runs one transaction::

    SELECT last_seq, last_hash FROM audit_state WHERE id = 1 FOR UPDATE
    INSERT INTO audit_records (seq = last_seq + 1, prev = last_hash, ...)
    UPDATE audit_state SET last_seq = ..., last_hash = ...
    COMMIT

The row lock on the chain head serialises appenders on every node: the next
record needs the previous record's *hash*, not just a fresh number, so a
sequence table (or AUTO_INCREMENT) alone would hand out seqs but still let
two appenders link to the same predecessor. Holding the head's lock from
reading ``prev`` to COMMIT makes "read the head, link, advance the head" one
step, exactly as ``BEGIN IMMEDIATE`` does on SQLite. The row exists from the
migration on (seq 0, the genesis hash), so the first append locks a row too
rather than racing to insert it. The cost is that appends are serial across
the installation (one short transaction each); audit events are far rarer
than messages. On TiDB ``FOR UPDATE`` locks the same way in the
pessimistic transactions every session of the pool asks for
(:meth:`tongxin.store.mysql_store.MysqlStore._prepare`; TiKV's default,
not unistore's); a write conflict or deadlock is rolled back and retried by
the pool wrapper.

Each node signs heads with its own SM2 key; ``publish_key`` stores the
public keys here so that any node (and ``tongxin audit verify`` anywhere)
can check every head.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from asyncmy import errors as myerrors
from asyncmy.connection import Connection
from asyncmy.cursors import Cursor

from tongxin.compliance import chain
from tongxin.compliance import migrations as cmigrations
from tongxin.compliance.ports import (
    AdminSession,
    AuditRecord,
    Hold,
    RetentionRun,
    SignedHead,
    SmsCode,
    SmsPhone,
    TotpRow,
)
from tongxin.store.dsn import MysqlDsn
from tongxin.store.migrations import Migration
from tongxin.store.mysql_store import _DB_ERRORS, MysqlStore, _code, _s
from tongxin.store.ports import StoreError, Unavailable

log = logging.getLogger("tongxin.compliance.mysql")

_AUDIT_COLS = "seq, ts, event, actor, target, outcome, body, hash"
_HOLD_COLS = "id, kind, target, reason, created_by, created_at, released_at, released_by"
_RUN_COLS = "id, started_at, started_by, cutoffs, run_cursor, deleted, finished_at"
_LOCK_PREFIX = "tongxin.compliance."
ER_LOCK_NOWAIT = 3572  # FOR UPDATE NOWAIT met a lock (MySQL 8, TiDB)
ER_LOCK_WAIT_TIMEOUT = 1205  # the same on MariaDB



def _rows(cur: Cursor) -> int:
    """Rows matched by the last statement (the driver types rowcount as object)."""
    n = cur.rowcount
    return n if isinstance(n, int) else 0


def _record(r: Any) -> AuditRecord:
    return AuditRecord(int(r[0]), int(r[1]), _s(r[2]), _s(r[3]), _s(r[4]), _s(r[5]), _s(r[6]),
                       _s(r[7]))


def _hold(r: Any) -> Hold:
    return Hold(int(r[0]), _s(r[1]), _s(r[2]), _s(r[3]), _s(r[4]), int(r[5]), int(r[6]), _s(r[7]))


def _run(r: Any) -> RetentionRun:
    return RetentionRun(int(r[0]), int(r[1]), _s(r[2]), json.loads(_s(r[3])), _s(r[4]), int(r[5]),
                        int(r[6]))


class _Db(MysqlStore):
    """The message store's connection handling (pool, retries, error mapping,
    migration lock), applying the compliance migrations instead of its own."""

    migrations_table = cmigrations.TABLE
    migrations_label = "compliance schema"

    def known_migrations(self) -> list[Migration]:
        return cmigrations.load()


class MysqlComplianceStore:
    def __init__(self, dsn: MysqlDsn, pool_size: int = 4, timeout: float = 10.0) -> None:
        self._db = _Db(dsn, pool_size, timeout)

    @classmethod
    def from_dsn(cls, dsn: str, pool_size: int = 4, timeout: float = 10.0) -> MysqlComplianceStore:
        """The password comes from the DSN, else $TONGXIN_MYSQL_PASSWORD (as for the store)."""
        return cls(MysqlStore.from_dsn(dsn, pool_size, timeout).dsn, pool_size, timeout)

    @property
    def shared(self) -> bool:
        return True

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def schema_version(self) -> int:
        async def job(cur: Cursor) -> int:
            await cur.execute(f"SELECT COALESCE(MAX(version), 0) FROM {cmigrations.TABLE}")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._db._read(job)

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """An installation-wide lock held on one connection kept for the block.

        MySQL and MariaDB: a named lock (``GET_LOCK``). TiDB: the lock of the
        job's row in ``compliance_job_locks`` (``SELECT ... FOR UPDATE NOWAIT``
        in a pessimistic transaction left open until the block ends), since
        TiDB before 6.1 has no ``GET_LOCK`` and its ``GET_LOCK`` from 6.1 on is
        the same kind of lock on a row of its own. Either lock belongs to the
        connection, so this one is taken from the pool and not used for
        anything else until the lock is released. If the connection is lost the
        server drops the lock (TiDB also after ``max-txn-ttl``, an hour by
        default): another node may then start the same job, which archive and
        retention runs tolerate (both continue from their recorded progress).
        """
        db = self._db
        pool = await db._current_pool()  # the endpoint in use (store/endpoints.py)
        lock = _LOCK_PREFIX + name
        try:
            conn = await pool.acquire()
        except _DB_ERRORS as exc:
            db._failed(pool, exc)
            raise Unavailable(f"database error: {exc!r}") from exc
        got = broken = False
        row_lock = db.flavor == "tidb"
        try:
            try:
                async with conn.cursor() as cur:
                    if row_lock:
                        got = await self._lock_row(conn, cur, lock)
                    else:
                        await cur.execute("SELECT GET_LOCK(%s, 0)", (lock,))
                        row = await cur.fetchone()
                        got = bool(row and row[0] == 1)
            except _DB_ERRORS as exc:
                broken = True
                conn.close()
                db._failed(pool, exc)
                raise Unavailable(f"database error: {exc!r}") from exc
            yield got
        finally:
            if got and not broken:
                try:
                    if row_lock:
                        await conn.rollback()
                    else:
                        async with conn.cursor() as cur:
                            await cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))
                            await cur.fetchall()
                except _DB_ERRORS:
                    conn.close()  # closing the session releases the lock
            pool.release(conn)

    async def _lock_row(self, conn: Connection, cur: Cursor, lock: str) -> bool:
        """TiDB: lock ``lock``'s row and keep the transaction open; False if taken."""
        if conn not in self._db._prepared:  # pessimistic transactions (MysqlStore._prepare)
            await self._db._prepare(cur)
            self._db._prepared.add(conn)
        await cur.execute("INSERT IGNORE INTO compliance_job_locks (name) VALUES (%s)", (lock,))
        await conn.begin()
        try:
            await cur.execute("SELECT name FROM compliance_job_locks WHERE name = %s "
                              "FOR UPDATE NOWAIT", (lock,))
            await cur.fetchall()
        except myerrors.MySQLError as exc:
            await conn.rollback()
            if _code(exc) in (ER_LOCK_NOWAIT, ER_LOCK_WAIT_TIMEOUT):
                return False
            raise
        return True

    # ---- audit -----------------------------------------------------------

    async def append_audit(self, fields: dict[str, Any]) -> AuditRecord:
        async def job(cur: Cursor) -> AuditRecord:
            row = await self._db._one(
                cur, "SELECT last_seq, last_hash FROM audit_state WHERE id = 1 FOR UPDATE", ())
            if row is None:
                raise StoreError("audit_state has no chain head row: run the compliance migrations")
            seq, prev = int(row[0]) + 1, _s(row[1])
            record, body, digest = chain.seal(fields, seq, prev)
            await cur.execute(
                f"INSERT INTO audit_records ({_AUDIT_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                (seq, record["ts"], record["event"], record["actor"], record["target"],
                 record["outcome"], body, digest))
            await cur.execute("UPDATE audit_state SET last_seq = %s, last_hash = %s WHERE id = 1",
                              (seq, digest))
            return AuditRecord(seq, record["ts"], record["event"], record["actor"],
                               record["target"], record["outcome"], body, digest)

        return await self._db._write(job)

    async def audit_state(self) -> tuple[int, str]:
        async def job(cur: Cursor) -> tuple[int, str]:
            row = await self._db._one(cur, "SELECT last_seq, last_hash FROM audit_state "
                                           "WHERE id = 1", ())
            return (int(row[0]), _s(row[1])) if row else (0, chain.GENESIS)

        return await self._db._read(job)

    async def audit_records(self, after_seq: int, limit: int) -> list[AuditRecord]:
        async def job(cur: Cursor) -> list[AuditRecord]:
            rows = await self._db._all(
                cur, f"SELECT {_AUDIT_COLS} FROM audit_records WHERE seq > %s ORDER BY seq "
                     "LIMIT %s", (after_seq, limit))
            return [_record(r) for r in rows]

        return await self._db._read(job)

    async def audit_older_than(self, ts: int, limit: int) -> list[AuditRecord]:
        # A prefix of the chain only (see the SQLite adapter): stop at the first
        # record that is not old enough.
        out: list[AuditRecord] = []
        for r in await self.audit_records(0, limit):
            if r.ts >= ts:
                break
            out.append(r)
        return out

    async def delete_audit_through(self, seq: int) -> int:
        async def job(cur: Cursor) -> int:
            await cur.execute("DELETE FROM audit_records WHERE seq <= %s", (seq,))
            return _rows(cur)

        return await self._db._write(job)

    async def add_head(self, head: SignedHead) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute(
                "INSERT INTO audit_heads (seq, hash, ts, node, key_fp, signature) "
                "VALUES (%s,%s,%s,%s,%s,%s)",
                (head.seq, head.hash, head.ts, head.node, head.key_fp, head.signature))

        await self._db._write(job)

    async def heads(self) -> list[SignedHead]:
        async def job(cur: Cursor) -> list[SignedHead]:
            rows = await self._db._all(cur, "SELECT seq, hash, ts, node, key_fp, signature "
                                            "FROM audit_heads ORDER BY seq, ts, id", ())
            return [SignedHead(int(r[0]), _s(r[1]), int(r[2]), _s(r[3]), _s(r[4]), _s(r[5]))
                    for r in rows]

        return await self._db._read(job)

    async def publish_key(self, key_fp: str, pem: bytes, node: str, at: int) -> None:
        async def job(cur: Cursor) -> None:
            # Not INSERT IGNORE: its "duplicate entry" note reaches the client as a
            # Python warning, printed by every CLI command.
            await cur.execute("INSERT INTO audit_keys (key_fp, pem, node, published_at) "
                              "VALUES (%s,%s,%s,%s) ON DUPLICATE KEY UPDATE key_fp = key_fp",
                              (key_fp, pem.decode("ascii"), node, at))

        await self._db._write(job)

    async def published_keys(self) -> dict[str, bytes]:
        async def job(cur: Cursor) -> dict[str, bytes]:
            rows = await self._db._all(cur, "SELECT key_fp, pem FROM audit_keys ORDER BY key_fp",
                                       ())
            return {_s(r[0]): _s(r[1]).encode("ascii") for r in rows}

        return await self._db._read(job)

    # ---- second factor ---------------------------------------------------

    async def get_totp(self, user_id: str) -> TotpRow | None:
        async def job(cur: Cursor) -> TotpRow | None:
            r = await self._db._one(cur, "SELECT user_id, secret_enc, enrolled_at, last_step, "
                                         "enrolled_by FROM totp WHERE user_id = %s", (user_id,))
            return TotpRow(_s(r[0]), bytes(r[1]), int(r[2]), int(r[3]), _s(r[4])) if r else None

        return await self._db._read(job)

    async def put_totp(self, row: TotpRow) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute(
                "REPLACE INTO totp (user_id, secret_enc, enrolled_at, last_step, enrolled_by) "
                "VALUES (%s,%s,%s,%s,%s)",
                (row.user_id, row.secret_enc, row.enrolled_at, row.last_step, row.enrolled_by))

        await self._db._write(job)

    async def delete_totp(self, user_id: str) -> bool:
        async def job(cur: Cursor) -> bool:
            await cur.execute("DELETE FROM totp WHERE user_id = %s", (user_id,))
            return _rows(cur) == 1

        return await self._db._write(job)

    async def use_totp_step(self, user_id: str, step: int) -> bool:
        # One conditional UPDATE (the row lock orders racing requests; FOUND_ROWS
        # is set, so rowcount counts matched rows): a code is accepted once,
        # on whichever node it is presented first.
        async def job(cur: Cursor) -> bool:
            await cur.execute("UPDATE totp SET last_step = %s WHERE user_id = %s AND last_step < %s",
                              (step, user_id, step))
            return _rows(cur) == 1

        return await self._db._write(job)

    async def totp_user_ids(self) -> list[str]:
        async def job(cur: Cursor) -> list[str]:
            return [_s(r[0]) for r in await self._db._all(
                cur, "SELECT user_id FROM totp ORDER BY user_id", ())]

        return await self._db._read(job)

    # ---- SMS second factor -----------------------------------------------

    async def get_sms_phone(self, user_id: str) -> SmsPhone | None:
        async def job(cur: Cursor) -> SmsPhone | None:
            r = await self._db._one(cur, "SELECT user_id, phone_enc, enrolled_at, enrolled_by "
                                         "FROM sms_phones WHERE user_id = %s", (user_id,))
            return SmsPhone(_s(r[0]), bytes(r[1]), int(r[2]), _s(r[3])) if r else None

        return await self._db._read(job)

    async def put_sms_phone(self, row: SmsPhone) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute("REPLACE INTO sms_phones (user_id, phone_enc, enrolled_at, "
                              "enrolled_by) VALUES (%s,%s,%s,%s)",
                              (row.user_id, row.phone_enc, row.enrolled_at, row.enrolled_by))

        await self._db._write(job)

    async def delete_sms_phone(self, user_id: str) -> bool:
        async def job(cur: Cursor) -> bool:
            await cur.execute("DELETE FROM sms_codes WHERE user_id = %s", (user_id,))
            await cur.execute("DELETE FROM sms_phones WHERE user_id = %s", (user_id,))
            return _rows(cur) == 1

        return await self._db._write(job)

    async def sms_user_ids(self) -> list[str]:
        async def job(cur: Cursor) -> list[str]:
            return [_s(r[0]) for r in await self._db._all(
                cur, "SELECT user_id FROM sms_phones ORDER BY user_id", ())]

        return await self._db._read(job)

    async def reserve_sms_send(self, user_id: str, at: int, interval_ms: int,
                               per_hour: int) -> int:
        async def job(cur: Cursor) -> int:
            # The upsert takes the user's lock row exclusively at once (a plain
            # SELECT ... FOR UPDATE on sms_sends locks nothing for a user with
            # no sends yet under READ COMMITTED), so racing sends on any node
            # count each other.
            await cur.execute("INSERT INTO sms_send_locks (user_id, sends) VALUES (%s, 1) "
                              "ON DUPLICATE KEY UPDATE sends = sends + 1", (user_id,))
            await cur.execute("DELETE FROM sms_sends WHERE user_id = %s AND at <= %s",
                              (user_id, at - 3_600_000))
            times = [int(r[0]) for r in await self._db._all(
                cur, "SELECT at FROM sms_sends WHERE user_id = %s ORDER BY at", (user_id,))]
            wait = 0
            if times and at - times[-1] < interval_ms:
                wait = interval_ms - (at - times[-1])
            if len(times) >= per_hour:
                wait = max(wait, times[len(times) - per_hour] + 3_600_000 - at)
            if wait > 0:
                return wait
            await cur.execute("INSERT INTO sms_sends (user_id, at) VALUES (%s, %s)", (user_id, at))
            return 0

        return await self._db._write(job)

    async def put_sms_code(self, row: SmsCode) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute(
                "REPLACE INTO sms_codes (user_id, code_mac, created_at, expires_at, used_at, "
                "attempts) VALUES (%s,%s,%s,%s,%s,%s)",
                (row.user_id, row.code_mac, row.created_at, row.expires_at, row.used_at,
                 row.attempts))

        await self._db._write(job)

    async def get_sms_code(self, user_id: str) -> SmsCode | None:
        async def job(cur: Cursor) -> SmsCode | None:
            r = await self._db._one(cur, "SELECT user_id, code_mac, created_at, expires_at, "
                                         "used_at, attempts FROM sms_codes WHERE user_id = %s",
                                    (user_id,))
            return SmsCode(_s(r[0]), _s(r[1]), int(r[2]), int(r[3]), int(r[4]),
                           int(r[5])) if r else None

        return await self._db._read(job)

    async def use_sms_code(self, user_id: str, created_at: int, at: int) -> bool:
        async def job(cur: Cursor) -> bool:
            await cur.execute("UPDATE sms_codes SET used_at = %s WHERE user_id = %s AND "
                              "created_at = %s AND used_at = 0", (at, user_id, created_at))
            return _rows(cur) == 1

        return await self._db._write(job)

    async def sms_code_failed(self, user_id: str, created_at: int) -> int:
        async def job(cur: Cursor) -> int:
            # No RETURNING (TiDB): increment, then read back under the row lock
            # the UPDATE holds until COMMIT.
            await cur.execute("UPDATE sms_codes SET attempts = attempts + 1 WHERE user_id = %s "
                              "AND created_at = %s", (user_id, created_at))
            if _rows(cur) != 1:
                return 0
            r = await self._db._one(cur, "SELECT attempts FROM sms_codes WHERE user_id = %s",
                                    (user_id,))
            return int(r[0]) if r else 0

        return await self._db._write(job)

    # ---- admin sessions --------------------------------------------------

    async def add_admin_session(self, s: AdminSession) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute(
                "INSERT INTO admin_sessions (token_id, user_id, role, issued_at, expires_at, "
                "factor_at) VALUES (%s,%s,%s,%s,%s,%s)",
                (s.token_id, s.user_id, s.role, s.issued_at, s.expires_at, s.factor_at))

        await self._db._write(job)

    async def get_admin_session(self, token_id: str) -> AdminSession | None:
        async def job(cur: Cursor) -> AdminSession | None:
            r = await self._db._one(cur, "SELECT token_id, user_id, role, issued_at, expires_at, "
                                         "factor_at FROM admin_sessions WHERE token_id = %s",
                                    (token_id,))
            return AdminSession(_s(r[0]), _s(r[1]), _s(r[2]), int(r[3]), int(r[4]),
                                int(r[5])) if r else None

        return await self._db._read(job)

    async def set_factor_at(self, token_id: str, at: int) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute("UPDATE admin_sessions SET factor_at = GREATEST(factor_at, %s) "
                              "WHERE token_id = %s", (at, token_id))

        await self._db._write(job)

    # ---- settings --------------------------------------------------------

    async def get_setting(self, key: str) -> Any:
        async def job(cur: Cursor) -> Any:
            r = await self._db._one(cur, "SELECT value FROM compliance_settings WHERE name = %s",
                                    (key,))
            return json.loads(_s(r[0])) if r else None

        return await self._db._read(job)

    async def set_setting(self, key: str, value: Any, at: int, by: str) -> None:
        text = json.dumps(value, sort_keys=True)

        async def job(cur: Cursor) -> None:
            await cur.execute("REPLACE INTO compliance_settings (name, value, updated_at, "
                              "updated_by) VALUES (%s,%s,%s,%s)", (key, text, at, by))

        await self._db._write(job)

    # ---- legal holds -----------------------------------------------------

    async def add_hold(self, kind: str, target: str, reason: str, by: str, at: int) -> Hold:
        async def job(cur: Cursor) -> Hold:
            await cur.execute("INSERT INTO legal_holds (kind, target, reason, created_by, "
                              "created_at) VALUES (%s,%s,%s,%s,%s)",
                              (kind, target, reason, by, at))
            return Hold(int(cur.lastrowid or 0), kind, target, reason, by, at)

        return await self._db._write(job)

    async def release_hold(self, hold_id: int, by: str, at: int) -> Hold | None:
        async def job(cur: Cursor) -> Hold | None:
            await cur.execute("UPDATE legal_holds SET released_at = %s, released_by = %s "
                              "WHERE id = %s AND released_at = 0", (at, by, hold_id))
            if _rows(cur) != 1:
                return None
            r = await self._db._one(cur, f"SELECT {_HOLD_COLS} FROM legal_holds WHERE id = %s",
                                    (hold_id,))
            return _hold(r) if r else None

        return await self._db._write(job)

    async def holds(self, active_only: bool = True) -> list[Hold]:
        where = "WHERE released_at = 0" if active_only else ""

        async def job(cur: Cursor) -> list[Hold]:
            return [_hold(r) for r in await self._db._all(
                cur, f"SELECT {_HOLD_COLS} FROM legal_holds {where} ORDER BY id", ())]

        return await self._db._read(job)

    # ---- retention -------------------------------------------------------

    async def set_policy(self, scope: str, days: float | None) -> None:
        async def job(cur: Cursor) -> None:
            if days is None:
                await cur.execute("DELETE FROM retention_policies WHERE scope = %s", (scope,))
            else:
                await cur.execute("REPLACE INTO retention_policies (scope, days) VALUES (%s, %s)",
                                  (scope, float(days)))

        await self._db._write(job)

    async def policies(self) -> dict[str, float]:
        async def job(cur: Cursor) -> dict[str, float]:
            return {_s(r[0]): float(r[1]) for r in await self._db._all(
                cur, "SELECT scope, days FROM retention_policies ORDER BY scope", ())}

        return await self._db._read(job)

    async def open_run(self) -> RetentionRun | None:
        async def job(cur: Cursor) -> RetentionRun | None:
            r = await self._db._one(cur, f"SELECT {_RUN_COLS} FROM retention_runs WHERE "
                                         "finished_at = 0 ORDER BY started_at DESC, id DESC "
                                         "LIMIT 1", ())
            return _run(r) if r else None

        return await self._db._read(job)

    async def start_run(self, at: int, by: str, cutoffs: dict[str, int]) -> RetentionRun:
        async def job(cur: Cursor) -> RetentionRun:
            await cur.execute("INSERT INTO retention_runs (started_at, started_by, cutoffs) "
                              "VALUES (%s,%s,%s)", (at, by, json.dumps(cutoffs, sort_keys=True)))
            return RetentionRun(int(cur.lastrowid or 0), at, by, dict(cutoffs), "", 0)

        return await self._db._write(job)

    async def save_run(self, run: RetentionRun) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute("UPDATE retention_runs SET run_cursor = %s, deleted = %s, "
                              "finished_at = %s WHERE id = %s",
                              (run.cursor, run.deleted, run.finished_at, run.id))

        await self._db._write(job)

    async def last_run(self) -> RetentionRun | None:
        async def job(cur: Cursor) -> RetentionRun | None:
            r = await self._db._one(cur, f"SELECT {_RUN_COLS} FROM retention_runs "
                                         "ORDER BY started_at DESC, id DESC LIMIT 1", ())
            return _run(r) if r else None

        return await self._db._read(job)

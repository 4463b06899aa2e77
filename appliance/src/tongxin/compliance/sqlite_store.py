"""The compliance store on SQLite: its own file, ``<data_dir>/compliance.db``.

A separate file rather than tables in ``tongxin.db``: the audit trail stays on
SQLite (and verifiable with nothing but the data directory) whatever the
message store is, it can be backed up and handed to an auditor on its own,
and its writes never queue behind message commits. Writes go through one
:class:`~tongxin.store.sqlite_worker.SqliteWorker` with group commit, so every
append runs inside ``BEGIN IMMEDIATE``: reading the chain head and inserting
the next record are one transaction even when a CLI process appends while the
node runs.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tongxin.compliance import chain
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
from tongxin.store.sqlite_worker import SqliteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    body TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_ts ON audit(ts);
CREATE TABLE IF NOT EXISTS audit_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL,
    last_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_heads (
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    ts INTEGER NOT NULL,
    node TEXT NOT NULL,
    key_fp TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS totp (
    user_id TEXT PRIMARY KEY,
    secret_enc BLOB NOT NULL,
    enrolled_at INTEGER NOT NULL,
    last_step INTEGER NOT NULL DEFAULT 0,
    enrolled_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS sms_phones (
    user_id TEXT PRIMARY KEY,
    phone_enc BLOB NOT NULL,
    enrolled_at INTEGER NOT NULL,
    enrolled_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS sms_codes (
    user_id TEXT PRIMARY KEY,
    code_mac TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sms_sends (
    user_id TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sms_sends_by_user ON sms_sends(user_id, at);
CREATE TABLE IF NOT EXISTS admin_sessions (
    token_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    factor_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    released_at INTEGER NOT NULL DEFAULT 0,
    released_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS retention_policies (
    scope TEXT PRIMARY KEY,
    days REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS retention_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at INTEGER NOT NULL,
    started_by TEXT NOT NULL,
    cutoffs TEXT NOT NULL,
    cursor TEXT NOT NULL DEFAULT '',
    deleted INTEGER NOT NULL DEFAULT 0,
    finished_at INTEGER NOT NULL DEFAULT 0
);
"""

_AUDIT_COLS = "seq, ts, event, actor, target, outcome, body, hash"
_HOLD_COLS = "id, kind, target, reason, created_by, created_at, released_at, released_by"
_RUN_COLS = "id, started_at, started_by, cutoffs, cursor, deleted, finished_at"


def _record(row: Any) -> AuditRecord:
    return AuditRecord(*row)


def _hold(row: Any) -> Hold:
    return Hold(*row)


def _run(row: Any) -> RetentionRun:
    return RetentionRun(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])


def _append(conn: sqlite3.Connection, fields: dict[str, Any]) -> AuditRecord:
    row = conn.execute("SELECT last_seq, last_hash FROM audit_state WHERE id = 1").fetchone()
    seq, prev = (row[0] + 1, row[1]) if row else (1, chain.GENESIS)
    record, body, digest = chain.seal(fields, seq, prev)
    conn.execute(f"INSERT INTO audit ({_AUDIT_COLS}) VALUES (?,?,?,?,?,?,?,?)",
                 (seq, record["ts"], record["event"], record["actor"], record["target"],
                  record["outcome"], body, digest))
    conn.execute("INSERT INTO audit_state (id, last_seq, last_hash) VALUES (1, ?, ?) "
                 "ON CONFLICT(id) DO UPDATE SET last_seq = excluded.last_seq, "
                 "last_hash = excluded.last_hash", (seq, digest))
    return AuditRecord(seq, record["ts"], record["event"], record["actor"], record["target"],
                       record["outcome"], body, digest)


class SqliteComplianceStore(SqliteDatabase):
    def __init__(self, path: Path, synchronous: str = "full") -> None:
        super().__init__(path, synchronous, 64, "compliance")

    def apply_schema(self, conn: sqlite3.Connection) -> None:
        conn.executescript(SCHEMA)
        self.path.chmod(0o600)

    @property
    def shared(self) -> bool:
        return False

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        # One node's file: its processes lock locally (the archive's lock file).
        yield True

    async def publish_key(self, key_fp: str, pem: bytes, node: str, at: int) -> None:
        return None  # audit-keys/ in the data directory is the record

    async def published_keys(self) -> dict[str, bytes]:
        return {}

    # ---- audit -----------------------------------------------------------

    async def append_audit(self, fields: dict[str, Any]) -> AuditRecord:
        return await self._writer.run(lambda c: _append(c, fields))

    async def audit_state(self) -> tuple[int, str]:
        def job(conn: sqlite3.Connection) -> tuple[int, str]:
            row = conn.execute("SELECT last_seq, last_hash FROM audit_state WHERE id = 1").fetchone()
            return (int(row[0]), str(row[1])) if row else (0, chain.GENESIS)

        return await self._reader.run(job)

    async def audit_records(self, after_seq: int, limit: int) -> list[AuditRecord]:
        return await self._reader.run(lambda c: [_record(r) for r in c.execute(
            f"SELECT {_AUDIT_COLS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit))])

    async def audit_older_than(self, ts: int, limit: int) -> list[AuditRecord]:
        # Archive a prefix of the chain only: stop at the first record that is
        # not old enough, so the archive/hot boundary is one seq.
        def job(conn: sqlite3.Connection) -> list[AuditRecord]:
            out = []
            for r in conn.execute(f"SELECT {_AUDIT_COLS} FROM audit ORDER BY seq LIMIT ?", (limit,)):
                if r[1] >= ts:
                    break
                out.append(_record(r))
            return out

        return await self._reader.run(job)

    async def delete_audit_through(self, seq: int) -> int:
        return await self._writer.run(
            lambda c: c.execute("DELETE FROM audit WHERE seq <= ?", (seq,)).rowcount)

    async def add_head(self, head: SignedHead) -> None:
        await self._writer.run(lambda c: c.execute(
            "INSERT INTO audit_heads (seq, hash, ts, node, key_fp, signature) VALUES (?,?,?,?,?,?)",
            (head.seq, head.hash, head.ts, head.node, head.key_fp, head.signature)))

    async def heads(self) -> list[SignedHead]:
        return await self._reader.run(lambda c: [SignedHead(*r) for r in c.execute(
            "SELECT seq, hash, ts, node, key_fp, signature FROM audit_heads ORDER BY seq, ts")])

    # ---- second factor ---------------------------------------------------

    async def get_totp(self, user_id: str) -> TotpRow | None:
        def job(conn: sqlite3.Connection) -> TotpRow | None:
            row = conn.execute("SELECT user_id, secret_enc, enrolled_at, last_step, enrolled_by "
                               "FROM totp WHERE user_id = ?", (user_id,)).fetchone()
            return TotpRow(row[0], bytes(row[1]), row[2], row[3], row[4]) if row else None

        return await self._reader.run(job)

    async def put_totp(self, row: TotpRow) -> None:
        await self._writer.run(lambda c: c.execute(
            "INSERT OR REPLACE INTO totp (user_id, secret_enc, enrolled_at, last_step, enrolled_by) "
            "VALUES (?,?,?,?,?)",
            (row.user_id, row.secret_enc, row.enrolled_at, row.last_step, row.enrolled_by)))

    async def delete_totp(self, user_id: str) -> bool:
        return await self._writer.run(lambda c: c.execute(
            "DELETE FROM totp WHERE user_id = ?", (user_id,)).rowcount == 1)

    async def use_totp_step(self, user_id: str, step: int) -> bool:
        # One conditional UPDATE: two requests racing with the same code
        # cannot both succeed.
        return await self._writer.run(lambda c: c.execute(
            "UPDATE totp SET last_step = ? WHERE user_id = ? AND last_step < ?",
            (step, user_id, step)).rowcount == 1)

    async def totp_user_ids(self) -> list[str]:
        return await self._reader.run(
            lambda c: [r[0] for r in c.execute("SELECT user_id FROM totp ORDER BY user_id")])

    # ---- SMS second factor -----------------------------------------------

    async def get_sms_phone(self, user_id: str) -> SmsPhone | None:
        def job(conn: sqlite3.Connection) -> SmsPhone | None:
            row = conn.execute("SELECT user_id, phone_enc, enrolled_at, enrolled_by FROM sms_phones "
                               "WHERE user_id = ?", (user_id,)).fetchone()
            return SmsPhone(row[0], bytes(row[1]), row[2], row[3]) if row else None

        return await self._reader.run(job)

    async def put_sms_phone(self, row: SmsPhone) -> None:
        await self._writer.run(lambda c: c.execute(
            "INSERT OR REPLACE INTO sms_phones (user_id, phone_enc, enrolled_at, enrolled_by) "
            "VALUES (?,?,?,?)", (row.user_id, row.phone_enc, row.enrolled_at, row.enrolled_by)))

    async def delete_sms_phone(self, user_id: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM sms_codes WHERE user_id = ?", (user_id,))
            return conn.execute("DELETE FROM sms_phones WHERE user_id = ?",
                                (user_id,)).rowcount == 1

        return await self._writer.run(job)

    async def sms_user_ids(self) -> list[str]:
        return await self._reader.run(
            lambda c: [r[0] for r in c.execute("SELECT user_id FROM sms_phones ORDER BY user_id")])

    async def reserve_sms_send(self, user_id: str, at: int, interval_ms: int,
                               per_hour: int) -> int:
        def job(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM sms_sends WHERE at <= ?", (at - 3_600_000,))
            times = [r[0] for r in conn.execute(
                "SELECT at FROM sms_sends WHERE user_id = ? ORDER BY at", (user_id,))]
            wait = 0
            if times and at - times[-1] < interval_ms:
                wait = interval_ms - (at - times[-1])
            if len(times) >= per_hour:
                wait = max(wait, times[len(times) - per_hour] + 3_600_000 - at)
            if wait > 0:
                return wait
            conn.execute("INSERT INTO sms_sends (user_id, at) VALUES (?, ?)", (user_id, at))
            return 0

        return await self._writer.run(job)

    async def put_sms_code(self, row: SmsCode) -> None:
        await self._writer.run(lambda c: c.execute(
            "INSERT OR REPLACE INTO sms_codes (user_id, code_mac, created_at, expires_at, used_at, "
            "attempts) VALUES (?,?,?,?,?,?)",
            (row.user_id, row.code_mac, row.created_at, row.expires_at, row.used_at, row.attempts)))

    async def get_sms_code(self, user_id: str) -> SmsCode | None:
        def job(conn: sqlite3.Connection) -> SmsCode | None:
            row = conn.execute("SELECT user_id, code_mac, created_at, expires_at, used_at, attempts "
                               "FROM sms_codes WHERE user_id = ?", (user_id,)).fetchone()
            return SmsCode(*row) if row else None

        return await self._reader.run(job)

    async def use_sms_code(self, user_id: str, created_at: int, at: int) -> bool:
        # One conditional UPDATE: two requests racing with the same code
        # cannot both succeed.
        return await self._writer.run(lambda c: c.execute(
            "UPDATE sms_codes SET used_at = ? WHERE user_id = ? AND created_at = ? AND used_at = 0",
            (at, user_id, created_at)).rowcount == 1)

    async def sms_code_failed(self, user_id: str, created_at: int) -> int:
        def job(conn: sqlite3.Connection) -> int:
            row = conn.execute("UPDATE sms_codes SET attempts = attempts + 1 WHERE user_id = ? AND "
                               "created_at = ? RETURNING attempts", (user_id, created_at)).fetchone()
            return int(row[0]) if row else 0

        return await self._writer.run(job)

    # ---- admin sessions --------------------------------------------------

    async def add_admin_session(self, s: AdminSession) -> None:
        await self._writer.run(lambda c: c.execute(
            "INSERT INTO admin_sessions (token_id, user_id, role, issued_at, expires_at, factor_at) "
            "VALUES (?,?,?,?,?,?)",
            (s.token_id, s.user_id, s.role, s.issued_at, s.expires_at, s.factor_at)))

    async def get_admin_session(self, token_id: str) -> AdminSession | None:
        def job(conn: sqlite3.Connection) -> AdminSession | None:
            row = conn.execute("SELECT token_id, user_id, role, issued_at, expires_at, factor_at "
                               "FROM admin_sessions WHERE token_id = ?", (token_id,)).fetchone()
            return AdminSession(*row) if row else None

        return await self._reader.run(job)

    async def set_factor_at(self, token_id: str, at: int) -> None:
        await self._writer.run(lambda c: c.execute(
            "UPDATE admin_sessions SET factor_at = MAX(factor_at, ?) WHERE token_id = ?",
            (at, token_id)))

    # ---- settings --------------------------------------------------------

    async def get_setting(self, key: str) -> Any:
        def job(conn: sqlite3.Connection) -> Any:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return json.loads(row[0]) if row else None

        return await self._reader.run(job)

    async def set_setting(self, key: str, value: Any, at: int, by: str) -> None:
        text = json.dumps(value, sort_keys=True)
        await self._writer.run(lambda c: c.execute(
            "INSERT OR REPLACE INTO settings (key, value, updated_at, updated_by) VALUES (?,?,?,?)",
            (key, text, at, by)))

    # ---- legal holds -----------------------------------------------------

    async def add_hold(self, kind: str, target: str, reason: str, by: str, at: int) -> Hold:
        def job(conn: sqlite3.Connection) -> Hold:
            cur = conn.execute(
                "INSERT INTO holds (kind, target, reason, created_by, created_at) VALUES (?,?,?,?,?)",
                (kind, target, reason, by, at))
            return Hold(int(cur.lastrowid or 0), kind, target, reason, by, at)

        return await self._writer.run(job)

    async def release_hold(self, hold_id: int, by: str, at: int) -> Hold | None:
        def job(conn: sqlite3.Connection) -> Hold | None:
            row = conn.execute(
                f"UPDATE holds SET released_at = ?, released_by = ? WHERE id = ? AND released_at = 0 "
                f"RETURNING {_HOLD_COLS}", (at, by, hold_id)).fetchone()
            return _hold(row) if row else None

        return await self._writer.run(job)

    async def holds(self, active_only: bool = True) -> list[Hold]:
        where = "WHERE released_at = 0" if active_only else ""
        return await self._reader.run(lambda c: [_hold(r) for r in c.execute(
            f"SELECT {_HOLD_COLS} FROM holds {where} ORDER BY id")])

    # ---- retention -------------------------------------------------------

    async def set_policy(self, scope: str, days: float | None) -> None:
        if days is None:
            await self._writer.run(lambda c: c.execute(
                "DELETE FROM retention_policies WHERE scope = ?", (scope,)))
        else:
            await self._writer.run(lambda c: c.execute(
                "INSERT OR REPLACE INTO retention_policies (scope, days) VALUES (?, ?)",
                (scope, float(days))))

    async def policies(self) -> dict[str, float]:
        return await self._reader.run(lambda c: {r[0]: float(r[1]) for r in c.execute(
            "SELECT scope, days FROM retention_policies ORDER BY scope")})

    async def open_run(self) -> RetentionRun | None:
        def job(conn: sqlite3.Connection) -> RetentionRun | None:
            row = conn.execute(f"SELECT {_RUN_COLS} FROM retention_runs WHERE finished_at = 0 "
                               "ORDER BY id DESC LIMIT 1").fetchone()
            return _run(row) if row else None

        return await self._reader.run(job)

    async def start_run(self, at: int, by: str, cutoffs: dict[str, int]) -> RetentionRun:
        def job(conn: sqlite3.Connection) -> RetentionRun:
            cur = conn.execute("INSERT INTO retention_runs (started_at, started_by, cutoffs) "
                               "VALUES (?,?,?)", (at, by, json.dumps(cutoffs, sort_keys=True)))
            return RetentionRun(int(cur.lastrowid or 0), at, by, dict(cutoffs), "", 0)

        return await self._writer.run(job)

    async def save_run(self, run: RetentionRun) -> None:
        await self._writer.run(lambda c: c.execute(
            "UPDATE retention_runs SET cursor = ?, deleted = ?, finished_at = ? WHERE id = ?",
            (run.cursor, run.deleted, run.finished_at, run.id)))

    async def last_run(self) -> RetentionRun | None:
        def job(conn: sqlite3.Connection) -> RetentionRun | None:
            row = conn.execute(f"SELECT {_RUN_COLS} FROM retention_runs ORDER BY id DESC LIMIT 1"
                               ).fetchone()
            return _run(row) if row else None

        return await self._reader.run(job)

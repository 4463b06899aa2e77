"""History and accounts on the MySQL protocol: TiDB in production, MariaDB in CI.

Behaves like the SQLite adapter (the same ``ChatStore`` contract, checked by
tests/integration/test_store_contract.py against both), with SQL kept in the
subset TiDB runs: no RETURNING, no stored procedures, no triggers.

* **Sequence numbers.** ``UPDATE conversations SET last_seq =
  LAST_INSERT_ID(last_seq + 1)`` takes the conversation row's lock, increments
  the counter and hands the new value back in the same statement (in the OK
  packet on MySQL/MariaDB; TiDB is asked ``SELECT LAST_INSERT_ID()``), the
  equivalent of SQLite's ``UPDATE ... RETURNING``. The lock is held until
  COMMIT, so seqs are dense and each one is assigned once; a rolled-back
  transaction gives its increment back.
* **Idempotency.** The unique key ``(conversation_id, sender_id,
  client_msg_id)``: a re-send finds the stored entry; two concurrent sends of
  the same id race to the key and the loser answers with the winner's entry.
* **Failures.** Losing the connection, a timeout or any server error raises
  ``Unavailable`` (the chat layer answers UNAVAILABLE and sends no ACK). A
  COMMIT whose answer is lost may still have committed; the client's re-send
  with the same ``client_msg_id`` then finds it, so nothing is stored twice.
  Errors after which the server has rolled the whole transaction back
  (deadlocks, TiDB write conflicts and its other "[try again later]" errors)
  are retried with a growing, jittered pause. An entry the server refuses as
  too large (TiDB's ``txn-entry-size-limit``) raises ``TooLarge``, never
  Unavailable: sending it again cannot help.
* **TiDB.** Each connection asks ``SELECT VERSION()`` once; on TiDB it sets
  ``tidb_txn_mode = 'pessimistic'`` for its session. TiDB on TiKV defaults to
  pessimistic, but unistore and a cluster whose operator chose optimistic do
  not, and optimistic transactions report a duplicate key at COMMIT (so a
  taken username would look like an outage, not a Conflict), turn every
  concurrent append to one conversation into a write conflict, and do not
  honour READ COMMITTED. Pessimistic transactions lock at the statement, as
  InnoDB does.
* **Endpoints.** ``storage.mysql_dsn`` may list several endpoints of the
  database in order of preference; the pool uses the first that answers and
  moves on when it fails (:mod:`tongxin.store.endpoints`).
* **Group commit of appends.** Plain appends (not recalls or edits) wait in a
  queue; up to ``append_txns`` (2) transactions at once each take what is waiting
  (at most ``append_batch``) and store it in one transaction: the rows of its
  conversations locked in id order (so two nodes' batches lock alike), their
  seqs reserved in one statement, the entries written in one multi-row
  INSERT, one COMMIT. No timer: an idle store commits an append at once, a
  busy one batches what arrived during the previous commit. Each waiter is
  answered after that COMMIT; a failed batch fails all its waiters and stores
  none. The dedup SELECT is folded into the INSERT: the unique key refuses a
  re-send, and a batch whose INSERT is refused (a re-send, a bad value, a row
  too large) is rolled back and its appends run one by one on the single path,
  which answers each as before. The other writes run up to
  ``storage.mysql_pool_size`` transactions at once and the server groups their
  log flushes (InnoDB's group commit, TiDB's batched Raft writes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncmy
from asyncmy import errors as myerrors
from asyncmy.connection import Connection
from asyncmy.constants import CLIENT
from asyncmy.cursors import Cursor
from asyncmy.pool import Pool

from tongxin.atrest.keyring import DataKeyRow, Keyring
from tongxin.atrest.records import open_entries, open_entry, open_keyring, seal_content
from tongxin.config import Config
from tongxin.org import units as org
from tongxin.store import migrations
from tongxin.store.dsn import Endpoint, MysqlDsn, parse_dsn
from tongxin.store.endpoints import FAILBACK_AFTER, EndpointPool
from tongxin.store.ports import (
    Conflict,
    ConversationRow,
    ConversationView,
    CursorMark,
    Entry,
    GroupFull,
    MemberOps,
    MemberRow,
    NodeBeat,
    NodeStatus,
    NoSuchConversation,
    OrgUnit,
    StoreError,
    TokenRow,
    TooLarge,
    Unavailable,
    User,
)

log = logging.getLogger("tongxin.store.mysql")

T = TypeVar("T")

ER_DUP_ENTRY = 1062
ER_DUP_FIELDNAME = 1060  # ALTER TABLE ... ADD COLUMN of a column that exists
ER_DUP_KEYNAME = 1061  # CREATE INDEX of an index that exists
ER_NO_SUCH_TABLE = 1146
ER_NOT_SUPPORTED_YET = 1235  # TiDB before 6.1: GET_LOCK "has only noop implementation"
ER_ENTRY_TOO_LARGE = 8025  # TiDB: a row (key-value entry) over txn-entry-size-limit
# Retried: the server rolled the whole transaction back and says so. The TiDB
# codes are the ones its kv and domain packages mark "[try again later]"
# (checked against the tidb-server of services.sh, TiDB's master of March 2022,
# and TiDB 7.5's errno list); a message carrying that mark is retried whatever
# its code.
_RETRY_CODES = {
    1213,  # ER_LOCK_DEADLOCK (InnoDB; TiDB's pessimistic transactions too)
    8002,  # TiDB: SELECT ... FOR UPDATE met a write conflict (optimistic transactions)
    8005,  # TiDB: write conflict, txnStartTS is stale
    8022,  # TiDB: transaction commit failed, retryable (e.g. its lock was not found)
    8027,  # TiDB: information schema is out of date
    8028,  # TiDB: information schema changed during the transaction
    9007,  # TiDB: write conflict (optimistic commit)
}
_RETRYABLE_MARK = "[try again later]"
_ATTEMPTS = 5
_BACKOFF = 0.02  # seconds before the second attempt; doubles each time, +-50% jitter

_USER_COLS = ("id, username, display_name, password_hash, role, created_at, failed_logins, "
              "first_failure_at, locked_until, disabled")
_ENTRY_COLS = ("conversation_id, sender_id, sender_device, client_msg_id, sent_at, kind, content, "
               "target_seq, `system`, seq, recalled, edited_at")
_CONV_COLS = "id, kind, name, created_at, created_by, last_seq, member_count"
_MEMBER_COLS = "conversation_id, user_id, role, joined_seq, read_seq, delivered_seq"
_CHUNK = 500  # rows per multi-row statement
_CURSOR_COLUMNS = {"read": "read_seq", "delivered": "delivered_seq"}
_MIGRATION_LOCK = "tongxin.schema_migrations"
_MIGRATION_LOCK_WAIT = 600  # seconds
_MIGRATION_PASSES = 5  # without the lock, passes that may meet another node's DDL

def migrations_ddl(table: str) -> str:
    """The bookkeeping table of one set of migrations."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        " version INT NOT NULL PRIMARY KEY,"
        " name VARCHAR(255) NOT NULL,"
        " checksum CHAR(64) NOT NULL,"
        " applied_at BIGINT NOT NULL"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    )


def _s(value: Any) -> str:
    """VARBINARY columns come back as bytes."""
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def _user(r: Any) -> User:
    return User(_s(r[0]), _s(r[1]), r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]), int(r[8]),
                bool(r[9]))


def _entry(r: Any) -> Entry:
    return Entry(_s(r[0]), _s(r[1]), _s(r[2]), _s(r[3]), int(r[4]), int(r[5]), bytes(r[6]),
                 int(r[7]), bytes(r[8]), int(r[9]), bool(r[10]), int(r[11]))


def _conv(r: Any) -> ConversationRow:
    return ConversationRow(_s(r[0]), int(r[1]), r[2], int(r[3]), _s(r[4]), int(r[5]), int(r[6]))


def _member(r: Any) -> MemberRow:
    return MemberRow(_s(r[0]), _s(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]))


def _code(exc: BaseException) -> int:
    args = getattr(exc, "args", ())
    return int(args[0]) if args and isinstance(args[0], int) else 0


def _is_dup(exc: BaseException) -> bool:
    return isinstance(exc, myerrors.IntegrityError) and _code(exc) == ER_DUP_ENTRY


def _retryable(exc: BaseException) -> bool:
    """The server rolled the transaction back and another try may succeed."""
    if not isinstance(exc, myerrors.MySQLError):
        return False
    return _code(exc) in _RETRY_CODES or _RETRYABLE_MARK in str(exc)


async def run_ddl(cur: Cursor, sql: str) -> None:
    """Run one migration statement; an index or column that already exists counts as
    created.

    MySQL 8 has no ``CREATE INDEX IF NOT EXISTS`` nor ``ADD COLUMN IF NOT
    EXISTS``: this makes a plain ``CREATE INDEX`` and a one-column ``ALTER TABLE
    ... ADD COLUMN`` re-runnable, so a migration interrupted after it (and before
    it was recorded) applies cleanly on the next start.
    """
    try:
        await cur.execute(sql)
    except myerrors.MySQLError as exc:
        if _code(exc) not in (ER_DUP_KEYNAME, ER_DUP_FIELDNAME):
            raise


def _too_large(exc: BaseException) -> bool:
    return isinstance(exc, myerrors.MySQLError) and _code(exc) == ER_ENTRY_TOO_LARGE


class _Raced(StoreError):
    """Internal: a concurrent transaction inserted the same unique key first."""


class _BatchRefused(StoreError):
    """Internal: the server refused a batch's INSERT for one of its rows (a re-sent
    client_msg_id, a bad value, a row too large); the batch was rolled back."""


_APPEND_BATCH = 64  # appends per group-commit transaction
_APPEND_TXNS = 2  # in flight at once: one commits while the next is written (1, 2, 4, 8 measured)
_INSERT_BYTES = 1 << 20  # content per multi-row INSERT, well under max_allowed_packet
_ENTRY_VALUES = "(" + ",".join(["%s"] * 12) + ")"

_Outcome = tuple[Entry, bool] | StoreError


@dataclasses.dataclass(slots=True)
class _PendingAppend:
    entry: Entry
    future: asyncio.Future[tuple[Entry, bool]]


def _same_error(exc: StoreError) -> StoreError:
    """A fresh copy for each waiter of a batch (an exception raised in several tasks
    would share one traceback)."""
    copy = type(exc)(*exc.args)
    copy.__cause__ = exc.__cause__
    return copy


def _answer(p: _PendingAppend, outcome: _Outcome) -> None:
    if p.future.done():  # its caller was cancelled while the batch ran
        return
    if isinstance(outcome, StoreError):
        p.future.set_exception(_same_error(outcome))
    else:
        p.future.set_result(outcome)


# OSError covers TimeoutError and lost sockets; RuntimeError is the pool's "closing".
_DB_ERRORS = (myerrors.MySQLError, OSError, EOFError, RuntimeError)


class MysqlStore:
    def __init__(self, dsn: MysqlDsn, pool_size: int = 32, timeout: float = 10.0,
                 failback_after: float = FAILBACK_AFTER) -> None:
        self.dsn = dsn
        self.pool_size = max(1, pool_size)
        self.timeout = timeout
        self.failback_after = failback_after
        self.flavor = "mysql"  # "tidb" once the server says so
        self.server_version = ""
        # Made by connect(): which endpoint of the DSN the pool is on, and moving it.
        self.endpoints: EndpointPool | None = None
        self._prepared: weakref.WeakSet[Connection] = weakref.WeakSet()
        # Set by tongxin.atrest.records.open_keyring: content sealed on write, opened on read.
        self.keyring: Keyring | None = None
        # Set by server.node.make_store: open() then loads the keyring (every command that
        # opens the store reads sealed content).
        self.atrest_config: Config | None = None
        # Group commit of appends (see the module docstring).
        self.append_batch = _APPEND_BATCH
        self.append_txns = _APPEND_TXNS
        self._appends: deque[_PendingAppend] = deque()
        self._flushers: set[asyncio.Task[None]] = set()

    @classmethod
    def from_dsn(cls, dsn: str, pool_size: int = 32, timeout: float = 10.0,
                 password: str | None = None) -> MysqlStore:
        """The password comes from the DSN, else ``password``, else $TONGXIN_MYSQL_PASSWORD."""
        parsed = parse_dsn(dsn)
        if not parsed.password:
            pw = password if password is not None else os.environ.get("TONGXIN_MYSQL_PASSWORD", "")
            parsed = parsed.with_password(pw)
        return cls(parsed, pool_size, timeout)

    # ---- lifecycle -----------------------------------------------------------

    def _connect_kwargs(self, endpoint: Endpoint) -> dict[str, Any]:
        return {
            "host": endpoint.host,
            "port": endpoint.port,
            "user": self.dsn.user,
            "password": self.dsn.password,
            "database": self.dsn.database,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": max(1, int(self.timeout)),
            "read_timeout": self.timeout,
            # rowcount counts matched rows, as SQLite's does
            "client_flag": CLIENT.FOUND_ROWS,
        }

    def _session_sql(self, flavor: str) -> list[str]:
        """Run once on each new connection (one statement each: no multi-statements)."""
        sql = [
            # Every statement sees the latest committed rows (TiDB's default
            # REPEATABLE READ would read at the transaction's start); what must
            # not change under us is locked (the conversation row).
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            f"SET SESSION innodb_lock_wait_timeout = {max(1, int(self.timeout))}, "
            "sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,"
            "ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
        ]
        if flavor == "tidb":
            # Whatever the cluster's default: duplicate keys and lock waits at
            # the statement, READ COMMITTED honoured (TiDB runs it only in
            # pessimistic transactions). See the module docstring.
            sql.append("SET SESSION tidb_txn_mode = 'pessimistic'")
        return sql

    async def _prepare(self, cur: Cursor) -> None:
        """A new connection: learn which server it reached, then set up its session.

        ``SELECT VERSION()`` rather than the handshake's version: a proxy in
        front of the database may answer the handshake with its own.
        """
        await cur.execute("SELECT VERSION()")
        row = await cur.fetchone()
        version = str(row[0]) if row else ""
        flavor = migrations.server_flavor(version)
        self.server_version, self.flavor = version, flavor
        for sql in self._session_sql(flavor):
            await cur.execute(sql)

    async def connect(self) -> None:
        """Reach the database (its first endpoint that answers) and change nothing.

        ``open()`` goes on to migrate and load the keyring; a standby node stops
        here, since its database is a read-only replica. If no endpoint answers
        this raises Unavailable, and later operations keep trying.
        """
        if self.endpoints is None:
            self.endpoints = EndpointPool(self.dsn.endpoints, self._connect_kwargs,
                                          self.pool_size, self.timeout, self.failback_after)
        await self.endpoints.get()

    async def open(self) -> None:
        if self.endpoints is not None:
            return
        try:
            await self.connect()
            await self.migrate()
            if self.atrest_config is not None and self.keyring is None:
                await open_keyring(self.atrest_config, self)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        endpoints, self.endpoints = self.endpoints, None
        if endpoints is not None:
            await endpoints.close()

    async def _current_pool(self) -> Pool:
        """The pool of the endpoint in use (connecting if the last one failed)."""
        if self.endpoints is None:
            raise Unavailable("mysql store is not open")
        return await self.endpoints.get()

    def _failed(self, pool: Pool | None, exc: BaseException) -> None:
        """An operation on ``pool`` failed: leave the endpoint if it is gone."""
        if self.endpoints is not None:
            self.endpoints.failed(pool, exc)

    async def ping(self) -> bool:
        try:
            return await self._read(self._ping) == 1
        except StoreError:
            return False

    @staticmethod
    async def _ping(cur: Cursor) -> int:
        await cur.execute("SELECT 1")
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    # ---- migrations ----------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied.

        Runs on a connection of its own without the statement timeout (a DDL
        on a large table may take minutes), under a named lock so that nodes
        starting together take turns.
        """
        conn = await self._migration_connection()
        try:
            async with conn.cursor() as cur:
                await self._prepare(cur)
                locked = await self._named_lock(cur)
                try:
                    applied = await self._apply_migrations_retrying(cur, locked)
                finally:
                    if locked:
                        await cur.execute("SELECT RELEASE_LOCK(%s)", (_MIGRATION_LOCK,))
                        await cur.fetchall()
        except _DB_ERRORS as exc:
            raise Unavailable(f"schema migration failed: {exc!r}") from exc
        finally:
            conn.close()
        if applied:
            log.info("applied schema migrations %s on %s (%s)", applied, self.server_version,
                     self.flavor)
        return applied

    async def _migration_connection(self) -> Connection:
        """A connection of its own to the endpoint in use, else the first that accepts one."""
        current = self.endpoints.current if self.endpoints is not None else None
        reasons: list[str] = []
        for endpoint in [current] if current is not None else self.dsn.endpoints:
            kwargs = {**self._connect_kwargs(endpoint), "read_timeout": None}
            try:
                return await asyncio.wait_for(asyncmy.connect(**kwargs), self.timeout + 1)
            except _DB_ERRORS as exc:
                reasons.append(f"{endpoint}: {exc}")
        raise Unavailable(f"cannot connect to {'; '.join(reasons)}")

    async def _named_lock(self, cur: Cursor) -> bool:
        """Take the migration lock; False where the server has no named locks.

        TiDB before 6.1 refuses ``GET_LOCK`` (error 1235), or with
        ``tidb_enable_noop_functions`` grants it to every caller at once. Nodes
        starting together may then apply the same migration side by side. That
        is safe because every migration statement is re-runnable (the rule of
        tongxin/store/migrations, with ``CREATE INDEX``'s "duplicate key name"
        and ``ADD COLUMN``'s "duplicate column name" counted as done) and
        recording a migration is idempotent and checked (``_record``); each
        version is recorded once, by whichever node gets there first.
        """
        try:
            await cur.execute("SELECT GET_LOCK(%s, %s)", (_MIGRATION_LOCK, _MIGRATION_LOCK_WAIT))
        except myerrors.MySQLError as exc:
            if isinstance(exc, myerrors.ProgrammingError) or _code(exc) == ER_NOT_SUPPORTED_YET:
                log.info("%s has no named locks (%s): migrating without the lock",
                         self.server_version or "the server", exc)
                return False
            raise
        got = await cur.fetchone()
        if not got or got[0] != 1:
            raise Unavailable(f"another node held the schema migration lock for "
                              f"{_MIGRATION_LOCK_WAIT} s")
        return True

    # Which migrations this store applies and where it records them; a store of other
    # tables in the same database (the compliance store) sets its own.
    migrations_table = "schema_migrations"
    migrations_label = "schema"

    def known_migrations(self) -> list[migrations.Migration]:
        return migrations.load()

    async def _apply_migrations_retrying(self, cur: Cursor, locked: bool) -> list[int]:
        """``_apply_migrations``, again after a retryable error when nodes migrate side by side.

        Without the named lock, TiDB answers a DDL that raced another node's DDL
        with 8028 "information schema is changed ... try again later". Every
        statement is re-runnable and recording is idempotent, so the whole pass
        is simply run again; versions applied by an earlier pass still count.
        """
        applied: list[int] = []
        for attempt in range(1, _MIGRATION_PASSES + 1):
            try:
                # Filled as each version is recorded: a pass that fails after
                # recording some must still report them (the next pass finds them
                # done and skips them).
                await self._apply_migrations(cur, applied)
                return applied
            except myerrors.MySQLError as exc:
                if locked or attempt == _MIGRATION_PASSES or not _retryable(exc):
                    raise
                log.info("schema migration pass %d met %s; running it again", attempt, exc)
                await asyncio.sleep(random.uniform(0.05, 0.2) * attempt)
        return applied

    async def _apply_migrations(self, cur: Cursor, applied: list[int]) -> None:
        """Apply what ``cur``'s database lacks, appending each version this call
        recorded to ``applied``."""
        table, label = self.migrations_table, self.migrations_label
        await cur.execute(
            "SELECT COUNT(*) FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s", (table,))
        row = await cur.fetchone()
        if not row or not row[0]:  # (IF NOT EXISTS alone leaves a note in the log each start)
            await cur.execute(migrations_ddl(table))
        await cur.execute(f"SELECT version, checksum FROM {table}")
        done = {int(v): _s(c) for v, c in await cur.fetchall()}
        known = self.known_migrations()
        latest = known[-1].version if known else 0
        if done and max(done) > latest:
            raise StoreError(f"database {label} version {max(done)} is newer than this "
                             f"release ({latest})")
        for mig in known:
            if mig.version in done:
                if done[mig.version] != mig.checksum:
                    raise StoreError(f"{label} migration {mig.version} ({mig.name}) was changed "
                                     "after it was applied to this database")
                continue
            for sql in mig.statements(self.flavor):
                await run_ddl(cur, sql)
            if await self._record(cur, mig):
                applied.append(mig.version)

    async def _record(self, cur: Cursor, mig: migrations.Migration) -> bool:
        """Record ``mig`` as applied; False if another node recorded it first.

        Idempotent, since without a named lock (``_named_lock``) two nodes may
        apply the same migration at once: the second insert changes nothing
        (``INSERT IGNORE``: 0 rows), and the row that is there is checked like
        any other recorded migration.
        """
        table, label = self.migrations_table, self.migrations_label
        await cur.execute(
            f"INSERT IGNORE INTO {table} (version, name, checksum, applied_at) "
            "VALUES (%s, %s, %s, %s)",
            (mig.version, mig.name, mig.checksum, int(time.time() * 1000)))
        inserted = cur.rowcount == 1
        await cur.execute(f"SELECT checksum FROM {table} WHERE version = %s", (mig.version,))
        row = await cur.fetchone()
        if row is None:
            raise StoreError(f"{label} migration {mig.version} ({mig.name}) was not recorded")
        if _s(row[0]) != mig.checksum:
            raise StoreError(f"{label} migration {mig.version} ({mig.name}) was changed "
                             "after it was applied to this database")
        return inserted

    async def schema_version(self) -> int:
        async def job(cur: Cursor) -> int:
            await cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._read(job)

    # ---- connection handling -------------------------------------------------

    async def _with_conn(self, fn: Callable[[Connection, Cursor], Awaitable[T]], *,
                         retry: bool = True) -> T:
        """Run ``fn`` on a pooled connection, mapping driver failures to Unavailable.

        A connection that saw a driver error is closed, never reused (the pool
        itself drops idle connections whose socket the server closed). Errors
        the server rolled back (deadlock, TiDB write conflict) are retried after
        a pause that grows with each attempt (``_BACKOFF``), up to ``_ATTEMPTS``
        tries in all.
        """
        attempt = 0
        while True:
            attempt += 1
            pool: Pool | None = None
            conn: Connection | None = None
            try:
                pool = await self._current_pool()
                # A little longer than connect_timeout, so a refused or slow
                # connect surfaces as the driver's error, not as a cancellation.
                conn = await asyncio.wait_for(pool.acquire(), self.timeout + 1)
                async with conn.cursor() as cur:
                    if conn not in self._prepared:
                        await self._prepare(cur)
                        self._prepared.add(conn)
                    result = await fn(conn, cur)
                pool.release(conn)
                return result
            except StoreError:
                if pool is not None and conn is not None:
                    await self._rollback_quietly(conn)
                    pool.release(conn)
                raise
            except _DB_ERRORS as exc:
                rolled_back = _retryable(exc) or _too_large(exc)
                if pool is not None and conn is not None:
                    if rolled_back:
                        await self._rollback_quietly(conn)
                    else:
                        conn.close()
                    pool.release(conn)
                self._failed(pool, exc)
                if _too_large(exc):
                    raise TooLarge(f"the database refused the row as too large: {exc}") from exc
                if retry and attempt < _ATTEMPTS and _retryable(exc):
                    await asyncio.sleep(_BACKOFF * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
                    continue
                raise Unavailable(f"database error: {exc!r}") from exc
            except BaseException:
                # Cancelled mid-statement: the stream is out of sync, drop it.
                if pool is not None and conn is not None:
                    conn.close()
                    pool.release(conn)
                raise

    @staticmethod
    async def _rollback_quietly(conn: Connection) -> None:
        try:
            await conn.rollback()
        except _DB_ERRORS:
            conn.close()

    async def _read(self, fn: Callable[[Cursor], Awaitable[T]]) -> T:
        async def job(_conn: Connection, cur: Cursor) -> T:
            return await fn(cur)

        return await self._with_conn(job)

    async def _write(self, fn: Callable[[Cursor], Awaitable[T]]) -> T:
        """One transaction: BEGIN, fn, COMMIT. The result is returned only after COMMIT."""
        async def job(conn: Connection, cur: Cursor) -> T:
            await conn.begin()
            result = await fn(cur)
            await conn.commit()
            return result

        return await self._with_conn(job)

    @staticmethod
    async def _one(cur: Cursor, sql: str, args: tuple[Any, ...]) -> Any:
        await cur.execute(sql, args)
        return await cur.fetchone()

    @staticmethod
    async def _all(cur: Cursor, sql: str, args: tuple[Any, ...]) -> list[Any]:
        await cur.execute(sql, args)
        return list(await cur.fetchall())

    # ---- accounts ------------------------------------------------------------

    async def create_user(self, user: User) -> User:
        async def job(cur: Cursor) -> User:
            try:
                await cur.execute(
                    f"INSERT INTO users ({_USER_COLS}) VALUES (%s,%s,%s,%s,%s,%s,0,0,0,0)",
                    (user.id, user.username, user.display_name, user.password_hash, user.role,
                     user.created_at))
            except myerrors.IntegrityError as exc:
                raise Conflict(f"username {user.username!r} is taken") from exc
            return user

        return await self._write(job)

    async def _one_user(self, where: str, arg: str) -> User | None:
        async def job(cur: Cursor) -> User | None:
            row = await self._one(cur, f"SELECT {_USER_COLS} FROM users WHERE {where} = %s", (arg,))
            return _user(row) if row else None

        return await self._read(job)

    async def get_user(self, user_id: str) -> User | None:
        return await self._one_user("id", user_id)

    async def get_user_by_name(self, username: str) -> User | None:
        return await self._one_user("username", username)

    async def list_users(self) -> list[User]:
        async def job(cur: Cursor) -> list[User]:
            return [_user(r) for r in await self._all(
                cur, f"SELECT {_USER_COLS} FROM users ORDER BY username", ())]

        return await self._read(job)

    async def _exec(self, sql: str, args: tuple[Any, ...]) -> int:
        async def job(cur: Cursor) -> int:
            await cur.execute(sql, args)
            n = cur.rowcount
            return n if isinstance(n, int) else 0

        return await self._write(job)

    async def update_login_state(self, user_id: str, failed_logins: int, first_failure_at: int,
                                 locked_until: int) -> None:
        await self._exec(
            "UPDATE users SET failed_logins=%s, first_failure_at=%s, locked_until=%s WHERE id=%s",
            (failed_logins, first_failure_at, locked_until, user_id))

    async def set_password(self, user_id: str, password_hash: str) -> None:
        await self._exec("UPDATE users SET password_hash=%s WHERE id=%s", (password_hash, user_id))

    async def set_disabled(self, user_id: str, disabled: bool) -> None:
        await self._exec(
            "UPDATE users SET disabled=%s, failed_logins=0, locked_until=0 WHERE id=%s",
            (int(disabled), user_id))

    async def set_role(self, user_id: str, role: str) -> None:
        await self._exec("UPDATE users SET role=%s WHERE id=%s", (role, user_id))

    async def add_token(self, token_id: str, user_id: str, device_id: str, issued_at: int,
                        expires_at: int) -> None:
        await self._exec(
            "INSERT INTO tokens (id, user_id, device_id, issued_at, expires_at) "
            "VALUES (%s,%s,%s,%s,%s)", (token_id, user_id, device_id, issued_at, expires_at))

    async def token_revoked(self, token_id: str) -> bool | None:
        async def job(cur: Cursor) -> bool | None:
            row = await self._one(cur, "SELECT revoked_at FROM tokens WHERE id=%s", (token_id,))
            return None if row is None else bool(row[0])

        return await self._read(job)

    async def revoke_token(self, token_id: str, at: int) -> bool:
        return await self._exec(
            "UPDATE tokens SET revoked_at=%s WHERE id=%s AND revoked_at=0", (at, token_id)) == 1

    async def revoke_user_tokens(self, user_id: str, at: int) -> int:
        return await self._exec(
            "UPDATE tokens SET revoked_at=%s WHERE user_id=%s AND revoked_at=0", (at, user_id))

    async def record_password(self, user_id: str, password_hash: str, at: int, keep: int) -> None:
        async def job(cur: Cursor) -> None:
            await cur.execute("UPDATE users SET password_hash=%s WHERE id=%s",
                              (password_hash, user_id))
            await cur.execute("REPLACE INTO password_history (user_id, changed_at, password_hash) "
                              "VALUES (%s,%s,%s)", (user_id, at, password_hash))
            # LIMIT is not allowed in an IN subquery on MySQL: find the cutoff first.
            row = await self._one(cur, "SELECT changed_at FROM password_history WHERE user_id=%s "
                                  "ORDER BY changed_at DESC LIMIT 1 OFFSET %s",
                                  (user_id, max(keep, 1) - 1))
            if row is not None:
                await cur.execute("DELETE FROM password_history WHERE user_id=%s AND changed_at<%s",
                                  (user_id, int(row[0])))

        await self._write(job)

    async def password_history(self, user_id: str, limit: int) -> list[tuple[int, str]]:
        async def job(cur: Cursor) -> list[tuple[int, str]]:
            return [(int(r[0]), str(r[1])) for r in await self._all(
                cur, "SELECT changed_at, password_hash FROM password_history WHERE user_id=%s "
                "ORDER BY changed_at DESC LIMIT %s", (user_id, limit))]

        return await self._read(job)

    async def touch_token(self, token_id: str, at: int) -> None:
        await self._exec(
            "INSERT INTO token_activity (token_id, last_used_at) VALUES (%s,%s) "
            "ON DUPLICATE KEY UPDATE last_used_at = GREATEST(last_used_at, VALUES(last_used_at))",
            (token_id, at))

    async def live_tokens(self, user_id: str, now: int, before: tuple[int, str] | None,
                          limit: int, token_id: str = "") -> list[TokenRow]:
        where = ["t.revoked_at = 0", "t.expires_at > %s"]
        args: list[Any] = [now]
        if user_id:
            where.append("t.user_id = %s")
            args.append(user_id)
        if token_id:
            where.append("t.id = %s")
            args.append(token_id)
        if before is not None:
            where.append("(t.issued_at < %s OR (t.issued_at = %s AND t.id < %s))")
            args += [before[0], before[0], before[1]]
        sql = ("SELECT t.id, t.user_id, t.device_id, t.issued_at, t.expires_at, "
               "COALESCE(a.last_used_at, 0) FROM tokens t LEFT JOIN token_activity a "
               f"ON a.token_id = t.id WHERE {' AND '.join(where)} "
               "ORDER BY t.issued_at DESC, t.id DESC LIMIT %s")

        async def job(cur: Cursor) -> list[TokenRow]:
            return [TokenRow(_s(r[0]), _s(r[1]), _s(r[2]), int(r[3]), int(r[4]), int(r[5]))
                    for r in await self._all(cur, sql, (*args, limit))]

        return await self._read(job)

    async def token_last_used(self, token_id: str) -> int:
        async def job(cur: Cursor) -> int:
            row = await self._one(cur, "SELECT last_used_at FROM token_activity WHERE token_id=%s",
                                  (token_id,))
            return int(row[0]) if row else 0

        return await self._read(job)

    # ---- conversations -------------------------------------------------------

    async def _insert_entry(self, cur: Cursor, e: Entry) -> Entry:
        await cur.execute(
            "UPDATE conversations SET last_seq = LAST_INSERT_ID(last_seq + 1) WHERE id = %s",
            (e.conversation_id,))
        if cur.rowcount != 1:
            raise NoSuchConversation(e.conversation_id)
        seq = int(cur.lastrowid or 0) if self.flavor == "mysql" else 0
        if not seq:
            row = await self._one(cur, "SELECT LAST_INSERT_ID()", ())
            seq = int(row[0])
        try:
            await cur.execute(
                f"INSERT INTO messages ({_ENTRY_COLS}) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (e.conversation_id, e.sender_id, e.sender_device, e.client_msg_id, e.sent_at,
                 e.kind, seal_content(self.keyring, e.conversation_id, seq, e.content),
                 e.target_seq, e.system, seq, int(e.recalled), e.edited_at))
        except myerrors.IntegrityError as exc:
            if _is_dup(exc):
                raise _Raced(e.client_msg_id) from exc
            raise
        e.seq = seq
        return e

    async def create_conversation(self, conv: ConversationRow, members: list[tuple[str, int]],
                                  created: Entry) -> tuple[ConversationRow, bool]:
        select = f"SELECT {_CONV_COLS} FROM conversations WHERE id=%s"

        async def job(cur: Cursor) -> tuple[ConversationRow, bool]:
            row = await self._one(cur, select, (conv.id,))
            if row is not None:
                return _conv(row), False
            try:
                await cur.execute(
                    f"INSERT INTO conversations ({_CONV_COLS}) VALUES (%s,%s,%s,%s,%s,0,%s)",
                    (conv.id, conv.kind, conv.name, conv.created_at, conv.created_by,
                     len(members)))
            except myerrors.IntegrityError as exc:
                if _is_dup(exc):
                    raise _Raced(conv.id) from exc
                raise
            for i in range(0, len(members), _CHUNK):
                await cur.executemany(
                    f"INSERT INTO members ({_MEMBER_COLS}) VALUES (%s,%s,%s,1,0,0)",
                    [(conv.id, uid, role) for uid, role in members[i:i + _CHUNK]])
            await self._insert_entry(cur, created)
            conv.last_seq, conv.member_count = created.seq, len(members)
            return conv, True

        try:
            return await self._write(job)
        except _Raced:
            # Created concurrently by another node: answer as if it existed before.
            async def again(cur: Cursor) -> tuple[ConversationRow, bool]:
                row = await self._one(cur, select, (conv.id,))
                if row is None:
                    raise Unavailable(f"conversation {conv.id} vanished") from None
                return _conv(row), False

            return await self._read(again)

    async def get_conversation(self, conversation_id: str) -> ConversationRow | None:
        async def job(cur: Cursor) -> ConversationRow | None:
            row = await self._one(cur, f"SELECT {_CONV_COLS} FROM conversations WHERE id=%s",
                                  (conversation_id,))
            return _conv(row) if row else None

        return await self._read(job)

    async def get_member(self, conversation_id: str, user_id: str) -> MemberRow | None:
        async def job(cur: Cursor) -> MemberRow | None:
            row = await self._one(
                cur, f"SELECT {_MEMBER_COLS} FROM members WHERE conversation_id=%s AND user_id=%s",
                (conversation_id, user_id))
            return _member(row) if row else None

        return await self._read(job)

    async def member_ids(self, conversation_id: str) -> list[str]:
        async def job(cur: Cursor) -> list[str]:
            return [_s(r[0]) for r in await self._all(
                cur, "SELECT user_id FROM members WHERE conversation_id=%s", (conversation_id,))]

        return await self._read(job)

    async def list_members(self, conversation_id: str, limit: int) -> list[MemberRow]:
        async def job(cur: Cursor) -> list[MemberRow]:
            return [_member(r) for r in await self._all(
                cur, f"SELECT {_MEMBER_COLS} FROM members WHERE conversation_id=%s "
                "ORDER BY role DESC, user_id LIMIT %s", (conversation_id, limit))]

        return await self._read(job)

    async def conversations_of(self, user_id: str) -> list[ConversationView]:
        mcols = ", ".join(f"m.{c.strip()}" for c in _MEMBER_COLS.split(","))
        ccols = ", ".join(f"c.{c.strip()}" for c in _CONV_COLS.split(","))

        async def job(cur: Cursor) -> list[ConversationView]:
            views = [
                ConversationView(_conv(r[:7]), _member(r[7:]))
                for r in await self._all(
                    cur, f"SELECT {ccols}, {mcols} FROM members m JOIN conversations c "
                    "ON c.id = m.conversation_id WHERE m.user_id=%s ORDER BY c.created_at, c.id",
                    (user_id,))
            ]
            direct = {v.conversation.id: v for v in views if v.conversation.kind == 1}
            if direct:
                for cid, uid in await self._all(
                        cur, "SELECT p.conversation_id, p.user_id FROM members m "
                        "JOIN conversations c ON c.id = m.conversation_id AND c.kind = 1 "
                        "JOIN members p ON p.conversation_id = m.conversation_id "
                        "AND p.user_id != m.user_id WHERE m.user_id=%s", (user_id,)):
                    view = direct.get(_s(cid))
                    if view is not None:
                        view.peer_id = _s(uid)
            return views

        return await self._read(job)

    async def change_members(self, conversation_id: str, ops: MemberOps, entry: Entry,
                             max_members: int) -> Entry:
        async def job(cur: Cursor) -> Entry:
            # Lock the conversation first: member changes and appends to one
            # conversation are serialized on this row, as in the SQLite writer.
            row = await self._one(
                cur, "SELECT member_count FROM conversations WHERE id=%s FOR UPDATE",
                (conversation_id,))
            if row is None:
                raise NoSuchConversation(conversation_id)
            existing = {_s(r[0]) for r in await self._all(
                cur, "SELECT user_id FROM members WHERE conversation_id=%s", (conversation_id,))}
            adds = [(u, r) for u, r in ops.add if u not in existing]
            removes = [u for u in ops.remove if u in existing]
            count = len(existing) + len(adds) - len(removes)
            if count > max_members:
                raise GroupFull(f"group would have {count} members, the limit is {max_members}")
            await self._insert_entry(cur, entry)
            for i in range(0, len(adds), _CHUNK):
                await cur.executemany(
                    f"INSERT INTO members ({_MEMBER_COLS}) VALUES (%s,%s,%s,%s,0,0)",
                    [(conversation_id, u, r, entry.seq) for u, r in adds[i:i + _CHUNK]])
            for i in range(0, len(removes), _CHUNK):
                part = removes[i:i + _CHUNK]
                marks = ",".join(["%s"] * len(part))
                await cur.execute(
                    f"DELETE FROM members WHERE conversation_id=%s AND user_id IN ({marks})",
                    (conversation_id, *part))
            for u, r in ops.set_role:
                await cur.execute(
                    "UPDATE members SET role=%s WHERE conversation_id=%s AND user_id=%s",
                    (r, conversation_id, u))
            if ops.rename is not None:
                await cur.execute("UPDATE conversations SET name=%s WHERE id=%s",
                                  (ops.rename, conversation_id))
            await cur.execute("UPDATE conversations SET member_count=%s WHERE id=%s",
                              (count, conversation_id))
            return entry

        try:
            return await self._write(job)
        except _Raced as exc:
            # The entry's client id was already used in this conversation.
            raise Unavailable(f"duplicate client_msg_id {exc} in a membership change") from exc

    # ---- the log -------------------------------------------------------------

    async def append(self, entry: Entry, mark_recalled: bool = False,
                     mark_edited: bytes | None = None) -> tuple[Entry, bool]:
        if mark_recalled or mark_edited is not None:
            return await self._append_one(entry, mark_recalled, mark_edited)
        future: asyncio.Future[tuple[Entry, bool]] = asyncio.get_running_loop().create_future()
        self._appends.append(_PendingAppend(entry, future))
        if len(self._flushers) < self.append_txns:
            task = asyncio.create_task(self._flush_appends())
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return await future

    async def _flush_appends(self) -> None:
        """Commit what is waiting, a batch at a time, until nothing is."""
        while self._appends:
            batch: list[_PendingAppend] = []
            while self._appends and len(batch) < self.append_batch:
                pending = self._appends.popleft()
                if not pending.future.done():  # its caller gave up before it was taken
                    batch.append(pending)
            if batch:
                await self._commit_appends(batch)

    async def _commit_appends(self, batch: list[_PendingAppend]) -> None:
        """Store ``batch`` and answer every waiter; never raises but for cancellation."""
        # A client_msg_id twice in one batch: the first is stored, the others get its
        # answer as a re-send (as if it had committed just before them).
        firsts: dict[tuple[str, str, str], _PendingAppend] = {}
        copies: list[tuple[_PendingAppend, _PendingAppend]] = []
        for p in batch:
            key = (p.entry.conversation_id, p.entry.sender_id, p.entry.client_msg_id)
            if key in firsts:
                copies.append((p, firsts[key]))
            else:
                firsts[key] = p
        unique = list(firsts.values())
        outcomes: dict[int, _Outcome] = {}
        try:
            try:
                outcomes = await self._write_batch(unique)
            except (_BatchRefused, TooLarge):  # (TiDB may refuse a large row only at COMMIT)
                for p in unique:  # arrival order: a sender's entries keep their order
                    try:
                        outcomes[id(p)] = await self._append_one(p.entry)
                    except StoreError as exc:
                        outcomes[id(p)] = exc
            except StoreError as exc:
                outcomes = {id(p): exc for p in unique}
        except BaseException:
            cancelled = Unavailable("append cancelled (the store is closing)")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(_same_error(cancelled))
            raise
        for p in unique:
            _answer(p, outcomes[id(p)])
        for p, first in copies:
            outcome = outcomes[id(first)]
            if isinstance(outcome, StoreError):
                _answer(p, outcome)
            else:
                _answer(p, (dataclasses.replace(outcome[0]), True))

    async def _write_batch(self, batch: list[_PendingAppend]) -> dict[int, _Outcome]:
        """One transaction for ``batch`` (distinct keys); the outcomes by ``id()`` of each
        pending append, returned after COMMIT. Raises _BatchRefused if the INSERT was
        refused, StoreError (Unavailable, ...) if the transaction failed."""
        ordered = sorted(batch, key=lambda p: p.entry.conversation_id)  # stable: arrival order
        counts: dict[str, int] = {}
        for p in ordered:
            counts[p.entry.conversation_id] = counts.get(p.entry.conversation_id, 0) + 1

        async def job(conn: Connection, cur: Cursor) -> dict[int, _Outcome]:
            await conn.begin()
            last = await self._reserve_seqs(cur, counts)
            outcomes: dict[int, _Outcome] = {}
            seqs: list[tuple[Entry, int]] = []
            rows: list[tuple[Any, ...]] = []
            for p in ordered:
                e = p.entry
                if e.conversation_id not in last:
                    outcomes[id(p)] = NoSuchConversation(e.conversation_id)
                    continue
                last[e.conversation_id] += 1
                seq = last[e.conversation_id]
                seqs.append((e, seq))
                rows.append((e.conversation_id, e.sender_id, e.sender_device, e.client_msg_id,
                             e.sent_at, e.kind, seal_content(self.keyring, e.conversation_id, seq,
                                                             e.content),
                             e.target_seq, e.system, seq, int(e.recalled), e.edited_at))
            await self._insert_rows(cur, rows)
            await self._commit(conn)
            for e, seq in seqs:
                e.seq = seq
            for p in ordered:
                outcomes.setdefault(id(p), (p.entry, False))
            return outcomes

        return await self._with_conn(job)

    async def _reserve_seqs(self, cur: Cursor, counts: dict[str, int]) -> dict[str, int]:
        """Lock the conversations' rows (in id order) and advance each last_seq by its
        count; the last_seq before, by conversation (a missing one is left out)."""
        if len(counts) == 1:
            (cid, n), = counts.items()
            await cur.execute(
                "UPDATE conversations SET last_seq = LAST_INSERT_ID(last_seq + %s) WHERE id = %s",
                (n, cid))
            if cur.rowcount != 1:
                return {}
            new = int(cur.lastrowid or 0) if self.flavor == "mysql" else 0
            if not new:
                row = await self._one(cur, "SELECT LAST_INSERT_ID()", ())
                new = int(row[0])
            return {cid: new - n}
        ids = sorted(counts)
        marks = ",".join(["%s"] * len(ids))
        last = {_s(r[0]): int(r[1]) for r in await self._all(
            cur, f"SELECT id, last_seq FROM conversations WHERE id IN ({marks}) "
            "ORDER BY id FOR UPDATE", tuple(ids))}
        found = [cid for cid in ids if cid in last]
        if found:
            whens = " ".join(["WHEN %s THEN %s"] * len(found))
            marks = ",".join(["%s"] * len(found))
            await cur.execute(
                f"UPDATE conversations SET last_seq = CASE id {whens} END WHERE id IN ({marks})",
                (*(x for cid in found for x in (cid, last[cid] + counts[cid])), *found))
        return last

    @staticmethod
    async def _insert_rows(cur: Cursor, rows: list[tuple[Any, ...]]) -> None:
        """Multi-row INSERTs of ``rows``, split so that no statement grows past _INSERT_BYTES."""
        start, size = 0, 0
        for i, row in enumerate(rows):
            size += len(row[6]) + len(row[8])
            if size >= _INSERT_BYTES or i == len(rows) - 1:
                part = rows[start:i + 1]
                try:
                    await cur.execute(
                        f"INSERT INTO messages ({_ENTRY_COLS}) VALUES "
                        + ",".join([_ENTRY_VALUES] * len(part)),
                        tuple(x for r in part for x in r))
                except myerrors.MySQLError as exc:
                    if isinstance(exc, myerrors.IntegrityError | myerrors.DataError) \
                            or _too_large(exc):
                        raise _BatchRefused(str(exc)) from exc
                    raise
                start, size = i + 1, 0

    @staticmethod
    async def _commit(conn: Connection) -> None:
        await conn.commit()

    async def _append_one(self, entry: Entry, mark_recalled: bool = False,
                          mark_edited: bytes | None = None) -> tuple[Entry, bool]:
        """An append in a transaction of its own, its dedup by SELECT first."""
        async def job(cur: Cursor) -> tuple[Entry, bool]:
            row = await self._one(
                cur, f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=%s "
                "AND sender_id=%s AND client_msg_id=%s",
                (entry.conversation_id, entry.sender_id, entry.client_msg_id))
            if row is not None:
                return _entry(row), True
            await self._insert_entry(cur, entry)
            if mark_recalled:
                await cur.execute(
                    "UPDATE messages SET recalled=1 WHERE conversation_id=%s AND seq=%s",
                    (entry.conversation_id, entry.target_seq))
            if mark_edited is not None:
                await cur.execute(
                    "UPDATE messages SET content=%s, edited_at=%s "
                    "WHERE conversation_id=%s AND seq=%s",
                    (seal_content(self.keyring, entry.conversation_id, entry.target_seq,
                                  mark_edited),
                     entry.sent_at, entry.conversation_id, entry.target_seq))
            return entry, False

        try:
            found, dup = await self._write(job)
            if dup:
                await open_entry(self.keyring, found)
            return found, dup
        except _Raced:
            # A concurrent send with the same client id committed first.
            stored = await self.find_by_client_id(entry.conversation_id, entry.sender_id,
                                                  entry.client_msg_id)
            if stored is None:
                raise Unavailable("duplicate key, but the stored entry is not visible") from None
            return stored, True

    async def get_entry(self, conversation_id: str, seq: int) -> Entry | None:
        async def job(cur: Cursor) -> Entry | None:
            row = await self._one(
                cur, f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=%s AND seq=%s",
                (conversation_id, seq))
            return _entry(row) if row else None

        return await open_entry(self.keyring, await self._read(job))

    async def find_by_client_id(self, conversation_id: str, sender_id: str,
                                client_msg_id: str) -> Entry | None:
        async def job(cur: Cursor) -> Entry | None:
            row = await self._one(
                cur, f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=%s "
                "AND sender_id=%s AND client_msg_id=%s",
                (conversation_id, sender_id, client_msg_id))
            return _entry(row) if row else None

        return await open_entry(self.keyring, await self._read(job))

    async def conversation_ids(self, after: str, limit: int) -> list[str]:
        async def job(cur: Cursor) -> list[str]:
            return [_s(r[0]) for r in await self._all(
                cur, "SELECT id FROM conversations WHERE id > %s ORDER BY id LIMIT %s", (after, limit))]

        return await self._read(job)

    async def list_groups(self, name_contains: str, after: str, limit: int) -> list[ConversationRow]:
        async def job(cur: Cursor) -> list[ConversationRow]:
            # LOCATE under utf8mb4_bin is case-sensitive, as SQLite's instr() is
            return [_conv(r) for r in await self._all(
                cur, f"SELECT {_CONV_COLS} FROM conversations WHERE kind = 2 AND id > %s "
                "AND (%s = '' OR LOCATE(%s, name) > 0) ORDER BY id LIMIT %s",
                (after, name_contains, name_contains, limit))]

        return await self._read(job)

    # ---- organisation units ----------------------------------------------------
    # Every change reads the whole tree FOR UPDATE first: changes to the tree take
    # turns across nodes, so two moves cannot each pass the cycle check and together
    # make a cycle. The unique key on (parent_id, name) covers two creates in an empty
    # tree, where there is no row to lock.

    async def _org_tree(self, cur: Cursor) -> org.Tree:
        rows = await self._all(cur, "SELECT id, parent_id, name, created_at FROM org_units "
                                    "FOR UPDATE", ())
        return org.Tree(OrgUnit(_s(r[0]), _s(r[1]), r[2], int(r[3])) for r in rows)

    async def org_units(self) -> list[OrgUnit]:
        async def job(cur: Cursor) -> list[OrgUnit]:
            return [OrgUnit(_s(r[0]), _s(r[1]), r[2], int(r[3]), int(r[4])) for r in await self._all(
                cur, "SELECT u.id, u.parent_id, u.name, u.created_at, "
                "(SELECT COUNT(*) FROM org_members m WHERE m.unit_id = u.id) "
                "FROM org_units u ORDER BY u.parent_id, u.name", ())]

        return await self._read(job)

    async def org_create(self, unit_id: str, parent_id: str, name: str, at: int) -> OrgUnit:
        async def job(cur: Cursor) -> OrgUnit:
            text = org.check_create(await self._org_tree(cur), parent_id, name)
            try:
                await cur.execute("INSERT INTO org_units (id, parent_id, name, created_at) "
                                  "VALUES (%s,%s,%s,%s)", (unit_id, parent_id, text, at))
            except myerrors.IntegrityError as exc:
                if _is_dup(exc):
                    raise org.NameTaken(f"there is already a unit named {text!r} there") from exc
                raise
            return OrgUnit(unit_id, parent_id, text, at)

        return await self._write(job)

    async def org_update(self, unit_id: str, name: str | None = None,
                         parent_id: str | None = None) -> tuple[OrgUnit, OrgUnit]:
        async def job(cur: Cursor) -> tuple[OrgUnit, OrgUnit]:
            tree = await self._org_tree(cur)
            before, after = org.check_update(tree, unit_id, name, parent_id)
            try:
                await cur.execute("UPDATE org_units SET name = %s, parent_id = %s WHERE id = %s",
                                  (after.name, after.parent_id, unit_id))
            except myerrors.IntegrityError as exc:
                if _is_dup(exc):
                    raise org.NameTaken(f"there is already a unit named {after.name!r} there") from exc
                raise
            return before, after

        return await self._write(job)

    async def org_delete(self, unit_id: str) -> OrgUnit:
        async def job(cur: Cursor) -> OrgUnit:
            tree = await self._org_tree(cur)
            # The rows themselves, locked (not COUNT(*) ... FOR UPDATE, which not every
            # server of the subset takes): an assignment racing this delete waits.
            members = await self._all(cur, "SELECT user_id FROM org_members WHERE unit_id = %s "
                                           "FOR UPDATE", (unit_id,))
            unit = org.check_delete(tree, unit_id, len(members))
            await cur.execute("DELETE FROM org_units WHERE id = %s", (unit_id,))
            return unit

        return await self._write(job)

    async def org_assign(self, user_id: str, unit_id: str, at: int) -> str:
        async def job(cur: Cursor) -> str:
            # The unit's row locked: a delete of the unit waits for this assignment
            # (and then sees the member) or went first (and this finds no unit).
            if unit_id and await self._one(cur, "SELECT id FROM org_units WHERE id = %s FOR UPDATE",
                                           (unit_id,)) is None:
                raise org.UnitNotFound(f"no organisation unit {unit_id!r}")
            row = await self._one(cur, "SELECT unit_id FROM org_members WHERE user_id = %s "
                                       "FOR UPDATE", (user_id,))
            if unit_id:
                await cur.execute(
                    "INSERT INTO org_members (user_id, unit_id, assigned_at) VALUES (%s,%s,%s) "
                    "ON DUPLICATE KEY UPDATE unit_id = VALUES(unit_id), "
                    "assigned_at = VALUES(assigned_at)", (user_id, unit_id, at))
            else:
                await cur.execute("DELETE FROM org_members WHERE user_id = %s", (user_id,))
            return _s(row[0]) if row else ""

        return await self._write(job)

    async def org_assignments(self) -> dict[str, str]:
        async def job(cur: Cursor) -> dict[str, str]:
            return {_s(r[0]): _s(r[1]) for r in await self._all(
                cur, "SELECT user_id, unit_id FROM org_members", ())}

        return await self._read(job)

    async def memberships(self, user_id: str) -> list[tuple[str, int]]:
        async def job(cur: Cursor) -> list[tuple[str, int]]:
            return [(_s(r[0]), int(r[1])) for r in await self._all(
                cur, "SELECT conversation_id, joined_seq FROM members WHERE user_id=%s "
                "ORDER BY conversation_id", (user_id,))]

        return await self._read(job)

    async def entries_between(self, conversation_id: str, from_ms: int, to_ms: int, after_seq: int,
                              limit: int, min_seq: int = 0) -> list[Entry]:
        async def job(cur: Cursor) -> list[Entry]:
            return [_entry(r) for r in await self._all(
                cur, f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=%s AND seq>%s "
                "AND sent_at>=%s AND sent_at<%s ORDER BY seq LIMIT %s",
                (conversation_id, max(after_seq, min_seq - 1), from_ms, to_ms, limit))]

        return await open_entries(self.keyring, await self._read(job))

    async def sent_by(self, user_id: str, from_ms: int, to_ms: int) -> list[Entry]:
        async def job(cur: Cursor) -> list[Entry]:
            return [_entry(r) for r in await self._all(
                cur, f"SELECT {_ENTRY_COLS} FROM messages WHERE sender_id=%s AND sent_at>=%s "
                "AND sent_at<%s ORDER BY conversation_id, seq", (user_id, from_ms, to_ms))]

        return await open_entries(self.keyring, await self._read(job))

    async def delete_before(self, conversation_id: str, cutoff_ms: int, spare_senders: list[str],
                            limit: int) -> int:
        marks = ",".join(["%s"] * len(spare_senders))
        spare = f"AND sender_id NOT IN ({marks})" if spare_senders else ""

        # Single-table DELETE with ORDER BY and LIMIT (MySQL, MariaDB, TiDB): one transaction.
        return await self._exec(
            f"DELETE FROM messages WHERE conversation_id=%s AND sent_at<%s {spare} "
            "ORDER BY seq LIMIT %s", (conversation_id, cutoff_ms, *spare_senders, limit))

    async def entries_after(self, conversation_id: str, after_seq: int, limit: int,
                            min_seq: int = 0) -> list[Entry]:
        async def job(cur: Cursor) -> list[Entry]:
            return [_entry(r) for r in await self._all(
                cur, f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=%s AND seq>%s "
                "ORDER BY seq LIMIT %s", (conversation_id, max(after_seq, min_seq - 1), limit))]

        return await open_entries(self.keyring, await self._read(job))

    async def entries_before(self, conversation_id: str, before_seq: int, limit: int,
                             min_seq: int = 0) -> list[Entry]:
        async def job(cur: Cursor) -> list[Entry]:
            return [_entry(r) for r in await self._all(
                cur, f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=%s AND seq<%s "
                "AND seq>=%s ORDER BY seq DESC LIMIT %s",
                (conversation_id, before_seq, min_seq, limit))]

        rows = await self._read(job)
        rows.reverse()
        return await open_entries(self.keyring, rows)

    async def set_cursor(self, conversation_id: str, user_id: str, kind: str, seq: int) -> int:
        # One cursor is a batch of one: a single write path to keep right.
        [stored] = await self.set_cursors([CursorMark(conversation_id, user_id, kind, seq)])
        return stored

    async def set_cursors(self, marks: list[CursorMark]) -> list[int]:
        # Rows in key order, so that two nodes' batches over the same members
        # lock them in the same order (no deadlock between them).
        ordered = sorted(marks, key=lambda m: (m.conversation_id, m.user_id, m.kind))

        async def job(cur: Cursor) -> list[int]:
            # One multi-table UPDATE per kind and chunk instead of one per
            # receipt: a burst of a large group's receipts is a few statements.
            for kind, column in _CURSOR_COLUMNS.items():
                rows = [m for m in ordered if m.kind == kind]
                for i in range(0, len(rows), _CHUNK):
                    part = rows[i:i + _CHUNK]
                    values = " UNION ALL ".join(["SELECT %s AS c, %s AS u, %s AS s"]
                                                + ["SELECT %s, %s, %s"] * (len(part) - 1))
                    await cur.execute(
                        f"UPDATE members m JOIN ({values}) v "
                        "ON m.conversation_id = v.c AND m.user_id = v.u "
                        f"SET m.{column} = GREATEST(m.{column}, v.s)",
                        tuple(x for m in part for x in (m.conversation_id, m.user_id, m.seq)))
            stored: dict[tuple[str, str], tuple[int, int]] = {}
            pairs = sorted({(m.conversation_id, m.user_id) for m in ordered})
            for i in range(0, len(pairs), _CHUNK):
                part2 = pairs[i:i + _CHUNK]
                keys = " UNION ALL ".join(["SELECT %s AS c, %s AS u"]
                                          + ["SELECT %s, %s"] * (len(part2) - 1))
                for r in await self._all(
                        cur, "SELECT m.conversation_id, m.user_id, m.read_seq, m.delivered_seq "
                        f"FROM members m JOIN ({keys}) v "
                        "ON m.conversation_id = v.c AND m.user_id = v.u",
                        tuple(x for pair in part2 for x in pair)):
                    stored[(_s(r[0]), _s(r[1]))] = (int(r[2]), int(r[3]))
            out = []
            for m in marks:
                read, delivered = stored.get((m.conversation_id, m.user_id), (0, 0))
                out.append(read if m.kind == "read" else delivered)
            return out

        return await self._write(job) if marks else []

    # ---- data keys (tongxin.atrest.keyring.DekStore) -------------------------

    @staticmethod
    def _dek(r: Any) -> DataKeyRow:
        return DataKeyRow(int(r[0]), _s(r[1]), _s(r[2]), bytes(r[3]), int(r[4]))

    async def data_keys(self, after_id: int, limit: int) -> list[DataKeyRow]:
        async def job(cur: Cursor) -> list[DataKeyRow]:
            return [self._dek(r) for r in await self._all(
                cur, "SELECT id, suite, kek_id, wrapped, created_at FROM data_keys WHERE id > %s "
                "ORDER BY id LIMIT %s", (after_id, limit))]

        return await self._read(job)

    async def data_key(self, key_id: int) -> DataKeyRow | None:
        async def job(cur: Cursor) -> DataKeyRow | None:
            row = await self._one(cur, "SELECT id, suite, kek_id, wrapped, created_at "
                                  "FROM data_keys WHERE id = %s", (key_id,))
            return self._dek(row) if row else None

        return await self._read(job)

    async def add_data_key(self, row: DataKeyRow) -> bool:
        async def job(cur: Cursor) -> bool:
            try:
                await cur.execute(
                    "INSERT INTO data_keys (id, suite, kek_id, wrapped, created_at) "
                    "VALUES (%s,%s,%s,%s,%s)",
                    (row.id, row.suite, row.kek_id, row.wrapped, row.created_at))
            except myerrors.IntegrityError as exc:
                if _is_dup(exc):
                    return False
                raise
            return True

        return await self._write(job)

    async def rewrap_data_key(self, key_id: int, old_kek_id: str, new_kek_id: str,
                              wrapped: bytes) -> bool:
        return await self._exec(
            "UPDATE data_keys SET kek_id = %s, wrapped = %s WHERE id = %s AND kek_id = %s",
            (new_kek_id, wrapped, key_id, old_kek_id)) == 1

    # ---- site heartbeat (tongxin.site.heartbeat.HeartbeatStore) --------------

    async def write_heartbeat(self, node_id: str, site: str, beat_ms: int,
                              status: NodeStatus | None = None) -> None:
        """This node's row only: nodes never write each other's, so never conflict.
        One statement, the beat and what the node says of itself (schema version 8)."""
        st = status or NodeStatus()
        await self._exec(
            "INSERT INTO site_heartbeat (node_id, site, beat_ms, node_version, address, "
            "connections, started_ms) VALUES (%s,%s,%s,%s,%s,%s,%s) "
            "ON DUPLICATE KEY UPDATE site = VALUES(site), beat_ms = VALUES(beat_ms), "
            "node_version = VALUES(node_version), address = VALUES(address), "
            "connections = VALUES(connections), started_ms = VALUES(started_ms)",
            (node_id, site, beat_ms, st.version, st.address, st.connections, st.started_ms))

    async def node_beats(self, since_ms: int) -> list[NodeBeat]:
        """Every node's row whose last beat is at ``since_ms`` or later, by site and node."""
        async def job(cur: Cursor) -> list[NodeBeat]:
            rows = await self._all(
                cur, "SELECT node_id, site, beat_ms, node_version, address, connections, "
                "started_ms FROM site_heartbeat WHERE beat_ms >= %s ORDER BY site, node_id",
                (since_ms,))
            return [NodeBeat(_s(r[0]), _s(r[1]), int(r[2]), NodeStatus(
                None if r[3] is None else _s(r[3]), None if r[4] is None else _s(r[4]),
                None if r[5] is None else int(r[5]), None if r[6] is None else int(r[6])))
                for r in rows]

        return await self._read(job)

    async def newest_heartbeat(self) -> tuple[str, str, int] | None:
        """(node_id, site, beat_ms) of the newest beat; None without rows or without the table
        (a replica that has not received migration 5 yet)."""
        async def job(cur: Cursor) -> tuple[str, str, int] | None:
            try:
                row = await self._one(cur, "SELECT node_id, site, beat_ms FROM site_heartbeat "
                                      "ORDER BY beat_ms DESC LIMIT 1", ())
            except myerrors.ProgrammingError as exc:
                if _code(exc) == ER_NO_SUCH_TABLE:
                    return None
                raise
            return (_s(row[0]), _s(row[1]), int(row[2])) if row else None

        return await self._read(job)

"""The embedded default store: history and accounts in one SQLite file (WAL).

Writes go through a group-committing writer thread, reads through a second
connection on its own thread, so a long sync read never delays an ACK.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tongxin.atrest.keyring import DataKeyRow, Keyring
from tongxin.atrest.records import open_entries, open_entry, open_keyring, seal_content
from tongxin.config import Config
from tongxin.org import units as org
from tongxin.store.ports import (
    Conflict,
    ConversationRow,
    ConversationView,
    CursorMark,
    Entry,
    GroupFull,
    MemberOps,
    MemberRow,
    NoSuchConversation,
    OrgUnit,
    StoreError,
    TokenRow,
    User,
)
from tongxin.store.sqlite_worker import SqliteDatabase

_CURSOR_COLUMNS = {"read": "read_seq", "delivered": "delivered_seq"}

SCHEMA_VERSION = 5  # 2: password_history, token_activity; 3: data_keys; 4: messages_by_time;
# 5: org_units, org_members, conversations_by_kind

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    first_failure_at INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens(user_id);
CREATE TABLE IF NOT EXISTS password_history (
    user_id TEXT NOT NULL,
    changed_at INTEGER NOT NULL,
    password_hash TEXT NOT NULL,
    PRIMARY KEY (user_id, changed_at)
);
CREATE TABLE IF NOT EXISTS token_activity (
    token_id TEXT PRIMARY KEY,
    last_used_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    kind INTEGER NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    member_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS members (
    conversation_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role INTEGER NOT NULL,
    joined_seq INTEGER NOT NULL,
    read_seq INTEGER NOT NULL DEFAULT 0,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX IF NOT EXISTS members_by_user ON members(user_id);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sender_id TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    content BLOB NOT NULL,
    target_seq INTEGER NOT NULL DEFAULT 0,
    system BLOB NOT NULL,
    recalled INTEGER NOT NULL DEFAULT 0,
    edited_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id
    ON messages(conversation_id, sender_id, client_msg_id);
-- Retention and compliance exports walk a conversation by time.
CREATE INDEX IF NOT EXISTS messages_by_time ON messages(conversation_id, sent_at);
CREATE TABLE IF NOT EXISTS data_keys (
    id INTEGER PRIMARY KEY,
    suite TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
-- Organisation units (tongxin.org.units): names unique among siblings, a user in one unit.
CREATE TABLE IF NOT EXISTS org_units (
    id TEXT PRIMARY KEY,
    parent_id TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (parent_id, name)
);
CREATE TABLE IF NOT EXISTS org_members (
    user_id TEXT PRIMARY KEY,
    unit_id TEXT NOT NULL,
    assigned_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS org_members_by_unit ON org_members(unit_id);
-- The sysadmin's group list: group conversations by id, not a scan past direct chats.
CREATE INDEX IF NOT EXISTS conversations_by_kind ON conversations(kind, id);
"""

_USER_COLS = ("id, username, display_name, password_hash, role, created_at, failed_logins, "
              "first_failure_at, locked_until, disabled")
_ENTRY_COLS = ("conversation_id, sender_id, sender_device, client_msg_id, sent_at, kind, content, "
               "target_seq, system, seq, recalled, edited_at")
_CONV_COLS = "id, kind, name, created_at, created_by, last_seq, member_count"
_MEMBER_COLS = "conversation_id, user_id, role, joined_seq, read_seq, delivered_seq"


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                bool(row[9]))


def _entry(row: Any) -> Entry:
    return Entry(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                 bool(row[10]), row[11])


def _conv(row: Any) -> ConversationRow:
    return ConversationRow(*row)


def _member(row: Any) -> MemberRow:
    return MemberRow(*row)


def _insert_entry(conn: sqlite3.Connection, e: Entry, keyring: Keyring | None = None) -> Entry:
    cur = conn.execute(
        "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq",
        (e.conversation_id,),
    )
    row = cur.fetchone()
    if row is None:
        raise NoSuchConversation(e.conversation_id)
    e.seq = row[0]
    conn.execute(
        f"INSERT INTO messages ({_ENTRY_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (e.conversation_id, e.sender_id, e.sender_device, e.client_msg_id, e.sent_at, e.kind,
         seal_content(keyring, e.conversation_id, e.seq, e.content), e.target_seq, e.system,
         e.seq, int(e.recalled), e.edited_at),
    )
    return e


class SqliteStore(SqliteDatabase):
    def __init__(self, path: Path, synchronous: str = "full", batch_max: int = 256) -> None:
        super().__init__(path, synchronous, batch_max, "sqlite")
        # Set by tongxin.atrest.records.open_keyring after open(): content is sealed on write
        # and opened on read; rows written before encryption was on read as they are.
        self.keyring: Keyring | None = None
        # Set by server.node.make_store: open() then loads the keyring (every command that
        # opens the store reads sealed content).
        self.atrest_config: Config | None = None

    async def open(self) -> None:
        await super().open()
        if self.atrest_config is not None and self.keyring is None:
            try:
                await open_keyring(self.atrest_config, self)
            except BaseException:
                await self.close()
                raise

    def apply_schema(self, conn: sqlite3.Connection) -> None:
        conn.executescript(SCHEMA)
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] < SCHEMA_VERSION:
            # Later versions only add tables, which SCHEMA above has created.
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {row[0]} is newer than this release ({SCHEMA_VERSION})"
            )

    async def ping(self) -> bool:
        try:
            return await self._reader.run(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except StoreError:
            return False

    # ---- accounts --------------------------------------------------------

    async def create_user(self, user: User) -> User:
        def job(conn: sqlite3.Connection) -> User:
            try:
                conn.execute(
                    f"INSERT INTO users ({_USER_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (user.id, user.username, user.display_name, user.password_hash, user.role,
                     user.created_at, 0, 0, 0, 0),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"username {user.username!r} is taken") from exc
            return user

        return await self._writer.run(job)

    async def _one_user(self, where: str, arg: str) -> User | None:
        def job(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(f"SELECT {_USER_COLS} FROM users WHERE {where} = ?", (arg,)).fetchone()
            return _user(row) if row else None

        return await self._reader.run(job)

    async def get_user(self, user_id: str) -> User | None:
        return await self._one_user("id", user_id)

    async def get_user_by_name(self, username: str) -> User | None:
        return await self._one_user("username", username)

    async def list_users(self) -> list[User]:
        return await self._reader.run(
            lambda c: [_user(r) for r in c.execute(f"SELECT {_USER_COLS} FROM users ORDER BY username")]
        )

    async def update_login_state(self, user_id: str, failed_logins: int, first_failure_at: int,
                                 locked_until: int) -> None:
        await self._writer.run(lambda c: c.execute(
            "UPDATE users SET failed_logins=?, first_failure_at=?, locked_until=? WHERE id=?",
            (failed_logins, first_failure_at, locked_until, user_id),
        ))

    async def set_password(self, user_id: str, password_hash: str) -> None:
        await self._writer.run(lambda c: c.execute(
            "UPDATE users SET password_hash=? WHERE id=?", (password_hash, user_id)))

    async def set_disabled(self, user_id: str, disabled: bool) -> None:
        await self._writer.run(lambda c: c.execute(
            "UPDATE users SET disabled=?, failed_logins=0, locked_until=0 WHERE id=?",
            (int(disabled), user_id)))

    async def set_role(self, user_id: str, role: str) -> None:
        await self._writer.run(lambda c: c.execute(
            "UPDATE users SET role=? WHERE id=?", (role, user_id)))

    async def add_token(self, token_id: str, user_id: str, device_id: str, issued_at: int,
                        expires_at: int) -> None:
        await self._writer.run(lambda c: c.execute(
            "INSERT INTO tokens (id, user_id, device_id, issued_at, expires_at) VALUES (?,?,?,?,?)",
            (token_id, user_id, device_id, issued_at, expires_at)))

    async def token_revoked(self, token_id: str) -> bool | None:
        def job(conn: sqlite3.Connection) -> bool | None:
            row = conn.execute("SELECT revoked_at FROM tokens WHERE id=?", (token_id,)).fetchone()
            return None if row is None else bool(row[0])

        return await self._reader.run(job)

    async def revoke_token(self, token_id: str, at: int) -> bool:
        return await self._writer.run(lambda c: c.execute(
            "UPDATE tokens SET revoked_at=? WHERE id=? AND revoked_at=0", (at, token_id)
        ).rowcount == 1)

    async def revoke_user_tokens(self, user_id: str, at: int) -> int:
        return await self._writer.run(lambda c: c.execute(
            "UPDATE tokens SET revoked_at=? WHERE user_id=? AND revoked_at=0", (at, user_id)
        ).rowcount)

    async def record_password(self, user_id: str, password_hash: str, at: int, keep: int) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE users SET password_hash=? WHERE id=?", (password_hash, user_id))
            conn.execute("INSERT OR REPLACE INTO password_history (user_id, changed_at, "
                         "password_hash) VALUES (?,?,?)", (user_id, at, password_hash))
            row = conn.execute("SELECT changed_at FROM password_history WHERE user_id=? "
                               "ORDER BY changed_at DESC LIMIT 1 OFFSET ?",
                               (user_id, max(keep, 1) - 1)).fetchone()
            if row is not None:
                conn.execute("DELETE FROM password_history WHERE user_id=? AND changed_at<?",
                             (user_id, row[0]))

        await self._writer.run(job)

    async def password_history(self, user_id: str, limit: int) -> list[tuple[int, str]]:
        return await self._reader.run(lambda c: [(int(r[0]), str(r[1])) for r in c.execute(
            "SELECT changed_at, password_hash FROM password_history WHERE user_id=? "
            "ORDER BY changed_at DESC LIMIT ?", (user_id, limit))])

    async def touch_token(self, token_id: str, at: int) -> None:
        await self._writer.run(lambda c: c.execute(
            "INSERT INTO token_activity (token_id, last_used_at) VALUES (?,?) "
            "ON CONFLICT(token_id) DO UPDATE SET "
            "last_used_at = MAX(last_used_at, excluded.last_used_at)", (token_id, at)))

    async def live_tokens(self, user_id: str, now: int, before: tuple[int, str] | None,
                          limit: int, token_id: str = "") -> list[TokenRow]:
        where = ["t.revoked_at = 0", "t.expires_at > ?"]
        args: list[Any] = [now]
        if user_id:
            where.append("t.user_id = ?")
            args.append(user_id)
        if token_id:
            where.append("t.id = ?")
            args.append(token_id)
        if before is not None:
            where.append("(t.issued_at < ? OR (t.issued_at = ? AND t.id < ?))")
            args += [before[0], before[0], before[1]]
        sql = ("SELECT t.id, t.user_id, t.device_id, t.issued_at, t.expires_at, "
               "COALESCE(a.last_used_at, 0) FROM tokens t LEFT JOIN token_activity a "
               f"ON a.token_id = t.id WHERE {' AND '.join(where)} "
               "ORDER BY t.issued_at DESC, t.id DESC LIMIT ?")
        return await self._reader.run(lambda c: [TokenRow(
            str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]))
            for r in c.execute(sql, (*args, limit))])

    async def token_last_used(self, token_id: str) -> int:
        def job(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT last_used_at FROM token_activity WHERE token_id=?",
                               (token_id,)).fetchone()
            return int(row[0]) if row else 0

        return await self._reader.run(job)

    # ---- conversations ---------------------------------------------------

    async def create_conversation(self, conv: ConversationRow, members: list[tuple[str, int]],
                                  created: Entry) -> tuple[ConversationRow, bool]:
        def job(conn: sqlite3.Connection) -> tuple[ConversationRow, bool]:
            row = conn.execute(f"SELECT {_CONV_COLS} FROM conversations WHERE id=?",
                               (conv.id,)).fetchone()
            if row is not None:
                return _conv(row), False
            conn.execute(
                f"INSERT INTO conversations ({_CONV_COLS}) VALUES (?,?,?,?,?,?,?)",
                (conv.id, conv.kind, conv.name, conv.created_at, conv.created_by, 0, len(members)),
            )
            conn.executemany(
                f"INSERT INTO members ({_MEMBER_COLS}) VALUES (?,?,?,1,0,0)",
                [(conv.id, uid, role) for uid, role in members],
            )
            _insert_entry(conn, created, self.keyring)
            conv.last_seq, conv.member_count = created.seq, len(members)
            return conv, True

        return await self._writer.run(job)

    async def get_conversation(self, conversation_id: str) -> ConversationRow | None:
        def job(conn: sqlite3.Connection) -> ConversationRow | None:
            row = conn.execute(f"SELECT {_CONV_COLS} FROM conversations WHERE id=?",
                               (conversation_id,)).fetchone()
            return _conv(row) if row else None

        return await self._reader.run(job)

    async def get_member(self, conversation_id: str, user_id: str) -> MemberRow | None:
        def job(conn: sqlite3.Connection) -> MemberRow | None:
            row = conn.execute(
                f"SELECT {_MEMBER_COLS} FROM members WHERE conversation_id=? AND user_id=?",
                (conversation_id, user_id)).fetchone()
            return _member(row) if row else None

        return await self._reader.run(job)

    async def member_ids(self, conversation_id: str) -> list[str]:
        return await self._reader.run(lambda c: [r[0] for r in c.execute(
            "SELECT user_id FROM members WHERE conversation_id=?", (conversation_id,))])

    async def list_members(self, conversation_id: str, limit: int) -> list[MemberRow]:
        return await self._reader.run(lambda c: [_member(r) for r in c.execute(
            f"SELECT {_MEMBER_COLS} FROM members WHERE conversation_id=? "
            "ORDER BY role DESC, user_id LIMIT ?", (conversation_id, limit))])

    async def conversations_of(self, user_id: str) -> list[ConversationView]:
        def job(conn: sqlite3.Connection) -> list[ConversationView]:
            mcols = ", ".join(f"m.{c.strip()}" for c in _MEMBER_COLS.split(","))
            ccols = ", ".join(f"c.{c.strip()}" for c in _CONV_COLS.split(","))
            views = [
                ConversationView(_conv(r[:7]), _member(r[7:]))
                for r in conn.execute(
                    f"SELECT {ccols}, {mcols} FROM members m JOIN conversations c "
                    "ON c.id = m.conversation_id WHERE m.user_id=? ORDER BY c.created_at",
                    (user_id,))
            ]
            direct = {v.conversation.id: v for v in views if v.conversation.kind == 1}
            if direct:
                marks = ",".join("?" * len(direct))
                for cid, uid in conn.execute(
                    f"SELECT conversation_id, user_id FROM members WHERE conversation_id IN ({marks})"
                    " AND user_id != ?", (*direct, user_id)):
                    direct[cid].peer_id = uid
            return views

        return await self._reader.run(job)

    async def change_members(self, conversation_id: str, ops: MemberOps, entry: Entry,
                             max_members: int) -> Entry:
        def job(conn: sqlite3.Connection) -> Entry:
            row = conn.execute("SELECT member_count FROM conversations WHERE id=?",
                               (conversation_id,)).fetchone()
            if row is None:
                raise NoSuchConversation(conversation_id)
            existing = {r[0] for r in conn.execute(
                "SELECT user_id FROM members WHERE conversation_id=?", (conversation_id,))}
            adds = [(u, r) for u, r in ops.add if u not in existing]
            removes = [u for u in ops.remove if u in existing]
            count = len(existing) + len(adds) - len(removes)
            if count > max_members:
                raise GroupFull(f"group would have {count} members, the limit is {max_members}")
            _insert_entry(conn, entry, self.keyring)
            conn.executemany(
                f"INSERT INTO members ({_MEMBER_COLS}) VALUES (?,?,?,?,0,0)",
                [(conversation_id, u, r, entry.seq) for u, r in adds])
            conn.executemany("DELETE FROM members WHERE conversation_id=? AND user_id=?",
                             [(conversation_id, u) for u in removes])
            conn.executemany("UPDATE members SET role=? WHERE conversation_id=? AND user_id=?",
                             [(r, conversation_id, u) for u, r in ops.set_role])
            if ops.rename is not None:
                conn.execute("UPDATE conversations SET name=? WHERE id=?",
                             (ops.rename, conversation_id))
            conn.execute("UPDATE conversations SET member_count=? WHERE id=?",
                         (count, conversation_id))
            return entry

        return await self._writer.run(job)

    # ---- the log ---------------------------------------------------------

    async def append(self, entry: Entry, mark_recalled: bool = False,
                     mark_edited: bytes | None = None) -> tuple[Entry, bool]:
        def job(conn: sqlite3.Connection) -> tuple[Entry, bool]:
            row = conn.execute(
                f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=? AND sender_id=? "
                "AND client_msg_id=?",
                (entry.conversation_id, entry.sender_id, entry.client_msg_id)).fetchone()
            if row is not None:
                return _entry(row), True
            _insert_entry(conn, entry, self.keyring)
            if mark_recalled:
                conn.execute("UPDATE messages SET recalled=1 WHERE conversation_id=? AND seq=?",
                             (entry.conversation_id, entry.target_seq))
            if mark_edited is not None:
                conn.execute(
                    "UPDATE messages SET content=?, edited_at=? WHERE conversation_id=? AND seq=?",
                    (seal_content(self.keyring, entry.conversation_id, entry.target_seq,
                                  mark_edited),
                     entry.sent_at, entry.conversation_id, entry.target_seq))
            return entry, False

        found, dup = await self._writer.run(job)
        if dup:
            await open_entry(self.keyring, found)
        return found, dup

    async def get_entry(self, conversation_id: str, seq: int) -> Entry | None:
        def job(conn: sqlite3.Connection) -> Entry | None:
            row = conn.execute(
                f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=? AND seq=?",
                (conversation_id, seq)).fetchone()
            return _entry(row) if row else None

        return await open_entry(self.keyring, await self._reader.run(job))

    async def find_by_client_id(self, conversation_id: str, sender_id: str,
                                client_msg_id: str) -> Entry | None:
        def job(conn: sqlite3.Connection) -> Entry | None:
            row = conn.execute(
                f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=? AND sender_id=? "
                "AND client_msg_id=?", (conversation_id, sender_id, client_msg_id)).fetchone()
            return _entry(row) if row else None

        return await open_entry(self.keyring, await self._reader.run(job))

    async def conversation_ids(self, after: str, limit: int) -> list[str]:
        return await self._reader.run(lambda c: [r[0] for r in c.execute(
            "SELECT id FROM conversations WHERE id > ? ORDER BY id LIMIT ?", (after, limit))])

    async def list_groups(self, name_contains: str, after: str, limit: int) -> list[ConversationRow]:
        # instr() is case-sensitive like MySQL's LOCATE under utf8mb4_bin (LIKE is not here)
        return await self._reader.run(lambda c: [_conv(r) for r in c.execute(
            f"SELECT {_CONV_COLS} FROM conversations WHERE kind = 2 AND id > ? "
            "AND (? = '' OR instr(name, ?) > 0) ORDER BY id LIMIT ?",
            (after, name_contains, name_contains, limit))])

    # ---- organisation units --------------------------------------------------

    @staticmethod
    def _org_tree(conn: sqlite3.Connection) -> org.Tree:
        return org.Tree(OrgUnit(*r) for r in conn.execute(
            "SELECT id, parent_id, name, created_at FROM org_units"))

    async def org_units(self) -> list[OrgUnit]:
        return await self._reader.run(lambda c: [OrgUnit(*r) for r in c.execute(
            "SELECT u.id, u.parent_id, u.name, u.created_at, "
            "(SELECT COUNT(*) FROM org_members m WHERE m.unit_id = u.id) "
            "FROM org_units u ORDER BY u.parent_id, u.name")])

    async def org_create(self, unit_id: str, parent_id: str, name: str, at: int) -> OrgUnit:
        def job(conn: sqlite3.Connection) -> OrgUnit:
            unit = OrgUnit(unit_id, parent_id, org.check_create(self._org_tree(conn), parent_id, name),
                           at)
            conn.execute("INSERT INTO org_units (id, parent_id, name, created_at) VALUES (?,?,?,?)",
                         (unit.id, unit.parent_id, unit.name, unit.created_at))
            return unit

        return await self._writer.run(job)

    async def org_update(self, unit_id: str, name: str | None = None,
                         parent_id: str | None = None) -> tuple[OrgUnit, OrgUnit]:
        def job(conn: sqlite3.Connection) -> tuple[OrgUnit, OrgUnit]:
            tree = self._org_tree(conn)
            before, after = org.check_update(tree, unit_id, name, parent_id)
            conn.execute("UPDATE org_units SET name = ?, parent_id = ? WHERE id = ?",
                         (after.name, after.parent_id, unit_id))
            return before, after

        return await self._writer.run(job)

    async def org_delete(self, unit_id: str) -> OrgUnit:
        def job(conn: sqlite3.Connection) -> OrgUnit:
            members = conn.execute("SELECT COUNT(*) FROM org_members WHERE unit_id = ?",
                                   (unit_id,)).fetchone()[0]
            unit = org.check_delete(self._org_tree(conn), unit_id, int(members))
            conn.execute("DELETE FROM org_units WHERE id = ?", (unit_id,))
            return unit

        return await self._writer.run(job)

    async def org_assign(self, user_id: str, unit_id: str, at: int) -> str:
        def job(conn: sqlite3.Connection) -> str:
            if unit_id and conn.execute("SELECT 1 FROM org_units WHERE id = ?",
                                        (unit_id,)).fetchone() is None:
                raise org.UnitNotFound(f"no organisation unit {unit_id!r}")
            row = conn.execute("SELECT unit_id FROM org_members WHERE user_id = ?",
                               (user_id,)).fetchone()
            if unit_id:
                conn.execute("INSERT INTO org_members (user_id, unit_id, assigned_at) VALUES (?,?,?) "
                             "ON CONFLICT(user_id) DO UPDATE SET unit_id = excluded.unit_id, "
                             "assigned_at = excluded.assigned_at", (user_id, unit_id, at))
            else:
                conn.execute("DELETE FROM org_members WHERE user_id = ?", (user_id,))
            return str(row[0]) if row else ""

        return await self._writer.run(job)

    async def org_assignments(self) -> dict[str, str]:
        return await self._reader.run(lambda c: {str(r[0]): str(r[1]) for r in c.execute(
            "SELECT user_id, unit_id FROM org_members")})

    async def memberships(self, user_id: str) -> list[tuple[str, int]]:
        return await self._reader.run(lambda c: [(r[0], int(r[1])) for r in c.execute(
            "SELECT conversation_id, joined_seq FROM members WHERE user_id = ? "
            "ORDER BY conversation_id", (user_id,))])

    async def entries_between(self, conversation_id: str, from_ms: int, to_ms: int, after_seq: int,
                              limit: int, min_seq: int = 0) -> list[Entry]:
        return await open_entries(self.keyring, await self._reader.run(lambda c: [
            _entry(r) for r in c.execute(
                f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id = ? AND seq > ? "
                "AND sent_at >= ? AND sent_at < ? ORDER BY seq LIMIT ?",
                (conversation_id, max(after_seq, min_seq - 1), from_ms, to_ms, limit))]))

    async def sent_by(self, user_id: str, from_ms: int, to_ms: int) -> list[Entry]:
        return await open_entries(self.keyring, await self._reader.run(lambda c: [
            _entry(r) for r in c.execute(
                f"SELECT {_ENTRY_COLS} FROM messages WHERE sender_id = ? AND sent_at >= ? "
                "AND sent_at < ? ORDER BY conversation_id, seq", (user_id, from_ms, to_ms))]))

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

    async def entries_after(self, conversation_id: str, after_seq: int, limit: int,
                            min_seq: int = 0) -> list[Entry]:
        return await open_entries(self.keyring, await self._reader.run(lambda c: [
            _entry(r) for r in c.execute(
                f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=? AND seq>? "
                "ORDER BY seq LIMIT ?", (conversation_id, max(after_seq, min_seq - 1), limit))]))

    async def entries_before(self, conversation_id: str, before_seq: int, limit: int,
                             min_seq: int = 0) -> list[Entry]:
        rows = await self._reader.run(lambda c: [_entry(r) for r in c.execute(
            f"SELECT {_ENTRY_COLS} FROM messages WHERE conversation_id=? AND seq<? AND seq>=? "
            "ORDER BY seq DESC LIMIT ?", (conversation_id, before_seq, min_seq, limit))])
        rows.reverse()
        return await open_entries(self.keyring, rows)

    async def set_cursor(self, conversation_id: str, user_id: str, kind: str, seq: int) -> int:
        # One cursor is a batch of one: a single write path to keep right.
        [stored] = await self.set_cursors([CursorMark(conversation_id, user_id, kind, seq)])
        return stored

    async def set_cursors(self, marks: list[CursorMark]) -> list[int]:
        def job(conn: sqlite3.Connection) -> list[int]:
            # Its own savepoint: all or nothing also when the writer runs
            # each job in autocommit (batch_max 1).
            conn.execute("SAVEPOINT cursors")
            try:
                out = []
                for m in marks:
                    column = _CURSOR_COLUMNS[m.kind]
                    row = conn.execute(
                        f"UPDATE members SET {column} = MAX({column}, ?) "
                        f"WHERE conversation_id=? AND user_id=? RETURNING {column}",
                        (m.seq, m.conversation_id, m.user_id)).fetchone()
                    out.append(int(row[0]) if row else 0)
            except BaseException:
                conn.execute("ROLLBACK TO cursors")
                conn.execute("RELEASE cursors")
                raise
            conn.execute("RELEASE cursors")
            return out

        return await self._writer.run(job)

    # ---- data keys (tongxin.atrest.keyring.DekStore) ----------------------

    async def data_keys(self, after_id: int, limit: int) -> list[DataKeyRow]:
        return await self._reader.run(lambda c: [DataKeyRow(*r) for r in c.execute(
            "SELECT id, suite, kek_id, wrapped, created_at FROM data_keys WHERE id > ? "
            "ORDER BY id LIMIT ?", (after_id, limit))])

    async def data_key(self, key_id: int) -> DataKeyRow | None:
        def job(conn: sqlite3.Connection) -> DataKeyRow | None:
            row = conn.execute("SELECT id, suite, kek_id, wrapped, created_at FROM data_keys "
                               "WHERE id = ?", (key_id,)).fetchone()
            return DataKeyRow(*row) if row else None

        return await self._reader.run(job)

    async def add_data_key(self, row: DataKeyRow) -> bool:
        return await self._writer.run(lambda c: c.execute(
            "INSERT OR IGNORE INTO data_keys (id, suite, kek_id, wrapped, created_at) "
            "VALUES (?,?,?,?,?)", (row.id, row.suite, row.kek_id, row.wrapped, row.created_at)
        ).rowcount == 1)

    async def rewrap_data_key(self, key_id: int, old_kek_id: str, new_kek_id: str,
                              wrapped: bytes) -> bool:
        return await self._writer.run(lambda c: c.execute(
            "UPDATE data_keys SET kek_id = ?, wrapped = ? WHERE id = ? AND kek_id = ?",
            (new_kek_id, wrapped, key_id, old_kek_id)).rowcount == 1)

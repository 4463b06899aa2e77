"""The storage port: what chat logic needs from history and accounts.

The SQLite adapter is the embedded default; a MySQL-protocol (TiDB) adapter
implements the same Protocol. Chat logic imports only this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class StoreError(Exception):
    """Base of storage failures."""


class Unavailable(StoreError):
    """The backend could not complete the operation; nothing was committed."""


class Conflict(StoreError):
    """A uniqueness rule refused the write (a username already taken)."""


class GroupFull(Conflict):
    """Adding these members would exceed the group size limit."""


class NoSuchConversation(StoreError):
    """The conversation does not exist."""


class TooLarge(StoreError):
    """The database refused a row as too large (TiDB's ``txn-entry-size-limit``);
    nothing was committed, and the same write will be refused again."""


@dataclass(slots=True)
class User:
    id: str
    username: str
    display_name: str
    password_hash: str
    role: str
    created_at: int
    failed_logins: int = 0
    first_failure_at: int = 0
    locked_until: int = 0
    disabled: bool = False


@dataclass(slots=True)
class Entry:
    """One entry of a conversation log (a message, recall, edit or system event)."""

    conversation_id: str
    sender_id: str
    sender_device: str
    client_msg_id: str
    sent_at: int
    kind: int
    content: bytes = b""  # serialized tongxin.v1.Content
    target_seq: int = 0
    system: bytes = b""  # serialized tongxin.v1.SystemEvent
    seq: int = 0
    recalled: bool = False
    edited_at: int = 0
    # Set when the stored content failed its at-rest check (tongxin.atrest.records): the
    # content is withheld, and clients see Message.unavailable.
    unavailable: bool = False


@dataclass(slots=True)
class ConversationRow:
    id: str
    kind: int
    name: str
    created_at: int
    created_by: str
    last_seq: int
    member_count: int


@dataclass(slots=True)
class MemberRow:
    conversation_id: str
    user_id: str
    role: int
    joined_seq: int
    read_seq: int = 0
    delivered_seq: int = 0


@dataclass(slots=True)
class ConversationView:
    """A conversation as one member sees it."""

    conversation: ConversationRow
    me: MemberRow
    peer_id: str = ""
    members: list[MemberRow] = field(default_factory=list)


@dataclass(slots=True)
class OrgUnit:
    """One organisation unit (组织机构/部门); ``parent_id`` is "" at the top level.
    ``member_count`` is filled in when the tree is listed."""

    id: str
    parent_id: str
    name: str
    created_at: int
    member_count: int = 0


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What an active node says of itself with each replication heartbeat, for the
    console's node list (GET /api/v1/admin/nodes). None: not known (a row written by
    a node of a release before schema version 8)."""

    version: str | None = None
    address: str | None = None  # HOST:PORT of server.listen, a wildcard host as the hostname
    connections: int | None = None  # open WebSocket connections
    started_ms: int | None = None  # when the node's process started (Unix ms)


@dataclass(frozen=True, slots=True)
class NodeBeat:
    """One node's heartbeat row: its last beat and what it said then."""

    node_id: str
    site: str
    beat_ms: int
    status: NodeStatus = NodeStatus()


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A login token that is still valid (not revoked, not expired): one session of a
    device. ``last_used_at`` is when its use was last recorded (0: never; recorded only
    with accounts.session_idle_timeout, at most once a minute)."""

    token_id: str
    user_id: str
    device_id: str
    issued_at: int
    expires_at: int
    last_used_at: int = 0


@dataclass(frozen=True, slots=True)
class CursorMark:
    """Raise ``user_id``'s ``kind`` ('read' or 'delivered') cursor in a conversation to ``seq``."""

    conversation_id: str
    user_id: str
    kind: str
    seq: int


@dataclass(slots=True)
class MemberOps:
    """Membership changes applied atomically with the entry that records them."""

    add: list[tuple[str, int]] = field(default_factory=list)  # (user_id, role)
    remove: list[str] = field(default_factory=list)
    set_role: list[tuple[str, int]] = field(default_factory=list)
    rename: str | None = None


class ChatStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...

    # accounts
    async def create_user(self, user: User) -> User: ...
    async def get_user(self, user_id: str) -> User | None: ...
    async def get_user_by_name(self, username: str) -> User | None: ...
    async def list_users(self) -> list[User]: ...
    async def update_login_state(
        self, user_id: str, failed_logins: int, first_failure_at: int, locked_until: int
    ) -> None: ...
    async def set_password(self, user_id: str, password_hash: str) -> None: ...
    async def set_disabled(self, user_id: str, disabled: bool) -> None: ...
    async def set_role(self, user_id: str, role: str) -> None: ...
    async def add_token(self, token_id: str, user_id: str, device_id: str, issued_at: int,
                        expires_at: int) -> None: ...
    async def token_revoked(self, token_id: str) -> bool | None:
        """True if revoked, False if valid, None if unknown."""
        ...
    async def revoke_token(self, token_id: str, at: int) -> bool: ...
    async def revoke_user_tokens(self, user_id: str, at: int) -> int: ...
    async def record_password(self, user_id: str, password_hash: str, at: int, keep: int) -> None:
        """Set the password and add it to the user's history in one transaction.

        Only the newest ``max(keep, 1)`` history entries are kept.
        """
        ...
    async def password_history(self, user_id: str, limit: int) -> list[tuple[int, str]]:
        """(changed_at, password_hash) of the user's latest passwords, newest first."""
        ...
    async def live_tokens(self, user_id: str, now: int, before: tuple[int, str] | None,
                          limit: int, token_id: str = "") -> list[TokenRow]:
        """Tokens neither revoked nor expired at ``now``, of one user (``user_id``) or of
        everyone (""), newest first by (issued_at, token_id), strictly after the key
        ``before`` when given; at most ``limit``. ``token_id``: that token only."""
        ...
    async def touch_token(self, token_id: str, at: int) -> None:
        """Record that the token was used at ``at`` (the time never moves back)."""
        ...
    async def token_last_used(self, token_id: str) -> int:
        """When the token was last recorded as used (ms); 0 if never."""
        ...

    # conversations
    async def create_conversation(
        self, conv: ConversationRow, members: list[tuple[str, int]], created: Entry
    ) -> tuple[ConversationRow, bool]:
        """Create it with its first entry; if the id exists, return it and False."""
        ...
    async def get_conversation(self, conversation_id: str) -> ConversationRow | None: ...
    async def get_member(self, conversation_id: str, user_id: str) -> MemberRow | None: ...
    async def member_ids(self, conversation_id: str) -> list[str]: ...
    async def list_members(self, conversation_id: str, limit: int) -> list[MemberRow]: ...
    async def conversations_of(self, user_id: str) -> list[ConversationView]: ...
    async def change_members(self, conversation_id: str, ops: MemberOps, entry: Entry,
                             max_members: int) -> Entry:
        """Apply ops and append entry in one transaction; raises GroupFull via Conflict."""
        ...

    async def list_groups(self, name_contains: str, after: str, limit: int) -> list[ConversationRow]:
        """Group conversations with id greater than ``after``, by id, at most ``limit``;
        with ``name_contains``, only those whose name contains it (case-sensitive)."""
        ...

    # organisation units (tongxin.org.units holds the rules; a refusal raises its
    # OrgRefused and changes nothing)
    async def org_units(self) -> list[OrgUnit]:
        """Every unit with its member count, by parent then name."""
        ...
    async def org_create(self, unit_id: str, parent_id: str, name: str, at: int) -> OrgUnit: ...
    async def org_update(self, unit_id: str, name: str | None = None,
                         parent_id: str | None = None) -> tuple[OrgUnit, OrgUnit]:
        """Rename and/or move a unit: (before, after)."""
        ...
    async def org_delete(self, unit_id: str) -> OrgUnit:
        """Delete a unit without sub-units or members; return it."""
        ...
    async def org_assign(self, user_id: str, unit_id: str, at: int) -> str:
        """Put the user in the unit ("" takes them out of any); return the previous unit id."""
        ...
    async def org_assignments(self) -> dict[str, str]:
        """user id -> unit id of every user in a unit."""
        ...

    # the log
    async def append(self, entry: Entry, mark_recalled: bool = False,
                     mark_edited: bytes | None = None) -> tuple[Entry, bool]:
        """Assign the next seq and store durably. Returns (entry, duplicate).

        A (conversation, sender, client_msg_id) seen before returns the stored
        entry and True without writing. mark_recalled / mark_edited also update
        the target entry in the same transaction.
        """
        ...
    async def get_entry(self, conversation_id: str, seq: int) -> Entry | None: ...
    async def find_by_client_id(self, conversation_id: str, sender_id: str,
                                client_msg_id: str) -> Entry | None: ...
    async def entries_after(self, conversation_id: str, after_seq: int, limit: int,
                            min_seq: int = 0) -> list[Entry]: ...
    async def entries_before(self, conversation_id: str, before_seq: int, limit: int,
                             min_seq: int = 0) -> list[Entry]: ...
    async def set_cursor(self, conversation_id: str, user_id: str, kind: str, seq: int) -> int:
        """Raise the member's 'read' or 'delivered' cursor to seq; return the new value."""
        ...
    async def set_cursors(self, marks: list[CursorMark]) -> list[int]:
        """Raise many cursors in one transaction; the stored values, in order.

        All or nothing: a failure stores none of them. 0 for a user who is not
        a member. Each (conversation, user, kind) appears at most once.
        """
        ...

    # compliance: retention and export (tongxin.compliance.retention, .export)
    async def conversation_ids(self, after: str, limit: int) -> list[str]:
        """Conversation ids greater than ``after``, in order (to walk every conversation)."""
        ...
    async def memberships(self, user_id: str) -> list[tuple[str, int]]:
        """(conversation id, joined seq) of every conversation the user is in, by id."""
        ...
    async def entries_between(self, conversation_id: str, from_ms: int, to_ms: int, after_seq: int,
                              limit: int, min_seq: int = 0) -> list[Entry]:
        """Entries with ``from_ms <= sent_at < to_ms``, seq above ``after_seq`` and at
        least ``min_seq``, in seq order, at most ``limit``."""
        ...
    async def sent_by(self, user_id: str, from_ms: int, to_ms: int) -> list[Entry]:
        """Everything the user sent with ``from_ms <= sent_at < to_ms``, by conversation, seq."""
        ...
    async def delete_before(self, conversation_id: str, cutoff_ms: int, spare_senders: list[str],
                            limit: int) -> int:
        """Delete up to ``limit`` of the oldest entries sent before ``cutoff_ms``, except
        those sent by ``spare_senders``, in one transaction; return how many."""
        ...

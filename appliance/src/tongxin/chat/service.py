"""Chat semantics on top of the ports. No knowledge of sockets or storage engines.

Every change to a conversation is an entry in its log with the next sequence
number: messages, recalls, edits and membership changes alike. A device that
was offline therefore catches up on all of them with one SYNC by seq range.
The ACK for an entry is returned only after ``store.append`` has committed it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tongxin.chat.cursors import CursorBatcher, KnownLastSeq
from tongxin.chat.members import MemberCache
from tongxin.clock import now_ms
from tongxin.config import ChatConfig
from tongxin.delivery.ports import Delivery, DeliveryBus
from tongxin.errors import RequestError
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import (
    ChatStore,
    ConversationRow,
    ConversationView,
    Entry,
    GroupFull,
    MemberOps,
    MemberRow,
    NoSuchConversation,
    TooLarge,
    Unavailable,
)

CLIENT_ID_MAX = 64
NAME_MAX = 64

# (file_id, conversation_id) -> the stored FileInfo if that completed file
# belongs to that conversation, else None (files.service.FileService.message_file).
FileLookup = Callable[[str, str], Awaitable["pb.FileInfo | None"]]


def _not_stored(exc: Unavailable) -> RequestError:
    """A SEND the database could not take: the client may retry with the same id."""
    return RequestError(pb.UNAVAILABLE, f"message not stored: {exc}", retry_after_ms=1000)


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: str
    device_id: str


def direct_id(a: str, b: str) -> str:
    x, y = sorted((a, b))
    return f"d:{x}:{y}"


def entry_to_pb(e: Entry) -> pb.Message:
    m = pb.Message(
        conversation_id=e.conversation_id, seq=e.seq, sender_id=e.sender_id,
        sender_device=e.sender_device, client_msg_id=e.client_msg_id, sent_at_ms=e.sent_at,
        kind=e.kind, target_seq=e.target_seq, recalled=e.recalled, edited_at_ms=e.edited_at,
        unavailable=e.unavailable,
    )
    # A recalled message's content stays in the store (retention and audit
    # rules decide its fate) but is never handed to clients again.
    if e.content and not e.recalled:
        m.content.ParseFromString(e.content)
    if e.system:
        m.system.ParseFromString(e.system)
    return m


def _content_kind(content: pb.Content) -> str | None:
    kind: str | None = content.WhichOneof("body")
    return kind


class ChatService:
    def __init__(self, store: ChatStore, bus: DeliveryBus, members: MemberCache,
                 cfg: ChatConfig, max_message_size: int, files: FileLookup | None = None) -> None:
        self.store = store
        self.files = files
        self.bus = bus
        self.members = members
        self.cfg = cfg
        self.max_message_size = max_message_size
        self.cursors = CursorBatcher(store)
        self.known_last_seq = KnownLastSeq(self._read_last_seq)
        # (event, fields) for the audit trail (tongxin.auth.accounts.AuditHook), set by the node.
        self.audit: Callable[[str, dict[str, object]], Awaitable[None]] | None = None

    # ---- helpers ---------------------------------------------------------

    async def _member(self, conversation_id: str, user_id: str) -> MemberRow:
        member = await self.store.get_member(conversation_id, user_id)
        if member is None:
            # Same answer whether the conversation exists or not: ids of
            # conversations one is not in are not revealed.
            raise RequestError(pb.NOT_FOUND, f"no conversation {conversation_id!r} for you")
        return member

    async def _resolve_users(self, refs: list[str]) -> list[str]:
        out: list[str] = []
        for ref in refs:
            user = (await self.store.get_user(ref) if ref.startswith("u_")
                    else await self.store.get_user_by_name(ref.strip().lower()))
            if user is None:
                raise RequestError(pb.NOT_FOUND, f"no user {ref!r}")
            if user.id not in out:
                out.append(user.id)
        return out

    def _check_content(self, content: pb.Content) -> None:
        kind = _content_kind(content)
        if kind is None:
            raise RequestError(pb.INVALID_ARGUMENT, "message has no content")
        if kind == "text":
            if not content.text.strip():
                raise RequestError(pb.INVALID_ARGUMENT, "text is empty")
            if len(content.text) > self.cfg.max_text_length:
                raise RequestError(pb.INVALID_ARGUMENT,
                                   f"text longer than {self.cfg.max_text_length} characters")
        elif kind == "file" and not content.file.file_id:
            raise RequestError(pb.INVALID_ARGUMENT, "file message without file_id")
        # Encrypted envelopes are not bounded by max_text_length: the content as
        # stored is, by what the database holds in one row (TiDB: 6 MiB).
        size = content.ByteSize()
        if size > self.cfg.max_content_size:
            raise RequestError(pb.PAYLOAD_TOO_LARGE,
                               f"message content of {size} bytes exceeds "
                               f"chat.max_content_size ({self.cfg.max_content_size}); "
                               "send large data as a file")

    @staticmethod
    def _check_client_id(client_msg_id: str) -> None:
        if not 1 <= len(client_msg_id) <= CLIENT_ID_MAX:
            raise RequestError(pb.INVALID_ARGUMENT,
                               f"client_msg_id must be 1-{CLIENT_ID_MAX} characters")

    async def _append(self, entry: Entry, mark_recalled: bool = False,
                      mark_edited: bytes | None = None) -> tuple[Entry, bool]:
        try:
            return await self.store.append(entry, mark_recalled, mark_edited)
        except Unavailable as exc:
            raise _not_stored(exc) from exc
        except NoSuchConversation as exc:
            raise RequestError(pb.NOT_FOUND, f"no conversation {entry.conversation_id!r}") from exc
        except TooLarge as exc:
            # chat.max_content_size is set above what the database stores in a row.
            raise RequestError(pb.PAYLOAD_TOO_LARGE, f"message not stored: {exc}; lower "
                               "chat.max_content_size or raise the database's limit") from exc

    async def _publish_entry(self, entry: Entry, actor: Actor,
                             user_ids: tuple[str, ...] = (), members_changed: bool = False) -> None:
        await self._publish(Delivery(
            frame_type=pb.DELIVER, payload=entry_to_pb(entry).SerializeToString(),
            conversation_id=entry.conversation_id, user_ids=user_ids,
            skip_user=actor.user_id, skip_device=actor.device_id,
            members_changed=members_changed,
        ))

    async def _publish(self, delivery: Delivery) -> None:
        try:
            await self.bus.publish(delivery)
        except Unavailable as exc:
            # Stored but not handed to the delivery stream: no ACK. The
            # client re-sends the same client_msg_id, which finds the stored
            # entry and publishes it again.
            raise RequestError(pb.UNAVAILABLE, f"not delivered: {exc}; re-send to retry",
                               retry_after_ms=1000) from exc

    async def _publish_new(self, stored: Entry, duplicate: bool, actor: Actor) -> None:
        if not duplicate or self.bus.republish_duplicates:
            await self._publish_entry(stored, actor)

    def _ack(self, entry: Entry, duplicate: bool) -> pb.Ack:
        return pb.Ack(conversation_id=entry.conversation_id, client_msg_id=entry.client_msg_id,
                      seq=entry.seq, sent_at_ms=entry.sent_at, duplicate=duplicate)

    def _system_entry(self, conversation_id: str, actor: Actor, event: pb.SystemEvent) -> Entry:
        return Entry(conversation_id=conversation_id, sender_id=actor.user_id,
                     sender_device=actor.device_id, client_msg_id="sys-" + uuid.uuid4().hex,
                     sent_at=now_ms(), kind=pb.SYSTEM, system=event.SerializeToString())

    # ---- conversations ---------------------------------------------------

    async def view(self, conv: ConversationRow, user_id: str,
                   member: MemberRow | None = None) -> pb.Conversation:
        me = member or await self._member(conv.id, user_id)
        out = pb.Conversation(
            conversation_id=conv.id, kind=conv.kind, name=conv.name, last_seq=conv.last_seq,
            member_count=conv.member_count, my_role=me.role, my_read_seq=me.read_seq,
            created_at_ms=conv.created_at,
        )
        rows = await self.store.list_members(conv.id, 500)
        for m in rows:
            out.members.add(user_id=m.user_id, role=m.role, read_seq=m.read_seq,
                            delivered_seq=m.delivered_seq)
            if conv.kind == pb.DIRECT and m.user_id != user_id:
                out.peer_id = m.user_id
        return out

    async def create(self, actor: Actor, req: pb.CreateConversation) -> pb.Conversation:
        if req.kind == pb.DIRECT:
            others = await self._resolve_users(list(req.member_ids))
            if len(others) != 1 or others[0] == actor.user_id:
                raise RequestError(pb.INVALID_ARGUMENT,
                                   "a direct conversation names exactly one other user")
            cid = direct_id(actor.user_id, others[0])
            members = [(actor.user_id, pb.MEMBER), (others[0], pb.MEMBER)]
            name = ""
        elif req.kind == pb.GROUP:
            name = req.name.strip()
            if not name or len(name) > NAME_MAX:
                raise RequestError(pb.INVALID_ARGUMENT, f"group name must be 1-{NAME_MAX} chars")
            if len(req.member_ids) > self.cfg.max_members_per_change:
                raise RequestError(pb.INVALID_ARGUMENT,
                                   f"at most {self.cfg.max_members_per_change} members per request")
            others = [u for u in await self._resolve_users(list(req.member_ids))
                      if u != actor.user_id]
            if len(others) + 1 > self.cfg.max_group_members:
                raise RequestError(pb.GROUP_FULL, "too many members")
            cid = "g:" + uuid.uuid4().hex[:20]
            members = [(actor.user_id, pb.OWNER)] + [(u, pb.MEMBER) for u in others]
        else:
            raise RequestError(pb.INVALID_ARGUMENT, "kind must be DIRECT or GROUP")
        event = pb.SystemEvent(kind=pb.SystemEvent.CREATED, actor_id=actor.user_id,
                               user_ids=[u for u, _ in members], name=name)
        entry = self._system_entry(cid, actor, event)
        row = ConversationRow(cid, req.kind, name, entry.sent_at, actor.user_id, 0, 0)
        try:
            conv, created = await self.store.create_conversation(row, members, entry)
        except Unavailable as exc:
            raise RequestError(pb.UNAVAILABLE, str(exc), retry_after_ms=1000) from exc
        if created:
            await self._publish_entry(entry, actor, members_changed=True)
        return await self.view(conv, actor.user_id)

    async def get(self, actor: Actor, conversation_id: str) -> pb.Conversation:
        me = await self._member(conversation_id, actor.user_id)
        conv = await self.store.get_conversation(conversation_id)
        if conv is None:
            raise RequestError(pb.NOT_FOUND, f"no conversation {conversation_id!r} for you")
        return await self.view(conv, actor.user_id, me)

    async def list(self, actor: Actor) -> pb.ConversationList:
        views: list[ConversationView] = await self.store.conversations_of(actor.user_id)
        out = pb.ConversationList()
        for v in views:
            c = v.conversation
            out.conversations.add(
                conversation_id=c.id, kind=c.kind, name=c.name, last_seq=c.last_seq,
                member_count=c.member_count, my_role=v.me.role, my_read_seq=v.me.read_seq,
                peer_id=v.peer_id, created_at_ms=c.created_at)
        return out

    async def change_members(self, actor: Actor, req: pb.MemberChange) -> pb.Conversation:
        conv = await self.store.get_conversation(req.conversation_id)
        me = await self._member(req.conversation_id, actor.user_id)
        assert conv is not None
        if conv.kind != pb.GROUP:
            raise RequestError(pb.FORBIDDEN, "members of a direct conversation cannot change")
        if len(req.user_ids) > self.cfg.max_members_per_change:
            raise RequestError(pb.INVALID_ARGUMENT,
                               f"at most {self.cfg.max_members_per_change} users per request")
        ops = MemberOps()
        event = pb.SystemEvent(actor_id=actor.user_id)
        is_admin = me.role in (pb.ADMIN, pb.OWNER)
        before = await self.members.get(conv.id)
        if req.op == pb.MemberChange.ADD:
            if not is_admin:
                raise RequestError(pb.FORBIDDEN, "only the owner or an admin can add members")
            users = [u for u in await self._resolve_users(list(req.user_ids)) if u not in before]
            if not users:
                raise RequestError(pb.INVALID_ARGUMENT, "no new members to add")
            ops.add = [(u, pb.MEMBER) for u in users]
            event.kind, event.user_ids[:] = pb.SystemEvent.MEMBERS_ADDED, users
        elif req.op == pb.MemberChange.REMOVE:
            users = [u for u in await self._resolve_users(list(req.user_ids)) if u in before]
            if not users:
                raise RequestError(pb.NOT_FOUND, "none of those users is a member")
            for u in users:
                target = await self.store.get_member(conv.id, u)
                if u == actor.user_id:
                    raise RequestError(pb.INVALID_ARGUMENT, "use LEAVE to leave a group")
                if target is None or target.role >= me.role or not is_admin:
                    raise RequestError(pb.FORBIDDEN,
                                       "you may remove only members of a lower role")
            ops.remove = users
            event.kind, event.user_ids[:] = pb.SystemEvent.MEMBERS_REMOVED, users
        elif req.op == pb.MemberChange.LEAVE:
            ops.remove = [actor.user_id]
            event.kind, event.user_ids[:] = pb.SystemEvent.MEMBER_LEFT, [actor.user_id]
            if me.role == pb.OWNER:
                # Ownership passes on rather than leaving a group nobody can run.
                heir = next((m for m in await self.store.list_members(conv.id, 2)
                             if m.user_id != actor.user_id), None)
                if heir is not None:
                    ops.set_role = [(heir.user_id, pb.OWNER)]
        elif req.op == pb.MemberChange.SET_ROLE:
            if me.role != pb.OWNER:
                raise RequestError(pb.FORBIDDEN, "only the owner can change roles")
            if req.role not in (pb.MEMBER, pb.ADMIN, pb.OWNER):
                raise RequestError(pb.INVALID_ARGUMENT, "role must be MEMBER, ADMIN or OWNER")
            users = [u for u in await self._resolve_users(list(req.user_ids)) if u in before]
            if not users or actor.user_id in users:
                raise RequestError(pb.INVALID_ARGUMENT, "name members other than yourself")
            if req.role == pb.OWNER and len(users) != 1:
                raise RequestError(pb.INVALID_ARGUMENT, "ownership goes to exactly one member")
            ops.set_role = [(u, req.role) for u in users]
            if req.role == pb.OWNER:
                ops.set_role.append((actor.user_id, pb.ADMIN))
            event.kind, event.user_ids[:], event.role = (pb.SystemEvent.ROLE_CHANGED, users,
                                                         req.role)
        elif req.op == pb.MemberChange.RENAME:
            if not is_admin:
                raise RequestError(pb.FORBIDDEN, "only the owner or an admin can rename")
            name = req.name.strip()
            if not name or len(name) > NAME_MAX:
                raise RequestError(pb.INVALID_ARGUMENT, f"group name must be 1-{NAME_MAX} chars")
            ops.rename = name
            event.kind, event.name = pb.SystemEvent.RENAMED, name
        else:
            raise RequestError(pb.INVALID_ARGUMENT, "unknown member operation")
        entry = self._system_entry(conv.id, actor, event)
        try:
            await self.store.change_members(conv.id, ops, entry, self.cfg.max_group_members)
        except GroupFull as exc:
            raise RequestError(pb.GROUP_FULL, str(exc)) from exc
        except Unavailable as exc:
            raise RequestError(pb.UNAVAILABLE, str(exc), retry_after_ms=1000) from exc
        self.members.invalidate(conv.id)
        # Removed members hear of their removal, new ones of their addition.
        after = await self.members.get(conv.id)
        await self._publish_entry(entry, actor, user_ids=tuple(before | after),
                                  members_changed=True)
        conv = await self.store.get_conversation(conv.id)
        assert conv is not None
        if req.op == pb.MemberChange.LEAVE:
            return pb.Conversation(conversation_id=conv.id, kind=conv.kind, name=conv.name,
                                   last_seq=conv.last_seq, member_count=conv.member_count)
        return await self.view(conv, actor.user_id)

    # ---- the log ---------------------------------------------------------

    async def send(self, actor: Actor, req: pb.SendRequest) -> pb.Ack:
        self._check_client_id(req.client_msg_id)
        self._check_content(req.content)
        # The member set the fan-out needs anyway answers "may this user
        # send here" without a store read per message; membership changes
        # drop it on every node (the delivery carries members_changed).
        # A database outage on these reads (a cold member cache) is answered
        # like one on the append: the sender learns the message is not stored.
        try:
            members = await self.members.get(req.conversation_id)
        except Unavailable as exc:
            raise _not_stored(exc) from exc
        if actor.user_id not in members:
            raise RequestError(pb.NOT_FOUND, f"no conversation {req.conversation_id!r} for you")
        if self.files is not None and _content_kind(req.content) == "file":
            try:
                stored_file = await self.files(req.content.file.file_id, req.conversation_id)
            except Unavailable as exc:
                raise _not_stored(exc) from exc
            if stored_file is None:
                raise RequestError(pb.NOT_FOUND, f"no file {req.content.file.file_id!r} "
                                   "in this conversation")
            # The stored metadata, not the sender's copy, goes into the log.
            req.content.file.CopyFrom(stored_file)
        entry = Entry(conversation_id=req.conversation_id, sender_id=actor.user_id,
                      sender_device=actor.device_id, client_msg_id=req.client_msg_id,
                      sent_at=now_ms(), kind=pb.CHAT, content=req.content.SerializeToString())
        stored, duplicate = await self._append(entry)
        await self._publish_new(stored, duplicate, actor)
        return self._ack(stored, duplicate)

    async def _own_target(self, actor: Actor, conversation_id: str, target_seq: int,
                          window: float, verb: str) -> tuple[MemberRow, Entry]:
        me = await self._member(conversation_id, actor.user_id)
        target = await self.store.get_entry(conversation_id, target_seq)
        if target is None or target.kind != pb.CHAT or target.seq < me.joined_seq:
            raise RequestError(pb.NOT_FOUND, f"no message {target_seq} to {verb}")
        if target.recalled:
            raise RequestError(pb.CONFLICT, f"message {target_seq} was recalled")
        own = target.sender_id == actor.user_id
        if not own and not (verb == "recall" and me.role in (pb.ADMIN, pb.OWNER)):
            raise RequestError(pb.FORBIDDEN, f"you may {verb} only your own messages")
        if now_ms() - target.sent_at > window * 1000:
            raise RequestError(pb.RECALL_WINDOW_EXPIRED,
                               f"messages can be {verb}ed only within {window:g}s of sending")
        return me, target

    async def recall(self, actor: Actor, req: pb.RecallRequest) -> pb.Ack:
        self._check_client_id(req.client_msg_id)
        prior = await self._replayed(actor, req.conversation_id, req.client_msg_id)
        if prior is not None:
            return prior
        await self._own_target(actor, req.conversation_id, req.target_seq,
                               self.cfg.recall_window, "recall")
        entry = Entry(conversation_id=req.conversation_id, sender_id=actor.user_id,
                      sender_device=actor.device_id, client_msg_id=req.client_msg_id,
                      sent_at=now_ms(), kind=pb.RECALLED, target_seq=req.target_seq)
        stored, duplicate = await self._append(entry, mark_recalled=True)
        if self.audit is not None and not duplicate:
            await self.audit("chat.recall", {"actor": actor.user_id, "target": req.conversation_id,
                                             "seq": req.target_seq, "entry_seq": stored.seq,
                                             "device": actor.device_id})
        await self._publish_new(stored, duplicate, actor)
        return self._ack(stored, duplicate)

    async def edit(self, actor: Actor, req: pb.EditRequest) -> pb.Ack:
        self._check_client_id(req.client_msg_id)
        prior = await self._replayed(actor, req.conversation_id, req.client_msg_id)
        if prior is not None:
            return prior
        self._check_content(req.content)
        # An E2EE client edits with a new envelope; the server cannot tell its kind.
        if _content_kind(req.content) not in ("text", "encrypted"):
            raise RequestError(pb.INVALID_ARGUMENT, "only text messages can be edited")
        _, target = await self._own_target(actor, req.conversation_id, req.target_seq,
                                           self.cfg.edit_window, "edit")
        if target.sender_id != actor.user_id:
            raise RequestError(pb.FORBIDDEN, "you may edit only your own messages")
        content = req.content.SerializeToString()
        entry = Entry(conversation_id=req.conversation_id, sender_id=actor.user_id,
                      sender_device=actor.device_id, client_msg_id=req.client_msg_id,
                      sent_at=now_ms(), kind=pb.EDITED, target_seq=req.target_seq,
                      content=content)
        stored, duplicate = await self._append(entry, mark_edited=content)
        await self._publish_new(stored, duplicate, actor)
        return self._ack(stored, duplicate)

    async def _replayed(self, actor: Actor, conversation_id: str,
                        client_msg_id: str) -> pb.Ack | None:
        """A re-sent recall/edit is answered from the log before the checks that
        would now refuse it: the first attempt may have been stored while its
        ACK was lost, and the retry must get the same ACK."""
        await self._member(conversation_id, actor.user_id)
        prior = await self.store.find_by_client_id(conversation_id, actor.user_id, client_msg_id)
        if prior is None:
            return None
        await self._publish_new(prior, True, actor)
        return self._ack(prior, True)

    async def sync(self, actor: Actor, req: pb.SyncRequest) -> pb.SyncResponse:
        me = await self._member(req.conversation_id, actor.user_id)
        limit = min(req.limit or self.cfg.sync_page_max, self.cfg.sync_page_max)
        if req.before_seq:
            rows = await self.store.entries_before(req.conversation_id, req.before_seq,
                                                   limit + 1, me.joined_seq)
            has_more = len(rows) > limit
            rows = rows[-limit:]
        else:
            rows = await self.store.entries_after(req.conversation_id, req.after_seq,
                                                  limit + 1, me.joined_seq)
            has_more = len(rows) > limit
            rows = rows[:limit]
        conv = await self.store.get_conversation(req.conversation_id)
        out = pb.SyncResponse(conversation_id=req.conversation_id, has_more=True,
                              last_seq=conv.last_seq if conv else 0)
        # The answer must fit in one message of max_message_size (advertised
        # in AUTH_OK; clients refuse larger ones): end the page early and let
        # the client page on. Scrolling back keeps the newest entries.
        msgs = [entry_to_pb(e) for e in rows]
        size, keep = out.ByteSize(), 0
        for m in reversed(msgs) if req.before_seq else msgs:
            size += m.ByteSize() + 6  # + field tag and length prefix
            if keep and size > self.max_message_size:
                break
            keep += 1
        if keep < len(msgs):
            has_more = True
            msgs = msgs[-keep:] if req.before_seq else msgs[:keep]
        out.has_more = has_more
        out.messages.extend(msgs)
        return out

    # ---- ephemeral: receipts and typing ----------------------------------

    async def _read_last_seq(self, conversation_id: str) -> int:
        conv = await self.store.get_conversation(conversation_id)
        return conv.last_seq if conv else 0

    async def receipt(self, actor: Actor, req: pb.Receipt) -> None:
        if req.kind not in (pb.DELIVERED, pb.READ):
            raise RequestError(pb.INVALID_ARGUMENT, "receipt kind must be DELIVERED or READ")
        # Every member of a large group sends one at about the same moment:
        # membership comes from the fan-out's member cache and the seq bound
        # from the last_seq seen before, so that a receipt costs the store
        # only its share of a batched cursor write (tongxin.chat.cursors).
        members = await self.members.get(req.conversation_id)
        if actor.user_id not in members:
            raise RequestError(pb.NOT_FOUND, f"no conversation {req.conversation_id!r} for you")
        last_seq = await self.known_last_seq.last_seq(req.conversation_id, req.seq)
        if req.seq > last_seq:
            raise RequestError(pb.INVALID_ARGUMENT,
                               f"seq {req.seq} is beyond the conversation's last {last_seq}")
        kind = "read" if req.kind == pb.READ else "delivered"
        try:
            seq = await self.cursors.raise_to(req.conversation_id, actor.user_id, kind, req.seq)
        except Unavailable as exc:
            raise RequestError(pb.UNAVAILABLE, str(exc), retry_after_ms=1000) from exc
        if seq < req.seq:
            # 0 for a positive seq: no member row, so the user left (or was
            # removed) after the member cache was read and nothing was written.
            raise RequestError(pb.NOT_FOUND, f"no conversation {req.conversation_id!r} for you")
        event = pb.Receipt(conversation_id=req.conversation_id, kind=req.kind, seq=seq,
                           user_id=actor.user_id, device_id=actor.device_id, at_ms=now_ms())
        recipients: tuple[str, ...] = ()
        if len(members) > self.cfg.receipt_fanout_limit:
            recipients = (actor.user_id,)
        await self._publish(Delivery(
            frame_type=pb.RECEIPT, payload=event.SerializeToString(),
            conversation_id=req.conversation_id, user_ids=recipients,
            skip_user=actor.user_id, skip_device=actor.device_id))

    async def typing(self, actor: Actor, req: pb.Typing) -> None:
        await self._member(req.conversation_id, actor.user_id)
        members = await self.members.get(req.conversation_id)
        if len(members) > self.cfg.typing_fanout_limit:
            return
        event = pb.Typing(conversation_id=req.conversation_id, user_id=actor.user_id,
                          typing=req.typing)
        await self._publish(Delivery(
            frame_type=pb.TYPING, payload=event.SerializeToString(),
            conversation_id=req.conversation_id, skip_user=actor.user_id,
            skip_device=actor.device_id))


"""``tongxin chat``: a line-based terminal client built on the SDK.

Type a line to send it to the open conversation; commands start with '/'
(``/help`` lists them). Incoming messages print as they arrive. It speaks
Chinese under a ``zh*`` locale and English otherwise (chat_text.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from typing import TYPE_CHECKING

import aiohttp

from tongxin.cli.chat_text import Text
from tongxin.client import (
    CONNECTION_LOST,
    RECONNECT_FAILED,
    RECONNECTED,
    Backoff,
    Client,
    ConnectionClosed,
    ConnectionEvent,
    Event,
    NoEndpointAvailable,
    TongxinError,
)
from tongxin.client.endpoints import describe
from tongxin.e2ee.device_trust import DeviceChange
from tongxin.e2ee.errors import E2EEError, IdentityChangedError
from tongxin.e2ee.escrow_trust import EscrowKeyChange
from tongxin.e2ee.membership import MembershipChange
from tongxin.proto import tongxin_pb2 as pb

if TYPE_CHECKING:
    from tongxin.client.e2ee import E2EEClient

def connection_line(ev: ConnectionEvent, text: Text | None = None) -> str:
    """The system line for a change of connection (the entry names the site)."""
    text = text or Text()
    if ev.kind == CONNECTION_LOST:
        return text("conn.lost", endpoint=ev.endpoint)
    if ev.kind == RECONNECTED and ev.moved:
        return text("conn.moved", endpoint=ev.endpoint)
    if ev.kind == RECONNECTED:
        return text("conn.back", endpoint=ev.endpoint)
    return text("conn.failed", error=ev.error)


class ChatUI:
    def __init__(self, client: Client, text: Text | None = None) -> None:
        self.c = client
        self.t = text or Text()
        self.current = ""
        self.names: dict[str, str] = {}
        self.labels: dict[str, str] = {}
        self.e2ee: E2EEClient | None = None
        """End-to-end encryption (--e2ee DIR): sent and opened through the SDK."""

    # ---- what the SDK reports (docs/e2ee.md 7.1, 9, 9.1, 10.1) ----------------------------

    def device_changed(self, c: DeviceChange) -> None:
        key = f"device.{c.change}"
        change = self.t(key) if key in self.t.messages else c.change
        self.out(f"-- {self.names.get(c.user_id, c.user_id)}/{c.device_id}: {change}")

    def membership_changed(self, c: MembershipChange) -> None:
        if c.first_seen:
            names = self.t("list.separator").join(self.names.get(u, u) for u in c.added)
            self.out(self.t("members.first", names=names))

    def escrow_changed(self, c: EscrowKeyChange) -> None:
        self.out(self.t("escrow.changed", change=c))

    def identity_changed(self, err: IdentityChangedError) -> None:
        self.out(f"!! {err}")

    async def opened_text(self, m: pb.Message) -> str | None:
        """The text of an encrypted entry, a refusal, or None for a control message."""
        assert self.e2ee is not None
        try:
            opened = await self.e2ee.open(m)
        except E2EEError as exc:
            return self.t("e2ee.cannot_open", error=exc)
        if opened is None or opened.payload.WhichOneof("body") == "sender_key":
            return None
        if opened.payload.WhichOneof("body") == "attachment":
            return self.t("e2ee.file", name=opened.payload.attachment.name)
        return str(opened.payload.text)

    def out(self, text: str) -> None:
        print(text, flush=True)

    async def name(self, user_id: str) -> str:
        if user_id not in self.names:
            with contextlib.suppress(TongxinError):
                for u in await self.c.users([user_id]):
                    self.names[u.user_id] = u.username
        return self.names.get(user_id, user_id)

    async def label(self, conversation_id: str) -> str:
        """A short name for a conversation: the group name or the other user."""
        if conversation_id not in self.labels:
            with contextlib.suppress(TongxinError):
                conv = await self.c.conversation(conversation_id)
                self.labels[conversation_id] = conv.name or await self.name(conv.peer_id)
        return self.labels.get(conversation_id, conversation_id)

    async def render(self, m: pb.Message) -> str:
        who = await self.name(m.sender_id)
        # Inside the open conversation a line needs only its seq; elsewhere
        # it says which conversation it belongs to.
        where = (f"#{m.seq}" if m.conversation_id == self.current
                 else f"[{await self.label(m.conversation_id)}] #{m.seq}")
        if m.kind == pb.CHAT:
            if m.recalled:
                return self.t("line.recalled", where=where, who=who)
            if m.unavailable:  # no content: it would otherwise read as "<encrypted>"
                return self.t("line.unavailable", where=where, who=who)
            body = m.content.text if m.content.HasField("text") else (
                self.t("body.file", name=m.content.file.name) if m.content.HasField("file")
                else self.t("body.encrypted"))
            edited = self.t("line.edited_mark") if m.edited_at_ms else ""
            return self.t("line.chat", where=where, who=who, body=body, edited=edited)
        if m.kind == pb.RECALLED:
            return self.t("line.recall", where=where, who=who, target=m.target_seq)
        if m.kind == pb.EDITED:
            return self.t("line.edit", where=where, who=who, target=m.target_seq, text=m.content.text)
        names = self.t("list.separator").join([await self.name(u) for u in m.system.user_ids])
        k = m.system.kind
        text = {
            pb.SystemEvent.CREATED: self.t("system.created", names=names),
            pb.SystemEvent.MEMBERS_ADDED: self.t("system.added", names=names),
            pb.SystemEvent.MEMBERS_REMOVED: self.t("system.removed", names=names),
            pb.SystemEvent.MEMBER_LEFT: self.t("system.left"),
            pb.SystemEvent.ROLE_CHANGED: self.t("system.role", names=names),
            pb.SystemEvent.RENAMED: self.t("system.renamed", name=m.system.name),
        }.get(k, pb.SystemEvent.Kind.Name(k).lower())
        return f"{where} {who} {text}"

    async def on_event(self, ev: Event) -> None:
        if ev.type == pb.DELIVER:
            m: pb.Message = ev.message
            if self.e2ee is not None and (m.kind == pb.SYSTEM or m.content.HasField("encrypted")):
                text = await self.opened_text(m)
                if m.kind != pb.SYSTEM:
                    if text is None:
                        return  # a sender-key distribution: nothing to show
                    m = pb.Message()
                    m.CopyFrom(ev.message)
                    m.content.Clear()
                    m.content.text = text
            if not self.current:
                # Someone wrote first: open that conversation so a reply
                # needs no command.
                with contextlib.suppress(TongxinError):
                    await self.open(await self.c.conversation(m.conversation_id))
                    if m is ev.message:
                        return  # history showed it
                    # Encrypted: history shows it sealed (its key is used up); the
                    # opened text follows.
            self.out(await self.render(m))
            if m.conversation_id == self.current:
                await self.c.read(m.conversation_id, m.seq)
        elif ev.type == pb.RECEIPT and ev.message.kind == pb.READ:
            who = await self.name(ev.message.user_id)
            where = ("" if ev.message.conversation_id == self.current
                     else self.t("receipt.where", label=await self.label(ev.message.conversation_id)))
            self.out(self.t("receipt.read", who=who, seq=ev.message.seq, where=where))
        elif ev.type == pb.TYPING and ev.message.typing:
            self.out(self.t("typing", who=await self.name(ev.message.user_id)))
        elif ev.type == pb.PRESENCE:
            for e in ev.message.entries:
                self.out(self.t("presence", who=await self.name(e.user_id), state=self.presence(e.status)))
        elif ev.type == pb.ERROR:
            self.out(self.error(ev.message.code, ev.message.message))
        elif ev.type in (CONNECTION_LOST, RECONNECTED, RECONNECT_FAILED):
            self.out(connection_line(ev.message, self.t))

    def presence(self, status: int) -> str:
        return self.t(f"presence.{pb.PresenceStatus.Name(status)}")

    def error(self, code: int, message: str) -> str:
        name = pb.ErrorCode.Name(code)
        return self.t("error", code=name, text=self.t.code(name), message=message)


    async def open(self, conv: pb.Conversation) -> None:
        self.current = conv.conversation_id
        label = conv.name or await self.name(conv.peer_id)
        self.labels[conv.conversation_id] = label
        self.out(self.t("open", label=label))
        if conv.peer_id:
            await self.c.subscribe_presence([conv.peer_id])
        page = await self.c.sync(conv.conversation_id, before_seq=conv.last_seq + 1, limit=10)
        for m in page.messages:
            self.out(await self.render(m))
        if page.messages:
            await self.c.read(conv.conversation_id, page.messages[-1].seq)

    async def command(self, line: str) -> bool:
        parts = line.split()
        cmd, rest = parts[0], parts[1:]
        if cmd == "/quit":
            return False
        if cmd == "/help":
            self.out(self.t("help"))
        elif cmd == "/dm" and len(rest) == 1:
            await self.open(await self.c.direct(rest[0]))
        elif cmd == "/group" and rest:
            await self.open(await self.c.create_group(rest[0], rest[1:]))
        elif cmd == "/add" and rest and self.current:
            await self.c.change_members(self.current, pb.MemberChange.ADD, rest)
        elif cmd == "/open" and len(rest) == 1:
            convs = {c.conversation_id: c for c in await self.c.conversations()}
            if rest[0] not in convs:
                self.out(self.t("no_conversation", conversation=rest[0]))
            else:
                await self.open(convs[rest[0]])
        elif cmd == "/list":
            for c in await self.c.conversations():
                label = c.name or await self.name(c.peer_id)
                unread = c.last_seq - c.my_read_seq
                self.out(self.t("list.row", conversation=c.conversation_id, label=label, unread=unread))
        elif cmd == "/history" and self.current:
            n = int(rest[0]) if rest and rest[0].isdigit() else 20
            convs = {c.conversation_id: c for c in await self.c.conversations()}
            last = convs[self.current].last_seq if self.current in convs else 0
            page = await self.c.sync(self.current, before_seq=last + 1, limit=n)
            for m in page.messages:
                self.out(await self.render(m))
        elif cmd == "/recall" and len(rest) == 1 and rest[0].isdigit() and self.current:
            await self.c.recall(self.current, int(rest[0]))
            self.out(self.t("recalled", seq=rest[0]))
        elif cmd == "/edit" and len(rest) >= 2 and rest[0].isdigit() and self.current:
            await self.c.edit(self.current, int(rest[0]), " ".join(rest[1:]))
            self.out(self.t("edited", seq=rest[0]))
        elif cmd == "/who" and rest:
            ids = [u.user_id for u in await self.c.users(rest)]
            update = await self.c.subscribe_presence(ids)
            for e in update.entries:
                self.out(self.t("who", who=await self.name(e.user_id), state=self.presence(e.status),
                                devices=e.devices))
        else:
            self.out(self.t("unknown_command"))
        return True

    async def line(self, text: str) -> bool:
        text = text.strip()
        if not text:
            return True
        try:
            if text.startswith("/"):
                return await self.command(text)
            if not self.current:
                self.out(self.t("open_first"))
                return True
            if self.e2ee is not None:
                ack = await self.e2ee.send_text(self.current, text)
                self.out(self.t("sent_e2ee", seq=ack.seq))
            else:
                ack = await self.c.send_text(self.current, text)
                self.out(self.t("sent", seq=ack.seq))
        except TongxinError as err:
            self.out(self.error(err.code, err.message))
        except E2EEError as err:
            self.out(self.t("not_sent", error=err))
        return True


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def enable_e2ee(ui: ChatUI, state_dir: str, org_root: str) -> None:
    """--e2ee: keys in ``state_dir``; the key backup passphrase (docs/e2ee.md 9.1) from
    $TONGXIN_KEY_BACKUP_PASSPHRASE, so it is never on the command line."""
    passphrase = os.environ.get("TONGXIN_KEY_BACKUP_PASSPHRASE") or None
    e = await ui.c.e2ee(state_dir, trusted_org_root=org_root or None,
                        key_backup_passphrase=passphrase,
                        on_device_change=ui.device_changed,
                        on_membership_change=ui.membership_changed,
                        on_escrow_key_change=ui.escrow_changed,
                        on_identity_change=ui.identity_changed)
    ui.e2ee = e
    escrow = ui.t("e2ee.escrow", key_id=e.escrow_key_id) if e.escrow_key_id else ""
    ui.out(ui.t("e2ee.on", escrow=escrow))
    if not e.signed:
        ui.out(ui.t("e2ee.not_signed", reason=e.cross.not_signed))
    if e.escrow_refusal is not None:
        ui.out(f"!! {e.escrow_refusal}")


async def run_chat(urls: str | list[str], user: str, password: str, *, register: bool = False,
                   device_id: str = "", open_with: str = "", ca_file: str = "",
                   e2ee_dir: str = "", org_root: str = "") -> int:
    """``urls``: the installation's entries in order of preference; the first that
    answers is used, and a dropped connection moves on to the next (even with one
    entry: a node restarting behind the load balancer)."""
    device = device_id or f"cli-{socket.gethostname()}"[:64]
    # A person at a terminal would rather wait than be thrown out: no deadline.
    client = Client(urls, device_id=device, client_name="tongxin-cli", ca_file=ca_file,
                    reconnect=Backoff(deadline=0))
    url = ", ".join(client.endpoints)
    text = Text()
    try:
        await client.connect()
        auth = await (client.register(user, password) if register
                      else client.login(user, password))
    except TongxinError as err:
        name = pb.ErrorCode.Name(err.code)
        print(text("login.failed", message=err.message, text=text.code(name)), file=sys.stderr)
        await client.close()
        return 1
    except (OSError, aiohttp.ClientError) as exc:
        detail = str(exc) if isinstance(exc, NoEndpointAvailable) else f"{url}: {describe(exc)}"
        print(text("connect.failed", detail=detail), file=sys.stderr)
        await client.close()
        return 1
    ui = ChatUI(client, text)
    ui.names[auth.user_id] = auth.username
    moved = text("logged_in.via", endpoint=client.endpoint) if client.endpoint != client.endpoints[0] else ""
    ui.out(text("logged_in", user=auth.username, via=moved))
    if e2ee_dir:
        try:
            await enable_e2ee(ui, e2ee_dir, org_root)
        except (E2EEError, TongxinError) as exc:
            print(text("e2ee.failed", error=exc), file=sys.stderr)
            await client.close()
            return 1

    async def pump() -> None:
        while True:
            ev = await client.events.get()
            await ui.on_event(ev)
            if ev.type == RECONNECT_FAILED:
                return  # the session is over (token expired or revoked): leave

    events = asyncio.create_task(pump())
    code = 0
    try:
        if open_with:
            await ui.line(f"/dm {open_with}")
        reader = await _stdin_lines()
        while True:
            read = asyncio.ensure_future(reader.readline())
            await asyncio.wait({read, events}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                read.cancel()
                code = 1
                break
            raw = read.result()
            if not raw or not await ui.line(raw.decode(errors="replace")):
                break
    except ConnectionClosed as exc:
        print(f"tongxin: {exc}", file=sys.stderr)
        code = 1
    finally:
        events.cancel()
        await client.close()
    return code

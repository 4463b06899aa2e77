"""``tongxin chat``: a line-based terminal client built on the SDK.

Type a line to send it to the open conversation; commands start with '/'
(``/help`` lists them). Incoming messages print as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from typing import TYPE_CHECKING

import aiohttp

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

HELP = """commands:
  /dm USER              open a direct conversation with USER
  /group NAME USER...   create a group and open it
  /add USER...          add members to the open group
  /open CONV_ID         open a conversation by id
  /list                 list your conversations with unread counts
  /history [N]          show the last N entries of the open conversation
  /recall SEQ           recall your message SEQ
  /edit SEQ TEXT        replace the text of your message SEQ
  /who USER...          show whether users are online
  /quit                 leave
anything else is sent as a message to the open conversation"""


def connection_line(ev: ConnectionEvent) -> str:
    """The system line for a change of connection (the entry names the site)."""
    if ev.kind == CONNECTION_LOST:
        return f"-- 连接已断开，正在重连 (connection to {ev.endpoint} lost; reconnecting)"
    if ev.kind == RECONNECTED and ev.moved:
        return f"-- 已切换到备用入口 {ev.endpoint} (moved to another entry; nothing missed)"
    if ev.kind == RECONNECTED:
        return f"-- 已重新连接 {ev.endpoint} (reconnected; nothing missed)"
    return f"-- 无法重新连接，请稍后再试 (gave up reconnecting: {ev.error})"


DEVICE_CHANGE = {
    "added": "新设备（已由其用户密钥签名） (new device, signed by their user key)",
    "unsigned": "未经其用户密钥签名，不会发给它，也不显示它的消息 (NOT signed by their user key: "
                "nothing is sent to it and its messages are not shown)",
    "unverified": "新设备，该用户尚无用户密钥，无法验证 (new device; the user has no user key, "
                  "so it cannot be verified)",
    "removed": "设备已移除 (device removed)",
}


class ChatUI:
    def __init__(self, client: Client) -> None:
        self.c = client
        self.current = ""
        self.names: dict[str, str] = {}
        self.labels: dict[str, str] = {}
        self.e2ee: E2EEClient | None = None
        """End-to-end encryption (--e2ee DIR): sent and opened through the SDK."""

    # ---- what the SDK reports (docs/e2ee.md 7.1, 9, 9.1, 10.1) ----------------------------

    def device_changed(self, c: DeviceChange) -> None:
        self.out(f"-- {self.names.get(c.user_id, c.user_id)}/{c.device_id}: "
                 f"{DEVICE_CHANGE.get(c.change, c.change)}")

    def membership_changed(self, c: MembershipChange) -> None:
        if c.first_seen:
            self.out(f"-- 首次查看该群成员（按服务器所列） (first look at the members, as the server "
                     f"lists them): {', '.join(self.names.get(u, u) for u in c.added)}")

    def escrow_changed(self, c: EscrowKeyChange) -> None:
        self.out(f"-- 合规托管密钥已更换 (the compliance escrow key changed): {c}")

    def identity_changed(self, err: IdentityChangedError) -> None:
        self.out(f"!! {err}")

    async def opened_text(self, m: pb.Message) -> str | None:
        """The text of an encrypted entry, a refusal, or None for a control message."""
        assert self.e2ee is not None
        try:
            opened = await self.e2ee.open(m)
        except E2EEError as exc:
            return f"(无法解密 cannot open: {exc})"
        if opened is None or opened.payload.WhichOneof("body") == "sender_key":
            return None
        if opened.payload.WhichOneof("body") == "attachment":
            return f"<encrypted file {opened.payload.attachment.name}>"
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
                return f"{where} {who}: (recalled)"
            if m.unavailable:  # no content: it would otherwise read as "<encrypted>"
                return f"{where} {who}: (unavailable: its stored copy failed the server's check)"
            body = m.content.text if m.content.HasField("text") else (
                f"<file {m.content.file.name}>" if m.content.HasField("file") else "<encrypted>")
            edited = " (edited)" if m.edited_at_ms else ""
            return f"{where} {who}: {body}{edited}"
        if m.kind == pb.RECALLED:
            return f"{where} {who} recalled message {m.target_seq}"
        if m.kind == pb.EDITED:
            return f"{where} {who} edited message {m.target_seq}: {m.content.text}"
        names = ", ".join([await self.name(u) for u in m.system.user_ids])
        k = m.system.kind
        text = {
            pb.SystemEvent.CREATED: f"started the conversation ({names})",
            pb.SystemEvent.MEMBERS_ADDED: f"added {names}",
            pb.SystemEvent.MEMBERS_REMOVED: f"removed {names}",
            pb.SystemEvent.MEMBER_LEFT: "left",
            pb.SystemEvent.ROLE_CHANGED: f"changed the role of {names}",
            pb.SystemEvent.RENAMED: f"renamed the group to {m.system.name}",
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
                     else f" in {await self.label(ev.message.conversation_id)}")
            self.out(f"  ({who} read up to #{ev.message.seq}{where})")
        elif ev.type == pb.TYPING and ev.message.typing:
            self.out(f"  ({await self.name(ev.message.user_id)} is typing...)")
        elif ev.type == pb.PRESENCE:
            for e in ev.message.entries:
                state = pb.PresenceStatus.Name(e.status).lower()
                self.out(f"  ({await self.name(e.user_id)} is {state})")
        elif ev.type == pb.ERROR:
            self.out(f"! {pb.ErrorCode.Name(ev.message.code)}: {ev.message.message}")
        elif ev.type in (CONNECTION_LOST, RECONNECTED, RECONNECT_FAILED):
            self.out(connection_line(ev.message))


    async def open(self, conv: pb.Conversation) -> None:
        self.current = conv.conversation_id
        label = conv.name or await self.name(conv.peer_id)
        self.labels[conv.conversation_id] = label
        self.out(f"-- now chatting with {label}; type to send, /help for commands")
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
            self.out(HELP)
        elif cmd == "/dm" and len(rest) == 1:
            await self.open(await self.c.direct(rest[0]))
        elif cmd == "/group" and rest:
            await self.open(await self.c.create_group(rest[0], rest[1:]))
        elif cmd == "/add" and rest and self.current:
            await self.c.change_members(self.current, pb.MemberChange.ADD, rest)
        elif cmd == "/open" and len(rest) == 1:
            convs = {c.conversation_id: c for c in await self.c.conversations()}
            if rest[0] not in convs:
                self.out(f"! no conversation {rest[0]}")
            else:
                await self.open(convs[rest[0]])
        elif cmd == "/list":
            for c in await self.c.conversations():
                label = c.name or await self.name(c.peer_id)
                unread = c.last_seq - c.my_read_seq
                self.out(f"{c.conversation_id}  {label}  unread {unread}")
        elif cmd == "/history" and self.current:
            n = int(rest[0]) if rest and rest[0].isdigit() else 20
            convs = {c.conversation_id: c for c in await self.c.conversations()}
            last = convs[self.current].last_seq if self.current in convs else 0
            page = await self.c.sync(self.current, before_seq=last + 1, limit=n)
            for m in page.messages:
                self.out(await self.render(m))
        elif cmd == "/recall" and len(rest) == 1 and rest[0].isdigit() and self.current:
            await self.c.recall(self.current, int(rest[0]))
            self.out(f"  recalled #{rest[0]}")
        elif cmd == "/edit" and len(rest) >= 2 and rest[0].isdigit() and self.current:
            await self.c.edit(self.current, int(rest[0]), " ".join(rest[1:]))
            self.out(f"  edited #{rest[0]}")
        elif cmd == "/who" and rest:
            ids = [u.user_id for u in await self.c.users(rest)]
            update = await self.c.subscribe_presence(ids)
            for e in update.entries:
                self.out(f"  {await self.name(e.user_id)}: "
                         f"{pb.PresenceStatus.Name(e.status).lower()} ({e.devices} devices)")
        else:
            self.out("? unknown command or missing argument; /help lists commands")
        return True

    async def line(self, text: str) -> bool:
        text = text.strip()
        if not text:
            return True
        try:
            if text.startswith("/"):
                return await self.command(text)
            if not self.current:
                self.out("? open a conversation first: /dm USER or /group NAME USER...")
                return True
            if self.e2ee is not None:
                ack = await self.e2ee.send_text(self.current, text)
                self.out(f"  sent #{ack.seq} (端到端加密 end-to-end encrypted)")
            else:
                ack = await self.c.send_text(self.current, text)
                self.out(f"  sent #{ack.seq}")
        except TongxinError as err:
            self.out(f"! {pb.ErrorCode.Name(err.code)}: {err.message}")
        except E2EEError as err:
            self.out(f"! 未发送 not sent: {err}")
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
    ui.out("-- 端到端加密已开启 (end-to-end encryption on"
           + (f"; escrow key {e.escrow_key_id}" if e.escrow_key_id else "") + ")")
    if not e.signed:
        ui.out(f"!! {e.cross.not_signed} (set TONGXIN_KEY_BACKUP_PASSPHRASE)")
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
    try:
        await client.connect()
        auth = await (client.register(user, password) if register
                      else client.login(user, password))
    except TongxinError as err:
        print(f"tongxin: {err.message}", file=sys.stderr)
        await client.close()
        return 1
    except (OSError, aiohttp.ClientError) as exc:
        detail = str(exc) if isinstance(exc, NoEndpointAvailable) else f"{url}: {describe(exc)}"
        print(f"tongxin: cannot connect: {detail}", file=sys.stderr)
        await client.close()
        return 1
    ui = ChatUI(client)
    ui.names[auth.user_id] = auth.username
    moved = f" via {client.endpoint}" if client.endpoint != client.endpoints[0] else ""
    ui.out(f"logged in as {auth.username}{moved}; /help for commands")
    if e2ee_dir:
        try:
            await enable_e2ee(ui, e2ee_dir, org_root)
        except (E2EEError, TongxinError) as exc:
            print(f"tongxin: end-to-end encryption could not start: {exc}", file=sys.stderr)
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

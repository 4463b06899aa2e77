"""Async Python SDK for the Tongxin wire protocol (docs/protocol.md).

    async with Client("ws://127.0.0.1:8080/ws") as c:
        await c.login("alice", "secret-pass")
        conv = await c.direct("bob")
        ack = await c.send_text(conv.conversation_id, "hello")
        event = await c.next_event(pb.DELIVER)

Requests are matched to answers by the header seq; server pushes (seq 0)
and errors for fire-and-forget frames arrive through ``next_event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from google.protobuf.message import Message as PbMessage

from tongxin.client.files import FileApiError, FilesHttp, Source, http_base
from tongxin.clock import now_ms
from tongxin.proto import tongxin_pb2 as pb
from tongxin.wire.codec import Decoder, Encoder, WireLimits
from tongxin.wire.frame import MAX_SEQ, FrameError, decode_frame

if TYPE_CHECKING:
    from tongxin.client.e2ee import E2EEClient

__all__ = ["Client", "Event", "FileApiError", "TongxinError", "pb"]

M = TypeVar("M", bound=PbMessage)

_PUSH_TYPES: dict[int, type[PbMessage]] = {
    pb.DELIVER: pb.Message,
    pb.RECEIPT: pb.Receipt,
    pb.PRESENCE: pb.PresenceUpdate,
    pb.TYPING: pb.Typing,
    pb.ERROR: pb.Error,
    pb.PING: pb.Ping,
}
_REPLY_TYPES: dict[int, type[PbMessage]] = {
    pb.AUTH_OK: pb.AuthResponse,
    pb.ACK: pb.Ack,
    pb.SYNC_RESULT: pb.SyncResponse,
    pb.CONV_INFO: pb.Conversation,
    pb.CONV_LIST_RESULT: pb.ConversationList,
    pb.PRESENCE: pb.PresenceUpdate,
    pb.PONG: pb.Pong,
    pb.USER_LIST: pb.UserList,
    pb.ERROR: pb.Error,
}


class TongxinError(Exception):
    """The server answered a request with an ERROR frame."""

    def __init__(self, err: pb.Error) -> None:
        super().__init__(f"{pb.ErrorCode.Name(err.code)}: {err.message}")
        self.code = err.code
        self.message = err.message
        self.retry_after_ms = err.retry_after_ms
        self.fatal = err.fatal


class ConnectionClosed(Exception):
    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}) {reason}".strip())
        self.code = code


@dataclass(frozen=True, slots=True)
class Event:
    type: int
    message: Any
    seq: int = 0


def client_tls_context(ca_file: str = "", cert_file: str = "",
                       key_file: str = "") -> ssl.SSLContext:
    """TLS 1.2+ client context (the appliance itself accepts only 1.3) verifying the server
    against ``ca_file`` (or the system CAs), optionally presenting a client certificate."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


class Client:
    def __init__(self, url: str, *, device_id: str = "", client_name: str = "tongxin-py",
                 limits: WireLimits | None = None, request_timeout: float = 30.0,
                 ca_file: str = "", ssl_context: ssl.SSLContext | None = None) -> None:
        """``wss://`` URLs verify the server against the system CAs, or only against
        ``ca_file`` (a PEM bundle, e.g. the appliance's private CA) when given;
        ``ssl_context`` replaces both (client certificates for mutual TLS)."""
        self.url = url
        self.ssl_context = ssl_context or (client_tls_context(ca_file) if ca_file else None)
        self.device_id = device_id
        self.client_name = client_name
        self.limits = limits or WireLimits()
        self.request_timeout = request_timeout
        self.encoder = Encoder(self.limits)
        self.decoder = Decoder(self.limits)
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.auth: pb.AuthResponse | None = None
        self.close_code: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._seq = 0
        self._send_lock = asyncio.Lock()

    # ---- connection --------------------------------------------------------

    async def connect(self) -> None:
        connector = (aiohttp.TCPConnector(ssl=self.ssl_context)
                     if self.ssl_context is not None else None)
        self._session = aiohttp.ClientSession(connector=connector)
        self._ws = await self._session.ws_connect(self.url, compress=0, autoping=True,
                                                  max_msg_size=0)
        self._reader = asyncio.create_task(self._read_loop())

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._ws is None or self._ws.closed

    def _next_seq(self) -> int:
        self._seq = 1 if self._seq >= MAX_SEQ else self._seq + 1
        return self._seq

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as one WebSocket binary message, unchecked (for tests and tools)."""
        assert self._ws is not None
        await self._ws.send_bytes(data)

    async def _emit(self, ftype: int, msg: PbMessage) -> int:
        assert self._ws is not None, "connect() first"
        async with self._send_lock:
            seq = self._next_seq()
            for frame in self.encoder.encode(ftype, seq, msg.SerializeToString()):
                await self._ws.send_bytes(frame)
        return seq

    async def request(self, ftype: int, msg: PbMessage, expect: type[M]) -> M:
        """Send a frame and wait for the answer carrying the same seq."""
        assert self._ws is not None, "connect() first"
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        async with self._send_lock:
            seq = self._next_seq()
            self._pending[seq] = fut
            try:
                for frame in self.encoder.encode(ftype, seq, msg.SerializeToString()):
                    await self._ws.send_bytes(frame)
            except Exception:
                self._pending.pop(seq, None)
                raise
        try:
            rtype, payload = await asyncio.wait_for(fut, self.request_timeout)
        finally:
            self._pending.pop(seq, None)
        if rtype == pb.ERROR:
            raise TongxinError(pb.Error.FromString(payload))
        return expect.FromString(payload)

    async def notify(self, ftype: int, msg: PbMessage) -> int:
        """Send a frame that has no answer; errors about it arrive as events."""
        return await self._emit(ftype, msg)

    async def _read_loop(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                try:
                    whole = self.decoder.feed(decode_frame(msg.data, self.limits.max_message_size))
                except FrameError as err:
                    await self.events.put(Event(pb.ERROR, pb.Error(
                        code=err.code, message=f"client-side: {err.message}")))
                    continue
                if whole is None:
                    continue
                fut = self._pending.get(whole.seq) if whole.seq else None
                if fut is not None and not fut.done():
                    fut.set_result((whole.type, whole.payload))
                    continue
                cls = _PUSH_TYPES.get(whole.type) or _REPLY_TYPES.get(whole.type)
                if cls is not None:
                    await self.events.put(Event(whole.type, cls.FromString(whole.payload),
                                                whole.seq))
        finally:
            self.close_code = self._ws.close_code
            exc = ConnectionClosed(self.close_code)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(exc)

    async def next_event(self, *types: int, wait: float = 10.0) -> Event:
        """The next pushed event (of one of ``types``, if given); others are discarded."""
        async with asyncio.timeout(wait):
            while True:
                ev = await self.events.get()
                if not types or ev.type in types:
                    return ev

    def drain_events(self) -> list[Event]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out

    # ---- auth ----------------------------------------------------------------

    def _adopt(self, auth: pb.AuthResponse) -> pb.AuthResponse:
        self.auth = auth
        self.device_id = auth.device_id
        # Follow the server's limits so our frames are never refused for size.
        self.limits = WireLimits(auth.max_frame_payload, auth.max_message_size,
                                 auth.compression_threshold, self.limits.fragment_timeout)
        self.encoder = Encoder(self.limits)
        return auth

    async def login(self, username: str, password: str) -> pb.AuthResponse:
        req = pb.AuthRequest(password=pb.PasswordCredentials(username=username, password=password),
                             device_id=self.device_id, client_name=self.client_name)
        return self._adopt(await self.request(pb.AUTH, req, pb.AuthResponse))

    async def resume(self, token: str) -> pb.AuthResponse:
        req = pb.AuthRequest(token=token, device_id=self.device_id, client_name=self.client_name)
        return self._adopt(await self.request(pb.AUTH, req, pb.AuthResponse))

    async def register(self, username: str, password: str,
                       display_name: str = "") -> pb.AuthResponse:
        req = pb.RegisterRequest(username=username, password=password,
                                 display_name=display_name, device_id=self.device_id)
        return self._adopt(await self.request(pb.REGISTER, req, pb.AuthResponse))

    async def logout(self, revoke_token: bool = True) -> None:
        await self.notify(pb.LOGOUT, pb.Logout(revoke_token=revoke_token))

    @property
    def user_id(self) -> str:
        return self.auth.user_id if self.auth else ""

    # ---- conversations ---------------------------------------------------------

    async def direct(self, user: str) -> pb.Conversation:
        return await self.request(pb.CONV_CREATE, pb.CreateConversation(
            kind=pb.DIRECT, member_ids=[user]), pb.Conversation)

    async def create_group(self, name: str, members: list[str]) -> pb.Conversation:
        return await self.request(pb.CONV_CREATE, pb.CreateConversation(
            kind=pb.GROUP, name=name, member_ids=members), pb.Conversation)

    async def change_members(self, conversation_id: str, op: int, users: list[str] = (),  # type: ignore[assignment]
                             role: int = 0, name: str = "") -> pb.Conversation:
        return await self.request(pb.MEMBERS, pb.MemberChange(
            conversation_id=conversation_id, op=op, user_ids=list(users), role=role, name=name),
            pb.Conversation)

    async def conversation(self, conversation_id: str) -> pb.Conversation:
        """One conversation with its members' roles and read/delivered cursors."""
        return await self.request(pb.CONV_GET, pb.GetConversation(conversation_id=conversation_id),
                                  pb.Conversation)

    async def conversations(self) -> list[pb.Conversation]:
        res = await self.request(pb.CONV_LIST, pb.ListConversations(), pb.ConversationList)
        return list(res.conversations)

    # ---- messages ----------------------------------------------------------

    async def send(self, conversation_id: str, content: pb.Content,
                   client_msg_id: str = "") -> pb.Ack:
        return await self.request(pb.SEND, pb.SendRequest(
            conversation_id=conversation_id, client_msg_id=client_msg_id or uuid.uuid4().hex,
            content=content), pb.Ack)

    async def send_text(self, conversation_id: str, text: str, client_msg_id: str = "") -> pb.Ack:
        return await self.send(conversation_id, pb.Content(text=text), client_msg_id)

    async def recall(self, conversation_id: str, seq: int, client_msg_id: str = "") -> pb.Ack:
        return await self.request(pb.RECALL, pb.RecallRequest(
            conversation_id=conversation_id, target_seq=seq,
            client_msg_id=client_msg_id or uuid.uuid4().hex), pb.Ack)

    async def edit(self, conversation_id: str, seq: int, text: str,
                   client_msg_id: str = "") -> pb.Ack:
        return await self.request(pb.EDIT, pb.EditRequest(
            conversation_id=conversation_id, target_seq=seq, content=pb.Content(text=text),
            client_msg_id=client_msg_id or uuid.uuid4().hex), pb.Ack)

    async def sync(self, conversation_id: str, after_seq: int = 0, limit: int = 0,
                   before_seq: int = 0) -> pb.SyncResponse:
        return await self.request(pb.SYNC, pb.SyncRequest(
            conversation_id=conversation_id, after_seq=after_seq, limit=limit,
            before_seq=before_seq), pb.SyncResponse)

    async def sync_all(self, conversation_id: str, after_seq: int = 0) -> list[pb.Message]:
        """Every entry after ``after_seq``, page by page."""
        out: list[pb.Message] = []
        while True:
            page = await self.sync(conversation_id, after_seq)
            out.extend(page.messages)
            if page.messages:
                after_seq = page.messages[-1].seq
            if not page.has_more:
                return out

    async def read(self, conversation_id: str, seq: int) -> None:
        await self.notify(pb.RECEIPT, pb.Receipt(conversation_id=conversation_id, kind=pb.READ,
                                                 seq=seq))

    async def delivered(self, conversation_id: str, seq: int) -> None:
        await self.notify(pb.RECEIPT, pb.Receipt(conversation_id=conversation_id,
                                                 kind=pb.DELIVERED, seq=seq))

    async def typing(self, conversation_id: str, typing: bool = True) -> None:
        await self.notify(pb.TYPING, pb.Typing(conversation_id=conversation_id, typing=typing))

    async def subscribe_presence(self, user_ids: list[str]) -> pb.PresenceUpdate:
        return await self.request(pb.PRESENCE_SUB, pb.PresenceSubscribe(user_ids=user_ids),
                                  pb.PresenceUpdate)

    async def users(self, refs: list[str]) -> list[pb.UserInfo]:
        res = await self.request(pb.USER_QUERY, pb.UserQuery(user_ids=refs), pb.UserList)
        return list(res.users)

    async def ping(self) -> pb.Pong:
        return await self.request(pb.PING, pb.Ping(client_time_ms=now_ms()), pb.Pong)

    # ---- files (HTTP, docs/files-api.md) -------------------------------------

    @property
    def http_url(self) -> str:
        """The node's HTTP base URL, derived from the WebSocket URL."""
        return http_base(self.url)

    def files_http(self) -> FilesHttp:
        """Low-level files API calls with this session's token (log in first)."""
        if self._session is None or self.auth is None or not self.auth.token:
            raise RuntimeError("connect() and log in before using the files API")
        return FilesHttp(self._session, self.http_url, self.auth.token)

    async def upload_file(self, conversation_id: str, source: Source, name: str = "",
                          content_type: str = "application/octet-stream", parallel: int = 4,
                          upload_id: str = "") -> pb.FileInfo:
        """Upload a file (a path or bytes) in parts of the server's part size,
        ``parallel`` at a time, and return its FileInfo for ``send_file``.

        With ``upload_id`` it resumes: it asks which parts the server holds and
        sends only the missing ones. Raises FileApiError when refused.
        """
        return await self.files_http().upload(conversation_id, source, name, content_type,
                                               parallel, upload_id)

    async def download_file(self, file_id: str,
                            range: tuple[int, int | None] | None = None) -> bytes:
        """The file's bytes, or ``range=(start, stop)`` of them (stop exclusive, None: to the end)."""
        data = await self.files_http().download(file_id, range, None)
        assert isinstance(data, bytes)
        return data

    async def download_file_to(self, file_id: str, path: str | os.PathLike[str],
                               range: tuple[int, int | None] | None = None) -> int:
        """Stream the file (or a range) into ``path``; return the bytes written."""
        written = await self.files_http().download(file_id, range, Path(path))
        assert isinstance(written, int)
        return written

    async def file_info(self, file_id: str) -> pb.FileInfo:
        return await self.files_http().info(file_id)

    async def send_file(self, conversation_id: str, info: pb.FileInfo,
                        client_msg_id: str = "") -> pb.Ack:
        return await self.send(conversation_id, pb.Content(file=info), client_msg_id)

    # ---- end-to-end encryption (docs/e2ee.md) ------------------------------------

    async def e2ee(self, state_dir: str | os.PathLike[str], **options: Any) -> E2EEClient:
        """Enable end-to-end encryption for this logged-in device: load (or create) its
        keys from ``state_dir`` and publish them. Options go to :class:`E2EEClient`."""
        from tongxin.client.e2ee import E2EEClient

        e = E2EEClient(self, state_dir, **options)
        await e.setup()
        return e

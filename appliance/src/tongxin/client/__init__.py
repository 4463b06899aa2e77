"""Async Python SDK for the Tongxin wire protocol (docs/protocol.md).

    async with Client(["wss://dc1.example/ws", "wss://dc2.example/ws"]) as c:
        await c.login("alice", "secret-pass")
        conv = await c.direct("bob")
        ack = await c.send_text(conv.conversation_id, "hello")
        event = await c.next_event(pb.DELIVER)

Requests are matched to answers by the header seq; server pushes (seq 0)
and errors for fire-and-forget frames arrive through ``next_event``.

Given several entry points the client connects to the first that answers and,
when the connection drops, reconnects round robin with back-off, resumes with
its token and syncs what it missed (docs/protocol.md section 15).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from google.protobuf.message import Message as PbMessage

from tongxin.client.endpoints import (
    CONNECTION_LOST,
    RECONNECT_FAILED,
    RECONNECTED,
    Backoff,
    ConnectionEvent,
    NoEndpointAvailable,
    SeqCursors,
    describe,
    parse_endpoints,
)
from tongxin.client.files import FileApiError, FilesHttp, Source, http_base
from tongxin.clock import now_ms
from tongxin.proto import tongxin_pb2 as pb
from tongxin.wire.codec import Decoder, Encoder, WireLimits
from tongxin.wire.frame import MAX_SEQ, FrameError, decode_frame

if TYPE_CHECKING:
    from tongxin.client.e2ee import E2EEClient

__all__ = ["CONNECTION_LOST", "RECONNECTED", "RECONNECT_FAILED", "Backoff", "Client",
           "ConnectionClosed", "ConnectionEvent", "Event", "FileApiError", "NoEndpointAvailable",
           "TongxinError", "pb"]

log = logging.getLogger("tongxin.client")

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


# Requests that may be sent again on the next connection when the first one's answer
# was lost with the connection: reads, and writes the server de-duplicates by
# client_msg_id (SEND, RECALL, EDIT). A group CONV_CREATE, MEMBERS or KEYS_FETCH
# (which consumes one-time prekeys) is not among them: the caller decides.
_RETRY_SAFE = frozenset({pb.SEND, pb.RECALL, pb.EDIT, pb.SYNC, pb.CONV_GET, pb.CONV_LIST,
                         pb.USER_QUERY, pb.PING, pb.PRESENCE_SUB})
# Closes after which reconnecting cannot help (docs/protocol.md section 12): our own
# close or a LOGOUT, an encoder the server refused, another connection of this
# device taking over (reconnecting would only throw that one out in turn), and a
# session revoked (4010: disabled, password reset; resuming is refused everywhere).
_NO_RECONNECT = frozenset({1000, 1009, 4000, 4001, 4009, 4010})
# A resume refused with these will be refused by every entry: log in again.
_SESSION_OVER = frozenset({pb.TOKEN_EXPIRED, pb.TOKEN_INVALID, pb.TOKEN_REVOKED,
                           pb.ACCOUNT_LOCKED, pb.AUTH_FAILED})
# What an endpoint that does not answer raises: refused or unreachable (OSError),
# an HTTP answer instead of the upgrade (503 from a standby or a node starting up:
# WSServerHandshakeError), TLS failures, a timeout.
_ENDPOINT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)

ReconnectCallback = Callable[[ConnectionEvent], "Awaitable[None] | None"]


class Client:
    def __init__(self, url: str | Sequence[str], *, device_id: str = "",
                 client_name: str = "tongxin-py", limits: WireLimits | None = None,
                 request_timeout: float = 30.0, ca_file: str = "",
                 ssl_context: ssl.SSLContext | None = None, connect_timeout: float = 10.0,
                 reconnect: Backoff | bool | None = None,
                 on_reconnect: ReconnectCallback | None = None,
                 ping_interval: float = 10.0) -> None:
        """``url`` is one WebSocket URL or the installation's entry points in order of
        preference (a list, or one comma-separated string).

        ``reconnect``: a :class:`Backoff`, True for the default one, False for none;
        None (the default) reconnects only when more than one endpoint is given. While
        reconnecting, requests that are safe to repeat wait and are sent again on the
        new connection; ``on_reconnect`` is called (and an event queued) when the
        connection is lost, restored, or given up.

        ``wss://`` URLs verify the server against the system CAs, or only against
        ``ca_file`` (a PEM bundle, e.g. the appliance's private CA) when given;
        ``ssl_context`` replaces both (client certificates for mutual TLS)."""
        self.endpoints = parse_endpoints(url)
        self._index = 0
        self.ssl_context = ssl_context or (client_tls_context(ca_file) if ca_file else None)
        self.device_id = device_id
        self.client_name = client_name
        self.limits = limits or WireLimits()
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        if reconnect is None:
            reconnect = len(self.endpoints) > 1
        self.backoff: Backoff | None = (Backoff() if reconnect is True
                                        else reconnect or None)
        self.on_reconnect = on_reconnect
        self.encoder = Encoder(self.limits)
        self.decoder = Decoder(self.limits)
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.auth: pb.AuthResponse | None = None
        self.close_code: int | None = None
        self.cursors = SeqCursors()
        self.reconnects = 0
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._alive = False  # the current socket's reader still runs
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._closing = False
        self._reconnector: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()  # cleared while a reconnect is under way
        self._settled.set()
        self._gave_up = False
        self._holding: list[pb.Message] | None = None  # pushes held back during catch-up
        self._heartbeat: asyncio.Task[None] | None = None
        self._presence_watch: list[str] | None = None
        self._rng = random.Random()

    # ---- connection --------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint in use (or last used)."""
        return self.endpoints[self._index]

    endpoint = url

    @property
    def reconnecting(self) -> bool:
        return not self._settled.is_set()

    async def connect(self) -> None:
        """Connect to the first endpoint that accepts the WebSocket, in list order.

        With one endpoint its own error propagates (refused, TLS, HTTP status);
        with several, :class:`NoEndpointAvailable` lists why each was skipped."""
        self._closing = False
        self._gave_up = False
        failures: list[tuple[str, BaseException]] = []
        for index, url in enumerate(self.endpoints):
            try:
                await self._open(index)
                return
            except _ENDPOINT_ERRORS as exc:
                failures.append((url, exc))
        if len(failures) == 1:
            raise failures[0][1]
        raise NoEndpointAvailable(failures) from failures[-1][1]

    async def _open(self, index: int) -> None:
        if self._session is None or self._session.closed:
            connector = (aiohttp.TCPConnector(ssl=self.ssl_context)
                         if self.ssl_context is not None else None)
            self._session = aiohttp.ClientSession(connector=connector)
        async with asyncio.timeout(self.connect_timeout):
            # With reconnecting on, WebSocket pings find a link that died without a
            # FIN or RST (a site cut off): no pong within half the interval closes it.
            ws = await self._session.ws_connect(
                self.endpoints[index], compress=0, autoping=True, max_msg_size=0,
                heartbeat=self.ping_interval if self.backoff is not None else None)
        self._ws = ws
        self._index = index
        # Frame seqs start at 1 on every connection (section 6); a half-reassembled
        # message of the old one is gone with it.
        self._seq = 0
        self.decoder = Decoder(self.limits)
        self.close_code = None
        self._alive = True
        self._reader = asyncio.create_task(self._read_loop(ws))

    async def close(self) -> None:
        self._closing = True
        for task in (self._reconnector, self._heartbeat):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._session is not None:
            await self._session.close()
        if not self._settled.is_set():
            self._gave_up = True
            self._settled.set()

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

    async def _wait_settled(self) -> None:
        """While a reconnect is under way, wait for its outcome."""
        if not self._settled.is_set():
            await self._settled.wait()
        if self._gave_up:
            raise ConnectionClosed(self.close_code, "reconnect failed")

    async def _write(self, ftype: int, msg: PbMessage,
                     fut: asyncio.Future[tuple[int, bytes]] | None = None) -> int:
        ws = self._ws
        assert ws is not None, "connect() first"
        async with self._send_lock:
            if not self._alive or ws.closed:
                raise ConnectionClosed(self.close_code, "not connected")
            seq = self._next_seq()
            if fut is not None:
                self._pending[seq] = fut
            try:
                for frame in self.encoder.encode(ftype, seq, msg.SerializeToString()):
                    await ws.send_bytes(frame)
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                self._pending.pop(seq, None)
                raise ConnectionClosed(ws.close_code, str(exc)) from exc
        return seq

    async def _emit(self, ftype: int, msg: PbMessage) -> int:
        await self._wait_settled()
        return await self._write(ftype, msg)

    async def _exchange(self, ftype: int, msg: PbMessage) -> tuple[int, bytes]:
        """One request and its answer on the current connection, no waiting or retry."""
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        seq = await self._write(ftype, msg, fut)
        try:
            return await asyncio.wait_for(fut, self.request_timeout)
        finally:
            self._pending.pop(seq, None)

    async def request(self, ftype: int, msg: PbMessage, expect: type[M]) -> M:
        """Send a frame and wait for the answer carrying the same seq.

        With reconnecting on, a request safe to repeat whose connection drops is sent
        again (same payload, so the same client_msg_id) once a new one is up."""
        while True:
            await self._wait_settled()
            try:
                rtype, payload = await self._exchange(ftype, msg)
            except ConnectionClosed:
                if ftype in _RETRY_SAFE and await self._will_reconnect():
                    continue
                raise
            break
        if rtype == pb.ERROR:
            raise TongxinError(pb.Error.FromString(payload))
        return self._track(expect.FromString(payload))

    async def _will_reconnect(self) -> bool:
        if self.backoff is None or self._closing:
            return False
        # A write can fail a moment before the reader sees the close and starts the
        # reconnect; give it that moment.
        for _ in range(40):
            if not self._alive:
                break
            await asyncio.sleep(0.025)
        return self.reconnecting

    def _track(self, answer: M) -> M:
        """Keep the seq cursors in step with what answers reveal."""
        if isinstance(answer, pb.Ack):
            self.cursors.see(answer.conversation_id, answer.seq)
        elif isinstance(answer, pb.Conversation):
            self.cursors.learn(answer.conversation_id, answer.last_seq)
        elif isinstance(answer, pb.ConversationList):
            for conv in answer.conversations:
                self.cursors.learn(conv.conversation_id, conv.last_seq)
        elif isinstance(answer, pb.SyncResponse) and answer.conversation_id:
            self.cursors.learn(answer.conversation_id, answer.last_seq)
        return answer

    async def notify(self, ftype: int, msg: PbMessage) -> int:
        """Send a frame that has no answer; errors about it arrive as events."""
        return await self._emit(ftype, msg)

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    break
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
                if whole.type == pb.DELIVER:
                    self._push(pb.Message.FromString(whole.payload))
                    continue
                cls = _PUSH_TYPES.get(whole.type) or _REPLY_TYPES.get(whole.type)
                if cls is not None:
                    await self.events.put(Event(whole.type, cls.FromString(whole.payload),
                                                whole.seq))
        finally:
            if ws is self._ws:
                self._connection_ended(ws)

    def _push(self, m: pb.Message) -> None:
        if self._holding is not None:
            self._holding.append(m)  # after the catch-up, in seq order
        elif self.cursors.see(m.conversation_id, m.seq):
            self.events.put_nowait(Event(pb.DELIVER, m))

    def _connection_ended(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._alive = False
        self.close_code = ws.close_code
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        start = (self.backoff is not None and not self._closing and self.auth is not None
                 and self._settled.is_set() and self.close_code not in _NO_RECONNECT)
        if start:
            # Before the pending requests fail, so that those safe to repeat see a
            # reconnect under way and wait for it instead of raising.
            self._settled.clear()
            self._reconnector = asyncio.get_running_loop().create_task(
                self._reconnect(f"closed ({self.close_code})"))
        exc = ConnectionClosed(self.close_code)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)

    # ---- reconnecting (docs/protocol.md section 15) -------------------------------

    async def _announce(self, ev: ConnectionEvent) -> None:
        await self.events.put(Event(ev.kind, ev))
        if self.on_reconnect is not None:
            try:
                result = self.on_reconnect(ev)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_reconnect callback failed")

    async def _reconnect(self, reason: str) -> None:
        policy = self.backoff
        assert policy is not None
        lost = self.url
        await self._announce(ConnectionEvent(CONNECTION_LOST, lost, lost, 0, reason))
        started = time.monotonic()
        attempts = 0
        error = reason
        try:
            while not policy.exhausted(attempts, time.monotonic() - started):
                delay = policy.delay(attempts, self._rng)
                if policy.deadline:
                    delay = min(delay, max(0.0, policy.deadline - (time.monotonic() - started)))
                await asyncio.sleep(delay)
                index = (self._index + 1) % len(self.endpoints)
                attempts += 1
                try:
                    await self._open(index)
                except _ENDPOINT_ERRORS as exc:
                    self._index = index  # round robin: the next attempt tries the one after
                    error = f"{self.endpoints[index]}: {describe(exc)}"
                    continue
                try:
                    await self._resume_session(lost, attempts)
                except TongxinError as err:
                    if err.code in _SESSION_OVER:
                        error = str(err)
                        break
                    error = f"{self.url}: {err}"
                    await self._drop()
                    continue
                except (ConnectionClosed, TimeoutError, aiohttp.ClientError, OSError) as exc:
                    error = f"{self.url}: {describe(exc)}"
                    await self._drop()
                    continue
                self._settled.set()
                if not self._alive and not self._closing:
                    # Lost again while announcing: start over from here.
                    self._settled.clear()
                    self._reconnector = asyncio.get_running_loop().create_task(
                        self._reconnect(f"closed ({self.close_code})"))
                return
            self._gave_up = True
            self._settled.set()
            await self._announce(ConnectionEvent(RECONNECT_FAILED, lost, lost, attempts, error))
        finally:
            self._holding = None
            if not self._settled.is_set():  # cancelled by close()
                self._gave_up = True
                self._settled.set()

    async def _drop(self) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    async def _call(self, ftype: int, msg: PbMessage, expect: type[M]) -> M:
        rtype, payload = await self._exchange(ftype, msg)
        if rtype == pb.ERROR:
            raise TongxinError(pb.Error.FromString(payload))
        return self._track(expect.FromString(payload))

    async def _resume_session(self, lost: str, attempts: int) -> None:
        """On a new connection: the token instead of the password, the presence watch
        again, then every known conversation synced from the last seq held. RECONNECTED
        is announced once the session is back, ahead of the entries the sync finds."""
        assert self.auth is not None
        self._adopt(await self._call(pb.AUTH, pb.AuthRequest(
            token=self.auth.token, device_id=self.device_id, client_name=self.client_name),
            pb.AuthResponse))
        self.reconnects += 1
        await self._announce(ConnectionEvent(RECONNECTED, self.url, lost, attempts))
        if self._presence_watch is not None:
            update = await self._call(pb.PRESENCE_SUB, pb.PresenceSubscribe(
                user_ids=self._presence_watch), pb.PresenceUpdate)
            await self.events.put(Event(pb.PRESENCE, update))
        self._holding = []
        for conv in self.cursors.conversations():
            after = self.cursors.mark(conv)
            while True:
                try:
                    page = await self._call(pb.SYNC, pb.SyncRequest(
                        conversation_id=conv, after_seq=after), pb.SyncResponse)
                except TongxinError as err:
                    if err.code == pb.NOT_FOUND:
                        break  # no longer a member
                    raise
                for m in page.messages:
                    # The server never pushes a device its own entries (section 9):
                    # they count as held, they are not events.
                    own = m.sender_id == self.user_id and m.sender_device == self.device_id
                    if self.cursors.see(conv, m.seq) and not own:
                        await self.events.put(Event(pb.DELIVER, m))
                if page.messages:
                    after = page.messages[-1].seq
                if not page.has_more:
                    break
        held, self._holding = self._holding, None
        for m in sorted(held, key=lambda m: m.seq):
            self._push(m)

    def _start_heartbeat(self, interval_ms: int) -> None:
        """PING frames every heartbeat interval keep the server's idle timer (which
        ignores WebSocket control frames) from closing a quiet reconnecting client."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        every = max(1.0, (interval_ms or 30000) / 1000)
        ws = self._ws

        async def beat() -> None:
            while self._ws is ws and self._alive:
                await asyncio.sleep(every)
                try:
                    await self._exchange(pb.PING, pb.Ping(client_time_ms=now_ms()))
                except TimeoutError:
                    continue  # the WebSocket-level heartbeat decides the link is dead
                except ConnectionClosed:
                    return

        self._heartbeat = asyncio.get_running_loop().create_task(beat())

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
        if self.backoff is not None:
            self._start_heartbeat(auth.heartbeat_interval_ms)
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
        self._presence_watch = list(user_ids)  # renewed after a reconnect
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

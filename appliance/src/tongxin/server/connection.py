"""One WebSocket connection: frame checks, authentication, dispatch, send queue.

Frames from one connection are handled one at a time, in order, so that the
messages one device sends to a conversation get sequence numbers in the order
it sent them. Outgoing frames go through a bounded queue drained by a task
that exists only while the queue is non-empty; a reader too slow to keep the
queue under its bounds is disconnected (close 4008) rather than allowed to
grow the server's memory. It loses nothing: it syncs by seq on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as PbMessage

from tongxin.auth.accounts import Session
from tongxin.chat.service import Actor
from tongxin.clock import now_ms
from tongxin.errors import RequestError
from tongxin.metrics import error_name, type_name
from tongxin.presence.visibility import visible_to
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import Unavailable
from tongxin.wire import closecodes
from tongxin.wire.codec import Decoder
from tongxin.wire.frame import MAX_SEQ, FrameError, decode_frame

if TYPE_CHECKING:
    from tongxin.server.node import Node

log = logging.getLogger("tongxin.connection")

Handler = Callable[["Connection", int, bytes], Awaitable[None]]

# Frames that do not count against the user's rate limit.
# LOGOUT too: a user who spent the budget must still be able to sign out.
_FREE = frozenset({pb.PING, pb.PONG, pb.LOGOUT})

# What ends a WebSocket's message iteration (aiohttp's __anext__ stops on these).
_END = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED})

# Seconds a close handshake may take before the socket is dropped.
CLOSE_TIMEOUT = 2.0

# Least retry_after_ms of an AUTH answered UNAVAILABLE (up to twice this, jittered).
AUTH_RETRY_AFTER_MS = 1000


def _auth_unavailable(exc: Unavailable) -> RequestError:
    """AUTH or REGISTER could not finish because a backend (store, presence) failed:
    UNAVAILABLE with a retry hint of 1-2 s, jittered so that the clients of a
    burst refused together do not come back together. Not counted against
    max_unauthenticated_errors; the connection stays open, unauthenticated."""
    return RequestError(pb.UNAVAILABLE, f"temporarily unavailable: {exc}; retry",
                        retry_after_ms=AUTH_RETRY_AFTER_MS + random.randrange(AUTH_RETRY_AFTER_MS))


def _parse(cls: type[Any], payload: bytes) -> Any:
    try:
        return cls.FromString(payload)
    except DecodeError as exc:
        raise RequestError(pb.BAD_PAYLOAD, f"payload is not a valid {cls.__name__}") from exc


class Connection:
    def __init__(self, ws: web.WebSocketResponse, node: Node, remote: str,
                 transport: asyncio.Transport | None = None) -> None:
        self.ws = ws
        self.transport = transport
        self.node = node
        self.remote = remote
        self.user_id = ""
        self.device_id = ""
        self.session: Session | None = None
        self.next_seq = 1
        self.decoder = Decoder(node.limits, budget=node.fragment_budget)
        self.opened = time.monotonic()
        self.last_seen = self.opened
        self.heartbeat = node.cfg.server.heartbeat_interval * random.uniform(0.8, 1.2)
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.drain_task: asyncio.Task[None] | None = None
        self.closing = False
        # The close decided first wins, and is decided synchronously (request_close):
        # the handler's last-resort ws.close() sends this code, never a bare 1000.
        self.close_code: int | None = None
        self.close_reason = ""
        self.close_task: asyncio.Task[None] | None = None
        self.unauth_errors = 0
        # Set while this connection's own LOGOUT revokes its token: it closes
        # with 1000 "logged out", not 4010 like the token's other sessions.
        self.logging_out = False
        self.watching: tuple[str, ...] = ()
        # An AUTH or REGISTER is waiting for its turn or being worked on: the
        # sweep's auth_timeout does not close it (the server is the slow one).
        self.authenticating = False

    @property
    def actor(self) -> Actor:
        return Actor(self.user_id, self.device_id)

    # ---- outgoing ----------------------------------------------------------

    def push(self, frames: list[bytes], ftype: int) -> None:
        if self.closing:
            return
        cfg = self.node.cfg.server
        size = sum(len(f) for f in frames)
        if (len(self.queue) + len(frames) > cfg.send_queue_frames
                or self.queued_bytes + size > cfg.send_queue_bytes):
            self.node.metrics.send_queue_overflows.inc()
            self.request_close(closecodes.SLOW_CONSUMER, "send queue full")
            return
        self.queue.extend(frames)
        self.queued_bytes += size
        self.node.metrics.frame_out(ftype)
        if self.drain_task is None:
            self.drain_task = self.node.spawn(self._drain())

    async def _drain(self) -> None:
        try:
            while self.queue and not self.ws.closed:
                data = self.queue.popleft()
                self.queued_bytes -= len(data)
                await self.ws.send_bytes(data)
        except (ConnectionError, RuntimeError):
            self.closing = True
        finally:
            self.drain_task = None

    def reply(self, ftype: int, seq: int, msg: PbMessage) -> None:
        self.push(self.node.encoder.encode(ftype, seq, msg.SerializeToString()), ftype)

    def error(self, code: int, message: str, ref_seq: int = 0, *, fatal: bool = False,
              retry_after_ms: int = 0) -> None:
        self.node.metrics.errors.labels(error_name(code)).inc()
        self.reply(pb.ERROR, ref_seq, pb.Error(code=code, message=message, ref_seq=ref_seq,
                                                retry_after_ms=retry_after_ms, fatal=fatal))

    def request_close(self, code: int, reason: str) -> asyncio.Task[None] | None:
        """Decide the close now and carry it out in a task; the first decision wins.

        Synchronous on purpose: a send-queue overflow happens inside push(), and
        if only a task remembered the code, the reader loop could see the
        connection closing and end the handler, whose fallback close would
        reach the socket first with 1000 and no reason (docs/protocol.md, 12).
        """
        if self.closing:
            return self.close_task
        self.closing = True
        self.close_code, self.close_reason = code, reason
        self.node.metrics.closes.labels(closecodes.name(code)).inc()
        self.close_task = self.node.spawn(self._close(code, reason))
        return self.close_task

    async def close(self, code: int, reason: str) -> None:
        """Flush what is queued (bounded wait), then close with ``code``."""
        task = self.request_close(code, reason)
        if task is not None:
            await asyncio.shield(task)

    async def _close(self, code: int, reason: str) -> None:
        task = self.drain_task
        if task is not None and code != closecodes.SLOW_CONSUMER:
            # Let the ERROR frame that explains the close reach the client,
            # but never wait long on a peer that is not reading.
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 2.0)
        self.queue.clear()
        if not self.ws.closed:
            try:
                # The close frame queues behind what the peer has not read, and
                # the handshake waits for its reply: a peer that stops reading
                # would hold this task and the connection forever. Bound it,
                # then drop the socket.
                await asyncio.wait_for(
                    self.ws.close(code=code, message=reason.encode()[:120]), CLOSE_TIMEOUT)
            except TimeoutError:
                if self.transport is not None:
                    self.transport.abort()

    async def finish(self) -> None:
        """The handler's end: wait for a decided close, else close with what was decided
        (1000 when nothing was: the peer closed or the socket failed)."""
        if self.close_task is not None:
            await asyncio.wait({self.close_task})
        if not self.ws.closed:
            await self.ws.close(code=self.close_code or closecodes.NORMAL,
                                message=self.close_reason.encode()[:120])

    async def fail(self, err: FrameError) -> None:
        self.error(err.code, err.message, err.seq, fatal=True)
        await self.close(closecodes.PROTOCOL_ERROR, err.message)

    # ---- incoming ----------------------------------------------------------

    async def run(self) -> None:
        node = self.node
        ws = self.ws
        # When a binary message's bytes came off the socket (server/wsarrival.py),
        # popped once per binary message; a plain WebSocketResponse has no such
        # stamp: then when it is read here.
        arrival = getattr(ws, "pop_arrival", time.perf_counter)
        receive = ws.receive
        # receive() rather than ``async for``: an idle connection waits suspended
        # in this chain until its next frame (a heartbeat: 30 s), and the chain is
        # made again for every frame; the iterator's __anext__ would be one more
        # coroutine in it, for the cyclic GC to promote and examine
        # (server/gcschedule.py). The loop ends where the iterator would.
        while True:
            msg = await receive()
            if msg.type in _END:
                break
            if self.closing:
                break
            self.last_seen = time.monotonic()
            if msg.type == WSMsgType.BINARY:
                await self.on_binary(msg.data, arrival())
            elif msg.type == WSMsgType.TEXT:
                self.error(pb.BAD_HEADER, "text messages are not part of the protocol; "
                                          "send binary frames", fatal=True)
                await self.close(closecodes.PROTOCOL_ERROR, "text message")
            elif msg.type == WSMsgType.ERROR:
                node.metrics.errors.labels("websocket").inc()
                break

    async def on_binary(self, data: bytes, arrived: float | None = None) -> None:
        """One WebSocket message; ``arrived``: perf_counter() when its bytes were read
        off the socket, where tongxin_ack_latency_seconds starts (default: now)."""
        if arrived is None:
            arrived = time.perf_counter()
        try:
            frame = decode_frame(data, self.node.limits.max_frame_payload)
        except FrameError as err:
            if err.fatal:
                await self.fail(err)
                return
            # Not fatal (unknown type): the sequence still moves on.
            if err.seq == self.next_seq:
                self.next_seq = self._after(err.seq)
            self.error(err.code, err.message, err.seq)
            return
        self.node.metrics.frame_in(frame.type)
        pending = self.decoder.pending_since is not None
        if not pending and frame.seq != self.next_seq:
            await self.fail(FrameError(
                pb.SEQ_GAP, f"expected frame seq {self.next_seq}, got {frame.seq}",
                seq=frame.seq, fatal=True))
            return
        try:
            whole = self.decoder.feed(frame, None if self.session is not None
                                      else self.node.cfg.server.max_unauthenticated_message)
        except FrameError as err:
            if err.fatal:
                await self.fail(err)
                return
            self.next_seq = self._after(frame.seq)
            self.error(err.code, err.message, err.seq)
            return
        if whole is None:
            return
        self.next_seq = self._after(whole.seq)
        await self.handle(whole.type, whole.seq, whole.payload, arrived)

    @staticmethod
    def _after(seq: int) -> int:
        # seq 0 is reserved for server pushes, so the counter wraps to 1.
        return 1 if seq >= MAX_SEQ else seq + 1

    async def handle(self, ftype: int, seq: int, payload: bytes, arrived: float) -> None:
        node = self.node
        try:
            if self.session is None:
                if ftype not in (pb.AUTH, pb.REGISTER, pb.PING):
                    self.unauth_errors += 1
                    raise RequestError(pb.NOT_AUTHENTICATED,
                                       "authenticate with AUTH or REGISTER first")
            elif ftype not in _FREE:
                wait = await node.limiter.acquire(self.user_id)
                if wait:
                    raise RequestError(pb.RATE_LIMITED, "too many frames; slow down",
                                       retry_after_ms=int(wait * 1000) + 1)
            handler = HANDLERS.get(ftype)
            if handler is None:
                raise RequestError(pb.UNKNOWN_TYPE,
                                   f"frame type {type_name(ftype)} is not accepted from clients")
            await handler(self, seq, payload)
            if ftype == pb.SEND:
                node.metrics.ack_latency.observe(time.perf_counter() - arrived)
        except RequestError as err:
            # Error.fatal promises the close that follows, so decide it first.
            fatal = (self.session is None
                     and self.unauth_errors >= node.cfg.server.max_unauthenticated_errors)
            self.error(err.code, err.message, seq, retry_after_ms=err.retry_after_ms, fatal=fatal)
            if fatal:
                await self.close(closecodes.AUTH_REQUIRED, "too many frames before AUTH")
        except Unavailable as exc:
            # A backend outage outside the chat layer's own mapping (a login,
            # a resume, a user query): the same clear answer, not INTERNAL.
            self.error(pb.UNAVAILABLE, f"temporarily unavailable: {exc}; retry", seq,
                       retry_after_ms=1000)
        except Exception:
            log.exception("handler failed", extra={"type": type_name(ftype), "user": self.user_id})
            self.error(pb.INTERNAL, "internal error; the request was not applied", seq)

    # ---- handlers ----------------------------------------------------------

    async def _auth(self, seq: int, payload: bytes) -> None:
        if self.session is not None:
            raise RequestError(pb.ALREADY_AUTHENTICATED, "this connection is authenticated")
        req: pb.AuthRequest = _parse(pb.AuthRequest, payload)
        accounts = self.node.accounts

        async def authenticate() -> Session:
            method = req.WhichOneof("method")
            if method == "password":
                return await accounts.login(req.password.username, req.password.password,
                                            req.device_id)
            if method == "token":
                return await accounts.resume(req.token, req.device_id)
            raise RequestError(pb.INVALID_ARGUMENT, "AUTH needs a password or a token")

        await self._open_session(seq, authenticate)

    async def _register(self, seq: int, payload: bytes) -> None:
        if self.session is not None:
            raise RequestError(pb.ALREADY_AUTHENTICATED, "this connection is authenticated")
        req: pb.RegisterRequest = _parse(pb.RegisterRequest, payload)
        await self._open_session(seq, lambda: self.node.accounts.register(
            req.username, req.password, req.display_name, req.device_id))

    async def _open_session(self, seq: int, authenticate: Callable[[], Awaitable[Session]]) -> None:
        """AUTH and REGISTER alike, in turns (``Node.auth_gate``, server.auth_concurrency)."""
        node = self.node
        self.authenticating = True
        try:
            waits = node.auth_gate.locked()
            if waits:
                node.metrics.auth_waiting.inc()
            try:
                await node.auth_gate.acquire()
            finally:
                if waits:
                    node.metrics.auth_waiting.dec()
            try:
                if self._peer_gone():
                    # The client gave up while this waited (its timeout, in a
                    # storm): a login now would answer nobody, and its end would
                    # cost a presence removal besides.
                    node.metrics.auth_abandoned.inc()
                    return
                await self._authenticate(seq, authenticate)
            finally:
                node.auth_gate.release()
        finally:
            self.authenticating = False

    def _peer_gone(self) -> bool:
        if self.closing or self.ws.closed:
            return True
        peer_closed = getattr(self.ws, "peer_closed", None)
        if peer_closed is not None and peer_closed():
            return True
        return self.transport is not None and self.transport.is_closing()

    async def _authenticate(self, seq: int,
                            authenticate: Callable[[], Awaitable[Session]]) -> None:
        """A refusal counts towards the unauthenticated limit; a backend outage
        answers UNAVAILABLE with a retry hint and leaves the connection as it was."""
        try:
            try:
                session = await authenticate()
            except RequestError:
                self.unauth_errors += 1
                raise
            await self._start_session(seq, session)
        except Unavailable as exc:
            raise _auth_unavailable(exc) from exc

    async def _start_session(self, seq: int, session: Session) -> None:
        """Attach, then AUTH_OK. The connection counts as authenticated (``session``
        set, pushes, ``tongxin_authenticated_connections``) only from the moment
        AUTH_OK is queued: a failure on the way (Unavailable from presence) leaves
        it unauthenticated, and a later AUTH on it may succeed."""
        node = self.node
        self.user_id, self.device_id = session.user.id, session.device_id
        try:
            went_online = await node.attach(self)
        except Unavailable:
            self.user_id = self.device_id = ""
            raise
        if await node.revoked_during_auth(session):
            self.error(pb.TOKEN_REVOKED, "session revoked; sign in again", seq, fatal=True)
            self.request_close(closecodes.SESSION_REVOKED, "session revoked")
            return
        if self.closing:
            return  # closed meanwhile (auth_timeout, a newer connection): no AUTH_OK to send
        lim = node.limits
        e2ee = node.keydir.policy
        self.reply(pb.AUTH_OK, seq, pb.AuthResponse(
            user_id=session.user.id, username=session.user.username,
            display_name=session.user.display_name, device_id=session.device_id,
            token=session.token, token_expires_at_ms=session.claims.expires_at_ms,
            server_time_ms=now_ms(), heartbeat_interval_ms=int(self.heartbeat * 1000),
            max_frame_payload=lim.max_frame_payload, max_message_size=lim.max_message_size,
            compression_threshold=lim.compression_threshold,
            sync_page_max=self.node.cfg.chat.sync_page_max,
            recall_window_ms=int(self.node.cfg.chat.recall_window * 1000),
            edit_window_ms=int(self.node.cfg.chat.edit_window * 1000),
            crypto_suite=e2ee.suite_name, e2ee_required=e2ee.required,
            escrow_public_key=e2ee.escrow_public_key, escrow_key_id=e2ee.escrow_key_id,
            escrow_statement=e2ee.escrow_statement))
        # No await between the AUTH_OK above and these: no frame of this connection,
        # and no push, can see the session before AUTH_OK is queued.
        self.session = session
        node.metrics.authenticated.inc()
        if went_online:
            await node.publish_presence(self.user_id, True)

    async def _send(self, seq: int, payload: bytes) -> None:
        req: pb.SendRequest = _parse(pb.SendRequest, payload)
        self.node.keydir.policy.check_content(req.content)  # e2ee.required, escrow
        ack = await self.node.chat.send(self.actor, req)
        self._count_ack(ack)
        self.reply(pb.ACK, seq, ack)

    def _count_ack(self, ack: pb.Ack) -> None:
        (self.node.metrics.duplicates if ack.duplicate else self.node.metrics.messages_stored).inc()

    async def _recall(self, seq: int, payload: bytes) -> None:
        ack = await self.node.chat.recall(self.actor, _parse(pb.RecallRequest, payload))
        self._count_ack(ack)
        self.reply(pb.ACK, seq, ack)

    async def _edit(self, seq: int, payload: bytes) -> None:
        req: pb.EditRequest = _parse(pb.EditRequest, payload)
        self.node.keydir.policy.check_content(req.content)  # e2ee.required, escrow
        ack = await self.node.chat.edit(self.actor, req)
        self._count_ack(ack)
        self.reply(pb.ACK, seq, ack)

    async def _sync(self, seq: int, payload: bytes) -> None:
        self.reply(pb.SYNC_RESULT, seq,
                   await self.node.chat.sync(self.actor, _parse(pb.SyncRequest, payload)))

    async def _receipt(self, seq: int, payload: bytes) -> None:
        await self.node.chat.receipt(self.actor, _parse(pb.Receipt, payload))

    async def _typing(self, seq: int, payload: bytes) -> None:
        await self.node.chat.typing(self.actor, _parse(pb.Typing, payload))

    async def _ping(self, seq: int, payload: bytes) -> None:
        req: pb.Ping = _parse(pb.Ping, payload)
        self.reply(pb.PONG, seq, pb.Pong(client_time_ms=req.client_time_ms,
                                         server_time_ms=now_ms()))

    async def _pong(self, seq: int, payload: bytes) -> None:
        _parse(pb.Pong, payload)

    async def _conv_create(self, seq: int, payload: bytes) -> None:
        self.reply(pb.CONV_INFO, seq, await self.node.chat.create(
            self.actor, _parse(pb.CreateConversation, payload)))

    async def _conv_get(self, seq: int, payload: bytes) -> None:
        req: pb.GetConversation = _parse(pb.GetConversation, payload)
        self.reply(pb.CONV_INFO, seq, await self.node.chat.get(self.actor, req.conversation_id))

    async def _conv_list(self, seq: int, payload: bytes) -> None:
        _parse(pb.ListConversations, payload)
        self.reply(pb.CONV_LIST_RESULT, seq, await self.node.chat.list(self.actor))

    async def _members(self, seq: int, payload: bytes) -> None:
        self.reply(pb.CONV_INFO, seq, await self.node.chat.change_members(
            self.actor, _parse(pb.MemberChange, payload)))

    async def _presence_sub(self, seq: int, payload: bytes) -> None:
        req: pb.PresenceSubscribe = _parse(pb.PresenceSubscribe, payload)
        ids = tuple(dict.fromkeys(req.user_ids))
        if len(ids) > 1000:
            raise RequestError(pb.INVALID_ARGUMENT, "subscribe to at most 1000 users")
        node = self.node
        # presence.visibility: others are answered "unspecified" and never watched.
        shown = await visible_to(self.user_id, ids, node.cfg.presence.visibility, node.store,
                                 node.members)
        node.hub.watch(self, tuple(u for u in ids if u in shown))
        known = {e.user_id: e for e in await node.presence.status([u for u in ids if u in shown])}
        update = pb.PresenceUpdate()
        for uid in ids:
            e = known.get(uid)
            if e is None:
                update.entries.add(user_id=uid, status=pb.PRESENCE_STATUS_UNSPECIFIED)
            else:
                update.entries.add(user_id=uid, devices=e.devices, last_seen_ms=e.last_seen_ms,
                                   status=pb.ONLINE if e.online else pb.OFFLINE)
        self.reply(pb.PRESENCE, seq, update)

    async def _user_query(self, seq: int, payload: bytes) -> None:
        req: pb.UserQuery = _parse(pb.UserQuery, payload)
        if len(req.user_ids) > 500:
            raise RequestError(pb.INVALID_ARGUMENT, "ask for at most 500 users")
        out = pb.UserList()
        store = self.node.store
        for ref in dict.fromkeys(req.user_ids):
            user = await (store.get_user(ref) if ref.startswith("u_")
                          else store.get_user_by_name(ref.strip().lower()))
            if user is not None:
                out.users.add(user_id=user.id, username=user.username,
                              display_name=user.display_name)
        self.reply(pb.USER_LIST, seq, out)

    async def _keys_publish(self, seq: int, payload: bytes) -> None:
        self.reply(pb.KEYS_STATUS, seq,
                   await self.node.keydir.publish(self.user_id, self.device_id, payload))

    async def _keys_fetch(self, seq: int, payload: bytes) -> None:
        self.reply(pb.KEYS_BUNDLES, seq,
                   await self.node.keydir.fetch(self.user_id, self.device_id, payload))

    async def _logout(self, seq: int, payload: bytes) -> None:
        req: pb.Logout = _parse(pb.Logout, payload)
        if req.revoke_token and self.session is not None:
            claims = self.session.claims
            self.logging_out = True
            await self.node.accounts.revoke(claims.token_id, claims.user_id, claims.expires_at_ms)
        await self.close(closecodes.NORMAL, "logged out")


HANDLERS: dict[int, Handler] = {
    pb.AUTH: Connection._auth,
    pb.REGISTER: Connection._register,
    pb.SEND: Connection._send,
    pb.RECALL: Connection._recall,
    pb.EDIT: Connection._edit,
    pb.SYNC: Connection._sync,
    pb.RECEIPT: Connection._receipt,
    pb.TYPING: Connection._typing,
    pb.PING: Connection._ping,
    pb.PONG: Connection._pong,
    pb.CONV_CREATE: Connection._conv_create,
    pb.CONV_LIST: Connection._conv_list,
    pb.CONV_GET: Connection._conv_get,
    pb.MEMBERS: Connection._members,
    pb.PRESENCE_SUB: Connection._presence_sub,
    pb.LOGOUT: Connection._logout,
    pb.USER_QUERY: Connection._user_query,
    pb.KEYS_PUBLISH: Connection._keys_publish,
    pb.KEYS_FETCH: Connection._keys_fetch,
}

"""The drill workload: N simulated users chatting at a steady total rate across the entries.

Each user is an SDK client (tongxin.client.Client) given the entry points in
its own order (user i starts at entry i mod len(entries), so the users are
spread over the sites). It behaves as a real client does: when a connection
drops it moves round robin to the next entry with back-off, resumes with its
token, and re-sends a message whose ACK was lost with the same client_msg_id
(the server answers a re-send it already stored from its log, so that message
is neither lost nor stored twice). A message that still got no ACK within
``send_timeout`` is sent again on the user's next tick, same client_msg_id.

Everything is appended to ``workload.jsonl`` (tongxin.drill.files):

    start / stop           the run (stop carries the counters)
    send                   every attempt: user, conversation, client_msg_id, attempt, entry
    ack                    conversation, seq, client_msg_id, at (acked), sent_at (this
                           attempt), first_sent_at, entry, latency_ms, user, user_id
    error                  op (connect, login, send, reconnect), entry, error
    login / disconnect     the user's sessions: entry, how (password, register, or token
                           for the SDK's reconnect), reason
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tongxin.client import (
    CONNECTION_LOST,
    RECONNECT_FAILED,
    RECONNECTED,
    Backoff,
    Client,
    ConnectionClosed,
    ConnectionEvent,
    NoEndpointAvailable,
    TongxinError,
    pb,
)
from tongxin.clock import now_ms
from tongxin.drill.files import (
    FAILED,
    PID,
    RUNNING,
    SETTING_UP,
    STOPPED,
    WORKLOAD_LOG,
    BatchWriter,
    DrillConversation,
    DrillState,
    DrillUser,
    write_state,
)

# Errors after which the message is re-sent on the next tick (the service is
# failing over); any other ERROR answer drops the message as refused.
RETRY_CODES = frozenset({pb.RATE_LIMITED, pb.UNAVAILABLE, pb.INTERNAL})
# Errors that mean the session is gone: reconnect and log in again, then re-send.
SESSION_CODES = frozenset({pb.NOT_AUTHENTICATED, pb.TOKEN_EXPIRED, pb.TOKEN_INVALID,
                           pb.TOKEN_REVOKED})
NETWORK_ERRORS = (ConnectionClosed, TimeoutError, aiohttp.ClientError, OSError)

BACKOFF_FIRST, BACKOFF_MAX = 0.25, 2.0


def user_names(prefix: str, n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]


def entry_order(entries: list[str], index: int) -> list[str]:
    """User ``index``'s entries: its own first, then the others in order."""
    k = index % len(entries)
    return entries[k:] + entries[:k]


def plan_conversations(users: list[str], groups: int) -> list[tuple[str, list[str]]]:
    """("direct"|"group", members; the first member creates it).

    A ring of direct conversations (each user with the next) and ``groups``
    groups that split the users between them, so every user sends in two
    direct conversations and one group.
    """
    n = len(users)
    out: list[tuple[str, list[str]]] = []
    pairs = [(i, (i + 1) % n) for i in range(n if n > 2 else n - 1)]
    out += [("direct", [users[a], users[b]]) for a, b in pairs]
    for g in range(groups):
        members = [users[j] for j in range(n) if j % groups == g]
        out.append(("group", members))
    return out


@dataclass
class Options:
    state_dir: Path
    entries: list[str]
    users: int
    groups: int
    rate: float  # messages per second, all users together
    password: str
    password_file: str = ""
    ca_file: str = ""
    register: bool = False
    user_prefix: str = "drill"
    send_timeout: float = 10.0
    connect_timeout: float = 10.0
    duration: float = 0.0  # seconds; 0 runs until stopped
    run_id: str = ""


class UserSession:
    """One simulated user: an SDK client over the user's entries in order.

    The client itself reconnects (round robin, back-off, token resume) and re-sends
    a SEND whose answer was lost; its events are logged as ``disconnect`` and
    ``login``. Only when it gives up (a session the server no longer accepts) does
    the session start a new client and log in with the password.
    """

    def __init__(self, user: DrillUser, password: str, opts: Options, log: BatchWriter,
                 stopping: asyncio.Event) -> None:
        self.user = user
        self.password = password
        self.opts = opts
        self.log = log
        self.stopping = stopping
        self.client: Client | None = None
        self._lock = asyncio.Lock()
        self.delivered = 0

    @property
    def entry(self) -> str:
        return self.client.url if self.client is not None else ""

    def _usable(self) -> bool:
        c = self.client
        return c is not None and (not c.closed or c.reconnecting)

    async def ensure(self, register: bool = False) -> bool:
        """A client that is connected or reconnecting (True), or stopping (False)."""
        async with self._lock:
            if self._usable():
                return True
            if self.client is not None:
                # The socket may close a moment before the SDK starts reconnecting.
                await asyncio.sleep(0.2)
                if self._usable():
                    return True
                await self.drop("the client gave up reconnecting")
            delay = BACKOFF_FIRST
            while not self.stopping.is_set():
                if await self._start(register):
                    return True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay * random.uniform(0.8, 1.2))
                delay = min(BACKOFF_MAX, delay * 2)
            return False

    async def _start(self, register: bool) -> bool:
        """A new client: the first entry that answers, then a password login."""
        started = time.monotonic()
        client = Client(self.user.entries, device_id=f"drill-{self.user.username}",
                        client_name="tongxin-drill", request_timeout=self.opts.send_timeout,
                        ca_file=self.opts.ca_file, connect_timeout=self.opts.connect_timeout,
                        # Never give up on its own: the drill decides when to stop.
                        reconnect=Backoff(initial=BACKOFF_FIRST, cap=BACKOFF_MAX, deadline=0),
                        on_reconnect=self._on_connection_event)
        op = "connect"
        try:
            await client.connect()
            op = "login"
            async with asyncio.timeout(self.opts.connect_timeout):
                how = await self._authenticate(client, register)
        except (TongxinError, *NETWORK_ERRORS) as exc:
            failures = (exc.failures if isinstance(exc, NoEndpointAvailable)
                        else [(client.url, exc)])
            for url, err in failures:
                self.log.write({"type": "error", "at": now_ms(), "user": self.user.username,
                                "entry": url, "op": op, "error": _describe(err)})
            await client.close()
            return False
        self.client = client
        self.user.user_id = client.user_id
        self.log.write({"type": "login", "at": now_ms(), "user": self.user.username,
                        "user_id": client.user_id, "entry": client.url, "how": how,
                        "took_ms": round((time.monotonic() - started) * 1000, 1)})
        return True

    async def _authenticate(self, client: Client, register: bool) -> str:
        if register:
            try:
                await client.register(self.user.username, self.password)
                return "register"
            except TongxinError as exc:
                if exc.code != pb.CONFLICT:
                    raise
        await client.login(self.user.username, self.password)
        return "password"

    def _on_connection_event(self, ev: ConnectionEvent) -> None:
        base = {"at": now_ms(), "user": self.user.username}
        if ev.kind == CONNECTION_LOST:
            self.log.write({**base, "type": "disconnect", "entry": ev.previous,
                            "reason": ev.error})
        elif ev.kind == RECONNECTED:
            self.log.write({**base, "type": "login", "user_id": self.user.user_id,
                            "entry": ev.endpoint, "how": "token", "attempts": ev.attempts,
                            "moved": ev.moved})
        elif ev.kind == RECONNECT_FAILED:
            self.log.write({**base, "type": "error", "entry": ev.endpoint, "op": "reconnect",
                            "error": ev.error})

    async def drop(self, reason: str) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        self.log.write({"type": "disconnect", "at": now_ms(), "user": self.user.username,
                        "entry": client.url, "reason": reason})
        await client.close()

    async def watch(self) -> None:
        """Drain pushed events: deliveries would otherwise pile up in the client."""
        while not self.stopping.is_set():
            client = self.client
            if client is None:
                await asyncio.sleep(0.2)
                continue
            with contextlib.suppress(TimeoutError):
                ev = await client.next_event(wait=0.25)
                if ev.type == pb.DELIVER:
                    self.delivered += 1


class Workload:
    def __init__(self, opts: Options, state: DrillState,
                 on_progress: Callable[[str], None] = lambda s: None) -> None:
        self.opts = opts
        self.state = state
        self.say = on_progress
        self.stopping = asyncio.Event()
        self.log = BatchWriter(opts.state_dir / WORKLOAD_LOG)
        self.sessions = [UserSession(u, opts.password, opts, self.log, self.stopping)
                         for u in state.users]
        self.sent = self.acked = self.refused = 0

    async def setup(self) -> None:
        t0 = time.monotonic()
        limit = asyncio.Semaphore(16)  # logins cost the server a password hash each

        async def login(s: UserSession) -> None:
            async with limit:
                await self._first_login(s)

        await asyncio.gather(*(login(s) for s in self.sessions))
        self.say(f"{len(self.sessions)} users logged in across {len(self.opts.entries)} "
                 f"entries ({time.monotonic() - t0:.1f} s)")
        t0 = time.monotonic()
        by_name = {s.user.username: s for s in self.sessions}
        for kind, members in plan_conversations([s.user.username for s in self.sessions],
                                                self.opts.groups):
            creator = by_name[members[0]]
            assert creator.client is not None
            if kind == "direct":
                conv = await creator.client.direct(members[1])
            else:
                conv = await creator.client.create_group(
                    f"drill {self.state.run_id} {len(self.state.conversations) + 1}", members[1:])
            self.state.conversations.append(DrillConversation(conv.conversation_id, kind, members))
        self.say(f"{len(self.state.conversations)} conversations ready "
                 f"({time.monotonic() - t0:.1f} s)")

    async def _first_login(self, s: UserSession) -> None:
        """At setup a failure is the operator's to fix (a wrong password, no such user)."""
        deadline = time.monotonic() + max(30.0, self.opts.connect_timeout * 2)
        while time.monotonic() < deadline:
            if await s._start(self.opts.register):
                return
            await asyncio.sleep(0.5)
        raise SetupError(f"{s.user.username} cannot log in through any entry; the errors are "
                         f"in {self.opts.state_dir / WORKLOAD_LOG}")

    async def run(self) -> None:
        """Send until stopped (SIGTERM, SIGINT) or ``duration`` has passed."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.state.started_at = now_ms()
        self.state.status = RUNNING
        write_state(self.opts.state_dir, self.state)
        self.log.write({"type": "start", "at": self.state.started_at, "run_id": self.state.run_id,
                        "users": len(self.sessions), "rate": self.opts.rate})
        convs: dict[str, list[DrillConversation]] = {s.user.username: [] for s in self.sessions}
        for c in self.state.conversations:
            for m in c.members:
                convs[m].append(c)
        interval = len(self.sessions) / self.opts.rate
        tasks = [asyncio.create_task(s.watch()) for s in self.sessions]
        tasks += [asyncio.create_task(self._sender(s, convs[s.user.username], interval,
                                                   i * interval / len(self.sessions)))
                  for i, s in enumerate(self.sessions)]
        if self.opts.duration > 0:
            loop.call_later(self.opts.duration, self.stopping.set)
        await self.stopping.wait()
        # Sends in flight get their ACK or their timeout; one waiting on a reconnect
        # that cannot succeed is ended by closing its client.
        _done, waiting = await asyncio.wait(tasks, timeout=self.opts.send_timeout)
        for sess in self.sessions:
            client, sess.client = sess.client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
        await asyncio.gather(*waiting, return_exceptions=True)

    async def _sender(self, s: UserSession, convs: list[DrillConversation], interval: float,
                      offset: float) -> None:
        if not convs:
            return
        loop = asyncio.get_running_loop()
        next_t = loop.time() + offset
        k = 0
        pending: tuple[str, str, int, int] | None = None  # conversation, client_msg_id, first, tries
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), max(0.0, next_t - loop.time()))
            if self.stopping.is_set():
                return
            next_t = max(next_t + interval, loop.time())  # late ticks are skipped, not bunched
            if pending is None:
                conv = convs[k % len(convs)].conversation_id
                k += 1
                pending = (conv, f"{self.state.run_id}.{s.user.username}.{k}", now_ms(), 0)
            if not await s.ensure():
                return
            pending = await self._send(s, *pending)

    async def _send(self, s: UserSession, conv: str, cid: str, first: int,
                    tries: int) -> tuple[str, str, int, int] | None:
        """One attempt; what is still to be sent (None: ACKed or refused)."""
        client = s.client
        if client is None:
            return conv, cid, first, tries
        tries += 1
        sent_at = now_ms()
        t0 = time.monotonic()
        self.sent += 1
        self.log.write({"type": "send", "at": sent_at, "user": s.user.username,
                        "conversation": conv, "client_msg_id": cid, "attempt": tries,
                        "entry": s.entry})
        try:
            ack = await client.send_text(conv, f"drill {cid}", cid)
        except TongxinError as exc:
            self._error(s, exc, cid)
            if exc.code in SESSION_CODES or exc.fatal:
                await s.drop(f"session refused: {_describe(exc)}")
            elif exc.code not in RETRY_CODES:
                self.refused += 1
                return None
            return conv, cid, first, tries
        except NETWORK_ERRORS as exc:
            # No ACK in time, or the client gave up: the same client_msg_id goes again on
            # the next tick (ensure() replaces a client that gave up).
            self._error(s, exc, cid)
            return conv, cid, first, tries
        self.acked += 1
        self.log.write({"type": "ack", "at": now_ms(), "user": s.user.username,
                        "user_id": s.user.user_id, "conversation": conv, "seq": ack.seq,
                        "client_msg_id": cid, "entry": s.entry, "sent_at": sent_at,
                        "first_sent_at": first, "attempt": tries,
                        "latency_ms": round((time.monotonic() - t0) * 1000, 1),
                        "duplicate": ack.duplicate})
        return None

    def _error(self, s: UserSession, exc: BaseException, cid: str) -> None:
        self.log.write({"type": "error", "at": now_ms(), "user": s.user.username,
                        "entry": s.entry, "op": "send", "client_msg_id": cid,
                        "error": _describe(exc)})

    async def close(self) -> None:
        for s in self.sessions:
            client, s.client = s.client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
        self.log.write({"type": "stop", "at": now_ms(), "sent": self.sent, "acked": self.acked,
                        "refused": self.refused,
                        "delivered": sum(s.delivered for s in self.sessions)})
        await self.log.close()


class SetupError(Exception):
    pass


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def run_workload(opts: Options, state: DrillState,
                       say: Callable[[str], None] = print) -> int:
    """The foreground workload: set up, write the state, send until stopped."""
    state.status = SETTING_UP
    state.pid = os.getpid()
    write_state(opts.state_dir, state)
    (opts.state_dir / PID).write_text(f"{state.pid}\n", encoding="ascii")
    w = Workload(opts, state, say)
    w.log.start()
    try:
        try:
            await w.setup()
        except (SetupError, TongxinError, *NETWORK_ERRORS) as exc:
            state.status, state.error = FAILED, _describe(exc)
            write_state(opts.state_dir, state)
            say(f"setup failed: {state.error}")
            return 1
        say(f"sending {opts.rate:g} msg/s from {len(w.sessions)} users "
            + (f"for {opts.duration:g} s" if opts.duration else "until `tongxin drill stop`"))
        await w.run()
    finally:
        await w.close()
        if state.status != FAILED:
            state.status = STOPPED
        state.stopped_at = now_ms()
        write_state(opts.state_dir, state)
        (opts.state_dir / PID).unlink(missing_ok=True)
    say(f"stopped: {w.sent} attempts, {w.acked} acknowledged, {w.refused} refused")
    return 0

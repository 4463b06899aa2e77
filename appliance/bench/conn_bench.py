#!/usr/bin/env python3
"""Connection-scale benchmark: many authenticated, heartbeating connections on one node.

    .venv/bin/python appliance/bench/conn_bench.py                      # 2,000 connections
    .venv/bin/python appliance/bench/conn_bench.py --connections 18000  # the full run
    .venv/bin/python appliance/bench/conn_bench.py --production --server-workers 7 \
        --connections 100000                                            # across workers

One ``tongxin serve`` on embedded defaults (a subprocess with a temp home of
its own, stopped by PID), or with ``--production`` on the production engines
of ``appliance/scripts/services.sh`` (MariaDB, Kafka, Redis Cluster: a fresh
database, topics and keys of its own; the engines it had to start it stops
again) with ``server.workers`` node processes sharing the port, and several
client processes (this file,
``--worker``), each holding its share of the connections: one process may
open 20,000 files at most, so no client process holds more than
``--per-worker``. Each client process connects from its own loopback source
address (127.0.0.2, 127.0.0.3, ...) so the ephemeral ports of one address
never run out. Every connection registers a user of its own (REGISTER
answers AUTH_OK: it is authenticated) and then sends PING at the
``heartbeat_interval_ms`` its AUTH_OK named, as the protocol asks.

Phases, in order, with a live probe throughout: one sender and one receiver
in a direct conversation (this process); a SEND every 50 ms, timed send ->
ACK and send -> DELIVER, separately for each phase:

* ``baseline``: no held connections (the probe alone): the comparison;
* ``open``: the client processes register their connections;
* ``hold``: all connections held and heartbeating for ``--hold`` seconds;
* ``close``: every client closes at once (close frame 1000); each counts
  whether the server's close frame came back within 15 s;
* ``storm``: every client reconnects at once with the SDK's jittered back-off
  (tongxin.client.Backoff) and resumes with its token; the time until all are
  back, every refusal on the way, and the clients never back (gave up at the
  back-off's deadline) are counted.

Between phases the node's /metrics (its own port) is read: RSS, open
connections, objects tracked by the cyclic GC per generation
(``tongxin_gc_objects``), and the difference of the pause histograms
(event-loop lag, GC pauses per generation) over each phase. With workers,
every worker's /metrics (``server.metrics_listen`` port + N) is read and the
samples are added up: connections, GC objects and RSS
(``process_resident_memory_bytes``) are the workers' totals, and the pause
histograms are those of all workers' observations together (their p99 and
maximum over every worker); the table adds the connections of the fullest
and the emptiest worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cluster_bench
from relay_bench import (
    HOST,
    BenchError,
    Children,
    Latencies,
    Pauses,
    Samples,
    Wire,
    _child_setup,
    _no_nan,
    bounded,
    free_port,
    machine_info,
    run_loop,
    sched_ns,
    server_config,
    wait_ready,
)

from tongxin.client.endpoints import Backoff
from tongxin.proto import tongxin_pb2 as pb

HERE = Path(__file__).resolve()
PASSWORD = "conn-bench-password-1"
MAX_CONNECTIONS = 19000  # the open-files limit of one server process (20,000) and slack
MAX_SERVER_WORKERS = 16
PROBE_INTERVAL = 0.05
CLOSE_REPLY_TIMEOUT = 15.0
CLOSE_GRACE = 15.0  # sending the close frame and ending the reader, beyond the reply's 15 s
# A client not back by then counts as refused for good: the SDK's own default
# (tongxin.client.Backoff.deadline), the point where a real client gives up.
STORM_DEADLINE = Backoff().deadline
PHASE_TIMEOUT = 240.0  # any one command to the client processes
SCRAPE_TIMEOUT = 300.0  # one worker's /metrics after a phase
CONNECT_TIMEOUT = 30.0


def log(msg: str) -> None:
    print(f"[conn-bench] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> int:
    """Soft open-files limit up to the hard one; children (server, clients) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return int(soft)


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


# ---- a client process ------------------------------------------------------------


class Held:
    """One held connection of a client process."""

    __slots__ = ("closing", "index", "next_ping", "pongs", "reader", "token", "wire")

    def __init__(self, index: int, wire: Wire, token: str, interval: float) -> None:
        self.index = index
        self.wire = wire
        self.token = token
        self.pongs = 0
        self.closing = False
        self.next_ping = time.monotonic() + interval * random.random()
        self.reader: asyncio.Task[None] | None = None


class Worker:
    """The connections one client process holds; commands come as JSON lines on stdin."""

    def __init__(self, url: str, first: int, count: int, source: str, prefix: str) -> None:
        self.url = url
        self.first = first
        self.count = count
        self.source = source
        self.prefix = prefix
        self.held: dict[int, Held] = {}
        self.tokens: dict[int, str] = {}
        self.interval = 30.0
        self.unexpected_closes = 0
        self.errors = 0
        self.pinger: asyncio.Task[None] | None = None
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=0, local_addr=(self.source, 0),
                                             force_close=True)
            self.session = aiohttp.ClientSession(connector=connector)
        return self.session

    async def _connect(self) -> Wire:
        ws = await self._session().ws_connect(
            self.url, autoping=True, max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_REPLY_TIMEOUT),
            compress=0)
        return Wire(ws)

    async def _auth(self, wire: Wire, ftype: int, msg: Any) -> pb.AuthResponse:
        try:
            payload = await asyncio.wait_for(wire.request(ftype, msg, pb.AUTH_OK), CONNECT_TIMEOUT)
        except BaseException:
            await wire.ws.close()
            raise
        return pb.AuthResponse.FromString(payload)

    def _hold(self, index: int, wire: Wire, ok: pb.AuthResponse) -> None:
        self.interval = ok.heartbeat_interval_ms / 1000 or self.interval
        h = Held(index, wire, ok.token, self.interval)
        h.reader = asyncio.create_task(self._read(h))
        self.held[index] = h

    async def _read(self, h: Held) -> None:
        async for msg in h.wire.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            whole = h.wire.read(msg.data)
            if whole is None:
                continue
            if whole.type == pb.PONG:
                h.pongs += 1
            elif whole.type == pb.ERROR:
                self.errors += 1
        if not h.closing:  # the server, not this process, ended the connection
            self.unexpected_closes += 1
            self.held.pop(h.index, None)

    async def _ping_all(self) -> None:
        """One timer for the process: each connection's PING when its interval is up."""
        while True:
            now = time.monotonic()
            for h in list(self.held.values()):
                if h.next_ping <= now and not h.wire.ws.closed:
                    h.next_ping = now + self.interval
                    _, data = h.wire.frame(pb.PING, pb.Ping(client_time_ms=int(time.time() * 1000)))
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await h.wire.ws.send_bytes(data)
            await asyncio.sleep(0.2)

    async def open(self, parallel: int) -> dict[str, Any]:
        sem = asyncio.Semaphore(parallel)
        failed: list[str] = []
        t0 = time.monotonic()

        async def one(i: int) -> None:
            # A refused or timed-out REGISTER (a busy node closes a connection
            # that has not authenticated within auth_timeout) is tried again, as
            # a client would; each failure is counted.
            for attempt in range(4):
                async with sem:
                    try:
                        wire = await self._connect()
                        ok = await self._auth(wire, pb.REGISTER if attempt % 2 == 0 else pb.AUTH,
                                              self._credentials(i, attempt))
                    except Exception as exc:
                        failed.append(repr(exc))
                        continue
                    self._hold(i, wire, ok)
                    return

        # Heartbeats from the start: an open phase longer than the idle timeout
        # (3 intervals) would otherwise lose its first connections to it.
        if self.pinger is None:
            self.pinger = asyncio.create_task(self._ping_all())
        await asyncio.gather(*(one(i) for i in range(self.first, self.first + self.count)))
        return {"opened": len(self.held), "failed": len(failed), "failures": failed[:5],
                "seconds": time.monotonic() - t0}

    def _credentials(self, i: int, attempt: int) -> Any:
        name = f"{self.prefix}{i}"
        if attempt % 2 == 0:
            return pb.RegisterRequest(username=name, password=PASSWORD, device_id="bench")
        # The first REGISTER may have been stored though its answer was lost: log in.
        return pb.AuthRequest(password=pb.PasswordCredentials(username=name, password=PASSWORD),
                              device_id="bench")

    def stats(self) -> dict[str, Any]:
        return {"held": len(self.held), "pongs": sum(h.pongs for h in self.held.values()),
                "unexpected_closes": self.unexpected_closes, "errors": self.errors,
                "interval": self.interval}

    async def close(self) -> dict[str, Any]:
        """Every connection sends its close frame at once; who got the server's reply in time."""
        held = list(self.held.values())
        self.held.clear()
        for h in held:
            h.closing = True
        t0 = time.monotonic()
        times: list[float] = []
        stuck = 0

        async def one(h: Held) -> bool:
            nonlocal stuck
            ws = h.wire.ws
            # close() from here hands the handshake to the reader, which is inside
            # receive(): it sends the close frame and reads until the server's
            # close frame comes (or ws_close, 15 s, passes). Cancelling the
            # reader instead would mark the socket closed without a handshake.
            # ws_close bounds only the wait for the reply, so the whole close is
            # bounded too: 100,000 closes at once on 7 workers once outlasted the
            # phase's 240 s, and the run ended with no close figures at all.
            try:
                async with asyncio.timeout(CLOSE_REPLY_TIMEOUT + CLOSE_GRACE):
                    with contextlib.suppress(Exception):
                        await ws.close()
                        if h.reader is not None:
                            await h.reader
            except TimeoutError:
                stuck += 1
                if h.reader is not None:
                    h.reader.cancel()
                ws._response.close()  # drop the socket: no handshake will come
                return False
            # aiohttp's close() gives up after ws_close (15 s) with 1006 and the
            # timeout as the exception; the server's own code means its reply came.
            replied = ws.close_code not in (None, aiohttp.WSCloseCode.ABNORMAL_CLOSURE) \
                and ws.exception() is None
            if replied:
                times.append(time.monotonic() - t0)
            return replied

        replies = await asyncio.gather(*(one(h) for h in held))
        self.tokens = {h.index: h.token for h in held}
        return {"closed": len(held), "replied": sum(replies), "reply_times": times,
                "stuck": stuck}

    async def storm(self, deadline: float) -> dict[str, Any]:
        """All reconnect at once, each with the SDK's back-off, and resume with the token."""
        policy = Backoff(deadline=deadline)
        refusals: dict[str, int] = {}
        back_at: list[float] = []
        attempts: list[int] = []
        gave_up = 0
        t0 = time.monotonic()
        rng = random.Random()

        async def one(index: int, token: str) -> None:
            nonlocal gave_up
            attempt = 0
            while True:
                await asyncio.sleep(policy.delay(attempt, rng))
                attempt += 1
                try:
                    # Bounded like the AUTH: the handshake itself has only the
                    # session's 300 s default, and 100,000 reconnecting clients
                    # ran past the phase's bound waiting on it (run 3).
                    wire = await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT)
                    ok = await self._auth(wire, pb.AUTH, pb.AuthRequest(token=token,
                                                                         device_id="bench"))
                except Exception as exc:
                    kind = type(exc).__name__
                    if isinstance(exc, aiohttp.WSServerHandshakeError):
                        kind = f"http {exc.status}"
                    elif isinstance(exc, BenchError):
                        # The server's answer: an ERROR frame's code, or its close.
                        kind = str(exc).split(":")[0][:60]
                    refusals[kind] = refusals.get(kind, 0) + 1
                    if time.monotonic() - t0 + policy.delay(attempt, rng) > deadline:
                        gave_up += 1
                        return
                    continue
                self._hold(index, wire, ok)
                back_at.append(time.monotonic() - t0)
                attempts.append(attempt)
                return

        await asyncio.gather(*(one(i, t) for i, t in self.tokens.items()))
        return {"back": len(back_at), "gave_up": gave_up, "refusals": refusals,
                "back_times": back_at, "attempts_max": max(attempts, default=0),
                "retried": sum(1 for a in attempts if a > 1)}

    async def quit(self) -> None:
        if self.pinger is not None:
            self.pinger.cancel()
        for h in self.held.values():
            if h.reader is not None:
                h.reader.cancel()
            transport = h.wire.ws._response.connection  # drop: the server is stopped next
            if transport is not None:
                transport.close()
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self.session.close()


async def worker_main(args: argparse.Namespace) -> int:
    w = Worker(args.url, args.first, args.count, args.source, args.prefix)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(doc: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    answer({"ready": True})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "open":
            answer(await w.open(cmd["parallel"]))
        elif op == "stats":
            answer(w.stats())
        elif op == "close":
            answer(await w.close())
        elif op == "storm":
            answer(await w.storm(cmd["deadline"]))
        elif op == "quit":
            break
    await w.quit()
    return 0


# ---- the orchestrator ---------------------------------------------------------------


class ClientProc:
    """A client process started by this script, spoken to by JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, doc: dict[str, Any], limit: float = PHASE_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(doc) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.read(limit)

    async def read(self, limit: float = PHASE_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), limit)
        if not line:
            raise RuntimeError(f"client process {self.proc.pid} exited ({self.proc.returncode})")
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)


class Probe:
    """A SEND every 50 ms from one user to another; send -> ACK and -> DELIVER per phase."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.phase = "setup"
        self.ack: dict[str, Latencies] = {}
        self.deliver: dict[str, Latencies] = {}
        self.sent: dict[str, int] = {}
        self.pending: dict[int, tuple[str, int]] = {}
        self.errors = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.wires: list[Wire] = []
        self.interval = 30.0

    async def start(self, session: aiohttp.ClientSession, tag: str) -> None:
        self.sender = Wire(await session.ws_connect(self.url, compress=0))
        self.receiver = Wire(await session.ws_connect(self.url, compress=0))
        self.wires = [self.sender, self.receiver]
        for wire, name in ((self.sender, "s"), (self.receiver, "r")):
            peer = pb.AuthResponse.FromString(await wire.request(pb.REGISTER, pb.RegisterRequest(
                username=f"probe{tag}{name}", password=PASSWORD, device_id="probe"), pb.AUTH_OK))
        self.interval = peer.heartbeat_interval_ms / 1000
        info = pb.Conversation.FromString(await self.sender.request(
            pb.CONV_CREATE, pb.CreateConversation(kind=pb.DIRECT, member_ids=[peer.user_id]),
            pb.CONV_INFO))
        self.conversation_id = info.conversation_id
        self.tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._acks()),
                      asyncio.create_task(self._delivers()), asyncio.create_task(self._ping())]

    async def _ping(self) -> None:
        # The receiver sends nothing else, and a silent connection is closed as idle.
        while True:
            await asyncio.sleep(self.interval / 2)
            _, data = self.receiver.frame(pb.PING, pb.Ping(client_time_ms=int(time.time() * 1000)))
            await self.receiver.ws.send_bytes(data)

    def _lat(self, table: dict[str, Latencies], phase: str) -> Latencies:
        lat = table.get(phase)
        if lat is None:
            lat = table[phase] = Latencies()
        return lat

    async def _send(self) -> None:
        n = 0
        next_at = time.monotonic()
        while True:
            n += 1
            t = time.perf_counter_ns()
            seq, data = self.sender.frame(pb.SEND, pb.SendRequest(
                conversation_id=self.conversation_id, client_msg_id=f"{t}:{self.phase}:{n}",
                content=pb.Content(text="probe")))
            self.pending[seq] = (self.phase, t)
            self.sent[self.phase] = self.sent.get(self.phase, 0) + 1
            await self.sender.ws.send_bytes(data)
            next_at += PROBE_INTERVAL
            # A late loop sends the next one at once but never catches up in a burst.
            next_at = max(next_at, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())

    async def _acks(self) -> None:
        async for msg in self.sender.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            now = time.perf_counter_ns()
            whole = self.sender.read(msg.data)
            if whole is None:
                continue
            sent = self.pending.pop(whole.seq, None)
            if whole.type == pb.ERROR:
                self.errors += 1
            elif whole.type == pb.ACK and sent is not None:
                self._lat(self.ack, sent[0]).add(now - sent[1])

    async def _delivers(self) -> None:
        async for msg in self.receiver.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            now = time.perf_counter_ns()
            whole = self.receiver.read(msg.data)
            if whole is None or whole.type != pb.DELIVER:
                continue
            m = pb.Message.FromString(whole.payload)
            if m.kind != pb.CHAT:
                continue
            t, phase, _ = m.client_msg_id.split(":", 2)
            self._lat(self.deliver, phase).add(now - int(t))

    def summary(self, phase: str) -> dict[str, Any]:
        a, d = self.ack.get(phase, Latencies()), self.deliver.get(phase, Latencies())
        return {"sent": self.sent.get(phase, 0), "acked": a.n, "delivered": d.n,
                "ack_p50_ms": a.percentile_ms(0.5), "ack_p99_ms": a.percentile_ms(0.99),
                "ack_max_ms": a.max / 1e6, "deliver_p50_ms": d.percentile_ms(0.5),
                "deliver_p99_ms": d.percentile_ms(0.99), "deliver_max_ms": d.max / 1e6}

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for wire in self.wires:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(wire.ws.close(), 5)


@dataclass
class Snapshot:
    at: float
    rss: int
    connections: float
    gc_objects: dict[str, float]
    samples: Samples = field(repr=False)
    # Connections of each worker (one entry without workers).
    per_worker: list[float] = field(default_factory=list)
    # Seconds the slowest worker took to answer /metrics: a worker whose loop is
    # busy (a mass close's teardowns) answers late.
    metrics_wait: float = 0.0


@dataclass
class Server:
    """The node under test: one process, or a supervisor and its workers."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics_urls: list[str]
    log_path: Path


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (a supervisor's workers)."""
    out = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        if ppid == pid:
            out.append(int(entry.name))
    return out


def sched_of(pids: list[int]) -> tuple[int, int]:
    """(on-CPU ns, runnable-but-waiting ns) summed over processes."""
    run = wait = 0
    for pid in pids:
        r, w = sched_ns(pid)
        run, wait = run + r, wait + w
    return run, wait


def scrape(server: Server) -> Snapshot:
    # Summing each sample over the workers gives the totals of the gauges
    # (connections, GC objects, RSS) and, for a histogram, the histogram of
    # every worker's observations together (its buckets are cumulative counts).
    samples: Samples = {}
    per_worker = []
    slowest = 0.0
    for url in server.metrics_urls:
        # Patient: a worker tearing down 14,000 closed connections answered its
        # /metrics after more than 30 s (the 100,000-connection runs), and that
        # is a figure of the run, not a reason to end it.
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as resp:
                one = Pauses.parse(resp.read().decode())
        except TimeoutError:
            raise BenchError(f"{url} did not answer within {SCRAPE_TIMEOUT:g} s") from None
        slowest = max(slowest, time.monotonic() - t0)
        per_worker.append(one.get(("tongxin_connections", ()), math.nan))
        for key, value in one.items():
            samples[key] = samples.get(key, 0.0) + value
    objs = {dict(lab)["generation"]: v for (n, lab), v in samples.items()
            if n == "tongxin_gc_objects"}
    # One process: its RSS from /proc (what the earlier runs in docs/performance.md
    # used); workers: theirs from /metrics, the supervisor's few MB left out.
    rss = (rss_bytes(server.proc.pid) if len(server.metrics_urls) == 1
           else int(samples.get(("process_resident_memory_bytes", ()), 0)))
    return Snapshot(time.monotonic(), rss, samples.get(("tongxin_connections", ()), math.nan),
                    objs, samples, per_worker, slowest)


def snap_doc(s: Snapshot) -> dict[str, Any]:
    tracked = sum(v for k, v in s.gc_objects.items() if k != "frozen")
    # gc_tracked: what a full collection examines; gc_all: that and the frozen ones.
    return {"rss_mb": s.rss / 2**20, "connections": s.connections,
            "gc_tracked": tracked, "gc_all": tracked + s.gc_objects.get("frozen", 0),
            "gc_objects": s.gc_objects, "connections_per_worker": s.per_worker,
            "metrics_wait_s": s.metrics_wait}


def consecutive_free_ports(n: int) -> int:
    """The first of ``n`` free ports in a row (worker N's /metrics is on base + N)."""
    for _ in range(200):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind((HOST, p))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {n} free ports in a row on {HOST}")


def start_embedded(args: argparse.Namespace, workdir: Path, children: Children) -> Server:
    port, metrics_port = free_port(), free_port()
    cfg = server_config(workdir / "data", port, "normal", metrics_port)
    if args.heartbeat:
        cfg = cfg.replace("server:\n", f"server:\n  heartbeat_interval: {args.heartbeat}\n", 1)
    (workdir / "tongxin.yml").write_text(cfg)
    log_path = workdir / "server.log"
    proc = children.start([sys.executable, "-m", "tongxin.cli.main", "serve", "--config",
                           str(workdir / "tongxin.yml")], log_path, None)
    wait_ready(proc, port, log_path)
    return Server(proc, port, [f"http://{HOST}:{metrics_port}/metrics"], log_path)


def start_production(args: argparse.Namespace, workdir: Path, children: Children,
                     env: dict[str, str], tag: str) -> Server:
    port, metrics_base = free_port(), consecutive_free_ports(args.server_workers)
    dsn = cluster_bench.fresh_database(env["TONGXIN_MYSQL_DSN"], f"tongxin_connb_{tag}")
    cfg = cluster_bench.production(cluster_bench._common(port, workdir / "data", "connb"),
                                   env, dsn, tag)
    cfg["server"].update(workers=args.server_workers, metrics_listen=f"{HOST}:{metrics_base}")
    if args.heartbeat:
        cfg["server"]["heartbeat_interval"] = args.heartbeat
    path = workdir / "tongxin.json"  # JSON is YAML
    path.write_text(json.dumps(cfg), encoding="utf-8")
    log_path = workdir / "server.log"
    proc = children.start([sys.executable, "-m", "tongxin.cli.main", "serve", "--config",
                           str(path)], log_path, None)
    urls = [f"http://{HOST}:{metrics_base + i}/metrics" for i in range(args.server_workers)]
    # Every worker listening on the public port, or the kernel spreads the
    # connections over the ones that are.
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log_path)}")
        running = log_path.read_text(errors="replace").count(" is running on ")
        if running >= args.server_workers:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{running} of {args.server_workers} workers up after 180 s:\n"
                               f"{_tail(log_path)}")
        time.sleep(0.2)
    wait_ready(proc, port, log_path)
    return Server(proc, port, urls, log_path)


async def run(args: argparse.Namespace, workdir: Path, children: Children,
              env: dict[str, str], tag: str) -> dict[str, Any]:
    if args.production:
        server = await asyncio.to_thread(start_production, args, workdir, children, env, tag)
    else:
        server = await asyncio.to_thread(start_embedded, args, workdir, children)
    proc, log_path = server.proc, server.log_path
    url = f"ws://{HOST}:{server.port}/ws"
    log(f"server pid {proc.pid} ready on {HOST}:{server.port} "
        f"({len(server.metrics_urls)} worker(s))")

    phases: dict[str, dict[str, Any]] = {}
    snaps: dict[str, dict[str, Any]] = {}
    clients: list[ClientProc] = []
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    probe = Probe(url)
    try:
        await probe.start(session, "")
        snap = await asyncio.to_thread(scrape, server)
        snaps["start"] = snap_doc(snap)

        server_pids = process_tree(proc.pid)

        async def phase(name: str, work: Any) -> Any:
            nonlocal snap
            probe.phase = name
            # Who had the CPU: on two cores shared with the clients, a phase that
            # starves the server (waiting cores) is told apart from an idle one.
            client_pids = [c.proc.pid for c in clients]
            cpu0 = sched_of(server_pids), sched_of(client_pids)
            t0 = time.monotonic()
            result = await work
            elapsed_ns = (time.monotonic() - t0) * 1e9
            cpu1 = sched_of(server_pids), sched_of(client_pids)
            cpu = {f"{who}_{kind}_cores": round((cpu1[i][j] - cpu0[i][j]) / elapsed_ns, 3)
                   for i, who in enumerate(("server", "clients"))
                   for j, kind in enumerate(("on_cpu", "waiting"))}
            before, snap = snap, await asyncio.to_thread(scrape, server)
            phases[name] = {"seconds": time.monotonic() - t0, "cpu": cpu,
                            "probe": probe.summary(name),
                            "pauses": Pauses.between(before.samples, snap.samples),
                            "server": snap_doc(snap),
                            "loadavg_1m": round(os.getloadavg()[0], 2)}
            # Kept as the run goes: a run that fails later still leaves its phases.
            args.out.write_text(json.dumps(_no_nan({"partial": True, "phases": phases})))
            log(f"{name}: {time.monotonic() - t0:.1f}s, probe ack p99 "
                f"{phases[name]['probe']['ack_p99_ms']:.1f} ms, server RSS "
                f"{snap.rss / 2**20:.0f} MB, {snap.connections:g} connections")
            return result

        await phase("baseline", asyncio.sleep(args.baseline))

        n_proc = max(args.min_workers, math.ceil(args.connections / args.per_worker))
        share = [args.connections // n_proc + (1 if i < args.connections % n_proc else 0)
                 for i in range(n_proc)]
        first = 0
        here = HERE
        for i, count in enumerate(share):
            p = await asyncio.create_subprocess_exec(
                sys.executable, str(here), "--worker", "--url", url, "--first", str(first),
                "--count", str(count), "--source", f"127.0.0.{2 + i}", "--prefix", "c",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=64 * 2**20,
                start_new_session=True, preexec_fn=_child_setup(None))
            clients.append(ClientProc(p))
            first += count
        await asyncio.gather(*(c.read(30) for c in clients))

        async def all_of(doc: dict[str, Any], limit: float = PHASE_TIMEOUT) -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(c.ask(doc, limit) for c in clients)))

        parallel = max(1, args.parallel // n_proc)
        # Registrations go at 30-300 a second here (scrypt, the store's writes,
        # presence, the audit record), fewest on the production engines under load.
        open_limit = PHASE_TIMEOUT + args.connections / 20
        opened = await phase("open", all_of({"op": "open", "parallel": parallel}, open_limit))
        phases["open"]["opened"] = sum(o["opened"] for o in opened)
        phases["open"]["failed"] = sum(o["failed"] for o in opened)
        phases["open"]["failures"] = [f for o in opened for f in o["failures"]][:5]
        before_hold = await all_of({"op": "stats"})

        await phase("hold", asyncio.sleep(args.hold))
        held = await all_of({"op": "stats"})
        phases["hold"]["held"] = sum(s["held"] for s in held)
        phases["hold"]["pongs"] = (sum(s["pongs"] for s in held)
                                   - sum(s["pongs"] for s in before_hold))
        phases["hold"]["unexpected_closes"] = sum(s["unexpected_closes"] for s in held)
        phases["hold"]["error_frames"] = sum(s["errors"] for s in held)
        phases["hold"]["heartbeat_interval_s"] = held[0]["interval"]

        closes = await phase("close", all_of({"op": "close"}))
        times = [t for c in closes for t in c["reply_times"]]
        phases["close"].update(
            closed=sum(c["closed"] for c in closes), replied=sum(c["replied"] for c in closes),
            stuck=sum(c["stuck"] for c in closes),
            reply_p50_s=pct(times, 0.5), reply_p99_s=pct(times, 0.99),
            reply_max_s=max(times, default=math.nan))
        await phase("after-close", asyncio.sleep(args.settle))

        storms = await phase("storm", all_of({"op": "storm", "deadline": STORM_DEADLINE},
                                             STORM_DEADLINE + CONNECT_TIMEOUT + 60))
        back = [t for s in storms for t in s["back_times"]]
        refusals: dict[str, int] = {}
        for s in storms:
            for k, v in s["refusals"].items():
                refusals[k] = refusals.get(k, 0) + v
        phases["storm"].update(
            back=len(back), gave_up=sum(s["gave_up"] for s in storms), refusals=refusals,
            all_back_s=max(back, default=math.nan), back_p50_s=pct(back, 0.5),
            retried=sum(s["retried"] for s in storms),
            attempts_max=max(s["attempts_max"] for s in storms))
        await phase("after-storm", asyncio.sleep(args.settle))
        if proc.poll() is not None:
            raise RuntimeError("the server died during the run")
        # server/workers.py prints this when it restarts a worker that died.
        restarts = log_path.read_text(errors="replace").count("; restarting")
        return {"phases": phases, "start": snaps["start"], "probe_errors": probe.errors,
                "client_processes": n_proc, "server_workers": len(server.metrics_urls),
                "worker_restarts": restarts, "server_log_tail": _tail(log_path)}
    finally:
        await probe.stop()
        for c in clients:
            with contextlib.suppress(Exception):
                await c.ask({"op": "quit"}, 0.5)
        await asyncio.sleep(0.5)
        for c in clients:
            c.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.proc.wait(), 5)
        await session.close()
        children.stop(proc)


def _tail(path: Path) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if "WARNING" in line or "ERROR" in line][-10:]


def fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def cores(cpu: dict[str, float] | None) -> str:
    if not cpu:  # a JSON from before the column
        return "-"
    return (f"{cpu['server_on_cpu_cores']:.2f} ({cpu['server_waiting_cores']:.2f}) / "
            f"{cpu['clients_on_cpu_cores']:.2f} ({cpu['clients_waiting_cores']:.2f})")


def print_table(doc: dict[str, Any]) -> None:
    m, p, r = doc["machine"], doc["params"], doc["result"]
    where = (f"production engines, {r['server_workers']} server workers"
             if p.get("production") else "embedded defaults, one server process")
    print(f"Server: {where}")
    print(f"Connections: {p['connections']} held by {r['client_processes']} client processes, "
          f"hold {p['hold']:g}s, heartbeat {r['phases']['hold'].get('heartbeat_interval_s', 0):g}s; "
          f"{m['cpus_allowed']} CPUs ({m['cpu_model']}), Python {m['python']}, "
          f"load average {m['loadavg_1m']} at start; commit {doc['commit']}")
    print()
    print("| phase | s | probe ACK p50 / p99 / max ms | DELIVER p50 / p99 ms | loop lag p99 / max ms "
          "| GC runs (gen 0/1/2) | GC max ms | GC total ms | RSS MB | conns | GC objs (not frozen) "
          "| load | cores: server (waiting) / clients (waiting) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, ph in r["phases"].items():
        pr, pa, sv = ph["probe"], ph["pauses"], ph["server"]
        gcs = "/".join(str(pa["gc_collections"].get(g, 0)) for g in "012")
        print(f"| {name} | {ph['seconds']:.1f} | {fmt(pr['ack_p50_ms'])} / {fmt(pr['ack_p99_ms'])} / "
              f"{fmt(pr['ack_max_ms'])} | {fmt(pr['deliver_p50_ms'])} / {fmt(pr['deliver_p99_ms'])} | "
              f"<={fmt(pa['loop_lag_p99_ms_at_most'], 'g')} / <={fmt(pa['loop_lag_max_ms_at_most'], 'g')}"
              f" | {gcs} | <={fmt(pa['gc_pause_max_ms_at_most'], 'g')} | {pa['gc_pause_total_ms']:.0f} "
              f"| {sv['rss_mb']:.0f} | {sv['connections']:g} | {sv['gc_all']:.0f} ({sv['gc_tracked']:.0f}) "
              f"| {ph['loadavg_1m']} | {cores(ph.get('cpu'))} |")
    print()
    s = doc["summary"]
    for k, v in s.items():
        print(f"  {k}: {fmt(v, '.2f') if isinstance(v, float) else v}")


def summarize(p: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    ph = r["phases"]
    n = max(1, ph["open"]["opened"])
    base = ph["baseline"]["server"]
    held = ph["hold"]["server"]
    return {
        "opened": ph["open"]["opened"], "open_failed": ph["open"]["failed"],
        "open_seconds": ph["open"]["seconds"],
        "baseline_probe_ack_p99_ms": ph["baseline"]["probe"]["ack_p99_ms"],
        "hold_probe_ack_p99_ms": ph["hold"]["probe"]["ack_p99_ms"],
        "hold_probe_deliver_p99_ms": ph["hold"]["probe"]["deliver_p99_ms"],
        "hold_unexpected_closes": ph["hold"]["unexpected_closes"],
        "hold_pongs": ph["hold"]["pongs"],
        "server_kb_per_connection": (held["rss_mb"] - base["rss_mb"]) * 1024 / n,
        "gc_objects_per_connection": (held["gc_all"] - base["gc_all"]) / n,
        "gc_examined_per_connection": (held["gc_tracked"] - base["gc_tracked"]) / n,
        "hold_gc_pause_max_ms_at_most": ph["hold"]["pauses"]["gc_pause_max_ms_at_most"],
        "hold_loop_lag_max_ms_at_most": ph["hold"]["pauses"]["loop_lag_max_ms_at_most"],
        "close_replied": ph["close"]["replied"], "close_closed": ph["close"]["closed"],
        "close_reply_p99_s": ph["close"]["reply_p99_s"],
        "close_not_ended_in_30s": ph["close"]["stuck"],
        "close_metrics_wait_s": ph["close"]["server"]["metrics_wait_s"],
        "rss_after_close_mb": ph["after-close"]["server"]["rss_mb"],
        "storm_back": ph["storm"]["back"], "storm_gave_up": ph["storm"]["gave_up"],
        "storm_all_back_s": ph["storm"]["all_back_s"], "storm_refusals": ph["storm"]["refusals"],
        "storm_probe_ack_p99_ms": ph["storm"]["probe"]["ack_p99_ms"],
        "rss_after_storm_mb": ph["after-storm"]["server"]["rss_mb"],
        "server_workers": r["server_workers"], "worker_restarts": r["worker_restarts"],
        "hold_connections_per_worker_min": min(held["connections_per_worker"], default=math.nan),
        "hold_connections_per_worker_max": max(held["connections_per_worker"], default=math.nan),
    }


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "bench"],
                               capture_output=True, text=True, cwd=Path(__file__).parent.parent,
                               timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--connections", type=bounded(int, 1, MAX_CONNECTIONS * MAX_SERVER_WORKERS),
                   default=2000,
                   help=f"connections to hold (default 2000; the full run: 18000; at most "
                        f"{MAX_CONNECTIONS} per server process)")
    p.add_argument("--production", action="store_true",
                   help="run the node on the production engines (services.sh: MariaDB, Kafka, "
                        "Redis Cluster) instead of embedded defaults")
    p.add_argument("--server-workers", type=bounded(int, 1, MAX_SERVER_WORKERS), default=1,
                   help="server.workers: node processes sharing the port (more than 1 needs "
                        "--production)")
    p.add_argument("--keep-engines", action="store_true",
                   help="--production: leave running the engines this run started")
    p.add_argument("--hold", type=bounded(float, 1, 300), default=40.0,
                   help="seconds all connections are held (default 40: longer than one "
                        "heartbeat interval, 30 s +-20%%)")
    p.add_argument("--baseline", type=bounded(float, 1, 60), default=8.0,
                   help="seconds of the probe alone before any connection (default 8)")
    p.add_argument("--settle", type=bounded(float, 0, 60), default=5.0,
                   help="seconds after the mass close and after the storm before RSS is read")
    p.add_argument("--heartbeat", type=bounded(float, 1, 300), default=None,
                   help="server.heartbeat_interval (default: the node's, 30 s)")
    p.add_argument("--per-worker", type=bounded(int, 100, 19000), default=5000,
                   help="connections per client process at most (default 5000)")
    p.add_argument("--min-workers", type=bounded(int, 1, 16), default=2,
                   help="client processes at least (default 2)")
    p.add_argument("--parallel", type=bounded(int, 1, 2000), default=64,
                   help="registrations in flight over all client processes (default 64)")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "conn_bench.json",
                   help="JSON result file (default: $TMPDIR/conn_bench.json)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--source", default=HOST, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="c", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.server_workers > 1 and not args.production:
        p.error("--server-workers above 1 needs --production (each worker is a node of its "
                "own: Kafka for delivery, Redis for presence)")
    if not args.worker and args.connections > MAX_CONNECTIONS * args.server_workers:
        p.error(f"--connections {args.connections}: at most {MAX_CONNECTIONS} per server "
                f"process (its open-files limit); use --production --server-workers "
                f"{math.ceil(args.connections / MAX_CONNECTIONS)} or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile()
    if args.worker:
        return run_loop(worker_main(args))
    if math.ceil(args.connections / args.server_workers) + 200 > nofile:
        log(f"warning: the open-files limit is {nofile}; a server process needs one per "
            f"connection it holds")
    workdir = Path(tempfile.mkdtemp(prefix="tongxin-conn-bench-"))
    children = Children()

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    machine = machine_info(workdir, sorted(os.sched_getaffinity(0)), (None, None))
    params = {k: getattr(args, k) for k in ("connections", "hold", "baseline", "settle",
                                            "heartbeat", "per_worker", "parallel",
                                            "production", "server_workers")}
    env: dict[str, str] = {}
    started: list[str] = []
    tag = uuid.uuid4().hex[:8]
    try:
        if args.production:
            env, started = cluster_bench.ensure_engines()
        result = run_loop(run(args, workdir, children, env, tag))
    except KeyboardInterrupt:
        log("interrupted; stopping the server and the client processes")
        return 130
    except (BenchError, RuntimeError) as exc:
        log(f"failed: {exc}")
        return 1
    except TimeoutError:
        log(f"failed: a phase did not end within its bound; what was measured until then "
            f"is in {args.out}")
        return 1
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        if args.production and env:
            run_loop(cluster_bench._forget_kafka_and_redis(env, tag))
            with contextlib.suppress(Exception):
                run_loop(cluster_bench._mysql(env["TONGXIN_MYSQL_DSN"],
                                              f"DROP DATABASE IF EXISTS `tongxin_connb_{tag}`"))
        if started and not args.keep_engines:
            log(f"stopping the engines this run started: {' '.join(started)}")
            cluster_bench.services("stop", *started)
    doc = {"machine": machine, "params": params, "commit": commit(), "result": result,
           "loadavg_end": os.getloadavg()}
    doc["summary"] = summarize(params, result)
    doc = _no_nan(doc)
    args.out.write_text(json.dumps(doc, indent=2))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
        print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""1:1 relay benchmark: Tongxin on embedded defaults beside a bare aiohttp echo server.

    .venv/bin/python appliance/bench/relay_bench.py            # or: make bench
    .venv/bin/python appliance/bench/relay_bench.py --pairs 20 --window 4 --json

Every server runs in a subprocess of its own (started by this script, stopped
by PID); the load generator is this process. With at least two CPUs the server
is pinned to the first allowed CPU and the generator to the second, so each
side has one core (--no-pin turns that off).

Scenarios, each on a fresh server and data directory:

* ``echo``: a tiny aiohttp WebSocket server (this file, ``--echo-server PORT``)
  sending every binary message back. N connections, each keeping ``window``
  frames in flight; latency is send -> echo, throughput is echoes/s.
* ``bare-relay``: bench/bare_relay.py, the floor of a relay on this stack
  (aiohttp and the wire format: SEND answered with an ACK and pushed as a
  DELIVER, REGISTER and CONV_CREATE answered, nothing stored). The echo
  baseline is bounded by the generator; this one is the server-side
  comparison for the node (target: at least half of it).
* ``relay-full`` / ``relay-normal``: ``tongxin serve`` (SQLite in WAL mode,
  group commit, in-process delivery bus) with ``storage.sqlite_synchronous``
  full or normal. N sender/receiver pairs, each sender in a direct
  conversation with its receiver, keeping ``window`` SENDs in flight; latency
  is send -> ACK (sent after the commit), throughput is DELIVER
  frames received by the receivers per second; e2e is send -> DELIVER.

The generator speaks raw frames (tongxin.wire.codec Encoder; Decoder for any
compressed or fragmented frame, a header-only fast path otherwise), not the
SDK: no per-request lock, timeout or event queue, so it stays the lighter side.
The echo scenario sends frames of exactly the size of the relay's SEND frames.
Only counts from the measurement window (after the warm-up) are reported; each
message's latency counts if it was sent inside the window.

For the node (relay-* scenarios) the server's own pauses in the measured
window are read from its ``/metrics`` at the window's start and end:
event-loop lag (``tongxin_event_loop_lag_seconds``, p99 and max) and cyclic GC
(``tongxin_gc_pause_seconds``: collections, their total time, the longest).
The histograms give the p99 and maxima as bucket bounds ("<="); the totals
are exact.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiohttp
from aiohttp import web
from google.protobuf.message import Message as PbMessage
from prometheus_client.parser import text_string_to_metric_families

from tongxin.proto import tongxin_pb2 as pb
from tongxin.wire.codec import Decoder, Encoder, WireLimits
from tongxin.wire.frame import HEADER, HEADER_SIZE, VERSION, decode_frame

try:
    import uvloop

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    HAVE_UVLOOP = False

T = TypeVar("T")

HOST = "127.0.0.1"
PASSWORD = "bench-password-1"
MAX_PAIRS = 1000
MAX_WINDOW = 1024
MAX_DURATION = 300.0
MAX_WARMUP = 60.0
MAX_PAYLOAD = 16384  # chat.max_text_length
READY_TIMEOUT = 30.0
SETUP_TIMEOUT = 120.0
DRAIN_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 15.0  # receivers send nothing else; the server closes idle sockets
STOP_TIMEOUT = 10.0
GENERATOR_BUSY_PCT = 80.0  # above this the generator, not the server, may set the pace
LIMITS = WireLimits()


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---- subprocesses ----------------------------------------------------------------


def _child_setup(cpu: int | None) -> Callable[[], None]:
    """Runs in the child before exec: pin to ``cpu``, die with the parent (Linux)."""

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if sys.platform.startswith("linux"):
            with contextlib.suppress(Exception):
                pr_set_pdeathsig = 1
                ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)

    return setup


class Children:
    """Every subprocess this script starts, so that all of them are stopped by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log_path: Path, cpu: int | None) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, preexec_fn=_child_setup(cpu))
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"pid {proc.pid} ignored SIGTERM for {STOP_TIMEOUT:g}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    url = f"http://{HOST}:{port}/readyz"
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise BenchError(f"{url} not ready within {READY_TIMEOUT:g}s:\n{tail(log_path)}")


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def sched_ns(pid: int) -> tuple[int, int]:
    """(on-CPU ns, runnable-but-waiting ns) summed over a process's threads (Linux).

    The second number is time the process was ready to run but the CPU was
    busy with something else: on a shared machine it tells starvation apart
    from idling. (0, 0) where /proc/<pid>/task/*/schedstat is unavailable.
    """
    run = wait = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0, 0
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue  # the thread ended meanwhile
        run += int(fields[0])
        wait += int(fields[1])
    return run, wait


def server_config(data_dir: Path, port: int, synchronous: str,
                  metrics_port: int | None = None) -> str:
    # Embedded defaults except: no rate limit (it would cap each sender at
    # 20/s), cheap scrypt (registration is setup, not the measured path),
    # quiet logs, no web client; /metrics on ``metrics_port`` when given.
    metrics = f"  metrics_listen: \"{HOST}:{metrics_port}\"\n" if metrics_port else ""
    return (
        f"data_dir: {json.dumps(str(data_dir))}\n"
        "node_id: bench\n"
        "server:\n"
        f"  listen: \"{HOST}:{port}\"\n"
        f"{metrics}"
        "  web_client: false\n"
        "storage:\n"
        f"  sqlite_synchronous: {synchronous}\n"
        "accounts:\n"
        "  self_registration: true\n"
        "  scrypt_n: 1024\n"
        "chat:\n"
        "  rate_limit_per_second: 0\n"
        "logging:\n"
        "  level: warning\n"
    )


# ---- the echo server (runs as a subprocess of this script) -----------------------


def echo_server_main(port: int) -> int:
    from bare_relay import serve_until_stopped

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, autoping=True, heartbeat=None,
                                   max_msg_size=2 * LIMITS.max_frame_payload)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    return run_loop(serve_until_stopped(app, port))


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    if HAVE_UVLOOP:
        result: T = uvloop.run(coro)
        return result
    return asyncio.run(coro)


# ---- the load generator ----------------------------------------------------------


class BenchError(Exception):
    pass


@dataclass
class Phase:
    """Nanosecond perf_counter bounds: warm-up until ``measure_from``, then measured."""

    measure_from: int
    end: int

    def measured(self, t: int) -> bool:
        return self.measure_from <= t < self.end


class Whole(NamedTuple):
    """One whole received message: frame type, header seq, (decompressed) payload."""

    type: int
    seq: int
    payload: bytes


class Wire:
    """One WebSocket speaking raw Tongxin frames."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seq = 0
        self.encoder = Encoder(LIMITS)
        self.decoder = Decoder(LIMITS)

    def frame(self, ftype: int, msg: PbMessage) -> tuple[int, bytes]:
        return self.frame_bytes(ftype, msg.SerializeToString())

    def frame_bytes(self, ftype: int, payload: bytes) -> tuple[int, bytes]:
        self.seq += 1
        frames = self.encoder.encode(ftype, self.seq, payload)
        if len(frames) != 1:
            raise BenchError("benchmark frames must not be fragmented")
        return self.seq, frames[0]

    def read(self, data: bytes) -> Whole | None:
        """The whole message in one binary WebSocket message (None: fragment pending).

        Fast path for the common case, an uncompressed unfragmented frame: one
        header unpack (decode_frame + Decoder.feed cost ~6 us a frame, which
        at tens of thousands of frames/s would make the generator the limit).
        Everything else goes through the real decoder.
        """
        if len(data) >= HEADER_SIZE:
            version, ftype, seq, flags, length = HEADER.unpack_from(data)
            if version == VERSION and not flags and length == len(data) - HEADER_SIZE:
                return Whole(ftype, seq, data[HEADER_SIZE:])
        frame = self.decoder.feed(decode_frame(data, LIMITS.max_frame_payload))
        return None if frame is None else Whole(frame.type, frame.seq, frame.payload)

    async def request(self, ftype: int, msg: PbMessage, expect: int) -> bytes:
        """Setup only (before the readers start): send and wait for the answer."""
        seq, data = self.frame(ftype, msg)
        await self.ws.send_bytes(data)
        while True:
            raw = await self.ws.receive()
            if raw.type != aiohttp.WSMsgType.BINARY:
                raise BenchError(f"connection closed during setup ({self.ws.close_code})")
            whole = self.read(raw.data)
            if whole is None or whole.seq != seq:
                continue  # pushes during setup do not matter
            if whole.type == pb.ERROR:
                raise BenchError(error_text(whole))
            if whole.type != expect:
                raise BenchError(f"expected frame type {expect}, got {whole.type}")
            return whole.payload


def error_text(whole: Whole) -> str:
    err = pb.Error.FromString(whole.payload)
    return f"{pb.ErrorCode.Name(err.code)}: {err.message}"


class Latencies:
    """A histogram of nanosecond latencies, flat in memory however long the run.

    Each value keeps its top 11 significant bits (error below 0.1%), so a few
    thousand buckets cover nanoseconds to minutes.
    """

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max = 0

    def add(self, ns: int) -> None:
        shift = ns.bit_length() - 11
        key = (ns >> shift) << shift if shift > 0 else ns
        self.counts[key] = self.counts.get(key, 0) + 1
        self.n += 1
        if ns > self.max:
            self.max = ns

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile in milliseconds (NaN without samples)."""
        if not self.n:
            return math.nan
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return key / 1e6
        return self.max / 1e6


class Sender:
    """Keeps ``window`` SEND frames in flight; each reply releases the next send.

    ``reply_type`` is ACK against Tongxin and SEND against the echo server
    (which returns the frame unchanged, header seq included).
    """

    def __init__(self, wire: Wire, conversation_id: str, text: str, window: int,
                 reply_type: int, phase: Phase, latencies: Latencies) -> None:
        self.wire = wire
        # A SendRequest is conversation_id (field 1) + client_msg_id (2) +
        # content (3); serialized protobuf messages concatenate, so only the
        # client_msg_id field is encoded per message. _payload() is checked
        # against the protobuf library below.
        self._head: bytes = pb.SendRequest(conversation_id=conversation_id).SerializeToString()
        self._tail: bytes = pb.SendRequest(content=pb.Content(text=text)).SerializeToString()
        probe = pb.SendRequest(conversation_id=conversation_id, client_msg_id="1:2",
                               content=pb.Content(text=text))
        if self._payload(b"1:2") != probe.SerializeToString():
            raise BenchError("hand-assembled SendRequest differs from protobuf's")
        self.window = window
        self.reply_type = reply_type
        self.phase = phase
        self.inflight: dict[int, int] = {}
        self.latencies = latencies
        self.sent = 0
        self.replies = 0
        self.replies_measured = 0
        self.errors = 0
        self.first_error = ""

    def _payload(self, client_msg_id: bytes) -> bytes:
        # tag 0x12 = field 2, length-delimited; ids stay far below 128 bytes.
        return self._head + b"\x12" + bytes((len(client_msg_id),)) + client_msg_id + self._tail

    def sample_frame(self) -> bytes:
        """A frame of the size this sender sends (for the report)."""
        cid = f"{time.perf_counter_ns()}:{self.sent + 1}".encode()
        return Encoder(LIMITS).encode(pb.SEND, 1, self._payload(cid))[0]

    async def _send_one(self) -> None:
        now = time.perf_counter_ns()
        self.sent += 1
        # The send time rides in client_msg_id so receivers can time delivery.
        seq, data = self.wire.frame_bytes(pb.SEND, self._payload(f"{now}:{self.sent}".encode()))
        self.inflight[seq] = now
        await self.wire.ws.send_bytes(data)

    async def run(self) -> None:
        phase, ws = self.phase, self.wire.ws
        for _ in range(self.window):
            await self._send_one()
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            now = time.perf_counter_ns()
            whole = self.wire.read(msg.data)
            if whole is None:
                continue
            sent_at = self.inflight.pop(whole.seq, None)
            if sent_at is None:
                continue
            if whole.type == self.reply_type:
                self.replies += 1
                if phase.measured(sent_at):
                    self.latencies.add(now - sent_at)
                if phase.measured(now):
                    self.replies_measured += 1
            else:
                self.errors += 1
                if not self.first_error and whole.type == pb.ERROR:
                    self.first_error = error_text(whole)
            if now < phase.end:
                await self._send_one()
            elif not self.inflight:
                return


class Progress:
    """Deliveries across all receivers; ``drained`` is set once they reach ``target``."""

    def __init__(self) -> None:
        self.delivered = 0
        self.target = math.inf
        self.drained = asyncio.Event()

    def add(self) -> None:
        self.delivered += 1
        if self.delivered >= self.target:
            self.drained.set()

    def expect(self, target: int) -> None:
        self.target = target
        if self.delivered >= target:
            self.drained.set()


class Receiver:
    """Counts the DELIVER frames of chat messages and times them from their send."""

    def __init__(self, wire: Wire, phase: Phase, progress: Progress, e2e: Latencies) -> None:
        self.wire = wire
        self.phase = phase
        self.progress = progress
        self.delivered = 0
        self.delivered_measured = 0
        self.e2e = e2e

    async def run(self) -> None:
        phase, wire = self.phase, self.wire
        async for msg in wire.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            now = time.perf_counter_ns()
            whole = wire.read(msg.data)
            if whole is None or whole.type != pb.DELIVER:
                continue
            m = pb.Message.FromString(whole.payload)
            if m.kind != pb.CHAT:
                continue  # the conversation's CREATED entry
            self.delivered += 1
            self.progress.add()
            if phase.measured(now):
                self.delivered_measured += 1
            sent_at = int(m.client_msg_id.partition(":")[0])
            if phase.measured(sent_at):
                self.e2e.add(now - sent_at)

    async def keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            _, data = self.wire.frame(pb.PING, pb.Ping(client_time_ms=int(time.time() * 1000)))
            await self.wire.ws.send_bytes(data)


@dataclass
class Result:
    scenario: str
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None
    replies_per_s: float
    samples: int
    sent: int
    replies: int
    delivered: int | None
    errors: int
    server_cpu_pct: float
    server_runq_pct: float
    generator_cpu_pct: float
    generator_runq_pct: float
    frame_bytes: int
    notes: list[str] = field(default_factory=list)
    # The server's pauses in the measured window (Pauses.between), when its /metrics was read.
    pauses: dict[str, Any] | None = None


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Pauses:
    """The node's event-loop lag and GC pauses between two reads of its /metrics."""

    LAG = "tongxin_event_loop_lag_seconds"
    GC = "tongxin_gc_pause_seconds"

    @staticmethod
    def parse(text: str) -> Samples:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    @staticmethod
    def _buckets(a: Samples, b: Samples, name: str,
                 labels: tuple[tuple[str, str], ...] = ()) -> list[tuple[float, float]]:
        """(upper bound, observations up to it) in the window, bounds ascending."""
        out = []
        for (n, lab), value in b.items():
            if n != f"{name}_bucket":
                continue
            rest = tuple(kv for kv in lab if kv[0] != "le")
            if rest != labels:
                continue
            le = float(dict(lab)["le"])
            out.append((le, value - a.get((n, lab), 0.0)))
        return sorted(out)

    @staticmethod
    def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
        """The bucket bound the q-quantile is at or under; None without observations."""
        total = buckets[-1][1] if buckets else 0.0
        if not total:
            return None
        for le, cum in buckets:
            if cum >= q * total:
                return le
        return buckets[-1][0]

    @classmethod
    def between(cls, a: Samples, b: Samples) -> dict[str, Any]:
        def ms(v: float | None) -> float | None:
            return None if v is None or math.isinf(v) else v * 1000

        def delta(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
            return b.get((name, labels), 0.0) - a.get((name, labels), 0.0)

        lag = cls._buckets(a, b, cls.LAG)
        gens = sorted({dict(lab)["generation"] for n, lab in b
                       if n == f"{cls.GC}_count" and "generation" in dict(lab)})
        gc_count: dict[str, int] = {}
        gc_max: float | None = None
        for g in gens:
            labels = (("generation", g),)
            n = delta(f"{cls.GC}_count", labels)
            gc_count[g] = int(n)
            if n:
                longest = cls._quantile(cls._buckets(a, b, cls.GC, labels), 1.0)
                if longest is not None:
                    gc_max = longest if gc_max is None else max(gc_max, longest)
        return {
            "loop_lag_samples": int(delta(f"{cls.LAG}_count")),
            "loop_lag_p99_ms_at_most": ms(cls._quantile(lag, 0.99)),
            "loop_lag_max_ms_at_most": ms(cls._quantile(lag, 1.0)),
            "gc_collections": gc_count,
            "gc_pause_total_ms": sum(delta(f"{cls.GC}_sum", (("generation", g),))
                                     for g in gens) * 1000,
            "gc_pause_max_ms_at_most": ms(gc_max),
        }


async def _bounded(n: int, factory: Callable[[int], Coroutine[Any, Any, T]],
                   parallel: int = 16) -> list[T]:
    sem = asyncio.Semaphore(parallel)

    async def one(i: int) -> T:
        async with sem:
            return await factory(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def run_load(scenario: str, url: str, server_pid: int, args: argparse.Namespace,
                   text: str, *, receiver_url: str | None = None,
                   other_pids: Sequence[int] = (), metrics_url: str | None = None) -> Result:
    """Run one scenario's load against ``url``. ``receiver_url``: receivers
    connect there instead (another node); ``other_pids``: more server
    processes whose CPU counts as the server's (cluster_bench.py);
    ``metrics_url``: the server's /metrics, read at the window's start and end
    for its pauses (Result.pauses)."""
    relay = scenario != "echo"
    # TCPConnector(limit=0): the default limit of 100 sockets would also bound
    # WebSocket connections, which keep their slot while open.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    wires: list[Wire] = []
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    run_tag = f"{os.getpid() % 10000}{int(time.time()) % 100000}"

    async def connect(to: str = url) -> Wire:
        ws = await session.ws_connect(to, compress=0, autoping=True, max_msg_size=0,
                                      autoclose=True)
        wire = Wire(ws)
        wires.append(wire)
        return wire

    async def register(role: str, i: int) -> tuple[Wire, str]:
        wire = await connect((receiver_url or url) if role == "r" else url)
        payload = await wire.request(pb.REGISTER, pb.RegisterRequest(
            username=f"b{run_tag}{role}{i}", password=PASSWORD, device_id=f"bench-{role}{i}"),
            pb.AUTH_OK)
        return wire, pb.AuthResponse.FromString(payload).user_id

    phase = Phase(0, 0)  # set once every connection is ready
    progress = Progress()
    measured = asyncio.Event()
    lat, e2e = Latencies(), Latencies()
    try:
        senders: list[Sender] = []
        receivers: list[Receiver] = []

        async def setup_pair(i: int) -> None:
            rwire, ruser = await register("r", i)
            swire, _ = await register("s", i)
            conv = pb.Conversation.FromString(await swire.request(
                pb.CONV_CREATE, pb.CreateConversation(kind=pb.DIRECT, member_ids=[ruser]),
                pb.CONV_INFO))
            senders.append(Sender(swire, conv.conversation_id, text, args.window, pb.ACK, phase,
                                  lat))
            receivers.append(Receiver(rwire, phase, progress, e2e))

        async def setup_echo(i: int) -> None:
            wire = await connect()
            # Shaped like a real direct-conversation id, so echo frames are
            # the same size as the relay's SEND frames.
            fake_id = f"d:u_{i:020x}:u_{i + MAX_PAIRS:020x}"
            senders.append(Sender(wire, fake_id, text, args.window, pb.SEND, phase, lat))

        setup = setup_pair if relay else setup_echo
        await asyncio.wait_for(_bounded(args.pairs, setup), SETUP_TIMEOUT)
        frame_bytes = len(senders[0].sample_frame())

        start = time.perf_counter_ns()
        phase.measure_from = start + int(args.warmup * 1e9)
        phase.end = phase.measure_from + int(args.duration * 1e9)
        cpu: dict[str, int] = {}
        scrapes: dict[str, asyncio.Task[Samples | None]] = {}

        async def scrape() -> Samples | None:
            assert metrics_url is not None
            try:
                async with session.get(metrics_url, timeout=aiohttp.ClientTimeout(total=10)) \
                        as resp:
                    return Pauses.parse(await resp.text()) if resp.status == 200 else None
            except (aiohttp.ClientError, TimeoutError):
                return None

        def sample(tag: str) -> None:
            if metrics_url is not None:
                scrapes[tag] = loop.create_task(scrape())
            per_server = [sched_ns(pid) for pid in (server_pid, *other_pids)]
            cpu[f"srv_{tag}"] = sum(run for run, _ in per_server)
            cpu[f"srvq_{tag}"] = sum(wait for _, wait in per_server)
            cpu[f"gen_{tag}"], cpu[f"genq_{tag}"] = sched_ns(os.getpid())
            cpu[f"wall_{tag}"] = time.perf_counter_ns()
            if tag == "b":
                measured.set()

        loop.call_later(args.warmup, sample, "a")
        loop.call_later(args.warmup + args.duration, sample, "b")
        for r in receivers:
            tasks.append(asyncio.create_task(r.run()))
            tasks.append(asyncio.create_task(r.keepalive()))
        sender_tasks = [asyncio.create_task(s.run()) for s in senders]
        tasks.extend(sender_tasks)
        budget = args.warmup + args.duration + DRAIN_TIMEOUT
        done, pending = await asyncio.wait(sender_tasks, timeout=budget)
        notes: list[str] = []
        for t in done:
            if t.exception() is not None:
                raise BenchError(f"sender failed: {t.exception()!r}")
        if pending:
            notes.append(f"{len(pending)} senders still had replies outstanding after drain")
        replies = sum(s.replies for s in senders)
        if relay:
            # Let the last deliveries arrive (bounded), then stop.
            progress.expect(replies)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.drained.wait(), DRAIN_TIMEOUT)
        await measured.wait()
        pauses = None
        if scrapes:
            at_start, at_end = await scrapes["a"], await scrapes["b"]
            if at_start is not None and at_end is not None:
                pauses = Pauses.between(at_start, at_end)
            else:
                notes.append(f"the server's /metrics ({metrics_url}) did not answer: "
                             "no pause figures")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(
                *(w.ws.close() for w in wires), return_exceptions=True), 10.0)
        await session.close()

    def pct(key: str) -> float:
        return 100 * (cpu[f"{key}_b"] - cpu[f"{key}_a"]) / (cpu["wall_b"] - cpu["wall_a"])

    errors = sum(s.errors for s in senders)
    if errors:
        first = next(s.first_error for s in senders if s.first_error)
        notes.append(f"{errors} error replies, first: {first}")
    delivered = sum(r.delivered for r in receivers) if relay else None
    if relay and delivered is not None and delivered < replies:
        notes.append(f"{replies - delivered} ACKed messages not delivered within the drain")
    received = (sum(r.delivered_measured for r in receivers) if relay
                else sum(s.replies_measured for s in senders))
    if pct("gen") >= GENERATOR_BUSY_PCT:
        notes.append(f"the load generator used {pct('gen'):.0f}% of its core: this figure may "
                     "be bounded by the generator, not the server")
    return Result(
        scenario=scenario,
        msgs_per_s=received / args.duration,
        p50_ms=lat.percentile_ms(0.50),
        p99_ms=lat.percentile_ms(0.99),
        max_ms=lat.max / 1e6 if lat.n else math.nan,
        e2e_p50_ms=e2e.percentile_ms(0.50) if relay else None,
        e2e_p99_ms=e2e.percentile_ms(0.99) if relay else None,
        replies_per_s=sum(s.replies_measured for s in senders) / args.duration,
        samples=lat.n,
        sent=sum(s.sent for s in senders),
        replies=replies,
        delivered=delivered,
        errors=errors,
        server_cpu_pct=pct("srv"),
        server_runq_pct=pct("srvq"),
        generator_cpu_pct=pct("gen"),
        generator_runq_pct=pct("genq"),
        frame_bytes=frame_bytes,
        notes=notes,
        pauses=pauses,
    )


# ---- orchestration -----------------------------------------------------------------


def run_scenario(scenario: str, args: argparse.Namespace, children: Children,
                 cpus: tuple[int | None, int | None], text: str) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix=f"tongxin-bench-{scenario}-", dir=args.data_root))
    port = free_port()
    metrics_url = None
    log_path = workdir / "server.log"
    if scenario == "echo":
        argv = [sys.executable, str(Path(__file__).resolve()), "--echo-server", str(port)]
    elif scenario == "bare-relay":
        argv = [sys.executable, str(Path(__file__).resolve()), "--bare-relay-server", str(port)]
    else:
        synchronous = scenario.removeprefix("relay-")
        cfg_path = workdir / "tongxin.yml"
        metrics_port = free_port()
        metrics_url = f"http://{HOST}:{metrics_port}/metrics"
        cfg_path.write_text(server_config(workdir / "data", port, synchronous, metrics_port))
        argv = [sys.executable, "-m", "tongxin.cli.main", "serve", "--config", str(cfg_path)]
    proc = children.start(argv, log_path, cpus[0])
    try:
        wait_ready(proc, port, log_path)
        log(f"{scenario}: server pid {proc.pid} ready on {HOST}:{port}; "
            f"{args.warmup:g}s warm-up + {args.duration:g}s measured")
        try:
            result = run_loop(run_load(scenario, f"ws://{HOST}:{port}/ws", proc.pid, args,
                                       text, metrics_url=metrics_url))
        except (aiohttp.ClientError, OSError) as exc:  # OSError covers TimeoutError
            raise BenchError(f"{scenario}: load generator failed: {exc!r}\n"
                             f"{tail(log_path)}") from exc
        finally:
            # A signal may surface as some other error (or be swallowed) in the loop.
            if Interrupted.seen:
                raise KeyboardInterrupt
        if proc.poll() is not None:
            raise BenchError(f"server died during the run:\n{tail(log_path)}")
        return result
    finally:
        children.stop(proc)
        if proc.returncode not in (0, None):
            log(f"{scenario}: server exited with {proc.returncode}")
        shutil.rmtree(workdir, ignore_errors=True)


def fs_type(path: Path) -> str:
    """Filesystem type holding ``path`` (fsync cost depends on it; tmpfs makes it free)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            mnt = parts[1]
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    return kind


def machine_info(data_root: Path, allowed: list[int],
                 cpus: tuple[int | None, int | None]) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpus_allowed": len(allowed),
        "cpu_model": model,
        "python": platform.python_version(),
        "uvloop": getattr(uvloop, "__version__", "yes") if HAVE_UVLOOP else None,
        "aiohttp": aiohttp.__version__,
        "platform": platform.platform(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "data_root": str(data_root),
        "data_fs": fs_type(data_root),
        "server_cpu": cpus[0],
        "generator_cpu": cpus[1],
    }


def ratios(results: list[Result], base: str = "echo") -> list[dict[str, Any]]:
    """Each relay scenario against ``base`` (echo, or the bare relay) from the same run."""
    echo = next((r for r in results if r.scenario == base), None)
    if echo is None:
        return []
    out = []
    for r in results:
        if r is echo or r.scenario == "echo" or (base != "echo" and r.scenario == "bare-relay"):
            continue
        out.append({
            "scenario": r.scenario,
            "throughput": r.msgs_per_s / echo.msgs_per_s if echo.msgs_per_s else math.nan,
            "p50": r.p50_ms / echo.p50_ms if echo.p50_ms else math.nan,
            "p99": r.p99_ms / echo.p99_ms if echo.p99_ms else math.nan,
        })
    return out


def print_table(machine: dict[str, Any], params: dict[str, Any], results: list[Result]) -> None:
    m, p = machine, params
    pin = (f"server on cpu {m['server_cpu']}, generator on cpu {m['generator_cpu']}"
           if m["server_cpu"] is not None else "not pinned")
    print("Tongxin 1:1 relay benchmark")
    print(f"machine : nproc {m['nproc']} (allowed {m['cpus_allowed']}), {m['cpu_model']}, "
          f"loadavg {m['loadavg_1m']}")
    print(f"          Python {m['python']}, uvloop {m['uvloop'] or 'no'}, "
          f"aiohttp {m['aiohttp']}, {m['platform']}")
    print(f"params  : pairs {p['pairs']}, window {p['window']} (in flight "
          f"{p['pairs'] * p['window']}), warm-up {p['warmup']:g}s, measured {p['duration']:g}s, "
          f"text {p['payload']} B (SEND frame {results[0].frame_bytes} B)")
    print(f"          {pin}; SQLite data on {m['data_fs']} ({m['data_root']}); "
          "generator: raw frames, one process")
    print()
    head = (f"{'scenario':<14}{'msgs/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            f"{'e2e p50':>9}{'e2e p99':>9}{'srv cpu':>9}{'srv rq':>8}{'gen cpu':>9}"
            f"{'gen rq':>8}")
    print(head)
    print("-" * len(head))

    def ms(v: float | None) -> str:
        return "-" if v is None or math.isnan(v) else f"{v:.2f}"

    for r in results:
        print(f"{r.scenario:<14}{r.msgs_per_s:>9.0f}{ms(r.p50_ms):>9}{ms(r.p99_ms):>9}"
              f"{ms(r.max_ms):>9}{ms(r.e2e_p50_ms):>9}{ms(r.e2e_p99_ms):>9}"
              f"{r.server_cpu_pct:>8.0f}%{r.server_runq_pct:>7.0f}%"
              f"{r.generator_cpu_pct:>8.0f}%{r.generator_runq_pct:>7.0f}%")
    for base in ("echo", "bare-relay"):
        rs = ratios(results, base)
        if rs:
            print()
            print(f"{'/ ' + base:<14}{'msgs/s':>9}{'p50':>9}{'p99':>9}")
            for x in rs:
                print(f"{x['scenario']:<14}{x['throughput']:>8.2f}x{x['p50']:>8.1f}x"
                      f"{x['p99']:>8.1f}x")
    print()
    print("msgs/s: echo = echoes received/s; relay = DELIVER frames received by receivers/s.")
    print("bare-relay: aiohttp and the wire format only (bench/bare_relay.py): SEND -> ACK and")
    print("     DELIVER, no accounts, storage, bus or metrics; the node's target is >= 0.5x.")
    print("p50/p99: echo = send -> echo; relay = send -> ACK (sent after the SQLite commit).")
    print("e2e: send -> DELIVER at the receiver (relay only).")
    paused = [r for r in results if r.pauses]
    if paused:
        print()
        print("server pauses in the measured window (its /metrics; <= : a histogram bucket bound)")
        head = (f"{'scenario':<14}{'lag p99':>10}{'lag max':>10}{'GC runs':>9}"
                f"{'gen 0/1/2':>12}{'GC total':>10}{'GC max':>10}")
        print(head)
        print("-" * len(head))

        def bound(v: float | None) -> str:
            return "-" if v is None else f"<={v:g}"

        for r in paused:
            pz = r.pauses or {}
            runs = pz["gc_collections"]
            gens = "/".join(str(runs.get(g, 0)) for g in ("0", "1", "2"))
            print(f"{r.scenario:<14}{bound(pz['loop_lag_p99_ms_at_most']):>10}"
                  f"{bound(pz['loop_lag_max_ms_at_most']):>10}{sum(runs.values()):>9}"
                  f"{gens:>12}{pz['gc_pause_total_ms']:>10.1f}"
                  f"{bound(pz['gc_pause_max_ms_at_most']):>10}")
        print("lag: how late the node's event-loop timer (every 0.25 s) ran, ms. GC: cyclic")
        print("     collections, their total time (ms, exact) and the longest one (ms).")
    print("cpu: on-CPU time of all threads / wall time. rq: time runnable but waiting for a")
    print("     CPU / wall time, summed over threads: other processes on the machine, or the")
    print("     server's own threads sharing its core. High rq means depressed numbers.")
    for r in results:
        for note in r.notes:
            print(f"note    : {r.scenario}: {note}")


def _no_nan(value: Any) -> Any:
    """NaN (no samples) becomes null: NaN is not JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted:
    seen = False


def _on_stop_signal(signum: int, frame: Any) -> None:
    # Raised wherever the main thread is, event loop included; the flag also
    # catches the case where an await swallowed it (checked after each run).
    Interrupted.seen = True
    raise KeyboardInterrupt


def bounded(kind: Callable[[str], Any], lo: float, hi: float) -> Callable[[str], Any]:
    """An argparse type that refuses values outside [lo, hi]: every run stays bounded."""
    def conv(s: str) -> Any:
        v = kind(s)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo:g} and {hi:g}")
        return v
    return conv


def add_load_args(p: argparse.ArgumentParser) -> None:
    """The load-shape flags every benchmark here shares."""
    p.add_argument("--pairs", type=bounded(int, 1, MAX_PAIRS), default=50,
                   help="sender/receiver pairs (echo: connections) (default 50)")
    p.add_argument("--window", type=bounded(int, 1, MAX_WINDOW), default=8,
                   help="messages in flight per sender (default 8)")
    p.add_argument("--duration", type=bounded(float, 0.5, MAX_DURATION), default=10.0,
                   help="measured seconds per run (default 10)")
    p.add_argument("--warmup", type=bounded(float, 0, MAX_WARMUP), default=2.0,
                   help="seconds of load before measuring (default 2)")
    p.add_argument("--payload", type=bounded(int, 1, MAX_PAYLOAD), default=100,
                   help="characters of message text (default 100)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_load_args(p)
    p.add_argument("--synchronous", action="append", choices=["full", "normal"],
                   help="SQLite synchronous mode(s) for the relay runs; repeat for both "
                        "(default: full and normal)")
    p.add_argument("--no-echo", action="store_true", help="skip the echo baseline")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the server and the generator to separate CPUs")
    p.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the per-run data directories are made (default: system temp)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--echo-server", type=bounded(int, 1, 65535), metavar="PORT",
                   help=argparse.SUPPRESS)
    p.add_argument("--bare-relay-server", type=bounded(int, 1, 65535), metavar="PORT",
                   help=argparse.SUPPRESS)
    p.add_argument("--no-bare", action="store_true",
                   help="skip the bare relay (aiohttp and the wire format, no storage)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.echo_server is not None:
        return echo_server_main(args.echo_server)
    if args.bare_relay_server is not None:
        from bare_relay import main as bare_relay_main

        return bare_relay_main(args.bare_relay_server, LIMITS, run_loop)
    modes: list[str] = list(dict.fromkeys(args.synchronous or ["full", "normal"]))
    scenarios = (([] if args.no_echo else ["echo"]) + ([] if args.no_bare else ["bare-relay"])
                 + [f"relay-{m}" for m in modes])
    allowed = sorted(os.sched_getaffinity(0))
    cpus: tuple[int | None, int | None] = (None, None)
    if not args.no_pin and len(allowed) >= 2:
        cpus = (allowed[0], allowed[1])
        os.sched_setaffinity(0, {allowed[1]})
    args.data_root.mkdir(parents=True, exist_ok=True)
    # Two sockets per pair on each side, plus SQLite and slack; the servers
    # inherit the limit.
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 4 * args.pairs + 256
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    text = ("Tongxin relay benchmark message. " * (args.payload // 33 + 1))[:args.payload]
    if not text.strip():
        text = "x" * args.payload
    machine = machine_info(args.data_root, allowed, cpus)
    params = {"pairs": args.pairs, "window": args.window, "duration": args.duration,
              "warmup": args.warmup, "payload": args.payload, "scenarios": scenarios,
              "generator": "raw frames (tongxin.wire.codec)"}
    if machine["data_fs"] == "tmpfs":
        log("warning: data root is on tmpfs; fsync costs nothing there (use --data-root)")

    children = Children()
    # SIGTERM and SIGHUP take the same path as Ctrl+C (also where SIGINT was
    # inherited as ignored): unwind, stop the children.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)
    results: list[Result] = []
    try:
        for scenario in scenarios:
            results.append(run_scenario(scenario, args, children, cpus, text))
    except KeyboardInterrupt:
        for sig in STOP_SIGNALS:  # let the clean-up below finish
            signal.signal(sig, signal.SIG_IGN)
        log("interrupted; stopping servers")
        return 130
    except BenchError as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        children.stop_all()
    if args.json:
        doc = {"machine": machine, "params": params, "results": [asdict(r) for r in results],
               "ratios": ratios(results), "ratios_to_bare_relay": ratios(results, "bare-relay")}
        print(json.dumps(_no_nan(doc), indent=2))
    else:
        print_table(machine, params, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

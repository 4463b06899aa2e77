#!/usr/bin/env python3
"""Group fan-out benchmark: one message to a group whose every member is online.

    .venv/bin/python appliance/bench/fanout_bench.py                   # 1,000 members
    .venv/bin/python appliance/bench/fanout_bench.py --members 10000   # issue 18's case

One ``tongxin serve`` on embedded defaults (a subprocess with a temp home of its
own, stopped by PID) and ``--workers`` client processes (this file,
``--worker``), each holding its share of the members' connections (a process
may open 20,000 files at most). Every member registers (REGISTER answers
AUTH_OK) and keeps reading its socket; the owner, in this process, creates
the group and adds the members in requests of ``chat.max_members_per_change``.

Measured, in order, in the same run:

* ``direct``: the baseline. The owner sends ``--messages`` messages in a direct
  conversation to one receiver of this process: send -> ACK and send ->
  DELIVER for a single recipient.
* ``fanout``: the owner sends ``--messages`` messages to the group, one every
  ``--gap`` seconds; each member's process times send -> DELIVER (the send
  time rides in client_msg_id; all processes read the same clock). For each
  message: how many members got it, and the time until the last one did
  (target: < 1 s for 10,000 members).
* ``receipts``: every member sends a READ receipt for the last message at
  once while the owner keeps sending in the direct conversation every 50 ms:
  the probe's send -> ACK shows whether the receipts melt the node, and the
  node's CPU time over the storm is read from /proc.

Prints a table (and with ``--json`` one JSON object) with the machine's load
average, the commit and the parameters. Bounded: at most 10,000 members (the default group limit),
every phase under a deadline; the whole run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from conn_bench import commit, pct, raise_nofile
from relay_bench import (
    HOST,
    PASSWORD,
    BenchError,
    Children,
    Pauses,
    Samples,
    Whole,
    Wire,
    error_text,
    free_port,
    run_loop,
    sched_ns,
    server_config,
    wait_ready,
)

from tongxin.proto import tongxin_pb2 as pb

MAX_MEMBERS = 10000  # chat.max_group_members's default
PER_CHANGE = 1000  # chat.max_members_per_change's default
SETUP_TIMEOUT = 600.0
REPLY_TIMEOUT = 30.0
ARRIVAL_TIMEOUT = 30.0
KEEPALIVE = 20.0  # below the node's 30 s heartbeat interval
QUIET = 30.0  # no keepalive for this long after the receipts: + KEEPALIVE stays under 90 s
CONNECT_CONCURRENCY = 64
TAG = "fan"


def log(msg: str) -> None:
    print(f"[fanout] {msg}", file=sys.stderr, flush=True)






class Peer:
    """One connection with a reader: answers matched to requests by header seq,
    DELIVERs of chat messages timed from the send time in their client_msg_id."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.delivered: dict[str, float] = {}  # client_msg_id -> send -> DELIVER (ms)
        self.awaited: dict[str, asyncio.Event] = {}
        self.reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.wire.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            now = time.time_ns()
            whole = self.wire.read(msg.data)
            if whole is None:
                continue
            fut = self.pending.pop(whole.seq, None) if whole.seq else None
            if fut is not None and not fut.done():
                fut.set_result((whole.type, whole.payload))
            elif whole.type == pb.DELIVER:
                m = pb.Message.FromString(whole.payload)
                if m.kind == pb.CHAT and m.client_msg_id.startswith(f"{TAG}:"):
                    sent_ns = int(m.client_msg_id.split(":")[1])
                    self.delivered[m.client_msg_id] = (now - sent_ns) / 1e6
                    if (ev := self.awaited.pop(m.client_msg_id, None)) is not None:
                        ev.set()

    async def request(self, ftype: int, payload: bytes, expect: int) -> bytes:
        seq, data = self.wire.frame_bytes(ftype, payload)
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.pending[seq] = fut
        await self.wire.ws.send_bytes(data)
        rtype, rpayload = await asyncio.wait_for(fut, REPLY_TIMEOUT)
        if rtype == pb.ERROR:
            raise BenchError(error_text(Whole(rtype, 0, rpayload)))
        if rtype != expect:
            raise BenchError(f"expected frame type {expect}, got {rtype}")
        return rpayload

    async def send_chat(self, conversation_id: str, text: str) -> tuple[str, float, int]:
        """(client_msg_id, send -> ACK in ms, the entry's seq)."""
        cmid = f"{TAG}:{time.time_ns()}:{os.getpid()}"
        t0 = time.perf_counter()
        ack = pb.Ack.FromString(await self.request(pb.SEND, pb.SendRequest(
            conversation_id=conversation_id, client_msg_id=cmid,
            content=pb.Content(text=text)).SerializeToString(), pb.ACK))
        return cmid, (time.perf_counter() - t0) * 1000, ack.seq

    async def delivery(self, cmid: str, within: float) -> float | None:
        """send -> DELIVER of ``cmid`` in ms, waiting up to ``within`` s; None if it never came."""
        if cmid not in self.delivered:
            ev = self.awaited.setdefault(cmid, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), within)
        return self.delivered.get(cmid)

    async def ping(self) -> None:
        _, data = self.wire.frame(pb.PING, pb.Ping(client_time_ms=int(time.time() * 1000)))
        await self.wire.ws.send_bytes(data)


async def connect(session: aiohttp.ClientSession, url: str, username: str) -> tuple[Peer, str]:
    ws = await session.ws_connect(url, compress=0, autoping=True, max_msg_size=0)
    wire = Wire(ws)
    payload = await wire.request(pb.REGISTER, pb.RegisterRequest(
        username=username, password=PASSWORD, device_id="fanout"), pb.AUTH_OK)
    return Peer(wire), pb.AuthResponse.FromString(payload).user_id


async def bounded_all(n: int, make: Any) -> list[Any]:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int) -> Any:
        async with sem:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


# ---- a member process ------------------------------------------------------------


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def worker_main(url: str, count: int, prefix: str) -> int:
    raise_nofile()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    peers: list[Peer] = []
    quiet_until = 0.0

    async def keepalive() -> None:
        # From the first connection on: registering thousands takes longer than the
        # 90 s after which the node closes a silent connection.
        while True:
            await asyncio.sleep(KEEPALIVE)
            if time.monotonic() < quiet_until:
                continue
            await asyncio.gather(*(p.ping() for p in list(peers)), return_exceptions=True)

    ka = asyncio.get_running_loop().create_task(keepalive())

    async def join(j: int) -> str:
        peer, uid = await connect(session, url, f"{prefix}m{j}")
        peer.start()
        peers.append(peer)
        return uid

    try:
        emit({"ready": await bounded_all(count, join)})
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = line.decode().split()
            if cmd[0] == "report":
                got: dict[str, list[float]] = defaultdict(list)
                for p in peers:
                    for cmid, ms in p.delivered.items():
                        got[cmid].append(ms)
                emit({"arrivals": got, "closed": sum(p.wire.ws.closed for p in peers)})
            elif cmd[0] == "receipts":
                # No keepalive burst (every member's PING at once) inside the
                # measured window: it cost the node as much as the receipts.
                quiet_until = time.monotonic() + QUIET
                conv, seq = cmd[1], int(cmd[2])
                data = [p.wire.frame(pb.RECEIPT, pb.Receipt(
                    conversation_id=conv, kind=pb.READ, seq=seq))[1] for p in peers]
                sent = await asyncio.gather(
                    *(p.wire.ws.send_bytes(d) for p, d in zip(peers, data, strict=True)),
                    return_exceptions=True)
                emit({"receipts_sent": sum(r is None for r in sent)})
            elif cmd[0] == "quit":
                break
        return 0
    finally:
        ka.cancel()
        await asyncio.gather(*(p.wire.ws.close() for p in peers), return_exceptions=True)
        await session.close()


# ---- the run ---------------------------------------------------------------------


class Member:
    """A member process: its pipe, and the user ids it registered."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.user_ids: list[str] = []

    async def line(self, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), within)
        if not raw:
            raise BenchError(f"member process {self.proc.pid} exited ({self.proc.returncode})")
        doc: dict[str, Any] = json.loads(raw)
        return doc

    async def say(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd}\n".encode())
        await self.proc.stdin.drain()






async def scrape(session: aiohttp.ClientSession, metrics_url: str) -> Samples:
    async with session.get(metrics_url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return Pauses.parse(await resp.text())


async def run(args: argparse.Namespace, url: str, server_pid: int,
              metrics_url: str) -> dict[str, Any]:
    tag = f"{os.getpid() % 10000}{int(time.time()) % 100000}"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    members: list[Member] = []
    pinger: asyncio.Task[None] | None = None
    try:
        owner, _ = await connect(session, url, f"f{tag}owner")
        receiver, receiver_id = await connect(session, url, f"f{tag}recv")
        owner.start()
        receiver.start()

        async def keepalive() -> None:
            # The node closes a connection silent for 3 heartbeat intervals (90 s), and
            # registering 10,000 members takes about that long on two cores.
            while True:
                await asyncio.sleep(KEEPALIVE)
                await asyncio.gather(owner.ping(), receiver.ping(), return_exceptions=True)

        pinger = asyncio.get_running_loop().create_task(keepalive())
        direct = pb.Conversation.FromString(await owner.request(
            pb.CONV_CREATE, pb.CreateConversation(kind=pb.DIRECT, member_ids=[receiver_id])
            .SerializeToString(), pb.CONV_INFO)).conversation_id

        # The group holds --members users: the owner (the sender) and the recipients.
        recipients = args.members - 1
        per = -(-recipients // args.workers)
        t_setup = time.perf_counter()
        for i in range(args.workers):
            count = min(per, recipients - i * per)
            if count <= 0:
                break
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--worker", url, "--count", str(count),
                "--prefix", f"f{tag}w{i}", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, start_new_session=True,
                limit=64 * 1024 * 1024)  # a report line holds every member's arrival times
            members.append(Member(proc))
        for m in members:
            m.user_ids = (await m.line(SETUP_TIMEOUT))["ready"]
        user_ids = [u for m in members for u in m.user_ids]
        log(f"{len(user_ids)} recipients online in {time.perf_counter() - t_setup:.1f} s")

        group = pb.Conversation.FromString(await owner.request(
            pb.CONV_CREATE, pb.CreateConversation(kind=pb.GROUP, name="fan-out",
                                                  member_ids=user_ids[:PER_CHANGE])
            .SerializeToString(), pb.CONV_INFO)).conversation_id
        for i in range(PER_CHANGE, len(user_ids), PER_CHANGE):
            await owner.request(pb.MEMBERS, pb.MemberChange(
                conversation_id=group, op=pb.MemberChange.ADD,
                user_ids=user_ids[i:i + PER_CHANGE]).SerializeToString(), pb.CONV_INFO)
        log(f"group of {len(user_ids) + 1} made; settling")
        await asyncio.sleep(args.gap)

        # The baseline: one recipient, the same node, the same moment.
        direct_ack: list[float] = []
        direct_e2e: list[float] = []
        for _ in range(args.messages):
            cmid, ack_ms, _ = await owner.send_chat(direct, "direct probe")
            direct_ack.append(ack_ms)
            if (e2e_ms := await receiver.delivery(cmid, ARRIVAL_TIMEOUT)) is not None:
                direct_e2e.append(e2e_ms)
            await asyncio.sleep(0.2)

        sent: list[tuple[str, float]] = []
        last_seq = 0
        for k in range(args.messages):
            cmid, ack_ms, last_seq = await owner.send_chat(group, f"fan-out message {k}")
            sent.append((cmid, ack_ms))
            await asyncio.sleep(args.gap)
        got: dict[str, list[float]] = defaultdict(list)
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        closed = 0
        while True:
            got.clear()
            closed = 0
            for m in members:
                await m.say("report")
            for m in members:
                report = await m.line(REPLY_TIMEOUT)
                closed += report["closed"]
                for cmid, ms in report["arrivals"].items():
                    got[cmid].extend(ms)
            if all(len(got[c]) >= len(user_ids) for c, _ in sent) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        fanout = []
        for cmid, ack_ms in sent:
            lat = got.get(cmid, [])
            fanout.append({"delivered": len(lat), "missing": len(user_ids) - len(lat),
                           "ack_ms": ack_ms, "p50_ms": pct(lat, 0.50), "p99_ms": pct(lat, 0.99),
                           "last_ms": max(lat) if lat else float("nan")})

        # Receipts: every member reads the last message at once, beside a probe.
        probe: list[float] = []
        probe_at: list[float] = []  # each probe's send, in s after the receipts began
        storm_done = asyncio.Event()

        async def probing() -> None:
            while not storm_done.is_set():
                at = time.perf_counter() - t0
                _, ack_ms, _ = await owner.send_chat(direct, "probe")
                probe.append(ack_ms)
                probe_at.append(at)
                await asyncio.sleep(0.05)

        before = await scrape(session, metrics_url)
        log(f"receipts: {len(user_ids)} at once (node pid {server_pid})")
        cpu0, _ = sched_ns(server_pid)
        t0 = time.perf_counter()
        prober = asyncio.get_running_loop().create_task(probing())
        for m in members:
            await m.say(f"receipts {group} {last_seq}")
        receipts_sent = 0
        for m in members:
            receipts_sent += (await m.line(REPLY_TIMEOUT))["receipts_sent"]
        sent_s = time.perf_counter() - t0
        await asyncio.sleep(args.receipt_window)
        storm_done.set()
        await prober
        cpu1, _ = sched_ns(server_pid)
        # GC pauses and event-loop lag of the node over the receipts' window.
        pauses = Pauses.between(before, await scrape(session, metrics_url))
        receipts = {"sent": receipts_sent, "sent_in_s": sent_s,
                    "server_cpu_s": (cpu1 - cpu0) / 1e9,
                    "window_s": time.perf_counter() - t0,
                    "probe_ack_p50_ms": pct(probe, 0.50), "probe_ack_p99_ms": pct(probe, 0.99),
                    "probe_ack_max_ms": max(probe) if probe else float("nan"),
                    "probe_worst_at_s": probe_at[probe.index(max(probe))] if probe else float("nan"),
                    "probes": len(probe), "pauses": pauses}
        return {
            "members": len(user_ids) + 1,
            "recipients": len(user_ids),
            "closed_by_node": closed,
            "direct": {"ack_p50_ms": pct(direct_ack, 0.50), "e2e_p50_ms": pct(direct_e2e, 0.50),
                       "e2e_max_ms": max(direct_e2e) if direct_e2e else float("nan"),
                       "delivered": len(direct_e2e), "sent": len(direct_ack)},
            "fanout": fanout,
            "receipts": receipts,
        }
    finally:
        if pinger is not None:
            pinger.cancel()
        for m in members:
            with contextlib.suppress(Exception):
                await m.say("quit")
        for m in members:
            try:
                await asyncio.wait_for(m.proc.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.proc.pid, signal.SIGKILL)
                await m.proc.wait()
        await session.close()


def fmt(v: float) -> str:
    return "-" if v != v else f"{v:.1f}"  # NaN


def print_table(doc: dict[str, Any]) -> None:
    r = doc["result"]
    print(f"fan-out to a group of {r['members']} online members ({r['recipients']} recipients; "
          f"commit {doc['commit'] or '?'}, load average {doc['loadavg']}, "
          f"{doc['cpus']} CPUs)")
    d = r["direct"]
    print(f"  baseline, direct conversation: ACK p50 {fmt(d['ack_p50_ms'])} ms, "
          f"send -> DELIVER p50 {fmt(d['e2e_p50_ms'])} ms, max {fmt(d['e2e_max_ms'])} ms "
          f"({d['delivered']}/{d['sent']} delivered)")
    print(f"  {'message':>7} {'ACK ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'last ms':>9} "
          f"{'got':>7} {'missing':>7}")
    for i, f in enumerate(r["fanout"]):
        print(f"  {i:>7} {fmt(f['ack_ms']):>8} {fmt(f['p50_ms']):>8} {fmt(f['p99_ms']):>8} "
              f"{fmt(f['last_ms']):>9} {f['delivered']:>7} {f['missing']:>7}")
    if r["closed_by_node"]:
        print(f"  WARNING: the node closed {r['closed_by_node']} recipients' connections")
    worst = max((f["last_ms"] for f in r["fanout"]), default=float("nan"))
    ratio = worst / r["direct"]["e2e_p50_ms"] if r["direct"]["e2e_p50_ms"] else float("nan")
    print(f"  time until the last member had it: worst {fmt(worst)} ms "
          f"(target < 1000 ms; {fmt(ratio)}x the direct baseline's p50)")
    rc = r["receipts"]
    print(f"  {rc['sent']} READ receipts at once (sent in {rc['sent_in_s']:.2f} s): node CPU "
          f"{rc['server_cpu_s']:.2f} s over {rc['window_s']:.1f} s; probe ACK p50 "
          f"{fmt(rc['probe_ack_p50_ms'])} / p99 {fmt(rc['probe_ack_p99_ms'])} / max "
          f"{fmt(rc['probe_ack_max_ms'])} ms ({rc['probes']} probes; the slowest sent "
          f"{rc['probe_worst_at_s']:.2f} s after the receipts began)")
    pz = rc["pauses"]
    lag = pz["loop_lag_max_ms_at_most"]
    print(f"  over the receipts: GC {pz['gc_pause_total_ms']:.0f} ms in "
          f"{sum(pz['gc_collections'].values())} collections {pz['gc_collections']}, the "
          f"longest <= {fmt(pz['gc_pause_max_ms_at_most'] or float('nan'))} ms; event-loop lag "
          f"max <= {fmt(lag if lag is not None else float('nan'))} ms")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=1000,
                   help="group members including the sender, all online (1000)")
    p.add_argument("--workers", type=int, default=4, help="member processes (4)")
    p.add_argument("--messages", type=int, default=5, help="messages per phase (5)")
    p.add_argument("--gap", type=float, default=2.0, help="seconds between fan-out messages (2)")
    p.add_argument("--receipt-window", type=float, default=5.0,
                   help="seconds the probe runs after the receipts are sent (5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.worker:
        if not 2 <= args.members <= MAX_MEMBERS:
            p.error(f"--members: between 2 and {MAX_MEMBERS}")
        if not 1 <= args.workers <= 16 or -(-args.members // args.workers) > 15000:
            p.error("--workers: 1 to 16, and at most 15,000 members per process")
        if not 1 <= args.messages <= 50 or not 0.1 <= args.gap <= 30:
            p.error("--messages 1-50, --gap 0.1-30")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_loop(worker_main(args.worker, args.count, args.prefix))
    raise_nofile()
    children = Children()
    with tempfile.TemporaryDirectory(prefix="tongxin-fanout-") as tmp:
        work = Path(tmp)
        port, metrics_port = free_port(), free_port()
        (work / "tongxin.yaml").write_text(server_config(work / "data", port, "full",
                                                         metrics_port))
        log_path = work / "server.log"
        server = children.start([sys.executable, "-m", "tongxin.cli.main", "serve", "--config",
                                 str(work / "tongxin.yaml")], log_path, None)
        try:
            wait_ready(server, port, log_path)
            result = run_loop(asyncio.wait_for(
                run(args, f"ws://{HOST}:{port}/ws", server.pid,
                    f"http://{HOST}:{metrics_port}/metrics"), SETUP_TIMEOUT * 2))
        finally:
            children.stop_all()
    doc = {"commit": commit(), "loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
           "params": {k: v for k, v in vars(args).items() if k not in ("worker", "count", "prefix")},
           "result": result}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Where the embedded relay's server CPU goes: relay_bench.py with py-spy on the server.

    .venv/bin/python appliance/bench/relay_profile.py DIR [relay_bench flags]
    .venv/bin/python appliance/bench/relay_profile.py --report DIR   # re-render DIR
    .venv/bin/python appliance/bench/relay_profile.py --micro ROUNDS # the SEND path's pieces

Runs one relay scenario of relay_bench.py (``--synchronous full`` unless
given; no echo; the bare relay too unless --no-bare, not profiled) and
``py-spy record`` samples the server process after relay_bench's set-up
(registrations), for the warm-up, the measured window and the drain
(``--native`` adds C frames, but py-spy then stops the server for each
sample; without it py-spy reads the process without stopping it;
``--no-sample``: no py-spy, only the CPU counts). It writes
DIR/<scenario>.txt (raw collapsed stacks), DIR/<scenario>.svg (flame graph),
DIR/report.md (shares by subsystem: SQLite, protobuf, zstd, crypto, aiohttp,
the loop, tongxin's store/chat/hub/connection/wire code) and
DIR/counts.json: the server's on-CPU time (schedstat) over the sampled span
per SEND, in total and per thread (the event loop's, and the others by name:
Python 3.11 leaves its threads named after the process). relay_bench's
table is printed as usual.

``--micro ROUNDS`` times two per-message pieces of the SEND path in-process
(a frame pushed to a connection and written by aiohttp's frame writer; a
DELIVER payload built from a stored entry) with whatever tongxin is
importable, so a PYTHONPATH to an older tree compares before and after.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster_profile as cp
import relay_bench as rb

# The embedded node has no Kafka, Redis or MariaDB; its own code is split by module
# so that the connection, chat service, hub and store show separately. Order matters:
# a sample goes to the first group that matches its innermost matching frame.
SUBSYSTEMS: list[tuple[str, tuple[str, ...]]] = [
    ("protobuf", ("google/protobuf", "PyUpb", "upb_", "_message.abi3", "_pb2.py")),
    ("zstd", ("zstandard", "zstd")),
    ("SQLite (sqlite3 module, libsqlite3)", ("sqlite3/", "libsqlite3", "_sqlite3", "sqlite3_")),
    ("crypto", ("cryptography/", "libcrypto", "libssl", "hashlib", "/ssl.py", "gmssl",
                "tongxin/auth/passwords.py", "tongxin/atrest/")),
    ("aiohttp/WebSocket", ("aiohttp/", "multidict/", "yarl/", "reader_c", "_websocket")),
    ("prometheus_client", ("prometheus_client/",)),
    ("tongxin store (store/sqlite*)", ("tongxin/store/",)),
    ("tongxin chat service (chat/)", ("tongxin/chat/",)),
    ("tongxin hub (server/hub.py)", ("tongxin/server/hub.py",)),
    ("tongxin delivery bus (delivery/)", ("tongxin/delivery/",)),
    ("tongxin connection (server/connection.py)", ("tongxin/server/connection.py",)),
    ("tongxin wire (wire/)", ("tongxin/wire/",)),
    ("tongxin other", ("tongxin/",)),
]


def _install() -> None:
    cp.SUBSYSTEMS[:] = SUBSYSTEMS
    cp.COLORS.update({"SQLite (sqlite3 module, libsqlite3)": "#5b9bd5", "zstd": "#a0522d",
                      **{name: "#f0c419" for name, _ in SUBSYSTEMS if name.startswith("tongxin")}})


def thread_cpu(pid: int) -> dict[str, int]:
    """On-CPU nanoseconds of each thread of ``pid`` by thread name (summed over
    threads of one name); the event loop's thread is the one whose id is the pid."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            run_ns = int((task / "schedstat").read_text().split()[0])
            name = (task / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
        key = "event loop (main thread)" if task.name == str(pid) else name
        out[key] = out.get(key, 0) + run_ns
    return out


# ---- --micro: the per-message pieces of the SEND path, in-process -------------------


class _NullTransport:
    """What aiohttp's WebSocketWriter writes to: takes every byte, never pauses."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False


class _MicroWs:
    """A server WebSocket whose send_bytes is aiohttp's own frame writer (pinned
    3.14) over a transport that takes everything: the Python of a send, no syscall."""

    def __init__(self) -> None:
        from aiohttp import WSMsgType
        from aiohttp._websocket.writer import WebSocketWriter

        self.transport = _NullTransport()
        protocol = type("P", (), {"_paused": False, "transport": self.transport})()
        self._writer = WebSocketWriter(protocol, self.transport)  # type: ignore[arg-type]
        self._binary = WSMsgType.BINARY
        self.closed = False

    async def send_bytes(self, data: bytes) -> None:
        await self._writer.send_frame(data, self._binary)


def micro(rounds: int) -> dict[str, float]:
    """CPU microseconds (process_time) of (a) pushing a frame to a connection and
    writing it out, the way a SEND's ACK and DELIVER are (two connections per
    message, the loop turning between messages), and (b) building a DELIVER
    payload from a stored entry. Whatever tongxin is importable (PYTHONPATH)
    is measured, so an older tree runs the same code paths as it had them."""
    import asyncio
    import time
    from types import SimpleNamespace

    import uvloop

    from tongxin.chat import service
    from tongxin.config import ServerConfig
    from tongxin.proto import tongxin_pb2 as pb
    from tongxin.server.connection import Connection
    from tongxin.store.ports import Entry
    from tongxin.wire.codec import Encoder, WireLimits

    entry = Entry(conversation_id=f"d:u_{1:020x}:u_{2:020x}", sender_id=f"u_{1:020x}",
                  sender_device="bench-s1", client_msg_id="1733540000000000000-17",
                  sent_at=1_733_540_000_000, kind=pb.CHAT, seq=12345,
                  content=pb.Content(text=("Tongxin relay benchmark message. " * 4)[:100])
                  .SerializeToString())
    payload_of = getattr(service, "entry_payload", None) or (
        lambda e: service.entry_to_pb(e).SerializeToString())
    encoder = Encoder(WireLimits())
    frame = encoder.encode(pb.DELIVER, 0, payload_of(entry))
    out: dict[str, float] = {}

    async def pushes() -> float:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[Any]] = set()

        def spawn(coro: Any) -> asyncio.Task[Any]:  # Node.spawn
            task = loop.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return task

        counter = SimpleNamespace(inc=lambda *a: None)
        node = SimpleNamespace(limits=WireLimits(), fragment_budget=None,
                               cfg=SimpleNamespace(server=ServerConfig()), spawn=spawn,
                               metrics=SimpleNamespace(frame_out=lambda t: None,
                                                       send_queue_overflows=counter))
        pairs = [(Connection(_MicroWs(), node, "s"),  # type: ignore[arg-type]
                  Connection(_MicroWs(), node, "r"))  # type: ignore[arg-type]
                 for _ in range(50)]
        t0 = time.process_time()
        for _ in range(rounds):
            for sender, receiver in pairs:
                receiver.push(frame, pb.DELIVER)
                sender.push(frame, pb.ACK)
            await asyncio.sleep(0)
        for _ in range(1000):  # the last round's writes (a turn or two)
            if not tasks and not any(c.queue for pair in pairs for c in pair):
                break
            await asyncio.sleep(0)
        return (time.process_time() - t0) / (rounds * 100) * 1e6

    out["push + write one frame (us)"] = uvloop.run(pushes())
    n = rounds * 20
    t0 = time.process_time()
    for _ in range(n):
        payload_of(entry)
    out["DELIVER payload from a stored entry (us)"] = (time.process_time() - t0) / n * 1e6
    return out


def main(argv: list[str]) -> int:
    _install()
    if len(argv) == 2 and argv[0] == "--micro":
        print(json.dumps(micro(int(argv[1]))))
        return 0
    if len(argv) == 2 and argv[0] == "--report":
        print(cp.report(Path(argv[1])))
        return 0
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    out_dir = Path(argv[0]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rest = argv[1:]
    native = "--native" in rest
    sample = "--no-sample" not in rest
    rest = [a for a in rest if a not in ("--native", "--no-sample")]
    if rest.count("--synchronous") > 1:
        # counts.json and report.md hold one scenario's SENDs and CPU.
        print("one relay scenario per run: give --synchronous once", file=sys.stderr)
        return 2
    if "--synchronous" not in rest:
        rest += ["--synchronous", "full"]
    if "--no-echo" not in rest:
        rest.append("--no-echo")
    meta: dict[str, Any] = {"scenario": "relay_bench", "native": native, "nodes": [],
                            "cpu_ns": {}, "sent": 0, "results": {}}
    real_run_load = rb.run_load

    async def profiled_run_load(scenario: str, url: str, server_pid: int, *args: Any,
                                **kwargs: Any) -> rb.Result:
        if not scenario.startswith("relay-"):
            return await real_run_load(scenario, url, server_pid, *args, **kwargs)
        started: dict[str, Any] = {}
        real_bounded = rb._bounded

        async def setup_then_sample(*a: Any, **kw: Any) -> Any:
            # relay_bench's setup (registrations: scrypt, conversations) is the only
            # caller of _bounded; sampling starts once it is done, with the warm-up.
            out = await real_bounded(*a, **kw)
            meta["loadavg_before"] = cp.loadavg()
            if sample:
                started["spy"] = cp.start_sampling(server_pid, out_dir / f"{scenario}.txt",
                                                   native)
            started["cpu"] = rb.sched_ns(server_pid)[0]
            started["threads"] = thread_cpu(server_pid)
            return out

        rb._bounded = setup_then_sample
        try:
            result = await real_run_load(scenario, url, server_pid, *args, **kwargs)
        finally:
            rb._bounded = real_bounded
            cpu_after = rb.sched_ns(server_pid)[0]
            threads_after = thread_cpu(server_pid)
            if "spy" in started:
                cp.stop_sampling(started["spy"])
        cpu_before = started["cpu"]
        meta["loadavg_after"] = cp.loadavg()
        meta["nodes"].append(scenario)
        meta["cpu_ns"][scenario] = cpu_after - cpu_before
        meta["sent"] = result.sent
        meta["results"][scenario] = {
            "msgs_per_s": result.msgs_per_s, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
            "server_cpu_pct": result.server_cpu_pct, "server_runq_pct": result.server_runq_pct,
            "sent": result.sent, "cpu_us_per_msg_window":
                result.server_cpu_pct * 1e4 / result.msgs_per_s if result.msgs_per_s else None}
        sent = result.sent or 1
        meta["results"][scenario]["thread_us_per_send"] = {
            name: round((ns - started["threads"].get(name, 0)) / 1000 / sent, 1)
            for name, ns in sorted(threads_after.items(), key=lambda kv: -kv[1])
            if ns - started["threads"].get(name, 0) > 0}
        cp.write_counts(out_dir, meta)
        return result

    rb.run_load = profiled_run_load
    code = rb.main(rest)
    for scenario, res in meta["results"].items():
        print(f"{scenario}: server CPU per SEND by thread (us): {res['thread_us_per_send']}")
    if meta["nodes"] and sample:
        print(cp.report(out_dir))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Where a node's CPU goes per message: cluster_bench.py's ``--profile DIR``.

While the load runs, ``py-spy record`` samples each node by PID (native
frames too, so time in C extensions such as protobuf's upb, uvloop or
libcrypto is not charged to the Python line that called them) and writes
its raw collapsed stacks to ``DIR/<node>.txt``. Around the load the engines'
own counters are read (Redis INFO commandstats of every primary, MariaDB
SHOW GLOBAL STATUS) and, before the run's topics are deleted, the records
in each Kafka topic. Everything is divided by the SENDs of the run.

    .venv/bin/python appliance/bench/cluster_profile.py DIR   # re-render DIR's report

re-reads the stacks and counts in DIR and rewrites ``report.md`` and one
flame graph SVG per node (pruned to frames of >= 0.2% so it stays small).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Samples per second: enough for a 1% share to be ~100 samples over a default run.
RATE = 100
STOP_TIMEOUT = 60.0

# A sample is charged to the innermost frame that belongs to one of these, looked for
# from the leaf upwards; stdlib and interpreter frames are skipped, so a socket write
# in asyncio's StreamWriter is charged to the library that asked for it. asyncmy
# is compiled (Cython): without --native its time shows as the store line calling it.
SUBSYSTEMS: list[tuple[str, tuple[str, ...]]] = [
    ("protobuf", ("google/protobuf", "PyUpb", "upb_", "_message.abi3", "_pb2.py")),
    ("aiokafka", ("aiokafka/", "kafka/")),
    ("redis-py", ("redis/",)),
    ("MariaDB store (mysql_store.py + asyncmy)", ("asyncmy", "tongxin/store/mysql_store.py")),
    ("crypto", ("cryptography/", "libcrypto", "libssl", "hashlib", "/ssl.py", "gmssl",
                "tongxin/auth/passwords.py")),
    ("aiohttp/WebSocket", ("aiohttp/", "multidict/", "yarl/", "reader_c", "_websocket")),
    ("prometheus_client", ("prometheus_client/",)),
    ("tongxin code", ("tongxin/",)),
]
#: Only the event loop itself on the stack: uvloop's C code, callbacks, epoll.
LOOP = "asyncio/uvloop (loop itself)"
OTHER = "other (interpreter, GC, stdlib)"


def pyspy_binary() -> str:
    found = Path(sys.executable).with_name("py-spy")
    if found.exists():
        return str(found)
    which = shutil.which("py-spy")
    if which is None:
        raise RuntimeError("py-spy not found: pip install -e 'appliance[dev]' (make setup)")
    return which


def start_sampling(pid: int, out: Path, native: bool) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` until stop_sampling; raw collapsed stacks to ``out``.

    ``native`` unwinds C frames too, which splits time inside C extensions by
    library, but py-spy then stops the node for each unwind (the run slows
    several-fold on a busy box) and its idle filter no longer works: read_stacks
    drops the waiting threads' samples itself.
    """
    # --nonblocking: reading a running process costs it nothing, and py-spy's
    # idle filter sees the threads' real state (a stopped process looks busy).
    argv = [pyspy_binary(), "record", "--pid", str(pid), "--rate", str(RATE),
            *(["--native"] if native else ["--nonblocking"]),
            "--subprocesses", "--format", "raw", "--output", str(out)]
    log_file = out.with_suffix(".pyspy.log")
    with open(log_file, "wb") as sink:
        # Own session: a Ctrl+C at the terminal is the benchmark's to handle.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                start_new_session=True)


def stop_sampling(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT makes py-spy write what it has sampled; it never outlives this call."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- engine counters ------------------------------------------------------------------

MYSQL_COUNTERS = ("Questions", "Com_select", "Com_insert", "Com_update", "Com_delete",
                  "Com_begin", "Com_commit", "Com_rollback", "Handler_commit",
                  "Com_stmt_execute", "Innodb_os_log_fsyncs")


async def redis_commandstats(spec: str) -> dict[str, int]:
    """Calls per command summed over the primaries (replicas repeat their writes)."""
    from redis.asyncio import Redis

    total: Counter[str] = Counter()
    for part in spec.split(","):
        host, _, port = part.strip().rpartition(":")
        client = Redis(host=host or "127.0.0.1", port=int(port))
        try:
            if (await client.info("replication")).get("role") != "master":
                continue
            for key, value in (await client.info("commandstats")).items():
                total[key.removeprefix("cmdstat_")] += int(value["calls"])
        finally:
            await client.aclose()
    return dict(total)


async def mysql_status(server_dsn: str) -> dict[str, int]:
    import asyncmy

    from tongxin.store.dsn import parse_dsn

    d = parse_dsn(server_dsn)
    conn = await asyncmy.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                                 autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SHOW GLOBAL STATUS")
            rows = await cur.fetchall()
    finally:
        conn.close()
    return {str(k): int(v) for k, v in rows if k in MYSQL_COUNTERS}


async def engine_counters(env: dict[str, str]) -> dict[str, dict[str, int]]:
    return {"redis": await redis_commandstats(env["TONGXIN_REDIS_NODES"]),
            "mysql": await mysql_status(env["TONGXIN_MYSQL_DSN"])}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


async def kafka_records(bootstrap: str, prefix: str) -> dict[str, int]:
    """Records written to each of the run's topics (their end offsets; nothing is compacted)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        # The consumer caches metadata only for topics it reads: ask for all of it.
        cluster = await consumer._client.fetch_all_metadata()
        parts = [TopicPartition(t, p) for t in cluster.topics() if t.startswith(prefix)
                 for p in cluster.partitions_for_topic(t) or ()]
        ends = await consumer.end_offsets(parts) if parts else {}
    finally:
        await consumer.stop()
    out: Counter[str] = Counter()
    for tp, end in ends.items():
        out[tp.topic] += end
    return dict(out)


def kafka_batches(data_dir: Path, prefix: str) -> dict[str, list[int]]:
    """[record batches, records] per topic, read from the broker's segment files.

    Each produce request puts one batch per partition into the log, so
    records per batch is how much the producers batched. Only the v2 batch
    header is read (baseOffset int64, length int32, then at byte 23
    lastOffsetDelta int32); a batch still being written is left out.
    """
    out: dict[str, list[int]] = {}
    for part in sorted(data_dir.glob(f"{prefix}*-*")):
        topic = part.name.rpartition("-")[0]
        counts = out.setdefault(topic, [0, 0])
        for segment in sorted(part.glob("*.log")):
            data = segment.read_bytes()
            pos = 0
            while pos + 27 <= len(data):
                length = int.from_bytes(data[pos + 8:pos + 12], "big", signed=True)
                if length <= 0 or pos + 12 + length > len(data):
                    break
                counts[0] += 1
                counts[1] += int.from_bytes(data[pos + 23:pos + 27], "big", signed=True) + 1
                pos += 12 + length
    return out


# ---- stacks -> shares -----------------------------------------------------------------


#: Frames of a thread that waits, which py-spy counts as active while it stops the
#: process to sample it (its default, and always with --native): an idle
#: thread-pool worker, and epoll.
WAITING = ("PyThread_acquire_lock_timed", "epoll_pwait (", "epoll_wait (",
           "_worker (concurrent/futures/thread.py")


def read_stacks(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy raw format: ``frame;frame;...;leaf count`` per line, root first.

    The first frame names the process; it is dropped so that stacks of
    several runs merge. Waiting threads' samples are dropped (see WAITING).
    """
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        stack = tuple(f for f in frames.split(";") if not f.startswith("process "))
        if not stack or any(w in stack[-1] for w in WAITING) or any(
                w in f for f in stack[-4:] for w in WAITING[:3]):
            continue
        stacks[stack] += int(count)
    return stacks


def subsystem(stack: tuple[str, ...]) -> str:
    for frame in reversed(stack):
        for name, needles in SUBSYSTEMS:
            # tongxin/cli/main.py starts the loop: only the loop is below it.
            if any(n in frame for n in needles) and "tongxin/cli/" not in frame:
                return name
    if any(("uvloop" in f or "asyncio/" in f) for f in stack):
        return LOOP
    return OTHER


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py:12)``."""
    name, _, where = frame.partition(" (")
    for cut in ("site-packages/", "/src/", "/lib/python3"):
        if cut in where:
            where = where.split(cut, 1)[1]
            break
    return f"{name} ({where}" if where else name


def shares(stacks: Counter[tuple[str, ...]]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for stack, n in stacks.items():
        out[subsystem(stack)] += n
    return dict(out.most_common())


def top_self(stacks: Counter[tuple[str, ...]], n: int = 25) -> list[tuple[str, int]]:
    """Leaf frames (self time) with the most samples."""
    out: Counter[str] = Counter()
    for stack, count in stacks.items():
        out[_short(stack[-1])] += count
    return out.most_common(n)


def top_inclusive(stacks: Counter[tuple[str, ...]], needle: str,
                  n: int = 25) -> list[tuple[str, int]]:
    """Frames matching ``needle`` by samples with them anywhere on the stack."""
    out: Counter[str] = Counter()
    for stack, count in stacks.items():
        for frame in dict.fromkeys(f for f in stack if needle in f):
            out[_short(frame)] += count
    return out.most_common(n)


# ---- flame graph ---------------------------------------------------------------------

COLORS = {"protobuf": "#e6a23c", "aiokafka": "#c0504d", "redis-py": "#d9534f",
          "MySQL driver (asyncmy)": "#5b9bd5", "crypto": "#9b59b6", "aiohttp/WebSocket": "#2e8b57",
          "tongxin code": "#f0c419", "asyncio/uvloop": "#8fbc8f", "prometheus_client": "#cd853f",
          "logging": "#bc8f8f"}


def flamegraph_svg(stacks: Counter[tuple[str, ...]], title: str, min_share: float = 0.002,
                   width: int = 1200) -> str:
    """A static flame graph (root at the bottom); frames under ``min_share`` are left out."""
    total = sum(stacks.values()) or 1
    tree: dict[str, Any] = {"n": 0, "kids": {}}
    for stack, count in stacks.items():
        node = tree
        node["n"] += count
        for frame in stack:
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += count
    row, rects, depth = 16, [], 0

    def walk(node: dict[str, Any], path: tuple[str, ...], x: float, level: int) -> None:
        nonlocal depth
        for frame, kid in sorted(node["kids"].items()):
            if kid["n"] / total < min_share:
                x += kid["n"] / total * width
                continue
            w = kid["n"] / total * width
            depth = max(depth, level + 1)
            label = _short(frame)
            color = COLORS.get(subsystem((*path, frame)), "#bbbbbb")
            tip = html.escape(f"{label}: {kid['n']} samples, {100 * kid['n'] / total:.1f}%")
            text = html.escape(label[:int(w / 6.5)]) if w > 30 else ""
            rects.append((level, x, w, color, tip, text))
            walk(kid, (*path, frame), x, level + 1)
            x += w

    walk(tree, (), 0.0, 0)
    height = (depth + 2) * row + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="10">',
           f'<text x="4" y="14" font-size="12">{html.escape(title)}</text>']
    for level, x, w, color, tip, text in rects:
        y = height - (level + 1) * row
        out.append(f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{max(w - 0.5, 0.5):.1f}"'
                   f' height="{row - 1}" fill="{color}"/>'
                   + (f'<text x="{x + 2:.1f}" y="{y + 11}">{text}</text>' if text else "")
                   + "</g>")
    out.append("</svg>")
    return "\n".join(out)


# ---- report ---------------------------------------------------------------------------


def per_message(counts: dict[str, int], sent: int) -> dict[str, float]:
    return {k: v / sent for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if sent else {}


def report(out_dir: Path) -> str:
    meta = json.loads((out_dir / "counts.json").read_text(encoding="utf-8"))
    sent = int(meta["sent"])
    lines = [f"# cluster_bench profile ({meta.get('scenario', '?')})", "",
             f"SENDs in the run: {sent}; py-spy at {RATE} Hz"
             f"{' --native' if meta.get('native') else ''}; loadavg before/after "
             f"{meta.get('loadavg_before')} / {meta.get('loadavg_after')}", ""]
    for name in meta["nodes"]:
        stacks = read_stacks(out_dir / f"{name}.txt")
        total = sum(stacks.values()) or 1
        # py-spy counts a runnable thread waiting for a CPU as busy: on a loaded
        # box samples overstate CPU. The node's own on-CPU time (schedstat) over
        # the sampled span gives us per message; the samples give the shares.
        cpu_us = meta.get("cpu_ns", {}).get(name, 0) / 1000
        per_msg = cpu_us / sent if sent else 0.0
        lines += [f"## {name}: {total} samples, {cpu_us / 1e6:.1f} s on CPU, "
                  f"{per_msg:.0f} us of CPU per SEND", "",
                  "| subsystem | samples | share | us/SEND |", "|---|---:|---:|---:|"]
        for sub, n in shares(stacks).items():
            lines.append(f"| {sub} | {n} | {100 * n / total:.1f}% | {per_msg * n / total:.0f} |")
        lines += ["", "Top self frames:", ""]
        lines += [f"- {n:6d} {100 * n / total:5.1f}%  {f}" for f, n in top_self(stacks)]
        lines += ["", "Top tongxin frames (inclusive):", ""]
        lines += [f"- {n:6d} {100 * n / total:5.1f}%  {f}"
                  for f, n in top_inclusive(stacks, "tongxin/")]
        lines.append("")
        (out_dir / f"{name}.svg").write_text(
            flamegraph_svg(stacks, f"{name}: {total} samples at {RATE} Hz, {sent} SENDs"),
            encoding="utf-8")
    for engine in ("redis", "mysql", "kafka"):
        if engine in meta:
            lines += [f"## {engine} per SEND", ""]
            lines += [f"- {k}: {v:.3f}" for k, v in per_message(meta[engine], sent).items()]
            lines.append("")
    if meta.get("kafka_batches"):
        lines += ["## Kafka record batches (one per produce request and partition)", ""]
        lines += [f"- {topic}: {b} batches, {r} records, {r / b:.1f} records per batch"
                  for topic, (b, r) in meta["kafka_batches"].items() if b]
        lines.append("")
    text = "\n".join(lines)
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def write_counts(out_dir: Path, meta: dict[str, Any]) -> None:
    (out_dir / "counts.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text(encoding="utf-8").split()[0]


def main(argv: Iterable[str]) -> int:
    args = list(argv)
    if len(args) != 1:
        print(__doc__)
        return 2
    print(report(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

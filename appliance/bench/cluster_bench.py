#!/usr/bin/env python3
"""Two nodes on the production engines beside one node on embedded defaults.

    .venv/bin/python appliance/bench/cluster_bench.py
    .venv/bin/python appliance/bench/cluster_bench.py --repeat 3 --json

Scenarios, each on fresh servers, with the load generator of relay_bench.py
(N sender/receiver pairs in direct conversations, ``window`` SENDs in flight
per sender, raw frames):

* ``1node-embedded``: one ``tongxin serve`` on embedded defaults (SQLite with
  group commit, in-process delivery, in-memory presence and rate limits).
* ``2node-production``: two ``tongxin serve`` processes on MariaDB (the
  MySQL-protocol stand-in for TiDB; a fresh database per run), Kafka
  (deliveries topic, router group, per-node topics; topics of their own per
  run) and Redis Cluster (presence, routing, rate limits, revocation; keys of
  their own). Senders connect to node A, receivers to node B, so every
  message is committed by A, published to Kafka, routed by whichever node
  owns its partition, and pushed by B.

Rate limits are on in both (at 1,000,000/s, so they never refuse): the
production path asks Redis for shares of the budget as it would in service
(at this rate a share is sized by the sender's pace only, so fewer calls than
the defaults' 5-token cap would make).

The engines come from ``appliance/scripts/services.sh``; the ones this script
had to start it stops at the end (``--keep-engines`` leaves them). The nodes
run as subprocesses stopped by PID, also on Ctrl+C or SIGTERM. Everything is
on 127.0.0.1. The run is bounded: each scenario takes warm-up + measured +
at most 10 s of drain, plus set-up (bounded too).

``--profile DIR`` attaches py-spy to every node for the load and reads the
engines' counters around it (cluster_profile.py): where the nodes' CPU goes
per message, and how many Redis commands, SQL statements and Kafka records
each message costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import cluster_profile
from relay_bench import (
    HOST,
    STOP_SIGNALS,
    BenchError,
    Children,
    Interrupted,
    _no_nan,
    _on_stop_signal,
    add_load_args,
    bounded,
    free_port,
    log,
    machine_info,
    run_load,
    run_loop,
    sched_ns,
    tail,
    wait_ready,
)

SERVICES = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
ENGINES = ("redis", "kafka", "mariadb")
SCENARIOS = ("1node-embedded", "2node-production")
SERVICES_TIMEOUT = 600.0  # a cold start downloads Kafka's jars once
HIGH_RATE = 1_000_000.0


# ---- engines -----------------------------------------------------------------------


def services(action: str, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SERVICES), action, *names], capture_output=True,
                          text=True, timeout=SERVICES_TIMEOUT, check=False)


def ensure_engines() -> tuple[dict[str, str], list[str]]:
    """Start what is not running; return the env and the engines this run started."""
    started = []
    for name in ENGINES:
        if services("status", name).returncode != 0:
            log(f"starting {name} (services.sh start {name})")
            proc = services("start", name)
            if proc.returncode != 0:
                raise BenchError(f"services.sh start {name} failed:\n{proc.stderr[-2000:]}")
            started.append(name)
    env: dict[str, str] = {}
    for line in services("env").stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            env[key] = value
    return env, started


def engine_pids(env: dict[str, str]) -> list[int]:
    state = Path(env["TONGXIN_SERVICES_DIR"])
    files = [*sorted(state.glob("redis/*/redis.pid")), state / "kafka" / "kafka.pid",
             state / "mariadb" / "mariadb.pid"]
    pids = []
    for f in files:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int(f.read_text().split()[0]))
    return pids


def engines_ns(pids: list[int]) -> int:
    return sum(sched_ns(p)[0] for p in pids)


async def _mysql(dsn_url: str, sql: str) -> None:
    import asyncmy

    from tongxin.store.dsn import parse_dsn

    d = parse_dsn(dsn_url)
    conn = await asyncmy.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                                 database=d.database, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


def fresh_database(server_dsn: str, name: str) -> str:
    from tongxin.store.dsn import parse_dsn

    run_loop(_mysql(server_dsn, f"CREATE DATABASE `{name}`"))
    d = parse_dsn(server_dsn)
    return f"mysql://{quote(d.user, safe='')}:{quote(d.password, safe='')}@{d.host}:{d.port}/{name}"


async def _forget_kafka_and_redis(env: dict[str, str], tag: str) -> None:
    """Best effort: the run's topics and Redis keys go away with it."""
    from aiokafka.admin import AIOKafkaAdminClient
    from redis.asyncio.cluster import RedisCluster

    from tongxin.presence.redis_presence import parse_nodes

    with contextlib.suppress(Exception):
        admin = AIOKafkaAdminClient(bootstrap_servers=env["TONGXIN_KAFKA_BOOTSTRAP"])
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(f"txb-{tag}")]
            if topics:
                await admin.delete_topics(topics)
        finally:
            await admin.close()
    with contextlib.suppress(Exception):
        redis = RedisCluster(startup_nodes=parse_nodes(env["TONGXIN_REDIS_NODES"]),
                             decode_responses=True)
        try:
            keys = [k async for k in redis.scan_iter(match=f"txb{tag}:*", count=1000)]
            for k in keys:
                await redis.delete(k)
        finally:
            await redis.aclose()


# ---- node configurations ------------------------------------------------------------


def _common(port: int, data_dir: Path, node_id: str) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir), "node_id": node_id,
        "server": {"listen": f"{HOST}:{port}", "web_client": False},
        "accounts": {"self_registration": True, "scrypt_n": 1024},
        "chat": {"rate_limit_per_second": HIGH_RATE, "rate_limit_burst": HIGH_RATE},
        "logging": {"level": "warning"},
    }


def production(cfg: dict[str, Any], env: dict[str, str], dsn: str, tag: str) -> dict[str, Any]:
    cfg["storage"] = {"backend": "mysql", "mysql_dsn": dsn}
    cfg["delivery"] = {"backend": "kafka"}
    cfg["kafka"] = {"bootstrap_servers": env["TONGXIN_KAFKA_BOOTSTRAP"],
                    "topic_prefix": f"txb-{tag}", "deliveries_topic": f"txb-{tag}.deliveries",
                    "router_group": f"txb-{tag}-router"}
    cfg["presence"] = {"backend": "redis", "redis_nodes": env["TONGXIN_REDIS_NODES"],
                       "key_prefix": f"txb{tag}"}
    return cfg


# ---- scenarios ------------------------------------------------------------------------


def start_node(children: Children, workdir: Path, name: str, cfg: dict[str, Any],
               port: int) -> subprocess.Popen[bytes]:
    path = workdir / f"{name}.json"  # JSON is YAML
    path.write_text(json.dumps(cfg), encoding="utf-8")
    log_path = workdir / f"{name}.log"
    proc = children.start([sys.executable, "-m", "tongxin.cli.main", "serve", "--config",
                           str(path)], log_path, None)
    wait_ready(proc, port, log_path)
    return proc


def run_scenario(scenario: str, args: argparse.Namespace, children: Children,
                 env: dict[str, str], text: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"tongxin-cbench-{scenario}-", dir=args.data_root))
    tag = uuid.uuid4().hex[:8]
    db = f"tongxin_bench_{tag}"
    procs: list[subprocess.Popen[bytes]] = []
    samplers: list[subprocess.Popen[bytes]] = []
    names: list[str] = []
    dsn = ""
    try:
        if scenario == "1node-embedded":
            port = free_port()
            names.append("node")
            procs.append(start_node(children, workdir, "node",
                                    _common(port, workdir / "data", "bench"), port))
            urls = [f"ws://{HOST}:{port}/ws"]
        else:
            dsn = fresh_database(env["TONGXIN_MYSQL_DSN"], db)
            urls = []
            for name in ("bench-a", "bench-b"):
                port = free_port()
                cfg = production(_common(port, workdir / "data", name), env, dsn, tag)
                names.append(name)
                procs.append(start_node(children, workdir, name, cfg, port))
                urls.append(f"ws://{HOST}:{port}/ws")
        log(f"{scenario}: nodes {', '.join(str(p.pid) for p in procs)} ready; "
            f"{args.warmup:g}s warm-up + {args.duration:g}s measured")
        epids = engine_pids(env)
        profile_dir = args.profile / scenario if args.profile else None
        counters: dict[str, Any] = {}
        if profile_dir:
            profile_dir.mkdir(parents=True, exist_ok=True)
            counters["loadavg_before"] = cluster_profile.loadavg()
            if dsn:
                counters["before"] = run_loop(cluster_profile.engine_counters(env))
            counters["cpu_ns"] = {n: sched_ns(p.pid)[0] for p, n in zip(procs, names, strict=True)}
            samplers.extend(cluster_profile.start_sampling(p.pid, profile_dir / f"{name}.txt",
                                                           args.profile_native)
                            for p, name in zip(procs, names, strict=True))
        e0, t0 = engines_ns(epids), time.perf_counter_ns()
        try:
            result = run_loop(run_load(
                scenario, urls[0], procs[0].pid, args, text,
                receiver_url=urls[-1], other_pids=[p.pid for p in procs[1:]]))
        except (aiohttp.ClientError, OSError) as exc:
            raise BenchError(f"{scenario}: load generator failed: {exc!r}\n"
                             f"{tail(workdir / f'{names[0]}.log')}") from exc
        finally:
            cpu_after = {n: sched_ns(p.pid)[0] for p, n in zip(procs, names, strict=True)}
            for s in samplers:
                cluster_profile.stop_sampling(s)
            if Interrupted.seen:
                raise KeyboardInterrupt
        if profile_dir:
            counters["cpu_ns"] = {n: cpu_after[n] - counters["cpu_ns"][n] for n in names}
            write_profile(profile_dir, scenario, names, result.sent, args.profile_native,
                          counters, env, dsn, tag)
        engines_pct = 100 * (engines_ns(epids) - e0) / (time.perf_counter_ns() - t0)
        for p, name in zip(procs, names, strict=True):
            if p.poll() is not None:
                raise BenchError(f"{name} died during the run:\n{tail(workdir / f'{name}.log')}")
        out = asdict(result)
        out["nodes"] = len(procs)
        out["engines_cpu_pct"] = engines_pct if scenario != "1node-embedded" else None
        return out
    finally:
        for s in samplers:
            cluster_profile.stop_sampling(s)
        for p in procs:
            children.stop(p)
        if dsn:
            with contextlib.suppress(Exception):
                run_loop(_mysql(env["TONGXIN_MYSQL_DSN"], f"DROP DATABASE IF EXISTS `{db}`"))
            run_loop(_forget_kafka_and_redis(env, tag))
        shutil.rmtree(workdir, ignore_errors=True)


def write_profile(out: Path, scenario: str, names: list[str], sent: int, args_native: bool,
                  counters: dict[str, Any], env: dict[str, str], dsn: str, tag: str) -> None:
    """Counts per SEND beside the stacks; the run's topics still exist here."""
    meta: dict[str, Any] = {"scenario": scenario, "nodes": names, "sent": sent,
                            "native": args_native, "cpu_ns": counters["cpu_ns"],
                            "loadavg_before": counters["loadavg_before"],
                            "loadavg_after": cluster_profile.loadavg()}
    if dsn:
        after = run_loop(cluster_profile.engine_counters(env))
        for engine in ("redis", "mysql"):
            meta[engine] = cluster_profile.delta(counters["before"][engine], after[engine])
        meta["kafka"] = run_loop(cluster_profile.kafka_records(env["TONGXIN_KAFKA_BOOTSTRAP"],
                                                               f"txb-{tag}"))
        data = Path(env["TONGXIN_SERVICES_DIR"]) / "kafka" / "data"
        meta["kafka_batches"] = cluster_profile.kafka_batches(data, f"txb-{tag}")
    cluster_profile.write_counts(out, meta)
    cluster_profile.report(out)
    log(f"{scenario}: profile in {out} (report.md, one SVG and raw stacks per node)")


# ---- report -------------------------------------------------------------------------------

COLUMNS: list[tuple[str, str, Callable[[float], str]]] = [
    ("msgs_per_s", "msgs/s", lambda v: f"{v:.0f}"),
    ("p50_ms", "ACK p50", lambda v: f"{v:.1f}"),
    ("p99_ms", "ACK p99", lambda v: f"{v:.1f}"),
    ("e2e_p50_ms", "e2e p50", lambda v: f"{v:.1f}"),
    ("e2e_p99_ms", "e2e p99", lambda v: f"{v:.1f}"),
    ("server_cpu_pct", "nodes cpu%", lambda v: f"{v:.0f}"),
    ("server_runq_pct", "nodes rq%", lambda v: f"{v:.0f}"),
    ("engines_cpu_pct", "engines cpu%", lambda v: f"{v:.0f}"),
    ("generator_cpu_pct", "gen cpu%", lambda v: f"{v:.0f}"),
]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of each column over repeated runs of one scenario."""
    out: dict[str, Any] = {"runs": len(runs), "errors": sum(r["errors"] for r in runs),
                           "notes": [n for r in runs for n in r["notes"]]}
    for key, _, _ in COLUMNS:
        values = [r[key] for r in runs if r[key] is not None and not math.isnan(r[key])]
        out[key] = ({"median": statistics.median(values), "min": min(values),
                     "max": max(values)} if values else None)
    return out


def print_table(machine: dict[str, Any], params: dict[str, Any],
                summary: dict[str, dict[str, Any]]) -> None:
    m, p = machine, params
    print("Tongxin cluster benchmark: 2 nodes on production engines vs 1 node embedded")
    print(f"machine : nproc {m['nproc']}, {m['cpu_model']}, loadavg {m['loadavg_1m']}")
    print(f"          Python {m['python']}, uvloop {m['uvloop'] or 'no'}, {m['platform']}")
    print(f"params  : pairs {p['pairs']}, window {p['window']} (in flight "
          f"{p['pairs'] * p['window']}), warm-up {p['warmup']:g}s, measured {p['duration']:g}s, "
          f"text {p['payload']} B, runs {p['repeat']} per scenario (alternating), not pinned")
    print()
    many = p["repeat"] > 1
    width = 22 if many else 13
    head = f"{'':<18}" + "".join(f"{h:>{width}}" for _, h, _ in COLUMNS)
    print(head)
    print("-" * len(head))
    for scenario, s in summary.items():
        cells = []
        for key, _, fmt in COLUMNS:
            v = s[key]
            if v is None:
                cells.append(f"{'-':>{width}}")
            elif many:
                cell = f"{fmt(v['median'])} ({fmt(v['min'])}-{fmt(v['max'])})"
                cells.append(f"{cell:>{width}}")
            else:
                cells.append(f"{fmt(v['median']):>{width}}")
        print(f"{scenario:<18}" + "".join(cells))
    print()
    if many:
        print("cells: median of the runs (min-max).")
    print("msgs/s: DELIVER frames received by the receivers per second of the measured window.")
    print("ACK: send -> ACK at the sender (after the commit, and in production the Kafka ack).")
    print("e2e: send -> DELIVER at the receiver (production: another node, through Kafka).")
    print("cpu: on-CPU time / wall time; nodes summed; engines = Redis + Kafka + MariaDB over")
    print("     the whole scenario (set-up included). 100% = one core. rq: time the nodes were")
    print("     runnable but waiting for a CPU (high: the machine, not Tongxin, set the pace).")
    for scenario, s in summary.items():
        if s["errors"]:
            print(f"note    : {scenario}: {s['errors']} error replies")
        for note in dict.fromkeys(s["notes"]):
            print(f"note    : {scenario}: {note}")


# ---- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_load_args(p)
    p.add_argument("--repeat", type=bounded(int, 1, 9), default=1,
                   help="runs per scenario, alternating; the table shows medians (default 1)")
    p.add_argument("--scenario", action="append", choices=SCENARIOS,
                   help="run only this scenario (repeatable; default both)")
    p.add_argument("--keep-engines", action="store_true",
                   help="leave running the engines this script had to start")
    p.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()),
                   help="where per-run data directories are made (default: system temp)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy on every node during the load, engine counters around it: "
                        "DIR/<scenario>/ gets raw stacks, flame graph SVGs, counts.json and "
                        "report.md (py-spy reads the nodes without stopping them, but its own "
                        "CPU comes from the same cores)")
    p.add_argument("--profile-native", action="store_true",
                   help="with --profile: unwind C frames too (splits time inside C extensions; "
                        "py-spy then stops the nodes for each sample: such a run sent a third as many)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = list(dict.fromkeys(args.scenario or SCENARIOS))
    args.data_root.mkdir(parents=True, exist_ok=True)
    text = ("Tongxin relay benchmark message. " * (args.payload // 33 + 1))[:args.payload]
    children = Children()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)
    started: list[str] = []
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
    try:
        env, started = ({}, []) if scenarios == ["1node-embedded"] else ensure_engines()
        for _ in range(args.repeat):
            for scenario in scenarios:
                runs[scenario].append(run_scenario(scenario, args, children, env, text))
    except KeyboardInterrupt:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        log("interrupted; stopping servers")
        return 130
    except BenchError as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        children.stop_all()
        if started and not args.keep_engines:
            log(f"stopping the engines this run started: {' '.join(started)}")
            services("stop", *started)
    allowed = sorted(os.sched_getaffinity(0))
    machine = machine_info(args.data_root, allowed, (None, None))
    params = {"pairs": args.pairs, "window": args.window, "duration": args.duration,
              "warmup": args.warmup, "payload": args.payload, "repeat": args.repeat,
              "scenarios": scenarios}
    summary = {s: summarize(r) for s, r in runs.items()}
    if args.json:
        print(json.dumps(_no_nan({"machine": machine, "params": params, "summary": summary,
                                  "runs": runs}), indent=2))
    else:
        print_table(machine, params, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

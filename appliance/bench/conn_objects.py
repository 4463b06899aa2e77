#!/usr/bin/env python3
"""What one held connection costs the cyclic GC: tracked objects by type, on a live node.

    .venv/bin/python appliance/bench/conn_objects.py --connections 500

Runs a node in this process (embedded defaults, a temp home) and one client
process (bench/conn_bench.py --worker) that registers the connections and
heartbeats them. Lists the objects ``gc.get_objects()`` holds after AUTH that
it did not before, per connection and by type, and then the objects a round of
heartbeats leaves in the young generations (what each PING allocates that the
collector has to examine). A measuring tool: not part of any test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web
from relay_bench import free_port, run_loop

from tongxin.config import load_config
from tongxin.server.node import Node

HERE = Path(__file__).resolve().parent


def by_type(objs: list[Any]) -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objs)


def show(title: str, diff: Counter[str], n: int, top: int = 40) -> None:
    total = sum(diff.values())
    print(f"\n{title}: {total} objects, {total / n:.1f} per connection")
    for name, count in diff.most_common(top):
        if count / n >= 0.05:
            print(f"  {count / n:6.2f}  {name}")


async def main(args: argparse.Namespace) -> int:
    home = Path(tempfile.mkdtemp(prefix="tongxin-conn-objects-"))
    cfg = load_config()
    cfg.data_dir = str(home)
    port = free_port()
    cfg.server.listen = f"127.0.0.1:{port}"
    cfg.server.heartbeat_interval = args.heartbeat
    cfg.server.metrics_listen = ""
    cfg.accounts.scrypt_n = 1024
    cfg.accounts.self_registration = True
    cfg.chat.rate_limit_per_second = 0
    cfg.logging.level = "warning"
    node = Node(cfg)
    runner = web.AppRunner(node.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "conn_bench.py"), "--worker", "--url",
        f"ws://127.0.0.1:{port}/ws", "--first", "0", "--count", str(args.connections),
        "--source", "127.0.0.2", "--prefix", "o", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None

    async def ask(doc: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(doc) + "\n").encode())
        await proc.stdin.drain()
        result: dict[str, Any] = json.loads(await proc.stdout.readline())
        return result

    try:
        await proc.stdout.readline()
        # Warm up every code path once (imports, caches) so that they are not counted.
        gc.collect()
        before = by_type(gc.get_objects())
        opened = await ask({"op": "open", "parallel": 32})
        n = opened["opened"]
        await asyncio.sleep(1.0)
        gc.collect()
        after = by_type(gc.get_objects())
        diff = after - before
        show("tracked after AUTH (after a full collection)", diff, n)
        if args.freeze:
            gc.freeze()
        # One heartbeat round: what do PINGs leave for the young generations?
        gc.collect()
        gc.disable()
        base = by_type(gc.get_objects(0))
        await asyncio.sleep(args.heartbeat * 1.3)
        stats = await ask({"op": "stats"})
        young = by_type(gc.get_objects(0)) - base
        gc.enable()
        show(f"young generation after {args.heartbeat * 1.3:g}s of heartbeats "
             f"({stats['pongs']} PONGs so far)", young, n)
        gc.collect()
        survivors = by_type(gc.get_objects()) - after
        show("tracked after that and a full collection, beyond the after-AUTH set", survivors, n,
             15)
        # Closed connections: freed by reference counting, or left in cycles
        # that only a collection finds (and that gc.freeze() would keep forever)?
        gc.collect()
        gc.freeze()
        closes = await ask({"op": "close"})
        await asyncio.sleep(2.0)
        gc.unfreeze()
        found = gc.collect()
        print(f"\nafter {closes['closed']} closes ({closes['replied']} replied): a full collection "
              f"found {found} unreachable objects, {found / n:.1f} per connection")
    finally:
        if proc.returncode is None:
            proc.stdin.close()
            await proc.wait()
        await runner.cleanup()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--heartbeat", type=float, default=2.0)
    p.add_argument("--freeze", action="store_true", help="gc.freeze() after AUTH")
    sys.exit(run_loop(main(p.parse_args())))

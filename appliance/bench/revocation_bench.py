#!/usr/bin/env python3
"""What token revocation costs per AUTH (docs/security.md, "Revocation across sites").

    .venv/bin/python appliance/bench/revocation_bench.py [--calls 2000] [--json]

``Accounts.resume`` (the AUTH of a WebSocket, files and admin API request)
in-process on MariaDB (the MySQL-protocol stand-in for TiDB; a fresh
database per run) and the local Redis Cluster, both from services.sh, with:

* ``store``: no Redis (NoRevocations): the store answers every AUTH;
* ``redis+store``: the chosen design: one MGET on this site's Redis, then
  the store for every token Redis does not call revoked.

For each: valid tokens (the common case) and revoked ones, p50 and p99 in
milliseconds, and the bare MGET. Everything is on 127.0.0.1, so a remote
Redis would add its network round trip on top of the MGET measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cluster_bench import _mysql as mysql_admin  # one admin statement, as cluster_bench runs it

from tongxin.auth.accounts import Accounts
from tongxin.auth.redis_revocation import RedisRevocations
from tongxin.auth.revocation import NoRevocations, Revocations
from tongxin.auth.tokens import KEY_BYTES, TokenSigner
from tongxin.config import load_config
from tongxin.errors import RequestError
from tongxin.server.node import make_store

ROUNDS = 20
SERVICES = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"


def service_env() -> dict[str, str]:
    subprocess.run(["bash", str(SERVICES), "start", "redis", "mariadb"], check=True,
                   capture_output=True, timeout=600)
    out = subprocess.run(["bash", str(SERVICES), "env"], check=True, capture_output=True,
                         text=True).stdout
    return dict(line[len("export "):].split("=", 1) for line in out.splitlines()
                if line.startswith("export "))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(calls: int, fn: Any) -> list[float]:
    """Milliseconds per call, one call at a time."""
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        await fn(i)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def run(calls: int) -> dict[str, Any]:
    env = service_env()
    server_dsn = env["TONGXIN_MYSQL_DSN"]
    name = f"tongxin_bench_{uuid.uuid4().hex[:10]}"
    await mysql_admin(server_dsn, f"CREATE DATABASE `{name}`")
    dsn = server_dsn.rsplit("/", 1)[0] + "/" + name
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as home:
            cfg = load_config()
            cfg.data_dir = home
            cfg.storage.backend, cfg.storage.mysql_dsn = "mysql", dsn
            cfg.accounts.scrypt_n, cfg.accounts.self_registration = 1024, True
            store = make_store(cfg)
            await store.open()
            signer = TokenSigner(os.urandom(KEY_BYTES))
            prefix = f"txb{uuid.uuid4().hex[:6]}"
            try:
                cases: dict[str, dict[str, Any]] = {}
                for label in ("store", "redis+store"):
                    revocations: Revocations = (NoRevocations() if label == "store" else
                                                RedisRevocations(env["TONGXIN_REDIS_NODES"], prefix))
                    accounts = Accounts(store, signer, cfg.accounts, revocations)
                    valid, revoked = [], []
                    for i in range(20):
                        s = await accounts.register(f"{label[0]}b{i}", "bench-password-1", "", "pc")
                        t = await accounts.issue(s.user, "phone")
                        await accounts.revoke(t.claims.token_id, s.user.id, t.claims.expires_at_ms)
                        valid.append(s.token)
                        revoked.append(t.token)

                    async def ok(i: int, tokens: list[str] = valid,
                                 acc: Accounts = accounts) -> None:
                        await acc.resume(tokens[i % len(tokens)], "")

                    async def refused(i: int, tokens: list[str] = revoked,
                                      acc: Accounts = accounts) -> None:
                        try:
                            await acc.resume(tokens[i % len(tokens)], "")
                        except RequestError:
                            return
                        raise AssertionError("a revoked token was accepted")

                    await timed(200, ok)  # warm the pool and the caches
                    cases[label] = {"valid": ok, "revoked": refused, "rv": revocations}
                red = cases["redis+store"]["rv"]
                assert isinstance(red, RedisRevocations)

                async def mget(i: int, r: RedisRevocations = red) -> None:
                    await r.redis.mget(r.token_key("u", str(i)), r.user_key("u"))

                cases["redis"] = {"MGET": mget}
                # Interleaved in rounds, so that a busy machine slows every case alike.
                samples: dict[tuple[str, str], list[float]] = {}
                for _ in range(ROUNDS):
                    for label, fns in cases.items():
                        for case, fn in fns.items():
                            if case != "rv":
                                samples.setdefault((label, case), []).extend(
                                    await timed(max(1, calls // ROUNDS), fn))
                for (label, case), values in samples.items():
                    results.setdefault(label, {})[case] = {
                        "p50_ms": round(statistics.median(values), 3),
                        "p99_ms": round(pct(values, 0.99), 3)}
                for fns in cases.values():
                    if "rv" in fns:
                        await fns["rv"].close()
            finally:
                await store.close()
    finally:
        await mysql_admin(server_dsn, f"DROP DATABASE IF EXISTS `{name}`")
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="timed AUTHs per case (2000)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    results = asyncio.run(run(max(10, min(args.calls, 100_000))))
    if args.json:
        print(json.dumps(results))
        return 0
    for label in ("store", "redis+store"):
        for case in ("valid", "revoked"):
            r = results[label][case]
            print(f"{label:12} {case:8} AUTH p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms")
    m = results["redis"]["MGET"]
    print(f"{'redis':12} {'MGET':8}      p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

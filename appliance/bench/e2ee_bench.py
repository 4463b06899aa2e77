#!/usr/bin/env python3
"""End-to-end encryption benchmark: messages/s sealed and opened per crypto suite, beside
plain (unencrypted) relay measured in the same run.

    .venv/bin/python appliance/bench/e2ee_bench.py
    .venv/bin/python appliance/bench/e2ee_bench.py --messages 500 --relay-messages 200 --json

Two parts, for every suite that can run here (gm needs SM2 from OpenSSL >= 3.0 libcrypto):

* ``crypto``: the library alone (tongxin.e2ee, no network). ``pairwise-seal`` /
  ``pairwise-open``: one sender device to one recipient device, one direction (the
  symmetric chain, no KEM). ``ratchet-turn``: the two devices take turns, so every
  message starts a new chain (a KEM encapsulation and decapsulation each). ``group-seal``
  / ``group-open``: a sender-key message (signature + AEAD) sealed once, opened by one
  member. ``plain-serialise`` is the baseline without crypto (building the protobuf).
* ``relay``: a ``tongxin serve`` subprocess (this suite, embedded defaults, started and
  stopped by PID like relay_bench.py) and two SDK clients in this process, one message in
  flight: ``plain`` sends text and waits for the receiver's DELIVER; ``e2ee-sealed``
  seals with the library (sessions set up once), sends, and the receiver opens;
  ``e2ee-sdk`` is the full SDK path (E2EEClient.send_text: conversation and key-directory
  lookups before every send) with the receiver opening.

Each measurement stops after ``--messages`` (crypto) / ``--relay-messages`` (relay) or
``--duration`` seconds, whichever comes first, so a run is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from relay_bench import (
    HOST,
    PASSWORD,
    BenchError,
    Children,
    bounded,
    free_port,
    log,
    server_config,
    tail,
    wait_ready,
)

from tongxin.client import Client, pb
from tongxin.crypto.suite import available_suites, get_suite
from tongxin.e2ee import Device
from tongxin.proto import e2ee_pb2 as e2

CONV = "d:u_a:u_b"
GROUP = "g:00000000000000000000"


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def timed(n_max: int, budget: float, step: Callable[[int], object]) -> tuple[int, float]:
    start = time.perf_counter()
    n = 0
    while n < n_max and time.perf_counter() - start < budget:
        step(n)
        n += 1
    return n, time.perf_counter() - start


async def atimed(n_max: int, budget: float,
                 step: Callable[[int], Awaitable[None]]) -> tuple[int, float]:
    start = time.perf_counter()
    n = 0
    while n < n_max and time.perf_counter() - start < budget:
        await step(n)
        n += 1
    return n, time.perf_counter() - start


def _devices(suite_name: str) -> tuple[Device, Device]:
    s = get_suite(suite_name)
    a, b = Device.create(s, "u_a", "a1"), Device.create(s, "u_b", "b1")
    pub = b.publish(one_time=1)
    a.add_bundle(e2.DeviceBundle(user_id="u_b", device_id="b1", identity_key=pub.identity_key,
                                 signed_prekey=pub.signed_prekey,
                                 one_time_prekey=pub.one_time_prekeys[0]))
    return a, b


def crypto_part(suite_name: str, args: argparse.Namespace, text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def record(name: str, n: int, secs: float) -> None:
        out.append({"suite": suite_name, "part": "crypto", "scenario": name, "messages": n,
                    "seconds": round(secs, 3), "msgs_per_s": round(_rate(n, secs), 1)})

    payload = e2.Payload(text=text)
    record("plain-serialise", *timed(args.messages, args.duration,
                                     lambda i: e2.Payload(text=text).SerializeToString()))
    a, b = _devices(suite_name)
    # Open one message first so the session is confirmed and the init is no longer sent.
    b.open(CONV, "u_a", "a1", a.seal(CONV, payload, [("u_b", "b1")]).SerializeToString())
    sealed: list[bytes] = []
    record("pairwise-seal", *timed(args.messages, args.duration, lambda i: sealed.append(
        a.seal(CONV, payload, [("u_b", "b1")]).SerializeToString())))
    record("pairwise-open", *timed(len(sealed), args.duration,
                                   lambda i: b.open(CONV, "u_a", "a1", sealed[i])))

    def turn(i: int) -> None:
        src, dst = (a, b) if i % 2 == 0 else (b, a)
        data = src.seal(CONV, payload, [(dst.user_id, dst.device_id)]).SerializeToString()
        dst.open(CONV, src.user_id, src.device_id, data)

    record("ratchet-turn (seal+open)", *timed(args.messages, args.duration, turn))

    dist = a.sender_key_distribution(GROUP, ["u_a", "u_b"])
    assert dist is not None
    b.open(GROUP, "u_a", "a1", a.seal(GROUP, dist, [("u_b", "b1")]).SerializeToString())
    group: list[bytes] = []
    record("group-seal", *timed(args.messages, args.duration, lambda i: group.append(
        a.seal_group(GROUP, payload).SerializeToString())))
    record("group-open", *timed(len(group), args.duration,
                                lambda i: b.open(GROUP, "u_a", "a1", group[i])))
    return out


async def _next_chat(c: Client) -> pb.Message:
    while True:
        ev = await c.next_event(pb.DELIVER, wait=30.0)
        if ev.message.kind == pb.CHAT:
            msg: pb.Message = ev.message
            return msg


async def relay_load(url: str, suite_name: str, args: argparse.Namespace, text: str,
                     keys: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def record(name: str, n: int, secs: float) -> None:
        out.append({"suite": suite_name, "part": "relay", "scenario": name, "messages": n,
                    "seconds": round(secs, 3), "msgs_per_s": round(_rate(n, secs), 1)})

    async with Client(url, device_id="a1") as alice, Client(url, device_id="b1") as bob:
        await alice.register("benchalice", PASSWORD)
        await bob.register("benchbob", PASSWORD)
        conv = (await alice.direct("benchbob")).conversation_id

        async def plain(i: int) -> None:
            await alice.send_text(conv, text)
            if (await _next_chat(bob)).content.text != text:
                raise BenchError("plain relay delivered something else")

        await plain(0)  # warm the path
        record("plain", *await atimed(args.relay_messages, args.duration, plain))

        ea = await alice.e2ee(keys / "alice")
        eb = await bob.e2ee(keys / "bob")
        await ea.send_text(conv, "warm-up")
        await eb.open(await _next_chat(bob))
        dev = ea.device

        async def sealed(i: int) -> None:
            env = dev.seal(conv, e2.Payload(text=text), [(bob.user_id, "b1")])
            await alice.send(conv, pb.Content(encrypted=env.SerializeToString()))
            opened = await eb.open(await _next_chat(bob))
            if opened is None or opened.payload.text != text:
                raise BenchError("e2ee relay opened something else")

        record("e2ee-sealed", *await atimed(args.relay_messages, args.duration, sealed))

        async def sdk(i: int) -> None:
            await ea.send_text(conv, text)
            opened = await eb.open(await _next_chat(bob))
            if opened is None or opened.payload.text != text:
                raise BenchError("e2ee relay opened something else")

        record("e2ee-sdk", *await atimed(args.relay_messages, args.duration, sdk))
    return out


def relay_part(suite_name: str, args: argparse.Namespace, children: Children,
               text: str) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix=f"tongxin-e2ee-bench-{suite_name}-"))
    port = free_port()
    log_path = workdir / "server.log"
    cfg = workdir / "tongxin.yml"
    cfg.write_text(server_config(workdir / "data", port, "normal")
                   + f"crypto:\n  suite: {suite_name}\n")
    proc = children.start([sys.executable, "-m", "tongxin.cli.main", "serve", "--config",
                           str(cfg)], log_path, None)
    try:
        wait_ready(proc, port, log_path)
        log(f"relay {suite_name}: server pid {proc.pid} on {HOST}:{port}")
        result = asyncio.run(relay_load(f"ws://{HOST}:{port}/ws", suite_name, args, text,
                                        workdir / "client-keys"))
        if proc.poll() is not None:
            raise BenchError(f"server died during the run:\n{tail(log_path)}")
        return result
    finally:
        children.stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=bounded(int, 1, 1_000_000), default=2000,
                   help="messages per crypto measurement (default 2000)")
    p.add_argument("--relay-messages", type=bounded(int, 1, 100_000), default=300,
                   help="messages per relay measurement (default 300)")
    p.add_argument("--duration", type=bounded(float, 0.5, 120.0), default=10.0,
                   help="seconds at most per measurement (default 10)")
    p.add_argument("--payload", type=bounded(int, 1, 16384), default=100,
                   help="characters of message text (default 100)")
    p.add_argument("--suite", action="append", choices=["gm", "international"],
                   help="suite(s) to run; repeat for both (default: every available one)")
    p.add_argument("--no-relay", action="store_true", help="crypto part only (no server)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    text = "x" * args.payload
    here = available_suites()
    suites = list(dict.fromkeys(args.suite or list(here)))
    missing = [s for s in suites if s not in here]
    if missing:
        log(f"suite(s) {', '.join(missing)} cannot run here (SM2 unavailable?); skipping")
    results: list[dict[str, Any]] = []
    children = Children()
    try:
        for s in [s for s in suites if s in here]:
            log(f"crypto {s}")
            results += crypto_part(s, args, text)
            if not args.no_relay:
                results += relay_part(s, args, children, text)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except BenchError as exc:
        log(str(exc))
        return 1
    finally:
        children.stop_all()
    if args.json:
        print(json.dumps({"params": vars(args) | {"suite": suites}, "results": results}))
        return 0
    print(f"{'suite':<14}{'part':<8}{'scenario':<26}{'messages':>9}{'msgs/s':>12}")
    for r in results:
        print(f"{r['suite']:<14}{r['part']:<8}{r['scenario']:<26}{r['messages']:>9}"
              f"{r['msgs_per_s']:>12,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

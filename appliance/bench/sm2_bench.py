#!/usr/bin/env python3
"""SM2 benchmark: operations per second of the libcrypto backend, beside gmssl-pyx (GmSSL) as
the baseline measured in the same run, and whether decryption or signing time depends on
the private key's bit length.

    .venv/bin/python appliance/bench/sm2_bench.py
    .venv/bin/python appliance/bench/sm2_bench.py --reps 600 --out /tmp/sm2.json

Two parts:

* ``throughput``: sign (100-byte message, default signer ID), verify, encrypt and decrypt
  (32-byte plaintext: a wrapped key) per second, for ``libcrypto`` through the appliance's
  API (tongxin.crypto.sm2: DER checks included), ``libcrypto-binding`` (openssl_sm2 alone)
  and ``gmssl-pyx`` when it imports (x86_64 dev installs). Each (backend, operation) runs
  for ``--slice`` seconds per round, rounds in shuffled order, and the median round is
  reported, so load from other processes hits all backends alike.
* ``key_length``: decryption and signing time for private keys with d < 2^64, d < 2^128 and
  full-length d (256 bits), ``--keys`` keys per class. One repetition times one operation
  per (backend, key) in shuffled order; ``--reps`` repetitions; per class the median, the
  quartiles and the ratio of the medians (short / full). A constant-time implementation
  gives ratios of 1.00 within noise; a ladder or window that skips leading zero bits gives
  about 0.25 (64-bit) and 0.5 (128-bit) for the scalar multiplication part.

The JSON written to ``--out`` (default: a new file under /tmp) holds the machine, the
parameters and every figure of the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tongxin.crypto import openssl_sm2
from tongxin.crypto.sm2 import SM2_DEFAULT_SIGNER_ID, SM2PrivateKey

N = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)
MESSAGE = bytes(range(100))
PLAINTEXT = bytes(range(32))
OPS = ("sign", "verify", "encrypt", "decrypt")
CLASSES = {"d<2^64": 64, "d<2^128": 128, "full": 256}

Op = Callable[[], object]


def _gmssl_pyx() -> Any | None:
    try:
        return importlib.import_module("gmssl_pyx")
    except ImportError:
        return None


def throughput_ops(gm: Any | None) -> dict[str, dict[str, Op]]:
    """For each backend, one zero-argument callable per operation, on one fresh key."""
    key = SM2PrivateKey.generate()
    public = key.public_key()
    sig, ct = key.sign(MESSAGE), public.encrypt(PLAINTEXT)
    backends: dict[str, dict[str, Op]] = {
        "libcrypto": {
            "sign": lambda: key.sign(MESSAGE),
            "verify": lambda: public.verify(sig, MESSAGE),
            "encrypt": lambda: public.encrypt(PLAINTEXT),
            "decrypt": lambda: key.decrypt(ct),
        }
    }
    raw = openssl_sm2.load_private_key(key.to_der())
    raw_pub = openssl_sm2.load_public_key(public.to_der())
    sid = SM2_DEFAULT_SIGNER_ID

    def raw_verify() -> None:
        if not openssl_sm2.verify(raw_pub, sid, MESSAGE, sig):
            raise AssertionError("libcrypto rejected a good signature")

    backends["libcrypto-binding"] = {
        "sign": lambda: openssl_sm2.sign(raw, sid, MESSAGE),
        "verify": raw_verify,
        "encrypt": lambda: openssl_sm2.encrypt(raw_pub, PLAINTEXT),
        "decrypt": lambda: openssl_sm2.decrypt(raw, ct),
    }
    if gm is not None:
        d, xy = key.private_bytes_raw(), public.to_bytes()[1:]

        def gm_verify() -> None:
            if not gm.sm2_verify(xy, MESSAGE, sig, signer_id=sid):
                raise AssertionError("gmssl-pyx rejected a good signature")

        backends["gmssl-pyx"] = {
            "sign": lambda: gm.sm2_sign(d, xy, MESSAGE, signer_id=sid),
            "verify": gm_verify,
            "encrypt": lambda: gm.sm2_encrypt(xy, PLAINTEXT),
            "decrypt": lambda: gm.sm2_decrypt(d, ct),
        }
    return backends


def run_throughput(backends: dict[str, dict[str, Op]], rounds: int, slice_s: float,
                   rng: random.Random) -> dict[str, dict[str, float]]:
    rates: dict[tuple[str, str], list[float]] = {
        (b, op): [] for b, ops in backends.items() for op in ops
    }
    for fn in (f for ops in backends.values() for f in ops.values()):
        fn()  # warm up: first calls fetch algorithms, fill caches
    for _ in range(rounds):
        order = list(rates)
        rng.shuffle(order)
        for backend, op in order:
            fn = backends[backend][op]
            n, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < slice_s:
                fn()
                n += 1
            rates[(backend, op)].append(n / elapsed)
    return {
        b: {op: round(statistics.median(rates[(b, op)]), 1) for op in ops}
        for b, ops in backends.items()
    }


def _scalar(bits: int) -> bytes:
    """A random valid scalar of exactly ``bits`` bits (top bit set), below n-1."""
    while True:
        d = secrets.randbits(bits) | (1 << (bits - 1))
        if 1 <= d <= N - 2:
            return d.to_bytes(32, "big")


def key_length_ops(gm: Any | None, keys_per_class: int) -> dict[str, dict[str, list[dict[str, Op]]]]:
    """backend -> class -> one {sign, decrypt} per key."""
    out: dict[str, dict[str, list[dict[str, Op]]]] = {"libcrypto": {}}
    if gm is not None:
        out["gmssl-pyx"] = {}
    for cls, bits in CLASSES.items():
        for backend in out:
            out[backend][cls] = []
        for _ in range(keys_per_class):
            key = SM2PrivateKey.from_scalar(_scalar(bits))
            ct = key.public_key().encrypt(PLAINTEXT)
            out["libcrypto"][cls].append(
                {"sign": _bind(key.sign, MESSAGE), "decrypt": _bind(key.decrypt, ct)}
            )
            if gm is not None:
                d, xy = key.private_bytes_raw(), key.public_key().to_bytes()[1:]
                out["gmssl-pyx"][cls].append(_gmssl_pyx_ops(gm, d, xy, ct))
    return out


def _bind(fn: Callable[[bytes], object], arg: bytes) -> Op:
    return lambda: fn(arg)


def _gmssl_pyx_ops(gm: Any, d: bytes, xy: bytes, ct: bytes) -> dict[str, Op]:
    return {"sign": lambda: gm.sm2_sign(d, xy, MESSAGE), "decrypt": lambda: gm.sm2_decrypt(d, ct)}


def run_key_length(ops: dict[str, dict[str, list[dict[str, Op]]]], reps: int,
                   rng: random.Random) -> dict[str, dict[str, dict[str, Any]]]:
    samples: dict[tuple[str, str, str], list[float]] = {}
    jobs: list[tuple[str, str, str, Op]] = []
    for backend, by_class in ops.items():
        for cls, keys in by_class.items():
            for key_ops in keys:
                for op in ("decrypt", "sign"):
                    samples.setdefault((backend, op, cls), [])
                    jobs.append((backend, op, cls, key_ops[op]))
    for _, _, _, fn in jobs:
        fn()
    for _ in range(reps):
        rng.shuffle(jobs)
        for backend, op, cls, fn in jobs:
            t0 = time.perf_counter_ns()
            fn()
            samples[(backend, op, cls)].append((time.perf_counter_ns() - t0) / 1000)
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for (backend, op, cls), xs in samples.items():
        q = statistics.quantiles(xs, n=4)
        entry = result.setdefault(backend, {}).setdefault(op, {})
        entry[cls] = {"median_us": round(q[1], 1), "p25_us": round(q[0], 1),
                      "p75_us": round(q[2], 1), "n": len(xs)}
    for ops_by_name in result.values():
        for classes in ops_by_name.values():
            full = classes["full"]["median_us"]
            classes["ratio_to_full"] = {
                cls: round(classes[cls]["median_us"] / full, 3) for cls in CLASSES if cls != "full"
            }
    return result


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "arch": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "openssl": openssl_sm2.version(),
        "libcrypto": openssl_sm2.libcrypto().name,
    }


def print_table(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    print(f"{m['arch']} {m['cpu']} ({m['cpus']} CPUs, load {m['loadavg_at_start'][0]:.1f}), "
          f"Python {m['python']}, {m['openssl']}")
    if doc["gmssl_pyx"] is None:
        print("gmssl-pyx: not importable here, no baseline")
    print()
    print(f"{'ops/s (median of rounds)':<26}" + "".join(f"{op:>11}" for op in OPS))
    for backend, rates in doc["throughput"].items():
        print(f"{backend:<26}" + "".join(f"{rates[op]:>11.0f}" for op in OPS))
    print()
    print(f"{'median µs':<26}{'op':<9}" + "".join(f"{c:>11}" for c in CLASSES)
          + f"{'64/full':>9}{'128/full':>10}")
    for backend, ops in doc["key_length"].items():
        for op, classes in ops.items():
            ratios = classes["ratio_to_full"]
            print(f"{backend:<26}{op:<9}"
                  + "".join(f"{classes[c]['median_us']:>11.1f}" for c in CLASSES)
                  + f"{ratios['d<2^64']:>9.3f}{ratios['d<2^128']:>10.3f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=7, help="throughput rounds (default 7)")
    p.add_argument("--slice", type=float, default=0.3,
                   help="seconds per (backend, operation) per round (default 0.3)")
    p.add_argument("--keys", type=int, default=3, help="keys per bit-length class (default 3)")
    p.add_argument("--reps", type=int, default=300,
                   help="interleaved repetitions of the key-length part (default 300)")
    p.add_argument("--no-gmssl-pyx", action="store_true", help="skip the gmssl-pyx baseline")
    p.add_argument("--seed", type=int, default=None, help="seed for the shuffling")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output path (default: a new sm2_bench-*.json under /tmp)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.keys < 1 or args.reps < 4 or args.slice <= 0:
        p.error("--rounds, --keys >= 1, --reps >= 4, --slice > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not openssl_sm2.available():
        print(f"SM2 unavailable: {openssl_sm2.unavailable_reason()}", file=sys.stderr)
        return 1
    gm = None if args.no_gmssl_pyx else _gmssl_pyx()
    rng = random.Random(args.seed)
    started = time.time()
    doc: dict[str, Any] = {
        "machine": machine(),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "gmssl_pyx": getattr(gm, "version", None) if gm is not None else None,
    }
    doc["throughput"] = run_throughput(throughput_ops(gm), args.rounds, args.slice, rng)
    doc["key_length"] = run_key_length(key_length_ops(gm, args.keys), args.reps, rng)
    doc["seconds"] = round(time.time() - started, 1)
    doc["machine"]["loadavg_at_end"] = list(os.getloadavg())
    out = args.out
    if out is None:
        fd, name = tempfile.mkstemp(prefix="sm2_bench-", suffix=".json", dir="/tmp")
        os.close(fd)
        out = Path(name)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(doc)
    print(f"\nJSON: {out} ({doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

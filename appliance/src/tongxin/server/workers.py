"""Several node processes on one host sharing one port (SO_REUSEPORT).

One Python process uses one core; ``server.workers: N`` starts N copies of
``tongxin serve`` that each bind the same address with SO_REUSEPORT, so the
kernel spreads new connections across them. Each worker is a full node with
its own node id, which is why this needs the shared backends (Kafka for
delivery, Redis for presence and routing): two workers are two nodes.

The parent only supervises: it forwards SIGTERM/SIGINT, and restarts a worker
that dies unexpectedly (at most ``MAX_RESTARTS`` times a minute).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tongxin.config import Config, ConfigError

WORKER_ENV = "TONGXIN_WORKER"
MAX_RESTARTS = 5


def check_workers(cfg: Config) -> None:
    if cfg.server.workers > 1 and (cfg.delivery.backend != "kafka"
                                   or cfg.presence.backend != "redis"):
        raise ConfigError("server.workers > 1 needs delivery.backend: kafka and "
                          "presence.backend: redis (each worker is a separate node)")


def worker_index() -> int | None:
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None else None


def supervise(cfg: Config, argv: list[str]) -> int:
    """Run ``argv`` (a ``tongxin serve`` command line) as ``server.workers`` children."""
    check_workers(cfg)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    restarts: list[float] = []
    stopping = False

    def start(i: int) -> None:
        env = dict(os.environ, **{WORKER_ENV: str(i)})
        procs[i] = subprocess.Popen([sys.executable, "-m", "tongxin.cli.main", *argv], env=env)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(cfg.server.workers):
        start(i)
    print(f"supervising {cfg.server.workers} workers: "
          f"{', '.join(str(p.pid) for p in procs.values())}", flush=True)
    while True:
        time.sleep(0.2)
        for i, p in list(procs.items()):
            code = p.poll()
            if code is None:
                continue
            if stopping:
                del procs[i]
                continue
            now = time.monotonic()
            restarts[:] = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > MAX_RESTARTS:
                print(f"worker {i} exited with {code}; too many restarts, stopping", flush=True)
                stop(signal.SIGTERM, None)
                continue
            print(f"worker {i} exited with {code}; restarting", flush=True)
            start(i)
        if stopping and not procs:
            return 0

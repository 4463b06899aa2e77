"""Helpers for tests that need the real engines (appliance/scripts/services.sh)
and appliance nodes running as separate processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SERVICES = SCRIPTS / "services.sh"


def services(action: str, *names: str, timeout: float = 600) -> str:
    """Run services.sh; raise with its output if it fails (tests fail, never skip)."""
    proc = subprocess.run(["bash", str(SERVICES), action, *names], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"services.sh {action} {' '.join(names)} failed "
                           f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def service_env() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in services("env").splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            out[key] = value
    return out


def isolated_backends(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Kafka topics and Redis keys of their own, so tests never see each other's data."""
    tag = uuid.uuid4().hex[:8]
    return {
        "delivery": {"backend": "kafka"},
        "kafka": {"bootstrap_servers": env["TONGXIN_KAFKA_BOOTSTRAP"],
                  "topic_prefix": f"tx-{tag}", "deliveries_topic": f"tx-{tag}.deliveries",
                  "router_group": f"tx-{tag}-router", "partitions": 4, "send_timeout": 5.0},
        "presence": {"backend": "redis", "redis_nodes": env["TONGXIN_REDIS_NODES"],
                     "key_prefix": f"tx{tag}", "node_ttl": 15.0},
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NodeProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int = 0  # server.metrics_listen: /metrics is not on the public port

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


async def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path,
                     within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"node exited with {proc.returncode}:\n{_tail(log)}")
            try:
                async with http.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"node not ready within {within}s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _spawn(name: str, home: Path, config: dict[str, Any], tmp: Path, port: int) -> NodeProcess:
    cfg = dict(config)
    cfg["data_dir"] = str(home)
    cfg["node_id"] = name
    metrics_port = free_port()
    cfg["server"] = {**cfg.get("server", {}), "listen": f"127.0.0.1:{port}", "gc_freeze": False,
                     "metrics_listen": f"127.0.0.1:{metrics_port}"}
    cfg["accounts"] = {**cfg.get("accounts", {}), "scrypt_n": 1024, "self_registration": True}
    cfg["logging"] = {"level": "info", "json": True}
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    log = tmp / f"{name}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "tongxin.cli.main", "serve", "--config",
                                 str(path)], stdout=fh, stderr=subprocess.STDOUT)
    return NodeProcess(name, port, proc, log, metrics_port)


async def start_node_process(name: str, home: Path, config: dict[str, Any],
                             tmp: Path) -> NodeProcess:
    node = _spawn(name, home, config, tmp, free_port())
    try:
        await wait_ready(node.http_url, node.proc, node.log)
    except Exception:
        node.kill9()
        raise
    return node


def redis_primary_of(key: str, env: dict[str, str]) -> tuple[int, int]:
    """(port, pid) of the Redis Cluster primary that holds ``key``'s slot now
    (asked of the first node that answers: one may just have been killed)."""
    for addr in env["TONGXIN_REDIS_NODES"].split(","):
        port = addr.rpartition(":")[2]
        try:
            slot = subprocess.run(["redis-cli", "-p", port, "cluster", "keyslot", key],
                                  capture_output=True, text=True, check=True, timeout=10).stdout
            table = subprocess.run(["redis-cli", "-p", port, "cluster", "nodes"],
                                   capture_output=True, text=True, check=True, timeout=10).stdout
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            continue
        if not slot.strip().isdigit():
            continue
        n = int(slot)
        for line in table.splitlines():
            parts = line.split()
            if "master" not in parts[2] or "fail" in parts[2]:
                continue
            for span in parts[8:]:
                lo, _, hi = span.partition("-")
                if lo.isdigit() and int(lo) <= n <= int(hi or lo):
                    primary = int(parts[1].split(":")[1].split("@")[0])
                    pid_file = (Path(env["TONGXIN_SERVICES_DIR"]) / "redis" / str(primary)
                                / "redis.pid")
                    return primary, int(pid_file.read_text().split()[0])
        raise RuntimeError(f"no live Redis primary holds slot {n}")
    raise RuntimeError("no Redis node answers")


def wait_redis_replicated(primary: int, wait: float = 15.0) -> None:
    """Until every replica of the primary on port ``primary`` has acknowledged all
    it has written so far (replication is asynchronous: a test that kills the
    primary must know the replica has the keys it set up)."""
    deadline = time.monotonic() + wait
    target: int | None = None
    while True:
        info = subprocess.run(["redis-cli", "-p", str(primary), "info", "replication"],
                              capture_output=True, text=True, check=True, timeout=10).stdout
        fields = dict(line.strip().split(":", 1) for line in info.splitlines() if ":" in line)
        if target is None:
            target = int(fields["master_repl_offset"])
        acked = [int(dict(kv.split("=", 1) for kv in v.split(","))["offset"])
                 for k, v in fields.items() if k.startswith("slave") and k[5:].isdigit()]
        if acked and min(acked) >= target:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis {primary}: replicas acknowledged {acked}, "
                               f"not offset {target}, within {wait:g} s")
        time.sleep(0.2)


# ---- the MySQL-protocol engines ------------------------------------------------------
#
# The MySQL adapter's tests run against both: MariaDB (Debian's, the lab's and
# CI's stand-in, also the Galera of the sites) and TiDB (the production engine;
# services.sh builds tidb-server, TiDB's SQL layer with unistore, from TiDB's Go
# module at the one version the module proxy serves: master of March 2022, about
# v6.0). Where that TiDB differs from the current releases (7.x/8.x), the test
# that depends on it says so.

DB_ENGINES = ("mariadb", "tidb")


@dataclass(frozen=True)
class DbEngine:
    name: str  # the services.sh name
    dsn_var: str  # services.sh env: the server's DSN (database tongxin, user tongxin)
    pid_var: str  # services.sh env: its PID file
    process: str  # its process name (/proc/PID/comm)


# A SIGKILL of tidb-server is the crash of a whole TiDB cluster (SQL layer and
# storage in one process). It loses nothing acknowledged only because services.sh
# starts it with split-table = false: unistore keeps transaction locks in memory,
# so a two-phase commit whose other keys are still locked when the process dies
# loses them (see services.sh; TiKV replicates its locks through Raft).
_DB = {
    "mariadb": DbEngine("mariadb", "TONGXIN_MYSQL_DSN", "TONGXIN_MYSQL_PID_FILE", "mariadbd"),
    "tidb": DbEngine("tidb", "TONGXIN_TIDB_DSN", "TONGXIN_TIDB_PID_FILE", "tidb-server"),
}


def db_engine(name: str) -> DbEngine:
    return _DB[name]


def start_database(name: str) -> str:
    """Start (if needed) the services.sh engine ``name``; its server DSN."""
    services("start", name)
    return service_env()[_DB[name].dsn_var]


def database_pid(name: str) -> int:
    return int(Path(service_env()[_DB[name].pid_var]).read_text().split()[0])


def stop_database(name: str) -> int:
    """SIGSTOP the engine and wait until every one of its threads is stopped; its pid.

    kill() returns before the process stops: one thread takes the signal and then stops
    the others, and on a loaded machine a connection thread can still answer a query in
    between (the hung-database test once saw its write succeed)."""
    pid = database_pid(name)
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                # state is the field after the parenthesised command name
                states.append(task.joinpath("stat").read_text().rpartition(")")[2].split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that has just exited
        if states and all(st in ("T", "t") for st in states):
            return pid
        time.sleep(0.01)
    os.kill(pid, signal.SIGCONT)
    raise AssertionError(f"{_DB[name].process} (pid {pid}) did not stop within 30 s of SIGSTOP")


def kill_database(name: str) -> None:
    """SIGKILL the engine (no clean shutdown: a crashed server or a lost host)."""
    pid = database_pid(name)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"{_DB[name].process} (pid {pid}) survived SIGKILL")


async def _mysql_admin(dsn: str, sql: str) -> None:
    import asyncmy

    from tongxin.store.dsn import parse_dsn

    d = parse_dsn(dsn)
    conn = await asyncmy.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                                 database=d.database, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


async def create_mysql_database(server_dsn: str) -> str:
    """A fresh database for one test on a services.sh engine (its user may
    create ``tongxin*`` databases); returns a DSN naming it."""
    from urllib.parse import quote

    from tongxin.store.dsn import parse_dsn

    d = parse_dsn(server_dsn)
    name = f"tongxin_t_{uuid.uuid4().hex[:12]}"
    await _mysql_admin(server_dsn, f"CREATE DATABASE `{name}`")
    return f"mysql://{quote(d.user, safe='')}:{quote(d.password, safe='')}@{d.host}:{d.port}/{name}"


async def drop_mysql_database(server_dsn: str, dsn: str) -> None:
    from tongxin.store.dsn import parse_dsn

    await _mysql_admin(server_dsn, f"DROP DATABASE IF EXISTS `{parse_dsn(dsn).database}`")


@contextlib.asynccontextmanager
async def storage_section(backend: str) -> AsyncIterator[dict[str, Any]]:
    """The ``storage`` config section of a test node: the embedded SQLite ({}), or a
    fresh database (dropped afterwards) on the services.sh engine ``backend``
    (mariadb or tidb; ``mysql`` means mariadb)."""
    if backend == "sqlite":
        yield {}
        return
    server_dsn = await asyncio.to_thread(start_database,
                                         "mariadb" if backend == "mysql" else backend)
    dsn = await create_mysql_database(server_dsn)
    try:
        yield {"backend": "mysql", "mysql_dsn": dsn, "mysql_pool_size": 8}
    finally:
        await drop_mysql_database(server_dsn, dsn)

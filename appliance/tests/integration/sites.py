"""A second site's engines for the multi-site tests: its own Kafka broker and
Redis Cluster (services.sh with other ports and state directory), and
MirrorMaker 2 from Kafka's own jars between the two Kafka clusters.

Production runs one Kafka cluster and one Redis Cluster per site; these are
the same engines on loopback, so the tests cross sites the way production
does (DefaultReplicationPolicy names, separate Redis key spaces) instead of
imitating it with prefixes on one broker.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from engines import SERVICES

from tongxin.client import Client, pb

PASSWORD = "password-1"

def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_block(count: int, also_plus: int = 0) -> int:
    """First of ``count`` consecutive free ports (and, with ``also_plus``, the
    same block shifted by it: Redis Cluster's bus ports are port + 10000).
    Chosen at random, since other engineers' engines run on fixed ports."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 29000)
        ports = [base + i for i in range(count)]
        if also_plus:
            ports += [p + also_plus for p in ports]
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


@dataclass
class Site2:
    state: Path
    kafka_port: int
    redis_base_port: int

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TONGXIN_SERVICES_DIR": str(self.state),
                "TONGXIN_KAFKA_PORT": str(self.kafka_port),
                "TONGXIN_REDIS_BASE_PORT": str(self.redis_base_port)}

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_nodes(self) -> str:
        return ",".join(f"127.0.0.1:{self.redis_base_port + i}" for i in range(6))

    def run(self, action: str, *names: str) -> str:
        proc = subprocess.run(["bash", str(SERVICES), action, *names], capture_output=True,
                              text=True, timeout=600, check=False, env=self.env)
        if proc.returncode != 0:
            raise RuntimeError(f"services.sh {action} {' '.join(names)} (site 2) failed "
                               f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def start(self, *names: str) -> None:
        self.run("start", *names)

    def stop(self, *names: str) -> None:
        self.run("stop", *names)

    def destroy(self) -> None:
        """Stop what this site runs (by its PID files) and forget its data."""
        if self.state.exists():
            self.run("stop", "redis", "kafka")
        shutil.rmtree(self.state, ignore_errors=True)


def site2(tmp_root: Path) -> Site2:
    """The second site's engines on free ports (Kafka: listener and controller;
    Redis: six nodes and their bus ports), state under ``tmp_root``."""
    return Site2(tmp_root / "site2-services", free_block(2), free_block(6, also_plus=10000))


@dataclass
class MirrorMaker:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_mirrormaker(kafka_home: str, source_alias: str, source: str, target_alias: str,
                      target: str, topics: str, workdir: Path) -> MirrorMaker:
    """Dedicated MirrorMaker 2 copying ``topics`` (a regex) from source to target,
    as the kafka role runs it at each site (here one direction only)."""
    workdir.mkdir(parents=True, exist_ok=True)
    props = workdir / "mm2.properties"
    props.write_text("\n".join([
        f"clusters = {source_alias}, {target_alias}",
        f"{source_alias}.bootstrap.servers = {source}",
        f"{target_alias}.bootstrap.servers = {target}",
        f"{source_alias}->{target_alias}.enabled = true",
        f"{source_alias}->{target_alias}.topics = {topics}",
        f"{target_alias}->{source_alias}.enabled = false",
        # One broker per site here: every topic MirrorMaker 2 creates has one replica.
        "replication.factor = 1",
        "config.storage.replication.factor = 1",
        "offset.storage.replication.factor = 1",
        "status.storage.replication.factor = 1",
        # As roles/kafka/templates/mm2.properties.j2 sets them, so the
        # latency measured here is the production configuration's.
        f"{source_alias}.consumer.fetch.min.bytes = 1",
        f"{source_alias}.consumer.fetch.max.wait.ms = 500",
        f"{target_alias}.producer.linger.ms = 0",
        f"{target_alias}.offset.flush.interval.ms = 5000",
        "emit.checkpoints.enabled = false",
        "sync.group.offsets.enabled = false",
        "emit.offset-syncs.enabled = false",
        "emit.heartbeats.enabled = false",
        "heartbeats.replication.enabled = false",
        "sync.topic.acls.enabled = false",
        "refresh.topics.interval.seconds = 5",
        "",
    ]), encoding="utf-8")
    log = workdir / "mm2.log"
    log4j = Path(kafka_home) / "log4j2.properties"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            ["java", "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{kafka_home}/libs/*",
             "org.apache.kafka.connect.mirror.MirrorMaker", str(props),
             "--clusters", target_alias],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return MirrorMaker(proc, log)



async def login(url: str, username: str, device: str, register: bool = False) -> Client:
    c = Client(url, device_id=device)
    await c.connect()
    if register:
        await c.register(username, PASSWORD)
    else:
        await c.login(username, PASSWORD)
    return c


async def next_chat(c: Client, wait: float = 20.0) -> pb.Message:
    while True:
        ev = await c.next_event(pb.DELIVER, wait=wait)
        if ev.message.kind == pb.CHAT:
            msg: pb.Message = ev.message
            return msg

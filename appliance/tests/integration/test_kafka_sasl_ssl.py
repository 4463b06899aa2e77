"""Kafka over SASL_SSL against a real Kafka 4.3.1 broker run as role kafka runs
it with ``kafka_security: sasl_ssl`` (the client listener SASL_SSL with PLAIN,
user ``tongxin``; PEM key and trust stores; an ECDSA P-256 certificate whose
SAN is the address the broker advertises): a node with
kafka.security_protocol SASL_SSL and the CA chats through it; a wrong
password and another CA each stop the node at start with one line naming
what to fix; a plaintext client gets nothing.

The shared engines (services.sh) are plaintext on 9092/9093; this test
starts its own single KRaft broker+controller (the controller listener
plaintext on loopback) on free ports with the jars services.sh installs, and
stops it by its process group.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from engines import free_port, service_env, services, start_node_process
from redis_tls_pki import Ca, write_ca, write_server_cert
from serve_once import serve_once
from test_multinode import login, next_chat

from tongxin.config import ConfigError, KafkaConfig, load_config
from tongxin.delivery.kafka_bus import KafkaBus
from tongxin.delivery.kafka_client import CA_FIELD, PASSWORD_ENV, client_kwargs
from tongxin.delivery.ports import Delivery

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PASSWORD = "integration-kafka-sasl-password-1"
ADMIN_PASSWORD = "integration-kafka-admin-password-1"
START_TIMEOUT = 120.0  # a cold JVM on a busy machine


@dataclass
class SaslKafka:
    port: int
    ca: Ca
    other_ca_file: str

    @property
    def ca_file(self) -> str:
        return str(self.ca.cert_file)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def _kafka_home() -> Path:
    services("install", "kafka")
    return Path(service_env()["TONGXIN_KAFKA_HOME"])


def _port() -> int:
    port = free_port()
    while port in (9092, 9093):
        port = free_port()
    return port


def _java(home: Path, *args: str) -> list[str]:
    return ["java", "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}", "-cp",
            f"{home / 'libs'}/*", *args]


def _server_properties(state: Path, port: int, controller: int, keystore: Path,
                       ca_file: Path) -> str:
    jaas = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="admin" password="{ADMIN_PASSWORD}" user_admin="{ADMIN_PASSWORD}" '
            f'user_tongxin="{PASSWORD}";')
    return f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_SSL://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca_file}
ssl.endpoint.identification.algorithm=https
ssl.client.auth=none
log.dirs={state / "data"}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafka]:
    home = _kafka_home()
    state = tmp_path_factory.mktemp("kafka-sasl")
    ca = write_ca(state / "pki", "Tongxin test CA")
    other = write_ca(state / "other", "Another CA")
    cert_file, key_file = write_server_cert(state / "pki", ca, "127.0.0.1", name="kafka")
    # Kafka's PEM key store: the PKCS#8 key and the certificate in one file (as role kafka's
    # tls/server.pem).
    keystore = state / "pki" / "server.pem"
    keystore.write_bytes(key_file.read_bytes() + cert_file.read_bytes())
    keystore.chmod(0o600)
    port, controller = _port(), _port()
    while controller == port:
        controller = _port()
    props = state / "server.properties"
    props.write_text(_server_properties(state, port, controller, keystore, ca.cert_file),
                     encoding="utf-8")
    props.chmod(0o600)
    # As Kafka's own Uuid.randomUuid: an id that starts with '-' reads as an option to the
    # storage tool's parser (CI once drew one: "argument --cluster-id/-t: expected one argument").
    cluster_id = "-"
    while cluster_id.startswith("-"):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    fmt = subprocess.run(_java(home, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                               "-c", str(props)),
                         capture_output=True, text=True, timeout=120, check=False)
    assert fmt.returncode == 0, f"kafka storage format failed:\n{fmt.stdout}\n{fmt.stderr}"
    log = state / "kafka.log"
    with log.open("wb") as out:
        broker = subprocess.Popen(_java(home, "kafka.Kafka", str(props)), stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "Kafka Server started" not in log.read_text(errors="replace"):
            assert broker.poll() is None, f"kafka exited:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"kafka did not start:\n{log.read_text()[-4000:]}"
            time.sleep(0.2)
        yield SaslKafka(port, ca, str(other.cert_file))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(broker.pid, signal.SIGTERM)
        try:
            broker.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(broker.pid, signal.SIGKILL)
            broker.wait(10)


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def _cfg(kafka: SaslKafka, **over: Any) -> KafkaConfig:
    tag = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap, "security_protocol": "SASL_SSL",
        "ssl_ca_file": kafka.ca_file, "topic_prefix": f"tx-{tag}",
        "deliveries_topic": f"tx-{tag}.deliveries", "router_group": f"tx-{tag}-router",
        "partitions": 2, "send_timeout": 5.0}
    return KafkaConfig(**{**base, **over})


def _bus(cfg: KafkaConfig, node_id: str = "n1") -> KafkaBus:
    from prometheus_client import CollectorRegistry

    async def members_of(_conv: str) -> frozenset[str]:
        return frozenset({"u_alice"})

    async def devices_of(users: list[str]) -> dict[str, dict[str, str]]:
        return {u: {"phone": node_id} for u in users}

    async def live_nodes() -> list[str]:
        return [node_id]

    return KafkaBus(cfg, node_id, members_of, lambda _c: None, devices_of, live_nodes,
                    CollectorRegistry())


async def test_the_bus_delivers_over_sasl_ssl(sasl_kafka: SaslKafka) -> None:
    """The node's admin client (topics), producer, router and inbox consumers."""
    bus = _bus(_cfg(sasl_kafka))
    got: asyncio.Queue[Delivery] = asyncio.Queue()

    async def handler(d: Delivery) -> None:
        await got.put(d)

    try:
        async with asyncio.timeout(60):
            await bus.start(handler)
            await bus.publish(Delivery(frame_type=1, payload=b"over tls",
                                       conversation_id="c1", user_ids=("u_alice",)))
            delivered = await got.get()
        assert delivered.payload == b"over tls" and delivered.routed
        assert delivered.user_ids == ("u_alice",)
    finally:
        await bus.close()


async def test_a_wrong_password_is_one_error_naming_the_variable(
        sasl_kafka: SaslKafka, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    bus = _bus(_cfg(sasl_kafka))
    try:
        async with asyncio.timeout(90):
            with pytest.raises(ConfigError) as caught:
                await bus.start(lambda _d: asyncio.sleep(0))
    finally:
        await bus.close()
    text = str(caught.value)
    assert text.startswith(f"kafka.sasl_username/${PASSWORD_ENV}: Kafka ({sasl_kafka.bootstrap}) "
                           "refused user 'tongxin'"), text
    assert "Invalid username or password" in text
    assert "not-the-password" not in text and "\n" not in text
    assert caught.value.__cause__ is None


async def test_another_ca_is_one_error_naming_the_key(sasl_kafka: SaslKafka) -> None:
    bus = _bus(_cfg(sasl_kafka, ssl_ca_file=sasl_kafka.other_ca_file))
    try:
        async with asyncio.timeout(90):
            with pytest.raises(ConfigError) as caught:
                await bus.start(lambda _d: asyncio.sleep(0))
    finally:
        await bus.close()
    text = str(caught.value)
    assert text.startswith(f"{CA_FIELD}: the certificate of Kafka ({sasl_kafka.bootstrap}) is "
                           f"not verified by {sasl_kafka.other_ca_file}"), text
    # The broker sends its own certificate only: the other CA has no issuer for it.
    assert "(unable to get local issuer certificate)" in text
    assert PASSWORD not in text and "\n" not in text


async def test_the_certificate_must_name_the_address(sasl_kafka: SaslKafka) -> None:
    # "localhost" is the broker, but its certificate names 127.0.0.1 only.
    cfg = _cfg(sasl_kafka, bootstrap_servers=f"localhost:{sasl_kafka.port}")
    bus = _bus(cfg)
    try:
        async with asyncio.timeout(90):
            with pytest.raises(ConfigError, match=rf"^{CA_FIELD}: .*(mismatch|match)"):
                await bus.start(lambda _d: asyncio.sleep(0))
    finally:
        await bus.close()


async def test_a_plaintext_client_gets_nothing(sasl_kafka: SaslKafka) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=sasl_kafka.bootstrap, request_timeout_ms=3000)
    try:
        async with asyncio.timeout(60):
            with pytest.raises((KafkaConnectionError, TimeoutError)):
                await producer.start()
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()


async def test_client_kwargs_work_for_a_plain_producer_and_consumer(
        sasl_kafka: SaslKafka) -> None:
    """What a script built on the node's configuration does: client_kwargs() alone."""
    cfg = _cfg(sasl_kafka)
    bus = _bus(cfg)  # creates the deliveries topic
    try:
        async with asyncio.timeout(60):
            await bus.start(lambda _d: asyncio.sleep(0))
    finally:
        await bus.close()
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers, **client_kwargs(cfg))
    consumer = AIOKafkaConsumer(cfg.deliveries_topic, bootstrap_servers=cfg.bootstrap_servers,
                                auto_offset_reset="earliest", **client_kwargs(cfg))
    try:
        async with asyncio.timeout(60):
            await producer.start()
            await producer.send_and_wait(cfg.deliveries_topic, b"raw", key=b"k")
            await consumer.start()
            rec = await consumer.getone()
        assert rec.value == b"raw"
    finally:
        await consumer.stop()
        await producer.stop()


def test_the_config_check_accepts_it(sasl_kafka: SaslKafka, tmp_path: Path) -> None:
    config = tmp_path / "tongxin.yml"
    config.write_text(f"delivery:\n  backend: kafka\nkafka:\n  bootstrap_servers: "
                      f"{sasl_kafka.bootstrap}\n  security_protocol: SASL_SSL\n"
                      f"  ssl_ca_file: {sasl_kafka.ca_file}\n", encoding="utf-8")
    assert load_config(config).kafka.ssl_ca_file == sasl_kafka.ca_file


def _node_config(kafka: SaslKafka, ca_file: str) -> dict[str, Any]:
    cfg = _cfg(kafka, ssl_ca_file=ca_file)
    return {"delivery": {"backend": "kafka"},
            "kafka": {"bootstrap_servers": cfg.bootstrap_servers,
                      "security_protocol": "SASL_SSL", "ssl_ca_file": ca_file,
                      "topic_prefix": cfg.topic_prefix, "deliveries_topic": cfg.deliveries_topic,
                      "router_group": cfg.router_group, "partitions": 2, "send_timeout": 5.0}}


@pytest.fixture
async def node(sasl_kafka: SaslKafka, tmp_path: Path) -> AsyncIterator[Any]:
    n = await start_node_process("sasl1", tmp_path / "home",
                                 _node_config(sasl_kafka, sasl_kafka.ca_file), tmp_path)
    try:
        yield n
    finally:
        n.stop()


async def test_a_node_chats_through_sasl_ssl(node: Any) -> None:
    alice = await login(node.ws_url, "alice", "pc", register=True)
    bob = await login(node.ws_url, "bob", "pc", register=True)
    try:
        conv = await alice.direct("bob")
        await alice.send_text(conv.conversation_id, "through SASL_SSL")
        got = await next_chat(bob)
        assert got.conversation_id == conv.conversation_id
        # Routed by this node's router from the deliveries topic: through the broker.
        async with aiohttp.ClientSession() as http, http.get(node.metrics_url) as r:
            metrics = await r.text()
        routed = [ln for ln in metrics.splitlines()
                  if ln.startswith('tongxin_kafka_route_delay_seconds_count{site="local"}')]
        assert routed and float(routed[0].split()[-1]) >= 1, metrics
    finally:
        await alice.close()
        await bob.close()


async def _serve(tmp_path: Path, kafka: SaslKafka, ca_file: str, password: str | None,
                 wait: float = 120) -> tuple[int | None, str]:
    """``tongxin serve`` with this Kafka: (exit code, stderr), the code None if it ran."""
    import yaml

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    config = tmp_path / "tongxin.yml"
    cfg = {**_node_config(kafka, ca_file),
           "server": {"listen": f"127.0.0.1:{free_port()}", "metrics_listen": "127.0.0.1:0"}}
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "TONGXIN_HOME": str(home), "PYTHONUNBUFFERED": "1",
           "TONGXIN_LANG": "en"}
    if password is not None:
        env[PASSWORD_ENV] = password
    code, _, err = await serve_once(config, env, wait)
    return code, err


async def test_serve_with_a_wrong_password_stops_with_one_clear_line(
        sasl_kafka: SaslKafka, tmp_path: Path) -> None:
    code, err = await _serve(tmp_path, sasl_kafka, sasl_kafka.ca_file, "wrong-password-123")
    assert code == 2, err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("tongxin: configuration error:")]
    assert line and f"${PASSWORD_ENV}" in line[0], err
    assert "wrong-password-123" not in err


async def test_serve_without_the_password_stops_with_one_clear_line(
        sasl_kafka: SaslKafka, tmp_path: Path) -> None:
    code, err = await _serve(tmp_path, sasl_kafka, sasl_kafka.ca_file, None)
    assert code == 2, err
    assert "Traceback" not in err
    assert (f"tongxin: configuration error: kafka.security_protocol SASL_SSL: ${PASSWORD_ENV} "
            "is not set") in err


async def test_serve_with_another_ca_stops_with_one_clear_line(
        sasl_kafka: SaslKafka, tmp_path: Path) -> None:
    code, err = await _serve(tmp_path, sasl_kafka, sasl_kafka.other_ca_file, PASSWORD)
    assert code == 2, err
    assert "Traceback" not in err
    assert f"tongxin: configuration error: {CA_FIELD}: the certificate of Kafka" in err

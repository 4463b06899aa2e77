"""Kafka over SSL/SASL_SSL on the node's side: the kafka section's security
keys are checked when the configuration is loaded, every aiokafka client of
the node takes the same arguments from client_kwargs() (none at all for
PLAINTEXT), and a refused password or an unverified certificate is one clear
configuration error naming what to fix."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from prometheus_client import CollectorRegistry
from redis_tls_pki import write_ca

from tongxin.config import Config, ConfigError, KafkaConfig, load_config
from tongxin.delivery import kafka_bus
from tongxin.delivery.kafka_bus import KafkaBus
from tongxin.delivery.kafka_client import (
    CA_FIELD,
    PASSWORD_ENV,
    client_kwargs,
    diagnose,
    misconfigured,
)

SECURITY_KEYS = {"security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username",
                 "sasl_plain_password"}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tongxin.yml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    return str(write_ca(tmp_path / "pki").cert_file)


@pytest.fixture(autouse=True)
def no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


def sasl(ca_file: str, **over: Any) -> KafkaConfig:
    return KafkaConfig(**{"bootstrap_servers": "10.0.0.1:9092,10.0.0.2:9092",
                          "security_protocol": "SASL_SSL", "ssl_ca_file": ca_file, **over})


# ---- configuration ------------------------------------------------------------


def test_defaults_are_plaintext() -> None:
    k = Config().kafka
    assert (k.security_protocol, k.sasl_mechanism, k.sasl_username, k.ssl_ca_file) == (
        "PLAINTEXT", "PLAIN", "tongxin", "")
    assert client_kwargs(k) == {}


def test_sasl_ssl_with_a_ca_is_accepted(ca_file: str, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"kafka:\n  security_protocol: SASL_SSL\n"
                                      f"  ssl_ca_file: {ca_file}\n"))
    assert cfg.kafka.security_protocol == "SASL_SSL" and cfg.kafka.ssl_ca_file == ca_file


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_needs_the_ca_file(protocol: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^kafka\.ssl_ca_file: required with "
                                          rf"kafka\.security_protocol {protocol}"):
        load_config(write(tmp_path, f"kafka:\n  security_protocol: {protocol}\n"))


def test_a_ca_file_with_plaintext_is_an_error(ca_file: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^kafka\.ssl_ca_file: set, but "
                                          r"kafka\.security_protocol is PLAINTEXT"):
        load_config(write(tmp_path, f"kafka:\n  ssl_ca_file: {ca_file}\n"))


def test_a_missing_ca_file_names_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(ConfigError, match=rf"^kafka\.ssl_ca_file: cannot read {missing}"):
        load_config(write(tmp_path, f"kafka:\n  security_protocol: SASL_SSL\n"
                                    f"  ssl_ca_file: {missing}\n"))


@pytest.mark.parametrize("content", [b"", b"not a certificate\n",
                                     b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                     b"-----END CERTIFICATE-----\n"])
def test_a_file_without_a_usable_certificate_names_the_key(tmp_path: Path,
                                                           content: bytes) -> None:
    bad = tmp_path / "bad.crt"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=r"^kafka\.ssl_ca_file: "):
        load_config(write(tmp_path, f"kafka:\n  security_protocol: SSL\n"
                                    f"  ssl_ca_file: {bad}\n"))


@pytest.mark.parametrize(("key", "value"), [("security_protocol", "SASL_PLAINTEXT"),
                                            ("security_protocol", "sasl_ssl"),
                                            ("sasl_mechanism", "GSSAPI")])
def test_other_choices_are_refused(key: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^kafka\.{key}: '{value}' is not one of"):
        load_config(write(tmp_path, f"kafka:\n  {key}: {value}\n"))


def test_sasl_needs_a_user(ca_file: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^kafka\.sasl_username: required"):
        load_config(write(tmp_path, f"kafka:\n  security_protocol: SASL_SSL\n"
                                    f"  ssl_ca_file: {ca_file}\n  sasl_username: ''\n"))


@pytest.mark.parametrize("key", ["sasl_password", "sasl_plain_password", "password"])
def test_the_password_is_never_read_from_the_file(key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^kafka\.{key}: not read from the configuration "
                                          rf"file; set \${PASSWORD_ENV}"):
        load_config(write(tmp_path, f"kafka:\n  {key}: secret\n"))


# ---- client_kwargs ------------------------------------------------------------


def test_sasl_ssl_kwargs(ca_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pw-1")
    kw = client_kwargs(sasl(ca_file))
    assert set(kw) == SECURITY_KEYS
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "PLAIN"
    assert kw["sasl_plain_username"] == "tongxin" and kw["sasl_plain_password"] == "pw-1"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    # The CA file is loaded (beside the system's CAs).
    assert any(c.get("subject") == ((("commonName", "Tongxin test CA"),),)
               for c in ctx.get_ca_certs())


def test_scram_and_another_user(ca_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pw-1")
    kw = client_kwargs(sasl(ca_file, sasl_mechanism="SCRAM-SHA-512", sasl_username="node7"))
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"]) == ("SCRAM-SHA-512", "node7")


def test_ssl_kwargs_have_no_login(ca_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pw-1")
    kw = client_kwargs(sasl(ca_file, security_protocol="SSL"))
    assert set(kw) == {"security_protocol", "ssl_context"}
    assert kw["security_protocol"] == "SSL"


def test_sasl_without_the_password_is_one_clear_error(ca_file: str) -> None:
    with pytest.raises(ConfigError) as caught:
        client_kwargs(sasl(ca_file))
    assert str(caught.value) == (
        f"kafka.security_protocol SASL_SSL: ${PASSWORD_ENV} is not set (the password of Kafka "
        "user 'tongxin'; role appliance writes it to tongxin.env from kafka_client_password)")


# ---- every client of the bus --------------------------------------------------


class _Client:
    made: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, *topics: str, **kwargs: Any) -> None:
        _Client.made.append((type(self).__name__, kwargs))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def create_topics(self, _topics: Any) -> None:
        pass

    def subscribe(self, **_kw: Any) -> None:
        pass

    def assign(self, _tps: Any) -> None:
        pass

    async def seek_to_end(self, *_tps: Any) -> None:
        pass

    async def getmany(self, **_kw: Any) -> dict[Any, Any]:
        return {}

    def assignment(self) -> set[Any]:
        return set()


class Admin(_Client):
    pass


class Producer(_Client):
    pass


class Consumer(_Client):
    pass


def _bus(cfg: KafkaConfig) -> KafkaBus:
    async def members_of(_c: str) -> frozenset[str]:
        return frozenset()

    async def devices_of(_u: list[str]) -> dict[str, dict[str, str]]:
        return {}

    async def live_nodes() -> list[str]:
        return []

    return KafkaBus(cfg, "n1", members_of, lambda _c: None, devices_of, live_nodes,
                    CollectorRegistry())


@pytest.fixture
def fake_clients(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    _Client.made = []
    monkeypatch.setattr(kafka_bus, "AIOKafkaAdminClient", Admin)
    monkeypatch.setattr(kafka_bus, "AIOKafkaProducer", Producer)
    monkeypatch.setattr(kafka_bus, "AIOKafkaConsumer", Consumer)
    return _Client.made


async def _start(bus: KafkaBus) -> None:
    async def handler(_d: Any) -> None:
        pass

    try:
        await bus.start(handler)
    finally:
        await bus.close()


async def test_plaintext_clients_get_no_security_arguments(
        fake_clients: list[tuple[str, dict[str, Any]]]) -> None:
    await _start(_bus(KafkaConfig()))
    assert [name for name, _ in fake_clients] == ["Admin", "Producer", "Consumer", "Consumer"]
    for _name, kwargs in fake_clients:
        assert not SECURITY_KEYS & set(kwargs)


async def test_every_client_gets_the_same_security_arguments(
        ca_file: str, monkeypatch: pytest.MonkeyPatch,
        fake_clients: list[tuple[str, dict[str, Any]]]) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pw-1")
    await _start(_bus(sasl(ca_file)))
    assert [name for name, _ in fake_clients] == ["Admin", "Producer", "Consumer", "Consumer"]
    contexts = set()
    for _name, kwargs in fake_clients:
        assert set(kwargs) >= SECURITY_KEYS
        assert kwargs["security_protocol"] == "SASL_SSL"
        assert kwargs["sasl_plain_password"] == "pw-1"
        contexts.add(id(kwargs["ssl_context"]))
    assert len(contexts) == 1  # one context, from one place


async def test_start_without_the_password_fails_before_connecting(
        ca_file: str, fake_clients: list[tuple[str, dict[str, Any]]]) -> None:
    with pytest.raises(ConfigError, match=rf"\${PASSWORD_ENV} is not set"):
        await _start(_bus(sasl(ca_file)))
    assert fake_clients == []


class _Refused(Admin):
    async def start(self) -> None:
        raise KafkaConnectionError("Unable to bootstrap from [('10.0.0.1', 9092, 0)]")


async def test_start_turns_a_refusal_into_the_diagnosed_error(
        ca_file: str, monkeypatch: pytest.MonkeyPatch,
        fake_clients: list[tuple[str, dict[str, Any]]]) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pw-1")
    monkeypatch.setattr(kafka_bus, "AIOKafkaAdminClient", _Refused)

    async def refused(_cfg: KafkaConfig) -> ConfigError:
        return ConfigError("kafka.ssl_ca_file: diagnosed")

    monkeypatch.setattr(kafka_bus, "diagnose", refused)
    with pytest.raises(ConfigError, match="diagnosed") as caught:
        await _start(_bus(sasl(ca_file)))
    assert caught.value.__cause__ is None


async def test_start_keeps_an_outage_as_it_is(
        ca_file: str, monkeypatch: pytest.MonkeyPatch,
        fake_clients: list[tuple[str, dict[str, Any]]]) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pw-1")
    monkeypatch.setattr(kafka_bus, "AIOKafkaAdminClient", _Refused)

    async def nothing(_cfg: KafkaConfig) -> None:
        return None

    monkeypatch.setattr(kafka_bus, "diagnose", nothing)
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        await _start(_bus(sasl(ca_file)))


# ---- what a refusal means -----------------------------------------------------


def test_a_refused_password_names_the_variable(ca_file: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "secret-pw")
    exc = SaslAuthenticationFailed("Authentication failed: Invalid username or password")
    err = misconfigured(exc, sasl(ca_file))
    assert err is not None
    assert str(err) == (
        f"kafka.sasl_username/${PASSWORD_ENV}: Kafka (10.0.0.1:9092,10.0.0.2:9092) refused "
        f"user 'tongxin' with the password in ${PASSWORD_ENV} (Authentication failed: Invalid "
        "username or password): it must be role kafka's kafka_client_password")
    assert "secret-pw" not in str(err)


def test_an_unverified_certificate_names_the_key(ca_file: str) -> None:
    exc = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
           "issuer certificate (_ssl.c:1006)")
    try:
        raise KafkaConnectionError("Connection failed") from exc
    except KafkaConnectionError as wrapped:
        err = misconfigured(wrapped, sasl(ca_file))
    assert err is not None
    assert str(err).startswith(f"{CA_FIELD}: the certificate of Kafka "
                               f"(10.0.0.1:9092,10.0.0.2:9092) is not verified by {ca_file} "
                               "(unable to get local issuer certificate): ")


def test_an_unsupported_mechanism_names_the_key(ca_file: str) -> None:
    err = misconfigured(UnsupportedSaslMechanismError("no SCRAM"),
                        sasl(ca_file, sasl_mechanism="SCRAM-SHA-256"))
    assert err is not None and str(err).startswith("kafka.sasl_mechanism: ")


@pytest.mark.parametrize("exc", [KafkaConnectionError("Unable to bootstrap"),
                                 ConnectionRefusedError(111, "Connection refused"),
                                 TimeoutError()])
def test_other_failures_are_not_configuration_errors(ca_file: str, exc: Exception) -> None:
    assert misconfigured(exc, sasl(ca_file)) is None


async def test_diagnose_plaintext_has_nothing_to_say() -> None:
    assert await diagnose(KafkaConfig()) is None


async def test_diagnose_a_closed_port_is_an_outage(ca_file: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setenv(PASSWORD_ENV, "pw-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await diagnose(sasl(ca_file, bootstrap_servers=f"127.0.0.1:{port}"), wait=2.0) is None

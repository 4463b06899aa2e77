"""Redis over TLS on the node's side: presence.redis_tls_ca_file is checked
when the configuration is loaded, every Redis client of the node takes the
same TLS arguments from tls_kwargs(), and a certificate the CA file does not
verify is one clear configuration error naming the key."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis_tls_pki import write_ca

from tongxin.auth.redis_revocation import RedisRevocations
from tongxin.config import Config, ConfigError, load_config
from tongxin.presence.multisite import RemotePresence, SitesPresence
from tongxin.presence.redis_presence import (
    TLS_CA_FIELD,
    RedisPresence,
    misconfigured,
    tls_failure,
    tls_kwargs,
)
from tongxin.redisutil import bounded_cluster
from tongxin.server.node import make_presence, make_rate_limiter, make_revocations
from tongxin.server.redis_ratelimit import RedisRateLimiter

NODES = "10.0.0.1:7000,10.0.0.2:7000"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tongxin.yml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    return str(write_ca(tmp_path / "pki").cert_file)


def test_kwargs() -> None:
    assert tls_kwargs("") == {}
    assert tls_kwargs("/etc/tongxin/redis-ca.crt") == {
        "ssl": True, "ssl_ca_certs": "/etc/tongxin/redis-ca.crt", "ssl_cert_reqs": "required",
        "ssl_check_hostname": True}


def test_every_client_speaks_tls_verified_against_the_ca(ca_file: str) -> None:
    clients = [RedisPresence(NODES, tls_ca_file=ca_file).redis,
               bounded_cluster(NODES, 1.0, retries=1, tls_ca_file=ca_file),
               RedisRateLimiter(NODES, "tx", 10.0, 20, tls_ca_file=ca_file).redis,
               RedisRevocations(NODES, "tx", tls_ca_file=ca_file).redis,
               RemotePresence(NODES, "tx", 15.0, tls_ca_file=ca_file).redis]
    for client in clients:
        kwargs = client.nodes_manager.connection_kwargs
        assert kwargs["connection_class"] is SSLConnection
        assert kwargs["ssl_ca_certs"] == ca_file
        assert kwargs["ssl_cert_reqs"] == "required"
        assert kwargs["ssl_check_hostname"] is True
        assert not kwargs.get("ssl_certfile")  # tls-auth-clients no: no client certificate


def test_without_a_ca_file_clients_are_plaintext() -> None:
    clients = [RedisPresence(NODES).redis, bounded_cluster(NODES, 1.0, retries=1),
               RedisRateLimiter(NODES, "tx", 10.0, 20).redis, RedisRevocations(NODES, "tx").redis,
               RemotePresence(NODES, "tx", 15.0).redis]
    for client in clients:
        kwargs = client.nodes_manager.connection_kwargs
        assert kwargs.get("connection_class") is not SSLConnection
        assert "ssl_ca_certs" not in kwargs


def test_the_node_threads_the_ca_file_to_every_client(ca_file: str, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"presence:\n  backend: redis\n  redis_nodes: {NODES}\n"
                                      f"  remote_redis_nodes: 10.1.0.1:7000;10.2.0.1:7000\n"
                                      f"  redis_tls_ca_file: {ca_file}\n"))
    assert cfg.presence.redis_tls_ca_file == ca_file
    presence = make_presence(cfg)
    assert isinstance(presence, SitesPresence)
    local = presence.local
    assert isinstance(local, RedisPresence)
    limiter, revocations = make_rate_limiter(cfg), make_revocations(cfg)
    assert isinstance(limiter, RedisRateLimiter) and isinstance(revocations, RedisRevocations)
    clients = [local.redis, *(r.redis for r in presence.remotes), limiter.redis,
               revocations.redis]
    assert len(clients) == 5
    for client in clients:
        assert client.nodes_manager.connection_kwargs["ssl_ca_certs"] == ca_file


def test_defaults_are_plaintext() -> None:
    assert Config().presence.redis_tls_ca_file == ""
    assert load_config().presence.redis_tls_ca_file == ""


def test_a_valid_ca_file_is_accepted(ca_file: str, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"presence:\n  backend: redis\n  redis_tls_ca_file: {ca_file}\n"))
    assert cfg.presence.redis_tls_ca_file == ca_file
    # Rate limits in Redis with presence in memory use Redis too.
    load_config(write(tmp_path, f"presence:\n  redis_tls_ca_file: {ca_file}\n"
                                "chat:\n  rate_limit_backend: redis\n"))


def test_a_missing_file_names_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(ConfigError, match=r"^presence\.redis_tls_ca_file: cannot read .*nope\.crt: "
                                          r"No such file or directory"):
        load_config(write(tmp_path, f"presence:\n  backend: redis\n  redis_tls_ca_file: {missing}\n"))


def test_a_directory_is_not_a_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^presence\.redis_tls_ca_file: cannot read"):
        load_config(write(tmp_path, f"presence:\n  backend: redis\n  redis_tls_ca_file: {tmp_path}\n"))


@pytest.mark.parametrize(("content", "needle"), [
    (b"", "holds no PEM certificate"),
    (b"-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n", "holds no PEM certificate"),
    (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
     "is not a PEM CA certificate TLS can use"),
])
def test_a_file_without_a_usable_certificate_names_the_key(tmp_path: Path, content: bytes,
                                                           needle: str) -> None:
    bad = tmp_path / "bad.crt"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=r"^presence\.redis_tls_ca_file: ") as caught:
        load_config(write(tmp_path, f"presence:\n  backend: redis\n  redis_tls_ca_file: {bad}\n"))
    assert needle in str(caught.value)


def test_setting_it_without_redis_is_an_error(ca_file: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^presence\.redis_tls_ca_file: set, but this node uses "
                                          r"no Redis"):
        load_config(write(tmp_path, f"presence:\n  redis_tls_ca_file: {ca_file}\n"))


def _verify_error() -> RedisClusterException:
    """What RedisCluster.initialize() raises when no startup node's certificate verifies."""
    cert_error = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
           "issuer certificate (_ssl.c:1000)")
    cert_error.verify_message = "unable to get local issuer certificate"
    try:
        try:
            raise cert_error
        except OSError as e:
            raise RedisConnectionError(f"Error 1 connecting to 10.0.0.1:7000. {e.args[1]}.") from None
    except RedisConnectionError as conn:
        try:
            raise RedisClusterException("Redis Cluster cannot be connected. Please provide at "
                                        f"least one reachable node: {conn}") from conn
        except RedisClusterException as exc:
            return exc


def test_verification_failure_is_a_configuration_error_naming_the_key() -> None:
    exc = _verify_error()
    exc.__cause__.__context__ = None  # type: ignore[union-attr]  # only the text is left
    for err in (tls_failure(_verify_error(), NODES, "/etc/tongxin/redis-ca.crt"),
                tls_failure(exc, NODES, "/etc/tongxin/redis-ca.crt"),
                misconfigured(_verify_error(), NODES, "/etc/tongxin/redis-ca.crt")):
        assert isinstance(err, ConfigError)
        text = str(err)
        assert text.startswith(f"{TLS_CA_FIELD}: the certificate of Redis ({NODES}) is not "
                               "verified by /etc/tongxin/redis-ca.crt")
        assert "unable to get local issuer certificate" in text


def test_other_failures_are_not_tls_errors() -> None:
    refused = RedisConnectionError("Error 111 connecting to 10.0.0.1:7000. Connection refused.")
    assert tls_failure(refused, NODES, "/ca.crt") is None
    assert tls_failure(TimeoutError(), NODES, "/ca.crt") is None
    assert misconfigured(refused, NODES, "/ca.crt") is None


async def test_start_raises_the_configuration_error(ca_file: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    presence = RedisPresence(NODES, tls_ca_file=ca_file)

    async def refuse() -> None:
        raise _verify_error()

    monkeypatch.setattr(presence.redis, "initialize", refuse)
    with pytest.raises(ConfigError, match=r"^presence\.redis_tls_ca_file: ") as caught:
        await presence.start("node-1")
    assert caught.value.__cause__ is None


async def test_bounded_clients_fall_back_and_log_the_configuration_error(
        ca_file: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    revocations = RedisRevocations(NODES, "tx", tls_ca_file=ca_file)

    async def refuse(*args: object) -> None:
        raise _verify_error()

    monkeypatch.setattr(revocations.redis, "mget", refuse)
    assert await revocations.revoked("u1", "t1", 0) is None  # the store decides
    assert revocations.breaker.down
    [record] = [r for r in caplog.records if TLS_CA_FIELD in r.getMessage()]
    assert "token revocation: configuration error: presence.redis_tls_ca_file" in record.getMessage()
    assert "falling back" in record.getMessage()


def test_config_check_reports_it(ca_file: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tongxin.cli.main import main

    good = write(tmp_path, f"presence:\n  backend: redis\n  redis_tls_ca_file: {ca_file}\n")
    assert main(["config", "check", "--config", str(good)]) == 0
    assert "configuration is valid" in capsys.readouterr().out
    bad = write(tmp_path, f"presence:\n  backend: redis\n  redis_tls_ca_file: {tmp_path}/gone.crt\n")
    assert main(["config", "check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tongxin: configuration error: presence.redis_tls_ca_file: cannot read ")

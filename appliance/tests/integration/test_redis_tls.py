"""Redis over TLS against a real redis-server run as role redis runs it with
redis_tls (port 0, tls-port, tls-cluster, tls-auth-clients no, requirepass;
an ECDSA P-256 server certificate whose SAN is the address it announces):
every Redis client of the node works with presence.redis_tls_ca_file set to
the CA that signed it; with another CA, presence stops at start with one
error naming the key and the bounded clients (rate limits, revocations) fall
back as when Redis is down; a plaintext client gets nothing.

The shared engines (services.sh) are plaintext; this test starts its own
one-node TLS cluster (every slot on it) on a free port, and stops it by PID.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from engines import free_port
from redis.exceptions import RedisClusterException
from redis_tls_pki import Ca, write_ca, write_server_cert
from serve_once import serve_once

from tongxin.auth.redis_revocation import RedisRevocations
from tongxin.clock import now_ms
from tongxin.config import ConfigError, load_config
from tongxin.presence.multisite import RemotePresence
from tongxin.presence.redis_presence import PASSWORD_ENV, TLS_CA_FIELD, RedisPresence
from tongxin.server.redis_ratelimit import RedisRateLimiter

pytestmark = pytest.mark.integration

PASSWORD = "integration-redis-tls-password-1"


@dataclass
class TlsRedis:
    port: int
    ca: Ca  # signed the server's certificate
    other_ca_file: str  # a CA that did not
    cert_file: str
    key_file: str

    @property
    def ca_file(self) -> str:
        return str(self.ca.cert_file)

    @property
    def nodes(self) -> str:
        return f"127.0.0.1:{self.port}"


def _cli(redis: TlsRedis | tuple[int, str], *args: str) -> subprocess.CompletedProcess[str]:
    port, ca = (redis.port, redis.ca_file) if isinstance(redis, TlsRedis) else redis
    return subprocess.run(["redis-cli", "--tls", "--cacert", ca, "-h", "127.0.0.1", "-p", str(port),
                           *args], capture_output=True, text=True, timeout=10, check=False,
                          env={"REDISCLI_AUTH": PASSWORD, "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    state = tmp_path_factory.mktemp("redis-tls")
    ca = write_ca(state / "pki", "Tongxin test CA")
    other = write_ca(state / "other", "Another CA")
    cert_file, key_file = write_server_cert(state / "pki", ca, "127.0.0.1")
    port = free_port()
    # The cluster bus is the port + 10000: take another port if that is out of range.
    while port + 10000 > 65535 or port in range(7000, 7006):
        port = free_port()
    conf = state / "redis.conf"
    conf.write_text(f"port 0\ntls-port {port}\nbind 127.0.0.1\ndir {state}\n"
                    f"tls-cert-file {cert_file}\ntls-key-file {key_file}\n"
                    f"tls-ca-cert-file {ca.cert_file}\ntls-auth-clients no\n"
                    "tls-cluster yes\ntls-replication yes\ntls-protocols \"TLSv1.2 TLSv1.3\"\n"
                    "cluster-enabled yes\ncluster-config-file nodes.conf\n"
                    "save \"\"\nappendonly no\n"
                    f"requirepass {PASSWORD}\nmasterauth {PASSWORD}\n", encoding="utf-8")
    conf.chmod(0o600)
    server = subprocess.Popen(["/usr/bin/redis-server", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=(state / "redis.log").open("wb"))
    redis = TlsRedis(port, ca, str(other.cert_file), str(cert_file), str(key_file))
    try:
        deadline = time.monotonic() + 20
        while _cli(redis, "ping").stdout.strip() != "PONG":
            assert server.poll() is None and time.monotonic() < deadline, \
                f"redis-server did not start: {(state / 'redis.log').read_text()}"
            time.sleep(0.1)
        assert _cli(redis, "cluster", "addslotsrange", "0", "16383").stdout.strip() == "OK"
        while "cluster_state:ok" not in _cli(redis, "cluster", "info").stdout:
            assert time.monotonic() < deadline, "the one-node cluster is not ok"
            time.sleep(0.1)
        yield redis
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def test_the_server_speaks_tls_only(tls_redis: TlsRedis) -> None:
    assert _cli(tls_redis, "ping").stdout.strip() == "PONG"
    # A plaintext redis-cli gets no answer (the server drops the connection).
    plain = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(tls_redis.port), "ping"],
                           capture_output=True, text=True, timeout=10, check=False,
                           env={"REDISCLI_AUTH": PASSWORD, "PATH": "/usr/bin:/bin"})
    assert "PONG" not in plain.stdout
    # redis-cli with the other CA does not verify the server.
    assert "PONG" not in _cli((tls_redis.port, tls_redis.other_ca_file), "ping").stdout


def test_the_config_check_accepts_the_ca(tls_redis: TlsRedis, tmp_path: Path) -> None:
    config = tmp_path / "tongxin.yml"
    config.write_text(f"presence:\n  backend: redis\n  redis_nodes: {tls_redis.nodes}\n"
                      f"  redis_tls_ca_file: {tls_redis.ca_file}\n", encoding="utf-8")
    assert load_config(config).presence.redis_tls_ca_file == tls_redis.ca_file


async def test_every_client_works_with_the_ca(tls_redis: TlsRedis) -> None:
    prefix = f"txtls{uuid.uuid4().hex[:6]}"
    presence = RedisPresence(tls_redis.nodes, prefix=prefix, tls_ca_file=tls_redis.ca_file)
    await presence.start("node-tls-1")
    limiter = RedisRateLimiter(tls_redis.nodes, prefix, 1.0, 2, timeout=2.0,
                               tls_ca_file=tls_redis.ca_file)
    revocations = RedisRevocations(tls_redis.nodes, prefix, timeout=5.0,
                                   tls_ca_file=tls_redis.ca_file)
    remote = RemotePresence(tls_redis.nodes, prefix, 15.0, timeout=5.0,
                            tls_ca_file=tls_redis.ca_file)
    try:
        assert await presence.device_online("u_alice", "d1", "node-tls-1")
        assert await presence.nodes_of(["u_alice"]) == {"node-tls-1": ["u_alice"]}
        assert "node-tls-1" in await presence.live_nodes()
        [entry] = await presence.status(["u_alice"])
        assert entry.online and entry.devices == 1

        seen = await remote.status(["u_alice"])
        assert seen is not None and seen["u_alice"].online

        # Burst 2 at 1/s: two frames pass, the third waits; all judged by Redis.
        assert await limiter.acquire("u_alice") == 0.0
        assert await limiter.acquire("u_alice") == 0.0
        assert await limiter.acquire("u_alice") > 0.0
        assert not limiter.breaker.down
        assert _cli(tls_redis, "exists", limiter.key("u_alice")).stdout.strip() == "1"

        assert await revocations.revoked("u_alice", "tok1", now_ms()) is None
        await revocations.revoke_token("u_alice", "tok1", now_ms() + 60_000)
        assert await revocations.revoked("u_alice", "tok1", now_ms()) is True
        assert not revocations.breaker.down
    finally:
        await remote.close()
        await revocations.close()
        await limiter.close()
        await presence.close()


async def test_another_ca_stops_presence_with_one_error_naming_the_key(
        tls_redis: TlsRedis) -> None:
    presence = RedisPresence(tls_redis.nodes, prefix="txtlsbad", tls_ca_file=tls_redis.other_ca_file)
    try:
        with pytest.raises(ConfigError) as caught:
            await presence.start("node-tls-2")
    finally:
        await presence.close()
    text = str(caught.value)
    assert text.startswith(f"{TLS_CA_FIELD}: the certificate of Redis ({tls_redis.nodes}) is not "
                           f"verified by {tls_redis.other_ca_file}")
    assert "(self-signed certificate in certificate chain)" in text
    assert caught.value.__cause__ is None
    assert PASSWORD not in text


async def test_the_certificate_must_name_the_address(tls_redis: TlsRedis,
                                                     tmp_path: Path) -> None:
    # The right CA, but a certificate for another address: Redis reloads its
    # certificate on CONFIG SET (new connections get it); put the right one back after.
    cert_file, key_file = write_server_cert(tmp_path, tls_redis.ca, "10.255.0.1")
    swap = ("config", "set", "tls-cert-file", str(cert_file), "tls-key-file", str(key_file))
    assert _cli(tls_redis, *swap).stdout.strip() == "OK"
    presence = RedisPresence(tls_redis.nodes, prefix="txtlsname", tls_ca_file=tls_redis.ca_file)
    try:
        with pytest.raises(ConfigError, match=r"^presence\.redis_tls_ca_file: .*IP address "
                                              r"mismatch"):
            await presence.start("node-tls-4")
    finally:
        await presence.close()
        # redis-cli checks the CA, not the name: it still gets in to put the old one back.
        back = ("config", "set", "tls-cert-file", tls_redis.cert_file,
                "tls-key-file", tls_redis.key_file)
        assert _cli(tls_redis, *back).stdout.strip() == "OK"


async def test_another_ca_makes_the_bounded_clients_fall_back(
        tls_redis: TlsRedis, caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisRateLimiter(tls_redis.nodes, "txtlsbad", 1.0, 2, timeout=1.0,
                               tls_ca_file=tls_redis.other_ca_file)
    revocations = RedisRevocations(tls_redis.nodes, "txtlsbad", timeout=2.0,
                                   tls_ca_file=tls_redis.other_ca_file)
    remote = RemotePresence(tls_redis.nodes, "txtlsbad", 15.0, timeout=2.0,
                            tls_ca_file=tls_redis.other_ca_file)
    try:
        started = time.monotonic()
        # The local bucket answers (burst 2), the store decides (None), the
        # other site's presence is left out (None).
        assert await limiter.acquire("u_bob") == 0.0
        assert await revocations.revoked("u_bob", "tok", now_ms()) is None
        assert await remote.status(["u_bob"]) is None
        assert time.monotonic() - started < 10
        assert limiter.breaker.down and revocations.breaker.down and remote.breaker.down
    finally:
        await remote.close()
        await revocations.close()
        await limiter.close()
    logged = [r.getMessage() for r in caplog.records if TLS_CA_FIELD in r.getMessage()]
    assert any(m.startswith("rate limits: configuration error: presence.redis_tls_ca_file")
               for m in logged), logged
    assert any(m.startswith("token revocation: configuration error: presence.redis_tls_ca_file")
               for m in logged), logged
    assert any(m.startswith(f"presence of site {tls_redis.nodes}: configuration error: "
                            "presence.redis_tls_ca_file") for m in logged), logged


async def _serve(tmp_path: Path, redis: TlsRedis, ca_file: str,
                 wait: float = 60) -> tuple[int | None, str, str]:
    """``tongxin serve`` on this Redis with ``ca_file``: (exit code or None if it
    ran, stdout, stderr)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    config = tmp_path / "tongxin.yml"
    config.write_text(f"presence:\n  backend: redis\n  redis_nodes: {redis.nodes}\n"
                      f"  key_prefix: txtlsserve\n  redis_tls_ca_file: {ca_file}\n"
                      f"server:\n  listen: 127.0.0.1:{free_port()}\n"
                      "  metrics_listen: 127.0.0.1:0\n", encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "TONGXIN_HOME": str(home), "PYTHONUNBUFFERED": "1",
           "TONGXIN_LANG": "en", PASSWORD_ENV: PASSWORD}
    return await serve_once(config, env, wait)


async def test_serve_with_another_ca_stops_with_one_clear_line(tls_redis: TlsRedis,
                                                               tmp_path: Path) -> None:
    code, _out, err = await _serve(tmp_path, tls_redis, tls_redis.other_ca_file)
    assert code == 2, err
    assert "Traceback" not in err
    assert "tongxin: configuration error: presence.redis_tls_ca_file: the certificate of Redis" \
        in err


async def test_serve_with_the_ca_runs(tls_redis: TlsRedis, tmp_path: Path) -> None:
    code, out, err = await _serve(tmp_path, tls_redis, tls_redis.ca_file)
    assert code is None, err
    assert "presence redis" in out


async def test_a_plaintext_client_cannot_talk_to_it(tls_redis: TlsRedis) -> None:
    presence = RedisPresence(tls_redis.nodes, prefix="txtlsplain")
    presence.redis.nodes_manager.connection_kwargs["socket_timeout"] = 1.0
    try:
        # The server drops a connection that does not start with a TLS handshake.
        with pytest.raises(RedisClusterException, match="cannot be connected"):
            await presence.start("node-tls-3")
    finally:
        await presence.close()
    revocations = RedisRevocations(tls_redis.nodes, "txtlsplain", timeout=1.0)
    try:
        assert await revocations.revoked("u_carol", "tok", now_ms()) is None
        assert revocations.breaker.down
    finally:
        await revocations.close()

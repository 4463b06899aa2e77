"""Redis AUTH against a real redis-server with requirepass (as role redis
configures every instance): the node's presence works with the password from
$TONGXIN_REDIS_PASSWORD, and ``tongxin serve`` with a wrong or missing one
stops at start with one line naming the variable, no traceback.

The shared engines (services.sh) run without a password; this test starts
its own password-protected one-node cluster (every slot on it) on a free
port, and stops it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engines import free_port
from serve_once import serve_once

from tongxin.config import ConfigError
from tongxin.presence.redis_presence import PASSWORD_ENV, RedisPresence

PASSWORD = "integration-redis-password-1"


def _cli(port: int, *args: str, password: str = PASSWORD) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                          env={"REDISCLI_AUTH": password, "PATH": "/usr/bin:/bin"},
                          timeout=10, check=False).stdout.strip()


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    # The cluster bus is the port + 10000: take another port if that is in use.
    while port + 10000 > 65535:
        port = free_port()
    state = tmp_path_factory.mktemp("redis-auth")
    conf = state / "redis.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {state}\ncluster-enabled yes\n"
                    f"cluster-config-file nodes.conf\nsave \"\"\nappendonly no\n"
                    f"requirepass {PASSWORD}\nmasterauth {PASSWORD}\n", encoding="utf-8")
    conf.chmod(0o600)
    server = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while _cli(port, "ping") != "PONG":
            assert server.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        assert _cli(port, "cluster", "addslotsrange", "0", "16383") == "OK"
        while "cluster_state:ok" not in _cli(port, "cluster", "info"):
            assert time.monotonic() < deadline, "the one-node cluster is not ok"
            time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(10)


def test_the_server_refuses_a_client_without_the_password(redis_port: int) -> None:
    assert _cli(redis_port, "ping", password="").startswith("NOAUTH")
    assert _cli(redis_port, "ping") == "PONG"


async def test_presence_works_with_the_password(redis_port: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    presence = RedisPresence(f"127.0.0.1:{redis_port}", prefix="txauth")
    await presence.start("node-auth-1")
    try:
        await presence.device_online("u_alice", "d1", "node-auth-1")
        assert await presence.nodes_of(["u_alice"]) == {"node-auth-1": ["u_alice"]}
        assert "node-auth-1" in await presence.live_nodes()
    finally:
        await presence.close()


@pytest.mark.parametrize("password", ["not-the-password-at-all", None])
async def test_presence_refuses_to_start_with_a_wrong_or_no_password(
        redis_port: int, monkeypatch: pytest.MonkeyPatch, password: str | None) -> None:
    if password is None:
        monkeypatch.delenv(PASSWORD_ENV, raising=False)
    else:
        monkeypatch.setenv(PASSWORD_ENV, password)
    presence = RedisPresence(f"127.0.0.1:{redis_port}", prefix="txauth")
    try:
        with pytest.raises(ConfigError, match="refused the password" if password
                           else "requires a password"):
            await presence.start("node-auth-2")
    finally:
        await presence.close()


async def _serve(tmp_path: Path, redis_port: int, password: str | None,
                 wait: float = 60) -> tuple[int | None, str, str]:
    """``tongxin serve`` on this Redis: (exit code or None if still running, stdout, stderr)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    config = tmp_path / "tongxin.yml"
    config.write_text(f"presence:\n  backend: redis\n  redis_nodes: 127.0.0.1:{redis_port}\n"
                      f"  key_prefix: txauth\nserver:\n  listen: 127.0.0.1:{free_port()}\n",
                      encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "TONGXIN_HOME": str(home), "PYTHONUNBUFFERED": "1",
           "TONGXIN_LANG": "en"}
    if password is not None:
        env[PASSWORD_ENV] = password
    return await serve_once(config, env, wait)


async def test_serve_with_a_wrong_password_stops_with_one_clear_line(
        redis_port: int, tmp_path: Path) -> None:
    code, _out, err = await _serve(tmp_path, redis_port, "not-the-password-at-all")
    assert code == 2, err
    assert "Traceback" not in err
    assert "tongxin: configuration error: presence.redis_nodes:" in err
    assert f"refused the password in ${PASSWORD_ENV}" in err
    assert "not-the-password-at-all" not in err


async def test_serve_without_the_password_says_it_is_not_set(redis_port: int,
                                                             tmp_path: Path) -> None:
    code, _out, err = await _serve(tmp_path, redis_port, None)
    assert code == 2, err
    assert "Traceback" not in err
    assert f"requires a password and ${PASSWORD_ENV} is not set" in err


async def test_serve_with_the_password_runs(redis_port: int, tmp_path: Path) -> None:
    code, out, err = await _serve(tmp_path, redis_port, PASSWORD)
    assert code is None, err
    assert "presence redis" in out

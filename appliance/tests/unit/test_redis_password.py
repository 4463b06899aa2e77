"""Redis AUTH on the node's side: every Redis client (presence, rate limits,
revocations, the other sites' presence) takes its password from
$TONGXIN_REDIS_PASSWORD, and Redis refusing it is one clear configuration
error at start, which never shows the password."""

from __future__ import annotations

import pytest
from redis.exceptions import AuthenticationError, RedisClusterException

from tongxin.auth.redis_revocation import RedisRevocations
from tongxin.config import ConfigError
from tongxin.presence.multisite import RemotePresence
from tongxin.presence.redis_presence import PASSWORD_ENV, RedisPresence, auth_failure, redis_password
from tongxin.redisutil import bounded_cluster
from tongxin.server.redis_ratelimit import RedisRateLimiter

NODES = "10.0.0.1:7000,10.0.0.2:7000"
SECRET = "unit-test-redis-password"


def cluster_error(cause: BaseException) -> RedisClusterException:
    """What RedisCluster.initialize() raises when no startup node lets it in."""
    try:
        raise RedisClusterException(
            f"Redis Cluster cannot be connected. Please provide at least one reachable node: {cause}"
        ) from cause
    except RedisClusterException as exc:
        return exc


def test_no_password_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert redis_password() is None
    monkeypatch.setenv(PASSWORD_ENV, "")
    assert redis_password() is None  # an empty line in tongxin.env: no AUTH either


def test_every_client_authenticates_with_the_environments_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    clients = [RedisPresence(NODES).redis, bounded_cluster(NODES, 1.0, retries=1),
               RedisRateLimiter(NODES, "tx", 10.0, 20).redis, RedisRevocations(NODES, "tx").redis,
               RemotePresence(NODES, "tx", 15.0).redis]
    for client in clients:
        assert client.nodes_manager.connection_kwargs["password"] == SECRET


def test_without_it_clients_do_not_authenticate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert RedisPresence(NODES).redis.nodes_manager.connection_kwargs.get("password") is None
    assert bounded_cluster(NODES, 1.0, 1).nodes_manager.connection_kwargs.get("password") is None


def test_a_wrong_password_is_a_configuration_error_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    err = auth_failure(cluster_error(AuthenticationError(
        "invalid username-password pair or user is disabled.")), NODES)
    assert isinstance(err, ConfigError)
    text = str(err)
    assert "refused the password" in text and PASSWORD_ENV in text and NODES in text
    assert "invalid username-password pair" in text
    assert SECRET not in text


def test_a_missing_password_says_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    err = auth_failure(cluster_error(AuthenticationError("NOAUTH Authentication required.")), NODES)
    assert isinstance(err, ConfigError)
    assert "requires a password" in str(err) and f"${PASSWORD_ENV} is not set" in str(err)


def test_other_failures_are_not_turned_into_configuration_errors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    assert auth_failure(cluster_error(ConnectionRefusedError(111, "Connection refused")), NODES) is None
    assert auth_failure(TimeoutError(), NODES) is None


async def test_start_raises_the_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password-here")
    presence = RedisPresence(NODES)

    async def refuse() -> None:
        raise cluster_error(AuthenticationError("invalid username-password pair or user is disabled."))

    monkeypatch.setattr(presence.redis, "initialize", refuse)
    with pytest.raises(ConfigError, match="refused the password") as caught:
        await presence.start("node-1")
    assert caught.value.__cause__ is None  # one line, not the driver's chain
    assert "wrong-password-here" not in str(caught.value)

"""AUTH when presence (Redis) fails: UNAVAILABLE with a retry hint, never half a session.

Issue 18: in a connection burst the Redis client pool ran out (every AUTH read
the live-node key); the client got INTERNAL, and the connection stayed marked
authenticated although AUTH_OK was never sent. These run a real node and real
WebSocket clients; presence is the real RedisPresence over an in-memory fake of
the cluster client that fails on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningNode, make_config, start_node  # type: ignore[import-not-found, unused-ignore]
from fake_redis import FakeRedis, fake_presence  # type: ignore[import-not-found, unused-ignore]
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tongxin.client import TongxinError
from tongxin.clock import now_ms
from tongxin.presence.redis_presence import dev_key, nodes_key
from tongxin.proto import tongxin_pb2 as pb
from tongxin.server.connection import Connection
from tongxin.server.node import Node


@pytest.fixture
async def redis_node(tmp_path: Path) -> AsyncIterator[tuple[RunningNode, FakeRedis]]:
    presence, fake = fake_presence()
    running = await start_node(make_config(tmp_path / "node"), presence=presence)
    yield running, fake
    fake.fail = fake.fail_live = None
    if fake.gate is not None:
        fake.gate.set()
    await running.stop()


def the_connection(node: Node) -> Connection:
    (conn,) = node.hub.all
    return conn


def authenticated(node: Node) -> float:
    return node.metrics.registry.get_sample_value("tongxin_authenticated_connections") or 0.0


def errors(node: Node, code: str) -> float:
    return node.metrics.registry.get_sample_value("tongxin_errors_total", {"code": code}) or 0.0


def assert_unauthenticated(node: Node, conn: Connection) -> None:
    assert conn.session is None
    assert (conn.user_id, conn.device_id) == ("", "")
    assert node.hub.devices == {}
    assert authenticated(node) == 0


async def assert_unavailable(login: Any) -> TongxinError:
    with pytest.raises(TongxinError) as info:
        await login
    err = info.value
    assert err.code == pb.UNAVAILABLE, err
    assert 1000 <= err.retry_after_ms < 2000
    assert not err.fatal
    return err


@pytest.mark.parametrize("failure", [
    MaxConnectionsError("Too many connections"),  # the client pool is spent
    RedisConnectionError("Connection refused"),
    RedisTimeoutError("Timeout reading from socket"),
], ids=["pool-exhausted", "connection-error", "timeout"])
async def test_auth_is_unavailable_with_a_retry_hint_and_a_later_auth_succeeds(
        redis_node: tuple[RunningNode, FakeRedis], failure: Exception) -> None:
    running, fake = redis_node
    node = running.node
    await node.accounts.create_user("alice", "password-1")
    client = await running.client(device_id="d_alice1")
    fake.fail = failure
    await assert_unavailable(client.login("alice", "password-1"))
    conn = the_connection(node)
    assert_unauthenticated(node, conn)
    assert not conn.closing
    assert errors(node, "internal") == 0
    assert conn.unauth_errors == 0  # a backend failure is not the client's error

    fake.fail = None  # Redis answers again: the same connection authenticates
    auth = await client.login("alice", "password-1")
    assert auth.device_id == "d_alice1"
    assert conn.session is not None and conn.user_id == auth.user_id
    assert node.hub.devices == {auth.user_id: {"d_alice1": conn}}
    assert authenticated(node) == 1
    assert fake.hashes[dev_key("tx", auth.user_id)] == {"d_alice1": node.node_id}


async def test_failing_live_node_read_answers_unavailable(
        redis_node: tuple[RunningNode, FakeRedis]) -> None:
    """The read the issue names: the user has another device, on another node, so
    this AUTH asks which nodes are live; that read fails, the rest worked."""
    running, fake = redis_node
    node = running.node
    user = await node.accounts.create_user("bob", "password-1")
    fake.zsets[nodes_key("tx")]["other-node"] = now_ms()
    fake.hashes[dev_key("tx", user.id)] = {"d_phone": "other-node"}
    client = await running.client(device_id="d_laptop")
    fake.fail_live = MaxConnectionsError("Too many connections")
    await assert_unavailable(client.login("bob", "password-1"))
    assert_unauthenticated(node, the_connection(node))

    fake.fail_live = None
    await client.login("bob", "password-1")
    assert the_connection(node).session is not None
    assert authenticated(node) == 1


async def test_resume_with_a_token_is_unavailable_the_same_way(
        redis_node: tuple[RunningNode, FakeRedis]) -> None:
    running, fake = redis_node
    node = running.node
    await node.accounts.create_user("carol", "password-1")
    first = await running.client(device_id="d_carol")
    token = (await first.login("carol", "password-1")).token
    await first.close()
    for _ in range(100):  # the server side of the closed connection goes away
        if not node.hub.all:
            break
        await asyncio.sleep(0.01)
    client = await running.client(device_id="d_carol")
    fake.fail = MaxConnectionsError("Too many connections")
    await assert_unavailable(client.resume(token))
    assert_unauthenticated(node, the_connection(node))
    fake.fail = None
    await client.resume(token)
    assert authenticated(node) == 1


async def test_not_authenticated_before_auth_ok(redis_node: tuple[RunningNode, FakeRedis]) -> None:
    """While presence is being written, the connection has no session, is not counted
    as authenticated and gets no pushes; AUTH_OK and the session come together."""
    running, fake = redis_node
    node = running.node
    await node.accounts.create_user("dave", "password-1")
    client = await running.client(device_id="d_dave")
    fake.gate = asyncio.Event()
    login = asyncio.create_task(client.login("dave", "password-1"))
    await asyncio.wait_for(fake.waiting.wait(), 10)
    conn = the_connection(node)
    assert conn.session is None
    assert authenticated(node) == 0
    fake.gate.set()
    auth = await asyncio.wait_for(login, 10)
    assert auth.user_id == conn.user_id and conn.session is not None
    assert authenticated(node) == 1


async def test_a_failed_auth_keeps_the_device_connection_it_would_have_replaced(
        redis_node: tuple[RunningNode, FakeRedis]) -> None:
    running, fake = redis_node
    node = running.node
    await node.accounts.create_user("erin", "password-1")
    first = await running.client(device_id="d_erin")
    auth = await first.login("erin", "password-1")
    (old,) = node.hub.all
    second = await running.client(device_id="d_erin")
    fake.fail = MaxConnectionsError("Too many connections")
    await assert_unavailable(second.login("erin", "password-1"))
    assert node.hub.devices == {auth.user_id: {"d_erin": old}}
    assert not old.closing  # not replaced (4009) by a connection that did not authenticate
    assert authenticated(node) == 1
    await first.ping()


# ---- a connection ending while presence fails -----------------------------------------


async def wait_detached(node: Node) -> None:
    for _ in range(500):
        if not node.hub.all:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server did not end the closed connection")


async def test_a_connection_ending_while_redis_fails_ends_quietly_and_is_removed_later(
        redis_node: tuple[RunningNode, FakeRedis], caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18's mass close: the presence removal failed (a spent pool) and the
    error escaped the WebSocket handler, where aiohttp logged a traceback per
    connection. Now the handler ends normally, the failure is counted, and the
    removal is made again once Redis answers."""
    running, fake = redis_node
    node = running.node
    client = await running.user("frank", device_id="d_frank")
    key = dev_key("tx", client.user_id)
    assert fake.hashes[key] == {"d_frank": node.node_id}
    fake.fail = MaxConnectionsError("Too many connections")
    caplog.set_level("WARNING")
    await client.close()
    await wait_detached(node)
    assert node.metrics.registry.get_sample_value(
        "tongxin_presence_removals_failed_total") == 1
    assert not [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r for r in caplog.records if "presence removal failed" in r.getMessage()]
    assert fake.hashes[key] == {"d_frank": node.node_id}  # left behind, for now
    assert node.presence._unremoved == {(client.user_id, "d_frank")}  # type: ignore[attr-defined]

    fake.fail = None
    await node.presence._remove_again()  # type: ignore[attr-defined]
    assert fake.hashes[key] == {}
    assert not node.presence._unremoved  # type: ignore[attr-defined]


async def test_a_removal_made_again_spares_a_device_that_came_back(
        redis_node: tuple[RunningNode, FakeRedis]) -> None:
    running, fake = redis_node
    node = running.node
    first = await running.user("gina", device_id="d_gina")
    key = dev_key("tx", first.user_id)
    fake.fail = RedisConnectionError("Connection refused")
    await first.close()
    await wait_detached(node)
    fake.fail = None
    again = await running.client(device_id="d_gina")  # back, through this node
    await again.login("gina", "password-1")
    await node.presence._remove_again()  # type: ignore[attr-defined]
    assert fake.hashes[key] == {"d_gina": node.node_id}
    assert not node.presence._unremoved  # type: ignore[attr-defined]
    # A device that left and is listed elsewhere now (another node) is not removed either.
    fake.fail = RedisConnectionError("Connection refused")
    await again.close()
    await wait_detached(node)
    fake.fail = None
    fake.hashes[key]["d_gina"] = "other-node"
    await node.presence._remove_again()  # type: ignore[attr-defined]
    assert fake.hashes[key] == {"d_gina": "other-node"}

"""AUTHs in turns (server.auth_concurrency): a reconnect storm answered in order (issue 18).

14,000 clients reconnecting to one worker at once each got a little of the
worker at a time: all were answered late, their clients gave up after 30 s
and came back, and the work done for an abandoned login (and its presence
removal at the close) was lost. These run a real node and real WebSocket
clients; presence is the real RedisPresence over the in-memory fake. A login
is held where the test wants it by ``hold_logins`` (the password check waits
for an event), not in presence: the AUTH's presence wait has its own bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningNode, make_config, start_node  # type: ignore[import-not-found, unused-ignore]
from fake_redis import FakeRedis, fake_presence  # type: ignore[import-not-found, unused-ignore]

from tongxin.presence.redis_presence import dev_key
from tongxin.server.node import Node

AUTH_TIMEOUT = 0.8


@pytest.fixture
async def one_turn(tmp_path: Path) -> AsyncIterator[tuple[RunningNode, FakeRedis]]:
    """A node working on one AUTH at a time, with a short auth_timeout."""
    presence, fake = fake_presence()
    cfg = make_config(tmp_path / "node", server={"auth_concurrency": 1,
                                                 "auth_timeout": AUTH_TIMEOUT})
    running = await start_node(cfg, presence=presence)
    yield running, fake
    await running.stop()


def hold_logins(node: Node) -> tuple[asyncio.Event, asyncio.Event]:
    """Password logins wait for the returned ``release``; ``held`` is set once one waits."""
    release, held = asyncio.Event(), asyncio.Event()
    login = node.accounts.login

    async def held_login(*args: Any, **kwargs: Any) -> Any:
        held.set()
        await release.wait()
        return await login(*args, **kwargs)

    node.accounts.login = held_login  # type: ignore[method-assign]
    return release, held


def sample(node: Node, name: str) -> float:
    return node.metrics.registry.get_sample_value(name) or 0.0


async def until(check: object, what: str, limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def second_login_waiting(running: RunningNode, first_name: str, second_name: str,
                               ) -> tuple[Any, Any, asyncio.Task[Any], asyncio.Task[Any],
                                          asyncio.Event]:
    """Two users' clients; the first one's login holds the one turn, the second's waits
    for it. Returns both clients, both login tasks and the event that lets logins go on."""
    node = running.node
    for name in (first_name, second_name):
        await node.accounts.create_user(name, "password-1")
    first = await running.client(device_id=f"d_{first_name}")
    second = await running.client(device_id=f"d_{second_name}")
    release, held = hold_logins(node)
    one = asyncio.create_task(first.login(first_name, "password-1"))
    await asyncio.wait_for(held.wait(), 10)
    two = asyncio.create_task(second.login(second_name, "password-1"))
    await until(lambda: sample(node, "tongxin_auth_waiting") == 1,
                f"{second_name}'s AUTH did not queue")
    return first, second, one, two, release


async def test_a_second_auth_waits_for_the_first_and_outlives_auth_timeout(
        one_turn: tuple[RunningNode, FakeRedis]) -> None:
    running, _ = one_turn
    node = running.node
    _, _, ann, ben, release = await second_login_waiting(running, "ann", "ben")
    # Past auth_timeout, and several sweeps: neither connection is closed, since
    # each sent its AUTH in time and the node is the slow one.
    await asyncio.sleep(AUTH_TIMEOUT * 2)
    assert not ann.done() and not ben.done()
    assert all(not c.closing for c in node.hub.all) and len(node.hub.all) == 2
    assert node.metrics.registry.get_sample_value(
        "tongxin_errors_total", {"code": "auth_timeout"}) is None
    release.set()
    ok_ann, ok_ben = await asyncio.wait_for(asyncio.gather(ann, ben), 10)
    assert (ok_ann.device_id, ok_ben.device_id) == ("d_ann", "d_ben")
    assert sample(node, "tongxin_auth_waiting") == 0
    assert sample(node, "tongxin_authenticated_connections") == 2


async def test_an_auth_whose_client_left_while_it_waited_is_not_worked_on(
        one_turn: tuple[RunningNode, FakeRedis]) -> None:
    running, fake = one_turn
    node = running.node
    _, second, cat, dan, release = await second_login_waiting(running, "cat", "dan")
    dan.cancel()  # dan's client gives up and closes while its AUTH waits
    closing = asyncio.create_task(second.close())
    # The close frame is queued behind the waiting AUTH, unread by the handler.
    await until(lambda: any(c.ws.peer_closed() for c in node.hub.all),  # type: ignore[attr-defined]
                "dan's close frame did not arrive")
    release.set()
    await asyncio.wait_for(cat, 10)
    await asyncio.wait_for(closing, 10)  # and the server answered it
    await until(lambda: len(node.hub.all) == 1, "dan's connection did not end")
    assert sample(node, "tongxin_auth_abandoned_total") == 1
    dan_id = (await node.store.get_user_by_name("dan")).id  # type: ignore[union-attr]
    assert dev_key("tx", dan_id) not in fake.hashes  # never written to presence
    assert sample(node, "tongxin_authenticated_connections") == 1


async def test_a_connection_that_sends_no_auth_is_still_closed_in_time(
        one_turn: tuple[RunningNode, FakeRedis]) -> None:
    running, _ = one_turn
    node = running.node
    await running.client(device_id="d_idle")
    await until(lambda: not node.hub.all, "a connection without AUTH outlived auth_timeout",
                limit=AUTH_TIMEOUT + 5)
    assert node.metrics.registry.get_sample_value(
        "tongxin_errors_total", {"code": "auth_timeout"}) == 1

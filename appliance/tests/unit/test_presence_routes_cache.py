"""RedisPresence.devices_of caches the router's device look-ups while the routes
version stays the same (issue 18: 2 HGETALLs per message at the router), and never
leaves out a device whose login returned (it is then sent AUTH_OK, and must get
every message published after)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from fake_redis import FakePipeline, FakeRedis  # type: ignore[import-not-found, unused-ignore]

from tongxin.clock import now_ms
from tongxin.presence import redis_presence
from tongxin.presence.redis_presence import RedisPresence, nodes_key, routes_key
from tongxin.store.ports import Unavailable


class Trips:
    """One client's view of a shared FakeRedis that counts its round trips (a
    command, or a pipeline's execute) and can hold the ``hold``-th one: before it
    runs (``after=False``) or after it ran, before its answer is returned."""

    def __init__(self, fake: FakeRedis, hold: int = 0, after: bool = False) -> None:
        self.fake = fake
        self.hold = hold
        self.after = after
        self.trips = 0
        self.commands: Counter[str] = Counter()
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def _wait(self, when_after: bool) -> None:
        if self.trips == self.hold and self.after == when_after:
            self.held.set()
            await self.release.wait()

    async def trip(self, run: Any) -> Any:
        self.trips += 1
        await self._wait(False)
        out = await run()
        await self._wait(True)
        return out

    def pipeline(self) -> Pipe:
        return Pipe(self)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.fake, name)

        async def call(*args: Any) -> Any:
            self.commands[name] += 1
            return await self.trip(lambda: method(*args))
        return call


class Pipe:
    def __init__(self, trips: Trips) -> None:
        self.trips = trips
        self.inner = FakePipeline(trips.fake)

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any) -> Pipe:
            self.trips.commands[name] += 1
            self.inner.calls.append((name, args))
            return self
        return queue

    async def execute(self) -> list[Any]:
        out: list[Any] = await self.trips.trip(self.inner.execute)
        return out


def client(fake: FakeRedis, node_id: str, **hold: Any) -> tuple[RedisPresence, Trips]:
    presence = RedisPresence("127.0.0.1:1", "tx")  # no connection is made: .redis is replaced
    trips = Trips(fake, **hold)
    presence.redis = trips  # type: ignore[assignment]
    presence.node_id = node_id
    return presence, trips


def shared() -> FakeRedis:
    fake = FakeRedis()
    fake.zsets[nodes_key("tx")] = {"A": now_ms(), "B": now_ms()}
    return fake


async def test_repeated_look_ups_cost_one_get() -> None:
    fake = shared()
    login, _ = client(fake, "A")
    await login.device_online("alice", "phone", "A")
    await login.device_online("bob", "laptop", "B")
    router, trips = client(fake, "B")
    assert await router.devices_of(["alice", "bob"]) == {"alice": {"phone": "A"},
                                                         "bob": {"laptop": "B"}}
    trips.commands.clear()
    for _ in range(5):
        assert await router.devices_of(["bob", "alice"]) == {"alice": {"phone": "A"},
                                                             "bob": {"laptop": "B"}}
    assert trips.commands == Counter(get=5)


async def test_a_login_elsewhere_is_seen_at_the_next_look_up() -> None:
    fake = shared()
    login, _ = client(fake, "A")
    router, _ = client(fake, "B")
    await login.device_online("alice", "phone", "A")
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A"}}
    await login.device_online("alice", "tablet", "A")
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A", "tablet": "A"}}
    # A device that moves to another node is routed there at once.
    moving, _ = client(fake, "B")
    await moving.device_online("alice", "tablet", "B")
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A", "tablet": "B"}}


async def test_a_router_read_at_any_point_of_a_login_sees_the_device() -> None:
    """The login is held before each of its round trips in turn while the router
    looks the user up (and caches what it found); once the login has returned,
    the router must see the new device. Setting the version before writing the
    device fails here: the held look-up caches the old devices under the new version."""
    fake = shared()
    probe, probe_trips = client(fake, "A")
    await probe.device_online("someone", "phone", "A")
    login_trips = probe_trips.trips
    assert login_trips >= 2
    for hold in range(1, login_trips + 1):
        for after in (False, True):
            fake = shared()
            first, _ = client(fake, "A")
            await first.device_online("alice", "phone", "A")
            router, _ = client(fake, "B")
            assert await router.devices_of(["alice"]) == {"alice": {"phone": "A"}}
            login, trips = client(fake, "A", hold=hold, after=after)
            task = asyncio.create_task(login.device_online("alice", "tablet", "A"))
            await asyncio.wait_for(trips.held.wait(), 5)
            await router.devices_of(["alice"])  # may or may not see it yet: not promised
            trips.release.set()
            await task
            assert await router.devices_of(["alice"]) == {
                "alice": {"phone": "A", "tablet": "A"}}, (hold, after)


async def test_a_look_up_that_began_before_a_newer_version_does_not_fill_the_cache() -> None:
    """Look-up X read the old version and the devices, and answers only after a
    login changed both and look-up Y cached the new devices: X must not put its
    older answer into the cache Y filled."""
    fake = shared()
    login, _ = client(fake, "A")
    await login.device_online("alice", "phone", "A")
    # Trip 1 of X is the version GET, trip 2 the devices' pipeline: held after it ran.
    router, trips = client(fake, "B", hold=2, after=True)
    x = asyncio.create_task(router.devices_of(["alice"]))
    await asyncio.wait_for(trips.held.wait(), 5)
    await login.device_online("alice", "tablet", "A")
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A", "tablet": "A"}}
    trips.release.set()
    assert await x == {"alice": {"phone": "A"}}  # began before the login returned
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A", "tablet": "A"}}


async def test_a_device_that_left_is_dropped_at_the_next_look_up() -> None:
    fake = shared()
    login, _ = client(fake, "A")
    router, _ = client(fake, "B")
    await login.device_online("alice", "phone", "A")
    await login.device_online("alice", "tablet", "A")
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A", "tablet": "A"}}
    await login.device_offline("alice", "tablet", "A")
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A"}}


async def test_no_version_in_redis_caches_nothing() -> None:
    """A Redis that lost every key (restarted without its data) and a new device
    written by a login whose version write has not landed yet: read each time."""
    fake = shared()
    router, _ = client(fake, "B")
    fake.hashes["tx:{alice}:dev"] = {"phone": "A"}
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A"}}
    fake.hashes["tx:{alice}:dev"]["tablet"] = "A"
    assert routes_key("tx") not in fake.strings
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A", "tablet": "A"}}


async def test_the_cache_is_dropped_after_its_age_even_at_the_same_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The backstop for a version write lost in a failover (the version goes back)."""
    monkeypatch.setattr(redis_presence, "ROUTES_CACHE_SECONDS", 0.0)
    fake = shared()
    login, _ = client(fake, "A")
    router, _ = client(fake, "B")
    await login.device_online("alice", "phone", "A")
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A"}}
    fake.hashes["tx:{alice}:dev"]["tablet"] = "A"  # its version write lost
    assert await router.devices_of(["alice"]) == {"alice": {"phone": "A", "tablet": "A"}}


async def test_a_failed_version_write_fails_the_login() -> None:
    """Without the new version the router could keep routing by a cache that
    lacks the device: the login must not be answered AUTH_OK."""
    fake = shared()
    login, _ = client(fake, "A")

    original = fake.set

    async def refuse_version(key: str, value: Any) -> None:
        if key == routes_key("tx"):
            raise ConnectionError("Redis went away")
        await original(key, value)

    fake.set = refuse_version  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await login.device_online("alice", "phone", "A")
    assert fake.hashes["tx:{alice}:dev"] == {"phone": "A"}  # the device was written first


async def test_status_while_redis_fails_is_unavailable_not_an_internal_error() -> None:
    """PRESENCE_SUB reads status(): a primary failing over must give the client a
    clear, retryable UNAVAILABLE (a full run once answered INTERNAL here)."""
    fake = shared()
    presence, _ = client(fake, "A")
    await presence.device_online("alice", "phone", "A")
    assert [e.online for e in await presence.status(["alice"])] == [True]

    class Down:
        def pipeline(self) -> Any:
            raise ConnectionError("Connection refused")

    presence.redis = Down()  # type: ignore[assignment]
    with pytest.raises(Unavailable, match="Redis did not answer"):
        await presence.status(["alice"])

"""RedisPresence reads the live-node set once for a burst of logins, and never takes a
node's absence from that cached set (issue 18: every AUTH read it, and the client
pool ran out)."""

from __future__ import annotations

import pytest
from fake_redis import FakeRedis, fake_presence  # type: ignore[import-not-found, unused-ignore]

from tongxin.clock import now_ms
from tongxin.presence import redis_presence
from tongxin.presence.redis_presence import RedisPresence, dev_key, nodes_key


async def started(node_id: str = "n1") -> tuple[RedisPresence, FakeRedis]:
    presence, fake = fake_presence()
    await presence.start(node_id)
    return presence, fake


async def test_a_login_burst_reads_the_live_nodes_once() -> None:
    presence, fake = await started()
    try:
        fake.zsets[nodes_key("tx")]["n2"] = now_ms()
        for i in range(50):
            # Every user also has a device on the other node: each login must judge it.
            fake.hashes[dev_key("tx", f"u{i}")] = {"phone": "n2"}
            assert not await presence.device_online(f"u{i}", "laptop", "n1")  # online before
        assert fake.live_reads == 1
        # A user alone (the usual case) needs no live set at all.
        assert await presence.device_online("u_alone", "laptop", "n1")
        assert fake.live_reads == 1
    finally:
        await presence.close()


async def test_a_node_missing_from_the_cached_set_is_read_again() -> None:
    """n3 starts after the set was cached: its devices are neither swept as a dead
    node's nor taken for offline."""
    presence, fake = await started()
    try:
        nodes = fake.zsets[nodes_key("tx")]
        nodes["n2"] = now_ms()
        fake.hashes[dev_key("tx", "u1")] = {"phone": "n2"}
        assert not await presence.device_online("u1", "laptop", "n1")
        assert fake.live_reads == 1
        nodes["n3"] = now_ms()  # a node that started a moment later
        fake.hashes[dev_key("tx", "u2")] = {"tablet": "n3"}
        assert await presence.nodes_of(["u2"]) == {"n3": ["u2"]}
        assert fake.hashes[dev_key("tx", "u2")] == {"tablet": "n3"}  # not swept
        assert fake.live_reads == 2
        fake.hashes[dev_key("tx", "u2")]["laptop"] = "n1"
        assert not await presence.device_offline("u2", "laptop", "n1")  # the tablet is on n3
    finally:
        await presence.close()


async def test_dead_nodes_are_still_swept() -> None:
    presence, fake = await started()
    try:
        fake.zsets[nodes_key("tx")]["dead"] = now_ms() - 60_000  # no heartbeat for a minute
        fake.hashes[dev_key("tx", "u1")] = {"phone": "dead", "laptop": "n1"}
        assert await presence.nodes_of(["u1"]) == {"n1": ["u1"]}
        assert fake.hashes[dev_key("tx", "u1")] == {"laptop": "n1"}
    finally:
        await presence.close()


async def test_the_cache_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_presence, "LIVE_CACHE_SECONDS", 0.0)
    presence, fake = await started()
    try:
        fake.zsets[nodes_key("tx")]["n2"] = now_ms()
        for i in range(3):
            fake.hashes[dev_key("tx", f"u{i}")] = {"phone": "n2"}
            await presence.device_online(f"u{i}", "laptop", "n1")
        assert fake.live_reads == 3
    finally:
        await presence.close()

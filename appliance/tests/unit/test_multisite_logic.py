"""Multi-site pure logic: the two configuration keys, the router's topic
pattern, merging presence across sites, and the remote-site breaker."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tongxin.config import ConfigError, KafkaConfig, PresenceConfig, load_config
from tongxin.delivery.kafka_bus import KafkaBus
from tongxin.presence.memory import MemoryPresence
from tongxin.presence.multisite import RemotePresence, SitesPresence, merge
from tongxin.presence.ports import PresenceEntry
from tongxin.redisutil import Breaker


def test_mirrored_topics_follow_mirrormaker_default_policy() -> None:
    cfg = KafkaConfig(deliveries_topic="tongxin.deliveries", mirrored_from=" dc2, dr ,dc2,")
    assert cfg.mirrored_topics() == ["dc2.tongxin.deliveries", "dr.tongxin.deliveries"]
    assert KafkaConfig().mirrored_topics() == []


def test_remote_sites_split_on_semicolons() -> None:
    cfg = PresenceConfig(remote_redis_nodes="10.2.0.1:7000,10.2.0.2:7000; ;10.3.0.1:7000")
    assert cfg.remote_sites() == ["10.2.0.1:7000,10.2.0.2:7000", "10.3.0.1:7000"]
    assert PresenceConfig().remote_sites() == []


@pytest.mark.parametrize(("section", "value", "needle"), [
    ("kafka", {"mirrored_from": "dc1,dc.2"}, "kafka.mirrored_from: 'dc.2'"),
    ("presence", {"remote_redis_nodes": "10.0.0.1:7000;10.0.0.2"},
     "presence.remote_redis_nodes: expected HOST:PORT, got '10.0.0.2'"),
    ("presence", {"remote_redis_nodes": "h:0"}, "expected HOST:PORT"),
])
def test_bad_multisite_values_name_the_key(tmp_path: Path, section: str,
                                           value: dict[str, str], needle: str) -> None:
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({section: value}), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)


def _bus(mirrored_from: str) -> KafkaBus:
    async def members(_: str) -> frozenset[str]:
        return frozenset()

    async def devices(_: list[str]) -> dict[str, dict[str, str]]:
        return {}

    async def live() -> list[str]:
        return []

    cfg = KafkaConfig(deliveries_topic="tongxin.deliveries", mirrored_from=mirrored_from)
    return KafkaBus(cfg, "n1", members, lambda _: None, devices, live, CollectorRegistry())


def test_router_pattern_reads_own_and_mirrored_deliveries_only() -> None:
    pattern = re.compile(_bus("dc1,dr").router_pattern())
    for topic in ("tongxin.deliveries", "dc1.tongxin.deliveries", "dr.tongxin.deliveries"):
        assert pattern.match(topic), topic
    for topic in ("tongxinXdeliveries", "dc3.tongxin.deliveries", "dc1.tongxin.deliveries.x",
                  "tongxin.node.n1", "dc1.tongxin.node.n1", "x.dc1.tongxin.deliveries",
                  "dc1.heartbeats", "mm2-offset-syncs.dc1.internal"):
        assert not pattern.match(topic), topic
    assert _bus("dc1,dr").mirrored == {"dc1.tongxin.deliveries": "dc1",
                                       "dr.tongxin.deliveries": "dr"}
    alone = re.compile(_bus("").router_pattern())
    assert alone.match("tongxin.deliveries") and not alone.match("dc1.tongxin.deliveries")


def test_merge_counts_every_site_and_keeps_latest_last_seen() -> None:
    local = [PresenceEntry("a", False, 0, 100), PresenceEntry("b", True, 1, 50),
             PresenceEntry("c", False, 0, 0)]
    dc2 = {"a": PresenceEntry("a", True, 2, 300), "b": PresenceEntry("b", False, 0, 70)}
    got = merge(local, [dc2, None])  # None: a site that cannot say now
    assert got == [PresenceEntry("a", True, 2, 300), PresenceEntry("b", True, 1, 70),
                   PresenceEntry("c", False, 0, 0)]


class FakeSite(RemotePresence):
    """Another site's answers without Redis: only the decision logic is under test."""

    def __init__(self, online: set[str] | None) -> None:
        self.online = online  # None: the site does not answer

    async def status(self, user_ids: Sequence[str]) -> dict[str, PresenceEntry] | None:
        if self.online is None:
            return None
        return {u: PresenceEntry(u, u in self.online, int(u in self.online), 1)
                for u in user_ids}


async def test_user_connected_at_another_site_does_not_go_offline_or_online_twice() -> None:
    dc2 = FakeSite({"alice"})
    p = SitesPresence(MemoryPresence(), [dc2])
    await p.start("dc1-n1")
    # Alice is on at dc2: her first dc1 device is no "went online", and
    # closing it is no "went offline".
    assert not await p.device_online("alice", "pc", "dc1-n1")
    assert not await p.device_offline("alice", "pc", "dc1-n1")
    # Bob is nowhere else.
    assert await p.device_online("bob", "pc", "dc1-n1")
    assert await p.device_offline("bob", "pc", "dc1-n1")
    # A site that does not answer counts as having no devices (its devices vanish).
    dc2.online = None
    assert await p.device_online("alice", "pc", "dc1-n1")
    [alice] = await p.status(["alice"])
    assert (alice.online, alice.devices) == (True, 1)
    # Routing stays local whatever the other site holds.
    dc2.online = {"carol"}
    assert await p.nodes_of(["alice", "carol"]) == {"dc1-n1": ["alice"]}
    assert await p.live_nodes() == ["dc1-n1"]


def test_breaker_with_infinite_pause_stays_open_until_ok() -> None:
    now = [0.0]
    fallbacks: list[int] = []
    b = Breaker("x", logging.getLogger("test"), float("inf"), lambda: fallbacks.append(1),
                clock=lambda: now[0])
    assert b.closed()
    b.failed(OSError("down"))
    now[0] += 1e9
    assert not b.closed() and b.down
    b.ok()  # what the probe does when the site answers again
    assert b.closed() and not b.down
    assert len(fallbacks) == 2  # the failed call and the skipped one

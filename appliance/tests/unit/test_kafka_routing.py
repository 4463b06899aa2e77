"""The Kafka router's choice of node topics (issue 18): a node gets a routed copy only
when one of its devices is pushed to, so the sender's node gets none when the
sending device is the sender's only device there. Run against both presence
registries the router can be given (in-memory, and Redis on a fake), which keep
the same ``devices_of`` contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fake_redis import fake_presence  # type: ignore[import-not-found, unused-ignore]
from prometheus_client import CollectorRegistry

from tongxin.clock import now_ms
from tongxin.config import KafkaConfig
from tongxin.delivery.kafka_bus import KafkaBus, from_record, node_topic
from tongxin.delivery.ports import Delivery
from tongxin.presence.memory import MemoryPresence
from tongxin.presence.ports import PresenceRegistry
from tongxin.presence.redis_presence import nodes_key

CFG = KafkaConfig(deliveries_topic="tx.deliveries", topic_prefix="tx")


class FakeProducer:
    """Records what the router sends; every ack is already there."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Delivery]] = []

    async def send(self, topic: str, value: bytes) -> asyncio.Future[object]:
        self.sent.append((topic, from_record(value)))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def to(self, node: str) -> list[Delivery]:
        return [d for t, d in self.sent if t == node_topic("tx", node)]


def memory() -> PresenceRegistry:
    return MemoryPresence()


def redis() -> PresenceRegistry:
    presence, fake = fake_presence()
    now = now_ms()
    # Both nodes heartbeat: the router only routes to live ones.
    fake.zsets[nodes_key("tx")] = {"A": now, "B": now}
    return presence


@pytest.fixture(params=[memory, redis], ids=["memory", "redis"])
async def presence(request: pytest.FixtureRequest) -> AsyncIterator[PresenceRegistry]:
    factory: Callable[[], PresenceRegistry] = request.param
    p = factory()
    await p.start("A")
    try:
        yield p
    finally:
        await p.close()


def router(presence: PresenceRegistry, members: frozenset[str] = frozenset(),
           live: tuple[str, ...] = ("A", "B")) -> tuple[KafkaBus, FakeProducer]:
    async def members_of(_conv: str) -> frozenset[str]:
        return members

    async def live_nodes() -> list[str]:
        return list(live)

    bus = KafkaBus(CFG, "A", members_of, lambda _c: None, presence.devices_of, live_nodes,
                   CollectorRegistry())
    producer = FakeProducer()
    bus._producer = producer
    return bus, producer


def chat(**kw: Any) -> Delivery:
    return Delivery(frame_type=1, payload=b"m", conversation_id="c1",
                    skip_user="alice", skip_device="phone", **kw)


async def test_no_copy_to_the_senders_node_for_the_sending_device_alone(
        presence: PresenceRegistry) -> None:
    await presence.device_online("alice", "phone", "A")
    await presence.device_online("bob", "laptop", "B")
    bus, producer = router(presence, members=frozenset({"alice", "bob"}))
    await bus._route_batch([chat()])
    assert [t for t, _ in producer.sent] == [node_topic("tx", "B")]
    assert producer.to("B")[0].user_ids == ("bob",)
    assert producer.to("B")[0].routed


async def test_the_senders_other_device_on_its_node_gets_a_copy(
        presence: PresenceRegistry) -> None:
    await presence.device_online("alice", "phone", "A")
    await presence.device_online("alice", "tablet", "A")
    await presence.device_online("bob", "laptop", "B")
    bus, producer = router(presence, members=frozenset({"alice", "bob"}))
    await bus._route_batch([chat()])
    [to_a] = producer.to("A")
    # The hub of A skips the phone itself (skip_device travels with the copy).
    assert to_a.user_ids == ("alice",)
    assert (to_a.skip_user, to_a.skip_device) == ("alice", "phone")
    assert [d.user_ids for d in producer.to("B")] == [("bob",)]


async def test_a_user_with_two_devices_on_a_node_is_listed_once(
        presence: PresenceRegistry) -> None:
    await presence.device_online("bob", "laptop", "B")
    await presence.device_online("bob", "phone", "B")
    bus, producer = router(presence, members=frozenset({"alice", "bob"}))
    await bus._route_batch([chat()])
    assert [d.user_ids for d in producer.to("B")] == [("bob",)]
    assert producer.to("A") == []


async def test_only_the_sending_device_skipped_not_the_same_device_id_of_another_user(
        presence: PresenceRegistry) -> None:
    await presence.device_online("alice", "phone", "A")
    await presence.device_online("carol", "phone", "A")
    bus, producer = router(presence, members=frozenset({"alice", "carol"}))
    await bus._route_batch([chat()])
    assert [d.user_ids for d in producer.to("A")] == [("carol",)]


async def test_member_changes_still_reach_every_live_node_without_devices(
        presence: PresenceRegistry) -> None:
    await presence.device_online("alice", "phone", "A")
    bus, producer = router(presence, members=frozenset({"alice"}))
    await bus._route_batch([chat(members_changed=True)])
    # B has no device of a member, but must drop its cached member list.
    assert sorted(t for t, _ in producer.sent) == [node_topic("tx", "A"), node_topic("tx", "B")]
    assert producer.to("A")[0].user_ids == ()
    assert producer.to("B")[0].members_changed


async def test_explicit_recipients_and_offline_users(presence: PresenceRegistry) -> None:
    await presence.device_online("bob", "laptop", "B")
    bus, producer = router(presence)
    await bus._route_batch([Delivery(frame_type=1, payload=b"x", user_ids=("bob", "dave"))])
    assert [d.user_ids for d in producer.to("B")] == [("bob",)]
    assert len(producer.sent) == 1


async def test_devices_of_names_every_user_asked(presence: PresenceRegistry) -> None:
    await presence.device_online("alice", "phone", "A")
    await presence.device_online("alice", "laptop", "B")
    assert await presence.devices_of(["alice", "nobody"]) == {
        "alice": {"phone": "A", "laptop": "B"}, "nobody": {}}
    await presence.device_offline("alice", "phone", "A")
    assert await presence.devices_of(["alice"]) == {"alice": {"laptop": "B"}}

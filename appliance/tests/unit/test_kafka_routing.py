"""The Kafka router's choice of node topics (issue 18): a node gets a routed copy only
when one of its devices is pushed to, so the sender's node gets none when the
sending device is the sender's only device there; a batch's presence changes
reach each node in one record, which its hub pushes change by change. Run against both presence
registries the router can be given (in-memory, and Redis on a fake), which keep
the same ``devices_of`` contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fake_redis import fake_presence  # type: ignore[import-not-found, unused-ignore]
from prometheus_client import CollectorRegistry

from tongxin.chat.members import MemberCache
from tongxin.clock import now_ms
from tongxin.config import KafkaConfig
from tongxin.delivery.kafka_bus import KafkaBus, from_record, node_topic, to_record
from tongxin.delivery.ports import Delivery
from tongxin.metrics import Metrics
from tongxin.presence.memory import MemoryPresence
from tongxin.presence.ports import PresenceRegistry
from tongxin.presence.redis_presence import nodes_key
from tongxin.proto import tongxin_pb2 as pb
from tongxin.server.hub import Hub
from tongxin.wire.codec import Encoder, WireLimits
from tongxin.wire.frame import decode_frame

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


def presence_change(user: str, online: bool) -> Delivery:
    update = pb.PresenceUpdate()
    update.entries.add(user_id=user, status=pb.ONLINE if online else pb.OFFLINE)
    return Delivery(frame_type=pb.PRESENCE, payload=update.SerializeToString(),
                    watchers_of=user)


async def test_a_batchs_presence_changes_reach_each_node_in_one_record_in_order(
        presence: PresenceRegistry) -> None:
    await presence.device_online("bob", "laptop", "B")
    bus, producer = router(presence, members=frozenset({"alice", "bob"}))
    changes = [presence_change("alice", True), presence_change("carol", True),
               presence_change("alice", False)]
    await bus._route_batch([changes[0], chat(), changes[1], changes[2]])
    for node in ("A", "B"):
        *_, bundle = producer.to(node)
        assert bundle.presence_bundle == tuple((c.watchers_of, c.payload) for c in changes)
        # What a node that predates bundles reads: routed to nobody, so it pushes
        # none of it (never alice's presence to carol's watchers).
        assert (bundle.watchers_of, bundle.user_ids, bundle.routed) == ("", (), True)
    # One record per node for the three changes, after the chat's copy to B.
    assert [d.user_ids for d in producer.to("B")] == [("bob",), ()]
    assert len(producer.to("A")) == 1


async def test_a_batch_without_presence_changes_sends_no_bundle(
        presence: PresenceRegistry) -> None:
    await presence.device_online("bob", "laptop", "B")
    bus, producer = router(presence, members=frozenset({"alice", "bob"}))
    await bus._route_batch([chat(), chat()])
    assert all(not d.presence_bundle for _, d in producer.sent)
    assert len(producer.sent) == 2


class Watcher:
    """A connection as the hub sees it: what was pushed to it."""

    def __init__(self) -> None:
        self.watching: tuple[str, ...] = ()
        self.pushed: list[tuple[int, bytes]] = []

    def push(self, frames: list[bytes], ftype: int) -> None:
        for data in frames:
            frame = decode_frame(data, 1 << 20)
            self.pushed.append((frame.type, frame.payload))


async def test_the_hub_pushes_each_bundled_change_to_its_users_watchers_alone() -> None:
    hub = Hub(Encoder(WireLimits()), MemberCache(None), Metrics())  # type: ignore[arg-type]
    of_alice, of_carol, of_both = Watcher(), Watcher(), Watcher()
    hub.watch(of_alice, ("alice",))  # type: ignore[arg-type]
    hub.watch(of_carol, ("carol",))  # type: ignore[arg-type]
    hub.watch(of_both, ("alice", "carol"))  # type: ignore[arg-type]
    changes = [presence_change("alice", True), presence_change("carol", True),
               presence_change("dave", True), presence_change("alice", False)]
    record = to_record(Delivery(frame_type=pb.PRESENCE, payload=b"", routed=True,
                                presence_bundle=tuple((c.watchers_of, c.payload)
                                                      for c in changes)), "A")
    await hub.dispatch(from_record(record))

    def statuses(w: Watcher) -> list[tuple[str, int]]:
        out = []
        for ftype, payload in w.pushed:
            assert ftype == pb.PRESENCE
            [entry] = pb.PresenceUpdate.FromString(payload).entries
            out.append((entry.user_id, entry.status))
        return out

    assert statuses(of_alice) == [("alice", pb.ONLINE), ("alice", pb.OFFLINE)]
    assert statuses(of_carol) == [("carol", pb.ONLINE)]
    assert statuses(of_both) == [("alice", pb.ONLINE), ("carol", pb.ONLINE), ("alice", pb.OFFLINE)]

"""Delivery through Kafka (seed §3.1), for many nodes.

Two stages:

1. ``publish`` writes the delivery to the deliveries topic, keyed by
   conversation so one conversation's entries stay in one partition, in
   order. The producer is idempotent with acks=all, and ``publish`` returns
   only once the broker has the record: the chat layer ACKs a message only
   after it is both stored and published, so a broker outage shows up as a
   clear UNAVAILABLE to the sender (who re-sends the same client_msg_id)
   instead of a stored-but-never-pushed message. The topic keeps 7 days.
2. A consumer group shared by all nodes (balanced: each partition is read
   by exactly one node) resolves recipients (members from the store) and
   their devices (from the presence registry) and writes one routed record
   per node that holds a device to push to, to that node's own topic. Each node reads its own topic and pushes
   to its local devices. Offsets are committed only after routing, so a
   node that dies mid-batch leaves the batch to the next owner of the
   partition (at-least-once; clients drop seqs they already hold).

Across sites (``kafka.mirrored_from``): each site has its own Kafka cluster,
and MirrorMaker 2 copies the other sites' deliveries topics into this one as
``<alias>.<deliveries_topic>``. The routers read those beside their own topic
and route them like local deliveries, to this site's nodes: presence, and so
routing, is per site. MirrorMaker 2 creates a mirrored topic when it first
copies it, which may be long after this node started; the routers subscribe
by a pattern, so the group picks the topic up at the next metadata refresh
(``MIRROR_DISCOVERY_MS``) without a restart. A pattern subscription asks the
broker for every topic instead of naming them, so it never makes a broker
with ``auto.create.topics.enable`` create a mirrored topic with its own
defaults before MirrorMaker 2 creates it with the source's settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import CollectorRegistry, Gauge, Histogram

from tongxin.clock import now_ms
from tongxin.config import KafkaConfig
from tongxin.delivery.kafka_client import client_kwargs, diagnose
from tongxin.delivery.ports import BusStartTimeout, Delivery, Handler
from tongxin.proto import internal_pb2 as ipb
from tongxin.store.ports import Unavailable

log = logging.getLogger("tongxin.kafka")

MembersOf = Callable[[str], Awaitable[frozenset[str]]]
Invalidate = Callable[[str], None]
DevicesOf = Callable[[list[str]], Awaitable[dict[str, dict[str, str]]]]
LiveNodes = Callable[[], Awaitable[list[str]]]

DAY_MS = 86_400_000

#: How often routers look for mirrored topics MirrorMaker 2 has created since
#: (one metadata request per node): the longest a new site's deliveries wait.
MIRROR_DISCOVERY_MS = 10_000


def to_record(d: Delivery, origin: str) -> bytes:
    rec = ipb.DeliveryRecord(
        frame_type=d.frame_type, payload=d.payload, conversation_id=d.conversation_id,
        user_ids=list(d.user_ids), skip_user=d.skip_user, skip_device=d.skip_device,
        members_changed=d.members_changed, watchers_of=d.watchers_of, routed=d.routed,
        origin_node=origin, published_at_ms=now_ms(),
        presence_of=[u for u, _ in d.presence_bundle],
        presence_payloads=[p for _, p in d.presence_bundle])
    data: bytes = rec.SerializeToString()
    return data


def decode_record(data: bytes) -> tuple[Delivery, int]:
    """The delivery and when its origin node published it (epoch ms)."""
    rec = ipb.DeliveryRecord.FromString(data)
    return Delivery(frame_type=rec.frame_type, payload=rec.payload,
                    conversation_id=rec.conversation_id, user_ids=tuple(rec.user_ids),
                    skip_user=rec.skip_user, skip_device=rec.skip_device,
                    members_changed=rec.members_changed, watchers_of=rec.watchers_of,
                    routed=rec.routed,
                    presence_bundle=tuple(zip(rec.presence_of, rec.presence_payloads,
                                              strict=False))), rec.published_at_ms


def from_record(data: bytes) -> Delivery:
    return decode_record(data)[0]


def node_topic(prefix: str, node_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in node_id)
    return f"{prefix}.node.{safe}"


class KafkaBus:
    republish_duplicates = True

    def __init__(self, cfg: KafkaConfig, node_id: str, members_of: MembersOf,
                 invalidate: Invalidate, devices_of: DevicesOf, live_nodes: LiveNodes,
                 registry: CollectorRegistry) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.members_of = members_of
        self.invalidate = invalidate
        self.devices_of = devices_of
        self.live_nodes = live_nodes
        self.topic = cfg.deliveries_topic
        # Mirrored topic -> the site alias it comes from (metric label).
        self.mirrored = {t: t[:-len(self.topic) - 1] for t in cfg.mirrored_topics()}
        self.my_topic = node_topic(cfg.topic_prefix, node_id)
        self._handler: Handler | None = None
        self._producer: AIOKafkaProducer | None = None
        self._router: AIOKafkaConsumer | None = None
        self._inbox: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._security: dict[str, Any] = {}  # client_kwargs(cfg), set by start()
        self._in_flight = 0
        self.lag = Gauge("tongxin_kafka_consumer_lag", "Records behind the partition end",
                         ["topic", "partition"], registry=registry)
        self.in_flight = Gauge("tongxin_kafka_in_flight", "Deliveries awaiting broker acks",
                               registry=registry)
        # Publish (at the origin node, by its clock) to routing here; for a
        # mirrored site this includes MirrorMaker 2's copy.
        self.route_delay = Histogram(
            "tongxin_kafka_route_delay_seconds", "Seconds from publish to routing, by the site "
            "that published (local, or a mirrored site's alias)", ["site"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))

    def router_pattern(self) -> str:
        """The router's subscription: this site's deliveries topic and the mirrored ones."""
        names = "|".join(re.escape(t) for t in [self.topic, *self.mirrored])
        return f"^(?:{names})$"

    async def _ensure_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.cfg.bootstrap_servers,
                                    **self._security)
        await admin.start()
        try:
            topics = [
                NewTopic(self.topic, self.cfg.partitions, self.cfg.replication_factor,
                         topic_configs={"retention.ms": str(int(self.cfg.retention_days * DAY_MS)),
                                        "min.insync.replicas": str(self.cfg.min_insync_replicas)}),
                NewTopic(self.my_topic, 1, self.cfg.replication_factor,
                         topic_configs={"retention.ms": str(int(self.cfg.node_topic_retention * 1000))}),
            ]
            for t in topics:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([t])
        finally:
            await admin.close()

    async def start(self, handler: Handler) -> None:
        # Every client below takes kafka.security_protocol's settings from here
        # (nothing for PLAINTEXT); no SASL password in the environment fails now.
        self._security = client_kwargs(self.cfg)
        # Bounded: aiokafka retries some start-up requests (the idempotent
        # producer's id, the inbox's end offset) for as long as a broker that
        # answered the bootstrap is away. A node hung there never listens and
        # is never restarted; one that exits is (systemd's Restart=on-failure),
        # and its next start finds the broker back.
        deadline = asyncio.timeout(self.cfg.start_timeout)
        try:
            async with deadline:
                await self._start(handler)
        except (KafkaError, OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                await self.close()
                raise BusStartTimeout(
                    f"Kafka ({self.cfg.bootstrap_servers}) did not let the node start within "
                    f"kafka.start_timeout ({self.cfg.start_timeout:g} s: its topics, the "
                    "producer, the consumers); exiting, to be started again") from None
            # A refused password or an unverified certificate is this node's
            # configuration (one line, exit 2), not an outage: aiokafka only
            # says it could not bootstrap, so ask the brokers once more.
            refused = await diagnose(self.cfg)
            if refused is not None:
                raise refused from None
            raise

    async def _start(self, handler: Handler) -> None:
        self._handler = handler
        await self._ensure_topics()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.cfg.bootstrap_servers, enable_idempotence=True, acks="all",
            linger_ms=self.cfg.linger_ms, request_timeout_ms=int(self.cfg.send_timeout * 1000),
            client_id=f"tongxin-{self.node_id}", **self._security)
        await self._producer.start()
        # "earliest": a mirrored topic first seen by the group holds what
        # MirrorMaker 2 copied before the next metadata refresh noticed it.
        discovery = {"metadata_max_age_ms": MIRROR_DISCOVERY_MS} if self.mirrored else {}
        self._router = AIOKafkaConsumer(
            bootstrap_servers=self.cfg.bootstrap_servers,
            group_id=self.cfg.router_group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000,
            client_id=f"tongxin-router-{self.node_id}", **discovery, **self._security)
        await self._router.start()
        self._router.subscribe(pattern=self.router_pattern())
        # A node's own topic is read from its end: what was routed to an
        # earlier process of this node is for connections that no longer exist.
        self._inbox = AIOKafkaConsumer(bootstrap_servers=self.cfg.bootstrap_servers,
                                       enable_auto_commit=False,
                                       client_id=f"tongxin-inbox-{self.node_id}",
                                       **self._security)
        await self._inbox.start()
        tp = TopicPartition(self.my_topic, 0)
        self._inbox.assign([tp])
        await self._inbox.seek_to_end(tp)
        self._tasks = [asyncio.create_task(self._route_loop()),
                       asyncio.create_task(self._inbox_loop()),
                       asyncio.create_task(self._lag_loop())]

    async def publish(self, delivery: Delivery) -> None:
        assert self._producer is not None
        if self._in_flight >= self.cfg.max_in_flight:
            # Bounded memory: refuse rather than queue without limit.
            raise Unavailable("delivery queue is full (Kafka is slow or down)")
        key = (delivery.conversation_id or delivery.watchers_of or delivery.skip_user).encode()
        self._in_flight += 1
        self.in_flight.inc()
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(self.topic, to_record(delivery, self.node_id), key=key),
                self.cfg.send_timeout)
        except (KafkaError, TimeoutError) as exc:
            raise Unavailable(f"delivery broker unavailable: {exc!r}") from exc
        finally:
            self._in_flight -= 1
            self.in_flight.dec()

    async def _route_batch(self, deliveries: list[Delivery]) -> None:
        """Route a batch of deliveries to the nodes holding their recipients' devices.

        Two things keep one router fast under load. The presence look-ups are
        made once per batch (where each recipient's devices are connected;
        the live nodes only when a delivery goes to every node) rather than
        per delivery. And every routed record is queued back to back and
        their broker acks are awaited together: waiting for each ack before
        routing the next delivery would cap a router at one broker round trip
        (plus linger) per message. Queued in order, the idempotent producer
        keeps their order per node topic. The caller commits the offsets only
        after every ack, so a failure routes the batch again.

        A node gets a copy only if one of its devices is pushed to: the
        sending device (skip_user, skip_device) is not, so the sender's node
        gets nothing when the sender has no other device there (in a chat
        between two nodes, one record of three). The node's hub skips the same
        device by the same test, so leaving out the copy pushes to nobody less.

        Presence changes go to every live node (their watchers are not in
        Redis), so the batch's changes travel together: one record per node
        after the batch's other records, their order kept. A mass login or
        close of N users then costs each node a record per batch instead of
        N. Nothing orders a presence change against a message.
        """
        assert self._producer is not None
        recipients: list[list[str]] = []
        everywhere = False
        for d in deliveries:
            if d.members_changed and d.conversation_id:
                # In order: later deliveries of this batch read the new members.
                self.invalidate(d.conversation_id)
            if d.watchers_of or d.members_changed:
                everywhere = True
            if d.watchers_of:
                recipients.append([])
            else:
                recipients.append(list(d.user_ids) if d.user_ids
                                  else sorted(await self.members_of(d.conversation_id)))
        # Read now, not cached: a node that started a moment ago may already
        # hold a member list that a membership change must drop.
        live = await self.live_nodes() if everywhere else []
        wanted = sorted({u for users in recipients for u in users})
        devices = await self.devices_of(wanted) if wanted else {}
        acks: list[asyncio.Future[object]] = []
        presence: dict[int, list[tuple[str, bytes]]] = {}  # frame type: bundle
        for d, users in zip(deliveries, recipients, strict=True):
            if d.watchers_of:
                presence.setdefault(d.frame_type, []).append((d.watchers_of, d.payload))
                continue
            targets: dict[str, list[str]] = {}
            if d.members_changed:
                # Every node drops its cached member list.
                targets = {n: [] for n in live}
            for u in users:
                for device, node in devices.get(u, {}).items():
                    if u == d.skip_user and device == d.skip_device:
                        continue
                    on_node = targets.setdefault(node, [])
                    if not on_node or on_node[-1] != u:  # once, however many devices there
                        on_node.append(u)
            for node, node_users in targets.items():
                routed = Delivery(frame_type=d.frame_type, payload=d.payload,
                                  conversation_id=d.conversation_id, user_ids=tuple(node_users),
                                  skip_user=d.skip_user, skip_device=d.skip_device,
                                  members_changed=d.members_changed, watchers_of=d.watchers_of,
                                  routed=True)
                acks.append(await self._producer.send(
                    node_topic(self.cfg.topic_prefix, node), to_record(routed, self.node_id)))
        for frame_type, bundle in presence.items():
            record = to_record(Delivery(frame_type=frame_type, payload=b"", routed=True,
                                        presence_bundle=tuple(bundle)), self.node_id)
            for node in live:
                acks.append(await self._producer.send(
                    node_topic(self.cfg.topic_prefix, node), record))
        if acks:
            await asyncio.gather(*acks)

    async def _route_loop(self) -> None:
        assert self._router is not None
        while True:
            try:
                batch = await self._router.getmany(timeout_ms=500, max_records=500)
                deliveries = self._decode_batch(batch)
                if deliveries:
                    await self._route_batch(deliveries)
                    await self._router.commit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Uncommitted records are routed again after the pause.
                log.warning("delivery routing failed, retrying: %r", exc)
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    for tp in self._router.assignment():
                        committed = await self._router.committed(tp)
                        if committed is not None:
                            self._router.seek(tp, committed)

    def _decode_batch(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
                      ) -> list[Delivery]:
        now = now_ms()
        out: list[Delivery] = []
        for tp, records in batch.items():
            if not records:
                continue
            # One label look-up per partition, not per record.
            delay = self.route_delay.labels(self.mirrored.get(tp.topic, "local"))
            for rec in records:
                assert rec.value is not None
                d, published = decode_record(rec.value)
                out.append(d)
                if published:
                    delay.observe(max(0, now - published) / 1000)
        return out

    async def _inbox_loop(self) -> None:
        assert self._inbox is not None and self._handler is not None
        while True:
            try:
                batch = await self._inbox.getmany(timeout_ms=500, max_records=1000)
                for records in batch.values():
                    for rec in records:
                        await self._handler(from_record(rec.value))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("node inbox read failed, retrying: %r", exc)
                await asyncio.sleep(1.0)

    async def _lag_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            for consumer in (self._router, self._inbox):
                if consumer is None:
                    continue
                with contextlib.suppress(Exception):
                    for tp in consumer.assignment():
                        high = consumer.highwater(tp)
                        if high is None:
                            continue
                        pos = await consumer.position(tp)
                        self.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for client in (self._router, self._inbox):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()

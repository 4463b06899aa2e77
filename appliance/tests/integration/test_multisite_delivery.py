"""Deliveries across sites through MirrorMaker 2 (docs/architecture.md,
"Deliveries across sites").

Two sites as in production: dc1 runs on services.sh's Kafka and Redis Cluster,
dc2 on a second Kafka broker and a second Redis Cluster (tests/integration/
sites.py); both share one store, as dc1 and dc2 share one synchronous
database. A real MirrorMaker 2 copies dc1's deliveries topic into dc2's
cluster as ``dc1.<topic>``; dc2's node lists ``dc1`` in kafka.mirrored_from.
"""

from __future__ import annotations

import asyncio
import copy
import re
import statistics
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from engines import NodeProcess, isolated_backends, service_env, services, start_node_process
from sites import PASSWORD, MirrorMaker, Site2, login, next_chat, site2, start_mirrormaker

from tongxin.client import Client, pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """dc1 and dc2 nodes, each on its own site's engines; MirrorMaker 2 not yet running."""
    services("start", "redis", "kafka")
    env = service_env()
    tmp = tmp_path_factory.mktemp("multisite-delivery")
    dc2: Site2 = site2(tmp)
    dc1_cfg = isolated_backends(env)
    dc2_cfg = copy.deepcopy(dc1_cfg)
    # Same topic names and key prefix, other clusters: the production layout.
    dc2_cfg["kafka"].update(bootstrap_servers=dc2.kafka_bootstrap, mirrored_from="dc1")
    dc2_cfg["presence"].update(redis_nodes=dc2.redis_nodes)
    home = tmp / "shared"
    nodes: list[NodeProcess] = []
    state: dict[str, Any] = {"env": env, "dc2": dc2, "tmp": tmp, "mirror": None,
                             "topic": dc1_cfg["kafka"]["deliveries_topic"]}
    try:
        dc2.start("kafka", "redis")
        for name, cfg in (("dc1-n1", dc1_cfg), ("dc2-n1", dc2_cfg)):
            nodes.append(asyncio.run(start_node_process(name, home, cfg, tmp)))
        state["nodes"] = nodes
        yield state
    finally:
        mirror: MirrorMaker | None = state["mirror"]
        if mirror is not None:
            mirror.stop()
        for n in nodes:
            n.stop()
        dc2.destroy()
        asyncio.run(_delete_topics(env["TONGXIN_KAFKA_BOOTSTRAP"], state["topic"]))


async def _delete_topics(bootstrap: str, deliveries_topic: str) -> None:
    prefix = deliveries_topic.rpartition(".")[0]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix + ".")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


def ensure_mirror(sites: dict[str, Any]) -> MirrorMaker:
    if sites["mirror"] is None:
        sites["mirror"] = start_mirrormaker(
            sites["env"]["TONGXIN_KAFKA_HOME"], "dc1", sites["env"]["TONGXIN_KAFKA_BOOTSTRAP"],
            "dc2", sites["dc2"].kafka_bootstrap, re.escape(sites["topic"]), sites["tmp"] / "mm2")
    mirror: MirrorMaker = sites["mirror"]
    return mirror


async def topic_partitions(bootstrap: str, topic: str) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return None
        [desc] = await admin.describe_topics([topic])
        return len(desc["partitions"])
    finally:
        await admin.close()


async def metrics_text(node: NodeProcess) -> str:
    async with aiohttp.ClientSession() as http, http.get(node.metrics_url) as r:
        return await r.text()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed_round_trips(sender: Client, conv: str, reader: Client, n: int,
                            label: str) -> list[float]:
    """Milliseconds from SEND to the reader's DELIVER, one message at a time."""
    out = []
    for i in range(n):
        start = time.perf_counter()
        await sender.send_text(conv, f"{label} {i}")
        got = await next_chat(reader, wait=30)
        out.append((time.perf_counter() - start) * 1000)
        assert got.content.text == f"{label} {i}"
    return out


async def test_deliver_crosses_sites_through_a_mirrored_topic_created_after_start(
        sites: dict[str, Any]) -> None:
    dc1, dc2 = sites["nodes"]
    mirrored = f"dc1.{sites['topic']}"
    alice = await login(dc1.ws_url, "alice", "pc", register=True)
    carol = await login(dc1.ws_url, "carol", "pc", register=True)
    bob = await login(dc2.ws_url, "bob", "pc", register=True)
    try:
        to_bob = await alice.direct("bob")
        await alice.send_text(to_bob.conversation_id, "sent before the mirror ran")
        # dc2's router subscribes by pattern: it has not created the mirrored
        # topic (the broker would have, with its own defaults, for a named one).
        assert await topic_partitions(sites["dc2"].kafka_bootstrap, mirrored) is None

        mirror = ensure_mirror(sites)
        try:
            got = await next_chat(bob, wait=90)
        except TimeoutError:
            raise AssertionError("no DELIVER through the mirror; MirrorMaker 2 log:\n"
                                 + mirror.tail()) from None
        assert got.content.text == "sent before the mirror ran"
        # Created by MirrorMaker 2 with the source's partitions (4), not the
        # broker's default (3).
        assert await topic_partitions(sites["dc2"].kafka_bootstrap, mirrored) == 4

        # The added latency of the mirror: SEND at dc1 to DELIVER at dc2,
        # against SEND at dc1 to DELIVER at dc1.
        to_carol = await alice.direct("carol")
        across = await timed_round_trips(alice, to_bob.conversation_id, bob, 40, "across")
        local = await timed_round_trips(alice, to_carol.conversation_id, carol, 40, "local")
        report = (f"SEND->DELIVER ms, same site p50 {statistics.median(local):.1f} "
                  f"p95 {percentile(local, 0.95):.1f}; across sites via MirrorMaker 2 p50 "
                  f"{statistics.median(across):.1f} p95 {percentile(across, 0.95):.1f}")
        print(report)
        (sites["tmp"] / "mirror-latency.txt").write_text(report + "\n", encoding="utf-8")
        assert statistics.median(across) < 1000

        # dc2's metrics: routing delay labelled by the site that published,
        # and the consumer lag of the mirrored partitions.
        text = await metrics_text(dc2)
        count = re.search(r'tongxin_kafka_route_delay_seconds_count\{site="dc1"\} (\S+)', text)
        assert count is not None and float(count.group(1)) >= 41
        deadline = time.monotonic() + 15
        while f'tongxin_kafka_consumer_lag{{partition="0",topic="{mirrored}"}}' not in text:
            assert time.monotonic() < deadline, "no lag gauge for the mirrored topic"
            await asyncio.sleep(1)
            text = await metrics_text(dc2)
    finally:
        for c in (alice, carol, bob):
            await c.close()


async def test_presence_updates_and_member_changes_cross_sites(sites: dict[str, Any]) -> None:
    dc1, dc2 = sites["nodes"]
    ensure_mirror(sites)
    dave = await login(dc2.ws_url, "dave", "pc", register=True)
    frank = await login(dc2.ws_url, "frank", "pc", register=True)
    # Registered over HTTP: no connection, so no presence update yet.
    async with aiohttp.ClientSession() as http, http.post(
            dc1.http_url + "/api/v1/register",
            json={"username": "erin", "password": PASSWORD}) as r:
        assert r.status == 200, await r.text()
        erin_id = (await r.json())["user_id"]
    erin: Client | None = None
    try:
        # Watching erin from dc2; she comes online at dc1: dc1 publishes the
        # update, the mirror brings it, dc2's router sends it to every dc2 node.
        await dave.direct("erin")  # presence.visibility: shared
        first = await dave.subscribe_presence([erin_id])
        assert first.entries[0].status == pb.OFFLINE
        erin = await login(dc1.ws_url, "erin", "pc")
        ev = await dave.next_event(pb.PRESENCE, wait=60)
        assert (ev.message.entries[0].user_id, ev.message.entries[0].status) == (erin_id,
                                                                                 pb.ONLINE)

        # dc2's router caches the group's members while routing g1; erin then
        # adds frank at dc1. Only the mirrored members_changed record can make
        # dc2 read the new list before routing g2 (the cache has no expiry).
        group = await erin.create_group("two sites", ["dave"])
        await erin.send_text(group.conversation_id, "g1")
        assert (await next_chat(dave, wait=60)).content.text == "g1"
        await erin.change_members(group.conversation_id, pb.MemberChange.ADD, ["frank"])
        await erin.send_text(group.conversation_id, "g2")
        assert (await next_chat(frank, wait=60)).content.text == "g2"
        assert (await next_chat(dave, wait=60)).content.text == "g2"
    finally:
        for c in (dave, frank, erin):
            if c is not None:
                await c.close()


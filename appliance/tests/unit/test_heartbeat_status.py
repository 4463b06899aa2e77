"""What an active node's replication heartbeat carries for the console's node list
(tongxin.site.heartbeat): its address as others reach it, and one write per beat
with the status asked at that beat."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry

from tongxin import __version__
from tongxin.config import load_config
from tongxin.site.heartbeat import (
    STARTED_MS,
    HeartbeatStore,
    HeartbeatWriter,
    local_status,
    node_address,
)
from tongxin.store.ports import NodeBeat, NodeStatus


def test_node_address_names_the_host_for_a_wildcard_listener() -> None:
    cfg = load_config()
    cfg.server.listen = "10.1.0.5:8080"
    assert node_address(cfg) == "10.1.0.5:8080"
    for wildcard in ("0.0.0.0:8080", ":8080", "[::]:8080"):
        cfg.server.listen = wildcard
        assert node_address(cfg) == f"{socket.gethostname()}:8080"
    cfg.server.listen = "[fd00::5]:8443"
    assert node_address(cfg) == "[fd00::5]:8443"


class _Store:
    def __init__(self) -> None:
        self.writes: list[tuple[str, str, int, NodeStatus | None]] = []

    async def write_heartbeat(self, node_id: str, site: str, beat_ms: int,
                              status: NodeStatus | None = None) -> None:
        self.writes.append((node_id, site, beat_ms, status))

    async def newest_heartbeat(self) -> tuple[str, str, int] | None:
        return None

    async def node_beats(self, since_ms: int) -> list[NodeBeat]:
        return []


async def test_each_beat_is_one_write_with_the_status_of_that_moment() -> None:
    cfg = load_config()
    cfg.server.listen = "127.0.0.1:18080"
    store = _Store()
    assert isinstance(store, HeartbeatStore)
    connections = [3]
    writer = HeartbeatWriter(store, "n1", "dc1", 1.0, CollectorRegistry(),
                             lambda: local_status(node_address(cfg), connections[0]))
    await writer.beat()
    connections[0] = 5
    await writer.beat()
    assert [(w[0], w[1]) for w in store.writes] == [("n1", "dc1")] * 2
    assert [w[3] for w in store.writes] == [
        NodeStatus(__version__, "127.0.0.1:18080", n, STARTED_MS) for n in (3, 5)]
    assert store.writes[0][2] <= store.writes[1][2]
    # Without a status (a caller of before schema 8) the beat still writes.
    bare = HeartbeatWriter(store, "n2", "dc2", 1.0, CollectorRegistry())
    await bare.beat()
    assert store.writes[-1][3] is None

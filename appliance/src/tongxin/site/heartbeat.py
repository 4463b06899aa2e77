"""The heartbeat writer (active nodes) and the lag reader (standby nodes)."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Gauge

from tongxin import __version__
from tongxin.store.ports import NodeBeat, NodeStatus, StoreError

if TYPE_CHECKING:
    from tongxin.config import Config

log = logging.getLogger("tongxin.site")

STARTED_MS = int(time.time() * 1000)
"""When this process started, about (this module is imported as the node starts)."""


@runtime_checkable
class HeartbeatStore(Protocol):
    """What the heartbeat needs of a store (the MySQL store implements it)."""

    async def write_heartbeat(self, node_id: str, site: str, beat_ms: int,
                              status: NodeStatus | None = None) -> None: ...

    async def newest_heartbeat(self) -> tuple[str, str, int] | None: ...

    async def node_beats(self, since_ms: int) -> list[NodeBeat]: ...


def node_address(cfg: Config) -> str:
    """server.listen as others would reach it: a wildcard host is replaced by this
    host's name (the node does not know the address a load balancer gives it)."""
    host, port = cfg.listen_address()
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_status(address: str, connections: int) -> NodeStatus:
    """What this node says of itself with each beat (and, without a heartbeat store,
    what the console's node list shows of it). ``address``: node_address(), worked out
    once when the node starts, not at every beat."""
    return NodeStatus(version=__version__, address=address, connections=connections,
                      started_ms=STARTED_MS)


class HeartbeatWriter:
    """Rewrites this node's heartbeat row every ``interval`` seconds (active nodes).

    ``status``, when given, is asked at each beat for what the row also carries
    (version, address, open connections, start time: the console's node list)."""

    def __init__(self, store: HeartbeatStore, node_id: str, site: str, interval: float,
                 registry: CollectorRegistry,
                 status: Callable[[], NodeStatus] | None = None) -> None:
        self.store, self.node_id, self.site, self.interval = store, node_id, site, interval
        self.status = status
        self.written_at = math.nan  # wall-clock seconds of the last committed beat
        Gauge("tongxin_replication_heartbeat_written_timestamp_seconds",
              "When this node last committed its replication heartbeat row (Unix time)",
              registry=registry).set_function(lambda: self.written_at)

    async def beat(self) -> None:
        now = time.time()
        status = self.status() if self.status is not None else None
        await self.store.write_heartbeat(self.node_id, self.site, int(now * 1000), status)
        self.written_at = now

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.beat()
                if failing:
                    log.info("replication heartbeat written again")
                failing = False
            except StoreError as exc:
                # The database being down is reported by /readyz and by the standby's
                # growing lag; one line per outage here, not one per interval.
                if not failing:
                    log.warning("replication heartbeat not written: %s", exc)
                failing = True
            await asyncio.sleep(self.interval)


class LagReader:
    """Reads the newest beat every ``interval`` seconds and exports the lag (standby nodes).

    The lag is computed when asked (``now - newest beat seen``), so while the
    replica stops receiving, or stops answering, it keeps growing: the data
    here is at least that old.
    """

    def __init__(self, store: HeartbeatStore, interval: float,
                 registry: CollectorRegistry) -> None:
        self.store, self.interval = store, interval
        self.last_beat: float | None = None  # Unix seconds of the newest beat seen
        self.last_site = ""
        # When the newest beat last moved (this node's clock), and how far
        # behind the copy was then. Once the source is lost the beat stops
        # moving: that lag is what a takeover loses at most (the RPO), while
        # lag() keeps growing with the time since the loss.
        self.advanced_at: float | None = None
        self.lag_at_advance: float | None = None
        self.error = ""  # why the last read failed, "" after a good one
        Gauge("tongxin_replication_lag_seconds",
              "Now minus the newest replication heartbeat this node's database holds "
              "(NaN before any beat was read)",
              registry=registry).set_function(lambda: _nan(self.lag()))
        Gauge("tongxin_replication_last_beat_timestamp_seconds",
              "The newest replication heartbeat this node's database holds (Unix time)",
              registry=registry).set_function(lambda: _nan(self.last_beat))
        Gauge("tongxin_replication_lag_at_last_advance_seconds",
              "How far behind the copy was when its newest heartbeat last moved: after the "
              "source is lost, what a takeover would lose at most",
              registry=registry).set_function(lambda: _nan(self.lag_at_advance))

    def lag(self) -> float | None:
        return None if self.last_beat is None else max(0.0, time.time() - self.last_beat)

    async def read(self) -> None:
        newest = await self.store.newest_heartbeat()
        self.error = ""
        if newest is None:
            return  # no table or no rows yet: the lag stays unknown (or keeps growing)
        _node, site, beat_ms = newest
        beat = beat_ms / 1000
        if self.last_beat is None or beat > self.last_beat:
            now = time.time()
            self.advanced_at, self.lag_at_advance = now, max(0.0, now - beat)
        if self.last_beat is None or beat >= self.last_beat:
            self.last_beat, self.last_site = beat, site

    def silent_for(self) -> float | None:
        """Seconds since the newest beat last moved (None before any)."""
        return None if self.advanced_at is None else max(0.0, time.time() - self.advanced_at)

    async def run(self) -> None:
        while True:
            try:
                await self.read()
            except StoreError as exc:
                if not self.error:
                    log.warning("replication heartbeat not read: %s", exc)
                self.error = str(exc) or type(exc).__name__
            await asyncio.sleep(self.interval)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value

"""Prometheus metrics, one registry per application so tests can run many nodes.

Each registry also carries the standard process, Python GC and platform
collectors (``process_*``, ``python_gc_*``, ``python_info``): a node serves its
own registry, not prometheus_client's global one, and with ``server.workers``
every worker is its own process with its own listener (port + N), so each
scrape reports the process that serves it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tongxin.proto import tongxin_pb2 as pb


def type_name(ftype: int) -> str:
    try:
        return str(pb.FrameType.Name(ftype)).lower()
    except ValueError:
        return "unknown"


def error_name(code: int) -> str:
    try:
        return str(pb.ErrorCode.Name(code)).lower()
    except ValueError:
        return "unknown"


_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                  10)


class GcObjectsCollector(Collector):
    """``tongxin_gc_objects{generation}``: objects the cyclic collector tracks, per
    generation, and ``frozen`` (gc.freeze: never examined again).

    A full collection examines every tracked object that is not frozen, so its
    pause grows with generation 2; the connection benchmark reads this to find
    the objects each connection costs (bench/conn_bench.py). Counting a
    generation lists its objects: about 15 ms per million, once per scrape.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("tongxin_gc_objects", "Objects tracked by the cyclic "
                                   "garbage collector, by generation; frozen: gc.freeze()",
                                   labels=["generation"])
        for generation in range(3):
            family.add_metric([str(generation)], len(gc.get_objects(generation)))
        family.add_metric(["frozen"], gc.get_freeze_count())
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.connections = Gauge("tongxin_connections", "Open WebSocket connections", registry=r)
        self.ready = Gauge("tongxin_ready", "1 while /readyz answers 200 (the store answers), "
                           "else 0; checked every few seconds", registry=r)
        self.authenticated = Gauge("tongxin_authenticated_connections",
                                   "Connections that completed AUTH", registry=r)
        self.frames_in = Counter("tongxin_frames_in", "Frames received, by type", ["type"],
                                 registry=r)
        self.frames_out = Counter("tongxin_frames_out", "Frames sent, by type", ["type"],
                                  registry=r)
        self.messages_stored = Counter("tongxin_messages_stored",
                                       "Log entries durably stored (not counting duplicates)",
                                       registry=r)
        self.duplicates = Counter("tongxin_duplicate_sends",
                                  "Sends answered from the log by client_msg_id", registry=r)
        self.ack_latency = Histogram(
            "tongxin_ack_latency_seconds", "From a SEND frame's bytes being read off the socket "
            "to its ACK being queued",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r)
        # Pauses: what every connection of the process waits through at once.
        self.loop_lag = Histogram(
            "tongxin_event_loop_lag_seconds", "How much later than asked a periodic timer on the "
            "event loop ran (server.loop_lag_interval): time the loop spent on other work or "
            "paused", buckets=_PAUSE_BUCKETS, registry=r)
        self.gc_pause = Histogram(
            "tongxin_gc_pause_seconds", "Cyclic garbage collections, by generation, and how "
            "long each stopped the process", ["generation"], buckets=_PAUSE_BUCKETS, registry=r)
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        r.register(GcObjectsCollector())
        PlatformCollector(registry=r)
        self.errors = Counter("tongxin_errors", "Error frames and error closes, by code",
                              ["code"], registry=r)
        self.closes = Counter("tongxin_closes", "Connections closed by the server, by reason",
                              ["reason"], registry=r)
        self.send_queue_overflows = Counter("tongxin_slow_consumer_disconnects",
                                            "Connections dropped because their send queue filled",
                                            registry=r)
        self._in: dict[int, Any] = {}
        self._out: dict[int, Any] = {}
        self.deliveries = Counter("tongxin_deliveries", "Frames fanned out to local devices",
                                  registry=r)
        self.file_bytes_uploaded = Counter("tongxin_file_bytes_uploaded",
                                           "Bytes of upload parts accepted and stored", registry=r)
        self.files_completed = Counter("tongxin_files_completed",
                                       "Uploads verified and completed into files", registry=r)
        self.uploads_expired = Counter("tongxin_uploads_expired",
                                       "Unfinished uploads deleted after files.upload_expiry",
                                       registry=r)
        self.redis_fallbacks = Counter(
            "tongxin_redis_fallbacks", "Rate-limit checks and revocation look-ups answered "
            "without Redis because it did not answer (local bucket, store)", ["use"], registry=r)
        self.auth_waiting = Gauge(
            "tongxin_auth_waiting", "AUTHs and REGISTERs waiting for a turn "
            "(server.auth_concurrency)", registry=r)
        self.auth_abandoned = Counter(
            "tongxin_auth_abandoned", "AUTHs and REGISTERs not worked on because the client "
            "had closed the connection while they waited for a turn", registry=r)
        self.presence_removals_failed = Counter(
            "tongxin_presence_removals_failed", "Devices that left this node while presence "
            "(Redis) did not take their removal; made again on the next heartbeat", registry=r)

    # Per-frame hot path: resolving a labelled child costs ~10 us (label
    # tuple, lock, name lookup); the children are cached per frame type.
    def frame_in(self, ftype: int) -> None:
        child = self._in.get(ftype)
        if child is None:
            child = self._in[ftype] = self.frames_in.labels(type_name(ftype))
        child.inc()

    def frame_out(self, ftype: int) -> None:
        child = self._out.get(ftype)
        if child is None:
            child = self._out[ftype] = self.frames_out.labels(type_name(ftype))
        child.inc()

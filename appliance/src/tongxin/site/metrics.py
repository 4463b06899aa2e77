"""Which database endpoint a node's store uses, as Prometheus sees it."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tongxin.store.endpoints import EndpointPool


class EndpointCollector(Collector):
    """``tongxin_db_endpoint_index{endpoint}``: the position in storage.mysql_dsn of the
    endpoint in use (0 = the preferred one), labelled with its address; -1 and an empty
    label while none answers. Read at scrape time from the store's endpoint pool."""

    def __init__(self, store: object) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        pool = getattr(self.store, "endpoints", None)
        if not isinstance(pool, EndpointPool):
            return  # not a MySQL store, or not open yet
        current = pool.current
        index = GaugeMetricFamily(
            "tongxin_db_endpoint_index", "Position in storage.mysql_dsn of the database endpoint "
            "in use (0 = preferred, -1 = none answers)", labels=["endpoint"])
        index.add_metric([str(current) if current else ""], pool.index)
        yield index
        switches = CounterMetricFamily(
            "tongxin_db_endpoint_switches", "Times the store's pool moved to another database "
            "endpoint (failures and returns to the preferred one)")
        switches.add_metric([], pool.switches)
        yield switches


def register_endpoint_metrics(registry: CollectorRegistry, store: object) -> None:
    registry.register(EndpointCollector(store))

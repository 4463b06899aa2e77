"""A node's Kafka start is bounded (kafka.start_timeout): a broker that takes the
connection and then answers nothing must not hold the node's start for ever,
since a node that never exits is never started again by systemd."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tongxin.cli.main import _unreachable
from tongxin.config import ConfigError, KafkaConfig, load_config
from tongxin.delivery.kafka_bus import KafkaBus
from tongxin.delivery.ports import BusStartTimeout


@pytest.fixture
async def silent_broker() -> AsyncIterator[int]:
    """A TCP port that accepts Kafka's connections and never answers a request."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for w in held:
        w.close()
    server.close()
    await server.wait_closed()


async def _nothing(*_args: Any) -> Any:
    return None


def _bus(port: int, start_timeout: float) -> KafkaBus:
    cfg = KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}", start_timeout=start_timeout)
    return KafkaBus(cfg, "A", _nothing, lambda _conversation: None, _nothing, _nothing,
                    CollectorRegistry())


async def test_a_broker_that_never_answers_ends_the_start_at_the_bound(
        silent_broker: int) -> None:
    bus = _bus(silent_broker, 0.5)
    t0 = time.monotonic()
    with pytest.raises(BusStartTimeout) as caught:
        await bus.start(_nothing)
    took = time.monotonic() - t0
    # aiokafka's own request timeout is 40 s: only the bound ends it this soon.
    assert took < 10, took
    msg = str(caught.value)
    assert f"127.0.0.1:{silent_broker}" in msg and "kafka.start_timeout (0.5 s" in msg
    # The command line prints it as it is: which brokers, which bound.
    assert _unreachable(argparse.Namespace(), caught.value) == f"tongxin: {msg}"


async def test_a_timeout_inside_the_start_before_the_bound_is_not_called_the_bound(
        silent_broker: int, monkeypatch: pytest.MonkeyPatch) -> None:
    bus = _bus(silent_broker, 30)

    async def times_out(_handler: Any) -> None:
        raise TimeoutError("a request of the client timed out")

    monkeypatch.setattr(bus, "_start", times_out)
    with pytest.raises(TimeoutError) as caught:
        await bus.start(_nothing)
    assert not isinstance(caught.value, BusStartTimeout)
    assert "a request of the client" in str(caught.value)


def test_the_bound_must_be_positive(tmp_path: Path) -> None:
    path = tmp_path / "tongxin.yml"
    path.write_text("kafka:\n  start_timeout: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"kafka\.start_timeout: must be positive"):
        load_config(path)

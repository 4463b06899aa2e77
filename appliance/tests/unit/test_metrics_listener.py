"""``/metrics`` is served on ``server.metrics_listen``, not on the public listener."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from conftest import NodeFactory  # type: ignore[import-not-found, unused-ignore]

from tongxin.server import metrics_listener
from tongxin.server.metrics_listener import MetricsListener


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.text()


async def test_public_listener_answers_404_and_the_metrics_listener_serves(
        node_factory: NodeFactory) -> None:
    node = await node_factory()
    status, _ = await _get(node.http_url + "/metrics")
    assert status == 404
    status, text = await _get(node.metrics_url)
    assert status == 200 and "tongxin_connections" in text
    assert node.metrics_url.split(":")[2].split("/")[0] != str(node.port)
    # The metrics listener serves nothing else.
    assert (await _get(node.metrics_url.replace("/metrics", "/healthz")))[0] == 404


async def test_operator_may_opt_in_to_public_metrics(node_factory: NodeFactory) -> None:
    node = await node_factory(server={"public_metrics": True, "metrics_listen": ""})
    status, text = await _get(node.http_url + "/metrics")
    assert status == 200 and "tongxin_connections" in text
    assert node.node.metrics_listener is None


async def test_a_taken_port_does_not_stop_the_node(node_factory: NodeFactory,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = await node_factory(server={"metrics_listen": f"127.0.0.1:{port}"})
        assert (await _get(node.http_url + "/healthz"))[0] == 200
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text


def test_worker_n_binds_port_plus_n(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry

    listener = MetricsListener(CollectorRegistry(), "10.0.0.5:9464")
    assert listener.bind_address() == ("10.0.0.5", 9464)
    monkeypatch.setattr(metrics_listener, "worker_index", lambda: 3)
    assert listener.bind_address() == ("10.0.0.5", 9467)
    assert MetricsListener(CollectorRegistry(), "127.0.0.1:0").bind_address() == ("127.0.0.1", 0)

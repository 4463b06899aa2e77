"""``/metrics`` on its own address, off the public listener.

The metrics name users' activity (connections, errors by code, deliveries),
the node's backends and its replication lag: nothing a user or a scanner on
the public port should read. So they are served on ``server.metrics_listen``
(default ``127.0.0.1:9464``, the Prometheus exporter port; the Ansible role
sets the host's internal address so the monitoring hosts can scrape it), and
the public listener answers 404 for ``/metrics`` unless
``server.public_metrics`` opts in. With ``server.workers: N`` worker N binds
the port + N, so each worker's counters are scraped, not whichever worker
the kernel picks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tongxin.config import Config, ConfigError, parse_listen
from tongxin.server.workers import worker_index

log = logging.getLogger("tongxin.metrics")


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request],
                                                              Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler


async def _not_public(request: web.Request) -> web.Response:
    return web.Response(status=404, text="404: Not Found\n")


class MetricsListener:
    """A small HTTP server with ``/metrics`` only, started with the node's app."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        self.registry = registry
        self.address = address
        self.port: int | None = None  # bound port (an address with port 0 picks one)
        self._runner: web.AppRunner | None = None

    def bind_address(self) -> tuple[str, int]:
        try:
            host, port = parse_listen(self.address)
        except ConfigError as exc:
            raise ConfigError(f"server.metrics_listen: expected HOST:PORT, "
                              f"got {self.address!r}") from exc
        index = worker_index()
        return host, port + index if port and index else port

    async def start(self) -> None:
        host, port = self.bind_address()
        app = web.Application()
        app.router.add_get("/metrics", metrics_handler(self.registry))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            # Serving users matters more than being scraped: the node runs on, and
            # Prometheus reports the target down (alert InstanceDown) besides this line.
            await runner.cleanup()
            log.error("server.metrics_listen: cannot listen on %s:%d (%s); /metrics is not "
                      "served", host, port, exc.strerror)
            return
        self._runner = runner
        server = site._server  # aiohttp keeps the bound sockets there
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def add_metrics(app: web.Application, registry: CollectorRegistry,
                cfg: Config) -> MetricsListener | None:
    """Serve ``registry`` as configured: its own listener, the public one only on opt-in."""
    # Explicit either way: a standby's catch-all would otherwise answer 503.
    app.router.add_get("/metrics", metrics_handler(registry) if cfg.server.public_metrics
                       else _not_public)
    if not cfg.server.metrics_listen:
        return None
    listener = MetricsListener(registry, cfg.server.metrics_listen)

    async def on_startup(_: web.Application) -> None:
        await listener.start()

    async def on_cleanup(_: web.Application) -> None:
        await listener.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return listener

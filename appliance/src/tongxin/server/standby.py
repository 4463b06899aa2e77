"""A node of a standby site (``site.role: standby``): installed, running, refusing users.

The DR site's nodes run this until the site is promoted (and dc1/dc2's after
a switchover to dr). Its database is a read-only replica of the active
site's, so this wiring never writes to it: no migrations, no keyring or data
keys, no audit trail, no sweepers, no Redis or Kafka. It answers:

* ``/healthz`` 200 (the process is alive: monitoring, the load balancer's
  liveness check);
* ``/readyz`` 503 with ``reason: standby``, the site and the replication lag,
  so a load balancer never sends users here;
* ``/metrics`` on ``server.metrics_listen`` (server/metrics_listener.py; on this
  listener only with ``server.public_metrics``): the replication lag and the
  database endpoint in use;
* everything else, WebSocket upgrades and every user and admin API included,
  503 with ``reason: standby``.

Promotion is configuration, not a runtime switch: set ``site.role: active``
and restart the service (the Ansible role does both), and the node starts as
the full :class:`tongxin.server.node.Node`, applying pending migrations
against the now writable database. A restart keeps the two wirings apart, so
nothing a standby loaded can leak into serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from tongxin import __version__
from tongxin.config import Config
from tongxin.server.metrics_listener import MetricsListener, add_metrics
from tongxin.site.heartbeat import LagReader
from tongxin.site.metrics import register_endpoint_metrics
from tongxin.store.ports import Unavailable

if TYPE_CHECKING:
    from tongxin.store.mysql_store import MysqlStore

log = logging.getLogger("tongxin.standby")

_REFUSAL_RETRY_S = 30  # a standby stays one until an operator promotes it: no quick retry


class StandbyNode:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id or f"{socket.gethostname()}:{cfg.listen_address()[1]}"
        self.registry = CollectorRegistry()
        self.metrics_listener: MetricsListener | None = None  # set by app()
        self.store: MysqlStore | None = None
        self.reader: LagReader | None = None
        if cfg.storage.backend == "mysql":
            from tongxin.store.mysql_store import MysqlStore

            # Two connections: one read per interval is all this node does.
            self.store = MysqlStore.from_dsn(cfg.storage.mysql_dsn, 2, cfg.storage.mysql_timeout)
            self.reader = LagReader(self.store, cfg.site.heartbeat_interval, self.registry)
            register_endpoint_metrics(self.registry, self.store)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.reader is not None:
            self._task = asyncio.create_task(self._watch())
        log.info("standby node of site %r: refusing users until promoted (site.role: active "
                 "and a restart)", self.cfg.site.name)

    async def _watch(self) -> None:
        assert self.store is not None and self.reader is not None
        try:
            await self.store.connect()  # connect only: open() would migrate
        except Unavailable as exc:
            log.warning("standby database not reachable yet: %s", exc)
        await self.reader.run()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.store is not None:
            await self.store.close()

    def status(self) -> dict[str, Any]:
        lag = self.reader.lag() if self.reader is not None else None
        silent = self.reader.silent_for() if self.reader is not None else None
        before = self.reader.lag_at_advance if self.reader is not None else None
        body: dict[str, Any] = {
            "ready": False, "reason": "standby", "role": "standby", "site": self.cfg.site.name,
            "node": self.node_id,
            "replication_lag_seconds": _rounded(lag),
            # For a failover: how long the copy has not moved, and how far behind
            # it was when it last did (what a takeover now would lose at most).
            "replication_silent_seconds": _rounded(silent),
            "replication_lag_at_last_advance_seconds": _rounded(before),
        }
        if self.reader is not None and self.reader.error:
            body["replication_error"] = self.reader.error
        return body

    # ---- HTTP ----------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__, "node": self.node_id,
                                  "role": "standby"})

    async def readyz(self, request: web.Request) -> web.Response:
        return web.json_response(self.status(), status=503)

    async def refuse(self, request: web.Request) -> web.Response:
        site = self.cfg.site.name or "this site"
        return web.json_response(
            {"error": "UNAVAILABLE", "reason": "standby", "site": self.cfg.site.name,
             "message": f"{site} is a standby site; use the active site",
             "retry_after_ms": _REFUSAL_RETRY_S * 1000},
            status=503, headers={"Retry-After": str(_REFUSAL_RETRY_S)})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        self.metrics_listener = add_metrics(app, self.registry, self.cfg)
        # Everything else: /ws before the upgrade, /api/..., the web client.
        app.router.add_route("*", "/{tail:.*}", self.refuse)

        async def on_startup(_: web.Application) -> None:
            await self.start()

        async def on_shutdown(_: web.Application) -> None:
            await self.stop()

        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)
        return app


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

"""One appliance node: the ports wired together, the aiohttp app, its lifecycle."""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import os
import socket
import ssl
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from tongxin import __version__
from tongxin.atrest.keyring import Keyring
from tongxin.atrest.records import load_or_create_secret, open_keyring
from tongxin.auth.accounts import Accounts, Session
from tongxin.auth.revocation import NoRevocations, Revocations
from tongxin.auth.tokens import KEY_BYTES, TokenSigner
from tongxin.chat.members import MemberCache
from tongxin.chat.service import ChatService
from tongxin.clock import now_ms
from tongxin.config import Config, ConfigError, client_endpoint_list
from tongxin.delivery.inprocess import InProcessBus
from tongxin.delivery.ports import Delivery, DeliveryBus
from tongxin.errors import RequestError
from tongxin.files.service import FileService, make_file_service
from tongxin.keydir.service import make_key_directory
from tongxin.metrics import Metrics
from tongxin.presence.memory import MemoryPresence
from tongxin.presence.ports import PresenceRegistry
from tongxin.proto import tongxin_pb2 as pb
from tongxin.server import admin_api, files_api, http_log, session_end
from tongxin.server.connection import Connection
from tongxin.server.csp import CONSOLE_CSP, csp_ws_source, web_client_csp
from tongxin.server.gcschedule import GcSchedule
from tongxin.server.http_util import json_body
from tongxin.server.hub import Hub
from tongxin.server.metrics_listener import MetricsListener, add_metrics
from tongxin.server.pauses import GcPauses, watch_loop_lag
from tongxin.server.ratelimit import RateLimit, RateLimiter
from tongxin.server.wsarrival import ArrivalWebSocketResponse
from tongxin.site.heartbeat import HeartbeatStore, HeartbeatWriter, local_status, node_address
from tongxin.site.metrics import register_endpoint_metrics
from tongxin.store.ports import ChatStore, Unavailable
from tongxin.store.sqlite_store import SqliteStore
from tongxin.wire import closecodes
from tongxin.wire.codec import Encoder, FragmentBudget, WireLimits
from tongxin.wire.frame import HEADER_SIZE

log = logging.getLogger("tongxin.node")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def make_store(cfg: Config) -> ChatStore:
    """The configured store; opening it also loads the at-rest keyring (tongxin.atrest)."""
    if cfg.storage.backend == "sqlite":
        store = SqliteStore(cfg.sqlite_file, cfg.storage.sqlite_synchronous,
                            cfg.storage.batch_max)
        store.atrest_config = cfg
        return store
    if cfg.storage.backend == "mysql":
        from tongxin.store.mysql_store import MysqlStore

        mysql = MysqlStore.from_dsn(cfg.storage.mysql_dsn, cfg.storage.mysql_pool_size,
                                    cfg.storage.mysql_timeout)
        mysql.atrest_config = cfg
        return mysql
    raise ValueError(f"unknown storage backend {cfg.storage.backend!r}")


def server_tls_context(cfg: Config) -> ssl.SSLContext | None:
    """TLS 1.3 only (no 1.2 fallback: every client this appliance supports speaks 1.3), or
    None without ``server.tls.cert_file``. TLCP (GB/T 38636) terminates at the front proxy
    instead: docs/security.md. Raises ConfigError naming the key for unusable files."""
    t = cfg.server.tls
    if not t.cert_file:
        return None
    try:
        mode = os.stat(t.key_file).st_mode
    except OSError as exc:
        raise ConfigError(f"server.tls.key_file: cannot read {t.key_file}: {exc.strerror}") from exc
    if mode & 0o007:
        raise ConfigError(f"server.tls.key_file: {t.key_file} is accessible to every user; "
                          f"run: chmod 600 {t.key_file}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(t.cert_file, t.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"server.tls.cert_file/key_file: cannot load {t.cert_file} with "
                          f"{t.key_file}: {exc}") from exc
    if t.client_ca_file:
        try:
            ctx.load_verify_locations(t.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.tls.client_ca_file: cannot load {t.client_ca_file}: "
                              f"{exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_presence(cfg: Config, metrics: Metrics | None = None) -> PresenceRegistry:
    p = cfg.presence
    if p.backend == "redis":
        from tongxin.presence.redis_presence import RedisPresence

        local = RedisPresence(p.redis_nodes, p.key_prefix, p.node_ttl,
                              tls_ca_file=p.redis_tls_ca_file)
        if not p.remote_sites():
            return local
        from tongxin.presence.multisite import RemotePresence, SitesPresence

        on_fallback = metrics.redis_fallbacks.labels("remote_presence").inc if metrics else None
        return SitesPresence(local, [RemotePresence(site, p.key_prefix, p.node_ttl,
                                                    on_fallback=on_fallback,
                                                    tls_ca_file=p.redis_tls_ca_file)
                                     for site in p.remote_sites()])
    return MemoryPresence()


def rate_limit_backend(cfg: Config) -> str:
    backend = cfg.chat.rate_limit_backend
    if backend == "auto":
        return "redis" if cfg.presence.backend == "redis" else "memory"
    return backend


def make_rate_limiter(cfg: Config, metrics: Metrics | None = None) -> RateLimit:
    c = cfg.chat
    if rate_limit_backend(cfg) == "redis":
        from tongxin.server.redis_ratelimit import RedisRateLimiter

        on_fallback = metrics.redis_fallbacks.labels("rate_limit").inc if metrics else None
        return RedisRateLimiter(cfg.presence.redis_nodes, cfg.presence.key_prefix,
                                c.rate_limit_per_second, c.rate_limit_burst,
                                on_fallback=on_fallback,
                                tls_ca_file=cfg.presence.redis_tls_ca_file)
    return RateLimiter(c.rate_limit_per_second, c.rate_limit_burst)


def make_revocations(cfg: Config, metrics: Metrics | None = None) -> Revocations:
    """Token revocations are published in Redis when presence is (the same cluster)."""
    if cfg.presence.backend == "redis":
        from tongxin.auth.redis_revocation import RedisRevocations

        on_fallback = metrics.redis_fallbacks.labels("revocation").inc if metrics else None
        return RedisRevocations(cfg.presence.redis_nodes, cfg.presence.key_prefix,
                                on_fallback=on_fallback,
                                tls_ca_file=cfg.presence.redis_tls_ca_file)
    return NoRevocations()


class Node:
    def __init__(self, cfg: Config, store: ChatStore | None = None,
                 bus: DeliveryBus | None = None, presence: PresenceRegistry | None = None) -> None:
        self.cfg = cfg
        s = cfg.server
        self.limits = WireLimits(s.max_frame_payload, s.max_message_size,
                                 s.compression_threshold, s.fragment_timeout)
        self.fragment_budget = FragmentBudget(s.fragment_budget)
        self.node_id = cfg.node_id or f"{socket.gethostname()}:{cfg.listen_address()[1]}"
        self.metrics = Metrics()
        self.gc_pauses = GcPauses(self.metrics.gc_pause)
        self.gc_schedule = (GcSchedule(s.gc_freeze_interval, s.gc_freeze_threshold)
                            if s.gc_freeze and s.gc_freeze_interval > 0 else None)
        self.store = store or make_store(cfg)
        self.presence = presence or make_presence(cfg, self.metrics)
        self.encoder = Encoder(self.limits)
        self.members = MemberCache(self.store)
        self.bus = bus or self._make_bus()
        self.hub = Hub(self.encoder, self.members, self.metrics)
        self.files: FileService = make_file_service(cfg, self.store, self.metrics)
        self.chat = ChatService(self.store, self.bus, self.members, cfg.chat, s.max_message_size,
                                files=self.files.message_file)
        self.limiter = make_rate_limiter(cfg, self.metrics)
        self.revocations = make_revocations(cfg, self.metrics)
        # E2EE key directory and content policy (docs/e2ee.md); public keys only.
        self.keydir = make_key_directory(cfg, self.store)
        self.accounts: Accounts  # set in start(): the token key lives in the data dir
        self.keyring: Keyring | None = None  # set in start(): at-rest encryption keys
        register_endpoint_metrics(self.metrics.registry, self.store)
        # The replication heartbeat a standby site measures its lag by (tongxin.site);
        # its row also says who this node is (the console's node list).
        self.address = node_address(cfg)
        self.heartbeat = (HeartbeatWriter(self.store, self.node_id, cfg.site.name,
                                          cfg.site.heartbeat_interval, self.metrics.registry,
                                          lambda: local_status(self.address, len(self.hub.all)))
                          if isinstance(self.store, HeartbeatStore) else None)
        self.ready = False
        self.metrics_listener: MetricsListener | None = None  # set by app()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._removal_warned_until = 0.0  # detach: log failed presence removals once a minute
        # AUTHs and REGISTERs worked on at once (Connection.open_session): in a
        # reconnect storm, thousands at once each progress a little, all answer
        # late and their clients give up together; in turns, they are answered
        # in order at the node's pace, and the loop stays free for the rest.
        self.auth_gate = asyncio.Semaphore(cfg.server.auth_concurrency)

    def _make_bus(self) -> DeliveryBus:
        if self.cfg.delivery.backend == "kafka":
            from tongxin.delivery.kafka_bus import KafkaBus

            return KafkaBus(self.cfg.kafka, self.node_id, self.members.get,
                            self.members.invalidate, self.presence.devices_of,
                            self.presence.live_nodes, self.metrics.registry)
        return InProcessBus()

    # ---- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        home = self.cfg.home
        # Databases, keys and blobs live here: only the service user enters.
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if home.stat().st_mode & 0o077:
            home.chmod(0o700)
        await self.store.open()
        # Keys before anything reads or writes sealed data (docs/security.md).
        self.keyring = getattr(self.store, "keyring", None) or await open_keyring(
            self.cfg, self.store)
        self.files.keyring = self.keyring
        key = await load_or_create_secret(home / "secrets" / "token.key", KEY_BYTES,
                                          self.keyring)
        self.accounts = Accounts(self.store, TokenSigner(key), self.cfg.accounts,
                                 self.revocations)
        self.accounts.end_sessions = self.end_sessions
        await self.files.open()
        await self.keydir.open()
        self.spawn(self.files.run_sweeper())  # expired uploads, in batches
        if self.heartbeat is not None:
            self.spawn(self.heartbeat.run())
        await self.presence.start(self.node_id)
        await self.bus.start(self.hub.dispatch)
        self._sweeper = asyncio.create_task(self._sweep())
        self.spawn(self._watch_readiness())
        if self.cfg.server.loop_lag_interval > 0:
            self.spawn(watch_loop_lag(self.metrics.loop_lag, self.cfg.server.loop_lag_interval))
        if self.cfg.server.gc_freeze:
            # Everything allocated so far lives for the process lifetime; moving
            # it out of the collector's view shortens full-collection pauses.
            gc.collect()
            gc.freeze()
        self.gc_pauses.install()  # after start-up's own collection: pauses while serving
        if self.gc_schedule is not None:
            # Held connections frozen as they accumulate (server/gcschedule.py).
            self.spawn(self.gc_schedule.run(lambda: len(self.hub.all)))
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        await asyncio.gather(*(conn.close(closecodes.GOING_AWAY, "server shutting down")
                               for conn in list(self.hub.all)), return_exceptions=True)
        if self._sweeper:
            self._sweeper.cancel()
        for t in list(self._tasks):
            t.cancel()  # among them the event-loop lag probe
        self.gc_pauses.remove()
        await self.bus.close()
        await self.presence.close()
        await self.limiter.close()
        await self.revocations.close()
        await self.files.close()
        await self.keydir.close()
        await self.store.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def sweep_interval(self) -> float:
        s = self.cfg.server
        return max(0.05, min(2.0, s.auth_timeout / 4, s.fragment_timeout / 4,
                             s.heartbeat_interval / 4))

    async def _watch_readiness(self, interval: float = 5.0) -> None:
        """``tongxin_ready`` for Prometheus (ApplianceNotReady): the load balancers'
        view of /readyz is not scraped where their statistics listener is on loopback."""
        while True:
            try:
                ok = self.ready and await asyncio.wait_for(self.store.ping(), interval)
            except (TimeoutError, OSError):
                ok = False
            self.metrics.ready.set(1 if ok else 0)
            await asyncio.sleep(interval)

    async def _sweep(self) -> None:
        """One timer for all connections instead of several per connection."""
        s = self.cfg.server
        while True:
            await asyncio.sleep(self.sweep_interval())
            now = time.monotonic()
            for conn in list(self.hub.all):
                if conn.closing:
                    continue
                if (conn.session is None and not conn.authenticating
                        and now - conn.opened > s.auth_timeout):
                    self.metrics.errors.labels("auth_timeout").inc()
                    self.spawn(conn.close(closecodes.AUTH_REQUIRED, "no AUTH in time"))
                elif conn.decoder.expired():
                    # ref_seq names the incomplete message, as when a late
                    # fragment finds it expired (Decoder.feed).
                    pending = conn.decoder.pending_seq
                    conn.decoder.reset()
                    conn.error(pb.FRAGMENT_TIMEOUT,
                               f"fragmented message did not complete within "
                               f"{s.fragment_timeout:g}s", pending, fatal=True)
                    self.spawn(conn.close(closecodes.PROTOCOL_ERROR, "fragment timeout"))
                elif now - conn.last_seen > conn.heartbeat * s.idle_timeout_factor:
                    self.spawn(conn.close(closecodes.IDLE, "no frames within the idle timeout"))
            self.limiter.forget_idle()

    # ---- sessions ----------------------------------------------------------

    def auth_presence_timeout(self) -> float:
        """Seconds an AUTH waits for presence (Redis) before it is answered UNAVAILABLE:
        half of auth_timeout, so that the client hears why before 4001."""
        return max(0.5, self.cfg.server.auth_timeout / 2)

    async def attach(self, conn: Connection) -> bool:
        """Make ``conn`` (authenticating: ``conn.session`` still None) its device's
        connection, here and in presence; True if its user was offline before.

        Raises Unavailable when presence fails (Redis down, its client pool
        spent) or takes longer than auth_presence_timeout(): ``conn`` is then no
        longer registered (the connection it replaced is again, if still open)
        and the AUTH is answered UNAVAILABLE. If the failure came after the
        presence write, that entry names this node for a device that is not
        connected, as after a failed device_offline: its next connection
        overwrites it, and deliveries routed here for it find no connection
        (the client syncs when it connects).
        """
        old = self.hub.attach(conn)
        try:
            async with asyncio.timeout(self.auth_presence_timeout()):
                online = await self.presence.device_online(conn.user_id, conn.device_id,
                                                           self.node_id)
        except (Unavailable, TimeoutError) as exc:
            self.hub.unregister(conn, old)
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(f"presence did not answer within "
                              f"{self.auth_presence_timeout():g}s") from exc
        if old is not None and old is not conn:
            self.spawn(old.close(closecodes.REPLACED, "same device connected again"))
        return bool(online)

    async def revoked_during_auth(self, session: Session) -> bool:
        """True if the session's token was revoked while its AUTH was under way
        (called after attach(); the connection then answers TOKEN_REVOKED, 4010).

        The revocation's end-sessions signal is routed to the nodes presence
        lists for the user, and the store is written before it is sent. A
        revocation between this AUTH's own check and the presence entry attach() made
        may have been routed without this node; read after that entry, the
        store has it. One indexed read per login (server/session_end.py).
        """
        try:
            return bool(await self.store.token_revoked(session.claims.token_id))
        except Unavailable:
            return False  # the AUTH just read the store; the next AUTH asks again

    async def detach(self, conn: Connection) -> None:
        if conn.session is not None:
            self.metrics.authenticated.dec()
            # The session idle timeout counts from when the connection ends.
            await self.accounts.touch(conn.session.claims.token_id, force=True)
        if not self.hub.detach(conn):
            return
        try:
            offline = await self.presence.device_offline(conn.user_id, conn.device_id,
                                                         self.node_id)
        except Unavailable as exc:
            # Redis away: the removal is made again on presence's next heartbeat
            # (RedisPresence._remove_again). Counted, and logged at most once a
            # minute: thousands of connections can end in one outage, and the
            # handler's end must stay cheap (a traceback per connection once
            # took 39% of a worker's loop through a mass close).
            self.metrics.presence_removals_failed.inc()
            now = time.monotonic()
            if now >= self._removal_warned_until:
                self._removal_warned_until = now + 60.0
                log.warning("presence removal failed, to be made again: %s", exc)
            return
        if offline:
            await self.publish_presence(conn.user_id, False)

    async def end_sessions(self, user_id: str, token_id: str, issued_before_ms: int) -> None:
        """A revocation ends the live sessions it covers on every node (server/session_end).

        Here at once; elsewhere through the delivery bus. If the bus cannot take
        it, the revocation still stands (store, Redis): the other nodes' sockets
        then live until their next AUTH, which is logged. In-process the bus
        brings it back here, where it finds those connections already closing."""
        sig = session_end.EndSessions(user_id, token_id, issued_before_ms)
        self.hub.end_sessions(sig)
        try:
            await self.bus.publish(sig.delivery())
        except Unavailable as exc:
            log.warning("sessions of %s not ended on other nodes (bus unavailable): %s",
                        user_id, exc)

    async def publish_presence(self, user_id: str, online: bool) -> None:
        update = pb.PresenceUpdate()
        update.entries.add(user_id=user_id, status=pb.ONLINE if online else pb.OFFLINE,
                           last_seen_ms=now_ms(), devices=0)
        try:
            await self.bus.publish(Delivery(frame_type=pb.PRESENCE,
                                            payload=update.SerializeToString(),
                                            watchers_of=user_id))
        except Unavailable as exc:
            # Presence is best effort: watchers re-read it on their next
            # PRESENCE_SUB; a broker outage must not fail a login.
            log.warning("presence update not published: %s", exc)

    # ---- HTTP --------------------------------------------------------------

    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        # permessage-deflate off: zstd in the frame replaces it, and deflate
        # state costs ~100 KB per connection. Twice the frame limit lets an
        # oversized frame reach our own check and get an ERROR frame; beyond
        # that aiohttp closes with 1009 before buffering more.
        # ArrivalWebSocketResponse: stamps each message when its bytes come off the
        # socket, where tongxin_ack_latency_seconds starts (server/wsarrival.py).
        ws = ArrivalWebSocketResponse(
            compress=False, autoping=True, heartbeat=None,
            max_msg_size=2 * (self.limits.max_frame_payload + HEADER_SIZE))
        if not self.ready:
            raise web.HTTPServiceUnavailable(text="starting or stopping")
        try:
            await ws.prepare(request)
        except ConnectionResetError:
            # The client gave up before the handshake's answer was written (a
            # reconnect storm's timeouts): nothing to serve, nothing to log.
            # Not the half-prepared ws: aiohttp ends a handler's response with
            # write_eof, which on it raises RuntimeError ("Call .prepare()
            # first") and logs a traceback; this one's write meets the lost
            # connection, which aiohttp passes over quietly.
            return web.Response(status=499)
        conn = Connection(ws, self, request.remote or "", request.transport)
        self.hub.all.add(conn)
        self.metrics.connections.inc()
        try:
            await conn.run()
        finally:
            conn.decoder.reset()  # its unfinished message no longer counts against the budget
            self.metrics.connections.dec()
            if self.gc_schedule is not None:
                self.gc_schedule.closed()
            await self.detach(conn)
            await conn.finish()
        return ws

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__, "node": self.node_id})

    async def readyz(self, request: web.Request) -> web.Response:
        store_ok = self.ready and await self.store.ping()
        body = {"ready": bool(store_ok), "store": store_ok, "node": self.node_id,
                "role": "active", "site": self.cfg.site.name}
        return web.json_response(body, status=200 if store_ok else 503)

    async def info(self, request: web.Request) -> web.Response:
        """What a client needs before it logs in (the login page asks): also every entry
        of the installation, in the order to try them when this one fails."""
        return web.json_response({
            "version": __version__, "self_registration": self.cfg.accounts.self_registration,
            # in force: the configuration's, or the security administrator's change
            "password_min_length": self.accounts.cfg.password_min_length,
            "websocket": "/ws",
            "endpoints": client_endpoint_list(self.cfg.server.client_endpoints),
            "org_root_public_key": base64.b64encode(self.keydir.policy.org_root_public_key).decode(),
        })

    async def api_login(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            s = await self.accounts.login(str(body.get("username", "")),
                                          str(body.get("password", "")),
                                          str(body.get("device_id", "")))
        except RequestError as err:
            return _api_error(err, 401)
        return web.json_response({"user_id": s.user.id, "token": s.token,
                                  "device_id": s.device_id,
                                  "expires_at_ms": s.claims.expires_at_ms})

    async def api_password(self, request: web.Request) -> web.Response:
        """A user changes their own password with the old one (also an expired one)."""
        body = await json_body(request)
        try:
            user = await self.accounts.change_own_password(
                str(body.get("username", "")), str(body.get("old_password", "")),
                str(body.get("new_password", "")), source=request.remote or "")
        except RequestError as err:
            return _api_error(err, 401)
        return web.json_response({"user_id": user.id, "changed": True})

    async def api_register(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            s = await self.accounts.register(str(body.get("username", "")),
                                             str(body.get("password", "")),
                                             str(body.get("display_name", "")),
                                             str(body.get("device_id", "")))
        except RequestError as err:
            return _api_error(err, 400)
        return web.json_response({"user_id": s.user.id, "token": s.token,
                                  "device_id": s.device_id,
                                  "expires_at_ms": s.claims.expires_at_ms})

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = WEB_DIR / "index.html"
        if not page.exists():
            return web.Response(text="Tongxin is running. Connect a client to /ws.\n")
        csp = web_client_csp(client_endpoint_list(self.cfg.server.client_endpoints))
        return web.FileResponse(page, headers={"Cache-Control": "no-store",
                                               "Content-Security-Policy": csp,
                                               "X-Content-Type-Options": "nosniff"})

    async def console(self, request: web.Request) -> web.StreamResponse:
        """The administrators' console (docs/console.md): its own page, the admin API's login."""
        page = WEB_DIR / "console.html"
        if not page.exists():
            return web.Response(status=404, text="The admin console is not built (make web).\n")
        return web.FileResponse(page, headers={"Cache-Control": "no-store",
                                               "Content-Security-Policy": CONSOLE_CSP,
                                               "X-Content-Type-Options": "nosniff"})

    def app(self) -> web.Application:
        http_log.install()  # malformed requests: a rate-limited warning, no traceback
        app = web.Application(client_max_size=1024 * 1024, middlewares=[_unavailable_as_503])
        app.router.add_get("/ws", self.ws_handler)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/api/v1/info", self.info)
        app.router.add_post("/api/v1/login", self.api_login)
        app.router.add_post("/api/v1/register", self.api_register)
        app.router.add_post("/api/v1/password", self.api_password)
        files_api.add_routes(app, self)
        if self.cfg.server.web_client:
            for url in client_endpoint_list(self.cfg.server.client_endpoints):
                if csp_ws_source(url) is None:
                    log.warning("server.client_endpoints: %s cannot be named in the web "
                                "client's Content-Security-Policy; the page will not use it",
                                url)
            app.router.add_get("/", self.index)
            app.router.add_get("/console/", self.console)
            app.router.add_get("/console", self.console)
            if WEB_DIR.exists():
                app.router.add_static("/static/", WEB_DIR)

        async def on_startup(_: web.Application) -> None:
            await self.start()

        async def on_shutdown(_: web.Application) -> None:
            await self.stop()

        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)
        self.metrics_listener = add_metrics(app, self.metrics.registry, self.cfg)
        # Last: its startup hook opens compliance (audit, 2FA) and needs self.accounts.
        admin_api.add_routes(app, self)
        return app


_HTTP_STATUS = {pb.ACCOUNT_LOCKED: 423, pb.REGISTRATION_DISABLED: 403, pb.CONFLICT: 409,
                pb.INVALID_ARGUMENT: 400, pb.UNAVAILABLE: 503, pb.FORBIDDEN: 403,
                pb.PASSWORD_EXPIRED: 403}


@web.middleware
async def _unavailable_as_503(request: web.Request, handler: Any) -> web.StreamResponse:
    """A backend outage is a 503 with a retry hint on every HTTP API, not a 500."""
    try:
        response: web.StreamResponse = await handler(request)
    except Unavailable as exc:
        log.warning("request failed, backend unavailable", extra={"path": request.path})
        return web.json_response({"error": "UNAVAILABLE", "message": str(exc),
                                  "retry_after_ms": 1000}, status=503,
                                 headers={"Retry-After": "1"})
    return response


def _api_error(err: RequestError, default: int) -> web.Response:
    body: dict[str, Any] = {"error": pb.ErrorCode.Name(err.code), "message": err.message,
                            "retry_after_ms": err.retry_after_ms}
    if err.code == pb.PASSWORD_EXPIRED:
        body.update(password_expired=True, change_password="/api/v1/password")
    return web.json_response(body, status=_HTTP_STATUS.get(err.code, default))

"""The ``tongxin`` command: serve, administer accounts, chat in a terminal."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from tongxin.config import Config, ConfigError, documented_keys, load_config, parse_listen

if TYPE_CHECKING:
    from aiohttp import web


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return int(uvloop.run(coro))


def _config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    if getattr(args, "listen", None):
        parse_listen(args.listen)
        cfg.server.listen = args.listen
    if getattr(args, "allow_registration", False):
        cfg.accounts.self_registration = True
    return cfg


def _password(args: argparse.Namespace, confirm: bool = False) -> str:
    if getattr(args, "password_stdin", False):
        # Byte by byte from the descriptor: a buffered readline would also take
        # the lines after the password, which `tongxin chat` then never sees.
        line = bytearray()
        while (ch := os.read(sys.stdin.fileno(), 1)) not in (b"", b"\n"):
            line += ch
        return line.decode().rstrip("\r")
    first = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != first:
        raise SystemExit("passwords differ")
    return first


# ---- serve ---------------------------------------------------------------------


async def _serve(cfg: Config, worker: int | None = None) -> int:
    from aiohttp import web

    from tongxin.logs import setup_logging
    from tongxin.server.node import Node, server_tls_context
    from tongxin.server.standby import StandbyNode

    setup_logging(cfg.logging.level, cfg.logging.json)
    if worker is not None:
        base = cfg.node_id or f"{socket.gethostname()}:{cfg.listen_address()[1]}"
        cfg.node_id = f"{base}/w{worker}"
    tls = server_tls_context(cfg)  # before anything starts: a bad file is a config error
    # A standby is its own small wiring that never writes (server/standby.py); promotion
    # is site.role: active and a restart.
    node: Node | StandbyNode = StandbyNode(cfg) if cfg.site.role == "standby" else Node(cfg)
    runner = http_runner(node.app(), cfg)
    await runner.setup()
    host, port = cfg.listen_address()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_port=worker is not None,
                       ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(f"tongxin: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    embedded = (cfg.storage.backend == "sqlite" and cfg.delivery.backend == "inprocess"
                and cfg.presence.backend == "memory")
    backends = ("embedded defaults" if embedded else
                f"storage {cfg.storage.backend}, delivery {cfg.delivery.backend}, "
                f"presence {cfg.presence.backend}")
    if isinstance(node, StandbyNode):
        backends = (f"standby of site {cfg.site.name or '(unnamed)'}: refusing users until "
                    "promoted")
    print(f"Tongxin {node.node_id} is running on {backends} "
          f"(data in {cfg.home.resolve()}).", flush=True)
    secure = "s" if tls is not None else ""
    print(f"  web client:  http{secure}://{shown}:{port}/", flush=True)
    print(f"  WebSocket:   ws{secure}://{shown}:{port}/ws", flush=True)
    print("  Press Ctrl+C to stop.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


def http_runner(app: web.Application, cfg: Config) -> web.AppRunner:
    # aiohttp's keep-alive timer also runs from the moment a connection opens,
    # and a request head that never completes leaves the connection idle: so
    # this one bound closes both a silent connection and a trickled request line.
    from aiohttp import web

    return web.AppRunner(app, access_log=None, handle_signals=False,
                         keepalive_timeout=cfg.server.http_idle_timeout)


def cmd_serve(args: argparse.Namespace) -> int:
    from tongxin.server.workers import check_workers, supervise, worker_index

    cfg = _config(args)
    check_workers(cfg)
    index = worker_index()
    if cfg.server.workers > 1 and index is None:
        return supervise(cfg, ["serve", *_argv(args)])
    return _run(_serve(cfg, index))


def _argv(args: argparse.Namespace) -> list[str]:
    out = []
    if args.config:
        out += ["--config", args.config]
    if args.listen:
        out += ["--listen", args.listen]
    if args.allow_registration:
        out.append("--allow-registration")
    return out


# ---- accounts ------------------------------------------------------------------


async def _with_accounts(cfg: Config, fn: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    from tongxin.atrest.records import load_or_create_secret
    from tongxin.auth.accounts import Accounts
    from tongxin.auth.tokens import KEY_BYTES, TokenSigner
    from tongxin.server.node import make_revocations, make_store

    store = make_store(cfg)
    await store.open()
    # Revocations go where the nodes look for them (Redis with many nodes).
    revocations = make_revocations(cfg)
    try:
        # Sealed at rest like the node keeps it (store.open() loaded the keyring).
        key = await load_or_create_secret(cfg.home / "secrets" / "token.key", KEY_BYTES,
                                          getattr(store, "keyring", None))
        return await fn(Accounts(store, TokenSigner(key), cfg.accounts, revocations))
    finally:
        await revocations.close()
        await store.close()


def cmd_user(args: argparse.Namespace) -> int:
    from tongxin.clock import now_ms
    from tongxin.errors import RequestError

    cfg = _config(args)
    if args.action != "list":
        _refuse_on_standby(cfg, f"tongxin user {args.action}")

    async def run(acc: Any) -> int:
        store = acc.store
        if args.action == "add":
            password = _password(args, confirm=True)
            try:
                user = await acc.create_user(args.username, password, args.display_name or "")
            except RequestError as err:
                print(f"tongxin: {err.message}", file=sys.stderr)
                return 1
            print(f"created {user.username} ({user.id})")
            return 0
        if args.action == "list":
            for u in await store.list_users():
                state = ("disabled" if u.disabled else
                         "locked" if u.locked_until > now_ms() else "active")
                print(f"{u.id}\t{u.username}\t{u.display_name}\t{state}")
            return 0
        user = await store.get_user_by_name(args.username.lower())
        if user is None:
            print(f"tongxin: no user {args.username!r}", file=sys.stderr)
            return 1
        if args.action == "disable":
            await store.set_disabled(user.id, True)
            n = await acc.revoke_user(user.id)
            print(f"disabled {user.username}; revoked {n} tokens")
        elif args.action == "enable":
            await store.set_disabled(user.id, False)
            print(f"enabled {user.username}")
        elif args.action == "unlock":
            await store.update_login_state(user.id, 0, 0, 0)
            print(f"unlocked {user.username}")
        elif args.action == "passwd":
            from tongxin.cli.compliance import _cli_actor

            password = _password(args, confirm=True)
            try:  # the policy; recorded in the password history; tokens revoked
                n = await acc.set_password(user, password, actor=_cli_actor(), via="cli",
                                           check_history=False)
            except RequestError as err:
                print(f"tongxin: {err.message}", file=sys.stderr)
                return 1
            print(f"password changed for {user.username}; revoked {n} tokens")
        elif args.action == "revoke-tokens":
            n = await acc.revoke_user(user.id)
            print(f"revoked {n} tokens of {user.username}")
        return 0

    async def audited(acc: Any) -> int:
        from tongxin.cli.compliance import _open, audit_cli_action

        comp = await _open(cfg)  # password changes and policy refusals are audited too
        acc.audit = comp.hook
        # The policy in force on the nodes: the security administrator's changes included.
        acc.cfg = await comp.account_policy(cfg.accounts)
        try:
            rc = await run(acc)
        finally:
            await comp.close()
        if args.action != "list":
            event = {"add": "create", "passwd": "reset_password"}.get(args.action, args.action)
            await audit_cli_action(cfg, f"user.{event.replace('-', '_')}", args.username, rc)
        return rc

    return _run(_with_accounts(cfg, audited))


def _refuse_on_standby(cfg: Config, what: str) -> None:
    """A standby's database is a read-only replica: commands that write belong on the active
    site (promote first to run them here)."""
    if cfg.site.role == "standby":
        raise ConfigError(f"site.role is standby: {what} writes to the database, which on a "
                          "standby site is a read-only replica; run it on an active site's node")


def cmd_migrate(args: argparse.Namespace) -> int:
    from tongxin.server.node import make_store

    cfg = _config(args)
    _refuse_on_standby(cfg, "tongxin migrate")

    async def run() -> int:
        store = make_store(cfg)
        await store.open()  # opening applies pending schema migrations
        await store.close()
        print(f"schema up to date ({cfg.storage.backend})")
        return 0

    return _run(run())


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "check":
        _config(args)
        print("configuration is valid")
        return 0
    for key, default, doc in documented_keys():
        print(f"{key}: {default!r}  # {doc}")
    return 0


def cmd_site(args: argparse.Namespace) -> int:
    """``tongxin site status``: this node's site and role, the database endpoint that
    answers and the replication lag, as JSON. Reads only (safe on a standby)."""
    import json

    cfg = _config(args)
    if args.action == "record":
        return _site_record(cfg, args)

    async def run() -> int:
        out: dict[str, Any] = {"site": cfg.site.name, "role": cfg.site.role,
                               "storage": cfg.storage.backend, "db_endpoint": None,
                               "db_endpoint_index": None, "newest_heartbeat": None,
                               "replication_lag_seconds": None}
        if cfg.storage.backend == "mysql":
            import time

            from tongxin.store.mysql_store import MysqlStore

            store = MysqlStore.from_dsn(cfg.storage.mysql_dsn, 1, cfg.storage.mysql_timeout)
            try:
                await store.connect()  # no migrations: this may be a read-only replica
                assert store.endpoints is not None
                current = store.endpoints.current
                out["db_endpoint"] = str(current) if current else None
                out["db_endpoint_index"] = store.endpoints.index
                newest = await store.newest_heartbeat()
            finally:
                await store.close()
            if newest is not None:
                node, site, beat_ms = newest
                out["newest_heartbeat"] = {"node": node, "site": site, "beat_ms": beat_ms}
                out["replication_lag_seconds"] = round(max(0.0, time.time() - beat_ms / 1000), 3)
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0

    return _run(run())


def _site_record(cfg: Config, args: argparse.Namespace) -> int:
    """``tongxin site record``: one DR operation into the audit trail (who, when,
    what, outcome), written through a serving node's configuration; a standby's
    database is a read-only replica, so there it is refused."""
    import json

    if not re.fullmatch(r"[a-z][a-z0-9_.-]{0,63}", args.event or ""):
        print("tongxin: --event must name the operation, e.g. dr.failover "
              "(lower-case letters, digits, . _ -)", file=sys.stderr)
        return 2
    try:
        details = json.loads(args.details)
    except ValueError as exc:
        print(f"tongxin: --details is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(details, dict):
        print("tongxin: --details must be a JSON object", file=sys.stderr)
        return 2
    if cfg.site.role != "active":
        print("tongxin: this node is on standby (its database is a read-only copy); "
              "record the operation on a node of a serving site", file=sys.stderr)
        return 1

    async def run() -> int:
        from tongxin.cli.compliance import _cli_actor, _open

        comp = await _open(cfg)
        try:
            rec = await comp.audit(args.event, actor=args.actor or _cli_actor(),
                                   outcome=args.outcome, source="dr", site=cfg.site.name,
                                   **{"operation": details})
        finally:
            await comp.close()
        print(json.dumps({"recorded": args.event, "seq": rec.seq}, ensure_ascii=False))
        return 0

    return _run(run())


DEFAULT_CHAT_URL = "ws://127.0.0.1:8080/ws"


def cmd_chat(args: argparse.Namespace) -> int:
    from tongxin.cli.chat import run_chat

    password = _password(args)
    return _run(run_chat(args.url or [DEFAULT_CHAT_URL], args.user, password,
                         register=args.register,
                         device_id=args.device, open_with=args.to, ca_file=args.ca_file,
                         e2ee_dir=args.e2ee, org_root=args.org_root))


# ---- parser --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tongxin", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="YAML configuration file (see docs/operations.md)")

    s = sub.add_parser("serve", help="run a node (embedded defaults without --config)")
    common(s)
    s.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8080)")
    s.add_argument("--allow-registration", action="store_true",
                   help="let people create their own accounts (accounts.self_registration)")
    s.set_defaults(func=cmd_serve)

    u = sub.add_parser("user", help="administer accounts")
    common(u)
    u.add_argument("action", choices=["add", "list", "disable", "enable", "unlock", "passwd",
                                      "revoke-tokens"])
    u.add_argument("username", nargs="?", default="")
    u.add_argument("--display-name")
    u.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    u.set_defaults(func=cmd_user)

    m = sub.add_parser("migrate", help="create or upgrade the database schema")
    common(m)
    m.set_defaults(func=cmd_migrate)

    c = sub.add_parser("config", help="print every configuration key, or check a file")
    common(c)
    c.add_argument("action", choices=["defaults", "check"])
    c.set_defaults(func=cmd_config)

    st = sub.add_parser("site", help="multi-site: this node's site, role, database endpoint "
                        "and replication lag")
    common(st)
    st.add_argument("action", choices=["status", "record"],
                    help="status: read only; record: write a DR operation (switchover, "
                         "failover, failback, drill) into the audit trail (an active node)")
    st.add_argument("--event", default="", help="record: the operation, e.g. dr.failover")
    st.add_argument("--outcome", default="ok", choices=["ok", "failed", "partial"],
                    help="record: how it ended")
    st.add_argument("--actor", default="", help="record: who ran it (default the CLI user)")
    st.add_argument("--details", default="{}",
                    help="record: a JSON object kept with the record (steps, timings, versions)")
    st.set_defaults(func=cmd_site)

    ch = sub.add_parser("chat", help="chat in the terminal")
    ch.add_argument("--url", action="append", default=[],
                    help="ws:// or, to a node serving TLS 1.3, wss://HOST:PORT/ws; several "
                    "entries (comma-separated, or --url again) are tried in order, and a "
                    f"dropped connection moves to the next (default {DEFAULT_CHAT_URL})")
    ch.add_argument("--ca-file", default="",
                    help="PEM CA bundle that signed the node's certificate (wss://; default: "
                    "the system CAs)")
    ch.add_argument("--user", required=True)
    ch.add_argument("--device", default="", help="device id (default: cli-<hostname>)")
    ch.add_argument("--register", action="store_true", help="create the account first")
    ch.add_argument("--to", default="", help="open a direct chat with this user at start")
    ch.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    ch.add_argument("--e2ee", default="", metavar="DIR",
                    help="end-to-end encrypt, with this device's keys kept in DIR (docs/e2ee.md); "
                    "a new device of a user with a user key opens the key backup with "
                    "$TONGXIN_KEY_BACKUP_PASSPHRASE")
    ch.add_argument("--org-root", default="",
                    help="with --e2ee: the organisation root's public key that vouches for the "
                    "escrow key (default $TONGXIN_ORG_ROOT, then /etc/tongxin/trust/org-root.pem)")
    ch.set_defaults(func=cmd_chat)

    from tongxin.cli.compliance import add_commands

    add_commands(sub, common)  # admin, audit, retention, export, report

    from tongxin.cli.keys import add_commands as add_keys_commands

    add_keys_commands(sub, common)  # keys init / status / rotate

    from tongxin.bundle.cli import add_commands as add_bundle_commands

    add_bundle_commands(sub)  # bundle verify / manifest / key

    from tongxin.cli.provision import add_commands as add_provision_commands

    add_provision_commands(sub)  # provision init / plan / apply / output / destroy

    from tongxin.cli.drill import add_commands as add_drill_commands

    add_drill_commands(sub)  # drill start / mark / wait / stop / report

    from tongxin.cli.dr_secrets import add_commands as add_dr_secrets_commands

    add_dr_secrets_commands(sub)  # dr-secrets keygen / seal / show / unseal

    from tongxin.cli.backup import add_commands as add_backup_commands

    add_backup_commands(sub, common)  # backup keygen / create / list / verify / restore
    return p


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What a backend that cannot be reached raises (redis only if it is installed)."""
    from tongxin.store.ports import Unavailable

    errors: tuple[type[BaseException], ...] = (Unavailable, ConnectionError)
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:
        return errors
    return (*errors, RedisConnectionError, RedisTimeoutError)


def _unreachable(args: argparse.Namespace, exc: BaseException) -> str:
    """One line naming the backend and address a command could not reach."""
    from tongxin.delivery.ports import BusStartTimeout

    if isinstance(exc, BusStartTimeout):  # its message names the brokers and the bound
        return f"tongxin: {exc}"
    try:
        cfg = _config(args) if hasattr(args, "config") else None
    except ConfigError:
        cfg = None
    if cfg is None:
        where = "the backend"
    elif type(exc).__module__.startswith("redis"):
        where = f"Redis ({cfg.presence.redis_nodes})"
    elif cfg.storage.backend == "mysql":
        from tongxin.store.dsn import parse_dsn

        try:
            dsn = parse_dsn(cfg.storage.mysql_dsn)
            where = f"the database (storage.backend mysql at {dsn.address})"
        except ValueError:
            where = "the database (storage.backend mysql)"
    else:
        where = f"the database (storage.backend {cfg.storage.backend} in {cfg.home})"
    # The exception text is the driver's reason (refused, timed out); never the DSN.
    return f"tongxin: cannot reach {where}: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"tongxin: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from tongxin.atrest.errors import AtRestError

        if isinstance(exc, AtRestError):  # a missing or unreadable master key, a tampered seal
            print(f"tongxin: {exc}", file=sys.stderr)
            return 1
        # A database or Redis that is down is an operating condition, not a bug: one
        # clear line and exit 2 instead of a traceback (docs/operations.md).
        if not isinstance(exc, _connection_errors()):
            raise
        print(_unreachable(args, exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures: real nodes on loopback sockets, real WebSocket clients."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tongxin.client import Client
from tongxin.config import Config, load_config
from tongxin.server.node import Node
from tongxin.store.ports import User


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(home: Path, **sections: dict[str, Any]) -> Config:
    """A config for tests: cheap scrypt, data under ``home``, overrides per section."""
    cfg = load_config()
    cfg.data_dir = str(home)
    cfg.server.listen = f"127.0.0.1:{free_port()}"
    cfg.server.gc_freeze = False
    cfg.server.metrics_listen = "127.0.0.1:0"  # any free port: nodes of a test run side by side
    cfg.accounts.scrypt_n = 1024
    cfg.accounts.self_registration = True
    cfg.logging.json = False
    for section, values in sections.items():
        target = getattr(cfg, section)
        for key, value in values.items():
            if not hasattr(target, key):
                raise AttributeError(f"{section}.{key}")
            setattr(target, key, value)
    return cfg


@dataclass
class RunningNode:
    node: Node
    runner: web.AppRunner
    cfg: Config
    clients: list[Client] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.cfg.listen_address()[1]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def metrics_url(self) -> str:
        """``/metrics`` lives on its own listener (server.metrics_listen), not ``http_url``."""
        listener = self.node.metrics_listener
        assert listener is not None and listener.port, "server.metrics_listen is off"
        return f"http://127.0.0.1:{listener.port}/metrics"

    async def client(self, device_id: str = "") -> Client:
        c = Client(self.ws_url, device_id=device_id)
        await c.connect()
        self.clients.append(c)
        return c

    async def user(self, username: str, password: str = "password-1",
                   device_id: str = "") -> Client:
        """Create the account if needed and return a logged-in client."""
        if await self.node.store.get_user_by_name(username) is None:
            await self.node.accounts.create_user(username, password)
        c = await self.client(device_id)
        await c.login(username, password)
        return c

    async def bulk_users(self, prefix: str, n: int) -> list[User]:
        """Many accounts at once, sharing one password hash (for size tests)."""
        template = await self.node.accounts.create_user(f"{prefix}0", "password-1")
        users = [template]
        created = await asyncio.gather(*(
            self.node.store.create_user(User(
                id=f"u_{prefix}{i:06d}", username=f"{prefix}{i}", display_name=f"{prefix}{i}",
                password_hash=template.password_hash, role="user",
                created_at=template.created_at))
            for i in range(1, n)))
        users.extend(created)
        return users

    async def stop(self) -> None:
        for c in self.clients:
            await c.close()
        await self.runner.cleanup()


async def start_node(cfg: Config, **parts: Any) -> RunningNode:
    """A node on ``cfg``, serving; ``parts``: Node's own (presence=, store=...)."""
    node = Node(cfg, **parts)
    runner = web.AppRunner(node.app(), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = cfg.listen_address()
    await web.TCPSite(runner, host, port).start()
    return RunningNode(node, runner, cfg)


NodeFactory = Callable[..., Any]


def audit_pubkeys(*homes: Path) -> list[str]:
    """``--pubkey`` arguments for the audit keys the tests' own nodes made in ``homes``: a
    test trusts them as an installation pins them (compliance.audit_trusted_keys)."""
    return [arg for home in homes for p in sorted((home / "audit-keys").glob("*.pem"))
            for arg in ("--pubkey", str(p))]


async def pin_and_sign(comp: Any) -> None:
    """Pin a Compliance's own audit key and sign (and anchor) its chain head, so that
    ``comp.verify()`` has a trusted key and a head to check the chain against."""
    comp.cfg.compliance.audit_trusted_keys = comp.keys.current_fingerprint() or ""
    await comp.sign_head(force=True)


@pytest.fixture
async def node_factory(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """``await node_factory(server={...}, chat={...})`` starts a node; all stop at teardown."""
    started: list[RunningNode] = []

    async def make(home: Path | None = None, **sections: dict[str, Any]) -> RunningNode:
        cfg = make_config(home or tmp_path / f"node{len(started)}", **sections)
        running = await start_node(cfg)
        started.append(running)
        return running

    yield make
    for running in reversed(started):
        await running.stop()


@pytest.fixture
async def server(node_factory: NodeFactory) -> RunningNode:
    """One node on embedded defaults."""
    running: RunningNode = await node_factory()
    return running

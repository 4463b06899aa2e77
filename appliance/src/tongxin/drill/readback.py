"""Reading the drill's conversations back after the failover, and the servers' versions.

Every conversation is read by one of its members, logged in through the first
entry that answers, with SYNC from seq 0 to the end: the log as the surviving
(or promoted) site holds it, which the checker compares with the ACKs.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tongxin.client import Client, ConnectionClosed, TongxinError, client_tls_context, pb
from tongxin.client.files import http_base
from tongxin.drill.files import DrillConversation, DrillState

NETWORK_ERRORS = (ConnectionClosed, TimeoutError, aiohttp.ClientError, OSError)


class ReadBackError(Exception):
    """A conversation could not be read through any entry: nothing can be concluded."""


@dataclass
class ReadBack:
    logs: dict[str, list[pb.Message]] = field(default_factory=dict)  # CHAT entries by conversation
    stored: int = 0  # every entry read, system events included
    readers: dict[str, str] = field(default_factory=dict)  # username -> entry it read through
    seconds: float = 0.0


def _readers(conversations: list[DrillConversation]) -> dict[str, list[DrillConversation]]:
    """Few logins: each conversation goes to its first member already reading, else its first."""
    plan: dict[str, list[DrillConversation]] = {}
    for c in conversations:
        reader = next((m for m in c.members if m in plan), c.members[0])
        plan.setdefault(reader, []).append(c)
    return plan


async def read_back(state: DrillState, entries: list[str], password: str, ca_file: str = "",
                    within: float = 60.0, say: Callable[[str], None] = print) -> ReadBack:
    """Every drill conversation through ``entries``; retries for ``within`` seconds (the
    site may still be coming up), then raises ReadBackError."""
    t0 = time.monotonic()
    out = ReadBack()
    deadline = t0 + within
    for username, convs in _readers(state.conversations).items():
        last = ""
        done = False
        while not done:
            for url in entries:
                try:
                    await _read_as(url, username, password, ca_file, convs, out)
                except (TongxinError, *NETWORK_ERRORS) as exc:
                    last = f"{url}: {type(exc).__name__}: {exc}"
                    continue
                out.readers[username] = url
                done = True
                break
            if not done:
                if time.monotonic() > deadline:
                    raise ReadBackError(f"cannot read the conversations of {username} through "
                                        f"{', '.join(entries)} (last: {last})")
                await asyncio.sleep(1.0)
    out.seconds = time.monotonic() - t0
    say(f"read back {len(state.conversations)} conversations ({out.stored} entries) as "
        f"{len(out.readers)} users in {out.seconds:.1f} s")
    return out


async def _read_as(url: str, username: str, password: str, ca_file: str,
                   convs: list[DrillConversation], out: ReadBack) -> None:
    async with Client(url, device_id=f"drill-report-{username}", client_name="tongxin-drill",
                      ca_file=ca_file) as c:
        await c.login(username, password)
        logs: dict[str, list[pb.Message]] = {}
        stored = 0
        for conv in convs:
            entries = await c.sync_all(conv.conversation_id)
            stored += len(entries)
            # System events (created, members) have no client_msg_id: not the checker's.
            logs[conv.conversation_id] = [m for m in entries if m.kind == pb.CHAT]
    out.logs.update(logs)
    out.stored += stored


async def server_versions(entries: list[str], ca_file: str = "",
                          within: float = 5.0) -> dict[str, dict[str, Any]]:
    """``GET /healthz`` of each entry: its version and node, or why it did not answer."""
    ctx: ssl.SSLContext | None = client_tls_context(ca_file) if ca_file else None
    out: dict[str, dict[str, Any]] = {}
    conn = aiohttp.TCPConnector(ssl=ctx) if ctx is not None else None
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=within)) as http:
        for url in entries:
            try:
                async with http.get(http_base(url) + "/healthz") as r:
                    body = await r.json(content_type=None)
                out[url] = {"version": str(body.get("version", "")),
                            "node": str(body.get("node", ""))}
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError) as exc:
                out[url] = {"error": f"{type(exc).__name__}: {exc}"}
    return out

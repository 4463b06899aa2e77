"""Clients through the VIP while nodes are added and retired, counting every failure.

    scale_loop.py URL CAFILE USER STATUS STOP   (the user's password on stdin)

URL is the site's https:// entry point. Runs until the file STOP exists (or
for MAX_SECONDS, should the scenario end without creating it) and
rewrites STATUS (JSON) twice a second, a last time with "stopped": true:

- HTTP: GET /readyz every 0.2 s on a new connection; any answer but 200 or
  any connection error is a failure. Counts which node answered (its body).
- WebSocket: a new client logs in every WS_EVERY s and PINGs once a second
  for WS_LIFETIME s, then closes, so that about thirty are open and new ones
  reach a node that was just added. A close with 1001 (going away: the node
  is shutting down) is a move: the client logs in again on a new connection
  through the VIP at once, and that first attempt must succeed. A close
  without a frame (1006) is a move too, listed under "abrupt". Any other
  close, error or failed PING is a failure.

The nodes of the test have a database each, so a moved client logs in again
with its password rather than resuming with its token (the user exists on
every node).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from pathlib import Path

import aiohttp
from tongxin.client import Client

WS_EVERY = 1.0
WS_LIFETIME = 30.0
MAX_SECONDS = 900
GOING_AWAY = 1001
ABNORMAL = 1006  # the connection ended without a close frame


class Loop:
    def __init__(self, url: str, cafile: str, user: str, password: str) -> None:
        self.url = url.rstrip("/")
        self.ws_url = self.url.replace("https://", "wss://", 1) + "/ws"
        self.cafile = cafile
        self.user, self.password = user, password
        self.ssl = ssl.create_default_context(cafile=cafile)
        self.http_ok = 0
        self.nodes: dict[str, int] = {}
        self.failures: list[str] = []
        self.ws_open = 0
        self.moves: dict[str, int] = {}  # device: 1001 (or 1006) closes it reconnected from
        self.abrupt: list[str] = []  # the moves that began with 1006, not 1001
        self.started = time.time()

    def fail(self, what: str) -> None:
        self.failures.append(f"{time.time() - self.started:.1f}s {what}")

    async def http(self, stop: asyncio.Event) -> None:
        # force_close: a new connection per request, as new clients arrive
        connector = aiohttp.TCPConnector(ssl=self.ssl, force_close=True)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3), connector=connector) as session:
            while not stop.is_set():
                try:
                    async with session.get(self.url + "/readyz") as resp:
                        body = await resp.json(content_type=None)
                        if resp.status == 200:
                            self.http_ok += 1
                            node = str(body.get("node", "?"))
                            self.nodes[node] = self.nodes.get(node, 0) + 1
                        else:
                            self.fail(f"HTTP {resp.status} {body}")
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    self.fail(f"HTTP {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.2)

    async def login(self, device: str) -> Client:
        client = Client(self.ws_url, device_id=device, ca_file=self.cafile, reconnect=False)
        await client.connect()
        await client.login(self.user, self.password)
        return client

    async def ws(self, device: str, stop: asyncio.Event) -> None:
        try:
            client = await self.login(device)
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            self.fail(f"{device} login: {type(exc).__name__}: {exc}")
            return
        self.ws_open += 1
        end = time.monotonic() + WS_LIFETIME
        try:
            while not stop.is_set() and time.monotonic() < end:
                await asyncio.sleep(1.0)
                if not client.closed:
                    try:
                        await asyncio.wait_for(client.ping(), 5)
                        continue
                    except Exception as exc:  # noqa: BLE001
                        if client.close_code != GOING_AWAY:
                            self.fail(f"{device} ping: {type(exc).__name__}: {exc} (close {client.close_code})")
                            return
                if client.close_code not in (GOING_AWAY, ABNORMAL):
                    self.fail(f"{device} closed with {client.close_code}")
                    return
                if client.close_code == ABNORMAL:
                    # Seen once beside the whole suite (CI load): every socket of the
                    # stopped node ended without the 1001 frame. Clients reconnect on
                    # either; the count is reported so that it is not hidden.
                    self.abrupt.append(f"{time.time() - self.started:.1f}s {device}")
                await client.close()
                try:
                    client = await self.login(device)
                except Exception as exc:  # noqa: BLE001
                    self.fail(f"{device} reconnect after 1001: {type(exc).__name__}: {exc}")
                    return
                self.moves[device] = self.moves.get(device, 0) + 1
        finally:
            self.ws_open -= 1
            await client.close()

    def status(self, stopped: bool = False) -> dict:
        return {"stopped": stopped, "seconds": round(time.time() - self.started, 1), "http_ok": self.http_ok, "nodes": self.nodes,
                "ws_open": self.ws_open, "moves": self.moves, "abrupt": self.abrupt,
                "failures": self.failures}


async def main(argv: list[str]) -> int:
    url, cafile, user, status_path, stop_path = argv[1:6]
    loop = Loop(url, cafile, user, sys.stdin.readline().rstrip("\n"))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(loop.http(stop))]
    status = Path(status_path)
    n = 0
    next_ws = 0.0
    while not os.path.exists(stop_path) and time.time() - loop.started < MAX_SECONDS:
        if time.monotonic() >= next_ws:
            n += 1
            next_ws = time.monotonic() + WS_EVERY
            tasks.append(asyncio.create_task(loop.ws(f"scale-{n}", stop)))
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(loop.status()))
        tmp.replace(status)
        await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    status.write_text(json.dumps(loop.status(stopped=True)))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))

"""Checks of one installation over two active sites, through their entry points.

Runs on the controller with the tongxin SDK of the repository's venv; each
mode prints one JSON line and exits non-zero when its check fails.

    multisite_check.py cross URL_DC1 URL_DC2 USER_A USER_B
        A logs in through dc1, B through dc2 (one account set: the shared
        database). A sends to B and B to A; each must get the other's
        message as a DELIVER push (real time across sites, not a SYNC).
    multisite_check.py send URL USER_A USER_B
        A sends one message to B through URL and prints its ACK
        (conversation, seq, client_msg_id) as soon as it arrives.
    multisite_check.py read URL USER_B CONVERSATION SEQ CLIENT_MSG_ID
        B logs in through URL and reads the conversation back: the entry at
        SEQ must be the one with CLIENT_MSG_ID (the ACKed message survived).
    multisite_check.py load URL_DC1 URL_DC2 USER_A USER_B SECONDS RATE READYZ_URL
        A modest steady load (RATE messages per second, alternating entry
        points) for SECONDS while the DR node's /readyz (READYZ_URL, which
        reports replication_lag_seconds) is sampled every second; prints the
        ACK count, the largest lag seen and the last ACK, so the caller can
        look it up in the DR database.

Passwords come on stdin, one per line, in the order of the users named.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

import aiohttp

from tongxin.client import Client, pb


async def _login(url: str, user: str, password: str, device: str) -> Client:
    c = Client(url, device_id=device)
    await c.connect()
    await c.login(user, password)
    return c


async def _wait_deliver(c: Client, conversation_id: str, seq: int, wait: float) -> pb.Message:
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no DELIVER of seq {seq} within {wait:g} s")
        event = await c.next_event(pb.DELIVER, wait=left)
        m = event.message
        if m.conversation_id == conversation_id and m.seq >= seq:
            return m


async def cross(url1: str, url2: str, user_a: str, user_b: str, pw_a: str, pw_b: str) -> dict[str, Any]:
    a = await _login(url1, user_a, pw_a, "ms-a")
    b = await _login(url2, user_b, pw_b, "ms-b")
    try:
        conv = await a.direct(user_b)
        out: dict[str, Any] = {"conversation": conv.conversation_id}
        ok = True
        for name, sender, receiver in (("dc1_to_dc2", a, b), ("dc2_to_dc1", b, a)):
            text = f"跨站点 {name} {uuid.uuid4().hex[:8]}"
            started = time.monotonic()
            ack = await sender.send_text(conv.conversation_id, text)
            got = await _wait_deliver(receiver, conv.conversation_id, ack.seq, 30.0)
            ms = round((time.monotonic() - started) * 1000, 1)
            same = got.seq == ack.seq and got.content.text == text
            ok = ok and same
            out[name] = {"seq": ack.seq, "deliver_ms": ms, "same": same}
        out["ok"] = ok
        return out
    finally:
        await a.close()
        await b.close()


async def send(url: str, user_a: str, user_b: str, pw_a: str) -> dict[str, Any]:
    a = await _login(url, user_a, pw_a, "ms-send")
    try:
        conv = await a.direct(user_b)
        cmid = uuid.uuid4().hex
        ack = await a.send_text(conv.conversation_id, f"ACK 之后断电 {cmid[:8]}", client_msg_id=cmid)
        return {"ok": ack.seq > 0, "conversation": conv.conversation_id, "seq": ack.seq,
                "client_msg_id": cmid, "acked_at": time.time()}
    finally:
        await a.close()


async def read(url: str, user_b: str, pw_b: str, conversation_id: str, seq: int,
               client_msg_id: str) -> dict[str, Any]:
    # The surviving site may still be settling (the lost member's sockets
    # time out, nodes move to the next database endpoint): retry for a while,
    # as a client would.
    deadline = time.monotonic() + 90
    last_error = ""
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            b = await _login(url, user_b, pw_b, "ms-read")
            try:
                history = await b.sync_all(conversation_id)
            finally:
                await b.close()
            found = [m for m in history if m.seq == seq]
            ok = bool(found) and found[0].client_msg_id == client_msg_id
            return {"ok": ok, "seq": seq, "found": bool(found),
                    "client_msg_id": found[0].client_msg_id if found else "",
                    "history": len(history), "read_after_s": round(time.monotonic() - started, 1)}
        except Exception as exc:  # noqa: BLE001 - any failure is retried, the last one reported
            last_error = repr(exc)
            await asyncio.sleep(2)
    return {"ok": False, "error": last_error}


async def _sample_lag(readyz: str, samples: list[float | None], stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
        while not stop.is_set():
            lag: float | None = None
            try:
                async with http.get(readyz) as r:
                    lag = (await r.json()).get("replication_lag_seconds")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                lag = None
            samples.append(lag)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass


async def load(url1: str, url2: str, user_a: str, user_b: str, pw_a: str, pw_b: str,
               seconds: float, rate: float, readyz: str) -> dict[str, Any]:
    a = await _login(url1, user_a, pw_a, "ms-load-a")
    b = await _login(url2, user_b, pw_b, "ms-load-b")
    acked = 0
    errors = 0
    last: dict[str, Any] = {}
    samples: list[float | None] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_lag(readyz, samples, stop))
    try:
        conv = await a.direct(user_b)
        interval = 1.0 / rate
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            sender = a if i % 2 == 0 else b
            cmid = uuid.uuid4().hex
            try:
                ack = await sender.send_text(conv.conversation_id, f"load {i}", client_msg_id=cmid)
                acked += 1
                last = {"conversation": conv.conversation_id, "seq": ack.seq, "client_msg_id": cmid,
                        "acked_at": time.time()}
            except Exception:  # noqa: BLE001 - counted; the check fails on any
                errors += 1
            i += 1
            await asyncio.sleep(interval)
    finally:
        stop.set()
        await sampler
        await a.close()
        await b.close()
    known = [x for x in samples if x is not None]
    # Every sample must have a figure: a lag the standby cannot tell is no
    # better than a large one.
    return {"ok": errors == 0 and acked > 0 and bool(known) and len(known) == len(samples),
            "acked": acked, "errors": errors, "last": last, "lag_samples": len(samples),
            "lag_unknown": len(samples) - len(known), "lag_max_s": max(known) if known else None}


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    pws = sys.stdin.read().splitlines()
    if mode == "cross":
        result = asyncio.run(cross(args[0], args[1], args[2], args[3], pws[0], pws[1]))
    elif mode == "send":
        result = asyncio.run(send(args[0], args[1], args[2], pws[0]))
    elif mode == "read":
        result = asyncio.run(read(args[0], args[1], pws[0], args[2], int(args[3]), args[4]))
    elif mode == "load":
        result = asyncio.run(load(args[0], args[1], args[2], args[3], pws[0], pws[1],
                                  float(args[4]), float(args[5]), args[6]))
    else:
        print(json.dumps({"ok": False, "error": f"unknown mode {mode}"}))
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

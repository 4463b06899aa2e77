"""The floor of a relay on this stack: aiohttp and the Tongxin wire format, nothing else.

``relay_bench.py --scenario bare-relay`` starts it in its own process
(``relay_bench.py --bare-relay-server PORT``) and drives it with the same
generator as ``tongxin serve``: REGISTER answers AUTH_OK, CONV_CREATE
answers CONV_INFO, and each SEND is decoded, answered with an ACK and
pushed to the other member's connections as a DELIVER, exactly the frames
the real node sends. What it leaves out is everything the node adds to
that: accounts and tokens, rate limits, storage and its fsync, sealing at
rest, the delivery bus, presence, metrics and the audit trail. The issue's
target is for ``tongxin serve`` to reach at least half of this figure.

No state survives a connection (a benchmark server, never a product).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from tongxin.proto import tongxin_pb2 as pb
from tongxin.wire.codec import Decoder, Encoder, WireLimits
from tongxin.wire.frame import HEADER, HEADER_SIZE, VERSION, decode_frame

HOST = "127.0.0.1"


class Relay:
    def __init__(self, limits: WireLimits) -> None:
        self.limits = limits
        self.ids = itertools.count(1)
        self.conns: dict[str, set[web.WebSocketResponse]] = defaultdict(set)
        self.members: dict[str, tuple[str, str]] = {}
        self.seqs: dict[str, int] = defaultdict(int)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, autoping=True, heartbeat=None,
                                   max_msg_size=2 * self.limits.max_frame_payload)
        await ws.prepare(request)
        encoder, decoder = Encoder(self.limits), Decoder(self.limits)
        user = ""
        out_seq = itertools.count(1)

        def frame(ftype: int, seq: int, payload: bytes) -> bytes:
            return encoder.encode(ftype, seq, payload)[0]

        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                data = msg.data
                version, ftype, seq, flags, length = HEADER.unpack_from(data)
                if version == VERSION and not flags and length == len(data) - HEADER_SIZE:
                    payload = data[HEADER_SIZE:]
                else:
                    whole = decoder.feed(decode_frame(data, self.limits.max_frame_payload))
                    if whole is None:
                        continue
                    ftype, seq, payload = whole.type, whole.seq, whole.payload
                if ftype == pb.SEND:
                    req = pb.SendRequest.FromString(payload)
                    conv = req.conversation_id
                    self.seqs[conv] += 1
                    entry = self.seqs[conv]
                    now = int(time.time() * 1000)
                    await ws.send_bytes(frame(pb.ACK, seq, pb.Ack(
                        conversation_id=conv, client_msg_id=req.client_msg_id, seq=entry,
                        sent_at_ms=now).SerializeToString()))
                    deliver = pb.Message(conversation_id=conv, seq=entry, sender_id=user,
                                         client_msg_id=req.client_msg_id, sent_at_ms=now,
                                         kind=pb.CHAT, content=req.content).SerializeToString()
                    for member in self.members.get(conv, ()):
                        if member == user:
                            continue
                        for peer in list(self.conns[member]):
                            await peer.send_bytes(frame(pb.DELIVER, next(out_seq), deliver))
                elif ftype == pb.REGISTER:
                    user = f"u_{next(self.ids):020x}"
                    self.conns[user].add(ws)
                    await ws.send_bytes(frame(pb.AUTH_OK, seq, pb.AuthResponse(
                        user_id=user, username=pb.RegisterRequest.FromString(payload).username,
                        max_frame_payload=self.limits.max_frame_payload).SerializeToString()))
                elif ftype == pb.CONV_CREATE:
                    req_c = pb.CreateConversation.FromString(payload)
                    conv = f"d:{user}:{req_c.member_ids[0]}"
                    self.members[conv] = (user, req_c.member_ids[0])
                    await ws.send_bytes(frame(pb.CONV_INFO, seq, pb.Conversation(
                        conversation_id=conv, kind=pb.DIRECT,
                        peer_id=req_c.member_ids[0]).SerializeToString()))
                elif ftype == pb.PING:
                    await ws.send_bytes(frame(pb.PONG, seq, pb.Pong().SerializeToString()))
        finally:
            if user:
                self.conns[user].discard(ws)
        return ws


async def serve_until_stopped(app: web.Application, port: int) -> int:
    """Serve ``app`` on HOST:port (with GET /readyz for the bench to wait on) until
    SIGINT or SIGTERM. The echo server of relay_bench.py serves through it too."""

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


def main(port: int, limits: WireLimits, run: Callable[[Coroutine[Any, Any, int]], int]) -> int:
    relay = Relay(limits)
    app = web.Application()
    app.router.add_get("/ws", relay.handle)
    return run(serve_until_stopped(app, port))

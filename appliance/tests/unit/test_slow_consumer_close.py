"""A slow consumer is told why it is dropped: close 4008, never 1000 with no reason.

The queue overflow decides the close; before the fix it only scheduled it, and
the reader loop, seeing ``closing`` set while that task had not reached the
socket yet, ended the handler, whose fallback ``ws.close()`` sent 1000 first.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from conftest import NodeFactory  # type: ignore[import-not-found, unused-ignore]

from tongxin.proto import tongxin_pb2 as pb
from tongxin.wire import closecodes
from tongxin.wire.codec import Encoder, WireLimits


def _pings(first: int, n: int) -> list[bytes]:
    enc = Encoder(WireLimits())
    return [f for seq in range(first, first + n)
            for f in enc.encode(pb.PING, seq, pb.Ping(client_time_ms=seq).SerializeToString())]


@pytest.mark.parametrize("attempt", range(5))
async def test_overflow_closes_with_4008_and_a_reason(node_factory: NodeFactory,
                                                      attempt: int) -> None:
    node = await node_factory(server={"send_queue_frames": 4})
    async with aiohttp.ClientSession() as http, http.ws_connect(node.ws_url) as ws:
        seq = 1
        # PINGs are answered before AUTH; each burst replies faster than the
        # queue of 4 drains (nothing is read), and later frames arrive while
        # the overflow's close is still on its way.
        for burst in range(20):
            for frame in _pings(seq, 8 + burst % 3):
                await ws.send_bytes(frame)
                seq += 1
            await asyncio.sleep(0)
        async with asyncio.timeout(10):
            msg = await ws.receive()
            while msg.type == aiohttp.WSMsgType.BINARY:
                msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    assert (msg.data, msg.extra) == (closecodes.SLOW_CONSUMER, "send queue full")

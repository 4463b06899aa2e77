"""When a WebSocket message's bytes came off the socket.

aiohttp parses the bytes of a read inside the protocol's ``data_received``
callback, right after the event loop took them off the socket, and queues
each complete message for the handler. A connection handles its frames one
at a time, so under load a message can wait in that queue behind its
connection's earlier frames, and every message waits while the loop is busy
elsewhere. ``tongxin_ack_latency_seconds`` is to include those waits, so it
starts from a stamp taken when the message is queued, not when the handler
gets to it.

``ArrivalWebSocketResponse`` is aiohttp's ``WebSocketResponse`` with a queue
that records ``time.perf_counter()`` for each binary message it is fed, and
``pop_arrival()`` gives the reader the stamp of the next one it took.
It replaces ``_post_start`` (where aiohttp creates the queue and the parser),
a private method of the pinned aiohttp (3.14): tests/unit/test_ws_arrival.py
fails if an upgrade stops the stamping.

Not seen by any stamp: time the bytes spent in the kernel's socket buffer
before the loop read them (a loop blocked by a long callback or a garbage
collection), which ``tongxin_event_loop_lag_seconds`` shows; and while
aiohttp's queue is full (128 KiB of unread messages) parsing stops, and
messages parsed when it resumes are stamped then.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue
from aiohttp.helpers import DEFAULT_CHUNK_SIZE
from aiohttp.http import WebSocketReader
from aiohttp.web_request import BaseRequest

_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE


class ArrivalQueue(WebSocketDataQueue):  # type: ignore[misc,unused-ignore]
    """aiohttp's message queue, keeping the arrival time of each binary message.

    Every binary message goes in through ``feed_data`` and comes out of
    ``receive()`` to the one reader of the connection, in order, so the stamps
    are a FIFO of their own that the reader pops (``pop_arrival``). Only
    binary messages are stamped: ``receive()`` consumes control frames itself.
    Only ``feed_data`` is overridden (~0.3 us a message; wrapping ``read`` as
    well cost three times that). A list, not a deque: it holds nothing or a few
    stamps, and an empty deque costs ~600 bytes per connection.
    """

    __slots__ = ("close_queued", "stamps")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stamps: list[float] = []
        # The peer's close frame has arrived, though the reader, busy with an
        # earlier frame, may not have taken it yet (peer_closed).
        self.close_queued = False

    def feed_data(self, data: Any, size: int) -> None:
        kind = data[0]
        if kind is _BINARY:
            self.stamps.append(time.perf_counter())
        elif kind is _CLOSE:
            self.close_queued = True
        super().feed_data(data, size)


class ArrivalWebSocketResponse(web.WebSocketResponse):
    def _post_start(self, request: BaseRequest, protocol: str | None, writer: Any) -> None:
        # aiohttp 3.14.5's _post_start, with ArrivalQueue for WebSocketDataQueue.
        self._ws_protocol = protocol
        self._writer = writer
        self._reset_heartbeat()
        loop = self._loop
        assert loop is not None
        self._reader = ArrivalQueue(request._protocol, DEFAULT_CHUNK_SIZE, loop=loop)
        self._parser = WebSocketReader(self._reader, self._max_msg_size,
                                       compress=bool(self._compress),
                                       decode_text=self._decode_text)
        cb = None if self._heartbeat is None else self._on_data_received
        request.protocol.set_parser(self._parser, data_received_cb=cb)
        request.protocol.keep_alive(False)

    def peer_closed(self) -> bool:
        """The peer's close frame has arrived (queued or read). A connection whose
        handler is still at an earlier frame (an AUTH waiting for its turn) learns
        from it that the work would answer nobody."""
        reader = self._reader
        return self.closed or (isinstance(reader, ArrivalQueue) and reader.close_queued)

    def pop_arrival(self) -> float:
        """``perf_counter()`` when the oldest binary message not yet accounted for was
        queued: call it once for each binary message ``receive()`` returns."""
        reader = self._reader
        if isinstance(reader, ArrivalQueue) and reader.stamps:
            return float(reader.stamps.pop(0))
        return time.perf_counter()

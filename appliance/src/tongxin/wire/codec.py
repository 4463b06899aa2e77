"""Message <-> frames: zstd compression and fragmentation on top of the header.

Both directions use the same rules (docs/protocol.md, "Compression" and
"Fragmentation"):

* a payload of at least ``compression_threshold`` bytes is zstd-compressed
  when that makes it smaller, and FLAG_COMPRESSED is set;
* a (possibly compressed) payload larger than ``max_frame_payload`` is cut
  into pieces sent as consecutive frames with the same type and seq, each
  with FLAG_FRAGMENT, the last also with FLAG_FINAL. Fragments of one message
  are never interleaved with other frames from the same sender.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from tongxin.proto import tongxin_pb2 as pb
from tongxin.wire.frame import (
    FLAG_COMPRESSED,
    FLAG_FINAL,
    FLAG_FRAGMENT,
    Frame,
    FrameError,
    encode_frame,
)

ZSTD_LEVEL = 3


@dataclass(frozen=True, slots=True)
class WireLimits:
    max_frame_payload: int = 64 * 1024
    max_message_size: int = 8 * 1024 * 1024
    compression_threshold: int = 1024
    fragment_timeout: float = 30.0


class Encoder:
    """Turns (type, seq, payload) into one or more ready-to-send frames."""

    def __init__(self, limits: WireLimits) -> None:
        self.limits = limits
        # zstd contexts are not thread-safe but are reusable; one per encoder
        # avoids re-allocating ~1 MB of compression state per message.
        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)

    def encode(self, ftype: int, seq: int, payload: bytes) -> list[bytes]:
        flags = 0
        if len(payload) >= self.limits.compression_threshold:
            packed = self._cctx.compress(payload)
            if len(packed) < len(payload):
                payload, flags = packed, FLAG_COMPRESSED
        limit = self.limits.max_frame_payload
        if len(payload) <= limit:
            return [encode_frame(ftype, seq, flags, payload)]
        frames = []
        for start in range(0, len(payload), limit):
            last = start + limit >= len(payload)
            fflags = flags | FLAG_FRAGMENT | (FLAG_FINAL if last else 0)
            frames.append(encode_frame(ftype, seq, fflags, payload[start : start + limit]))
        return frames


def decompress(data: bytes, max_size: int, seq: int = 0) -> bytes:
    """Decompress a payload that must be exactly one whole zstd frame, refusing
    to inflate past ``max_size`` (a decompression bomb costs no memory).

    Our encoders declare the content size in the frame header, so the usual
    path checks that size against the cap and decompresses once (libzstd
    refuses output that disagrees with the declared size). A frame without a
    declared size is read in bounded chunks instead.
    """
    try:
        declared = zstandard.get_frame_parameters(data).content_size
        if declared != zstandard.CONTENTSIZE_UNKNOWN:
            if declared > max_size:
                raise FrameError(pb.PAYLOAD_TOO_LARGE,
                                 f"decompressed payload exceeds {max_size} bytes", seq=seq)
            dobj = _DCTX.decompressobj()
            out = dobj.decompress(data)
            complete = dobj.eof and not dobj.unused_data
        else:
            out, complete = _decompress_unsized(data, max_size, seq)
    except zstandard.ZstdError as exc:
        raise FrameError(pb.BAD_COMPRESSION, f"corrupt zstd payload: {exc}", seq=seq) from exc
    if not complete:
        # A truncated frame, or bytes after it, must not pass as a shorter message.
        raise FrameError(
            pb.BAD_COMPRESSION, "zstd payload is not exactly one complete zstd frame", seq=seq
        )
    return out


_DCTX = zstandard.ZstdDecompressor()
_CHUNK = 64 * 1024


def _decompress_unsized(data: bytes, max_size: int, seq: int) -> tuple[bytes, bool]:
    reader = _DCTX.stream_reader(io.BytesIO(data))
    parts: list[bytes] = []
    total = 0
    while chunk := reader.read(_CHUNK):
        total += len(chunk)
        if total > max_size:
            raise FrameError(
                pb.PAYLOAD_TOO_LARGE, f"decompressed payload exceeds {max_size} bytes", seq=seq
            )
        parts.append(chunk)
    # The stream reader stops quietly at the end of the input; a second,
    # bounded-by-now pass tells whether the frame was whole.
    check = _DCTX.decompressobj()
    check.decompress(data)
    return b"".join(parts), bool(check.eof and not check.unused_data)


@dataclass(slots=True)
class _Partial:
    type: int
    seq: int
    flags: int
    started: float
    chunks: list[bytes]
    size: int


class FragmentBudget:
    """Bytes of unfinished fragmented messages held by all the decoders of one server.

    Each connection may hold up to max_message_size; many connections doing so
    at once would hold the sum. The budget bounds that sum.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0


class Decoder:
    """Reassembles fragments and decompresses, yielding whole messages.

    One decoder per connection direction. At most one fragmented message is
    in progress at a time, since fragments are never interleaved. Call
    :meth:`reset` when the connection ends, so a shared budget gets its bytes back.
    """

    def __init__(self, limits: WireLimits, clock: Callable[[], float] = time.monotonic,
                 budget: FragmentBudget | None = None) -> None:
        self.limits = limits
        self._clock = clock
        self._partial: _Partial | None = None
        self._budget = budget

    @property
    def pending_since(self) -> float | None:
        return self._partial.started if self._partial else None

    @property
    def pending_seq(self) -> int:
        """Seq of the fragmented message in progress, 0 if none."""
        return self._partial.seq if self._partial else 0

    def expired(self) -> bool:
        p = self._partial
        return p is not None and self._clock() - p.started > self.limits.fragment_timeout

    def reset(self) -> None:
        if self._partial is not None and self._budget is not None:
            self._budget.held -= self._partial.size
        self._partial = None

    def feed(self, frame: Frame, max_size: int | None = None) -> Frame | None:
        """Return the whole message once complete, None while fragments are pending.

        ``max_size`` lowers the bound on a fragmented message (the server uses
        it before a connection has authenticated).
        """
        limit = self.limits.max_message_size if max_size is None else max_size
        p = self._partial
        if p is not None and self.expired():
            self.reset()
            raise FrameError(
                pb.FRAGMENT_TIMEOUT,
                f"fragments of seq {p.seq} did not complete within "
                f"{self.limits.fragment_timeout:g}s",
                seq=p.seq, fatal=True,
            )
        if not frame.flags & FLAG_FRAGMENT:
            if p is not None:
                self.reset()
                raise FrameError(
                    pb.FRAGMENT_ERROR,
                    f"unfragmented frame seq {frame.seq} arrived inside fragmented seq {p.seq}",
                    seq=frame.seq, fatal=True,
                )
            return self._finish(frame.type, frame.seq, frame.flags, frame.payload)
        if p is None:
            p = self._partial = _Partial(frame.type, frame.seq, frame.flags, self._clock(), [], 0)
        elif (frame.seq, frame.type) != (p.seq, p.type) or (
            frame.flags & FLAG_COMPRESSED
        ) != (p.flags & FLAG_COMPRESSED):
            self.reset()
            raise FrameError(
                pb.FRAGMENT_ERROR,
                f"fragment seq {frame.seq} type {frame.type} does not continue "
                f"seq {p.seq} type {p.type}",
                seq=frame.seq, fatal=True,
            )
        if p.size + len(frame.payload) > limit:
            self.reset()
            raise FrameError(
                pb.PAYLOAD_TOO_LARGE,
                f"fragmented message exceeds {limit} bytes"
                + (" (before AUTH_OK)" if limit < self.limits.max_message_size else ""),
                seq=frame.seq, fatal=True,
            )
        budget = self._budget
        if budget is not None and budget.held + len(frame.payload) > budget.limit:
            self.reset()
            raise FrameError(
                pb.UNAVAILABLE,
                "the server holds too many unfinished fragmented messages; retry later",
                seq=frame.seq, fatal=True,
            )
        p.size += len(frame.payload)
        if budget is not None:
            budget.held += len(frame.payload)
        p.chunks.append(frame.payload)
        if not frame.flags & FLAG_FINAL:
            return None
        self.reset()
        return self._finish(p.type, p.seq, p.flags, b"".join(p.chunks))

    def _finish(self, ftype: int, seq: int, flags: int, payload: bytes) -> Frame:
        if flags & FLAG_COMPRESSED:
            payload = decompress(payload, self.limits.max_message_size, seq)
        elif len(payload) > self.limits.max_message_size:
            raise FrameError(
                pb.PAYLOAD_TOO_LARGE,
                f"payload exceeds {self.limits.max_message_size} bytes", seq=seq,
            )
        return Frame(ftype, seq, 0, payload)

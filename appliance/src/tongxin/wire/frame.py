"""Frame header (seed §2.1): version u8 | type u8 | seq u32 | flags u8 | length u32.

The header is fixed-size and parsed with :mod:`struct`; everything after it is
a Protocol Buffers payload (possibly zstd-compressed, possibly one fragment of
a larger payload).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tongxin.proto import tongxin_pb2 as pb

VERSION = 1
HEADER = struct.Struct(">BBIBI")
HEADER_SIZE = HEADER.size  # 11

FLAG_COMPRESSED = 0x01  # payload (the whole message, before splitting) is zstd
FLAG_FRAGMENT = 0x02  # frame carries a piece of a fragmented payload
FLAG_FINAL = 0x04  # with FLAG_FRAGMENT: the last piece
KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_FRAGMENT | FLAG_FINAL

MAX_SEQ = 0xFFFFFFFF

#: Types a peer may send; anything else is UNKNOWN_TYPE.
KNOWN_TYPES = frozenset(v for v in pb.FrameType.values() if v != 0)


class FrameError(Exception):
    """A frame that cannot be accepted; ``code`` is the ErrorCode to answer with.

    ``fatal`` errors mean the byte stream itself can no longer be trusted (a
    bad header, a broken fragment sequence), so the connection is closed after
    the error frame; the others reject one message and keep the connection.
    """

    def __init__(self, code: int, message: str, *, seq: int = 0, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.seq = seq
        self.fatal = fatal


@dataclass(frozen=True, slots=True)
class Frame:
    """One WebSocket binary message, header fields decoded, payload raw."""

    type: int
    seq: int
    flags: int
    payload: bytes
    version: int = VERSION

    def encode(self) -> bytes:
        return encode_frame(self.type, self.seq, self.flags, self.payload, self.version)


def encode_frame(ftype: int, seq: int, flags: int, payload: bytes, version: int = VERSION) -> bytes:
    return HEADER.pack(version, ftype, seq, flags, len(payload)) + payload


def decode_frame(data: bytes, max_payload: int) -> Frame:
    """Parse one WebSocket binary message.

    Checks run in the order documented in docs/protocol.md so that a client
    author can predict which error a broken frame gets.
    """
    if len(data) < HEADER_SIZE:
        raise FrameError(
            pb.BAD_HEADER, f"frame of {len(data)} bytes is shorter than the 11-byte header",
            fatal=True,
        )
    version, ftype, seq, flags, length = HEADER.unpack_from(data)
    if version != VERSION:
        raise FrameError(
            pb.UNSUPPORTED_VERSION, f"protocol version {version} is not supported (want 1)",
            seq=seq, fatal=True,
        )
    if flags & ~KNOWN_FLAGS:
        raise FrameError(pb.BAD_HEADER, f"unknown flag bits 0x{flags:02x}", seq=seq, fatal=True)
    if flags & FLAG_FINAL and not flags & FLAG_FRAGMENT:
        raise FrameError(pb.BAD_HEADER, "FINAL flag without FRAGMENT flag", seq=seq, fatal=True)
    if length > max_payload:
        raise FrameError(
            pb.PAYLOAD_TOO_LARGE, f"frame payload of {length} bytes exceeds {max_payload}",
            seq=seq, fatal=True,
        )
    if length != len(data) - HEADER_SIZE:
        raise FrameError(
            pb.LENGTH_MISMATCH,
            f"header says {length} payload bytes, frame carries {len(data) - HEADER_SIZE}",
            seq=seq, fatal=True,
        )
    if ftype not in KNOWN_TYPES:
        # Not fatal: the framing is intact, and a newer client may send types
        # an older server does not know yet.
        raise FrameError(pb.UNKNOWN_TYPE, f"unknown frame type {ftype}", seq=seq)
    return Frame(ftype, seq, flags, bytes(data[HEADER_SIZE:]), version)

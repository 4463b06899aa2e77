"""Property tests of the wire codec: header, zstd and fragmentation (docs/protocol.md 2-7)."""

from __future__ import annotations

import random
import struct
import time
import tracemalloc

import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tongxin.proto import tongxin_pb2 as pb
from tongxin.server.connection import Connection
from tongxin.wire.codec import Decoder, Encoder, FragmentBudget, WireLimits, decompress
from tongxin.wire.frame import (
    FLAG_COMPRESSED,
    FLAG_FINAL,
    FLAG_FRAGMENT,
    KNOWN_TYPES,
    MAX_SEQ,
    Frame,
    FrameError,
    decode_frame,
    encode_frame,
)

KB = 1024
MiB = 1024 * KB
FAST = settings(deadline=None, max_examples=60, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

types = st.sampled_from(sorted(KNOWN_TYPES))
seqs = st.integers(0, MAX_SEQ)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """0..200 KB: small arbitrary bytes, compressible repetitions, incompressible noise."""
    kind = draw(st.sampled_from(["small", "repeat", "noise", "mixed"]))
    if kind == "small":
        return draw(st.binary(max_size=3 * KB))
    size = draw(st.integers(0, 200 * KB))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    if kind == "repeat":
        chunk = rnd.randbytes(rnd.randint(1, 64))
        return (chunk * (size // len(chunk) + 1))[:size]
    if kind == "noise":
        return rnd.randbytes(size)
    half = rnd.randbytes(size // 2)
    return half + bytes(size - len(half))


@st.composite
def wire_limits(draw: st.DrawFn) -> WireLimits:
    return WireLimits(
        max_frame_payload=draw(st.integers(1024, 65536)),
        max_message_size=256 * KB,
        compression_threshold=draw(st.sampled_from([0, 1, 64, 1024, 4096, 300 * KB])),
        fragment_timeout=30.0,
    )


def feed_all(decoder: Decoder, frames: list[bytes], max_payload: int) -> Frame:
    whole: Frame | None = None
    for i, data in enumerate(frames):
        whole = decoder.feed(decode_frame(data, max_payload))
        assert (whole is None) == (i < len(frames) - 1)
    assert whole is not None
    return whole


def header(ftype: int = pb.PING, seq: int = 1, flags: int = 0, length: int | None = None,
           payload: bytes = b"", version: int = 1) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack(">BBIBI", version, ftype, seq, flags, n) + payload


def compressed(data: bytes, content_size: bool = True) -> bytes:
    out: bytes = zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(data)
    return out


# ---- round trip --------------------------------------------------------------


@FAST
@given(payload=payloads(), ftype=types, seq=seqs, limits=wire_limits())
def test_round_trip(payload: bytes, ftype: int, seq: int, limits: WireLimits) -> None:
    frames = Encoder(limits).encode(ftype, seq, payload)
    assert all(11 <= len(f) <= 11 + limits.max_frame_payload for f in frames)
    flags = [f[6] for f in frames]
    heads = [struct.unpack(">BBIBI", f[:11]) for f in frames]
    assert {(h[0], h[1], h[2]) for h in heads} == {(1, ftype, seq)}
    # compression: whole payload, before splitting, only when it helps
    is_compressed = {bool(f & FLAG_COMPRESSED) for f in flags}
    assert len(is_compressed) == 1
    body = b"".join(f[11:] for f in frames)
    if is_compressed.pop():
        assert len(payload) >= limits.compression_threshold
        assert len(body) < len(payload)
        assert zstandard.ZstdDecompressor().decompress(body) == payload
    else:
        assert body == payload
    # fragmentation: consecutive pieces of max_frame_payload, FINAL on the last
    if len(frames) == 1:
        assert not flags[0] & (FLAG_FRAGMENT | FLAG_FINAL)
        assert len(body) <= limits.max_frame_payload
    else:
        assert all(f & FLAG_FRAGMENT for f in flags)
        assert [bool(f & FLAG_FINAL) for f in flags] == [False] * (len(frames) - 1) + [True]
        assert all(len(f) == 11 + limits.max_frame_payload for f in frames[:-1])
    whole = feed_all(Decoder(limits), frames, limits.max_frame_payload)
    assert (whole.type, whole.seq, whole.flags, whole.payload) == (ftype, seq, 0, payload)


@FAST
@given(messages=st.lists(st.tuples(payloads(), types), min_size=2, max_size=4),
       limits=wire_limits())
def test_one_decoder_for_a_stream_of_messages(messages: list[tuple[bytes, int]],
                                              limits: WireLimits) -> None:
    enc, dec = Encoder(limits), Decoder(limits)
    for seq, (payload, ftype) in enumerate(messages, start=1):
        whole = feed_all(dec, enc.encode(ftype, seq, payload), limits.max_frame_payload)
        assert (whole.type, whole.seq, whole.payload) == (ftype, seq, payload)
        assert dec.pending_since is None and dec.pending_seq == 0


def test_empty_payload_and_one_piece_fragment() -> None:
    limits = WireLimits(max_frame_payload=1024, compression_threshold=0)
    assert Encoder(limits).encode(pb.PING, 1, b"") == [header()]
    dec = Decoder(limits)
    whole = dec.feed(decode_frame(header(flags=FLAG_FRAGMENT | FLAG_FINAL, payload=b"\x08\x01"),
                                  1024))
    assert whole is not None and whole.payload == b"\x08\x01"


# ---- arbitrary input never escapes as anything but FrameError ---------------


@st.composite
def header_shaped(draw: st.DrawFn) -> bytes:
    payload = draw(st.one_of(st.binary(max_size=300), st.builds(
        lambda p, cut: compressed(p)[:cut] if cut >= 0 else compressed(p),
        st.binary(max_size=2000), st.integers(-5, 40))))
    length = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32 - 1)))
    return header(
        ftype=draw(st.integers(0, 255)), seq=draw(st.integers(0, MAX_SEQ)),
        flags=draw(st.one_of(st.integers(0, 255), st.sampled_from([0, 1, 2, 3, 6, 7]))),
        length=length, payload=payload, version=draw(st.sampled_from([1, 1, 1, 0, 2, 255])))


@settings(deadline=None, max_examples=200, database=None)
@given(chunks=st.lists(st.one_of(st.binary(max_size=64), header_shaped()), min_size=1,
                       max_size=6))
def test_arbitrary_bytes_only_raise_frame_error(chunks: list[bytes]) -> None:
    limits = WireLimits(max_frame_payload=1024, max_message_size=4096)
    dec = Decoder(limits)
    for data in chunks:
        try:
            dec.feed(decode_frame(data, limits.max_frame_payload))
        except FrameError as err:
            assert err.code in pb.ErrorCode.values() and err.code != 0
            assert 0 <= err.seq <= MAX_SEQ
            if err.fatal:
                dec.reset()


@settings(deadline=None, max_examples=300, database=None)
@given(data=st.binary(max_size=512), max_size=st.integers(0, 4096))
def test_decompress_of_garbage(data: bytes, max_size: int) -> None:
    try:
        out = decompress(data, max_size, seq=9)
    except FrameError as err:
        assert err.code in (pb.BAD_COMPRESSION, pb.PAYLOAD_TOO_LARGE)
        assert err.seq == 9 and not err.fatal
    else:
        assert len(out) <= max_size
        assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == out


def _documented_check(data: bytes, max_payload: int) -> int | None:
    """Section 7 of docs/protocol.md, checks 2-8, written from the doc alone."""
    if len(data) < 11:
        return int(pb.BAD_HEADER)
    version, ftype, _seq, flags, length = struct.unpack(">BBIBI", data[:11])
    if version != 1:
        return int(pb.UNSUPPORTED_VERSION)
    if flags & 0xF8 or (flags & 0x04 and not flags & 0x02):
        return int(pb.BAD_HEADER)
    if length > max_payload:
        return int(pb.PAYLOAD_TOO_LARGE)
    if length != len(data) - 11:
        return int(pb.LENGTH_MISMATCH)
    if ftype == 0 or ftype > max(pb.FrameType.values()):
        return int(pb.UNKNOWN_TYPE)
    return None


@settings(deadline=None, max_examples=300, database=None)
@given(data=st.one_of(st.binary(max_size=40), header_shaped()))
def test_header_checks_run_in_the_documented_order(data: bytes) -> None:
    want = _documented_check(data, 1024)
    try:
        frame = decode_frame(data, 1024)
    except FrameError as err:
        assert err.code == want
        assert err.fatal == (want != pb.UNKNOWN_TYPE)
        assert err.seq == (struct.unpack(">I", data[2:6])[0] if len(data) >= 11 else 0)
    else:
        assert want is None
        assert frame.payload == data[11:]


# ---- zstd ----------------------------------------------------------------------


@settings(deadline=None, max_examples=80, database=None)
@given(payload=st.binary(min_size=1, max_size=4000), data=st.data())
def test_corrupt_zstd_is_bad_compression(payload: bytes, data: st.DataObject) -> None:
    good = compressed(payload, content_size=data.draw(st.booleans()))
    bad = data.draw(st.sampled_from(["truncated", "trailing", "two-frames", "garbage", "empty"]))
    if bad == "truncated":
        blob = good[:data.draw(st.integers(0, len(good) - 1))]
    elif bad == "trailing":
        blob = good + data.draw(st.binary(min_size=1, max_size=8))
    elif bad == "two-frames":
        blob = good + good
    elif bad == "garbage":
        blob = b"\x28\xb5\x2f\xfd" + data.draw(st.binary(max_size=64))
        assume(blob[:len(good)] != good)
    else:
        blob = b""
    dec = Decoder(WireLimits(max_frame_payload=65536))
    with pytest.raises(FrameError) as info:
        dec.feed(decode_frame(header(pb.SEND, 7, FLAG_COMPRESSED, payload=blob), 65536))
    # Random bytes after the magic can form a header declaring any content
    # size; one above the cap is refused as too large before anything is read.
    allowed = {pb.BAD_COMPRESSION, pb.PAYLOAD_TOO_LARGE} if bad == "garbage" else {pb.BAD_COMPRESSION}
    assert info.value.code in allowed, (bad, info.value.message)
    assert not info.value.fatal and info.value.seq == 7
    assert dec.pending_since is None


def _rle_bomb(size: int, content_size: bool) -> bytes:
    """A hand-made zstd frame of RLE blocks: 4 bytes per 128 KiB of zeros."""
    block = 128 * KB
    assert size % block == 0
    head = b"\x28\xb5\x2f\xfd"
    if content_size:
        head += bytes([0xC0, 0x38]) + size.to_bytes(8, "little")  # FCS 8 bytes, window 128K
    else:
        head += bytes([0x00, 0x38])  # no content size, window 128K
    n = size // block
    blocks = b"".join(((block << 3) | (1 << 1) | (i == n - 1)).to_bytes(3, "little") + b"\0"
                      for i in range(n))
    return head + blocks


def _compressor_bomb(size: int, content_size: bool) -> bytes:
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    obj = cctx.compressobj(size=size if content_size else -1)
    zeros = bytes(MiB)
    out = b"".join(obj.compress(zeros) for _ in range(size // MiB))
    blob: bytes = out + obj.flush()
    return blob


@pytest.mark.parametrize("content_size", [True, False], ids=["with-size", "without-size"])
@pytest.mark.parametrize("make,size", [(_rle_bomb, 1024 * MiB), (_compressor_bomb, 64 * MiB)],
                         ids=["rle-1GiB", "zstd-64MiB"])
def test_zstd_bomb_is_refused_without_inflating(make: object, size: int,
                                                content_size: bool) -> None:
    assert callable(make)
    bomb: bytes = make(size, content_size)
    params = zstandard.get_frame_parameters(bomb)
    assert (params.content_size == size) == content_size
    assert len(bomb) < 40 * KB  # fits in one frame
    cap = 1 * MiB
    limits = WireLimits(max_frame_payload=64 * KB, max_message_size=cap)
    frame = decode_frame(header(pb.SEND, 3, FLAG_COMPRESSED, payload=bomb), limits.max_frame_payload)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(FrameError) as info:
            Decoder(limits).feed(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == pb.PAYLOAD_TOO_LARGE and not info.value.fatal
    assert info.value.seq == 3
    assert peak < 4 * cap, f"peak {peak} bytes while refusing a {size}-byte bomb"
    assert time.perf_counter() - started < 2.0


def test_payload_of_exactly_max_message_size_decompresses() -> None:
    data = bytes(range(256)) * 16
    assert decompress(compressed(data), len(data)) == data
    with pytest.raises(FrameError) as info:
        decompress(compressed(data), len(data) - 1)
    assert info.value.code == pb.PAYLOAD_TOO_LARGE


# ---- fragments ---------------------------------------------------------------


@settings(deadline=None, max_examples=60, database=None)
@given(pieces=st.lists(st.integers(0, 1024), min_size=1, max_size=12),
       cap=st.integers(1024, 6 * 1024))
def test_fragment_total_is_capped(pieces: list[int], cap: int) -> None:
    dec = Decoder(WireLimits(max_frame_payload=1024, max_message_size=cap))
    total = 0
    for i, n in enumerate(pieces):
        last = i == len(pieces) - 1
        flags = FLAG_FRAGMENT | (FLAG_FINAL if last else 0)
        frame = decode_frame(header(pb.SEND, 5, flags, payload=b"x" * n), 1024)
        total += n
        if total > cap:
            with pytest.raises(FrameError) as info:
                dec.feed(frame)
            assert info.value.code == pb.PAYLOAD_TOO_LARGE and info.value.fatal
            assert info.value.seq == 5 and dec.pending_since is None
            return
        whole = dec.feed(frame)
        assert (whole is None) == (not last)
    assert whole is not None and whole.payload == b"x" * total


def _piece(seq: int, n: int, final: bool = False) -> Frame:
    flags = FLAG_FRAGMENT | (FLAG_FINAL if final else 0)
    return decode_frame(header(pb.SEND, seq, flags, payload=b"x" * n), 1024)


def test_a_lower_bound_applies_before_authentication() -> None:
    dec = Decoder(WireLimits(max_frame_payload=1024, max_message_size=8 * 1024))
    assert dec.feed(_piece(3, 1024), max_size=2048) is None
    assert dec.feed(_piece(3, 1024), max_size=2048) is None
    with pytest.raises(FrameError) as info:
        dec.feed(_piece(3, 1), max_size=2048)
    assert info.value.code == pb.PAYLOAD_TOO_LARGE and info.value.fatal
    assert "2048 bytes (before AUTH_OK)" in info.value.message
    assert dec.pending_since is None  # the refused message is dropped
    # Without the lower bound the same message goes on to the normal limit.
    for _ in range(7):
        assert dec.feed(_piece(4, 1024)) is None
    whole = dec.feed(_piece(4, 1024, final=True))
    assert whole is not None and len(whole.payload) == 8 * 1024


def test_budget_bounds_what_all_decoders_hold_together_and_is_given_back() -> None:
    budget = FragmentBudget(3000)
    limits = WireLimits(max_frame_payload=1024, max_message_size=8 * 1024)
    a, b, c = (Decoder(limits, budget=budget) for _ in range(3))
    assert a.feed(_piece(1, 1000)) is None
    assert b.feed(_piece(1, 1000)) is None
    assert budget.held == 2000
    assert c.feed(_piece(1, 1000)) is None
    with pytest.raises(FrameError) as info:
        c.feed(_piece(1, 1))  # 3001 held would pass the budget
    assert info.value.code == pb.UNAVAILABLE and info.value.fatal
    assert budget.held == 2000  # c's own bytes were given back with its refusal
    whole = a.feed(_piece(1, 500, final=True))  # completing gives a's bytes back
    assert whole is not None and len(whole.payload) == 1500
    assert budget.held == 1000
    b.reset()  # as the server does when a connection ends mid-message
    assert budget.held == 0


@pytest.mark.parametrize("intruder", [
    header(pb.PING, 4, 0),  # an unfragmented frame in the middle
    header(pb.SEND, 5, FLAG_FRAGMENT, payload=b"x"),  # another seq
    header(pb.SYNC, 4, FLAG_FRAGMENT, payload=b"x"),  # another type
    header(pb.SEND, 4, FLAG_FRAGMENT | FLAG_COMPRESSED, payload=b"x"),  # COMPRESSED differs
    header(pb.SEND, 5, FLAG_FRAGMENT | FLAG_FINAL, payload=b"x"),  # another seq, final
], ids=["unfragmented", "other-seq", "other-type", "compressed-bit", "other-seq-final"])
def test_interleaved_fragment_is_fragment_error(intruder: bytes) -> None:
    dec = Decoder(WireLimits(max_frame_payload=1024))
    assert dec.feed(decode_frame(header(pb.SEND, 4, FLAG_FRAGMENT, payload=b"ab"), 1024)) is None
    assert dec.pending_seq == 4
    with pytest.raises(FrameError) as info:
        dec.feed(decode_frame(intruder, 1024))
    assert info.value.code == pb.FRAGMENT_ERROR and info.value.fatal
    assert info.value.seq == struct.unpack(">I", intruder[2:6])[0]
    assert dec.pending_since is None and dec.pending_seq == 0


def test_fragment_timeout_with_injected_clock() -> None:
    now = [100.0]
    dec = Decoder(WireLimits(max_frame_payload=1024, fragment_timeout=2.0), clock=lambda: now[0])
    first = decode_frame(header(pb.SEND, 9, FLAG_FRAGMENT, payload=b"a"), 1024)
    assert dec.feed(first) is None
    assert dec.pending_since == 100.0 and dec.pending_seq == 9
    now[0] = 102.0  # exactly the timeout: still in time
    assert not dec.expired()
    assert dec.feed(decode_frame(header(pb.SEND, 9, FLAG_FRAGMENT, payload=b"b"), 1024)) is None
    now[0] = 102.001
    assert dec.expired()
    with pytest.raises(FrameError) as info:
        dec.feed(decode_frame(header(pb.SEND, 9, FLAG_FRAGMENT | FLAG_FINAL, payload=b"c"),
                              1024))
    assert info.value.code == pb.FRAGMENT_TIMEOUT and info.value.fatal
    assert info.value.seq == 9
    assert dec.pending_since is None and not dec.expired()
    # the decoder starts afresh after the error (the server closes anyway)
    whole = dec.feed(decode_frame(header(pb.SEND, 10, FLAG_FRAGMENT | FLAG_FINAL,
                                         payload=b"z"), 1024))
    assert whole is not None and whole.payload == b"z"


def test_fragment_timeout_counts_from_the_first_piece() -> None:
    now = [0.0]
    dec = Decoder(WireLimits(max_frame_payload=1024, fragment_timeout=1.0), clock=lambda: now[0])
    for _ in range(4):  # steady pieces (t = 0 .. 0.9) do not extend the deadline
        dec.feed(decode_frame(header(pb.SEND, 1, FLAG_FRAGMENT, payload=b"a"), 1024))
        now[0] += 0.3
    assert dec.expired()


# ---- seq wrap ------------------------------------------------------------------


def test_seq_wraps_to_one() -> None:
    assert Connection._after(1) == 2
    assert Connection._after(MAX_SEQ - 1) == MAX_SEQ
    assert Connection._after(MAX_SEQ) == 1
    assert encode_frame(pb.PING, MAX_SEQ, 0, b"")[2:6] == b"\xff\xff\xff\xff"

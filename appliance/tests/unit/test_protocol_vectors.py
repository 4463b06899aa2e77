"""docs/protocol.md is checked against the code, not copied from it.

Every ```vector block in the doc is decoded with the real codec (frame.py,
codec.Decoder) *and* independently (struct, zstandard, protobuf), compared with
the attributes and the text-format payload stated in the doc, and re-encoded
with codec.Encoder. The doc's tables must list exactly the FrameType and
ErrorCode values of tongxin.proto, the close codes of wire/closecodes.py and
real configuration keys with their real defaults.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from google.protobuf import text_format

from tongxin import config
from tongxin.proto import tongxin_pb2 as pb
from tongxin.wire import closecodes
from tongxin.wire.codec import Decoder, Encoder, WireLimits
from tongxin.wire.frame import (
    FLAG_COMPRESSED,
    FLAG_FINAL,
    FLAG_FRAGMENT,
    HEADER,
    HEADER_SIZE,
    Frame,
    decode_frame,
    encode_frame,
)

REPO = Path(__file__).parents[3]
DOC = REPO / "docs" / "protocol.md"
PROTO = REPO / "appliance" / "src" / "tongxin" / "proto" / "tongxin.proto"

DEFAULT_LIMITS = WireLimits()

_VECTOR_RE = re.compile(r"^```vector (?P<attrs>[^\n]*)\n(?P<body>.*?)^```[ \t]*$",
                        re.MULTILINE | re.DOTALL)
_HEX_LINE = re.compile(r"^[0-9a-f]{2}( [0-9a-f]{2})*$")


@dataclass
class Vector:
    attrs: dict[str, str]
    frames: list[bytes] = field(default_factory=list)
    header_lines: list[bytes] = field(default_factory=list)
    payload_text: str = ""

    @property
    def name(self) -> str:
        return self.attrs["name"]

    @property
    def type(self) -> int:
        return int(pb.FrameType.Value(self.attrs["type"]))

    @property
    def seq(self) -> int:
        return int(self.attrs["seq"])

    @property
    def flags(self) -> list[int]:
        return [int(f, 16) for f in self.attrs["flags"].split(",")]

    @property
    def compressed(self) -> bool:
        return any(f & FLAG_COMPRESSED for f in self.flags)

    @property
    def limits(self) -> WireLimits:
        return WireLimits(
            max_frame_payload=int(self.attrs.get("max_frame_payload",
                                                 DEFAULT_LIMITS.max_frame_payload)),
            max_message_size=int(self.attrs.get("max_message_size",
                                                DEFAULT_LIMITS.max_message_size)),
            compression_threshold=int(self.attrs.get("compression_threshold",
                                                     DEFAULT_LIMITS.compression_threshold)),
        )

    def message_class(self) -> Any:
        package, _, short = self.attrs["message"].rpartition(".")
        assert package == "tongxin.v1", self.attrs["message"]
        return getattr(pb, short)

    def expected(self) -> Any:
        msg = self.message_class()()
        text_format.Parse(self.payload_text, msg)
        return msg


def parse_vectors(text: str) -> list[Vector]:
    out: list[Vector] = []
    for m in _VECTOR_RE.finditer(text):
        attrs: dict[str, str] = {}
        for item in m.group("attrs").split():
            key, sep, value = item.partition("=")
            assert sep and key not in attrs, f"bad attribute {item!r} in {m.group('attrs')!r}"
            attrs[key] = value
        vec = Vector(attrs)
        lines = m.group("body").splitlines()
        chunks: list[bytes] | None = None
        for i, line in enumerate(lines):
            if line == "payload":
                vec.payload_text = "\n".join(lines[i + 1:])
                break
            if re.fullmatch(r"frame \d+", line):
                assert int(line.split()[1]) == len(vec.frames) + 1, f"{vec.name}: frame numbering"
                chunks = []
                vec.frames.append(b"")
                continue
            assert chunks is not None and _HEX_LINE.match(line), f"{vec.name}: bad line {line!r}"
            data = bytes.fromhex(line)
            if not chunks:
                vec.header_lines.append(data)
            chunks.append(data)
            vec.frames[-1] = b"".join(chunks)
        else:
            raise AssertionError(f"{vec.name}: no payload section")
        out.append(vec)
    return out


DOC_TEXT = DOC.read_text(encoding="utf-8")
VECTORS = parse_vectors(DOC_TEXT)
BY_NAME = {v.name: v for v in VECTORS}


def by_name(v: Vector) -> str:
    return v.name


def test_doc_has_the_required_vectors() -> None:
    assert len(BY_NAME) == len(VECTORS), "vector names must be unique"
    ping = [v for v in VECTORS if v.type == pb.PING and v.seq == 1]
    assert ping
    auth = [v for v in VECTORS if v.type == pb.AUTH]
    assert any(v.expected().WhichOneof("method") == "password" for v in auth)
    sends = [v for v in VECTORS if v.type == pb.SEND]
    assert any(v.expected().content.text == "你好" for v in sends)
    assert any(v.compressed and len(v.frames) == 1 for v in VECTORS)
    assert any(len(v.frames) == 3 and v.limits.max_frame_payload == 16 for v in VECTORS)
    assert any(v.type == pb.ERROR for v in VECTORS)
    assert any(v.seq == 0 for v in VECTORS), "a server push with seq 0"


# ---- header layout, independent of frame.py --------------------------------


def test_header_layout_is_bbibi() -> None:
    assert HEADER.format == ">BBIBI"
    assert HEADER_SIZE == struct.calcsize(">BBIBI") == 11
    payload = bytes(range(7))
    by_hand = (bytes([1, 0xFE]) + (0xA1B2C3D4).to_bytes(4, "big") + bytes([0x07])
               + len(payload).to_bytes(4, "big") + payload)
    assert encode_frame(0xFE, 0xA1B2C3D4, 0x07, payload) == by_hand
    assert Frame(0xFE, 0xA1B2C3D4, 0x07, payload).encode() == by_hand


@pytest.mark.parametrize("vec", VECTORS, ids=by_name)
def test_vector_header_fields(vec: Vector) -> None:
    flags = vec.flags
    assert len(flags) == len(vec.frames) >= 1
    for i, (data, want_flags) in enumerate(zip(vec.frames, flags, strict=True)):
        assert len(vec.header_lines[i]) == 11, "the first hex line of a frame is the header"
        version, ftype, seq, fl, length = struct.unpack(">BBIBI", data[:11])
        # ... and once more by slicing, without struct
        assert (data[0], data[1], int.from_bytes(data[2:6], "big"), data[6],
                int.from_bytes(data[7:11], "big")) == (version, ftype, seq, fl, length)
        assert version == 1
        assert ftype == vec.type
        assert seq == vec.seq
        assert fl == want_flags
        assert length == len(data) - 11
        assert length <= vec.limits.max_frame_payload
    if len(vec.frames) > 1:
        assert all(f & FLAG_FRAGMENT for f in flags)
        assert [bool(f & FLAG_FINAL) for f in flags] == [False] * (len(flags) - 1) + [True]
        assert len({f & FLAG_COMPRESSED for f in flags}) == 1
    else:
        assert not flags[0] & (FLAG_FRAGMENT | FLAG_FINAL)


@pytest.mark.parametrize("vec", VECTORS, ids=by_name)
def test_vector_payload_independently(vec: Vector) -> None:
    """Reassemble and decompress without tongxin.wire; parse with protobuf."""
    payload = b"".join(f[11:] for f in vec.frames)
    if vec.compressed:
        payload = zstandard.ZstdDecompressor().decompress(payload)
    got = vec.message_class().FromString(payload)
    assert got == vec.expected()
    assert got.DESCRIPTOR.full_name == vec.attrs["message"]


# ---- the real codec ----------------------------------------------------------


@pytest.mark.parametrize("vec", VECTORS, ids=by_name)
def test_vector_decodes_with_codec(vec: Vector) -> None:
    limits = vec.limits
    decoder = Decoder(limits)
    whole: Frame | None = None
    for i, data in enumerate(vec.frames):
        frame = decode_frame(data, limits.max_frame_payload)
        assert (frame.version, frame.type, frame.seq, frame.flags) == (
            1, vec.type, vec.seq, vec.flags[i])
        assert frame.payload == data[11:]
        whole = decoder.feed(frame)
        assert (whole is None) == (i < len(vec.frames) - 1)
    assert whole is not None
    assert (whole.type, whole.seq, whole.flags) == (vec.type, vec.seq, 0)
    assert decoder.pending_since is None
    assert vec.message_class().FromString(whole.payload) == vec.expected()


@pytest.mark.parametrize("vec", VECTORS, ids=by_name)
def test_vector_reencodes(vec: Vector) -> None:
    expected = vec.expected()
    frames = Encoder(vec.limits).encode(vec.type, vec.seq, expected.SerializeToString())
    if not vec.compressed:
        assert frames == vec.frames
        return
    assert vec.attrs.get("zstd_level") == "3"
    ours = ".".join(map(str, zstandard.ZSTD_VERSION))
    if ours == vec.attrs.get("zstd"):
        assert frames == vec.frames
    else:
        # Another zstd version may pick other bytes for the same input; the
        # doc says so. Then only the decoded message must agree.
        decoder = Decoder(vec.limits)
        results = [decoder.feed(decode_frame(f, vec.limits.max_frame_payload)) for f in frames]
        whole = results[-1]
        assert whole is not None
        assert vec.message_class().FromString(whole.payload) == expected


# ---- the tables cannot fall behind the code ----------------------------------


def _proto_enum(name: str) -> dict[int, str]:
    text = PROTO.read_text(encoding="utf-8")
    m = re.search(r"^enum " + name + r" \{(.*?)^\}", text, re.MULTILINE | re.DOTALL)
    assert m, name
    return {int(v): k for k, v in re.findall(r"^\s*([A-Z0-9_]+)\s*=\s*(\d+);", m.group(1),
                                               re.MULTILINE)}


def _section(title: str) -> str:
    m = re.search(r"^## \d+\. " + re.escape(title) + r"\n(.*?)(?=^## )", DOC_TEXT,
                  re.MULTILINE | re.DOTALL)
    assert m, f"no section {title!r} in {DOC}"
    return m.group(1)


def _table_rows(section: str) -> dict[int, str]:
    rows: dict[int, str] = {}
    for num, name in re.findall(r"^\| (\d+) \| `?([A-Za-z_ ]+?)`? \|", section, re.MULTILINE):
        assert int(num) not in rows, f"{num} listed twice"
        rows[int(num)] = name
    return rows


def test_proto_and_generated_code_agree() -> None:
    assert _proto_enum("FrameType") == {v: k for k, v in pb.FrameType.items()}
    assert _proto_enum("ErrorCode") == {v: k for k, v in pb.ErrorCode.items()}


def test_doc_lists_every_frame_type() -> None:
    assert _table_rows(_section("Frame types")) == _proto_enum("FrameType")


def test_doc_lists_every_error_code() -> None:
    assert _table_rows(_section("Error codes")) == _proto_enum("ErrorCode")


def test_doc_lists_every_close_code() -> None:
    codes = {v for k, v in vars(closecodes).items() if k.isupper() and isinstance(v, int)}
    rows = _table_rows(_section("Close codes"))
    assert set(rows) == codes
    for code, name in rows.items():
        assert name == closecodes.name(code)


def test_doc_flags_match_code() -> None:
    section = _section("Flags")
    found = dict(re.findall(r"^\| `0x([0-9A-F]{2})` \| `([A-Z]+)` \|", section, re.MULTILINE))
    assert found == {"01": "COMPRESSED", "02": "FRAGMENT", "04": "FINAL"}
    assert (FLAG_COMPRESSED, FLAG_FRAGMENT, FLAG_FINAL) == (0x01, 0x02, 0x04)


def test_doc_limits_name_real_keys_with_real_defaults() -> None:
    defaults = {key: default for key, default, _ in config.documented_keys()}
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| ([^|]+) \|", _section("Limits"), re.MULTILINE)
    assert len(rows) >= 20
    for key, cell in rows:
        assert key in defaults, f"{key} is not a configuration key"
        want = defaults[key]
        if isinstance(want, bool):
            assert cell.split()[0] == str(want).lower(), key
        else:
            assert float(cell.split()[0]) == float(want), f"{key}: doc says {cell}, code {want}"
    for key in ("server.max_frame_payload", "server.max_message_size",
                "server.compression_threshold", "server.fragment_timeout",
                "server.auth_timeout", "server.heartbeat_interval",
                "server.max_unauthenticated_errors", "chat.sync_page_max"):
        assert key in dict(rows), f"{key} missing from the limits table"

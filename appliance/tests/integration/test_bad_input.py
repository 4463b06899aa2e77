"""Broken, hostile and out-of-order input against a real node (docs/protocol.md 6-12).

Each case sends raw bytes (Client.send_raw) on one connection, the "victim",
and checks the documented answer: the ERROR frame (code, ref_seq, fatal), the
close code, the /metrics counter, that nothing was stored (the conversation's
last_seq is unchanged), and that the node and a separate logged-in pair are
untouched (they can still chat).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest

# conftest is importable under pytest (pythonpath) and when mypy checks tests/ whole.
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]

from tongxin.auth.tokens import Claims, TokenSigner
from tongxin.client import Client, pb
from tongxin.store.ports import User
from tongxin.wire import closecodes
from tongxin.wire.frame import FLAG_COMPRESSED, FLAG_FINAL, FLAG_FRAGMENT, encode_frame

pytestmark = pytest.mark.integration

PASSWORD = "password-1"
FRAME_MAX = 65536  # server.max_frame_payload default
WS_LIMIT = 2 * (FRAME_MAX + 11)  # docs/protocol.md: refused with 1009 at this size or more


@dataclass
class World:
    node: RunningNode
    alice: Client  # the pair that must keep working
    bob: Client
    conv_id: str
    http: aiohttp.ClientSession
    sent: int = 0

    async def errors(self) -> dict[str, float]:
        async with self.http.get(self.node.metrics_url) as resp:
            assert resp.status == 200
            text = await resp.text()
        return {m[1]: float(m[2]) for m in re.finditer(
            r'^tongxin_errors_total\{code="([a-z_]+)"\} (\S+)$', text, re.MULTILINE)}

    async def last_seq(self) -> int:
        return int((await self.alice.sync(self.conv_id, limit=1)).last_seq)

    async def victim(self) -> Client:
        """Alice on another device, logged in: its next frame has seq 2."""
        c: Client = await self.node.client(device_id=f"alice-{uuid.uuid4().hex[:8]}")
        await c.login("alice", PASSWORD)
        return c

    async def fresh(self) -> Client:
        """Connected, not authenticated: its first frame has seq 1."""
        c: Client = await self.node.client()
        return c

    async def pair_still_chats(self) -> None:
        self.sent += 1
        text = f"still here {self.sent}"
        ack = await self.alice.send_text(self.conv_id, text)
        async with asyncio.timeout(5):
            while True:
                ev = await self.bob.next_event(pb.DELIVER)
                if ev.message.content.text == text:
                    break
        assert ev.message.seq == ack.seq
        async with self.http.get(f"{self.node.http_url}/healthz") as resp:
            assert resp.status == 200


@dataclass
class Baseline:
    errors: dict[str, float]
    last_seq: int


async def make_world(node_factory: NodeFactory, **sections: dict[str, object]) -> World:
    node: RunningNode = await node_factory(**sections)
    alice = await node.user("alice", device_id="alice-phone")
    bob = await node.user("bob", device_id="bob-phone")
    conv = await alice.direct("bob")
    return World(node, alice, bob, conv.conversation_id, aiohttp.ClientSession())


@pytest.fixture
async def world(node_factory: NodeFactory) -> AsyncIterator[World]:
    w = await make_world(node_factory)
    yield w
    await w.http.close()


async def baseline(w: World) -> Baseline:
    return Baseline(await w.errors(), await w.last_seq())


async def check_after(w: World, before: Baseline, **counts: int) -> None:
    """Nothing stored, the errors counted in /metrics, the pair unaffected."""
    assert await w.last_seq() == before.last_seq
    want = {code: before.errors.get(code, 0.0) + n for code, n in counts.items()}
    async with asyncio.timeout(5):  # a transport close is counted after the socket closes
        while True:
            now = await w.errors()
            if all(now.get(code, 0.0) == v for code, v in want.items()):
                break
            await asyncio.sleep(0.02)
    await w.pair_still_chats()


def send_payload(w: World, text: str = "must not be stored") -> bytes:
    req = pb.SendRequest(conversation_id=w.conv_id, client_msg_id=uuid.uuid4().hex,
                         content=pb.Content(text=text))
    out: bytes = req.SerializeToString()
    return out


async def expect_error(c: Client, code: int, ref_seq: int, *, fatal: bool) -> pb.Error:
    ev = await c.next_event(pb.ERROR, wait=5)
    err = ev.message
    got = (pb.ErrorCode.Name(err.code), err.ref_seq, err.fatal, ev.seq)
    assert got == (pb.ErrorCode.Name(code), ref_seq, fatal, ref_seq), err.message
    return err


async def expect_close(c: Client, code: int) -> None:
    reader = c._reader
    assert reader is not None
    async with asyncio.timeout(5):
        await asyncio.shield(reader)
    assert c.close_code == code


async def expect_pong(c: Client, seq: int) -> None:
    """The connection still works: a PING with ``seq`` gets a PONG with ``seq``."""
    await c.send_raw(encode_frame(pb.PING, seq, 0, pb.Ping(client_time_ms=seq).SerializeToString()))
    ev = await c.next_event(pb.PONG, wait=5)
    assert (ev.seq, ev.message.client_time_ms) == (seq, seq)
    assert not c.closed


def rle_bomb(size: int) -> bytes:
    """A zstd frame of RLE blocks without a content size: 4 bytes per 128 KiB."""
    block = 128 * 1024
    n = size // block
    return b"\x28\xb5\x2f\xfd\x00\x38" + b"".join(
        ((block << 3) | (1 << 1) | (i == n - 1)).to_bytes(3, "little") + b"\0" for i in range(n))


# ---- fatal frame errors: ERROR (fatal) then close 4000 ------------------------------


FATAL_CASES: dict[str, tuple[Callable[[World], bytes], int, int, str]] = {
    # name: (make frame for seq 2, error code, ref_seq, metric label)
    "too-short": (lambda w: b"\x01\x03\x00\x00", pb.BAD_HEADER, 0, "bad_header"),
    "empty": (lambda w: b"", pb.BAD_HEADER, 0, "bad_header"),
    "version-2": (lambda w: encode_frame(pb.SEND, 2, 0, send_payload(w), version=2),
                  pb.UNSUPPORTED_VERSION, 2, "unsupported_version"),
    "version-0": (lambda w: encode_frame(pb.SEND, 2, 0, send_payload(w), version=0),
                  pb.UNSUPPORTED_VERSION, 2, "unsupported_version"),
    "reserved-flag": (lambda w: encode_frame(pb.SEND, 2, 0x08, send_payload(w)),
                      pb.BAD_HEADER, 2, "bad_header"),
    "final-without-fragment": (lambda w: encode_frame(pb.SEND, 2, FLAG_FINAL, send_payload(w)),
                               pb.BAD_HEADER, 2, "bad_header"),
    "length-short": (lambda w: encode_frame(pb.SEND, 2, 0, send_payload(w))[:-1],
                     pb.LENGTH_MISMATCH, 2, "length_mismatch"),
    "length-long": (lambda w: encode_frame(pb.SEND, 2, 0, send_payload(w)) + b"\x00",
                    pb.LENGTH_MISMATCH, 2, "length_mismatch"),
    "declared-too-large": (lambda w: encode_frame(pb.SEND, 2, 0, bytes(FRAME_MAX + 1)),
                           pb.PAYLOAD_TOO_LARGE, 2, "payload_too_large"),
    # check 6 (length > max_frame_payload) comes before check 7 (length mismatch)
    "declared-too-large-short": (
        lambda w: encode_frame(pb.SEND, 2, 0, bytes(FRAME_MAX + 1))[:100],
        pb.PAYLOAD_TOO_LARGE, 2, "payload_too_large"),
    # just under the transport limit: still our own check and an ERROR frame
    "ws-limit-minus-one": (lambda w: encode_frame(pb.SEND, 2, 0, bytes(WS_LIMIT - 12)),
                           pb.PAYLOAD_TOO_LARGE, 2, "payload_too_large"),
    "seq-gap": (lambda w: encode_frame(pb.SEND, 7, 0, send_payload(w)), pb.SEQ_GAP, 7, "seq_gap"),
    "seq-zero": (lambda w: encode_frame(pb.PING, 0, 0, b""), pb.SEQ_GAP, 0, "seq_gap"),
    "seq-repeated": (lambda w: encode_frame(pb.PING, 1, 0, b""), pb.SEQ_GAP, 1, "seq_gap"),
}


@pytest.mark.parametrize("case", list(FATAL_CASES))
async def test_fatal_frame_error_closes_4000(world: World, case: str) -> None:
    make, code, ref_seq, label = FATAL_CASES[case]
    before = await baseline(world)
    v = await world.victim()
    await v.send_raw(make(world))
    err = await expect_error(v, code, ref_seq, fatal=True)
    if case == "seq-gap":
        assert err.message == "expected frame seq 2, got 7"  # as in the doc's vector
    await expect_close(v, closecodes.PROTOCOL_ERROR)
    await check_after(world, before, **{label: 1})


async def test_websocket_message_beyond_transport_limit_is_1009(world: World) -> None:
    before = await baseline(world)
    v = await world.victim()
    await v.send_raw(encode_frame(pb.SEND, 2, 0, bytes(WS_LIMIT - 11)))  # WS_LIMIT bytes
    await expect_close(v, closecodes.MESSAGE_TOO_BIG)
    assert not [e for e in v.drain_events() if e.type == pb.ERROR]  # no ERROR frame first
    await check_after(world, before, websocket=1)


async def test_text_message_closes_4000(world: World) -> None:
    before = await baseline(world)
    v = await world.victim()
    assert v._ws is not None
    await v._ws.send_str('{"type": "SEND"}')
    await expect_error(v, pb.BAD_HEADER, 0, fatal=True)
    await expect_close(v, closecodes.PROTOCOL_ERROR)
    await check_after(world, before, bad_header=1)


async def test_interleaved_fragments_close_4000(world: World) -> None:
    before = await baseline(world)
    v = await world.victim()
    await v.send_raw(encode_frame(pb.SEND, 2, FLAG_FRAGMENT, send_payload(world)[:10]))
    await v.send_raw(encode_frame(pb.PING, 3, 0, b""))
    await expect_error(v, pb.FRAGMENT_ERROR, 3, fatal=True)
    await expect_close(v, closecodes.PROTOCOL_ERROR)
    await check_after(world, before, fragment_error=1)


async def test_fragments_that_never_complete(node_factory: NodeFactory) -> None:
    w = await make_world(node_factory, server={"fragment_timeout": 0.3})
    try:
        before = await baseline(w)
        v = await w.victim()
        started = time.monotonic()
        await v.send_raw(encode_frame(pb.SEND, 2, FLAG_FRAGMENT, send_payload(w)[:10]))
        err = await expect_error(v, pb.FRAGMENT_TIMEOUT, 2, fatal=True)
        assert 0.3 <= time.monotonic() - started < 3.0, err.message
        await expect_close(v, closecodes.PROTOCOL_ERROR)
        await check_after(w, before, fragment_timeout=1)
    finally:
        await w.http.close()


async def test_fragments_beyond_max_message_size(node_factory: NodeFactory) -> None:
    w = await make_world(node_factory, server={"max_frame_payload": 1024,
                                               "max_message_size": 4096})
    try:
        before = await baseline(w)
        v = await w.victim()
        for _ in range(4):  # 4 x 1024 = the cap exactly: still fine
            await v.send_raw(encode_frame(pb.SEND, 2, FLAG_FRAGMENT, bytes(1024)))
        await v.send_raw(encode_frame(pb.SEND, 2, FLAG_FRAGMENT, b"\x00"))
        await expect_error(v, pb.PAYLOAD_TOO_LARGE, 2, fatal=True)
        await expect_close(v, closecodes.PROTOCOL_ERROR)
        await check_after(w, before, payload_too_large=1)
    finally:
        await w.http.close()


# ---- non-fatal errors: ERROR, the seq is used up, the connection keeps working ---


@pytest.mark.parametrize("ftype", [99, 0, 255, pb.ACK, pb.DELIVER, pb.AUTH_OK],
                         ids=["99", "0", "255", "ACK", "DELIVER", "AUTH_OK"])
async def test_unknown_type_is_not_fatal(world: World, ftype: int) -> None:
    before = await baseline(world)
    v = await world.victim()
    await v.send_raw(encode_frame(ftype, 2, 0, send_payload(world)))
    await expect_error(v, pb.UNKNOWN_TYPE, 2, fatal=False)
    await expect_pong(v, 3)
    await check_after(world, before, unknown_type=1)


async def test_unknown_type_with_unexpected_seq_uses_no_seq(world: World) -> None:
    before = await baseline(world)
    v = await world.victim()
    await v.send_raw(encode_frame(99, 40, 0, b""))
    await expect_error(v, pb.UNKNOWN_TYPE, 40, fatal=False)
    await expect_pong(v, 2)
    await check_after(world, before, unknown_type=1)


def _bad_zstd(w: World, how: str) -> bytes:
    import zstandard

    good: bytes = zstandard.ZstdCompressor(level=3).compress(send_payload(w, "压缩" * 600))
    # Garbage after the magic and a frame-header descriptor of 0 (no declared
    # content size): random descriptor bits could declare any size, and one
    # above the cap is rightly refused as PAYLOAD_TOO_LARGE instead.
    return {"garbage": b"\x28\xb5\x2f\xfd\x00" + os.urandom(40), "truncated": good[:-4],
            "trailing": good + b"\x00", "empty": b"", "not-zstd": b"hello"}[how]


@pytest.mark.parametrize("how", ["garbage", "truncated", "trailing", "empty", "not-zstd"])
async def test_corrupt_zstd_is_not_fatal(world: World, how: str) -> None:
    before = await baseline(world)
    v = await world.victim()
    await v.send_raw(encode_frame(pb.SEND, 2, FLAG_COMPRESSED, _bad_zstd(world, how)))
    await expect_error(v, pb.BAD_COMPRESSION, 2, fatal=False)
    await expect_pong(v, 3)
    await check_after(world, before, bad_compression=1)


async def test_zstd_bomb_is_refused_not_fatal(world: World) -> None:
    before = await baseline(world)
    v = await world.victim()
    bomb = rle_bomb(9 * 1024 * 1024)  # inflates past max_message_size (8 MiB)
    assert len(bomb) < 1024
    await v.send_raw(encode_frame(pb.SEND, 2, FLAG_COMPRESSED, bomb))
    await expect_error(v, pb.PAYLOAD_TOO_LARGE, 2, fatal=False)
    await expect_pong(v, 3)
    await check_after(world, before, payload_too_large=1)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x1a\x04\x0a\x02\xff\xfe"],
                         ids=["varint-overflow", "truncated-field", "bad-utf8"])
async def test_bad_protobuf_is_not_fatal(world: World, payload: bytes) -> None:
    before = await baseline(world)
    v = await world.victim()
    await v.send_raw(encode_frame(pb.SEND, 2, 0, payload))
    await expect_error(v, pb.BAD_PAYLOAD, 2, fatal=False)
    await expect_pong(v, 3)
    # the seq rules still hold after it
    ack = await _raw_send(v, 4, world, "stored after all")
    assert ack.seq == before.last_seq + 1
    await check_after_storing(world, before, bad_payload=1)


async def _raw_send(v: Client, seq: int, w: World, text: str) -> pb.Ack:
    await v.send_raw(encode_frame(pb.SEND, seq, 0, send_payload(w, text)))
    ev = await v.next_event(pb.ACK, wait=5)
    assert ev.seq == seq
    ack: pb.Ack = ev.message
    return ack


async def check_after_storing(w: World, before: Baseline, **counts: int) -> None:
    """As check_after, for a case that stored exactly one good message at the end."""
    await check_after(w, Baseline(before.errors, before.last_seq + 1), **counts)


# ---- before authentication ---------------------------------------------------------


async def test_frames_before_auth(world: World) -> None:
    before = await baseline(world)
    c = await world.fresh()
    await c.send_raw(encode_frame(pb.SEND, 1, 0, send_payload(world)))
    await expect_error(c, pb.NOT_AUTHENTICATED, 1, fatal=False)
    await c.send_raw(encode_frame(pb.SYNC, 2, 0, b""))
    await expect_error(c, pb.NOT_AUTHENTICATED, 2, fatal=False)
    await expect_pong(c, 3)  # PING is allowed before AUTH
    auth = pb.AuthRequest(password=pb.PasswordCredentials(username="bob", password=PASSWORD),
                          device_id="bob-laptop")
    await c.send_raw(encode_frame(pb.AUTH, 4, 0, auth.SerializeToString()))
    ok = await c.next_event(pb.AUTH_OK, wait=5)
    assert ok.seq == 4 and ok.message.username == "bob"
    await check_after(world, before, not_authenticated=2)


async def test_too_many_frames_before_auth_close_4001(world: World) -> None:
    before = await baseline(world)
    c = await world.fresh()
    limit = world.node.cfg.server.max_unauthenticated_errors
    for seq in range(1, limit + 1):
        await c.send_raw(encode_frame(pb.SEND, seq, 0, send_payload(world)))
    for seq in range(1, limit + 1):
        await expect_error(c, pb.NOT_AUTHENTICATED, seq, fatal=seq == limit)
    await expect_close(c, closecodes.AUTH_REQUIRED)
    await check_after(world, before, not_authenticated=limit)


async def test_bad_tokens(world: World) -> None:
    before = await baseline(world)
    accounts = world.node.node.accounts
    alice = world.alice.auth
    assert alice is not None
    now = int(time.time() * 1000)
    expired = accounts.signer.sign(Claims(uuid.uuid4().hex, alice.user_id, "alice-old",
                                          now - 7_200_000, now - 3_600_000))
    body = alice.token.split(".")
    claims_of_bob = body[1][:-2] + ("AA" if body[1][-2:] != "AA" else "BB")
    forged = ".".join([body[0], claims_of_bob, body[2]])
    other_key = TokenSigner(os.urandom(32)).sign(Claims(
        uuid.uuid4().hex, alice.user_id, "alice-phone", now, now + 3_600_000))
    user = await world.node.node.store.get_user_by_name("alice")
    assert isinstance(user, User)
    revoked = await accounts.issue(user, "alice-revoked")
    await accounts.revoke(revoked.claims.token_id, user.id, revoked.claims.expires_at_ms)
    good = await accounts.issue(user, "alice-resume")
    cases = [(expired, "", pb.TOKEN_EXPIRED), (forged, "", pb.TOKEN_INVALID),
             (other_key, "", pb.TOKEN_INVALID), ("not-a-token", "", pb.TOKEN_INVALID)]
    c = await world.fresh()
    for seq, (token, device, code) in enumerate(cases, start=1):
        req = pb.AuthRequest(token=token, device_id=device)
        await c.send_raw(encode_frame(pb.AUTH, seq, 0, req.SerializeToString()))
        await expect_error(c, code, seq, fatal=False)
    c2 = await world.fresh()
    await c2.send_raw(encode_frame(pb.AUTH, 1, 0, pb.AuthRequest(
        token=revoked.token).SerializeToString()))
    await expect_error(c2, pb.TOKEN_REVOKED, 1, fatal=False)
    await c2.send_raw(encode_frame(pb.AUTH, 2, 0, pb.AuthRequest(
        token=good.token, device_id="someone-else").SerializeToString()))
    await expect_error(c2, pb.TOKEN_INVALID, 2, fatal=False)
    # neither connection was closed, and a good token still works on it
    await c.send_raw(encode_frame(pb.AUTH, 5, 0, pb.AuthRequest(
        token=good.token, device_id="").SerializeToString()))
    ok = await c.next_event(pb.AUTH_OK, wait=5)
    assert ok.seq == 5 and ok.message.token == good.token
    assert ok.message.device_id == "alice-resume"
    await check_after(world, before, token_expired=1, token_invalid=4, token_revoked=1)

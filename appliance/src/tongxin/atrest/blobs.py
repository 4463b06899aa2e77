"""Sealed file blobs: fixed-size chunks, each with its own nonce, so a Range read decrypts
only the chunks it touches.

Each part of an upload is sealed on its own, from its first byte, in chunks of
:data:`CHUNK` plaintext bytes (the last chunk of a part may be shorter)::

    00 'T' 'B' | version u8 (1) | dek id u32 | part size u32 | nonce (12) | ciphertext || tag

Parts are later concatenated as they are (files/ports.py ``assemble``), so the layout of a
whole file follows from its size and part size alone. The AAD of every chunk is
``"tongxin/blob/v1" 0x00 file_id | part size | part number | chunk index | file size``: a
chunk moved within a file or into another one, a file truncated, or a blob swapped for
another file's fails authentication. ``file_id`` is derived from the upload id
(:func:`file_id_for_upload`), so it is known while the parts arrive.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from tongxin.atrest.errors import IntegrityError
from tongxin.atrest.keyring import Keyring
from tongxin.crypto.errors import DecryptionError

CHUNK = 65536
MAGIC = b"\x00TB"
VERSION = 1
_HEAD = struct.Struct(">3sBII12s")
HEAD_SIZE = _HEAD.size  # 24
OVERHEAD = HEAD_SIZE + 16

Reader = Callable[[int, int | None], AsyncGenerator[bytes]]


def file_id_for_upload(upload_id: str) -> str:
    """The file id an upload completes into (same shape as files.keys.new_file_id)."""
    return "f_" + hashlib.sha256(b"tongxin/file-id/v1\x00" + upload_id.encode()).hexdigest()[:32]


def _aad(file_id: str, part_size: int, n: int, i: int, size: int) -> bytes:
    return b"tongxin/blob/v1\x00" + file_id.encode() + struct.pack(">IIIQ", part_size, n, i, size)


def sealed_length(plain: int) -> int:
    """Stored bytes of one sealed part holding ``plain`` bytes."""
    return plain + math.ceil(plain / CHUNK) * OVERHEAD


def sealed_file_length(size: int, part_size: int) -> int:
    """Stored bytes of a sealed file of ``size`` bytes uploaded in ``part_size`` parts."""
    full, rest = divmod(size, part_size)
    return full * sealed_length(part_size) + sealed_length(rest)


def is_sealed_head(head: bytes) -> bool:
    return len(head) >= 4 and head[:3] == MAGIC and head[3] == VERSION


async def seal_part(keyring: Keyring, file_id: str, size: int, part_size: int, n: int,
                    body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The sealed form of part ``n`` (1-based) while its plaintext streams in."""
    if part_size >= 1 << 32:
        raise ValueError("part size must be below 4 GiB with at-rest encryption")
    pending = bytearray()
    index = 0

    def seal(block: bytes, i: int) -> bytes:
        key_id, suite, key = keyring.current()
        nonce = os.urandom(12)
        return _HEAD.pack(MAGIC, VERSION, key_id, part_size, nonce) + suite.aead_encrypt(
            key, nonce, block, _aad(file_id, part_size, n, i, size))

    async for piece in body:
        pending += piece
        if len(pending) >= CHUNK:
            blocks = []
            while len(pending) >= CHUNK:
                blocks.append(bytes(pending[:CHUNK]))
                del pending[:CHUNK]
            yield await asyncio.to_thread(_seal_all, seal, blocks, index)
            index += len(blocks)
    if pending:
        yield await asyncio.to_thread(seal, bytes(pending), index)


def _seal_all(seal: Callable[[bytes, int], bytes], blocks: list[bytes], first: int) -> bytes:
    return b"".join(seal(b, first + k) for k, b in enumerate(blocks))


async def _open_chunks(keyring: Keyring, file_id: str, size: int, part_size: int, n: int,
                       first: int, lengths: list[int], read: Reader,
                       phys_start: int) -> AsyncGenerator[bytes]:
    """Decrypt chunks ``first ..`` of part n whose plaintext lengths are ``lengths``."""
    phys_stop = phys_start + sum(length + OVERHEAD for length in lengths)
    buf = bytearray()
    k = 0
    async for piece in read(phys_start, phys_stop):
        buf += piece
        while k < len(lengths) and len(buf) >= lengths[k] + OVERHEAD:
            want = lengths[k] + OVERHEAD
            chunk = bytes(buf[:want])
            del buf[:want]
            yield await _open_chunk(keyring, chunk, file_id, size, part_size, n, first + k)
            k += 1
    if k < len(lengths):
        raise IntegrityError(f"sealed blob of {file_id} is truncated")


async def _open_chunk(keyring: Keyring, chunk: bytes, file_id: str, size: int, part_size: int,
                      n: int, i: int) -> bytes:
    magic, version, key_id, _part_size, nonce = _HEAD.unpack_from(chunk)
    if magic != MAGIC or version != VERSION:
        raise IntegrityError(f"chunk {i} of part {n} of {file_id} is not a sealed chunk")
    suite, key = await keyring.key(key_id)
    try:
        return suite.aead_decrypt(key, nonce, chunk[HEAD_SIZE:],
                                  _aad(file_id, part_size, n, i, size))
    except DecryptionError as exc:
        raise IntegrityError(f"chunk {i} of part {n} of {file_id} failed authentication "
                             "(tampered, moved or swapped)") from exc


async def open_part(keyring: Keyring, file_id: str, size: int, part_size: int, n: int,
                    read: Reader) -> AsyncGenerator[bytes]:
    """The whole plaintext of sealed part ``n`` read from its own blob."""
    part_len = min(part_size, size - (n - 1) * part_size)
    lengths = [min(CHUNK, part_len - i * CHUNK) for i in range(math.ceil(part_len / CHUNK))]
    async for plain in _open_chunks(keyring, file_id, size, part_size, n, 0, lengths, read, 0):
        yield plain


async def open_range(keyring: Keyring, file_id: str, size: int, part_size: int,
                     read: Reader, start: int, stop: int) -> AsyncGenerator[bytes]:
    """Plaintext bytes [start, stop) of a sealed file."""
    if part_size <= 0:
        raise IntegrityError(f"sealed blob of {file_id} has no valid part size")
    stop = min(stop, size)
    full_part = sealed_length(part_size)
    pos = start
    while pos < stop:
        n = pos // part_size + 1
        in_part = pos - (n - 1) * part_size
        part_len = min(part_size, size - (n - 1) * part_size)
        part_stop = min(stop - (n - 1) * part_size, part_len)
        first = in_part // CHUNK
        last = (part_stop - 1) // CHUNK
        lengths = [min(CHUNK, part_len - i * CHUNK) for i in range(first, last + 1)]
        phys = (n - 1) * full_part + first * (CHUNK + OVERHEAD)
        skip = in_part - first * CHUNK
        async for plain in _open_chunks(keyring, file_id, size, part_size, n, first,
                                        lengths, read, phys):
            piece = plain[skip:]
            skip = 0
            take = min(len(piece), stop - pos)
            if take <= 0:
                break
            yield piece[:take]
            pos += take


async def read_head(read: Reader) -> bytes:
    head = bytearray()
    async for piece in read(0, HEAD_SIZE):
        head += piece
    return bytes(head)


def head_part_size(head: bytes) -> int:
    return int(_HEAD.unpack_from(head)[3]) if len(head) >= HEAD_SIZE else 0

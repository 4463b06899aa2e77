"""One sealed part of a backup: a byte stream cut into chunks, each sealed on its own.

A part's file is a sequence of records ``length u32 | ciphertext || tag``, each
the suite's AEAD (SM4-GCM with ``gm``, AES-256-GCM with ``international``) over
at most :data:`CHUNK` plaintext bytes. This is the STREAM construction (Hoang,
Reyhanitabar, Rogaway, Vizár, CRYPTO 2015) over the library's AEAD, nothing of
our own below it:

- the key is the backup's (fresh per backup, from the KEM: backup/archive.py),
  so a nonce is never used twice under it when it is ``part index u32 | chunk
  index u64``;
- the AAD binds the backup id, the part's name and index, the chunk index and
  whether the chunk is the last one: chunks cannot be reordered, moved to
  another part or backup, and a file cut after any chunk lacks its final chunk
  and fails to open (:class:`TruncatedError`).

While the file is written, SHA-256 and SM3 of its bytes are computed, so a copy
can be checked without the key (``sha256sum -c SHA256SUMS``; SM3SUMS the same
with ``openssl dgst -sm3``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from cryptography.hazmat.primitives import hashes

from tongxin.crypto.errors import DecryptionError
from tongxin.crypto.suite import CryptoSuite

CHUNK = 1 << 20
_LEN = struct.Struct(">I")
_AAD_PREFIX = b"tongxin/backup/chunk/v1\x00"


class BackupFormatError(Exception):
    """A part that is not what its manifest says: damaged, truncated, or another backup's."""


class TruncatedError(BackupFormatError):
    pass


def _nonce(part_index: int, chunk_index: int) -> bytes:
    return struct.pack(">IQ", part_index, chunk_index)


def _aad(backup_id: str, name: str, part_index: int, chunk_index: int, final: bool) -> bytes:
    return (_AAD_PREFIX + backup_id.encode() + b"\x00" + name.encode() + b"\x00"
            + struct.pack(">IQ?", part_index, chunk_index, final))


class Digests:
    """SHA-256 and SM3 of the bytes that pass through."""

    def __init__(self) -> None:
        self._sha = hashes.Hash(hashes.SHA256())
        self._sm3 = hashes.Hash(hashes.SM3())
        self.size = 0

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self._sm3.update(data)
        self.size += len(data)

    def hexdigests(self) -> tuple[str, str]:
        return self._sha.finalize().hex(), self._sm3.finalize().hex()


def file_digests(path: str, block: int = CHUNK) -> tuple[int, str, str]:
    """(size, sha256 hex, sm3 hex) of a file, read in blocks."""
    d = Digests()
    with open(path, "rb") as fh:
        while data := fh.read(block):
            d.update(data)
    sha, sm3 = d.hexdigests()
    return d.size, sha, sm3


class Sink(Protocol):
    """Where a sealed part goes: a file, or an object being uploaded (target.py)."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class SealingWriter:
    """A write-only file object: what is written comes out sealed in ``out``.

    ``close()`` seals the final chunk (possibly empty) and must be called for the
    part to open; it does not close ``out``.
    """

    def __init__(self, out: Sink, suite: CryptoSuite, key: bytes, backup_id: str,
                 name: str, part_index: int) -> None:
        self._out, self._suite, self._key = out, suite, key
        self._id, self._name, self._part = backup_id, name, part_index
        self._pending = bytearray()
        self._index = 0
        self.plain_size = 0
        self.digests = Digests()
        self.closed = False

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed sealed part")
        self._pending += data
        self.plain_size += len(data)
        while len(self._pending) > CHUNK:
            # Strictly more than a chunk: the last chunk, sealed as final by close(),
            # is never empty unless the whole part is.
            self._seal(bytes(self._pending[:CHUNK]), final=False)
            del self._pending[:CHUNK]
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        if self.closed:
            return
        self._seal(bytes(self._pending), final=True)
        self._pending.clear()
        self.closed = True
        self._out.flush()

    def _seal(self, block: bytes, *, final: bool) -> None:
        ct = self._suite.aead_encrypt(self._key, _nonce(self._part, self._index), block,
                                      _aad(self._id, self._name, self._part, self._index, final))
        record = _LEN.pack(len(ct)) + ct
        self._out.write(record)
        self.digests.update(record)
        self._index += 1


def open_chunks(src: BinaryIO, suite: CryptoSuite, key: bytes, backup_id: str, name: str,
                part_index: int) -> Iterator[bytes]:
    """The plaintext of a sealed part, chunk by chunk; raises before yielding a chunk
    that does not authenticate, and at the end if the final chunk is missing."""
    limit = CHUNK + suite.aead_tag_size
    index = 0
    while True:
        head = src.read(_LEN.size)
        if not head:
            raise TruncatedError(f"part {name} ends before its final chunk: the file was cut short")
        if len(head) < _LEN.size:
            raise TruncatedError(f"part {name} ends inside a chunk header")
        (length,) = _LEN.unpack(head)
        if length < suite.aead_tag_size or length > limit:
            raise BackupFormatError(f"part {name}, chunk {index}: impossible length {length}")
        ct = src.read(length)
        if len(ct) < length:
            raise TruncatedError(f"part {name} ends inside chunk {index}")
        # A chunk is the last one if nothing follows it; it must then open as final.
        final = not src.peek(1)[:1] if hasattr(src, "peek") else _at_end(src)
        try:
            block = suite.aead_decrypt(key, _nonce(part_index, index), ct,
                                       _aad(backup_id, name, part_index, index, final))
        except DecryptionError:
            if final:
                raise TruncatedError(f"part {name} ends after chunk {index}, which is not its "
                                     "final chunk: the file was cut short") from None
            raise BackupFormatError(f"part {name}, chunk {index} does not authenticate: "
                                    "damaged, reordered, or from another backup") from None
        yield block
        if final:
            return
        index += 1


def _at_end(src: BinaryIO) -> bool:
    pos = src.tell()
    more = src.read(1)
    src.seek(pos)
    return not more


class OpenedReader:
    """A read-only file object over :func:`open_chunks` (for tarfile and zstd)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buf) < n):
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                self._done = True
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

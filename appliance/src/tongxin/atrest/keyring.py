"""The keyring: data keys (DEKs), their wrapping, and the sealed-record format.

Sealed record (message content, server secrets)::

    00 'T' 'X' | version u8 (1) | dek id u32 | nonce (12) | ciphertext || tag (16)

The first byte 0x00 never starts a serialized protobuf message (field number 0 is invalid)
nor, by construction, an old 32-byte secret file read by length, so a row written before
encryption was switched on (plaintext) is told apart from a sealed one by :func:`is_sealed`.
The AAD is chosen by the caller and names the row (conversation id and seq, or the secret's
name): a ciphertext copied into another row fails authentication.

Sealed file blobs are a sequence of chunks in a similar format (:mod:`tongxin.atrest.blobs`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from tongxin.atrest.errors import IntegrityError, KeyProviderError, UnknownDataKey
from tongxin.atrest.providers import MasterKeyProvider
from tongxin.clock import now_ms
from tongxin.crypto.errors import DecryptionError
from tongxin.crypto.suite import SymmetricSuite, get_symmetric_suite

log = logging.getLogger("tongxin.atrest")

MAGIC = b"\x00TX"
VERSION = 1
_HEAD = struct.Struct(">3sBI12s")  # magic, version, dek id, nonce
HEADER_SIZE = _HEAD.size  # 20
TAG_SIZE = 16
# A fresh DEK after this many encryptions by one process: random 96-bit GCM nonces stay far
# below the 2**32 messages NIST SP 800-38D allows per key.
DEK_USES = 1 << 28
# Processes (nodes, CLI commands) share the newest DEK while it is younger than this, so the
# table grows by about one row a day rather than one per process start.
DEK_MAX_AGE_MS = 86_400_000


def is_sealed(data: bytes) -> bool:
    """True if ``data`` starts like a sealed record of a version this release reads."""
    return len(data) >= HEADER_SIZE and data[:3] == MAGIC and data[3] == VERSION


@dataclass(slots=True)
class DataKeyRow:
    id: int  # random u32 (it appears in every ciphertext header)
    suite: str
    kek_id: str
    wrapped: bytes
    created_at: int


class DekStore(Protocol):
    """Where wrapped DEKs are kept: the chat store (shared by all nodes)."""

    async def data_keys(self, after_id: int, limit: int) -> list[DataKeyRow]:
        """Rows with id > after_id, by id."""
        ...

    async def data_key(self, key_id: int) -> DataKeyRow | None: ...

    async def add_data_key(self, row: DataKeyRow) -> bool:
        """Insert; False if the id is taken."""
        ...

    async def rewrap_data_key(self, key_id: int, old_kek_id: str, new_kek_id: str,
                              wrapped: bytes) -> bool:
        """Replace the wrapping if the row is still wrapped under ``old_kek_id``."""
        ...


DEK_CIPHERS = {"gm": "SM4-GCM", "international": "AES-256-GCM"}
"""The data keys' cipher per crypto.suite (get_symmetric_suite), as reports name it."""


def wrap_aad(key_id: int, suite: str) -> bytes:
    """A wrapped DEK is bound to its id and suite: one cannot be swapped for another."""
    return b"tongxin/dek/v1\x00" + struct.pack(">I", key_id) + suite.encode()


@dataclass(slots=True)
class _Dek:
    id: int
    suite: SymmetricSuite
    key: bytes
    created_at: int = 0
    uses: int = 0


class Keyring:
    """DEKs unwrapped in memory; seals with the current one, opens with any.

    ``seal`` and ``open`` are synchronous (they run inside store transactions, on the store's
    thread); only loading a DEK that another node created needs :meth:`load` (async).
    """

    def __init__(self, provider: MasterKeyProvider, store: DekStore, suite: str = "gm",
                 encrypt: bool = True) -> None:
        self.provider = provider
        self.store = store
        self.suite_name = suite
        self.encrypt = encrypt
        self._deks: dict[int, _Dek] = {}
        self._current: _Dek | None = None
        self._lock = threading.Lock()  # seal() runs on store threads and the event loop
        self._rolling = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # storage.allow_unsealed_reads: serve rows stored without a seal while encrypting.
        self.allow_unsealed = False
        # (event, fields) into the audit trail, set by the node once compliance is open
        # (the signature of tongxin.compliance.service.Compliance.hook).
        self.audit: Callable[[str, dict[str, object]], Awaitable[None]] | None = None

    async def start(self) -> None:
        """Pick the current DEK (when encrypting): the newest one of this suite if it is
        young, else a new one. Fails if the provider does (missing or bad key file, KMS)."""
        self._loop = asyncio.get_running_loop()
        if not self.encrypt:
            return
        newest: DataKeyRow | None = None
        after = -1
        while rows := await self.store.data_keys(after, 1000):
            for row in rows:
                if row.suite == self.suite_name and (
                        newest is None or row.created_at > newest.created_at):
                    newest = row
            after = rows[-1].id
        if newest is not None and now_ms() - newest.created_at < DEK_MAX_AGE_MS:
            dek = await asyncio.to_thread(self._unwrap, newest)
            self._current = self._deks[dek.id] = dek
        else:
            self._current = await self._new_dek()

    async def _new_dek(self) -> _Dek:
        suite = get_symmetric_suite(self.suite_name)
        key = os.urandom(suite.aead_key_size)
        for _ in range(8):
            key_id = secrets.randbits(32)
            aad = wrap_aad(key_id, self.suite_name)
            kek_id, wrapped = await asyncio.to_thread(self.provider.wrap, key, aad)
            row = DataKeyRow(key_id, self.suite_name, kek_id, wrapped, now_ms())
            if await self.store.add_data_key(row):
                dek = _Dek(key_id, suite, key, row.created_at)
                self._deks[key_id] = dek
                log.info("new data key %d (suite %s, KEK %s)", key_id, self.suite_name, kek_id)
                return dek
        raise KeyProviderError("could not find a free data key id")

    def _unwrap(self, row: DataKeyRow) -> _Dek:
        key = self.provider.unwrap(row.kek_id, row.wrapped, wrap_aad(row.id, row.suite))
        suite = get_symmetric_suite(row.suite)
        if len(key) != suite.aead_key_size:
            raise KeyProviderError(f"data key {row.id} unwrapped to {len(key)} bytes")
        return _Dek(row.id, suite, key, row.created_at)

    async def load(self, key_id: int) -> None:
        """Fetch and unwrap a DEK made elsewhere; IntegrityError if it does not exist."""
        if key_id in self._deks:
            return
        row = await self.store.data_key(key_id)
        if row is None:
            raise IntegrityError(f"sealed data names data key {key_id}, which does not exist")
        self._deks[key_id] = await asyncio.to_thread(self._unwrap, row)

    # ---- records ---------------------------------------------------------

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        dek = self._current
        if dek is None:
            raise KeyProviderError("at-rest encryption is not started")
        self._count(dek)
        nonce = os.urandom(12)
        return _HEAD.pack(MAGIC, VERSION, dek.id, nonce) + dek.suite.aead_encrypt(
            dek.key, nonce, plaintext, aad)

    def _count(self, dek: _Dek) -> None:
        with self._lock:
            dek.uses += 1
            if self._rolling or self._loop is None or (
                    dek.uses < DEK_USES and now_ms() - dek.created_at < DEK_MAX_AGE_MS):
                return
            self._rolling = True
        # Called from store threads too: the new DEK is made on the event loop, and sealing
        # goes on with the old one meanwhile.
        self._loop.call_soon_threadsafe(self._spawn_roll)

    def _spawn_roll(self) -> None:
        async def roll() -> None:
            try:
                self._current = await self._new_dek()
            except Exception:
                log.exception("could not make a new data key; the current one stays in use")
            finally:
                self._rolling = False

        task = asyncio.get_running_loop().create_task(roll())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def open(self, data: bytes, aad: bytes) -> bytes:
        """Plaintext of a sealed record; :class:`UnknownDataKey` if its DEK is not loaded."""
        if not is_sealed(data) or len(data) < HEADER_SIZE + TAG_SIZE:
            raise IntegrityError("not a sealed record of a known version (truncated or damaged)")
        _, _, key_id, nonce = _HEAD.unpack_from(data)
        dek = self._deks.get(key_id)
        if dek is None:
            raise UnknownDataKey(key_id)
        try:
            return dek.suite.aead_decrypt(dek.key, nonce, data[HEADER_SIZE:], aad)
        except DecryptionError as exc:
            raise IntegrityError("sealed data failed authentication: tampered, or moved from "
                                 "another row") from exc

    async def open_async(self, data: bytes, aad: bytes) -> bytes:
        try:
            return self.open(data, aad)
        except UnknownDataKey as missing:
            await self.load(missing.key_id)
            return self.open(data, aad)

    def maybe_seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Seal when encrypting; empty stays empty (nothing to hide, and cheaper)."""
        return self.seal(plaintext, aad) if self.encrypt and plaintext else plaintext

    async def maybe_open(self, data: bytes, aad: bytes) -> bytes:
        """Open sealed records; pass plaintext written before encryption was on."""
        return await self.open_async(data, aad) if is_sealed(data) else data

    # ---- DEK material for chunked blobs ------------------------------------

    def current(self) -> tuple[int, SymmetricSuite, bytes]:
        dek = self._current
        if dek is None:
            raise KeyProviderError("at-rest encryption is not started")
        self._count(dek)
        return dek.id, dek.suite, dek.key

    async def key(self, key_id: int) -> tuple[SymmetricSuite, bytes]:
        await self.load(key_id)
        dek = self._deks[key_id]
        return dek.suite, dek.key

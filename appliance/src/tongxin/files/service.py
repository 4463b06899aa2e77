"""Uploads in parts, whole-file checksums, completion, downloads and expiry.

No knowledge of HTTP (server/files_api.py) or of where bytes live (the
BlobStore port).

Checksums. Every part is hashed (SHA-256) while it streams to the blob
store, and the whole-file SHA-256 and SM3 are advanced over the longest run
of parts 1..k received so far: a part that arrives when its predecessors are
all in is hashed into the whole-file digests in the same pass (on a copy of
their state, adopted only if the part is accepted); parts that arrived early
are read back from the blob store once the gap before them fills, by a
background task. Completion finishes whatever is left and compares. The
in-memory state is only a cache: completion checks that it covers exactly
the parts now recorded (by their SHA-256) and otherwise recomputes from the
stored parts, so a restart, a re-sent part or a second node never yields a
wrong digest. Nothing is ever held whole in memory: bytes move in blocks of
``BLOCK`` and hashing runs in worker threads (hashlib and OpenSSL release
the GIL), so the event loop keeps serving while a large file streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives import hashes

from tongxin.atrest import blobs as sealed
from tongxin.atrest.errors import IntegrityError
from tongxin.atrest.keyring import Keyring
from tongxin.clock import now_ms
from tongxin.config import Config, FilesConfig
from tongxin.errors import RequestError
from tongxin.files.keys import FILE_ID_RE, UPLOAD_ID_RE, new_upload_id
from tongxin.files.ports import (
    BlobError,
    BlobNotFound,
    BlobStore,
    FileMetaStore,
    FileRow,
    NoSuchUpload,
    PartRow,
    PartsChanged,
    UploadRow,
)
from tongxin.metrics import Metrics
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import ChatStore, Unavailable

if TYPE_CHECKING:  # asyncmy is imported only by installations that use the mysql backend
    from tongxin.store.mysql_store import MysqlStore

log = logging.getLogger("tongxin.files")

BLOCK = 256 * 1024
NAME_MAX = 255
SWEEP_BATCH = 100
_STATE_MAX = 4096
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_CONTENT_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}={_TOKEN})*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FileError(RequestError):
    """A refused file request: an HTTP status besides the ErrorCode, and extra JSON fields."""

    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(code, message)
        self.status = status
        self.extra = extra


def _bad(message: str) -> FileError:
    return FileError(400, pb.INVALID_ARGUMENT, message)


def _unavailable(exc: Exception) -> FileError:
    return FileError(503, pb.UNAVAILABLE, f"file storage unavailable: {exc}")


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _update(hashers: Sequence[_Hasher], block: bytes) -> None:
    for h in hashers:
        h.update(block)


def _ranges(numbers: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7' (a long list of missing parts stays readable)."""
    out: list[str] = []
    start = prev = -2
    for n in [*numbers, -10]:
        if n == prev + 1:
            prev = n
            continue
        if start >= 0:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ", ".join(out)


def _parts(numbers: Sequence[int]) -> str:
    return f"part {numbers[0]} was" if len(numbers) == 1 else f"parts {_ranges(numbers)} were"


class _Digests:
    """Whole-file SHA-256 and SM3 over parts 1..next-1."""

    __slots__ = ("consumed", "next", "sha256", "sm3")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.next = 1
        self.sha256 = hashlib.sha256()
        self.sm3 = hashes.Hash(hashes.SM3())
        self.consumed: list[str] = []  # SHA-256 of each part hashed in, in order

    def fork(self) -> tuple[Any, hashes.Hash]:
        return self.sha256.copy(), self.sm3.copy()

    def clone(self) -> _Digests:
        c = _Digests()
        c.next, c.consumed = self.next, list(self.consumed)
        c.sha256, c.sm3 = self.fork()
        return c

    def adopt(self, n: int, forked: tuple[Any, hashes.Hash], part_sha256: str) -> bool:
        """Take digests that include part n, if part n is still the next one."""
        if self.next != n:
            return False
        self.sha256, self.sm3 = forked
        self.consumed.append(part_sha256)
        self.next += 1
        return True


class _Gate:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


FileLookup = Callable[[str, str], Awaitable[pb.FileInfo | None]]


def file_info(f: FileRow) -> pb.FileInfo:
    return pb.FileInfo(file_id=f.id, name=f.name, size=f.size, content_type=f.content_type,
                       sha256=f.sha256, sm3=f.sm3)


def file_json(f: FileRow) -> dict[str, Any]:
    return {"file_id": f.id, "name": f.name, "size": f.size, "content_type": f.content_type,
            "sha256": f.sha256, "sm3": f.sm3, "conversation_id": f.conversation_id}


class FileService:
    def __init__(self, cfg: FilesConfig, meta: FileMetaStore, blobs: BlobStore,
                 store: ChatStore, metrics: Metrics) -> None:
        self.cfg = cfg
        self.meta = meta
        self.blobs = blobs
        self.store = store
        self.metrics = metrics
        self._digests: dict[str, _Digests] = {}
        self._advancing: dict[str, bool] = {}  # upload id -> more parts arrived meanwhile
        self._completing: dict[str, _Gate] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sweep_batch = SWEEP_BATCH
        # Set by the node once keys are loaded: parts are sealed while they stream in
        # (tongxin.atrest.blobs) and opened chunk by chunk on reads.
        self.keyring: Keyring | None = None

    async def open(self) -> None:
        await self.meta.open()
        try:
            await self.blobs.open()
        except BaseException:
            await self.meta.close()
            raise

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.blobs.close()
        await self.meta.close()

    # ---- uploads ---------------------------------------------------------

    def part_size_for(self, size: int) -> int:
        """The configured part size, grown (in 64 KiB steps) if the file would
        otherwise need more than max_parts parts."""
        part = self.cfg.part_size
        if size > part * self.cfg.max_parts:
            step = 65536
            part = math.ceil(math.ceil(size / self.cfg.max_parts) / step) * step
        return part

    async def create_upload(self, user_id: str, body: dict[str, Any]) -> UploadRow:
        conversation_id = body.get("conversation_id")
        if not isinstance(conversation_id, str) or not conversation_id:
            raise _bad("conversation_id is required")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX:
            raise _bad(f"name must be 1-{NAME_MAX} characters")
        if _CONTROL.search(name):
            raise _bad("name must not contain control characters")
        size = body.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad("size must be a non-negative integer (bytes)")
        if size > self.cfg.max_file_size:
            raise FileError(413, pb.PAYLOAD_TOO_LARGE,
                            f"size {size} exceeds the limit of {self.cfg.max_file_size} bytes")
        content_type = body.get("content_type") or "application/octet-stream"
        if (not isinstance(content_type, str) or len(content_type) > 255
                or not _CONTENT_TYPE.match(content_type)):
            raise _bad("content_type must be a MIME type such as application/pdf")
        sums: dict[str, str] = {}
        for algo in ("sha256", "sm3"):
            value = body.get(algo)
            if value is None or value == "":
                continue
            if not isinstance(value, str) or not _HEX64.match(value):
                raise _bad(f"{algo} must be 64 lowercase hex digits")
            sums[algo] = value
        if not sums:
            raise _bad("give the file's sha256 or sm3 (or both)")
        if await self.store.get_member(conversation_id, user_id) is None:
            raise FileError(404, pb.NOT_FOUND, f"no conversation {conversation_id!r} for you")
        part_size = self.part_size_for(size)
        now = now_ms()
        upload = UploadRow(
            id=new_upload_id(), owner_id=user_id, conversation_id=conversation_id, name=name,
            size=size, content_type=content_type, sha256=sums.get("sha256", ""),
            sm3=sums.get("sm3", ""), part_size=part_size, part_count=math.ceil(size / part_size),
            created_at=now, expires_at=now + int(self.cfg.upload_expiry * 1000))
        try:
            await self.meta.create_upload(upload)
        except Unavailable as exc:
            raise _unavailable(exc) from exc
        return upload

    async def upload_of(self, user_id: str, upload_id: str) -> UploadRow:
        """The caller's upload; an expired one is deleted on the spot."""
        upload = await self.meta.get_upload(upload_id) if UPLOAD_ID_RE.match(upload_id) else None
        if upload is None or upload.owner_id != user_id:
            raise FileError(404, pb.NOT_FOUND, f"no upload {upload_id!r}")
        if not upload.file_id and upload.expires_at <= now_ms():
            await self._expire(upload)
            raise FileError(404, pb.NOT_FOUND, f"upload {upload_id} expired and was deleted")
        return upload

    async def received(self, upload: UploadRow) -> list[int]:
        return [p.n for p in await self.meta.list_parts(upload.id)]

    async def put_part(self, user_id: str, upload_id: str, number: str,
                       body: AsyncIterator[bytes], content_length: int | None,
                       part_sha256: str | None) -> PartRow:
        upload = await self.upload_of(user_id, upload_id)
        if upload.file_id:
            raise FileError(409, pb.CONFLICT, f"upload {upload_id} is already complete")
        n = int(number) if number.isascii() and number.isdigit() and len(number) < 10 else 0
        if not 1 <= n <= upload.part_count:
            raise _bad(f"part {number!r} is out of range: this upload has parts 1-{upload.part_count}")
        want = upload.part_length(n)
        if content_length is not None and content_length != want:
            raise _bad(f"part {n} must be exactly {want} bytes, got Content-Length {content_length}")
        declared = part_sha256.strip().lower() if part_sha256 is not None else None
        if declared is not None and not _HEX64.match(declared):
            raise _bad("X-Part-SHA256 must be 64 hex digits")
        state = self._state(upload_id)
        forked = state.fork() if state.next == n else None
        part_hash = hashlib.sha256()
        hashers: list[_Hasher] = [part_hash, *(forked or ())]
        stream = self._metered(body, n, want, hashers)
        if self.keyring is not None and self.keyring.encrypt:
            stream = sealed.seal_part(self.keyring, sealed.file_id_for_upload(upload_id),
                                      upload.size, upload.part_size, n, stream)
        try:
            key = await self.blobs.put_part(upload_id, n, stream)
        except BlobError as exc:
            raise _unavailable(exc) from exc
        got = part_hash.hexdigest()
        if declared is not None and declared != got:
            await self._discard([key])
            raise _bad(f"part {n} does not match X-Part-SHA256: header {declared}, received {got}")
        part = PartRow(upload_id, n, want, got, key)
        try:
            replaced = await self.meta.record_part(
                part, now_ms() + int(self.cfg.upload_expiry * 1000))
        except NoSuchUpload as exc:
            await self._discard([key])
            raise FileError(404, pb.NOT_FOUND, f"upload {upload_id} is gone") from exc
        except Unavailable as exc:
            await self._discard([key])
            raise _unavailable(exc) from exc
        if replaced:
            await self._discard([replaced])
        self.metrics.file_bytes_uploaded.inc(want)
        if not (forked and state.adopt(n, forked, got)) and n < state.next \
                and state.consumed[n - 1] != got:
            state.reset()  # a part already hashed in was replaced by different bytes
        self._kick(upload_id)
        return part

    async def _metered(self, body: AsyncIterator[bytes], n: int, want: int,
                       hashers: Sequence[_Hasher]) -> AsyncIterator[bytes]:
        """The request body in blocks, hashed, and refused as soon as its size is wrong."""
        got = 0
        pending: list[bytes] = []
        buffered = 0
        async for chunk in body:
            got += len(chunk)
            if got > want:
                raise _bad(f"part {n} is longer than its {want} bytes")
            pending.append(chunk)
            buffered += len(chunk)
            if buffered >= BLOCK:
                block = b"".join(pending)
                pending.clear()
                buffered = 0
                await asyncio.to_thread(_update, hashers, block)
                yield block
        if got != want:
            raise _bad(f"part {n} must be exactly {want} bytes, got {got}")
        if pending:
            block = b"".join(pending)
            await asyncio.to_thread(_update, hashers, block)
            yield block

    async def complete(self, user_id: str, upload_id: str) -> FileRow:
        """One completion at a time per upload on this node (the metadata store's
        transaction settles races between nodes)."""
        gate = self._completing.setdefault(upload_id, _Gate())
        gate.users += 1
        try:
            async with gate.lock:
                return await self._complete(await self.upload_of(user_id, upload_id))
        finally:
            gate.users -= 1
            if not gate.users:
                self._completing.pop(upload_id, None)

    async def _complete(self, upload: UploadRow) -> FileRow:
        if upload.file_id:  # a repeated complete gets the same answer
            done = await self.meta.get_file(upload.file_id)
            if done is None:
                raise FileError(404, pb.NOT_FOUND, f"no upload {upload.id!r}")
            return done
        parts = await self.meta.list_parts(upload.id)
        by_n = {p.n: p for p in parts if 1 <= p.n <= upload.part_count}
        missing = [n for n in range(1, upload.part_count + 1) if n not in by_n]
        if missing:
            raise FileError(409, pb.CONFLICT, f"parts missing: {_ranges(missing)}", missing=missing)
        # Parts are refused unless exactly their size, so this holds unless the
        # rows were changed behind our back; then the total would be wrong too.
        wrong = [p.n for p in by_n.values() if p.size != upload.part_length(p.n)]
        if wrong:
            raise FileError(409, pb.CONFLICT, f"{_parts(wrong)} of the wrong size for "
                            f"{upload.size} bytes; upload again", missing=wrong)
        ordered = [by_n[n] for n in range(1, upload.part_count + 1)]
        digests = self._verified_start(upload.id, ordered)
        damaged = await self._advance(digests, by_n, strict=True, upload=upload)
        if damaged:
            for p in damaged:
                with contextlib.suppress(Unavailable):
                    await self.meta.forget_part(upload.id, p.n, p.key)
            await self._discard([p.key for p in damaged])
            numbers = [p.n for p in damaged]
            raise FileError(409, pb.CONFLICT, f"{_parts(numbers)} damaged in storage; "
                            "upload again", missing=numbers)
        sha256, sm3 = digests.sha256.hexdigest(), digests.sm3.finalize().hex()
        wrong_sums = [f"{algo}: declared {declared}, received {actual}"
                      for algo, declared, actual in (("sha256", upload.sha256, sha256),
                                                     ("sm3", upload.sm3, sm3))
                      if declared and declared != actual]
        if wrong_sums:
            raise FileError(409, pb.CONFLICT, "whole-file checksum mismatch: " + "; ".join(wrong_sums),
                            sha256=sha256, sm3=sm3)
        # Derived from the upload id: sealed parts are bound to it before it exists.
        file_id = sealed.file_id_for_upload(upload.id)
        keys = [p.key for p in ordered]
        try:
            blob = await self.blobs.assemble(keys, file_id)
        except BlobError as exc:
            raise _unavailable(exc) from exc
        row = FileRow(file_id, upload.conversation_id, upload.owner_id, upload.name, upload.size,
                      upload.content_type, sha256, sm3, blob, now_ms())
        try:
            await self.meta.complete(upload.id, row, keys)
        except (PartsChanged, NoSuchUpload) as exc:
            await self._discard([blob])
            raise FileError(409, pb.CONFLICT, "the upload changed while completing; "
                            "query it and complete again") from exc
        except BaseException:
            await self._discard([blob])
            raise
        await self._discard(keys)  # leftovers go when the upload row expires
        self._digests.pop(upload.id, None)
        self.metrics.files_completed.inc()
        return row

    async def abort(self, user_id: str, upload_id: str) -> None:
        upload = await self.upload_of(user_id, upload_id)
        if upload.file_id:
            raise FileError(409, pb.CONFLICT, f"upload {upload_id} is already complete")
        try:
            await self.meta.delete_upload(upload_id)
        except Unavailable as exc:
            raise _unavailable(exc) from exc
        self._digests.pop(upload_id, None)
        await self._discard_upload(upload_id)

    # ---- digests ---------------------------------------------------------

    def _state(self, upload_id: str) -> _Digests:
        state = self._digests.get(upload_id)
        if state is None:
            if len(self._digests) >= _STATE_MAX:  # only a cache: drop the oldest
                self._digests.pop(next(iter(self._digests)))
            state = self._digests[upload_id] = _Digests()
        return state

    def _verified_start(self, upload_id: str, ordered: Sequence[PartRow]) -> _Digests:
        """A private copy of the cached digests if they cover exactly the recorded
        parts 1..k, else fresh ones."""
        cached = self._digests.get(upload_id)
        if cached is not None and cached.consumed == [p.sha256 for p in ordered[:len(cached.consumed)]]:
            return cached.clone()
        return _Digests()

    def _kick(self, upload_id: str) -> None:
        """Hash in parts that arrived early, in the background, one task per upload."""
        if upload_id in self._advancing:
            self._advancing[upload_id] = True
            return
        self._advancing[upload_id] = False
        task = asyncio.get_running_loop().create_task(self._advance_later(upload_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _advance_later(self, upload_id: str) -> None:
        try:
            while True:
                self._advancing[upload_id] = False
                state = self._digests.get(upload_id)
                if state is None:
                    return
                parts = {p.n: p for p in await self.meta.list_parts(upload_id)}
                if state.next in parts:
                    await self._advance(state, parts, strict=False,
                                        upload=await self.meta.get_upload(upload_id))
                if not self._advancing.get(upload_id):
                    return
        except Exception as exc:  # only a cache; completion recomputes what is missing
            log.debug("digest catch-up for upload %s stopped: %s", upload_id, exc)
        finally:
            self._advancing.pop(upload_id, None)

    async def _advance(self, state: _Digests, parts: dict[int, PartRow],
                       strict: bool, upload: UploadRow | None = None) -> list[PartRow]:
        """Hash stored parts state.next, state.next+1, ... into ``state``.

        Each part is read back and checked against its recorded SHA-256. Not
        strict (background): stop at the first problem. Strict (completion):
        hash everything and return the parts whose stored bytes are wrong.
        """
        damaged: list[PartRow] = []
        while state.next in parts:
            p = parts[state.next]
            forked = state.fork()
            part_hash = hashlib.sha256()
            size = 0
            try:
                async with contextlib.aclosing(self._read_part(upload, p)) as chunks:
                    async for chunk in chunks:
                        size += len(chunk)
                        await asyncio.to_thread(_update, (part_hash, *forked), chunk)
            except BlobNotFound:
                part_hash = hashlib.sha256(b"missing")
            except IntegrityError as exc:  # a sealed part altered in storage
                log.warning("part %d of upload %s: %s", p.n, p.upload_id, exc)
                part_hash = hashlib.sha256(b"damaged")
            except BlobError as exc:
                if strict:
                    raise _unavailable(exc) from exc
                return damaged
            ok = size == p.size and part_hash.hexdigest() == p.sha256
            if not ok:
                if not strict:
                    return damaged
                damaged.append(p)
            if not state.adopt(p.n, forked, p.sha256):
                return damaged
        return damaged

    # ---- expiry ----------------------------------------------------------

    async def _expire(self, upload: UploadRow, now: int | None = None) -> None:
        try:
            deleted = await self.meta.delete_upload(upload.id, expired_before=now or now_ms())
        except Unavailable as exc:
            raise _unavailable(exc) from exc
        if deleted:
            if not upload.file_id:
                self.metrics.uploads_expired.inc()
            self._digests.pop(upload.id, None)
            await self._discard_upload(upload.id)

    async def sweep(self) -> int:
        """Delete expired uploads (rows, then every part blob), ``sweep_batch`` at a time."""
        done = 0
        batch = self.sweep_batch
        while True:
            now = now_ms()
            rows = await self.meta.expired_uploads(now, batch)
            for upload in rows:
                await self._expire(upload, now)
            done += len(rows)
            if len(rows) < batch:
                return done

    def sweep_interval(self) -> float:
        return max(0.05, min(60.0, self.cfg.upload_expiry / 4))

    async def run_sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval())
            try:
                await self.sweep()
            except Exception:
                log.exception("sweeping expired uploads failed")

    async def _discard(self, keys: Sequence[str]) -> None:
        try:
            await self.blobs.delete(keys)
        except BlobError as exc:
            log.warning("could not delete %d blobs (left for the expiry sweep): %s", len(keys), exc)

    async def _discard_upload(self, upload_id: str) -> None:
        try:
            await self.blobs.delete(await self.blobs.list_parts(upload_id))
        except BlobError as exc:
            log.warning("could not delete the parts of upload %s: %s", upload_id, exc)

    # ---- files -----------------------------------------------------------

    async def file_for(self, user_id: str, file_id: str) -> FileRow:
        """A file the caller may read; 404 alike for absent files and other conversations'."""
        f = await self.meta.get_file(file_id) if FILE_ID_RE.match(file_id) else None
        if f is None or await self.store.get_member(f.conversation_id, user_id) is None:
            raise FileError(404, pb.NOT_FOUND, f"no file {file_id!r}")
        return f

    def read(self, f: FileRow, start: int, stop: int) -> AsyncGenerator[bytes]:
        return self._read_file(f, start, stop)

    async def _is_sealed(self, key: str) -> tuple[bool, bytes]:
        head = await sealed.read_head(lambda a, b: self.blobs.read(key, a, b))
        sealed_blob = sealed.is_sealed_head(head)
        if sealed_blob and self.keyring is None:
            raise IntegrityError(f"blob {key} is encrypted at rest, but no master key is loaded")
        return sealed_blob, head

    async def _read_file(self, f: FileRow, start: int, stop: int) -> AsyncGenerator[bytes]:
        """Plaintext of a file; blobs stored before encryption was on pass as they are."""
        is_sealed, head = await self._is_sealed(f.key) if f.size else (False, b"")
        if not is_sealed or self.keyring is None:
            async with contextlib.aclosing(self.blobs.read(f.key, start, stop)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        async with contextlib.aclosing(sealed.open_range(
                self.keyring, f.id, f.size, sealed.head_part_size(head),
                lambda a, b: self.blobs.read(f.key, a, b), start, stop)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _read_part(self, upload: UploadRow | None, p: PartRow) -> AsyncGenerator[bytes]:
        is_sealed = p.size > 0 and (await self._is_sealed(p.key))[0]
        if not is_sealed or upload is None or self.keyring is None:
            async with contextlib.aclosing(self.blobs.read(p.key)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        async with contextlib.aclosing(sealed.open_part(
                self.keyring, sealed.file_id_for_upload(upload.id), upload.size,
                upload.part_size, p.n, lambda a, b: self.blobs.read(p.key, a, b))) as chunks:
            async for chunk in chunks:
                yield chunk

    async def message_file(self, file_id: str, conversation_id: str) -> pb.FileInfo | None:
        """For SEND: the stored FileInfo if the file exists in that conversation."""
        f = await self.meta.get_file(file_id) if FILE_ID_RE.match(file_id) else None
        if f is None or f.conversation_id != conversation_id:
            return None
        return file_info(f)


def make_file_service(cfg: Config, store: ChatStore, metrics: Metrics) -> FileService:
    """Metadata where history lives (so every node of every site sees the same
    uploads and files), bytes where ``files.backend`` says."""
    meta: FileMetaStore
    if cfg.storage.backend == "mysql":
        from tongxin.files.db_blobs import mysql_database
        from tongxin.files.mysql_meta import MysqlFileMeta

        # The chat store's pool when it is at hand (it is opened, and migrated,
        # before the file service); else a small one of its own.
        shared = _mysql_store(store)
        meta = (MysqlFileMeta(shared) if shared is not None
                else MysqlFileMeta(mysql_database(cfg, 4), owned=True))
    else:
        from tongxin.files.sqlite_meta import SqliteFileMeta

        meta = SqliteFileMeta(cfg.sqlite_file, cfg.storage.sqlite_synchronous)
    f = cfg.files
    blobs: BlobStore
    if f.backend == "s3":
        from tongxin.files.s3 import S3BlobStore  # imports botocore: only when used

        blobs = S3BlobStore.from_config(f, f.s3_bucket, cfg.files_dir / "spool")
    elif f.backend == "database":
        from tongxin.files.db_blobs import DbBlobStore, mysql_database

        # A pool of its own: streaming megabytes must not take the connections
        # that messages are waiting for.
        blobs = DbBlobStore(mysql_database(cfg, blob_pool_size(cfg)))
    else:
        from tongxin.files.local import LocalBlobStore

        if cfg.storage.backend == "mysql":
            # The rows are seen by every node, the bytes only by this one's disk.
            log.warning("file metadata is shared (storage.backend mysql) but the bytes are in %s: "
                        "other nodes answer 503 for these files unless every node mounts it; "
                        "use files.backend database or s3", cfg.files_dir)
        blobs = LocalBlobStore(cfg.files_dir)
    return FileService(f, meta, blobs, store, metrics)


def blob_pool_size(cfg: Config) -> int:
    """Connections of the database blob store: a quarter of the chat store's, at least 2."""
    return max(2, cfg.storage.mysql_pool_size // 4)


def _mysql_store(store: ChatStore) -> MysqlStore | None:
    from tongxin.store.mysql_store import MysqlStore

    return store if isinstance(store, MysqlStore) else None

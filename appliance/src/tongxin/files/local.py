"""The embedded default blob store: a local directory (``<data_dir>/files``).

    tmp/                      bytes being written (stale ones cleared at start)
    parts/<upload_id>/<n>.<r> one copy of part n of an upload
    blobs/<xx>/<file_id>      finished files

Every name is made from server ids (files/keys.py) and checked against a
strict pattern before it touches the file system, so no client input can
name a path. Bytes are written to tmp/, fsynced, then renamed into place:
a part or file is either complete or absent. File I/O runs in worker threads
so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path

from tongxin.files.keys import file_key, new_part_key, parts_prefix, valid_key
from tongxin.files.ports import BlobError, BlobNotFound

READ_CHUNK = 256 * 1024
STALE_TMP = 3600.0  # seconds without a write after which a temporary file is debris


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_into(dst: int, src_path: Path) -> None:
    with open(src_path, "rb") as src:
        remaining = os.fstat(src.fileno()).st_size
        while remaining > 0:
            # Kernel-side copy: the bytes never enter this process.
            copied = os.copy_file_range(src.fileno(), dst, remaining)
            if copied == 0:
                raise BlobError(f"{src_path.name}: short copy")
            remaining -= copied


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    async def open(self) -> None:
        def prepare() -> None:
            for sub in ("tmp", "parts", "blobs"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            # A crash mid-write leaves files here. Only old ones go: other node
            # processes (server.workers) may be writing into the same directory.
            cutoff = time.time() - STALE_TMP
            for leftover in self.tmp.iterdir():
                with contextlib.suppress(OSError):
                    if leftover.stat().st_mtime < cutoff:
                        leftover.unlink()

        await asyncio.to_thread(prepare)

    async def close(self) -> None:
        return None

    def _path(self, key: str) -> Path:
        if not valid_key(key):
            raise BlobError(f"not a blob key: {key!r}")
        return self.root / key

    def _tmp_path(self) -> Path:
        return self.tmp / secrets.token_hex(16)

    async def _publish(self, tmp: Path, fd: int, final: Path) -> None:
        def finish() -> None:
            os.fsync(fd)
            os.close(fd)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)

        await asyncio.to_thread(finish)

    async def put_part(self, upload_id: str, n: int, chunks: AsyncIterator[bytes]) -> str:
        key = new_part_key(upload_id, n)
        tmp = self._tmp_path()
        fd = await asyncio.to_thread(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            async for chunk in chunks:
                await asyncio.to_thread(_write_all, fd, chunk)
            await self._publish(tmp, fd, self.root / key)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return key

    async def list_parts(self, upload_id: str) -> list[str]:
        prefix = parts_prefix(upload_id)

        def listing() -> list[str]:
            try:
                return sorted(prefix + p.name for p in (self.root / prefix).iterdir())
            except FileNotFoundError:
                return []

        return [k for k in await asyncio.to_thread(listing) if valid_key(k)]

    async def assemble(self, part_keys: Sequence[str], file_id: str) -> str:
        key = file_key(file_id)
        paths = [self._path(k) for k in part_keys]
        tmp = self._tmp_path()

        def build() -> int:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for p in paths:
                    _copy_into(fd, p)
            except BaseException:
                os.close(fd)
                tmp.unlink()
                raise
            return fd

        try:
            fd = await asyncio.to_thread(build)
        except FileNotFoundError as exc:
            raise BlobNotFound(str(exc.filename)) from exc
        try:
            await self._publish(tmp, fd, self.root / key)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return key

    async def read(self, key: str, start: int = 0, stop: int | None = None) -> AsyncGenerator[bytes]:
        path = self._path(key)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc
        try:
            if start:
                f.seek(start)
            pos = start
            while stop is None or pos < stop:
                want = READ_CHUNK if stop is None else min(READ_CHUNK, stop - pos)
                chunk = await asyncio.to_thread(f.read, want)
                if not chunk:
                    break
                pos += len(chunk)
                yield chunk
        finally:
            f.close()

    async def put_object(self, key: str, data: bytes) -> None:
        final = self._path(key)
        tmp = self._tmp_path()
        await asyncio.to_thread(self.tmp.mkdir, parents=True, exist_ok=True)
        fd = await asyncio.to_thread(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            await asyncio.to_thread(_write_all, fd, data)
            await self._publish(tmp, fd, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    async def delete(self, keys: Sequence[str]) -> None:
        paths = [self._path(k) for k in keys]

        def remove() -> None:
            dirs = set()
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                if p.parent.parent.name == "parts":
                    dirs.add(p.parent)
            for d in dirs:  # an upload's directory goes with its last part
                with contextlib.suppress(OSError):
                    d.rmdir()

        await asyncio.to_thread(remove)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


"""Files over HTTP for the SDK (docs/files-api.md): resumable uploads in
parallel parts, ranged downloads. ``Client.upload_file`` / ``download_file``
are the entry points; this module holds the mechanics.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from cryptography.hazmat.primitives import hashes
from yarl import URL

from tongxin.proto import tongxin_pb2 as pb

Source = str | os.PathLike[str] | bytes | bytearray | memoryview
READ_CHUNK = 1024 * 1024
PART_ATTEMPTS = 3


class FileApiError(Exception):
    """The files API refused a request: HTTP status, ErrorCode and the JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.error = str(body.get("error", ""))
        try:
            self.code = int(pb.ErrorCode.Value(self.error))
        except ValueError:
            self.code = pb.INTERNAL
        self.message = str(body.get("message", ""))
        super().__init__(f"HTTP {status} {self.error}: {self.message}")


def http_base(ws_url: str) -> str:
    """ws://host:port/ws -> http://host:port (wss -> https)."""
    url = URL(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(url.scheme, url.scheme)
    path = url.path[:-3] if url.path.endswith("/ws") else url.path
    return str(url.with_scheme(scheme).with_path(path.rstrip("/") or "/").with_query(None)).rstrip("/")


def info_from_json(body: dict[str, Any]) -> pb.FileInfo:
    return pb.FileInfo(file_id=body["file_id"], name=body["name"], size=body["size"],
                       content_type=body["content_type"], sha256=body["sha256"], sm3=body["sm3"])


class FileSource:
    """Bytes in memory or a file on disk, read one part at a time."""

    def __init__(self, source: Source) -> None:
        if isinstance(source, bytes | bytearray | memoryview):
            self.view: memoryview | None = memoryview(source).cast("B")
            self.path: Path | None = None
            self.size = len(self.view)
        else:
            self.view = None
            self.path = Path(source)
            self.size = self.path.stat().st_size

    @property
    def name(self) -> str:
        return self.path.name if self.path else "file"

    async def read(self, offset: int, length: int) -> bytes | memoryview:
        if self.view is not None:
            return self.view[offset:offset + length]
        assert self.path is not None
        path = self.path

        def read() -> bytes:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)

        return await asyncio.to_thread(read)

    async def digests(self) -> tuple[str, str]:
        """SHA-256 and SM3 of the whole source, streamed (hex)."""

        def compute() -> tuple[str, str]:
            sha, sm3 = hashlib.sha256(), hashes.Hash(hashes.SM3())
            if self.view is not None:
                for i in range(0, self.size, READ_CHUNK):
                    chunk = bytes(self.view[i:i + READ_CHUNK])
                    sha.update(chunk)
                    sm3.update(chunk)
            else:
                assert self.path is not None
                with open(self.path, "rb") as f:
                    while block := f.read(READ_CHUNK):
                        sha.update(block)
                        sm3.update(block)
            return sha.hexdigest(), sm3.finalize().hex()

        return await asyncio.to_thread(compute)


class FilesHttp:
    """The HTTP calls, authenticated with a token from AUTH_OK."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session = session
        self.base = base
        self.token = token

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    async def call(self, method: str, path: str, *, json: Any = None, data: Any = None,
                   headers: dict[str, str] | None = None) -> Any:
        async with self.session.request(method, self.base + path, json=json, data=data,
                                        headers=self._headers(headers)) as resp:
            if resp.status >= 400:
                raise await _refusal(resp)
            if resp.status == 204:
                return None
            return await resp.json()

    async def create(self, conversation_id: str, name: str, size: int, content_type: str,
                     sha256: str, sm3: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.call("POST", "/api/v1/files", json={
            "conversation_id": conversation_id, "name": name, "size": size,
            "content_type": content_type, "sha256": sha256, "sm3": sm3})
        return body

    async def status(self, upload_id: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.call("GET", f"/api/v1/files/uploads/{_q(upload_id)}")
        return body

    async def put_part(self, upload_id: str, n: int, data: bytes | memoryview) -> dict[str, Any]:
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        for attempt in range(1, PART_ATTEMPTS + 1):
            try:
                body: dict[str, Any] = await self.call(
                    "PUT", f"/api/v1/files/uploads/{_q(upload_id)}/parts/{n}", data=data,
                    headers={"X-Part-SHA256": digest, "Content-Type": "application/octet-stream"})
                return body
            except FileApiError as err:
                if err.status < 500 or attempt == PART_ATTEMPTS:
                    raise
            except aiohttp.ClientConnectionError:
                if attempt == PART_ATTEMPTS:
                    raise
            await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    async def put_parts(self, upload_id: str, source: FileSource, part_size: int,
                        numbers: Iterable[int], parallel: int) -> None:
        todo = iter(sorted(numbers))

        async def worker() -> None:
            for n in todo:  # the workers share one iterator: each part goes once
                offset = (n - 1) * part_size
                data = await source.read(offset, min(part_size, source.size - offset))
                await self.put_part(upload_id, n, data)

        await asyncio.gather(*(worker() for _ in range(max(1, parallel))))

    async def complete(self, upload_id: str) -> pb.FileInfo:
        return info_from_json(await self.call("POST", f"/api/v1/files/uploads/{_q(upload_id)}/complete"))

    async def upload(self, conversation_id: str, source: Source, name: str, content_type: str,
                     parallel: int, upload_id: str) -> pb.FileInfo:
        src = FileSource(source)
        if upload_id:
            status = await self.status(upload_id)
            if status.get("file_id"):
                return await self.info(status["file_id"])
            if status["size"] != src.size:
                raise ValueError(f"upload {upload_id} is for {status['size']} bytes, "
                                 f"the source has {src.size}")
            have = set(status["parts"])
        else:
            sha256, sm3 = await src.digests()
            status = await self.create(conversation_id, name or src.name, src.size,
                                       content_type, sha256, sm3)
            upload_id, have = status["upload_id"], set()
        part_size, count = status["part_size"], status["part_count"]
        await self.put_parts(upload_id, src, part_size,
                             (n for n in range(1, count + 1) if n not in have), parallel)
        try:
            return await self.complete(upload_id)
        except FileApiError as err:
            again = err.body.get("missing")
            if err.status != 409 or not again:
                raise
            # Parts lost on the server's side (damaged in storage): send them once more.
            await self.put_parts(upload_id, src, part_size, again, parallel)
            return await self.complete(upload_id)

    async def abort(self, upload_id: str) -> None:
        await self.call("DELETE", f"/api/v1/files/uploads/{_q(upload_id)}")

    async def info(self, file_id: str) -> pb.FileInfo:
        return info_from_json(await self.call("GET", f"/api/v1/files/{_q(file_id)}/info"))

    def _range_headers(self, span: tuple[int, int | None] | None) -> dict[str, str]:
        if span is None:
            return self._headers()
        start, stop = span
        if start < 0 or (stop is not None and stop <= start):
            raise ValueError(f"range {span} is empty or negative")
        last = "" if stop is None else str(stop - 1)
        return self._headers({"Range": f"bytes={start}-{last}"})

    async def download(self, file_id: str, span: tuple[int, int | None] | None,
                       dest: Path | None) -> bytes | int:
        async with self.session.get(f"{self.base}/api/v1/files/{_q(file_id)}",
                                    headers=self._range_headers(span)) as resp:
            if resp.status >= 400:
                raise await _refusal(resp)
            if span is not None and resp.status != 206:
                raise FileApiError(resp.status, {"error": "INTERNAL",
                                                 "message": "server ignored the range"})
            if dest is None:
                return await resp.read()
            written = 0
            f = await asyncio.to_thread(open, dest, "wb")
            try:
                async for chunk in resp.content.iter_chunked(READ_CHUNK):
                    await asyncio.to_thread(f.write, chunk)
                    written += len(chunk)
            finally:
                f.close()
            return written


def _q(segment: str) -> str:
    """An id as one path segment, whatever it contains."""
    return quote(segment, safe="")


async def _refusal(resp: aiohttp.ClientResponse) -> FileApiError:
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        body = None
    if not isinstance(body, dict):
        body = {"error": "INTERNAL", "message": (await resp.text())[:200]}
    return FileApiError(resp.status, body)

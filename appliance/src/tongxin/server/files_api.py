"""HTTP routes of the files API (docs/files-api.md is the contract).

Thin: authentication (bearer token), request parsing and response shapes.
The rules live in tongxin.files.service.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from tongxin.atrest.errors import IntegrityError
from tongxin.errors import RequestError
from tongxin.files.ports import BlobError, UploadRow
from tongxin.files.service import FileError, FileService, file_json
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import Unavailable

if TYPE_CHECKING:
    from tongxin.server.node import Node

log = logging.getLogger("tongxin.files")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]")


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` -> (start, stop) with stop exclusive; None serves the
    whole file. A header that is not one byte range is ignored (RFC 9110 lets a
    server ignore Range); one that starts beyond the end is unsatisfiable."""
    m = _RANGE.match(header.strip()) if header else None
    if m is None or m.group(1) == m.group(2) == "":
        return None
    first, last = m.group(1), m.group(2)
    if first == "":  # the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - n), size
    start = int(first)
    if start >= size:
        raise RangeNotSatisfiable
    if last == "":
        return start, size
    if int(last) < start:
        return None
    return start, min(int(last) + 1, size)


def _error(status: int, code: int, message: str, **extra: Any) -> web.Response:
    body = {"error": pb.ErrorCode.Name(code), "message": message, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


def _guard(handler: Handler) -> Handler:
    """Refusals become the contract's JSON errors."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except FileError as err:
            return _error(err.status, err.code, err.message, **err.extra)
        except RequestError as err:
            return _error(400, err.code, err.message)
        except (Unavailable, BlobError) as exc:
            log.warning("files API %s %s: %s", request.method, request.path, exc)
            return _error(503, pb.UNAVAILABLE, f"file storage unavailable: {exc}")

    return wrapped


def _content_disposition(name: str) -> str:
    fallback = _UNSAFE_FILENAME.sub("_", name)[:100] or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _upload_json(u: UploadRow) -> dict[str, Any]:
    return {"upload_id": u.id, "size": u.size, "part_size": u.part_size,
            "part_count": u.part_count, "expires_at_ms": u.expires_at}


class FilesApi:
    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def files(self) -> FileService:
        return self.node.files

    async def _user(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise FileError(401, pb.NOT_AUTHENTICATED, "send Authorization: Bearer <token>")
        try:
            session = await self.node.accounts.resume(token.strip(), "")
        except RequestError as err:
            raise FileError(401, err.code, err.message) from err
        return session.user.id

    async def create(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        try:
            body = await request.json()
        except ValueError as exc:
            raise FileError(400, pb.INVALID_ARGUMENT, "body must be JSON") from exc
        if not isinstance(body, dict):
            raise FileError(400, pb.INVALID_ARGUMENT, "body must be a JSON object")
        upload = await self.files.create_upload(user, body)
        out = _upload_json(upload)
        del out["size"]
        return web.json_response(out, status=201, headers={
            "Location": f"/api/v1/files/uploads/{upload.id}"})

    async def put_part(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        part = await self.files.put_part(
            user, request.match_info["upload_id"], request.match_info["n"],
            request.content.iter_chunked(65536), request.content_length,
            request.headers.get("X-Part-SHA256"))
        return web.json_response({"part": part.n, "size": part.size, "sha256": part.sha256})

    async def status(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        upload = await self.files.upload_of(user, request.match_info["upload_id"])
        out = _upload_json(upload)
        out["parts"] = [] if upload.file_id else await self.files.received(upload)
        out["file_id"] = upload.file_id or None
        return web.json_response(out)

    async def complete(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        f = await self.files.complete(user, request.match_info["upload_id"])
        return web.json_response(file_json(f))

    async def abort(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        await self.files.abort(user, request.match_info["upload_id"])
        return web.Response(status=204)

    async def info(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        return web.json_response(file_json(await self.files.file_for(
            user, request.match_info["file_id"])))

    async def download(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        f = await self.files.file_for(user, request.match_info["file_id"])
        try:
            wanted = parse_range(request.headers.get("Range"), f.size)
        except RangeNotSatisfiable:
            refused = _error(416, pb.INVALID_ARGUMENT, f"range {request.headers.get('Range')!r} "
                             f"is outside the file's {f.size} bytes")
            refused.headers["Content-Range"] = f"bytes */{f.size}"
            return refused
        start, stop = wanted or (0, f.size)
        resp = web.StreamResponse(status=206 if wanted else 200)
        resp.content_type = f.content_type.split(";")[0]
        resp.content_length = stop - start
        resp.headers.update({
            "Accept-Ranges": "bytes",
            "ETag": f'"{f.sha256}"',
            "Content-Disposition": _content_disposition(f.name),
            # Never rendered as a page of this origin, whatever type was declared.
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
            "Cache-Control": "private, no-cache",
        })
        if wanted:
            resp.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{f.size}"
        if request.method == "HEAD" or stop <= start:
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        async with contextlib.aclosing(self.files.read(f, start, stop)) as chunks:
            # The first chunk of the range is read (and authenticated) before any header
            # goes out, so a tampered blob gets a clean error status instead of a cut
            # 200; a later chunk failing can only cut the response short.
            try:
                first = await anext(chunks, b"")
            except IntegrityError as exc:
                await self._integrity_failure(user, f.id, exc, sent=False)
                return web.json_response({
                    "error": "INTEGRITY_FAILURE",
                    "message": f"stored file {f.id} failed its integrity check (altered or "
                               "damaged in storage); it is not served, and the failure is "
                               "logged and audited"}, status=500)
            await resp.prepare(request)
            try:
                await resp.write(first)
                async for chunk in chunks:
                    await resp.write(chunk)
            except IntegrityError as exc:
                await self._integrity_failure(user, f.id, exc, sent=True)
                raise
        await resp.write_eof()
        return resp

    async def _integrity_failure(self, user_id: str, file_id: str, exc: IntegrityError,
                                 sent: bool) -> None:
        """A sealed blob failed authentication: an operator must see it (log and audit)."""
        log.error("file %s failed its integrity check on download by %s: %s", file_id,
                  user_id, exc)
        hook = self.node.accounts.audit
        if hook is not None:
            await hook("file.integrity", {
                "actor": user_id, "target": file_id, "outcome": "failed",
                "reason": f"integrity failure: {exc}",
                "response": "cut after headers" if sent else "500 INTEGRITY_FAILURE"})


def add_routes(app: web.Application, node: Node) -> None:
    api = FilesApi(node)
    r = app.router
    r.add_post("/api/v1/files", _guard(api.create))
    r.add_put("/api/v1/files/uploads/{upload_id}/parts/{n}", _guard(api.put_part))
    r.add_get("/api/v1/files/uploads/{upload_id}", _guard(api.status))
    r.add_post("/api/v1/files/uploads/{upload_id}/complete", _guard(api.complete))
    r.add_delete("/api/v1/files/uploads/{upload_id}", _guard(api.abort))
    r.add_get("/api/v1/files/{file_id}/info", _guard(api.info))
    r.add_get("/api/v1/files/{file_id}", _guard(api.download))

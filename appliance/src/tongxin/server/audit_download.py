"""GET /api/v1/admin/audit/download: the whole result of an audit search as a file.

    GET /audit/download?format=jsonl|csv&order=asc|desc&actor=&event=&outcome=&from_ms=&to_ms=

The filters are GET /audit's (:class:`tongxin.compliance.audit_search.AuditFilter`),
the operation is GET /audit's (``audit.read``, the auditor's), so whoever may search
the trail may download what the search finds, nobody else. The records are those with
a seq up to the newest when the download starts, oldest first (``order=desc``: newest
first, as the console's page shows them), streamed a batch at a time
(:func:`tongxin.compliance.audit_search.walk`): the node never holds the result.

At most ``max_records`` (:data:`MAX_RECORDS`) records are written; when more match, a
marker line ends the file (:func:`tongxin.compliance.audit_file.truncated_marker`) and
says where to go on. Each download is audited twice as ``audit.download``: before the
first byte (``step: started``, format, order, filters; a trail that cannot be written
refuses the download) and at the end (``step: finished``, ``count``, ``truncated``;
``outcome: failed`` when the client went away or the store failed, in which case the
connection is broken off rather than the file ended as if it were whole).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tongxin.compliance import audit_file
from tongxin.compliance.audit_search import FilterInvalid, walk

MAX_RECORDS = 100_000
"""The most records one download holds (docs/console.md); narrow the filters for more."""


def _err(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


class AuditDownload:
    """``api`` is the admin API: its ``c`` (the Compliance) audits and reads the trail,
    its ``audit_filter`` turns a query into filters (a username into a user id)."""

    def __init__(self, api: Any, max_records: int = MAX_RECORDS) -> None:
        self.api = api
        self.max_records = max_records

    async def download(self, request: web.Request, ctx: Any) -> web.StreamResponse:
        q = request.query
        fmt = q.get("format", "jsonl")
        order = q.get("order", "asc")
        if fmt not in audit_file.FORMATS:
            return _err(400, "INVALID_ARGUMENT", "format is jsonl or csv")
        if order not in ("asc", "desc"):
            return _err(400, "INVALID_ARGUMENT", "order is asc or desc")
        try:
            f = await self.api.audit_filter(q)
        except FilterInvalid as exc:
            return _err(400, "INVALID_ARGUMENT", str(exc))
        comp = self.api.c
        upto, _ = await comp.store.audit_state()
        who = {"actor": ctx.user.id, "actor_role": ctx.role, "source": ctx.source}
        await comp.audit("audit.download", step="started", format=fmt, order=order,
                         filters=f.as_dict(), upto=upto, max_records=self.max_records, **who)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        resp = web.StreamResponse(headers={
            "Content-Type": audit_file.FORMATS[fmt],
            "Content-Disposition": f'attachment; filename="tongxin-audit-{stamp}.{fmt}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Tongxin-Max-Records": str(self.max_records)})
        count, last, truncated, outcome = 0, 0, False, "failed"
        try:
            await resp.prepare(request)
            await resp.write(audit_file.header(fmt))
            async for batch in walk(comp.store, f, newest_first=order == "desc", upto=upto):
                if count >= self.max_records:
                    if batch:  # a match beyond the cap: say so, stop reading
                        truncated = True
                        break
                    continue
                part = batch[:self.max_records - count]
                if part:
                    await resp.write(audit_file.chunk(fmt, part))
                    count += len(part)
                    last = part[-1].seq
                if len(part) < len(batch):
                    truncated = True
                    break
            if truncated:
                resume = {"before": last} if order == "desc" else {"after": last}
                await resp.write(audit_file.truncated_marker(fmt, self.max_records, resume))
            await resp.write_eof()
            outcome = "ok"
        finally:
            await comp.audit("audit.download", step="finished", outcome=outcome, format=fmt,
                             order=order, filters=f.as_dict(), count=count, truncated=truncated,
                             **who)
        return resp

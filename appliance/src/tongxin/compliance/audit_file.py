"""Audit records as a downloadable file: JSON Lines or CSV, written a batch at a time.

JSON Lines: one record a line, as ``GET /api/v1/admin/audit`` answers it (the
record's canonical fields and its ``hash``), UTF-8. CSV (RFC 4180, CRLF, UTF-8 with
a byte order mark so that spreadsheet programs read Chinese right): a header row,
then :data:`CSV_COLUMNS`, the record's other fields as JSON in ``details``.

A cell a spreadsheet would take for a formula (its text starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return) is written with a single quote in front,
so that opening the file never evaluates what somebody typed, e.g. as a username at
a failed login (CSV injection). The JSON Lines file is written as it is.

When the download stops at its cap, the last line is a marker, not a record: in
JSON Lines an object with ``"truncated": true`` (a record always has ``seq``); in
CSV a row whose first cell starts with ``#truncated``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from tongxin.compliance.ports import AuditRecord

FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
CSV_COLUMNS = ("seq", "time_utc", "ts_ms", "node", "event", "actor", "actor_role", "target",
               "outcome", "source", "details", "prev", "hash")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NAMED = frozenset(CSV_COLUMNS) - {"time_utc", "ts_ms", "details"} | {"ts"}


def csv_safe(value: Any) -> str:
    """A cell's text, a single quote in front when a spreadsheet would read a formula."""
    text = "" if value is None else value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def record_json(r: AuditRecord) -> dict[str, Any]:
    return {**r.fields(), "hash": r.hash}


def csv_row(r: AuditRecord) -> list[str]:
    f = r.fields()
    details: Any = {k: v for k, v in f.items() if k not in _NAMED}
    if list(details) == ["details"]:  # the service's records: the rest is under "details"
        details = details["details"]
    when = datetime.fromtimestamp(r.ts / 1000, UTC).isoformat(timespec="milliseconds")
    cells = [r.seq, when.replace("+00:00", "Z"), r.ts, f.get("node", ""), r.event, r.actor,
             f.get("actor_role", ""), r.target, r.outcome, f.get("source", ""),
             _json(details) if details else "", f.get("prev", ""), r.hash]
    return [csv_safe(c) for c in cells]


def _csv_text(rows: Iterable[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue()


def header(fmt: str) -> bytes:
    """What the file starts with: the BOM and the header row (CSV), nothing (JSON Lines)."""
    return ("\ufeff" + _csv_text([list(CSV_COLUMNS)])).encode() if fmt == "csv" else b""


def chunk(fmt: str, records: Iterable[AuditRecord]) -> bytes:
    """Records in the file's format."""
    if fmt == "csv":
        return _csv_text(csv_row(r) for r in records).encode()
    return "".join(_json(record_json(r)) + "\n" for r in records).encode()


def truncated_marker(fmt: str, max_records: int, resume: dict[str, int]) -> bytes:
    """The last line of a download that stopped at ``max_records`` while more records
    matched; ``resume`` says where a further search starts (``before`` or ``after``)."""
    if fmt == "csv":
        where = " ".join(f"{k}={v}" for k, v in resume.items())
        note = (f"#truncated: only the first {max_records} matching records; narrow the "
                f"filters or search on from {where}")
        return _csv_text([[note] + [""] * (len(CSV_COLUMNS) - 1)]).encode()
    return (_json({"truncated": True, "max_records": max_records, **resume}) + "\n").encode()

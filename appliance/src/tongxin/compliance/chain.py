"""The audit chain's record format: canonical encoding, SM3 links, signed heads.

A record is a JSON object. Its canonical encoding is UTF-8 JSON with sorted
keys, no insignificant whitespace and non-ASCII characters kept as they are
(``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).
Values are strings, integers, booleans, null, lists and objects only: floats
have more than one spelling, so they are refused.

Each record carries ``prev``, the hash of the record before it (64 zeros for
the first), and is stored with ``hash = hex(SM3(canonical(record)))``. A
signed head is the canonical encoding of ``{"type": "tongxin-audit-head",
"v": 1, "seq", "hash", "ts", "node"}`` signed with SM2 (signer ID
``1234567812345678``, DER signature).
"""

from __future__ import annotations

import json
from typing import Any

from tongxin.crypto import sm3_digest

GENESIS = "0" * 64
RECORD_VERSION = 1
HEAD_TYPE = "tongxin-audit-head"

# Fields every record has, besides the free-form "details" object.
RECORD_FIELDS = ("v", "seq", "ts", "node", "event", "outcome", "actor", "actor_role", "target",
                 "source", "details", "prev")


class CanonicalError(ValueError):
    """A value that has no canonical encoding (a float, bytes, a non-string key)."""


def _check(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalError(f"{where}: key {k!r} is not a string")
            _check(v, f"{where}.{k}")
        return
    raise CanonicalError(f"{where}: {type(value).__name__} has no canonical encoding")


def canonical(obj: dict[str, Any]) -> str:
    _check(obj, "record")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(body: str) -> str:
    return sm3_digest(body.encode("utf-8")).hex()


def clean_details(details: dict[str, Any]) -> dict[str, Any]:
    """Make caller-supplied details encodable: floats and other types become strings."""

    def fix(v: Any) -> Any:
        if v is None or isinstance(v, bool | int | str):
            return v
        if isinstance(v, list | tuple):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {str(k): fix(x) for k, x in v.items()}
        return str(v)

    return {str(k): fix(v) for k, v in details.items()}


def seal(fields: dict[str, Any], seq: int, prev: str) -> tuple[dict[str, Any], str, str]:
    """Complete a record with its position; return (record, canonical body, hash)."""
    record = {
        "v": RECORD_VERSION,
        "seq": seq,
        "ts": int(fields["ts"]),
        "node": str(fields.get("node", "")),
        "event": str(fields["event"]),
        "outcome": str(fields.get("outcome", "ok")),
        "actor": str(fields.get("actor", "")),
        "actor_role": str(fields.get("actor_role", "")),
        "target": str(fields.get("target", "")),
        "source": str(fields.get("source", "")),
        "details": clean_details(dict(fields.get("details") or {})),
        "prev": prev,
    }
    body = canonical(record)
    return record, body, digest(body)


def head_message(seq: int, hash_hex: str, ts: int, node: str) -> bytes:
    return canonical({"type": HEAD_TYPE, "v": 1, "seq": seq, "hash": hash_hex, "ts": ts,
                      "node": node}).encode("utf-8")

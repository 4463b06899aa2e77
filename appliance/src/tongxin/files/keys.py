"""Server-made ids and the blob keys built from them (never from client input)."""

from __future__ import annotations

import re
import secrets

UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
FILE_ID_RE = re.compile(r"^f_[0-9a-f]{32}$")
PART_KEY_RE = re.compile(r"^parts/([0-9a-f]{32})/[0-9]{6}\.[0-9a-f]{16}$")
FILE_KEY_RE = re.compile(r"^blobs/[0-9a-f]{2}/f_[0-9a-f]{32}$")
# Audit archive objects (compliance/archive.py): made from the configured
# prefix and seq numbers, never from client input.
ARCHIVE_KEY_RE = re.compile(
    r"^audit-archive/[A-Za-z0-9_.-]+/(audit-[0-9]{12}-[0-9]{12}\.jsonl\.zst|manifest\.json|manifest\.sig|anchor\.json)$")


def new_upload_id() -> str:
    return secrets.token_hex(16)


def new_file_id() -> str:
    return "f_" + secrets.token_hex(16)


def parts_prefix(upload_id: str) -> str:
    if not UPLOAD_ID_RE.match(upload_id):
        raise ValueError(f"not an upload id: {upload_id!r}")
    return f"parts/{upload_id}/"


def new_part_key(upload_id: str, n: int) -> str:
    """A fresh key for one copy of part n: a re-sent part never overwrites the
    copy the metadata points at, so the two always agree."""
    if not 1 <= n <= 999999:
        raise ValueError(f"part number out of range: {n}")
    return f"{parts_prefix(upload_id)}{n:06d}.{secrets.token_hex(8)}"


def file_key(file_id: str) -> str:
    if not FILE_ID_RE.match(file_id):
        raise ValueError(f"not a file id: {file_id!r}")
    return f"blobs/{file_id[2:4]}/{file_id}"


def valid_key(key: str) -> bool:
    return bool(PART_KEY_RE.match(key) or FILE_KEY_RE.match(key) or ARCHIVE_KEY_RE.match(key))

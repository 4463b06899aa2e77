"""The evidence files of backups, restore tests and DR drills (<data_dir>/evidence/),
for the auditor's 演练报告 page (GET /api/v1/admin/evidence).

`tongxin backup create` and `restore` write ``backup-<UTC>.json`` and
``restore-<UTC>.json`` (tongxin.cli.backup); `tongxin drill report` writes
``dr-drill-<kind>-<UTC>.json`` and its HTML page beside it (tongxin.drill.report).
:func:`list_evidence` summarises every one, newest first; :func:`read_evidence`
reads one by its own file name and nothing else: a name that is not an evidence
file's (a path, ``..``, another file of the data directory, a symbolic link) is
refused before anything is opened.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

from tongxin.compliance.report import _parse_time

KINDS: tuple[str, ...] = ("backup", "restore", "dr-drill")
NAME = re.compile(r"(backup|restore|dr-drill)-[A-Za-z0-9_-]{1,80}\.json")
MAX_BYTES = 32 * 1024 * 1024  # a drill report with its timeline is well under this

# What the list shows of each kind (the rest is in the file itself).
_SUMMARY: dict[str, tuple[str, ...]] = {
    "backup": ("id", "bytes", "duration_seconds", "target", "signed_by"),
    "restore": ("backup", "duration_seconds"),
    "dr-drill": ("kind", "run_id", "rpo_seconds", "rto_seconds", "rto_all_users_seconds",
                 "sent", "lost", "problems"),
}


class EvidenceRefused(ValueError):
    """The name is not an evidence file's own name (400)."""


class EvidenceNotFound(LookupError):
    """No such evidence file (404)."""


def folder(home: Path) -> Path:
    return home / "evidence"


def kind_of(name: str) -> str:
    m = NAME.fullmatch(name)
    if m is None:
        raise EvidenceRefused(f"{name!r} is not the name of an evidence file "
                              "(backup-*.json, restore-*.json, dr-drill-*.json)")
    return m.group(1)


def _read(path: Path) -> bytes:
    """The file's bytes, if it is a regular file (not a link) directly in its folder."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise EvidenceNotFound(path.name) from None
    if not stat.S_ISREG(st.st_mode):
        raise EvidenceNotFound(path.name)
    if st.st_size > MAX_BYTES:
        raise EvidenceRefused(f"{path.name} is larger than {MAX_BYTES} bytes")
    return path.read_bytes()


def read_evidence(home: Path, name: str) -> tuple[str, bytes, dict[str, Any]]:
    """(kind, the file's bytes, its JSON) of the evidence file ``name``."""
    kind = kind_of(name)
    data = _read(folder(home) / name)
    try:
        doc = json.loads(data)
    except ValueError:
        raise EvidenceRefused(f"{name} is not JSON") from None
    if not isinstance(doc, dict):
        raise EvidenceRefused(f"{name} is not a JSON object")
    return kind, data, doc


def has_html(home: Path, name: str) -> bool:
    """Whether the drill wrote its HTML page beside ``name`` (dr-drill-*.html)."""
    if kind_of(name) != "dr-drill":
        return False
    try:
        return stat.S_ISREG((folder(home) / (name[:-5] + ".html")).lstat().st_mode)
    except OSError:
        return False


def summary(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    kind = kind_of(name)
    try:
        at: int | None = _parse_time(doc.get("finished_at"))
    except (ValueError, TypeError):
        at = None
    out: dict[str, Any] = {"file": name, "type": kind, "finished_at": at, "ok": doc.get("ok") is True}
    for key in _SUMMARY[kind]:
        if key in doc:
            out[key] = doc[key]
    if "error" in doc:
        out["error"] = str(doc["error"])
    if kind == "dr-drill" and isinstance(out.get("problems"), list):
        out["problems"] = [str(p) for p in out["problems"][:20]]
    return out


def list_evidence(home: Path) -> list[dict[str, Any]]:
    """A summary of every evidence file, newest first (by finished_at, then name); a
    file that cannot be read or parsed is listed as such, never skipped silently."""
    where = folder(home)
    if not where.is_dir():
        return []
    out: list[dict[str, Any]] = []
    for path in where.iterdir():
        if not NAME.fullmatch(path.name):
            continue
        try:
            _kind, _data, doc = read_evidence(home, path.name)
        except EvidenceNotFound:
            continue
        except (EvidenceRefused, OSError) as exc:
            out.append({"file": path.name, "type": kind_of(path.name), "finished_at": None,
                        "ok": False, "unreadable": True, "error": str(exc)})
            continue
        row = summary(path.name, doc)
        row["html"] = has_html(home, path.name)
        out.append(row)
    out.sort(key=lambda r: (r["finished_at"] or 0, r["file"]), reverse=True)
    return out

"""Versioned schema migrations of the MySQL-protocol (TiDB) store.

Each migration is a file ``NNNN_name.sql`` in this package: ``NNNN`` is its
version, applied in ascending order and recorded in ``schema_migrations``
with the SHA-256 of the file, so a migration edited after it was applied is
refused rather than silently skipped. Statements end with ``;`` at the end of
a line. A statement preceded by a line ``-- only: tidb`` or ``-- only: mysql``
runs only on that kind of server (MySQL and MariaDB count as ``mysql``).

MySQL runs DDL outside transactions, so every statement must be safe to run
again (``CREATE TABLE IF NOT EXISTS`` ...; a ``CREATE INDEX`` of an index
that exists, and an ``ALTER TABLE ... ADD COLUMN`` of one column that exists,
count as done): a migration interrupted half-way is simply
applied again on the next start. Nodes starting together take turns through
``GET_LOCK``; where the server has none (TiDB before 6.1) they may run the
same statements side by side, which the same rule makes safe, and recording a
version is idempotent (the first node's row stands, its checksum checked).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

FLAVORS = ("mysql", "tidb")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def statements(self, flavor: str) -> list[str]:
        """The statements to run on a server of this flavor ("mysql" or "tidb")."""
        if flavor not in FLAVORS:
            raise ValueError(f"unknown server flavor {flavor!r}")
        return [sql for only, sql in split_statements(self.text) if only in ("", flavor)]


def split_statements(text: str) -> list[tuple[str, str]]:
    """(only, statement) pairs; ``only`` is "" when the statement runs everywhere."""
    out: list[tuple[str, str]] = []
    only = ""
    buf: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not buf and stripped.startswith("--"):
            directive = stripped[2:].strip()
            if directive.startswith("only:"):
                only = directive[5:].strip()
                if only not in FLAVORS:
                    raise ValueError(f"unknown flavor in {raw!r}")
            continue
        if not buf and not stripped:
            continue
        buf.append(line)
        if stripped.endswith(";"):
            out.append((only, "\n".join(buf).rstrip().rstrip(";")))
            buf, only = [], ""
    if buf:
        raise ValueError("the last statement does not end with ';'")
    return out


def load(package: str = __name__) -> list[Migration]:
    """Every migration shipped with this release in ``package`` (this one, or another
    set in the same format such as the compliance tables'), by version."""
    found: list[Migration] = []
    for item in resources.files(package).iterdir():
        m = _NAME.match(item.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), item.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"{package}: migration versions must be 1..n without gaps, got {versions}")
    return found


def latest_version() -> int:
    return len(load())


def server_flavor(version: str) -> str:
    """The flavor a server's ``SELECT VERSION()`` reports (TiDB: '8.0.11-TiDB-v7.5.1')."""
    return "tidb" if "tidb" in version.lower() else "mysql"

"""Versioned schema migrations of the compliance tables on MySQL/TiDB.

The same file format and rules as the message store's migrations
(:mod:`tongxin.store.migrations`: ``NNNN_name.sql``, ``;`` at the end of a
line, ``-- only: tidb|mysql``, every statement re-runnable), recorded in a
table of their own, ``compliance_migrations``: the compliance schema is
versioned apart from the message store's, so either can gain a migration
without renumbering the other.
"""

from __future__ import annotations

import re
from importlib import resources

from tongxin.store.migrations import Migration

TABLE = "compliance_migrations"

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def load() -> list[Migration]:
    """Every compliance migration shipped with this release, by version."""
    found: list[Migration] = []
    for item in resources.files(__name__).iterdir():
        m = _NAME.match(item.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), item.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"compliance migration versions must be 1..n without gaps, got {versions}")
    return found

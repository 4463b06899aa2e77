"""Versioned schema migrations of the compliance tables on MySQL/TiDB.

The same file format and rules as the message store's migrations
(:mod:`tongxin.store.migrations`: ``NNNN_name.sql``, ``;`` at the end of a
line, ``-- only: tidb|mysql``, every statement re-runnable), recorded in a
table of their own, ``compliance_migrations``: the compliance schema is
versioned apart from the message store's, so either can gain a migration
without renumbering the other.
"""

from __future__ import annotations

from tongxin.store import migrations as _store_migrations
from tongxin.store.migrations import Migration

TABLE = "compliance_migrations"


def load() -> list[Migration]:
    """Every compliance migration shipped with this release, by version."""
    return _store_migrations.load(__name__)

"""The MySQL-protocol data source name, parsed without importing the driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class MysqlDsn:
    host: str
    port: int
    user: str
    password: str = field(repr=False)  # never in logs
    database: str


_FORM = "expected mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"


def parse_dsn(dsn: str) -> MysqlDsn:
    """``mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`` (port 4000 is TiDB's, 3306 MySQL's).

    Error messages never repeat the DSN: it may hold a password.
    """
    parts = urlsplit(dsn)
    if parts.scheme != "mysql":
        raise ValueError(f"{_FORM} (scheme is {parts.scheme!r})")
    database = unquote(parts.path.lstrip("/"))
    try:
        port = parts.port or 3306
    except ValueError as exc:
        raise ValueError(f"{_FORM} (the port is not a number)") from exc
    if not parts.hostname or not parts.username or not database or "/" in database:
        raise ValueError(f"{_FORM} (user, host or database missing)")
    if parts.query or parts.fragment:
        raise ValueError(f"{_FORM} (options after the database name are not supported)")
    return MysqlDsn(parts.hostname, port, unquote(parts.username),
                    unquote(parts.password or ""), database)

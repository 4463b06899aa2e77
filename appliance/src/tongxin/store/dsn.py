"""The MySQL-protocol data source name, parsed without importing the driver.

One DSN may name several endpoints of the same database in order of
preference (``HOST1:PORT,HOST2:PORT``): the Galera members of dc1 and dc2 in
the lab, TiDB servers in production. Which one is used, and when the pool
moves, is :mod:`tongxin.store.endpoints`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import unquote

DEFAULT_PORT = 3306  # MySQL's; TiDB listens on 4000, which a DSN names explicitly


class Endpoint(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class MysqlDsn:
    """``host``/``port`` is the preferred endpoint; ``fallbacks`` the others, in order."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)  # never in logs
    database: str
    fallbacks: tuple[Endpoint, ...] = ()

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return (Endpoint(self.host, self.port), *self.fallbacks)

    @property
    def address(self) -> str:
        """Every endpoint, comma-separated, for messages (no user, no password)."""
        return ",".join(str(e) for e in self.endpoints)

    def with_password(self, password: str) -> MysqlDsn:
        return MysqlDsn(self.host, self.port, self.user, password, self.database, self.fallbacks)


_FORM = "expected mysql://USER[:PASSWORD]@HOST[:PORT][,HOST[:PORT]...]/DATABASE"


def parse_dsn(dsn: str) -> MysqlDsn:
    """``mysql://USER[:PASSWORD]@HOST1[:PORT],HOST2[:PORT]/DATABASE``.

    Error messages never repeat the DSN or any part of it: a password may
    hold any character, so a malformed one could land in any field.
    """
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme.lower() != "mysql":
        raise ValueError(f"{_FORM} (the scheme is not mysql)")
    netloc, slash, path = rest.partition("/")
    if "?" in path or "#" in path or "?" in netloc or "#" in netloc:
        raise ValueError(f"{_FORM} (options after the database name are not supported)")
    # The last '@' ends the credentials: a password may contain '@' unencoded.
    userinfo, at, hosts = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    database = unquote(path)
    if not at or not user or not slash or not database or "/" in database:
        raise ValueError(f"{_FORM} (user, host or database missing)")
    endpoints = [_endpoint(part, i) for i, part in enumerate(hosts.split(","), 1)]
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"{_FORM} (an endpoint is listed twice)")
    first, *rest_eps = endpoints
    return MysqlDsn(first.host, first.port, unquote(user), unquote(password), database,
                    tuple(rest_eps))


def _endpoint(text: str, n: int) -> Endpoint:
    where = f"endpoint {n}"
    if text.startswith("["):  # [IPv6]:port
        host, close, tail = text[1:].partition("]")
        if not close or (tail and not tail.startswith(":")):
            raise ValueError(f"{_FORM} ({where}: unbalanced brackets)")
        port_text = tail[1:] if tail else ""
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise ValueError(f"{_FORM} ({where}: an IPv6 address needs [brackets])")
    if not host:
        raise ValueError(f"{_FORM} ({where}: the host is missing)")
    if not port_text:
        return Endpoint(host.lower(), DEFAULT_PORT)
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{_FORM} ({where}: the port is not a number from 1 to 65535)")
    return Endpoint(host.lower(), int(port_text))

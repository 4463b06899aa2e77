"""The database part of a backup with ``storage.backend: mysql``: MariaDB's own client tools.

``mariadb-dump --single-transaction`` reads one consistent snapshot without
locking writers (InnoDB on MariaDB and Galera, TiDB's MVCC the same); ``mariadb``
loads it back. The password goes to the tools in a ``--defaults-extra-file``
of mode 0600 that exists only while they run, never on a command line that
``ps`` shows. For TiDB at scale BR is the tool (docs/operations.md, "Backup").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

from tongxin.store.dsn import Endpoint, MysqlDsn, parse_dsn

DUMP_TOOL = "mariadb-dump"
CLIENT_TOOL = "mariadb"
_COPY = 1 << 20


class DumpError(Exception):
    """The client tools are missing or the database refused; the message says which."""


def dsn_with_password(dsn: str) -> MysqlDsn:
    parsed = parse_dsn(dsn)
    if not parsed.password:
        parsed = parsed.with_password(os.environ.get("TONGXIN_MYSQL_PASSWORD", ""))
    return parsed


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DumpError(f"{name} is not installed (Debian: mariadb-client; the backup role "
                        "installs it from the offline bundle)")
    return path


@contextmanager
def _defaults_file(dsn: MysqlDsn, endpoint: Endpoint) -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="tongxin-backup-", suffix=".cnf")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            # Option file values may be quoted; a quote or backslash inside is escaped.
            pw = dsn.password.replace("\\", "\\\\").replace('"', '\\"')
            fh.write(f'[client]\nhost="{endpoint.host}"\nport={endpoint.port}\n'
                     f'user="{dsn.user}"\npassword="{pw}"\nprotocol=tcp\n')
        yield path
    finally:
        os.unlink(path)


def dump(dsn: MysqlDsn, out: BinaryIO) -> Endpoint:
    """Write the database's SQL dump to ``out``; tries the DSN's endpoints in order and
    returns the one that served it."""
    tool = _tool(DUMP_TOOL)
    errors = []
    for endpoint in dsn.endpoints:
        with _defaults_file(dsn, endpoint) as cnf:
            # --skip-add-locks and --skip-lock-tables: TiDB refuses LOCK TABLES, and the
            # snapshot of --single-transaction needs no lock.
            proc = subprocess.Popen(
                [tool, f"--defaults-extra-file={cnf}", "--single-transaction", "--quick",
                 "--hex-blob", "--skip-add-locks", "--skip-lock-tables", "--no-tablespaces",
                 "--default-character-set=utf8mb4", dsn.database],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert proc.stdout is not None and proc.stderr is not None
            wrote = False
            while data := proc.stdout.read(_COPY):
                out.write(data)
                wrote = True
            err = proc.stderr.read().decode(errors="replace").strip()
            if proc.wait() == 0:
                return endpoint
        if wrote:  # a dump that broke off midway cannot be resumed on another endpoint
            raise DumpError(f"{DUMP_TOOL} from {endpoint} failed midway: {err}")
        errors.append(f"{endpoint}: {err}")
    raise DumpError(f"{DUMP_TOOL} failed on every endpoint: " + "; ".join(errors))


def _client(dsn: MysqlDsn, cnf: str, *args: str) -> list[str]:
    return [_tool(CLIENT_TOOL), f"--defaults-extra-file={cnf}", "--batch",
            "--default-character-set=utf8mb4", *args, dsn.database]


def query(dsn: MysqlDsn, sql: str) -> str:
    endpoint = dsn.endpoints[0]
    with _defaults_file(dsn, endpoint) as cnf:
        res = subprocess.run(_client(dsn, cnf, "--skip-column-names", "-e", sql),
                             capture_output=True, check=False)
    if res.returncode != 0:
        raise DumpError(f"{CLIENT_TOOL} at {endpoint}: "
                        f"{res.stderr.decode(errors='replace').strip()}")
    return res.stdout.decode()


def load(dsn: MysqlDsn, src: Iterator[bytes]) -> None:
    """Feed a dump to the client, in one session, stopping at the first error."""
    endpoint = dsn.endpoints[0]
    with _defaults_file(dsn, endpoint) as cnf, tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(_client(dsn, cnf), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=errf)
        assert proc.stdin is not None
        try:
            for block in src:
                proc.stdin.write(block)
        except BrokenPipeError:
            pass  # the client stopped at an error; its message follows
        except BaseException:
            proc.kill()  # a source that failed midway: execute none of what is left
            raise
        finally:
            with suppress(BrokenPipeError):
                proc.stdin.close()
        rc = proc.wait()
        errf.seek(0)
        err = errf.read().decode(errors="replace").strip()
    if rc != 0:
        raise DumpError(f"{CLIENT_TOOL} at {endpoint} stopped loading the dump: {err}")

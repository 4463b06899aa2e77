"""MySQL-protocol store pieces that need no server: migrations, flavors, the DSN."""

from __future__ import annotations

from pathlib import Path

import pytest
from asyncmy import errors as myerrors

from tongxin.config import ConfigError, load_config
from tongxin.store import migrations
from tongxin.store.dsn import parse_dsn
from tongxin.store.mysql_store import MysqlStore


def test_shipped_migrations_load_in_order() -> None:
    found = migrations.load()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "initial"
    tables = {"users", "tokens", "conversations", "members", "messages"}
    for flavor in migrations.FLAVORS:
        sql = " ".join(found[0].statements(flavor))
        assert all(f"CREATE TABLE IF NOT EXISTS {t} " in sql for t in tables)
        assert "RETURNING" not in sql.upper()


def test_statement_splitting_and_flavors() -> None:
    text = """-- header; with a semicolon
CREATE TABLE a (x INT);

-- only: tidb
ALTER TABLE a ADD COLUMN y BIGINT AUTO_RANDOM;
-- only: mysql
ALTER TABLE a ADD COLUMN y BIGINT AUTO_INCREMENT;
INSERT INTO a VALUES (1),
    (2);
"""
    mig = migrations.Migration(9, "t", text)
    assert mig.statements("mysql") == [
        "CREATE TABLE a (x INT)", "ALTER TABLE a ADD COLUMN y BIGINT AUTO_INCREMENT",
        "INSERT INTO a VALUES (1),\n    (2)"]
    assert mig.statements("tidb")[1] == "ALTER TABLE a ADD COLUMN y BIGINT AUTO_RANDOM"
    with pytest.raises(ValueError):
        migrations.split_statements("-- only: oracle\nSELECT 1;\n")
    with pytest.raises(ValueError):
        migrations.split_statements("SELECT 1\n")
    with pytest.raises(ValueError):
        mig.statements("postgres")


@pytest.mark.parametrize(("version", "flavor"), [
    ("8.0.11-TiDB-v7.5.1", "tidb"),
    ("5.7.25-TiDB-v6.5.0", "tidb"),
    ("10.11.19-MariaDB-0+deb12u1", "mysql"),
    ("8.0.36", "mysql"),
])
def test_server_flavor(version: str, flavor: str) -> None:
    assert migrations.server_flavor(version) == flavor


def test_dsn_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    d = parse_dsn("mysql://tx%40corp:p%3Ass@db.internal:4000/tongxin")
    assert (d.user, d.password, d.host, d.port, d.database) == (
        "tx@corp", "p:ss", "db.internal", 4000, "tongxin")
    assert "p:ss" not in repr(d)
    assert parse_dsn("mysql://u@h/db").port == 3306
    monkeypatch.setenv("TONGXIN_MYSQL_PASSWORD", "from-env")
    assert MysqlStore.from_dsn("mysql://u@h:1/db").dsn.password == "from-env"
    assert MysqlStore.from_dsn("mysql://u:inline@h:1/db").dsn.password == "inline"


@pytest.mark.parametrize("dsn", [
    "postgres://u:secret@h/db", "mysql://u:secret@h/", "mysql://h/db", "mysql://u:secret@h:x/db",
    "mysql://u:secret@h/db?ssl=1",
])
def test_bad_dsn_is_a_config_error_without_the_password(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(f"storage:\n  backend: mysql\n  mysql_dsn: '{dsn}'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"storage\.mysql_dsn") as info:
        load_config(path)
    assert "secret" not in str(info.value)


class _RacingStore(MysqlStore):
    """A store whose migration passes meet another node's DDL (TiDB 8028) ``races`` times."""

    def __init__(self, races: int) -> None:
        self.races = races
        self.passes = 0

    async def _apply_migrations(self, cur: object, applied: list[int]) -> None:
        self.passes += 1
        if self.passes == 1:
            # The first pass records version 6, then meets the other node's DDL.
            applied.append(6)
        if self.passes <= self.races:
            raise myerrors.OperationalError(
                8028, "Information schema is changed during the execution of the statement"
                " [try again later]")
        applied.append(7)


async def test_an_unlocked_pass_that_met_another_nodes_ddl_runs_again() -> None:
    store = _RacingStore(races=2)
    # Version 6, recorded by the pass that failed, is still reported: the next
    # passes find it done and skip it (a full run on TiDB once reported no node
    # as having applied it).
    assert await store._apply_migrations_retrying(None, locked=False) == [6, 7]  # type: ignore[arg-type]
    assert store.passes == 3


async def test_a_locked_pass_or_a_lasting_race_is_not_hidden() -> None:
    # Under the named lock no other node's DDL can race, so 8028 means something else.
    with pytest.raises(myerrors.OperationalError):
        await _RacingStore(races=1)._apply_migrations_retrying(None, locked=True)  # type: ignore[arg-type]
    lasting = _RacingStore(races=99)
    with pytest.raises(myerrors.OperationalError):
        await lasting._apply_migrations_retrying(None, locked=False)  # type: ignore[arg-type]
    assert lasting.passes == 5

"""Ordered database endpoints in storage.mysql_dsn, the endpoint-failure rule, and the
site configuration section."""

from __future__ import annotations

from pathlib import Path

import pytest
from asyncmy import errors as myerrors

from tongxin.config import ConfigError, load_config
from tongxin.store.dsn import Endpoint, parse_dsn
from tongxin.store.endpoints import is_endpoint_failure
from tongxin.store.mysql_store import MysqlStore


def test_several_endpoints_in_order() -> None:
    d = parse_dsn("mysql://tx:p%40ss@db1.dc1:3306,db2.dc2,[fd00::7]:4000/tongxin")
    assert d.endpoints == (Endpoint("db1.dc1", 3306), Endpoint("db2.dc2", 3306),
                           Endpoint("fd00::7", 4000))
    assert (d.host, d.port) == ("db1.dc1", 3306)  # the preferred one
    assert (d.user, d.password, d.database) == ("tx", "p@ss", "tongxin")
    assert d.address == "db1.dc1:3306,db2.dc2:3306,[fd00::7]:4000"
    assert "p@ss" not in repr(d)


def test_one_endpoint_is_unchanged() -> None:
    d = parse_dsn("mysql://u@DB.Internal:4000/db")
    assert d.endpoints == (Endpoint("db.internal", 4000),) and d.fallbacks == ()
    assert d.address == "db.internal:4000"


def test_a_raw_at_sign_in_the_password() -> None:
    d = parse_dsn("mysql://u:a@b@h1,h2:1/db")
    assert d.password == "a@b" and d.endpoints == (Endpoint("h1", 3306), Endpoint("h2", 1))


def test_env_password_keeps_every_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGXIN_MYSQL_PASSWORD", "from-env")
    d = MysqlStore.from_dsn("mysql://u@h1:1,h2:2/db").dsn
    assert d.password == "from-env" and d.address == "h1:1,h2:2"


@pytest.mark.parametrize(("dsn", "why"), [
    ("mysql://u:secret@h1,,h2/db", "endpoint 2: the host is missing"),
    ("mysql://u:secret@h1:3306,h2:secret/db", "endpoint 2: the port is not a number"),
    ("mysql://u:secret@h1:0/db", "endpoint 1: the port is not a number"),
    ("mysql://u:secret@h1:70000/db", "the port is not a number"),
    ("mysql://u:secret@h1,h1:3306/db", "listed twice"),
    ("mysql://u:secret@fd00::1/db", "needs [brackets]"),
    ("mysql://u:secret@[fd00::1/db", "unbalanced brackets"),
    ("mysql://u:secret@h1,h2/", "user, host or database missing"),
    ("mysql://secret@/db", "endpoint 1: the host is missing"),
    ("mysql://u:secret@h1,h2/db?ssl=1", "options"),
    ("mysql://u:secret@h1,h2", "user, host or database missing"),
    ("mysql:/u:secret@h/db", "scheme"),
])
def test_bad_forms_name_the_problem_never_the_password(dsn: str, why: str,
                                                       tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        parse_dsn(dsn)
    assert why in str(info.value)
    assert "secret" not in str(info.value)
    path = tmp_path / "c.yml"
    path.write_text(f"storage:\n  mysql_dsn: '{dsn}'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"storage\.mysql_dsn") as cfg_info:
        load_config(path)
    assert "secret" not in str(cfg_info.value)


@pytest.mark.parametrize(("exc", "moves"), [
    (ConnectionRefusedError(111, "refused"), True),
    (TimeoutError(), True),
    (myerrors.OperationalError(2003, "Can't connect to MySQL server"), True),
    (myerrors.OperationalError(2013, "Lost connection to MySQL server during query"), True),
    (myerrors.InterfaceError(0, "Not connected"), True),
    # Galera: a member outside the primary component refuses every query.
    (myerrors.OperationalError(1047, "WSREP has not yet prepared node for application use"),
     True),
    # The server answered: the statement, not the endpoint, is the problem.
    (myerrors.OperationalError(1213, "Deadlock found"), False),
    (myerrors.IntegrityError(1062, "Duplicate entry"), False),
    (myerrors.ProgrammingError(1146, "Table doesn't exist"), False),
    (RuntimeError("pool is closing"), False),
])
def test_which_failures_move_to_the_next_endpoint(exc: BaseException, moves: bool) -> None:
    assert is_endpoint_failure(exc) is moves


def test_site_section(tmp_path: Path) -> None:
    cfg = load_config()
    assert (cfg.site.name, cfg.site.role, cfg.site.heartbeat_interval) == ("", "active", 1.0)
    path = tmp_path / "c.yml"
    path.write_text("site:\n  name: dr\n  role: standby\n  heartbeat_interval: 2\n",
                    encoding="utf-8")
    cfg = load_config(path)
    assert (cfg.site.name, cfg.site.role, cfg.site.heartbeat_interval) == ("dr", "standby", 2.0)


@pytest.mark.parametrize(("text", "needle"), [
    ("site:\n  role: passive\n", "site.role: 'passive' is not one of active, standby"),
    ("site:\n  heartbeat_interval: 0\n", "site.heartbeat_interval: must be positive"),
    ("site:\n  rol: standby\n", "did you mean 'role'"),
])
def test_bad_site_section(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)

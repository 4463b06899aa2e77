"""Standby mode and the replication heartbeat, with node processes on the real MariaDB.

A standby node (``site.role: standby``) answers /healthz, reports itself not
ready with reason ``standby``, refuses users, and writes nothing to its
database. Its replication lag comes from the heartbeat rows active nodes
write; here both share one database (a replica with no delay), so the lag is
about one heartbeat interval and grows once the active node stops.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncmy
import pytest
import yaml
from engines import (
    NodeProcess,
    _spawn,
    create_mysql_database,
    drop_mysql_database,
    free_port,
    service_env,
    services,
    start_node_process,
)

from tongxin.store.dsn import parse_dsn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BEAT = 0.2  # site.heartbeat_interval of every node here


@pytest.fixture(scope="module")
def server_dsn() -> Iterator[str]:
    services("start", "mariadb")
    yield service_env()["TONGXIN_MYSQL_DSN"]


@pytest.fixture
async def dsn(server_dsn: str) -> AsyncIterator[str]:
    fresh = await create_mysql_database(server_dsn)
    yield fresh
    await drop_mysql_database(server_dsn, fresh)


def _config(dsn: str, site: str, role: str) -> dict[str, Any]:
    return {"storage": {"backend": "mysql", "mysql_dsn": dsn, "mysql_pool_size": 4,
                        "mysql_timeout": 3.0},
            "site": {"name": site, "role": role, "heartbeat_interval": BEAT}}


async def _start_standby(name: str, home: Path, config: dict[str, Any],
                         tmp: Path) -> NodeProcess:
    """A standby is never ready: wait for /healthz instead."""
    node = _spawn(name, home, config, tmp, free_port())
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            if node.proc.poll() is not None:
                raise RuntimeError(f"standby exited:\n{node.log.read_text()[-3000:]}")
            try:
                async with http.get(node.http_url + "/healthz") as r:
                    if r.status == 200:
                        return node
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                node.kill9()
                raise RuntimeError(f"standby not up:\n{node.log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body


async def _tables(dsn: str) -> list[str]:
    d = parse_dsn(dsn)
    conn = await asyncmy.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                                 database=d.database, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = DATABASE()")
            return sorted(str(r[0]) for r in await cur.fetchall())
    finally:
        conn.close()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


async def test_standby_refuses_users_and_writes_nothing(dsn: str, tmp_path: Path) -> None:
    home = tmp_path / "dr"
    node = await _start_standby("dr-1", home, _config(dsn, "dr", "standby"), tmp_path)
    try:
        status, health = await _get(node.http_url + "/healthz")
        assert status == 200 and health["role"] == "standby"
        status, ready = await _get(node.http_url + "/readyz")
        assert status == 503
        assert ready["ready"] is False and ready["reason"] == "standby"
        assert ready["site"] == "dr" and ready["replication_lag_seconds"] is None

        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as ws_info:
                await http.ws_connect(node.ws_url)
            assert ws_info.value.status == 503
            for method, path in [("POST", "/api/v1/login"), ("POST", "/api/v1/register"),
                                 ("POST", "/api/v1/admin/login"), ("GET", "/api/v1/info"),
                                 ("GET", "/")]:
                async with http.request(method, node.http_url + path,
                                        json={"username": "alice", "password": "pw"}) as r:
                    assert r.status == 503, path
                    assert (await r.json())["reason"] == "standby", path

        assert (await _get(node.http_url + "/metrics"))[0] == 404  # not on the public port
        status, text = await _get(node.metrics_url)
        assert status == 200 and math.isnan(_metric(text, "tongxin_replication_lag_seconds"))
        assert _metric(text, "tongxin_db_endpoint_index") == 0

        # Several read intervals later the schema is still empty: no migrations, no
        # keyring, no audit, no heartbeat of its own. Nor did it make local secrets.
        await asyncio.sleep(10 * BEAT)
        assert await _tables(dsn) == []
        assert not (home / "secrets").exists()
    finally:
        node.stop()

    # Promotion: the same node restarted with site.role active serves (and migrates).
    active = await start_node_process("dr-1", home, _config(dsn, "dr", "active"), tmp_path)
    try:
        status, ready = await _get(active.http_url + "/readyz")
        assert status == 200 and ready["role"] == "active" and ready["site"] == "dr"
        assert "site_heartbeat" in await _tables(dsn)
    finally:
        active.stop()


async def test_standby_reports_lag_from_the_active_heartbeat(dsn: str, tmp_path: Path) -> None:
    active = await start_node_process("dc1-1", tmp_path / "dc1", _config(dsn, "dc1", "active"),
                                      tmp_path)
    standby: NodeProcess | None = None
    try:
        standby = await _start_standby("dr-1", tmp_path / "dr", _config(dsn, "dr", "standby"),
                                       tmp_path)
        deadline = time.monotonic() + 20
        while True:
            _, ready = await _get(standby.http_url + "/readyz")
            if ready["replication_lag_seconds"] is not None:
                break
            assert time.monotonic() < deadline, ready
            await asyncio.sleep(BEAT)
        # Same database, so only the beat and read intervals show (and process noise).
        assert 0 <= ready["replication_lag_seconds"] < 3, ready
        _, text = await _get(standby.metrics_url)
        assert _metric(text, "tongxin_replication_lag_seconds") < 3
        assert abs(_metric(text, "tongxin_replication_last_beat_timestamp_seconds")
                   - time.time()) < 3
        _, active_text = await _get(active.metrics_url)
        assert abs(_metric(active_text, "tongxin_replication_heartbeat_written_timestamp_seconds")
                   - time.time()) < 3

        # The CLI reads the same, through the second endpoint when the first is dead.
        d = parse_dsn(dsn)
        two = dsn.replace(f"@{d.host}:{d.port}/", f"@127.0.0.1:{free_port()},{d.host}:{d.port}/")
        cfg_file = tmp_path / "status.yml"
        cfg_file.write_text(yaml.safe_dump(_config(two, "dr", "standby")), encoding="utf-8")
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "tongxin.cli.main", "site", "status",
                             "--config", str(cfg_file)], capture_output=True, text=True,
            timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        status = json.loads(proc.stdout)
        assert (status["site"], status["role"]) == ("dr", "standby")
        assert (status["db_endpoint"], status["db_endpoint_index"]) == (f"{d.host}:{d.port}", 1)
        assert status["newest_heartbeat"]["node"] == "dc1-1"
        assert status["newest_heartbeat"]["site"] == "dc1"
        assert 0 <= status["replication_lag_seconds"] < 3
        assert d.password not in proc.stdout + proc.stderr

        active.stop()  # the active site goes away: no more beats reach the replica
        stopped = time.time()
        await asyncio.sleep(2.0)
        _, first = await _get(standby.http_url + "/readyz")
        await asyncio.sleep(1.0)
        _, second = await _get(standby.http_url + "/readyz")
        assert first["replication_lag_seconds"] >= 1.5, first
        assert second["replication_lag_seconds"] >= first["replication_lag_seconds"] + 0.8
        assert second["replication_lag_seconds"] <= time.time() - stopped + 3
        # What a failover needs: the copy has been silent about as long as the
        # source is gone, and it was close behind when it last moved (the
        # most a takeover now would lose), which stops growing.
        assert second["replication_silent_seconds"] >= first["replication_silent_seconds"] + 0.8
        assert 1.0 <= second["replication_silent_seconds"] <= time.time() - stopped + 3
        assert 0 <= second["replication_lag_at_last_advance_seconds"] < 3, second
        assert (second["replication_lag_at_last_advance_seconds"]
                == first["replication_lag_at_last_advance_seconds"])
        _, text = await _get(standby.metrics_url)
        assert _metric(text, "tongxin_replication_lag_at_last_advance_seconds") < 3
    finally:
        active.stop()
        if standby is not None:
            standby.stop()

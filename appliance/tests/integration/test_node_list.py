"""GET /api/v1/admin/nodes lists every active node of the installation (issue 21).

On the shared MySQL-protocol database (MariaDB here) each node's replication
heartbeat row carries its version, address, open connections and start time:
two nodes sharing one database are both listed by either, a node whose beat
is older than three heartbeat intervals is "stale" (a stopped node stays
listed, stale, until its row is a day old) and a database that cannot be read
is a 503 in JSON. On the embedded SQLite store the list is the node itself. The
list is the system administrator's (node.status); the auditor and the security
administrator are refused and the refusal is audited.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]
from engines import storage_section
from test_compliance_admin import call, events, trio  # type: ignore[import-not-found, unused-ignore]

from tongxin import __version__
from tongxin.clock import now_ms
from tongxin.crypto import sm2_available
from tongxin.site.heartbeat import STARTED_MS
from tongxin.store.mysql_store import MysqlStore
from tongxin.store.ports import NodeStatus, Unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300),
              pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")]

BEAT = 0.2  # site.heartbeat_interval of the nodes here: stale after 0.6 s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _nodes(http: aiohttp.ClientSession, rn: RunningNode, token: str) -> dict[str, Any]:
    status, body = await call(http, rn, "GET", "/nodes", token)
    assert status == 200, body
    return dict(body)


async def _until(http: aiohttp.ClientSession, rn: RunningNode, token: str, what: str,
                 ok: Any, within: float = 20.0) -> dict[str, dict[str, Any]]:
    """GET /nodes until ``ok(rows by node_id)``; those rows."""
    deadline = time.monotonic() + within
    while True:
        rows = {r["node_id"]: r for r in (await _nodes(http, rn, token))["nodes"]}
        if ok(rows):
            return rows
        assert time.monotonic() < deadline, f"{what}: {rows}"
        await asyncio.sleep(BEAT)


async def test_sqlite_lists_this_node_and_only_the_sysadmin_reads_it(
        node_factory: NodeFactory, http: aiohttp.ClientSession) -> None:
    rn: RunningNode = await node_factory(site={"name": "dc1"})
    admins = await trio(rn, http)
    await rn.client()  # one open WebSocket connection
    body = await _nodes(http, rn, admins["sysadmin"].token)
    assert body["source"] == "self"
    (row,) = body["nodes"]
    assert row["node_id"] == rn.node.node_id and row["site"] == "dc1" and row["self"] is True
    assert row["version"] == __version__ and row["state"] == "live" and row["age_s"] == 0
    assert row["connections"] == 1 and row["started_at"] == STARTED_MS
    assert row["address"] == f"127.0.0.1:{rn.port}"
    assert abs(row["last_beat_ms"] - now_ms()) < 5000
    for role in ("auditor", "secadmin"):
        status, refused = await call(http, rn, "GET", "/nodes", admins[role].token)
        assert status == 403 and refused["error"] == "FORBIDDEN", refused
        assert refused["required_role"] == "sysadmin"
    forbidden = [e for e in await events(rn, "admin.forbidden") if e.get("target") == "node.status"]
    assert sorted(e["actor_role"] for e in forbidden) == ["auditor", "secadmin"]
    status, _ = await call(http, rn, "GET", "/nodes")
    assert status == 401


async def test_two_nodes_on_one_database_are_both_listed_and_a_silent_one_is_stale(
        node_factory: NodeFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with storage_section("mariadb") as storage:
        site = {"heartbeat_interval": BEAT}
        a: RunningNode = await node_factory(home=tmp_path / "a", storage=storage,
                                            site={**site, "name": "dc1"})
        # The installation's secrets (token and at-rest keys) are the same on every node.
        shutil.copytree(tmp_path / "a" / "secrets", tmp_path / "b" / "secrets")
        b: RunningNode = await node_factory(home=tmp_path / "b", storage=storage,
                                            site={**site, "name": "dc2"})
        ida, idb = a.node.node_id, b.node.node_id  # hostname:port
        admins = await trio(a, http)
        token = admins["sysadmin"].token
        await b.client()
        await b.client()
        rows = await _until(http, a, token, "both nodes live, b with its two connections",
                            lambda r: {ida, idb} <= set(r)
                            and all(r[n]["state"] == "live" for n in (ida, idb))
                            and r[idb]["connections"] == 2)
        assert [(r["site"], r["self"]) for r in rows.values()] == [("dc1", True), ("dc2", False)]
        assert rows[idb]["version"] == __version__
        assert rows[idb]["address"] == f"127.0.0.1:{b.port}"
        assert rows[idb]["started_at"] == STARTED_MS
        assert rows[ida]["connections"] == 0
        assert all(r["age_s"] < 3 * BEAT + 1 for r in rows.values())

        # A node that stopped a minute ago (its last row, written by a node of an earlier
        # release: no status) is stale; one silent for two days is no longer listed.
        store = a.node.store
        assert isinstance(store, MysqlStore)
        await store.write_heartbeat("dc2-app-02", "dc2", now_ms() - 60_000)
        await store.write_heartbeat("dc1-app-09", "dc1", now_ms() - 2 * 86_400_000,
                                    NodeStatus("0.0.9", "old:8080", 3, 1))
        body = await _nodes(http, a, token)
        listed = [(r["site"], r["node_id"]) for r in body["nodes"]]
        assert sorted(listed) == listed  # by site, then node
        assert [n for _, n in listed] == [ida, *sorted([idb, "dc2-app-02"])]
        (old,) = [r for r in body["nodes"] if r["node_id"] == "dc2-app-02"]
        assert old["state"] == "stale" and 59 < old["age_s"] < 120
        assert (old["version"], old["connections"], old["started_at"]) == (None, None, None)
        assert body["stale_after_s"] == pytest.approx(3 * BEAT)

        # Node b stops: within a few intervals it is stale on a, still listed.
        await b.stop()
        rows = await _until(http, a, token, "b stale after it stopped",
                            lambda r: r[idb]["state"] == "stale")
        assert rows[ida]["state"] == "live"

        # The database does not answer: a 503 in JSON, as every API answers then.
        async def down(since_ms: int) -> list[Any]:
            raise Unavailable("database unavailable: connection refused")

        store.node_beats = down  # type: ignore[method-assign]
        status, refused = await call(http, a, "GET", "/nodes", token)
        assert status == 503, refused
        assert refused["error"] == "UNAVAILABLE" and "connection refused" in refused["message"]
        assert refused["retry_after_ms"] == 1000

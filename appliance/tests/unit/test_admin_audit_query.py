"""GET /api/v1/admin/audit's filters and paging (the console's audit page), both ways:
every matching record comes exactly once across the pages, in order, whatever the
page size, with gaps in the sequence (records purged below the archive cut)."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from aiohttp.test_utils import make_mocked_request

from tongxin.compliance.ports import AdminSession, AuditRecord
from tongxin.server.admin_api import AdminApi, Ctx
from tongxin.store.ports import User

AUDITOR = User("u_aud", "audrey", "", "", "auditor", 0)
SYS = User("u_sys", "sysadm", "", "", "sysadmin", 0)


def record(seq: int) -> AuditRecord:
    actor = SYS.id if seq % 3 == 0 else "system"
    event = ("user.create", "user.disable", "admin.login", "node.start")[seq % 4]
    outcome = "denied" if seq % 5 == 0 else "ok"
    fields = {"seq": seq, "ts": 1000 * seq, "event": event, "actor": actor, "target": "",
              "outcome": outcome}
    return AuditRecord(seq, 1000 * seq, event, actor, "", outcome, json.dumps(fields), f"h{seq}")


class FakeStore:
    def __init__(self, seqs: list[int]) -> None:
        self.records = [record(s) for s in seqs]

    async def audit_records(self, after_seq: int, limit: int) -> list[AuditRecord]:
        return [r for r in self.records if r.seq > after_seq][:limit]

    async def audit_state(self) -> tuple[int, str]:
        return self.records[-1].seq, self.records[-1].hash


class FakeCompliance:
    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.audited: list[dict[str, Any]] = []

    async def audit(self, event: str, **fields: Any) -> None:
        self.audited.append({"event": event, **fields})


class FakeUsers:
    async def get_user_by_name(self, name: str) -> User | None:
        return {u.username: u for u in (SYS, AUDITOR)}.get(name)


class FakeNode:
    store = FakeUsers()


# seqs 1..40 purged (archived), then 41..700 with a hole at 300..309
SEQS = [s for s in range(41, 701) if not 300 <= s < 310]


def api(seqs: list[int] = SEQS) -> tuple[AdminApi, FakeCompliance]:
    a = AdminApi(cast(Any, FakeNode()))
    comp = FakeCompliance(FakeStore(seqs))
    a._compliance = cast(Any, comp)
    return a, comp


CTX = Ctx(AUDITOR, "auditor", AdminSession("t", AUDITOR.id, "auditor", 0, 0, 0), "127.0.0.1")


async def page(a: AdminApi, query: str) -> dict[str, Any]:
    resp = await a.read_audit(make_mocked_request("GET", f"/api/v1/admin/audit?{query}"), CTX)
    assert resp.status == 200, resp.text
    return cast(dict[str, Any], json.loads(cast(Any, resp).text))


async def walk(a: AdminApi, query: str, desc: bool) -> list[int]:
    seen: list[int] = []
    cursor = 0
    for _ in range(1000):
        key = "before" if desc else "after"
        body = await page(a, f"{query}&{key}={cursor}" + ("&order=desc" if desc else ""))
        seen += [r["seq"] for r in body["records"]]
        if not body["more"]:
            return seen
        cursor = body["next_before" if desc else "next_after"]
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("desc", [False, True], ids=["oldest-first", "newest-first"])
@pytest.mark.parametrize("query,match", [
    ("limit=50", lambda r: True),
    ("limit=7&actor=sysadm", lambda r: r.actor == SYS.id),
    ("limit=13&event=user.", lambda r: r.event.startswith("user.")),
    ("limit=5&event=user.create&outcome=denied",
     lambda r: r.event == "user.create" and r.outcome == "denied"),
    ("limit=20&from_ms=250000&to_ms=320000", lambda r: 250000 <= r.ts < 320000),
    ("limit=3&actor=system&event=node.*", lambda r: r.actor == "system" and r.event == "node.start"),
])
async def test_every_match_once_in_order(query: str, match: Any, desc: bool) -> None:
    a, _ = api()
    want = [r.seq for r in FakeStore(SEQS).records if match(r)]
    got = await walk(a, query, desc)
    assert got == (want[::-1] if desc else want)


async def test_desc_first_page_is_the_newest_and_reads_are_audited_with_filters() -> None:
    a, comp = api()
    body = await page(a, "order=desc&limit=4&actor=sysadm")
    assert [r["seq"] for r in body["records"]] == [699, 696, 693, 690]
    assert body["more"] and body["next_before"] == 690
    assert comp.audited[-1]["event"] == "audit.read"
    assert comp.audited[-1]["filters"] == {"actor": SYS.id}


async def test_bad_numbers_are_refused() -> None:
    a, _ = api()
    for q in ("after=x", "from_ms=soon", "order=desc&before=x"):
        resp = await a.read_audit(make_mocked_request("GET", f"/api/v1/admin/audit?{q}"), CTX)
        assert resp.status == 400


async def test_node_status_reads_the_nodes_own_counters() -> None:
    """GET /node (the console's chart): numbers from the node's Prometheus registry."""
    from types import SimpleNamespace

    from tongxin.metrics import Metrics

    m = Metrics()
    m.connections.inc(3)
    m.authenticated.inc(2)
    m.messages_stored.inc(41)
    m.ack_latency.observe(0.5)
    node = SimpleNamespace(node_id="n1", cfg=SimpleNamespace(site=SimpleNamespace(name="dc1")),
                           metrics=m)
    a = AdminApi(cast(Any, node))
    resp = await a.node_status(make_mocked_request("GET", "/api/v1/admin/node"), CTX)
    body = json.loads(cast(Any, resp).text)
    assert body["node"] == "n1" and body["site"] == "dc1" and body["ts"] > 0
    assert (body["connections"], body["authenticated"], body["messages_stored"]) == (3, 2, 41)
    assert (body["ack_latency_count"], body["ack_latency_sum_s"]) == (1, 0.5)

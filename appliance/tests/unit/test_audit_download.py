"""GET /api/v1/admin/audit/download (the console's audit page, "download the result"):
the auditor alone, the same records as the paged search, streamed in batches, audited
before and after, capped with a marker, and CSV that a spreadsheet cannot run."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from tongxin.compliance import audit_file
from tongxin.compliance.audit_search import BATCH
from tongxin.compliance.ports import AdminSession, AuditRecord
from tongxin.server.admin_api import PREFIX, AdminApi, Ctx, add_routes
from tongxin.server.audit_download import MAX_RECORDS, AuditDownload
from tongxin.store.ports import StoreError, User

AUDITOR = User("u_aud", "audrey", "", "", "auditor", 0)
SYS = User("u_sys", "sysadm", "", "", "sysadmin", 0)
SEC = User("u_sec", "secadm", "", "", "secadmin", 0)
PEOPLE = {u.id: u for u in (AUDITOR, SYS, SEC)}
# a failed login's username is whatever was typed: the classic CSV injection
NASTY = ["=HYPERLINK(\"http://x\",\"y\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx",
         "a=b", "1-2", "逗号,引号\"换行\n"]


class FakeStore:
    """The audit trail: every audit() of the API appends to it, as the real one does."""

    def __init__(self, n: int, fail_after: int | None = None) -> None:
        self.records: list[AuditRecord] = []
        self.reads: list[int] = []
        self.fail_after = fail_after
        for i in range(1, n + 1):
            event = ("user.create", "auth.login", "admin.login", "node.start")[i % 4]
            self.append({"event": event, "actor": SYS.id if i % 3 == 0 else "system",
                         "outcome": "failed" if i % 5 == 0 else "ok", "ts": 1000 * i,
                         "target": NASTY[i % len(NASTY)], "details": {"n": i, "中": "文"}})

    def append(self, f: dict[str, Any]) -> None:
        seq = len(self.records) + 1
        body = {"seq": seq, "ts": f.get("ts", 10**12 + seq), "node": "n1", "prev": "p",
                "event": f["event"], "actor": f.get("actor", ""),
                "actor_role": f.get("actor_role", ""), "target": f.get("target", ""),
                "outcome": f.get("outcome", "ok"), "source": f.get("source", ""),
                "details": f.get("details", {})}
        self.records.append(AuditRecord(seq, body["ts"], body["event"], body["actor"],
                                        body["target"], body["outcome"],
                                        json.dumps(body, ensure_ascii=False), f"h{seq}"))

    async def audit_records(self, after_seq: int, limit: int) -> list[AuditRecord]:
        self.reads.append(limit)
        if self.fail_after is not None and len(self.reads) > self.fail_after:
            raise StoreError("the database went away")
        return [r for r in self.records if r.seq > after_seq][:limit]

    async def audit_state(self) -> tuple[int, str]:
        return (self.records[-1].seq, self.records[-1].hash) if self.records else (0, "")

    async def get_admin_session(self, token_id: str) -> AdminSession:
        u = PEOPLE[token_id]
        return AdminSession(token_id, u.id, u.role, 0, 0, 0)


class FakeCompliance:
    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.audited: list[dict[str, Any]] = []

    async def audit(self, event: str, **fields: Any) -> None:
        self.audited.append({"event": event, **fields})
        details = {k: v for k, v in fields.items()
                   if k not in ("actor", "actor_role", "target", "outcome", "source")}
        self.store.append({"event": event, **fields, "details": details})


class FakeAccounts:
    async def resume(self, token: str, device: str) -> Any:
        return SimpleNamespace(user=PEOPLE[token], claims=SimpleNamespace(token_id=token))


class FakeUsers:
    async def get_user_by_name(self, name: str) -> User | None:
        return {u.username: u for u in PEOPLE.values()}.get(name)


class FakeNode:
    store = FakeUsers()
    accounts = FakeAccounts()


@pytest.fixture
def comp() -> FakeCompliance:
    return FakeCompliance(FakeStore(2500))


async def _client(comp: FakeCompliance, max_records: int | None = None) -> TestClient[Any, Any]:
    """The admin API's real routes and guard over fakes; with max_records, the download
    route is added again (first match wins) with that cap."""
    app = web.Application()
    if max_records is not None:
        tmp = AdminApi(cast(Any, FakeNode()))
        tmp._compliance = cast(Any, comp)
        app.router.add_get(f"{PREFIX}/audit/download",
                           tmp.guard("audit.read", AuditDownload(tmp, max_records).download))
    add_routes(app, cast(Any, FakeNode()))
    app.on_startup.clear()
    app.on_cleanup.clear()
    api = app[next(k for k in app if isinstance(app[k], AdminApi))]
    api._compliance = cast(Any, comp)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client(comp: FakeCompliance) -> AsyncIterator[TestClient[Any, Any]]:
    c = await _client(comp)
    yield c
    await c.close()


async def fetch(client: TestClient[Any, Any], who: User, query: str) -> tuple[int, str, Any]:
    resp = await client.get(f"{PREFIX}/audit/download?{query}",
                            headers={"Authorization": f"Bearer {who.id}"})
    text = await resp.text(encoding="utf-8")
    return resp.status, text, resp


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def searched(comp: FakeCompliance, query: str) -> list[int]:
    """Every seq the paged GET /audit finds for the same filters, newest first."""
    a = AdminApi(cast(Any, FakeNode()))
    a._compliance = cast(Any, comp)
    ctx = Ctx(AUDITOR, "auditor", AdminSession("t", AUDITOR.id, "auditor", 0, 0, 0), "")
    seen: list[int] = []
    before = 0
    while True:
        req = make_mocked_request("GET", f"/audit?order=desc&limit=50&before={before}&{query}")
        body = json.loads(cast(Any, await a.read_audit(req, ctx)).text)
        seen += [r["seq"] for r in body["records"] if not r["event"].startswith("audit.")]
        if not body["more"]:
            return seen
        before = body["next_before"]


@pytest.mark.parametrize("who", [SYS, SEC], ids=["sysadmin", "secadmin"])
async def test_refused_to_the_roles_that_may_not_search_the_trail(
        client: TestClient[Any, Any], comp: FakeCompliance, who: User) -> None:
    status, text, _ = await fetch(client, who, "format=csv")
    assert status == 403
    body = json.loads(text)
    assert body["error"] == "FORBIDDEN" and body["required_role"] == "auditor"
    assert [a["event"] for a in comp.audited] == ["admin.forbidden"]
    assert comp.audited[0]["target"] == "audit.read" and comp.audited[0]["actor"] == who.id


async def test_no_token_is_refused(client: TestClient[Any, Any]) -> None:
    resp = await client.get(f"{PREFIX}/audit/download")
    assert resp.status == 401


@pytest.mark.parametrize("query", [
    "actor=sysadm", "event=user.", "event=auth.login&outcome=failed",
    "from_ms=200000&to_ms=1900000", "actor=system&event=node.*", ""])
async def test_the_download_holds_what_the_search_finds(
        client: TestClient[Any, Any], comp: FakeCompliance, query: str) -> None:
    want = await searched(comp, query)
    status, text, resp = await fetch(client, AUDITOR, f"format=jsonl&order=desc&{query}")
    assert status == 200, text
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="tongxin-audit-')
    got = [r for r in jsonl(text) if not r["event"].startswith("audit.")]
    assert [r["seq"] for r in got] == want and want
    # a line is the record as GET /audit answers it: canonical fields and hash
    first = next(r for r in comp.store.records if r.seq == got[0]["seq"])
    assert got[0] == {**first.fields(), "hash": first.hash}
    # oldest first is the same set the other way round
    _, asc, _ = await fetch(client, AUDITOR, f"format=jsonl&{query}")
    assert [r["seq"] for r in jsonl(asc) if not r["event"].startswith("audit.")] == want[::-1]


async def test_each_download_is_audited_with_who_what_filter_and_how_many(
        client: TestClient[Any, Any], comp: FakeCompliance) -> None:
    newest = comp.store.records[-1].seq
    status, text, _ = await fetch(client, AUDITOR, "format=csv&order=desc&actor=sysadm&event=user.")
    assert status == 200
    started, finished = comp.audited
    want = {"event": "audit.download", "actor": AUDITOR.id, "actor_role": "auditor",
            "format": "csv", "order": "desc", "filters": {"actor": SYS.id, "event": "user."}}
    assert started == {**want, "step": "started", "upto": newest, "max_records": MAX_RECORDS,
                       "source": "127.0.0.1"}
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert finished == {**want, "step": "finished", "outcome": "ok", "count": len(rows) - 1,
                        "truncated": False, "source": "127.0.0.1"}
    assert len(rows) - 1 == len([r for r in comp.store.records[:newest]
                                 if r.actor == SYS.id and r.event.startswith("user.")])
    # the download's own "started" record came after the snapshot: not in the file
    _, whole, _ = await fetch(client, AUDITOR, "format=jsonl")
    assert [r["seq"] for r in jsonl(whole)] == list(range(1, newest + 3))


async def test_streamed_a_batch_at_a_time(client: TestClient[Any, Any],
                                          comp: FakeCompliance) -> None:
    status, text, resp = await fetch(client, AUDITOR, "format=jsonl")
    assert status == 200 and len(jsonl(text)) == 2500
    assert resp.headers.get("Transfer-Encoding") == "chunked"  # no length known up front
    assert max(comp.store.reads) <= BATCH and len(comp.store.reads) >= 3


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_the_cap_ends_the_file_with_a_marker(comp: FakeCompliance, fmt: str,
                                                   order: str) -> None:
    matching = [r.seq for r in comp.store.records if r.event == "auth.login"]
    if order == "desc":
        matching.reverse()
    for cap, truncated in ((len(matching), False), (len(matching) - 1, True), (7, True)):
        comp.audited.clear()
        client = await _client(comp, max_records=cap)
        try:
            status, text, resp = await fetch(client, AUDITOR,
                                             f"format={fmt}&order={order}&event=auth.login")
        finally:
            await client.close()
        assert status == 200 and resp.headers["X-Tongxin-Max-Records"] == str(cap)
        marker: Any
        if fmt == "jsonl":
            lines = jsonl(text)
            seqs = [r["seq"] for r in lines if "seq" in lines[0] and "seq" in r]
            marker = lines[-1] if "truncated" in lines[-1] else None
        else:
            rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
            marker_row = rows[-1] if rows[-1][0].startswith("#truncated") else None
            seqs = [int(r[0]) for r in rows[1:] if r is not marker_row]
            marker = marker_row
        assert seqs == matching[:cap]
        assert (marker is not None) == truncated, (cap, text[-300:])
        if truncated and fmt == "jsonl":
            key = "before" if order == "desc" else "after"
            assert marker == {"truncated": True, "max_records": cap, key: seqs[-1]}
        if truncated and fmt == "csv":
            assert marker is not None and f"first {cap} matching" in marker[0]
            assert len(marker) == len(audit_file.CSV_COLUMNS)
        done = comp.audited[-1]
        assert done["step"] == "finished" and done["count"] == cap
        assert done["truncated"] is truncated


async def test_csv_cells_cannot_become_formulas(client: TestClient[Any, Any]) -> None:
    status, text, resp = await fetch(client, AUDITOR, "format=csv&event=auth.login")
    assert status == 200 and resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert text.startswith("\ufeffseq,time_utc,")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[0] == list(audit_file.CSV_COLUMNS)
    targets = {r[audit_file.CSV_COLUMNS.index("target")] for r in rows[1:]}
    assert targets == {"'=HYPERLINK(\"http://x\",\"y\")", "'+1", "'-2+3", "'@SUM(A1)", "'\tx",
                       "'\rx", "a=b", "1-2", "逗号,引号\"换行\n"}
    for r in rows[1:]:
        assert not r[0].startswith(audit_file._FORMULA_START)
        assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in r)
        assert json.loads(r[audit_file.CSV_COLUMNS.index("details")])["中"] == "文"
        assert r[1].endswith("Z") and r[2] == str(int(r[0]) * 1000)


def test_csv_safe_prefixes_exactly_the_formula_starts() -> None:
    for bad in ("=1", "+1", "-1", "@a", "\t=1", "\r=1"):
        assert audit_file.csv_safe(bad) == "'" + bad
    for good in ("", "1", "a=1", " =1", "'=1", "中文", "{\"a\":1}"):
        assert audit_file.csv_safe(good) == good
    assert audit_file.csv_safe(None) == "" and audit_file.csv_safe(42) == "42"


async def test_bad_parameters_are_refused_before_anything_is_read(
        client: TestClient[Any, Any], comp: FakeCompliance) -> None:
    for q in ("format=xlsx", "order=sideways", "from_ms=yesterday", "to_ms=1.5"):
        status, text, _ = await fetch(client, AUDITOR, q)
        assert status == 400 and json.loads(text)["error"] == "INVALID_ARGUMENT", q
    assert comp.audited == [] and comp.store.reads == []


async def test_a_store_failure_breaks_the_transfer_and_is_audited() -> None:
    comp = FakeCompliance(FakeStore(2500, fail_after=1))
    client = await _client(comp)
    try:
        resp = await client.get(f"{PREFIX}/audit/download?format=jsonl",
                                headers={"Authorization": f"Bearer {AUDITOR.id}"})
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):  # not a short file that looks whole
            await resp.read()
    finally:
        await client.close()
    done = comp.audited[-1]
    assert done["step"] == "finished" and done["outcome"] == "failed"
    assert done["count"] == BATCH

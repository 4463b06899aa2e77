"""The drill report's JSON against its JSON Schema, the HTML page, and the state files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from test_drill_measure import T, ack, mark, stored

from tongxin.drill.files import (
    BatchWriter,
    DrillConversation,
    DrillState,
    DrillUser,
    TailReader,
    append_record,
    read_records,
    read_state,
    write_state,
)
from tongxin.drill.measure import DR, DrillLog, check_delivery, evaluate
from tongxin.drill.report import build_report, report_name, schema, write_report
from tongxin.drill.workload import entry_order, plan_conversations, user_names


def _state() -> DrillState:
    return DrillState(run_id="ab12cd34", entries=["ws://a/ws", "ws://b/ws"],
                      users=[DrillUser("a", "u_a", ["ws://a/ws", "ws://b/ws"]),
                             DrillUser("b", "u_b", ["ws://b/ws", "ws://a/ws"])],
                      conversations=[DrillConversation("c1", "direct", ["a", "b"])],
                      rate=20.0, groups=0, started_at=T - 10_000, stopped_at=T + 30_000)


def _report(lose_tail: bool = True) -> dict[str, Any]:
    before = [ack("a", 1, T - 9000), ack("b", 2, T - 5000), ack("a", 3, T - 2000)]
    after = [ack("b", 3, T + 12_000, first=T + 11_000, cid="b.new"),
             ack("a", 4, T + 14_000, first=T + 13_500, cid="a.new")]
    records = [{"type": "start", "at": T - 10_000}, *before,
               {"type": "error", "at": T + 500, "user": "a", "op": "send", "error": "x"},
               {"type": "login", "at": T + 11_500, "user": "b", "entry": "ws://b/ws"},
               *after, {"type": "stop", "at": T + 30_000}]
    log = DrillLog.from_records(["a", "b"], records,
                                [mark("disaster", T), mark("promoted", T + 9000)])
    kept = before[:2] + after if lose_tail else before + after
    d = check_delivery(log.acks, stored(kept))
    m = evaluate(DR, log, d, {"rpo": 15.0, "rto": 300.0})
    return build_report(kind=DR, state=_state(), log=log, delivery=d, measurement=m,
                        targets={"rpo": 15.0, "rto": 300.0}, read_entries=["ws://b/ws"],
                        versions={"tongxin": "0.1.0",
                                  "servers": {"ws://b/ws": {"version": "0.1.0", "node": "dr1"}}},
                        finished_at=T + 40_000, stored=5)


def test_the_report_matches_its_schema_and_carries_the_figures() -> None:
    report = _report()
    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)
    assert report["ok"] is True, report["problems"]
    assert report["rpo_seconds"] == 2.0  # a.3, ACKed 2 s before the disaster, replaced
    assert report["rto_seconds"] == 12.0 and report["rto_all_users_seconds"] == 14.0
    assert (report["lost"], report["mismatched"], report["missing"]) == (1, 1, 0)
    assert report["lost_messages"][0]["client_msg_id"] == "a.3"
    assert [s["name"] for s in report["steps"]] == ["disaster", "promoted"]
    assert report["steps"][1]["duration"] == 21.0  # promoted -> the workload's stop
    assert report["users"][1] == {"username": "b", "recovered_at": T + 12_000,
                                  "relogin_at": T + 11_500, "recovered_after_seconds": 12.0}
    assert report["timeline"][0]["t"] == 0 and len(report["timeline"]) == 40
    assert sum(b["acks"] for b in report["timeline"]) == report["acked"] == 5


def test_the_schema_rejects_what_compliance_could_not_read() -> None:
    report = _report()
    for broken in ({**report, "finished_at": "yesterday"}, {**report, "ok": "yes"},
                   {**report, "kind": "drill"}, {**report, "rpo_seconds": -1},
                   {k: v for k, v in report.items() if k != "rto_seconds"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema(), cls=jsonschema.Draft202012Validator)


def test_written_files_and_a_self_contained_bilingual_page(tmp_path: Path) -> None:
    report = _report()
    j, h = write_report(report, tmp_path / "evidence")
    assert j.name == report_name("dr", T + 40_000) + ".json"
    assert re.fullmatch(r"dr-drill-dr-\d{8}T\d{6}Z\.json", j.name)
    assert json.loads(j.read_text(encoding="utf-8")) == report
    page = h.read_text(encoding="utf-8")
    assert h.parent == j.parent and page.startswith("<!DOCTYPE html>")
    # Nothing is fetched when the page opens (air-gapped sites): no src/href to anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page
    assert page.count("<svg") == 2
    for text in ("通过 PASS", "确认速率 ACK rate", "确认延迟 ACK latency", "灾难注入 disaster",
                 "容灾站点已提升 promoted", "RPO 恢复点目标", "全部用户恢复 all users back"):
        assert text in page, text
    failed = _report(lose_tail=False)
    failed["ok"], failed["problems"] = False, ["RTO 400 s is above the target 300 s"]
    _, h2 = write_report(failed, tmp_path / "evidence", tmp_path / "page.html")
    assert h2 == tmp_path / "page.html"
    assert "未通过 FAIL" in h2.read_text(encoding="utf-8")


def test_state_round_trip_and_torn_lines(tmp_path: Path) -> None:
    state = _state()
    write_state(tmp_path, state)
    assert read_state(tmp_path) == state
    log = tmp_path / "marks.jsonl"
    append_record(log, {"type": "mark", "event": "disaster", "at": T})
    reader = TailReader(log)
    assert [r["event"] for r in reader.read_new()] == ["disaster"]
    with open(log, "ab") as fh:  # a writer killed mid-line, then one still writing
        fh.write(b'{"type":"mark","ev\n{"type":"mark","event":"promoted","at":2}\n{"type":')
    assert [r["event"] for r in reader.read_new()] == ["promoted"]
    assert reader.read_new() == []
    with open(log, "ab") as fh:
        fh.write(b'"mark","event":"done","at":3}\n')
    assert [r["event"] for r in reader.read_new()] == ["done"]
    assert [r["event"] for r in read_records(log)] == ["disaster", "promoted", "done"]


async def test_batch_writer_writes_everything_on_close(tmp_path: Path) -> None:
    w = BatchWriter(tmp_path / "w.jsonl", interval=10.0, batch=3)
    w.start()
    for i in range(7):
        w.write({"type": "send", "i": i})
    await w.close()
    assert [r["i"] for r in read_records(tmp_path / "w.jsonl")] == list(range(7))
    assert w.written == 7


def test_users_entries_and_conversations_are_spread() -> None:
    names = user_names("drill", 6)
    assert names[0] == "drill01" and names[-1] == "drill06"
    assert user_names("d", 120)[0] == "d001"
    entries = ["ws://dc1/ws", "ws://dc2/ws", "ws://dr/ws"]
    assert entry_order(entries, 4) == ["ws://dc2/ws", "ws://dr/ws", "ws://dc1/ws"]
    plan = plan_conversations(names, 2)
    directs = [m for k, m in plan if k == "direct"]
    groups = [m for k, m in plan if k == "group"]
    assert len(directs) == 6 and ["drill06", "drill01"] in directs
    assert groups == [["drill01", "drill03", "drill05"], ["drill02", "drill04", "drill06"]]
    assert plan_conversations(["x", "y"], 0) == [("direct", ["x", "y"])]


"""The drill report: one JSON document (schema: report.schema.json) and its HTML page.

``build_report`` is pure (the logs, the read-back and the versions in, the
document out); ``write_report`` names the evidence file
``dr-drill-<kind>-<UTC>.json``, which `tongxin report compliance` reads for
item BR-2 (``finished_at``, ``ok``, ``rpo_seconds``, ``rto_seconds``).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from tongxin.checker import Acked
from tongxin.drill.files import DrillState, write_json_atomic
from tongxin.drill.measure import Delivery, DrillLog, Measurement, steps, timeline

SCHEMA_ID = "tongxin.dr-drill/1"
DETAIL_LIMIT = 100  # items of each checker list kept in the report (counts are always whole)


def schema() -> dict[str, Any]:
    text = resources.files("tongxin.drill").joinpath("report.schema.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def _acked(a: Acked) -> dict[str, Any]:
    return {"conversation_id": a.conversation_id, "sender_id": a.sender_id,
            "client_msg_id": a.client_msg_id, "seq": a.seq, "acked_at": a.acked_at_ms}


def _capped(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out[key] = value[:DETAIL_LIMIT] if isinstance(value, list) else value
    return out


def build_report(*, kind: str, state: DrillState, log: DrillLog, delivery: Delivery,
                 measurement: Measurement, targets: Mapping[str, float],
                 read_entries: list[str], versions: Mapping[str, Any], finished_at: int,
                 stored: int) -> dict[str, Any]:
    m = measurement
    started = log.started_at or state.started_at or finished_at
    end = log.stopped_at or state.stopped_at or finished_at
    lat = [a.latency_ms for a in log.acks]
    # Whole seconds, at most ~600 points: a chart an operator can read, a file that stays small.
    bucket = 1000 * max(1, -(-(end - started) // 600_000))
    users = []
    for u in log.users:
        rec = m.recovered.get(u)
        users.append({"username": u, "recovered_at": rec, "relogin_at": m.relogins.get(u),
                      "recovered_after_seconds": None if rec is None or m.disaster_at is None
                      else round((rec - m.disaster_at) / 1000, 3)})
    return {
        "schema": SCHEMA_ID,
        "kind": kind,
        "run_id": state.run_id,
        "ok": m.ok,
        "problems": list(m.problems),
        "started_at": started,
        "stopped_at": end,
        "finished_at": finished_at,
        "disaster_at": m.disaster_at,
        "rpo_seconds": m.rpo_seconds,
        "rto_seconds": m.rto_seconds,
        "rto_all_users_seconds": m.rto_all_users_seconds,
        "sent": log.sends,
        "acked": len(log.acks),
        "stored": stored,
        "errors": len(log.errors),
        "missing": delivery.missing,
        "mismatched": delivery.mismatched,
        "lost": len(delivery.lost),
        "lost_after_disaster": m.lost_after_disaster,
        "duplicated": delivery.duplicated,
        "disorder": delivery.disorder,
        "lost_messages": [_acked(a) for a in delivery.lost[:DETAIL_LIMIT]],
        "targets": dict(targets),
        "steps": [s.as_dict() for s in steps(log.marks, end, m.disaster_at)],
        "marks": [asdict(mk) for mk in log.marks],
        "latency_ms": {"p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99),
                       "max": round(max(lat), 1) if lat else None},
        "versions": dict(versions),
        "entries": {"workload": list(state.entries), "read_back": list(read_entries)},
        "workload": {"users": len(state.users), "groups": state.groups, "rate": state.rate,
                     "conversations": len(state.conversations),
                     "duration_seconds": round(max(0, end - started) / 1000, 3)},
        "users": users,
        "checker": {"first_pass": _capped(delivery.raw.as_dict()),
                    "survivors": _capped(delivery.survivors.as_dict())},
        "timeline_bucket_seconds": bucket / 1000,
        "timeline": [b.as_dict() for b in timeline(log.acks, log.errors, started,
                                                   max(end, started + 1), bucket)],
    }


def report_name(kind: str, finished_at: int) -> str:
    ts = datetime.datetime.fromtimestamp(finished_at / 1000, datetime.UTC)
    return f"dr-drill-{kind}-{ts.strftime('%Y%m%dT%H%M%SZ')}"


def write_report(report: Mapping[str, Any], evidence_dir: Path,
                 html_path: Path | None = None) -> tuple[Path, Path]:
    """The JSON into ``evidence_dir`` (atomically: the compliance report may read it any
    time) and the HTML page beside it, or at ``html_path``."""
    from tongxin.drill.html import render_html

    evidence_dir.mkdir(parents=True, exist_ok=True)
    name = report_name(str(report["kind"]), int(report["finished_at"]))
    json_path = evidence_dir / f"{name}.json"
    write_json_atomic(json_path, report)
    html_path = html_path or evidence_dir / f"{name}.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path

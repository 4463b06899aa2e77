"""The auditor's 演练报告: every evidence file of the data directory listed newest
first, written the way `tongxin backup` and `tongxin drill report` write them, and a
name that is not an evidence file's own refused before anything is opened."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tongxin.cli.backup import _evidence
from tongxin.compliance.evidence import (
    EvidenceNotFound,
    EvidenceRefused,
    list_evidence,
    read_evidence,
)
from tongxin.config import Config
from tongxin.drill.report import write_report

sys.path.insert(0, str(Path(__file__).parents[1]))
from drill_sample import drill_report


@pytest.fixture
def home(tmp_path: Path) -> Path:
    cfg = Config(data_dir=str(tmp_path / "home"))
    _evidence(cfg, "backup", {"ok": True, "id": "dc1-20261201T023000Z", "bytes": 4096,
                              "started_at": "2026-12-01T02:30:00Z",
                              "finished_at": "2026-12-01T02:31:00Z", "duration_seconds": 60.0,
                              "target": "/var/backups/tongxin"})
    _evidence(cfg, "restore", {"ok": True, "backup": "dc1-20261201T023000Z",
                               "started_at": "2026-12-03T09:00:00Z",
                               "finished_at": "2026-12-03T09:05:00Z", "duration_seconds": 300.0})
    write_report(drill_report(), cfg.home / "evidence")  # finished 2023-11-14
    (cfg.home / "evidence" / "backup-20261204T000000Z.json").write_text(json.dumps(
        {"ok": False, "started_at": "2026-12-04T00:00:00Z", "finished_at": "2026-12-04T00:00:05Z",
         "target": "/mnt/nfs", "error": "disk full"}), encoding="utf-8")
    (cfg.home / "evidence" / "tls.json").write_text("{}", encoding="utf-8")  # not a record
    (cfg.home / "tongxin.db").write_text("not evidence", encoding="utf-8")
    return cfg.home


def test_every_record_newest_first_with_what_the_auditor_asks(home: Path) -> None:
    rows = list_evidence(home)
    assert [(r["type"], r["ok"]) for r in rows] == [
        ("backup", False), ("restore", True), ("backup", True), ("dr-drill", True)]
    failed, restore, backup, drill = rows
    assert failed["error"] == "disk full" and failed["finished_at"] == 1796342405000
    assert backup["id"] == "dc1-20261201T023000Z" and backup["bytes"] == 4096
    assert restore["backup"] == "dc1-20261201T023000Z"
    assert drill["file"] == "dr-drill-dr-20231114T221400Z.json" and drill["html"] is True
    assert drill["rpo_seconds"] == 2.0 and drill["rto_seconds"] == 12.0 and drill["kind"] == "dr"
    assert backup["html"] is False
    assert "tls.json" not in {r["file"] for r in rows}


def test_an_unreadable_file_is_listed_not_skipped(home: Path) -> None:
    (home / "evidence" / "restore-20261205T000000Z.json").write_text("{torn", encoding="utf-8")
    rows = list_evidence(home)
    torn = [r for r in rows if r["file"] == "restore-20261205T000000Z.json"]
    assert torn and torn[0]["ok"] is False and torn[0]["unreadable"] is True
    assert list_evidence(home.parent / "nowhere") == []


def test_one_record_by_its_own_name(home: Path) -> None:
    kind, data, doc = read_evidence(home, "backup-20261204T000000Z.json")
    assert kind == "backup" and doc["error"] == "disk full" and json.loads(data) == doc
    with pytest.raises(EvidenceNotFound):
        read_evidence(home, "backup-20991231T000000Z.json")


@pytest.mark.parametrize("name", [
    "../tongxin.db", "../evidence/backup-20261204T000000Z.json", "/etc/passwd",
    str(Path("/etc/passwd")), "evidence/backup-x.json", "tls.json", "backup-..json/..",
    "backup-x.json\x00", "..", "", "backup-a/../../tongxin.json", "dr-drill-dr-x.html",
])
def test_anything_but_an_evidence_file_name_is_refused(home: Path, name: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real = Path.read_bytes

    def spy(self: Path) -> bytes:
        opened.append(str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    with pytest.raises(EvidenceRefused):
        read_evidence(home, name)
    assert opened == []


def test_a_symbolic_link_is_not_followed(home: Path) -> None:
    secret = home / "secret.json"
    secret.write_text('{"ok": true, "finished_at": 1, "key": "s3cr3t"}', encoding="utf-8")
    os.symlink(secret, home / "evidence" / "backup-20261206T000000Z.json")
    with pytest.raises(EvidenceNotFound):
        read_evidence(home, "backup-20261206T000000Z.json")
    assert "s3cr3t" not in json.dumps(list_evidence(home))

"""The 等保 compliance report reads Chinese first: every finding and remedy in
Simplified Chinese (findings_zh, remedy_zh) with the English kept (findings,
remedy), the HTML's headings, status words and footer in Chinese."""

from __future__ import annotations

import json
import re
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config  # type: ignore[import-not-found, unused-ignore]

from tongxin.clock import now_ms
from tongxin.compliance import report_text
from tongxin.compliance.report import DAY_MS, REMEDIES, build_report, render_html
from tongxin.compliance.service import Compliance
from tongxin.crypto import sm2_available
from tongxin.store.ports import User

pytestmark = pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")

CJK = re.compile(r"[\u4e00-\u9fff]")


def _fields(template: str) -> set[str]:
    return {name for _lit, name, _spec, _conv in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("catalogue", ["FINDINGS", "WANTS", "REMEDIES"])
def test_every_message_has_chinese_that_embeds_the_same_values(catalogue: str) -> None:
    for key, (zh, en) in getattr(report_text, catalogue).items():
        assert CJK.search(zh), (key, zh)
        assert zh != en, key
        # Every value the English shows, the Chinese shows too.
        assert _fields(en) <= _fields(zh), (key, _fields(en) - _fields(zh))


def test_remedies_cover_every_item_in_both_languages() -> None:
    assert set(REMEDIES) == {"IA-1", "IA-2", "IA-3", "IA-4", "AC-1", "AU-1", "AU-2", "AU-3",
                             "CM-1", "DI-1", "DC-1", "DC-2", "BR-1", "BR-2", "RI-1"}
    zh, en = REMEDIES["IA-1"]
    assert "password_min_length (>= 8)" in en and "password_min_length（>= 8）" in zh


def test_summary_line_is_chinese_first_and_keeps_the_english_counts() -> None:
    line = report_text.summary_line({"pass": 5, "fail": 3, "gap": 8})
    assert line.startswith("通过 5，不符合 3，差距 8")
    assert "pass 5, fail 3, gap 8" in line


@pytest.fixture
async def comp(tmp_path: Path) -> AsyncIterator[Compliance]:
    # A configuration that fails or leaves a gap in as many items as it can.
    cfg = make_config(tmp_path / "home",
                      accounts={"password_min_classes": 2, "password_max_age_days": 365.0,
                                "session_idle_timeout": 7200.0},
                      storage={"encryption": False, "sqlite_synchronous": "normal"})
    c = Compliance(cfg, "test-node")
    await c.open()
    yield c
    await c.close()


def _admins() -> list[User]:
    return [User(f"u-{role}", f"{role}1", role, "x", role, 0)
            for role in ("sysadmin", "secadmin")]  # no auditor, none with a second factor


def _evidence(home: Path, name: str, **data: Any) -> None:
    (home / "evidence").mkdir(exist_ok=True)
    (home / "evidence" / name).write_text(json.dumps(data), encoding="utf-8")


async def test_every_finding_and_remedy_reads_in_chinese(comp: Compliance) -> None:
    report = await build_report(comp.cfg, comp, _admins())
    items = {i["id"]: i for i in report["items"]}
    assert sum(len(i["findings"]) for i in items.values()) >= 15
    for i in items.values():
        # findings (English) is unchanged for the API; findings_zh is the same list in Chinese.
        assert len(i["findings_zh"]) == len(i["findings"]), i["id"]
        for zh, en in zip(i["findings_zh"], i["findings"], strict=True):
            assert zh != en and CJK.search(zh), (i["id"], zh)
        if i["status"] == "pass":
            assert i["remedy"] == i["remedy_zh"] == ""
        else:
            assert i["remedy"] and CJK.search(i["remedy_zh"]), i["id"]
            assert i["remedy_zh"] != i["remedy"]
    # The English wording the API always had, and the Chinese beside it.
    assert "no backup result in evidence/backup-*.json" in items["BR-1"]["findings"]
    assert "没有备份结果（evidence/backup-*.json）" in items["BR-1"]["findings_zh"]
    assert "未测试过备份恢复（evidence/restore-*.json）" in items["BR-1"]["findings_zh"]
    # Values (names, numbers, keys) are embedded in both languages.
    assert "too weak: accounts.password_min_classes = 2; required: at least 3 of 4 character " \
           "classes (complexity)" in items["IA-1"]["findings"]
    assert "强度不足：accounts.password_min_classes = 2；要求：至少包含 4 类字符中的 3 类（复杂度）" \
           in items["IA-1"]["findings_zh"]
    assert "强度不足：accounts.session_idle_timeout = 7200 秒；要求：不超过 1800 秒" \
           in items["IA-2"]["findings_zh"]
    assert "系统管理员 sysadmin1 未绑定第二鉴别因子" in items["IA-4"]["findings_zh"]
    assert "sysadmin sysadmin1 has no second factor enrolled" in items["IA-4"]["findings"]
    assert "没有启用状态的审计管理员账户" in items["AC-1"]["findings_zh"]
    assert items["DC-1"]["findings_zh"][0].startswith("storage.encryption 已关闭")
    assert "sqlite_synchronous 不是 full：已确认的消息可能丢失" in items["DI-1"]["findings_zh"]


async def test_failed_evidence_reads_in_chinese(comp: Compliance) -> None:
    home, now = comp.cfg.home, now_ms()
    _evidence(home, "backup-1.json", finished_at=now - 10 * DAY_MS, ok=False)
    _evidence(home, "restore-1.json", finished_at=now - 400 * DAY_MS, ok=True, backup="b1")
    _evidence(home, "dr-drill-1.json", finished_at=now - 400 * DAY_MS, ok=False,
              rpo_seconds=20, rto_seconds=600)
    report = await build_report(comp.cfg, comp, _admins(), now=now)
    items = {i["id"]: i for i in report["items"]}
    assert items["BR-1"]["status"] == "fail"  # (the restore test is still required)
    assert items["BR-1"]["findings_zh"] == ["最近一次备份失败", "最近一次备份已超过 7 天",
                                            "最近一次恢复测试已超过一年"]
    assert items["BR-1"]["findings"] == ["the latest backup failed",
                                         "the latest backup is older than 7 days",
                                         "the latest restore test is older than a year"]
    assert items["BR-2"]["findings_zh"] == ["最近一次容灾演练失败", "未测得低于 15 秒的 RPO",
                                            "未测得低于 5 分钟的 RTO", "最近一次容灾演练已超过一年"]


async def test_html_reads_chinese_first(comp: Compliance) -> None:
    report = await build_report(comp.cfg, comp, _admins())
    page = render_html(report)
    thead = page[page.index("<thead>"):page.index("</thead>")]
    for zh, en in (("条款", "item · clause"), ("要求", "requirement (GB/T 22239-2019)"),
                   ("结论", "status"), ("证据与发现", "evidence, findings")):
        assert f"{zh} " in thead and en in thead
        assert thead.index(zh) < thead.index(en)
    s = report["summary"]
    assert f"通过 {s['pass']}，不符合 {s['fail']}，差距 {s['gap']}" in page
    assert f"通过 PASS {s['pass']}" in page and f"差距 GAP {s['gap']}" in page
    # Status words in Chinese, the code kept as a class and small text.
    br1 = page[page.index('id="BR-1"'):]
    br1 = br1[:br1.index("</tr>")]
    assert '<td class="status gap"' in br1 and ">差距<small>GAP</small>" in br1
    ia1 = page[page.index('id="IA-1"'):]
    assert ">不符合<small>FAIL</small>" in ia1[:ia1.index("</tr>")]
    # A finding: the Chinese line, then the English in a smaller muted line.
    assert ('<span class="zh">没有备份结果（evidence/backup-*.json）</span>'
            '<span class="en" lang="en">no backup result in evidence/backup-*.json</span>') in br1
    assert "整改措施" in br1 and "定期运行 <code>tongxin backup create</code>" in br1
    assert br1.index("定期运行") < br1.index("Schedule <code>tongxin backup create</code>")
    assert "发现" in br1 and "未通过 Not passed:" in page
    # The footer: Chinese, then English.
    footer = page[page.index("<footer>"):]
    assert footer.index("同一报告的 JSON 版本") < footer.index("The same report as JSON")
    assert "Warning" not in page  # (the configuration is the node's)


def test_html_of_a_report_without_findings_zh_still_renders() -> None:
    """A JSON report written before findings_zh existed renders with its English."""
    item = {"id": "BR-1", "clause": "8.1.4.10 a)", "category": "c", "title": "t",
            "requirement": "r", "status": "gap", "evidence": [],
            "findings": ["no backup result in evidence/backup-*.json"], "remedy": "Back up."}
    report = {"title": "T", "standard": "S", "generated_at_iso": "2026-12-01 00:00:00Z",
              "version": "1", "data_dir": "/d", "summary": {"pass": 0, "fail": 0, "gap": 1},
              "items": [item]}
    page = render_html(report)
    assert "<li>no backup result in evidence/backup-*.json</li>" in page
    assert "Back up." in page

"""The drill report as one self-contained HTML page, in Chinese and English.

Charts are SVG from pygal, inlined: the page loads nothing when opened (air-
gapped sites). Why pygal: it is pure Python (installs offline from the
bundle on x86_64 and aarch64 alike, no native code), it writes SVG text with
``<text>`` labels, so Chinese labels are drawn by the viewer's browser fonts
(a raster library would need CJK fonts on the controller), and it needs no
JavaScript (its tooltip script, loaded from the network by default, is
switched off with ``js=[]``). A JS library inlined at build time would have
needed the web client's npm build for a page the operator only reads.
"""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pygal  # type: ignore[import-untyped]
from pygal.style import Style  # type: ignore[import-untyped]

# Marks the drill playbooks use, with the Chinese an operator reads first.
MARK_LABELS = {
    "disaster": "灾难注入",
    "failover-started": "开始切换",
    "failover-done": "切换完成",
    "promoted": "容灾站点已提升",
    "entry-moved": "入口已切换",
    "failback-started": "开始回切",
    "failback-done": "回切完成",
    "restored": "已恢复",
}
KIND_LABELS = {"incity": "同城双活切换 In-city failover", "dr": "异地容灾切换 DR failover"}
FONT = "'Noto Sans CJK SC','Source Han Sans SC','PingFang SC','Microsoft YaHei',sans-serif"
_STYLE = Style(background="#ffffff", plot_background="#ffffff", font_family=FONT,
               colors=("#1f6feb", "#d1242f", "#8250df", "#bf8700", "#1a7f37", "#57606a",
                       "#0969da", "#cf222e", "#6639ba", "#9a6700"),
               label_font_size=12, major_label_font_size=12, legend_font_size=12,
               title_font_size=15)


def mark_label(event: str) -> str:
    zh = MARK_LABELS.get(event)
    return f"{zh} {event}" if zh else event


def _iso(ms: int | None) -> str:
    if ms is None:
        return "—"
    dt = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _s(value: float | None, unit: str = " s") -> str:
    return "—" if value is None else f"{value:g}{unit}"


def _vertical_lines(report: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(label, seconds since the start) of each mark and of the two recovery points."""
    start = int(report["started_at"])
    out = [(mark_label(str(m["event"])), (int(m["at"]) - start) / 1000) for m in report["marks"]]
    d = report.get("disaster_at")
    if d is not None and report.get("rto_seconds") is not None:
        out.append(("首个新消息确认 first new ACK", (d - start) / 1000 + report["rto_seconds"]))
    if d is not None and report.get("rto_all_users_seconds") is not None:
        out.append(("全部用户恢复 all users back",
                    (d - start) / 1000 + report["rto_all_users_seconds"]))
    return out


def _chart(title: str, y_title: str, series: Sequence[tuple[str, list[tuple[float, float | None]]]],
           lines: Sequence[tuple[str, float]], top: float, bottom: float = 0.0,
           y_labels: Sequence[dict[str, Any]] | None = None) -> str:
    chart = pygal.XY(js=[], style=_STYLE, width=1000, height=440, show_dots=False,
                     disable_xml_declaration=True, allow_interruptions=True, legend_at_bottom=True,
                     legend_at_bottom_columns=3, truncate_legend=-1,
                     x_title="开始后时间（秒） seconds since start", y_title=y_title, title=title,
                     range=(bottom, top), stroke_style={"width": 1.5})
    if y_labels is not None:
        chart.y_labels = list(y_labels)
    for name, points in series:
        chart.add(name, points)
    for name, x in lines:
        chart.add(name, [(x, bottom), (x, top)], stroke_style={"width": 2, "dasharray": "6,4"})
    return str(chart.render(is_unicode=True))


def _log10(ms: float | None) -> float | None:
    return None if ms is None else math.log10(max(ms, 0.1))


def charts(report: Mapping[str, Any]) -> tuple[str, str]:
    tl = report["timeline"]
    bucket = float(report.get("timeline_bucket_seconds", 1.0)) or 1.0
    lines = _vertical_lines(report)
    rate = [(b["t"], b["acks"] / bucket) for b in tl]
    errs = [(b["t"], b["errors"] / bucket) for b in tl]
    top = max([1.0, *(y for _x, y in rate), *(y for _x, y in errs)]) * 1.1
    rate_svg = _chart("确认速率 ACK rate", "条/秒 per second",
                      [("确认 ACKs/s", rate), ("错误 errors/s", errs)], lines, top)
    # Logarithmic y (pygal's own log scale would bend the time axis too): milliseconds
    # in steady state and seconds around the failover, readable on one chart.
    p50 = [(b["t"], _log10(b["latency_p50_ms"])) for b in tl]
    mx = [(b["t"], _log10(b["latency_max_ms"])) for b in tl]
    values = [y for _x, y in p50 + mx if y is not None]
    low = math.floor(min(values, default=0.0))
    high = max(low + 1, math.ceil(max(values, default=1.0)))
    labels = [{"label": _ms_label(10.0 ** e), "value": e} for e in range(low, high + 1)]
    lat_svg = _chart("确认延迟 ACK latency", "毫秒 ms（对数 log）",
                     [("中位数 median", p50), ("最大 max", mx)], lines, high, low, labels)
    return rate_svg, lat_svg


def _ms_label(ms: float) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"


_CSS = """
body{font-family:FONT;margin:24px;color:#1f2328;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
.verdict{display:inline-block;padding:4px 12px;border-radius:4px;color:#fff;font-weight:bold}
.pass{background:#1a7f37} .fail{background:#cf222e}
table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #d0d7de;padding:4px 10px;
text-align:left;vertical-align:top} th{background:#f6f8fa} td.num{text-align:right}
.bad{color:#cf222e;font-weight:bold} .muted{color:#57606a;font-size:13px}
.chart{margin:8px 0 16px}
""".replace("FONT", FONT)


def _row(*cells: str, head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _e(value: Any) -> str:
    return html.escape(str(value))


def render_html(report: Mapping[str, Any]) -> str:
    ok = bool(report["ok"])
    targets = report["targets"]
    rate_svg, lat_svg = charts(report)

    def target(key: str) -> str:
        return _s(targets.get(key, targets.get("rto") if key == "rto_all_users" else None))

    figures = [
        ("RPO 恢复点目标", _s(report["rpo_seconds"]), "≤ " + target("rpo"),
         "最早丢失消息在灾难时的时长 age at the disaster of the oldest lost ACKed message"),
        ("RTO 恢复时间目标", _s(report["rto_seconds"]), "≤ " + target("rto"),
         "灾难到首个新消息确认 disaster → first ACK of a new message"),
        ("RTO 全部用户 all users", _s(report["rto_all_users_seconds"]),
         "≤ " + target("rto_all_users"),
         "灾难到每个用户重新发送成功 disaster → every user sending again"),
        ("已确认 acknowledged", _e(report["acked"]), "", f"发送尝试 attempts: {report['sent']}"),
        ("丢失 lost", _e(report["lost"]), "0" if report["kind"] == "incity" else "",
         f"缺失 missing {report['missing']}, 被替换 replaced {report['mismatched']}, "
         f"灾难后确认的 acked after the disaster {report['lost_after_disaster']}"),
        ("重复 duplicated", _e(report["duplicated"]), "0", ""),
        ("乱序 out of order", _e(report["disorder"]), "0", ""),
        ("错误 errors", _e(report["errors"]), "", "连接、登录、发送 connect, login, send"),
    ]
    parts = [
        "<!DOCTYPE html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">",
        f"<title>容灾演练报告 DR drill report — {_e(report['run_id'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>容灾演练报告 DR drill report: {_e(KIND_LABELS.get(report['kind'], report['kind']))}</h1>",
        f"<p><span class=\"verdict {'pass' if ok else 'fail'}\">"
        f"{'通过 PASS' if ok else '未通过 FAIL'}</span> "
        f"<span class=\"muted\">run {_e(report['run_id'])} · 开始 started {_iso(report['started_at'])}"
        f" · 灾难 disaster {_iso(report['disaster_at'])} · 报告 report {_iso(report['finished_at'])}"
        "</span></p>",
    ]
    if report["problems"]:
        parts.append("<h2>问题 Problems</h2><ul>" + "".join(
            f"<li class=\"bad\">{_e(p)}</li>" for p in report["problems"]) + "</ul>")
    parts.append("<h2>结果 Results</h2><table>")
    parts.append(_row("指标 figure", "测得 measured", "目标 target", "说明 meaning", head=True))
    for name, value, tgt, note in figures:
        parts.append(_row(_e(name), value, _e(tgt), _e(note)))
    lat = report["latency_ms"]
    parts.append(_row("确认延迟 ACK latency", f"p50 {_s(lat['p50'], ' ms')}, p99 "
                      f"{_s(lat['p99'], ' ms')}, max {_s(lat['max'], ' ms')}", "", ""))
    parts.append("</table>")
    parts.append("<h2>时间线 Timeline</h2>")
    parts.append("<p class=\"muted\">虚线：演练步骤与恢复时刻。Dashed lines: the drill's steps and the "
                 "recovery points. 每个点为一个时间段 each point is one bucket of "
                 f"{_e(report['timeline_bucket_seconds'])} s.</p>")
    parts.append(f"<div class=\"chart\">{rate_svg}</div><div class=\"chart\">{lat_svg}</div>")
    parts.append("<h2>步骤 Steps</h2><table>")
    parts.append(_row("步骤 step", "时间 time (UTC)", "距灾难 since disaster", "耗时 duration",
                      "备注 note", head=True))
    for st in report["steps"]:
        parts.append(_row(_e(mark_label(st["name"])), _iso(st["started_at"]),
                          _s(st["since_disaster"]), _s(st["duration"]), _e(st["note"])))
    parts.append("</table>")
    parts.append("<h2>用户恢复 Users</h2><table>")
    parts.append(_row("用户 user", "重新登录 logged in again", "恢复发送 sending again",
                      "距灾难 after the disaster", head=True))
    for u in report["users"]:
        late = u["recovered_at"] is None and report["disaster_at"] is not None
        parts.append(_row(_e(u["username"]), _iso(u["relogin_at"]),
                          "<span class=\"bad\">从未 never</span>" if late else _iso(u["recovered_at"]),
                          _s(u["recovered_after_seconds"])))
    parts.append("</table>")
    parts.append("<h2>版本与入口 Versions and entries</h2><table>")
    parts.append(_row("组件 component", "版本 version", head=True))
    parts.append(_row("tongxin drill", _e(report["versions"]["tongxin"])))
    for url, v in report["versions"]["servers"].items():
        parts.append(_row(_e(url), _e(f"{v.get('version', '')} ({v.get('node', '')})"
                                      if "version" in v else v.get("error", ""))))
    parts.append("</table>")
    w = report["workload"]
    parts.append(
        f"<p class=\"muted\">负载 workload: {w['users']} 用户 users, {w['groups']} 群组 groups, "
        f"{w['conversations']} 会话 conversations, {w['rate']:g} 条/秒 msg/s, "
        f"{w['duration_seconds']:g} s. 负载入口 workload entries: "
        f"{_e(', '.join(report['entries']['workload']))}; 回读入口 read back through: "
        f"{_e(', '.join(report['entries']['read_back']))}.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

#!/usr/bin/env python3
"""docs/performance.md's chart: the live probe's latency against held connections.

    .venv/bin/python appliance/bench/perf_chart.py --out docs/perf/probe-latency.svg \
        "before=docs/perf/conn-2k-before.json,docs/perf/conn-6k-before.json" \
        "after=docs/perf/conn-2k-after.json,docs/perf/conn-18k-after.json"

Each series is a label and conn_bench.py JSON files; each file gives two
points, its baseline (the probe alone) and its hold phase (all connections
held), at send -> ACK p99. pygal (a dependency already, for the DR drill
report) writes the SVG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pygal  # type: ignore[import-untyped]


def points(doc: dict[str, Any]) -> list[tuple[float, float]]:
    phases = doc["result"]["phases"] if "result" in doc else doc["phases"]
    out = []
    for name in ("baseline", "hold"):
        ph = phases.get(name)
        if ph is None or ph["probe"].get("ack_p99_ms") is None:
            continue
        out.append((max(0.0, ph["server"]["connections"] - 2), ph["probe"]["ack_p99_ms"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("series", nargs="+", help="LABEL=file.json[,file.json...]")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    # Linear axes: pygal's XY makes both logarithmic or neither, and the
    # baseline points (the probe alone) sit at 0 connections.
    chart = pygal.XY(dots_size=4, stroke=True, width=800, height=450,
                     title="Live probe, send -> ACK p99 (ms), against held connections",
                     x_title="held connections (authenticated, heartbeating)",
                     y_title="probe ACK p99, ms", legend_at_bottom=True,
                     range=(0, 2500), xrange=(0, 18000))
    for spec in args.series:
        label, _, files = spec.partition("=")
        pts: list[tuple[float, float]] = []
        for f in files.split(","):
            pts.extend(points(json.loads(Path(f).read_text())))
        chart.add(label, sorted(pts))
    chart.add("target p99 < 100 ms", [(0, 100), (18000, 100)], stroke=True, show_dots=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(chart.render())
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A complete DR drill report, built by the drill's own code (tongxin.drill.report) from
the unit tests' measured workload, for the tests that need one as an evidence file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent / "unit"))
from test_drill_report import _report  # type: ignore[import-not-found, unused-ignore]


def drill_report(run_id: str = "ab12cd34", lose_tail: bool = True) -> dict[str, Any]:
    report: dict[str, Any] = _report(lose_tail)
    report["run_id"] = run_id
    return report

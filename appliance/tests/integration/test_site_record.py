"""``tongxin site record``: a DR operation (switchover, failover, failback,
drill) goes into the audit trail with who, when, what and the outcome, and the
chain still verifies; a standby node refuses (its database is a read-only
copy), and bad input changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest


async def tongxin(home: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", *args,
        env={**os.environ, "TONGXIN_HOME": str(home)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode()


def write_config(path: Path, home: Path, role: str) -> Path:
    path.write_text(f"data_dir: {home}\nsite:\n  name: dr\n  role: {role}\n", encoding="utf-8")
    return path


async def audit_tail(home: Path, cfg: Path) -> str:
    rc, out = await tongxin(home, "audit", "tail", "-n", "5", "--config", str(cfg))
    assert rc == 0, out
    return out


@pytest.mark.integration
async def test_record_writes_the_operation_into_the_audit_trail(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = write_config(tmp_path / "active.yml", home, "active")
    details = {"steps": [{"name": "promote", "seconds": 1.5}], "forced": False}
    rc, out = await tongxin(home, "site", "record", "--event", "dr.failover", "--actor", "ops-li",
                            "--outcome", "partial", "--details", json.dumps(details),
                            "--config", str(cfg))
    assert rc == 0, out
    assert json.loads(out.strip().splitlines()[-1])["recorded"] == "dr.failover"
    tail = await audit_tail(home, cfg)
    line = next(ln for ln in tail.splitlines() if "dr.failover" in ln)
    assert "ops-li" in line and "partial" in line
    rc, out = await tongxin(home, "audit", "sign", "--config", str(cfg))
    assert rc == 0, out
    pubkeys = [a for p in (home / "audit-keys").glob("*.pem") for a in ("--pubkey", str(p))]
    rc, out = await tongxin(home, "audit", "verify", "--json", "--config", str(cfg), *pubkeys)
    assert rc == 0, out


@pytest.mark.integration
async def test_record_is_refused_on_a_standby_and_on_bad_input(tmp_path: Path) -> None:
    home = tmp_path / "home"
    standby = write_config(tmp_path / "standby.yml", home, "standby")
    rc, out = await tongxin(home, "site", "record", "--event", "dr.drill", "--config", str(standby))
    assert rc == 1 and "standby" in out
    active = write_config(tmp_path / "active.yml", home, "active")
    for bad in (["--event", "DR Failover!"], ["--event", "dr.drill", "--details", "[1, 2]"],
                ["--event", "dr.drill", "--details", "{not json"]):
        rc, out = await tongxin(home, "site", "record", *bad, "--config", str(active))
        assert rc == 2, (bad, out)
    # Nothing was recorded by the refused calls.
    rc, out = await tongxin(home, "audit", "tail", "-n", "50", "--config", str(active))
    assert "dr.drill" not in out and "DR Failover" not in out

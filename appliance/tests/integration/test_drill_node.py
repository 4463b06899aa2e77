"""`tongxin drill` end to end against a real node: the workload runs in the background,
the node is SIGKILLed (the "disaster") and restarted on the same data directory, and the
report measures the outage, finds nothing lost (SQLite commits before the ACK) and
makes item BR-2 of the compliance report pass."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
from engines import _spawn, free_port, start_node_process, wait_ready

from tongxin.crypto import sm2_available
from tongxin.drill.files import read_records
from tongxin.drill.report import schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def tongxin(*args: str | Path, home: Path | None = None) -> tuple[int, str]:
    env = dict(os.environ)
    if home is not None:
        env["TONGXIN_HOME"] = str(home)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", *map(str, args), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode()


async def test_drill_through_a_node_kill_and_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    node = await start_node_process("n1", home, {}, tmp_path)
    state = tmp_path / "drill"
    # An entry that never answers comes first for half of the users: they must move on to
    # the next one, as they would from a site that is down when the drill starts.
    dead = f"ws://127.0.0.1:{free_port()}/ws"
    started = False
    try:
        rc, out = await tongxin("drill", "start", "--state-dir", state, "--entries",
                                f"{dead},{node.ws_url}", "--users", "6", "--groups", "2",
                                "--rate", "20", "--register", "--connect-timeout", "3")
        assert rc == 0, out
        started = True
        assert re.search(r"workload running \(pid \d+\): 6 users over 2 entries, "
                         r"8 conversations, 20 msg/s; set up in", out), out
        await asyncio.sleep(6)

        # The CLI that marks the disaster takes a while to start on a loaded machine, so
        # the kill's own time is what the workload's records are compared with.
        killed_at = int(time.time() * 1000)
        node.kill9()
        rc, out = await tongxin("drill", "mark", "--state-dir", state, "disaster",
                                "--note", "SIGKILL")
        assert rc == 0 and "marked 'disaster'" in out, out
        await asyncio.sleep(2)
        # The same node again: same port, same data directory (engines' own spawn helper).
        node = _spawn("n1", home, {}, tmp_path, node.port)
        await wait_ready(node.http_url, node.proc, node.log)
        rc, out = await tongxin("drill", "mark", "--state-dir", state, "restarted")
        assert rc == 0 and "since 'disaster'" in out, out
        rc, out = await tongxin("drill", "wait", "--state-dir", state, "--for",
                                "first-ack-after", "disaster", "--timeout", "60")
        assert rc == 0 and "first ACK of a new message" in out, out
        rc, out = await tongxin("drill", "wait", "--state-dir", state, "--for", "all-online",
                                "--timeout", "60")
        assert rc == 0 and "all 6 users sending again" in out, out
        await asyncio.sleep(4)
        rc, out = await tongxin("drill", "stop", "--state-dir", state)
        assert rc == 0 and "stopped the workload" in out, out
        started = False

        evidence = home / "evidence"
        rc, out = await tongxin("drill", "report", "--state-dir", state, "--kind", "incity",
                                "--entries", node.ws_url, "--evidence-dir", evidence,
                                "--html", tmp_path / "drill.html", "--targets", "rpo=15,rto=60")
        assert rc == 0 and "drill PASSED" in out, out
    finally:
        if started:
            await tongxin("drill", "stop", "--state-dir", state)
        node.stop()

    [path] = evidence.glob("dr-drill-incity-*.json")
    report = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)
    assert report["ok"] is True and report["problems"] == []
    assert report["missing"] == 0 and report["lost"] == 0 and report["duplicated"] == 0
    assert report["rpo_seconds"] == 0
    # Down for the 2 s sleep plus the restart; back well within the minute allowed.
    assert 2.0 < report["rto_seconds"] < 60, report["rto_seconds"]
    assert report["rto_seconds"] <= report["rto_all_users_seconds"] < 60
    assert report["acked"] >= 150
    assert [s["name"] for s in report["steps"]] == ["disaster", "restarted"]
    assert all(u["relogin_at"] and u["relogin_at"] > report["disaster_at"]
               for u in report["users"])
    assert report["versions"]["servers"][node.ws_url]["node"] == "n1"
    assert (tmp_path / "drill.html").read_text(encoding="utf-8").count("<svg") == 2
    # Every login went through the live node, past the dead entry; every user lost its
    # connection at the kill and came back by resuming its session with the token.
    records = read_records(state / "workload.jsonl")
    logins = [r for r in records if r["type"] == "login"]
    assert logins and {r["entry"] for r in logins} == {node.ws_url}
    after = killed_at - 100  # the clients see the kill a moment after it
    users = {u["username"] for u in report["users"]}
    assert {r["user"] for r in records if r["type"] == "disconnect" and r["at"] > after} == users
    assert {r["user"] for r in logins if r["how"] == "token" and r["at"] > after} == users

    if not sm2_available():
        pytest.skip("SM2 (OpenSSL libcrypto) is not available: the compliance report needs it")
    rc, out = await tongxin("report", "compliance", "--out", tmp_path / "rep", home=home)
    assert re.search(r"PASS\s+BR-2", out), out

"""cluster_bench.py --profile: how py-spy's stacks become the shares in docs/performance.md."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cluster_profile as cp

PROC = 'process 42:"python -m tongxin.cli.main serve"'
LOOP = ("_run (tongxin/cli/main.py:27)", "run (uvloop/__init__.py:92)",
        "Runner.run (asyncio/runners.py:118)")


def test_waiting_threads_are_dropped_and_busy_ones_kept(tmp_path: Path) -> None:
    raw = tmp_path / "node.txt"
    raw.write_text("\n".join([
        # An idle pool worker and a native lock wait: py-spy counts them as busy.
        f"{PROC};Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:81) 70",
        f"{PROC};_worker (concurrent/futures/thread.py:81);"
        "PyThread_acquire_lock_timed (libpython3.11.so.1.0);0x7f (libc.so.6) 30",
        # A pool worker running a job is busy.
        f"{PROC};_worker (concurrent/futures/thread.py:81);hash (tongxin/auth/passwords.py:23) 5",
        f"{PROC};{';'.join(LOOP)} 9",
        "garbage line",
    ]), encoding="utf-8")
    stacks = cp.read_stacks(raw)
    assert sum(stacks.values()) == 14
    assert all(not f.startswith("process ") for s in stacks for f in s)


def test_stdlib_frames_are_charged_to_the_library_that_called_them() -> None:
    write = ("StreamWriter.write (asyncio/streams.py:343)",)
    kafka = (*LOOP, "Sender._send (aiokafka/producer/sender.py:140)", *write)
    store = (*LOOP, "MysqlStore._one (tongxin/store/mysql_store.py:570)", *write)
    chat = (*LOOP, "ChatService.send (tongxin/chat/service.py:375)",
            "PyUpb_Message_SerializeToString (_message.abi3.so)")
    assert cp.subsystem(kafka) == "aiokafka"
    assert cp.subsystem(store).startswith("MariaDB store")
    assert cp.subsystem(chat) == "protobuf"
    # Only the loop below the entry point: the loop's own time, not tongxin's.
    assert cp.subsystem(LOOP) == cp.LOOP


def test_flamegraph_leaves_out_frames_under_the_threshold() -> None:
    big = (*LOOP, "ChatService.send (tongxin/chat/service.py:375)")
    tiny = (*LOOP, "rare_path (tongxin/chat/service.py:999)")
    svg = cp.flamegraph_svg(Counter({big: 999, tiny: 1}), "t", min_share=0.01)
    assert "ChatService.send" in svg
    assert "rare_path" not in svg

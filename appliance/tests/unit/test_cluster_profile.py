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


def _batch(base: int, records: int) -> bytes:
    """A v2 record batch with only the header fields kafka_batches reads filled in."""
    body = bytes(4 + 1 + 4 + 2) + (records - 1).to_bytes(4, "big") + bytes(20)
    return base.to_bytes(8, "big") + len(body).to_bytes(4, "big") + body


def test_kafka_batches_counts_batches_and_records_per_topic(tmp_path: Path) -> None:
    for name, data in {"txb-1.deliveries-0": _batch(0, 3) + _batch(3, 5),
                       "txb-1.deliveries-1": _batch(0, 1) + _batch(1, 4)[:20],  # being written
                       "txb-1.node.a-0": _batch(0, 2),
                       "other.topic-0": _batch(0, 9)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "00000000000000000000.log").write_bytes(data)
    assert cp.kafka_batches(tmp_path, "txb-1") == {"txb-1.deliveries": [3, 9],
                                                   "txb-1.node.a": [1, 2]}

"""The drill's state directory: the run's description and its append-only logs.

Two writers, two files, so their lines never interleave: the workload process
appends to ``workload.jsonl`` and ``tongxin drill mark`` (another process, run
by the playbook) to ``marks.jsonl``. Both are JSON lines; the workload fsyncs in
batches (a controller that crashes loses at most the last batch), a mark is
fsynced before the command returns. Readers skip a torn last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE = "state.json"
WORKLOAD_LOG = "workload.jsonl"
MARKS_LOG = "marks.jsonl"
PID = "workload.pid"
OUTPUT = "workload.out"
PASSWORD = "password"

# Workload states in state.json.
SETTING_UP, RUNNING, STOPPED, FAILED = "setting-up", "running", "stopped", "failed"


@dataclass
class DrillUser:
    username: str
    user_id: str = ""
    entries: list[str] = field(default_factory=list)  # in the order this user tries them


@dataclass
class DrillConversation:
    conversation_id: str
    kind: str  # "direct" | "group"
    members: list[str]  # usernames


@dataclass
class DrillState:
    """What ``start`` decided, read back by ``wait``, ``stop`` and ``report``."""

    run_id: str
    entries: list[str]
    users: list[DrillUser]
    conversations: list[DrillConversation] = field(default_factory=list)
    rate: float = 0.0
    groups: int = 0
    password_file: str = ""
    ca_file: str = ""
    status: str = SETTING_UP
    started_at: int = 0  # ms: the first message was scheduled
    stopped_at: int = 0
    pid: int = 0
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DrillState:
        d = dict(data)
        d["users"] = [DrillUser(**u) for u in d.get("users", [])]
        d["conversations"] = [DrillConversation(**c) for c in d.get("conversations", [])]
        return cls(**d)


def write_state(state_dir: Path, state: DrillState) -> None:
    """Atomically: a reader never sees half a file."""
    write_json_atomic(state_dir / STATE, state.to_json())


def read_state(state_dir: Path) -> DrillState:
    path = state_dir / STATE
    try:
        return DrillState.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise DrillFileError(f"{state_dir} holds no drill (no {STATE}; run `tongxin drill start` "
                             "first)") from None
    except (ValueError, TypeError) as exc:
        raise DrillFileError(f"{path} is unreadable: {exc}") from None


class DrillFileError(Exception):
    """The state directory is missing or damaged; the message says which."""


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One line, durable before returning (marks: rare, and the playbook relies on them)."""
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    return TailReader(path).read_new()


class TailReader:
    """Reads a JSON-lines file incrementally (``wait`` polls without re-parsing the whole log).

    Only complete lines are consumed: a line still being written is read on a
    later call. A complete line that does not parse (a crash mid-write, then
    more lines) is skipped.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in data[:end].split(b"\n"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


class BatchWriter:
    """Append-only JSON lines, written and fsynced in batches by a background task.

    ``write`` never blocks the event loop on the disk: lines are buffered and the
    task started by ``start`` writes them every ``interval`` seconds (sooner when
    ``batch`` lines are waiting), with the fsync in a thread.
    """

    def __init__(self, path: Path, interval: float = 0.25, batch: int = 500) -> None:
        self.path = path
        self.interval = interval
        self.batch = batch
        self._buf: list[bytes] = []
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def write(self, record: dict[str, Any]) -> None:
        self._buf.append((json.dumps(record, ensure_ascii=False, separators=(",", ":"))
                          + "\n").encode())
        if len(self._buf) >= self.batch:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        if not self._buf:
            return
        data, self._buf = b"".join(self._buf), []
        os.write(self._fd, data)
        await asyncio.to_thread(os.fsync, self._fd)
        self.written += data.count(b"\n")

    async def close(self) -> None:
        """Write what is buffered and close (the background task finishes first)."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._flush()
        os.close(self._fd)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child, not yet reaped) has exited.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""

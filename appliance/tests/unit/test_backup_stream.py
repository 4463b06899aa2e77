"""The sealed stream of a backup part and the retention of backups in a target."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from tongxin.backup.archive import prune
from tongxin.backup.stream import (
    CHUNK,
    BackupFormatError,
    SealingWriter,
    TruncatedError,
    open_chunks,
)
from tongxin.crypto.suite import get_suite

KEY = bytes(range(16))


def seal(data: bytes, suite_name: str = "gm", name: str = "files", part: int = 2,
         backup_id: str = "dc1-20261205T120000Z") -> bytes:
    suite = get_suite(suite_name)
    out = io.BytesIO()
    w = SealingWriter(out, suite, KEY if suite_name == "gm" else KEY * 2, backup_id, name, part)
    for i in range(0, len(data), 70_000):  # writes that do not line up with chunks
        w.write(data[i:i + 70_000])
    w.close()
    return out.getvalue()


def opened(sealed: bytes, suite_name: str = "gm", name: str = "files", part: int = 2,
           backup_id: str = "dc1-20261205T120000Z") -> bytes:
    suite = get_suite(suite_name)
    key = KEY if suite_name == "gm" else KEY * 2
    return b"".join(open_chunks(io.BufferedReader(io.BytesIO(sealed)), suite, key, backup_id,
                                name, part))


def records(sealed: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(sealed):
        n = int.from_bytes(sealed[pos:pos + 4], "big")
        out.append(sealed[pos:pos + 4 + n])
        pos += 4 + n
    return out


@pytest.mark.parametrize("suite_name", ["gm", "international"])
@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 2 * CHUNK + 12345])
def test_round_trip(suite_name: str, size: int) -> None:
    data = os.urandom(size)
    sealed = seal(data, suite_name)
    assert opened(sealed, suite_name) == data
    # One record per started chunk, and one (possibly empty) for a part of no bytes.
    assert len(records(sealed)) == max(1, -(-size // CHUNK))
    # A byte or two of plaintext turns up in random ciphertext by chance (1 in
    # 15 for one byte here): only a run of 16 or more says anything.
    if size >= 16:
        assert data[:32] not in sealed


def test_a_part_cut_after_a_whole_chunk_is_refused() -> None:
    sealed = seal(os.urandom(2 * CHUNK + 10))
    first_two = b"".join(records(sealed)[:2])
    with pytest.raises(TruncatedError, match="cut short"):
        opened(first_two)
    with pytest.raises(TruncatedError):
        opened(sealed[:-5])
    with pytest.raises(TruncatedError):
        opened(b"")


def test_reordered_foreign_or_extended_chunks_are_refused() -> None:
    sealed = seal(os.urandom(3 * CHUNK))
    r = records(sealed)
    with pytest.raises(BackupFormatError, match="does not authenticate"):
        opened(r[1] + r[0] + r[2])
    with pytest.raises(BackupFormatError):
        opened(sealed + r[0])  # something after the final chunk
    with pytest.raises(BackupFormatError):
        opened(sealed, name="data")  # another part's name
    with pytest.raises(BackupFormatError):
        opened(sealed, part=3)
    with pytest.raises(BackupFormatError):
        opened(sealed, backup_id="dc1-20261206T120000Z")  # another backup
    with pytest.raises(BackupFormatError, match="impossible length"):
        opened(b"\xff\xff\xff\xff" + sealed)


def test_retention_keeps_the_newest_and_removes_the_old(tmp_path: Path) -> None:
    now = time.time()

    def make(days_ago: float, complete: bool = True) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now - days_ago * 86400))
        name = f"dc1-{stamp}" + ("" if complete else ".partial")
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "manifest.json").write_text("{}")
        return name

    old = [make(d) for d in (90, 60, 40)]
    recent = [make(d) for d in (20, 10)]
    partial_old = make(3, complete=False)
    os.utime(tmp_path / partial_old, (now - 3 * 86400, now - 3 * 86400))
    partial_new = make(0.001, complete=False)
    stranger = tmp_path / "photos"
    stranger.mkdir()  # not ours: never touched
    removed = prune(tmp_path, keep_days=30, keep_min=3, now=now, progress=lambda _m: None)
    # Three newest kept even though one is older than 30 days.
    assert sorted(removed) == sorted([*old[:2], partial_old])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([old[2], *recent, partial_new, "photos"])
    # keep_days 0: nothing complete is removed by age.
    assert prune(tmp_path, keep_days=0, keep_min=1, now=now, progress=lambda _m: None) == []

"""S3 Object Lock for backups, without a server: the option's parsing (flags, then
environment) and retention keeping what a lock holds (test_backup_s3_lock.py has
the real object store)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tongxin.backup import archive
from tongxin.backup.s3_target import ObjectLock, _taken
from tongxin.backup.target import BackupError, Reader, StillLocked, Target, Writer


def test_lock_from_flags_then_environment() -> None:
    env = {"TONGXIN_BACKUP_S3_LOCK_DAYS": "7", "TONGXIN_BACKUP_S3_LOCK_MODE": "governance"}
    assert ObjectLock.of(None, None, env={}) is None
    assert ObjectLock.of(None, None, env=env) == ObjectLock("GOVERNANCE", 7)
    assert ObjectLock.of(3, None, env=env) == ObjectLock("GOVERNANCE", 3)
    assert ObjectLock.of(3, "compliance", env=env) == ObjectLock("COMPLIANCE", 3)
    assert ObjectLock.of(None, None, env={"TONGXIN_BACKUP_S3_LOCK_DAYS": "2"}) == \
        ObjectLock("COMPLIANCE", 2)  # compliance by default
    for days in (0, -1, "0"):
        with pytest.raises(BackupError, match="at least 1 day"):
            ObjectLock.of(days, None, env={})
    with pytest.raises(BackupError, match="whole number"):
        ObjectLock.of(None, None, env={"TONGXIN_BACKUP_S3_LOCK_DAYS": "1.5"})
    with pytest.raises(BackupError, match="compliance or governance"):
        ObjectLock.of(1, None, env={"TONGXIN_BACKUP_S3_LOCK_MODE": "legal-hold"})


def test_lock_runs_from_the_backup_start() -> None:
    start = _taken("dc1-20261205T023000Z")
    assert start == datetime(2026, 12, 5, 2, 30, tzinfo=UTC).timestamp()
    args = ObjectLock("COMPLIANCE", 35).args(start)
    assert args == {"ObjectLockMode": "COMPLIANCE",
                    "ObjectLockRetainUntilDate": datetime(2027, 1, 9, 2, 30, tzinfo=UTC)}
    assert abs(_taken("not-an-id") - time.time()) < 5


class _Locked(Target):
    """Backups of which some are locked: remove() says so."""

    where = "fake"

    def __init__(self, ids: list[str], locked: set[str]) -> None:
        self.ids, self.locked = list(ids), locked
        self.asked: list[tuple[str, float | None]] = []

    def location(self, backup_id: str) -> str:
        return backup_id

    def begin(self, backup_id: str) -> Writer:
        raise NotImplementedError

    def complete_ids(self) -> list[str]:
        return list(self.ids)

    def reader(self, backup_id: str) -> Reader:
        raise NotImplementedError

    def remove(self, backup_id: str, now: float | None = None) -> None:
        self.asked.append((backup_id, now))
        if backup_id in self.locked:
            raise StillLocked(f"backup {backup_id} is locked until 2030-01-01T00:00:00Z")
        self.ids.remove(backup_id)

    def remove_unfinished(self, now: float, is_id: Callable[[str], bool]) -> list[str]:
        return []


def test_retention_keeps_locked_backups_and_goes_on() -> None:
    ids = ["dc1-20200101T000000Z", "dc1-20200102T000000Z", "dc1-20200103T000000Z"]
    target = _Locked(ids, locked={"dc1-20200101T000000Z"})
    said: list[str] = []
    now = datetime(2021, 1, 1, tzinfo=UTC).timestamp()
    removed = archive.prune(target, keep_days=30, keep_min=1, now=now, progress=said.append)
    assert removed == ["dc1-20200102T000000Z"]
    assert target.ids == ["dc1-20200101T000000Z", "dc1-20200103T000000Z"]
    assert target.asked == [("dc1-20200101T000000Z", now), ("dc1-20200102T000000Z", now)]
    assert said[0] == ("retention: kept dc1-20200101T000000Z, older than 30 days but still "
                       "locked: backup dc1-20200101T000000Z is locked until 2030-01-01T00:00:00Z")

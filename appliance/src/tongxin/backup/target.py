"""Where backups are kept: a directory, or a prefix in an S3 bucket (s3_target.py).

Both hold one layout (archive.py): per backup, ``<id>/`` with the sealed parts,
SHA256SUMS, SM3SUMS and manifest.json; in a bucket, one object per file, under
the key prefix ``<prefix><id>/``. What makes a backup complete differs: a
directory is written as ``<id>.partial`` and renamed; S3 has no rename, so the
manifest object is written last and a backup without it is incomplete (never
listed, never restored, removed by retention a day later).
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from tongxin.config import Config

MANIFEST = "manifest.json"
STALE_SECONDS = 86400.0  # an unfinished backup this old is a crashed run's, not a running one's


class BackupError(Exception):
    """A backup that cannot be taken or used; the message says what to do."""


class StillLocked(BackupError):
    """A backup (or what is left of one) that an object lock keeps for now."""


class PartFile(ABC):
    """One file of a backup being written (write, then commit or abort)."""

    @abstractmethod
    def write(self, data: bytes) -> int: ...

    def flush(self) -> None:  # noqa: B027 - nothing to flush unless a part says so
        pass

    @abstractmethod
    def commit(self) -> None:
        """Make the bytes written durable where the target keeps them."""

    @abstractmethod
    def abort(self) -> None: ...


class Writer(ABC):
    """One backup being written into a target."""

    where: str

    @abstractmethod
    def open_part(self, name: str) -> PartFile: ...

    @abstractmethod
    def put(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    def commit(self, manifest: bytes) -> None:
        """Write the manifest and make the backup complete (after everything else)."""

    @abstractmethod
    def abort(self) -> None:
        """Remove what was written; the backup never counts as complete."""


class Reader(ABC):
    """One backup's files, read."""

    where: str

    @abstractmethod
    def locate(self, name: str) -> str:
        """The file's path or object URL, for messages."""

    @abstractmethod
    def read_bytes(self, name: str) -> bytes:
        """The whole (small) file; :class:`BackupError` if it is not there."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A buffered reader (with ``peek``) over the file; the caller closes it."""


class Target(ABC):
    """A place that holds backups, one per id."""

    where: str

    def check(self, cfg: Config) -> None:  # noqa: B027 - a target may have nothing to check
        """Refuse a target that cannot or should not take a backup of ``cfg``'s node."""

    def skip_path(self) -> Path | None:
        """A local directory that the data part must leave out, if any."""
        return None

    @abstractmethod
    def location(self, backup_id: str) -> str:
        """Where the backup ``backup_id`` is (path or URL)."""

    @abstractmethod
    def begin(self, backup_id: str) -> Writer: ...

    @abstractmethod
    def complete_ids(self) -> list[str]:
        """The ids of the complete backups, in any order."""

    @abstractmethod
    def reader(self, backup_id: str) -> Reader: ...

    @abstractmethod
    def remove(self, backup_id: str, now: float | None = None) -> None:
        """Remove the backup (:class:`StillLocked` if an object lock holds it at ``now``)."""

    def lock_of(self, backup_id: str) -> dict[str, str] | None:
        """The backup's object lock, {"mode", "until"}, or None."""
        return None

    @abstractmethod
    def remove_unfinished(self, now: float, is_id: Callable[[str], bool]) -> list[str]:
        """Remove what runs that did not finish left more than a day before ``now``;
        returns what was removed."""

    def close(self) -> None:  # noqa: B027 - a directory holds nothing open
        pass


# ---- a directory ---------------------------------------------------------------------


class _FilePart(PartFile):
    def __init__(self, path: Path) -> None:
        self._fh = open(path, "xb")  # noqa: SIM115 - closed in commit() or abort()

    def write(self, data: bytes) -> int:
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()

    def commit(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        self._fh.close()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirWriter(Writer):
    def __init__(self, target: Path, backup_id: str) -> None:
        self._target = target
        self.final = target / backup_id
        self.folder = target / f"{backup_id}.partial"
        self.where = str(self.final)
        if self.final.exists():
            raise BackupError(f"{self.final} exists already (two backups in one second?)")
        self.folder.mkdir(mode=0o700)

    def open_part(self, name: str) -> PartFile:
        return _FilePart(self.folder / name)

    def put(self, name: str, data: bytes) -> None:
        (self.folder / name).write_bytes(data)

    def commit(self, manifest: bytes) -> None:
        (self.folder / MANIFEST).write_bytes(manifest)
        fsync_dir(self.folder)
        self.folder.rename(self.final)
        fsync_dir(self._target)

    def abort(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class DirReader(Reader):
    """A backup's directory (any name: a copy made for inspection reads as well)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)

    def locate(self, name: str) -> str:
        return str(self.folder / name)

    def read_bytes(self, name: str) -> bytes:
        path = self.folder / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise BackupError(f"{path}: {exc.strerror}"
                              + (" (not a complete backup)" if name == MANIFEST else "")) from None

    def exists(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def open(self, name: str) -> BinaryIO:
        return open(self.folder / name, "rb")


class DirTarget(Target):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def check(self, cfg: Config) -> None:
        home = cfg.home.resolve()
        tgt = self.path.resolve()
        if tgt == home or home in tgt.parents:
            raise BackupError(f"the backup target {self.path} is inside the data directory "
                              f"{home}; choose a directory elsewhere (ideally another disk or host)")
        if not self.path.is_dir():
            raise BackupError(f"the backup target {self.path} is not a directory")

    def skip_path(self) -> Path | None:
        return self.path

    def location(self, backup_id: str) -> str:
        return str(self.path / backup_id)

    def begin(self, backup_id: str) -> Writer:
        return _DirWriter(self.path, backup_id)

    def complete_ids(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return [p.name for p in self.path.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]

    def reader(self, backup_id: str) -> Reader:
        return DirReader(self.path / backup_id)

    def remove(self, backup_id: str, now: float | None = None) -> None:
        shutil.rmtree(self.path / backup_id)

    def remove_unfinished(self, now: float, is_id: Callable[[str], bool]) -> list[str]:
        removed = []
        for p in self.path.glob("*.partial"):
            if p.is_dir() and is_id(p.name[:-len(".partial")]) \
                    and now - p.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(p)
                removed.append(p.name)
        return removed


# ---- choosing ------------------------------------------------------------------------


def is_s3(spec: str | Path) -> bool:
    return isinstance(spec, str) and spec.startswith("s3://")


@contextmanager
def open_target(spec: str | Path, cfg: Config | None) -> Iterator[Target]:
    """The target ``spec`` names: ``s3://bucket/prefix`` (endpoint and credentials as
    s3_target.S3Settings says) or a directory."""
    target: Target
    if is_s3(spec):
        from tongxin.backup.s3_target import S3Target

        target = S3Target.open(str(spec), cfg)
    else:
        target = DirTarget(Path(spec))
    try:
        yield target
    finally:
        target.close()


@contextmanager
def open_reader(ref: str | Path, cfg: Config | None,
                within: str = "") -> Iterator[Reader]:
    """One backup: ``ref`` is its directory or ``s3://bucket/prefix/<id>``; with
    ``within`` (a target), ``ref`` is its id there."""
    if within:
        with open_target(within, cfg) as target:
            yield target.reader(str(ref))
        return
    if is_s3(ref):
        from tongxin.backup.s3_target import S3Target

        target = S3Target.open(str(ref), cfg)
        try:
            yield target.here()
        finally:
            target.close()
        return
    yield DirReader(Path(ref))

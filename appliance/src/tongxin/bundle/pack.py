"""One directory of the bundle packed as a tar the controller copies to each host.

The Ansible role ``bundle`` copies each architecture's Debian packages as one
file. Several playbook runs on one controller may pack the same directory at
the same time (CI runs Molecule scenarios in parallel; an operator may run
``--limit dc1`` and ``--limit dc2`` side by side) while others are copying the
archive. So the archive is never rewritten in place: it is written under a
temporary name and renamed over the old one only when its bytes differ, and
its bytes depend only on the files packed (sorted names, their mtimes, owner
root), so an unchanged directory leaves the archive untouched.
"""

from __future__ import annotations

import filecmp
import os
import tarfile
import tempfile
from pathlib import Path

from tongxin.bundle.manifest import BundleError


def _members(src: Path, pattern: str) -> list[Path]:
    files = []
    for path in sorted(src.glob(pattern)):
        # Only regular files: the directory holds packages and apt indexes,
        # and a link or subdirectory would be something the manifest never saw.
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"{path}: not a regular file; a packages directory holds only files")
        files.append(path)
    return files


def _tarinfo(path: Path) -> tarfile.TarInfo:
    st = path.stat()
    info = tarfile.TarInfo(path.name)
    info.size = st.st_size
    info.mtime = int(st.st_mtime)
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def pack_directory(src: Path, dest: Path, pattern: str = "*") -> bool:
    """Pack the files of ``src`` matching ``pattern`` into ``dest``; True when it was (re)written."""
    if not src.is_dir():
        raise BundleError(f"{src}: no such directory")
    members = _members(src, pattern)
    if not members:
        raise BundleError(f"{src}: nothing to pack (no {pattern})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w",
                                                       format=tarfile.GNU_FORMAT) as tar:
            for path in members:
                with path.open("rb") as fh:
                    tar.addfile(_tarinfo(path), fh)
        if dest.is_file() and filecmp.cmp(tmp, dest, shallow=False):
            return False
        tmp.chmod(0o644)
        os.replace(tmp, dest)
        return True
    finally:
        tmp.unlink(missing_ok=True)

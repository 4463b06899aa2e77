"""Packing a bundle directory: same bytes for the same files, never rewritten in place."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from tongxin.bundle import BundleError
from tongxin.bundle.pack import pack_directory
from tongxin.cli.main import main


def _debs(root: Path) -> Path:
    src = root / "debs" / "x86_64"
    src.mkdir(parents=True)
    (src / "redis-server_7.0_amd64.deb").write_bytes(b"!<arch>\n" + b"r" * 5000)
    (src / "Packages").write_text("Package: redis-server\n")
    (src / "Release").write_text("Origin: tongxin\n")
    for p in src.iterdir():
        os.utime(p, (1_700_000_000, 1_700_000_000))
    return src


def test_archive_holds_the_files_by_name_owned_by_root(tmp_path: Path) -> None:
    src = _debs(tmp_path)
    dest = tmp_path / "out" / "debs.tar"
    assert pack_directory(src, dest) is True
    with tarfile.open(dest) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["Packages", "Release", "redis-server_7.0_amd64.deb"]
        assert all(m.uid == 0 and m.uname == "root" and m.mode == 0o644 for m in members)
        deb = tar.extractfile("redis-server_7.0_amd64.deb")
        assert deb is not None and deb.read() == (src / "redis-server_7.0_amd64.deb").read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o644


def test_unchanged_directory_leaves_the_archive_untouched(tmp_path: Path) -> None:
    src = _debs(tmp_path)
    dest = tmp_path / "debs.tar"
    pack_directory(src, dest)
    before = dest.stat()
    assert pack_directory(src, dest) is False
    after = dest.stat()
    # Same inode and mtime: a copy reading it at that moment reads one file throughout.
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_changed_directory_replaces_the_archive_by_rename(tmp_path: Path) -> None:
    src = _debs(tmp_path)
    dest = tmp_path / "debs.tar"
    pack_directory(src, dest)
    reader = dest.open("rb")  # a copy in progress holds the old file
    old = reader.read()
    (src / "Packages").write_text("Package: redis-server\nPackage: chrony\n")
    assert pack_directory(src, dest) is True
    reader.seek(0)
    assert reader.read() == old  # the reader's file was not rewritten under it
    reader.close()
    with tarfile.open(dest) as tar:
        pkgs = tar.extractfile("Packages")
        assert pkgs is not None and b"chrony" in pkgs.read()


def test_refuses_links_subdirectories_and_empty_or_missing_directories(tmp_path: Path) -> None:
    src = _debs(tmp_path)
    (src / "evil.deb").symlink_to("/etc/shadow")
    with pytest.raises(BundleError, match=r"evil\.deb: not a regular file"):
        pack_directory(src, tmp_path / "a.tar")
    (src / "evil.deb").unlink()
    (src / "sub").mkdir()
    with pytest.raises(BundleError, match="sub: not a regular file"):
        pack_directory(src, tmp_path / "a.tar")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="nothing to pack"):
        pack_directory(empty, tmp_path / "a.tar")
    with pytest.raises(BundleError, match="no such directory"):
        pack_directory(tmp_path / "absent", tmp_path / "a.tar")
    assert not (tmp_path / "a.tar").exists()


def test_pattern_picks_the_files_to_pack(tmp_path: Path) -> None:
    src = _debs(tmp_path)
    (src / "sub").mkdir()  # not matched, so not refused
    dest = tmp_path / "debs.tar"
    assert pack_directory(src, dest, "*.deb") is True
    with tarfile.open(dest) as tar:
        assert tar.getnames() == ["redis-server_7.0_amd64.deb"]
    with pytest.raises(BundleError, match=r"nothing to pack \(no \*\.whl\)"):
        pack_directory(src, dest, "*.whl")


def test_cli_reports_whether_it_changed_the_archive(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = _debs(tmp_path)
    dest = tmp_path / "debs.tar"
    assert main(["bundle", "pack", str(src), str(dest)]) == 0
    assert json.loads(capsys.readouterr().out) == {"archive": str(dest), "changed": True}
    assert main(["bundle", "pack", str(src), str(dest)]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    assert main(["bundle", "pack", str(tmp_path / "absent"), str(dest)]) == 1
    assert "REFUSED" in capsys.readouterr().err

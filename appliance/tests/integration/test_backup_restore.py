"""``tongxin backup``: a real node's data backed up, refused when damaged, restored
into an empty site, and served again there (logins, history, files, the audit chain).

Run on the embedded SQLite store and on MariaDB (``mariadb-dump`` and the
``mariadb`` client against the services.sh engine, as on a production host), and
with the file blobs in a bucket of the real S3-compatible server
(scripts/s3server.sh), restored into another, empty bucket.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiobotocore.session import get_session
from conftest import make_config, start_node
from engines import create_mysql_database, drop_mysql_database, start_database
from s3server import s3_server_env

from tongxin.compliance.keys import fingerprint
from tongxin.config import Config
from tongxin.crypto import SM2PublicKey

TEXTS = ["第一条：备份之前", "second, before the backup", "third 三"]
FILE = os.urandom(200_000) + "结尾".encode()


async def tongxin(*args: str, home: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", *args,
        env={**os.environ, "TONGXIN_HOME": str(home)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return int(proc.returncode or 0), out.decode(), err.decode()


@asynccontextmanager
async def storage(backend: str) -> AsyncIterator[tuple[dict[str, Any], Any]]:
    """(storage section, maker of another empty one) for ``backend``."""
    if backend == "sqlite":
        async def another() -> dict[str, Any]:
            return {}
        yield {}, another
        return
    server_dsn = await asyncio.to_thread(start_database, "mariadb")
    made: list[str] = []

    async def fresh() -> dict[str, Any]:
        dsn = await create_mysql_database(server_dsn)
        made.append(dsn)
        return {"backend": "mysql", "mysql_dsn": dsn, "mysql_pool_size": 4}

    try:
        yield await fresh(), fresh
    finally:
        for dsn in made:
            await drop_mysql_database(server_dsn, dsn)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    yield from s3_server_env()


def s3_client(env: dict[str, str]) -> Any:
    return get_session().create_client(
        "s3", endpoint_url=env["TONGXIN_S3_ENDPOINT"], region_name="us-east-1",
        aws_access_key_id=env["TONGXIN_S3_ACCESS_KEY"],
        aws_secret_access_key=env["TONGXIN_S3_SECRET_KEY"])


async def bucket_keys(env: dict[str, str], bucket: str, prefix: str = "") -> list[str]:
    async with s3_client(env) as s3:
        keys: list[str] = []
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                       Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []) if "Key" in o)
        return sorted(keys)


@asynccontextmanager
async def buckets(env: dict[str, str]) -> AsyncIterator[Any]:
    """A maker of new, empty buckets, all removed (with their objects) afterwards."""
    made: list[str] = []

    async def new(kind: str) -> str:
        name = f"tx-{kind}-{uuid.uuid4().hex[:12]}"
        async with s3_client(env) as s3:
            await s3.create_bucket(Bucket=name)
        made.append(name)
        return name

    try:
        yield new
    finally:
        async with s3_client(env) as s3:
            for name in made:
                for key in await bucket_keys(env, name):
                    await s3.delete_object(Bucket=name, Key=key)
                await s3.delete_bucket(Bucket=name)


def write_config(cfg: Config, path: Path) -> Path:
    doc = {"data_dir": cfg.data_dir, "server": {"listen": cfg.server.listen},
           "accounts": {"scrypt_n": cfg.accounts.scrypt_n},
           "storage": {"backend": cfg.storage.backend, "mysql_dsn": cfg.storage.mysql_dsn},
           "files": {"backend": cfg.files.backend, "part_size": cfg.files.part_size,
                     "s3_endpoint": cfg.files.s3_endpoint, "s3_bucket": cfg.files.s3_bucket}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


async def fill(cfg: Config) -> tuple[str, str]:
    """Two users, three messages and a file on a real node; (conversation, file id)."""
    running = await start_node(cfg)
    try:
        alice = await running.user("alice", "alice-password-1")
        await running.user("bob", "bob-password-1")
        conv = (await alice.direct("bob")).conversation_id
        for text in TEXTS:
            await alice.send_text(conv, text)
        info = await alice.upload_file(conv, FILE, name="报告.bin")
        return conv, info.file_id
    finally:
        await running.stop()


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


@asynccontextmanager
async def file_store(files: str, request: pytest.FixtureRequest,
                     monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """A maker of files sections: local, or each a new, empty bucket of the S3 server
    (the keys from the environment, as an operator passes them)."""
    if files == "local":
        async def local() -> dict[str, Any]:
            return {}
        yield local
        return
    env = request.getfixturevalue("s3_server")
    monkeypatch.setenv("TONGXIN_S3_ACCESS_KEY", env["TONGXIN_S3_ACCESS_KEY"])
    monkeypatch.setenv("TONGXIN_S3_SECRET_KEY", env["TONGXIN_S3_SECRET_KEY"])
    async with buckets(env) as new:
        async def bucket() -> dict[str, Any]:
            return {"backend": "s3", "part_size": 5 << 20,
                    "s3_endpoint": env["TONGXIN_S3_ENDPOINT"], "s3_bucket": await new("files")}
        yield bucket


@pytest.mark.integration
# The first run on a machine builds the S3 server (minutes): allow for it.
@pytest.mark.timeout(1500)
@pytest.mark.parametrize(("backend", "files"), [("sqlite", "local"), ("mariadb", "local"),
                                                ("sqlite", "s3")])
async def test_backup_then_restore_into_an_empty_site(
        tmp_path: Path, backend: str, files: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with storage(backend) as (section, another), \
            file_store(files, request, monkeypatch) as another_files:
        src = make_config(tmp_path / "src", storage=section, files=await another_files())
        conv, file_id = await fill(src)
        src_cfg = write_config(src, tmp_path / "etc-src" / "tongxin.yml")
        key = tmp_path / "keys" / "backup"
        rc, out, err = await tongxin("backup", "keygen", "--out", str(key), "--suite", "gm",
                                     home=src.home)
        assert rc == 0, err
        target = tmp_path / "target"
        target.mkdir()
        rc, out, err = await tongxin("backup", "create", "--config", str(src_cfg), "--to",
                                     str(target), "--recipient", f"{key}.pub", home=src.home)
        assert rc == 0, err
        result = json.loads(out)
        folder = Path(result["target"])
        assert result["ok"] is True and folder.parent == target
        assert sorted(result["parts"]) == ["data", "database", "etc", "files"]
        assert "[1/4] database" in err and "[4/4] etc" in err  # progress as it goes
        evidence = list((src.home / "evidence").glob("backup-*.json"))
        assert len(evidence) == 1 and json.loads(evidence[0].read_text())["ok"] is True

        # The checksum files are what sha256sum itself checks.
        proc = await asyncio.create_subprocess_exec(
            "sha256sum", "--strict", "-c", "SHA256SUMS", cwd=folder,
            stdout=asyncio.subprocess.PIPE)
        sums, _ = await proc.communicate()
        assert proc.returncode == 0 and sums.count(b": OK") == 5
        # Sealed: no message text, file content or secret in clear, compressed or not.
        raw = all_bytes(folder)
        for clear in (*[t.encode() for t in TEXTS], FILE[:64],
                      (src.home / "secrets" / "token.key").read_bytes()):
            assert clear not in raw
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["suite"] == "gm" and manifest["storage_backend"] == src.storage.backend

        dst = make_config(tmp_path / "dst", storage=await another(), files=await another_files())
        dst_cfg = write_config(dst, tmp_path / "etc-dst" / "tongxin.yml")
        if files == "s3":
            env = request.getfixturevalue("s3_server")
            src_keys = await bucket_keys(env, src.files.s3_bucket)
            assert src_keys == [f"blobs/{file_id[2:4]}/{file_id}"]
            assert manifest["files_backend"] == "s3"
            assert await bucket_keys(env, dst.files.s3_bucket) == []
            # A site whose bucket holds files is not empty, whatever its database says.
            full = make_config(tmp_path / "full", storage=await another(), files={
                **await another_files(), "s3_bucket": src.files.s3_bucket})
            full_cfg = write_config(full, tmp_path / "etc-full" / "tongxin.yml")
            rc, out, err = await tongxin("backup", "restore", "--check", "--config", str(full_cfg),
                                         str(folder), "--key", f"{key}.key", home=full.home)
            assert rc == 1 and f"s3 bucket {src.files.s3_bucket} holds files" in err, err
            # Backups do not go into the bucket the node writes its files to.
            rc, out, err = await tongxin(
                "backup", "create", "--config", str(src_cfg), "--to",
                f"s3://{src.files.s3_bucket}/backups", "--recipient", f"{key}.pub", home=src.home)
            assert rc == 1 and "a bucket the node itself writes" in err, err
            assert await bucket_keys(env, src.files.s3_bucket) == src_keys

        # ---- damaged or foreign backups are refused and change nothing ------------
        bad = tmp_path / "bad"

        def copy() -> Path:
            shutil.rmtree(bad, ignore_errors=True)
            shutil.copytree(folder, bad)
            return bad

        other = tmp_path / "keys" / "other"
        assert (await tongxin("backup", "keygen", "--out", str(other), home=src.home))[0] == 0
        rc, out, err = await tongxin("backup", "restore", "--config", str(dst_cfg), str(folder),
                                     "--key", f"{other}.key", home=dst.home)
        assert rc == 1 and "sealed to key" in err

        flipped = copy()
        part = flipped / manifest["parts"][1]["file"]
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 1
        part.write_bytes(bytes(data))
        rc, out, err = await tongxin("backup", "verify", str(flipped), home=src.home)
        assert rc == 1 and "does not match its SHA-256/SM3" in err

        # A manifest that drops a part, with its checksums made to agree, no longer
        # matches the sealed index.
        dropped = copy()
        m = json.loads((dropped / "manifest.json").read_text())
        m["parts"] = [p for p in m["parts"] if p["name"] != "files"]
        (dropped / "manifest.json").write_text(json.dumps(m))
        await rewrite_sums(dropped)
        rc, out, err = await tongxin("backup", "restore", "--config", str(dst_cfg), str(dropped),
                                     "--key", f"{key}.key", home=dst.home)
        assert rc == 1 and "sealed index" in err

        # A part cut short, the manifest's digests and the checksum files made to
        # agree: the sealed index still holds the true digests.
        cut = copy()
        big = max(manifest["parts"], key=lambda p: p["sealed_bytes"])
        part = cut / big["file"]
        part.write_bytes(part.read_bytes()[: big["sealed_bytes"] // 2])
        await rewrite_sums(cut, fix_manifest=True)
        rc, out, err = await tongxin("backup", "restore", "--config", str(dst_cfg), str(cut),
                                     "--key", f"{key}.key", home=dst.home)
        assert rc == 1 and "sealed index" in err
        assert not (dst.home / "evidence").exists()
        assert not dst.sqlite_file.exists() or backend != "sqlite"

        # ---- who made it: the manifest is signed with the source node's audit key ----
        src_fp = fingerprint(SM2PublicKey.from_pem_file(
            next((src.home / "audit-keys").glob("*.pem"))))
        assert manifest["signature"]["fingerprint"] == src_fp
        assert result["signed_by"] == src_fp

        async def dry_run(folder_: Path, *extra: str) -> tuple[int, str, str]:
            return await tongxin("backup", "restore", "--check", "--config", str(dst_cfg),
                                 str(folder_), "--key", f"{key}.key", *extra, home=dst.home)

        # A clear field edited (not one the sealed index holds), checksums made to agree.
        edited = copy()
        m = json.loads((edited / "manifest.json").read_text())
        m["site"] = "somewhere-else"
        (edited / "manifest.json").write_text(json.dumps(m))
        await rewrite_sums(edited)
        rc, out, err = await dry_run(edited)
        assert rc == 1 and "signature does not verify" in err
        # The signature taken off: refused unless the operator says so.
        unsigned = copy()
        m = json.loads((unsigned / "manifest.json").read_text())
        del m["signature"]
        (unsigned / "manifest.json").write_text(json.dumps(m))
        await rewrite_sums(unsigned)
        rc, out, err = await dry_run(unsigned)
        assert rc == 1 and "not signed" in err
        rc, out, err = await dry_run(unsigned, "--allow-unsigned")
        assert rc == 0 and json.loads(out)["origin"]["signed"] is False, err
        # Pinned keys decide: another site's key pinned refuses it, its own accepts it.
        rc, out, err = await dry_run(folder, "--trust-key", "ab" * 32)
        assert rc == 1 and f"signed by audit key {src_fp}, which is not pinned" in err
        rc, out, err = await dry_run(folder, "--trust-key", src_fp)
        assert rc == 0 and json.loads(out)["origin"] == {
            "signed": True, "trusted": True, "fingerprint": src_fp}, err

        # ---- a dry run checks everything and writes nothing -------------------------
        rc, out, err = await tongxin("backup", "restore", "--check", "--config", str(dst_cfg),
                                     str(folder), "--key", f"{key}.key", home=dst.home)
        assert rc == 0, err
        assert json.loads(out)["checked"] is True and json.loads(out)["files"]["files"] == 1
        assert not (dst.home / "evidence").exists()
        assert not dst.sqlite_file.exists() or backend != "sqlite"

        # ---- restore, then serve from the restored site ----------------------------
        rc, out, err = await tongxin("backup", "restore", "--config", str(dst_cfg), str(folder),
                                     "--key", f"{key}.key", home=dst.home)
        assert rc == 0, err
        restored = json.loads(out)
        assert restored["ok"] is True and restored["files"] == 1
        assert restored["audit"] == "recorded"
        assert list((dst.home / "evidence").glob("restore-*.json"))
        if files == "s3":
            assert await bucket_keys(env, dst.files.s3_bucket) == src_keys
            assert not (dst.files_dir / "blobs").exists()  # nothing went to the local store

        running = await start_node(dst)
        try:
            alice = await running.client()
            await alice.login("alice", "alice-password-1")
            history = await alice.sync_all(conv)
            assert [m.content.text for m in history if m.content.text] == TEXTS
            assert await alice.download_file(file_id) == FILE
            bob = await running.client()
            await bob.login("bob", "bob-password-1")
            assert await bob.download_file(file_id) == FILE
        finally:
            await running.stop()

        pubkeys = [a for p in sorted((dst.home / "audit-keys").glob("*.pem"))
                   for a in ("--pubkey", str(p))]
        rc, out, err = await tongxin("audit", "sign", "--config", str(dst_cfg), home=dst.home)
        assert rc == 0, out + err
        rc, out, err = await tongxin("audit", "verify", "--json", "--config", str(dst_cfg),
                                     *pubkeys, home=dst.home)
        assert rc == 0, out + err
        rc, out, err = await tongxin("audit", "tail", "-n", "20", "--config", str(dst_cfg),
                                     home=dst.home)
        # The restored trail ends where the backup was taken, then records the restore;
        # the record of taking the backup is in the source site's trail (written after).
        assert "backup.restore" in out and "backup.create" not in out
        rc, out, err = await tongxin("audit", "tail", "-n", "5", "--config", str(src_cfg),
                                     home=src.home)
        assert "backup.create" in out

        # The site is in use now: a second restore would merge two histories.
        for check in ([], ["--check"]):
            rc, out, err = await tongxin("backup", "restore", *check, "--config", str(dst_cfg),
                                         str(folder), "--key", f"{key}.key", home=dst.home)
            assert rc == 1 and "not empty" in err


async def rewrite_sums(folder: Path, fix_manifest: bool = False) -> None:
    """Make the clear checksums agree with edited files, as an attacker with write
    access to the backup target can."""
    from tongxin.backup.stream import file_digests

    m = json.loads((folder / "manifest.json").read_text())
    if fix_manifest:
        for p in m["parts"]:
            size, sha, sm3 = file_digests(str(folder / p["file"]))
            p.update(sealed_bytes=size, sha256=sha, sm3=sm3)
        (folder / "manifest.json").write_text(json.dumps(m))
    names = [p["file"] for p in m["parts"]] + ["manifest.json"]
    digests = {n: file_digests(str(folder / n)) for n in names}
    (folder / "SHA256SUMS").write_text("".join(f"{digests[n][1]}  {n}\n" for n in names))
    (folder / "SM3SUMS").write_text("".join(f"{digests[n][2]}  {n}\n" for n in names))

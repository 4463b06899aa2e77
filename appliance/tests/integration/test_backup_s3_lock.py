"""``tongxin backup create --lock-days`` (S3 Object Lock) on the real S3-compatible
server (scripts/s3server.sh, MinIO): every object of the backup written locked;
a bucket without Object Lock refused before anything is written; what the backup
user's own deletions can and cannot do to a locked backup (MinIO: a DELETE of a
version is refused, a DELETE without one only adds a delete marker, and with the
markers gone the backup lists, verifies and opens whole again); retention keeping
a locked backup, also when its own clock says the lock ended but the store's does
not, and removing every version once the lock has ended; a locked multipart upload."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import make_config
from s3server import s3_server_env
from test_backup_restore import bucket_keys, fill, s3_client, tongxin, write_config

from tongxin.backup import archive, s3_target
from tongxin.backup.s3_target import ObjectLock, S3Target
from tongxin.backup.target import BackupError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

FILES = ["01-database.tar.zst.sealed", "02-files.tar.zst.sealed", "03-data.tar.zst.sealed",
         "04-etc.tar.zst.sealed", "SHA256SUMS", "SM3SUMS", "manifest.json"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    yield from s3_server_env()


@pytest.fixture
def backup_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"TONGXIN_BACKUP_S3_ENDPOINT": s3_server["TONGXIN_S3_ENDPOINT"],
           "TONGXIN_BACKUP_S3_ACCESS_KEY": s3_server["TONGXIN_S3_ACCESS_KEY"],
           "TONGXIN_BACKUP_S3_SECRET_KEY": s3_server["TONGXIN_S3_SECRET_KEY"]}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TONGXIN_BACKUP_S3_LOCK_DAYS", raising=False)
    monkeypatch.delenv("TONGXIN_BACKUP_S3_LOCK_MODE", raising=False)
    return env


async def versions(env: dict[str, str], bucket: str,
                   prefix: str = "") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(versions, delete markers) under ``prefix``."""
    async with s3_client(env) as s3:
        vs: list[dict[str, Any]] = []
        ms: list[dict[str, Any]] = []
        async for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket,
                                                                           Prefix=prefix):
            vs.extend(page.get("Versions", []))
            ms.extend(page.get("DeleteMarkers", []))
        return vs, ms


@pytest.fixture
async def lock_buckets(s3_server: dict[str, str]) -> AsyncIterator[Any]:
    """A maker of new buckets, with Object Lock or without. Afterwards what can be
    removed is (a locked object cannot: those buckets stay on the test server)."""
    made: list[str] = []

    async def new(lock: bool) -> str:
        name = f"tx-lock-{uuid.uuid4().hex[:12]}" if lock else f"tx-plain-{uuid.uuid4().hex[:12]}"
        async with s3_client(s3_server) as s3:
            await s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
        made.append(name)
        return name

    yield new
    async with s3_client(s3_server) as s3:
        for name in made:
            vs, ms = await versions(s3_server, name)
            for v in vs + ms:
                with contextlib.suppress(ClientError):  # still locked: left on the server
                    await s3.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
            with contextlib.suppress(ClientError):  # not empty: locked objects remain
                await s3.delete_bucket(Bucket=name)


async def copy_locked(env: dict[str, str], bucket: str, prefix: str, backup_id: str,
                      new_id: str, until: datetime) -> None:
    """Another backup under the prefix (prune goes by the time in the id): server-side
    copies of ``backup_id``'s objects, locked until ``until`` (seconds away: MinIO takes
    any retain-until date in the future, so the lock can end within a test)."""
    async with s3_client(env) as s3:
        for key in await bucket_keys(env, bucket, f"{prefix}{backup_id}/"):
            name = key.rsplit("/", 1)[1]
            await s3.copy_object(Bucket=bucket, Key=f"{prefix}{new_id}/{name}",
                                 CopySource={"Bucket": bucket, "Key": key},
                                 ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)


async def test_locked_backup_to_s3(tmp_path: Path, s3_server: dict[str, str],
                                   backup_env: dict[str, str], lock_buckets: Any) -> None:
    env = s3_server
    src = make_config(tmp_path / "src")
    await fill(src)
    src_cfg = write_config(src, tmp_path / "etc-src" / "tongxin.yml")
    key = tmp_path / "keys" / "backup"
    assert (await tongxin("backup", "keygen", "--out", str(key), home=src.home))[0] == 0
    create = ("backup", "create", "--config", str(src_cfg), "--recipient", f"{key}.pub")

    # ---- a bucket without Object Lock: refused, nothing written ------------------------
    plain = await lock_buckets(False)
    rc, out, err = await tongxin(*create, "--to", f"s3://{plain}/tongxin", "--lock-days", "1",
                                 home=src.home)
    assert rc == 1, err
    assert f"the bucket s3://{plain} has no Object Lock" in err and "Nothing was written" in err
    assert await bucket_keys(env, plain) == []
    async with s3_client(env) as s3:
        assert not (await s3.list_multipart_uploads(Bucket=plain)).get("Uploads")
    doc = json.loads(next((src.home / "evidence").glob("backup-*.json")).read_text())
    assert doc["ok"] is False and "has no Object Lock" in doc["error"]
    # What role backup checks at deployment.
    rc, out, err = await tongxin("backup", "list", "--to", f"s3://{plain}/tongxin",
                                 "--require-lock", home=src.home)
    assert rc != 0 and f"the bucket s3://{plain} has no Object Lock" in err, err
    # A lock under a day, and a lock for a directory, are refused too.
    rc, out, err = await tongxin(*create, "--to", f"s3://{plain}/tongxin", "--lock-days", "0",
                                 home=src.home)
    assert rc != 0 and "the lock is at least 1 day" in err, err
    rc, out, err = await tongxin(*create, "--to", str(tmp_path / "dir"), "--lock-days", "1",
                                 home=src.home)
    assert rc == 1 and "for s3:// targets only" in err, err

    # ---- the lock from the environment, as the role's timer sets it -------------------
    bucket = await lock_buckets(True)
    prefix = "tongxin/dc1/"
    url = f"s3://{bucket}/tongxin/dc1"
    before = datetime.now(UTC)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TONGXIN_BACKUP_S3_LOCK_DAYS", "1")
        rc, out, err = await tongxin(*create, "--to", url, "--keep-days", "0.5", home=src.home)
    assert rc == 0, err
    assert "object lock: COMPLIANCE for 1 days" in err
    assert "outlasts --keep-days (0.5)" in err
    result = json.loads(out)
    backup_id = result["id"]
    assert result["lock"]["mode"] == "COMPLIANCE" and result["lock"]["days"] == 1
    async with s3_client(env) as s3:
        for name in FILES:
            head = await s3.head_object(Bucket=bucket, Key=f"{prefix}{backup_id}/{name}")
            assert head["ObjectLockMode"] == "COMPLIANCE", name
            until = head["ObjectLockRetainUntilDate"]
            assert before + timedelta(days=1) - timedelta(seconds=5) <= until \
                <= datetime.now(UTC) + timedelta(days=1), (name, until)
    rc, out, err = await tongxin("backup", "list", "--to", url, "--require-lock",
                                 home=src.home)
    assert rc == 0, err
    [row] = json.loads(out)
    assert row["id"] == backup_id and row["lock"]["mode"] == "COMPLIANCE"
    assert row["lock"]["until"] == result["lock"]["until"]

    # ---- the backup user tries to destroy it ---------------------------------------
    vs, ms = await versions(env, bucket, f"{prefix}{backup_id}/")
    assert sorted(v["Key"].rsplit("/", 1)[1] for v in vs) == sorted(FILES) and not ms
    async with s3_client(env) as s3:
        for v in vs:  # a version's DELETE: refused, whoever asks
            with pytest.raises(ClientError) as refused:
                await s3.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
            assert "WORM" in str(refused.value) or "AccessDenied" in str(refused.value)
            with pytest.raises(ClientError):  # nor can the lock be shortened
                await s3.put_object_retention(
                    Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"],
                    Retention={"Mode": "COMPLIANCE",
                               "RetainUntilDate": datetime.now(UTC) + timedelta(hours=1)})
        # Overwritten and deleted without a version: only new versions and delete markers.
        await s3.put_object(Bucket=bucket, Key=f"{prefix}{backup_id}/manifest.json", Body=b"{}")
        res = await s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": v["Key"]} for v in vs], "Quiet": True})
        assert not res.get("Errors")
    rc, out, err = await tongxin("backup", "list", "--to", url, home=src.home)
    assert rc == 0 and json.loads(out) == [], out  # hidden, not gone:
    after, markers = await versions(env, bucket, f"{prefix}{backup_id}/")
    assert {v["VersionId"] for v in vs} <= {v["VersionId"] for v in after}
    # The way back (docs/operations.md): delete the delete markers and the newer,
    # unlocked versions; the locked ones become the current ones again.
    locked = {v["VersionId"] for v in vs}
    async with s3_client(env) as s3:
        for v in [*markers, *(v for v in after if v["VersionId"] not in locked)]:
            await s3.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
    rc, out, err = await tongxin("backup", "list", "--to", url, home=src.home)
    assert [r["id"] for r in json.loads(out)] == [backup_id]
    rc, out, err = await tongxin("backup", "verify", "--from", url, backup_id,
                                 "--key", f"{key}.key", home=src.home)
    assert rc == 0 and json.loads(out)["opened"] is True, err
    dst = make_config(tmp_path / "dst")
    dst_cfg = write_config(dst, tmp_path / "etc-dst" / "tongxin.yml")
    rc, out, err = await tongxin("backup", "restore", "--config", str(dst_cfg), "--check",
                                 f"{url}/{backup_id}", "--key", f"{key}.key", home=dst.home)
    assert rc == 0 and json.loads(out)["checked"] is True, err

    # ---- retention keeps what is locked ------------------------------------------------
    short = "dc1-20200101T000000Z"  # old by its id; locked for seconds only
    ends = datetime.now(UTC) + timedelta(seconds=4)
    await copy_locked(env, bucket, prefix, backup_id, short, ends)
    target = await asyncio.to_thread(S3Target.open, url, None)
    try:
        def prune(now: float) -> tuple[list[str], list[str]]:
            said: list[str] = []
            return archive.prune(target, keep_days=1e-6, keep_min=0, now=now,
                                 progress=said.append), said

        removed, said = await asyncio.to_thread(prune, time.time())
        assert removed == []
        assert any(f"retention: kept {backup_id}, older than" in m and "still locked" in m
                   and "locked until" in m for m in said), said
        assert any(f"retention: kept {short}" in m for m in said), said
        # By its own clock two days on, the lock has ended; the store's has not: it
        # refuses the deletion, and that is "kept", not a failure.
        removed, said = await asyncio.to_thread(prune, time.time() + 2 * 86400)
        assert removed == []
        assert any(f"retention: kept {backup_id}" in m and "refuses its deletion" in m
                   for m in said), said
        # Nothing was hidden behind a delete marker on the way.
        assert [r for r in await asyncio.to_thread(archive.list_backups, target)] == \
            [short, backup_id]
        _vs, ms = await versions(env, bucket, prefix)
        assert ms == []

        # Once the short lock has ended, retention removes every version of it.
        await asyncio.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 1.5)
        removed, said = await asyncio.to_thread(prune, time.time())
        assert removed == [short], said
        vs, ms = await versions(env, bucket, f"{prefix}{short}/")
        assert vs == [] and ms == []
        assert await asyncio.to_thread(archive.list_backups, target) == [backup_id]
    finally:
        await asyncio.to_thread(target.close)


async def test_locked_multipart_upload(s3_server: dict[str, str], backup_env: dict[str, str],
                                       lock_buckets: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A part larger than one upload part goes as a multipart upload, locked from its
    CreateMultipartUpload; GOVERNANCE from the environment."""
    monkeypatch.setattr(s3_target, "PART", 5 << 20)  # S3's smallest part
    monkeypatch.setenv("TONGXIN_BACKUP_S3_LOCK_DAYS", "2")
    monkeypatch.setenv("TONGXIN_BACKUP_S3_LOCK_MODE", "governance")
    lock = ObjectLock.of(None, None)
    assert lock == ObjectLock("GOVERNANCE", 2)
    assert ObjectLock.of(3, "compliance") == ObjectLock("COMPLIANCE", 3)  # flags win
    bucket = await lock_buckets(True)
    backup_id = "dc1-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = await asyncio.to_thread(S3Target.open, f"s3://{bucket}/mp", None)
    try:
        def write() -> None:
            target.require_lock(lock)
            writer = target.begin(backup_id)
            part = writer.open_part("01-database.tar.zst.sealed")
            for _ in range(10):
                part.write(b"x" * (1 << 20))
            part.write(b"y" * 99)
            part.commit()
        await asyncio.to_thread(write)
    finally:
        await asyncio.to_thread(target.close)
    async with s3_client(s3_server) as s3:
        head = await s3.head_object(Bucket=bucket,
                                    Key=f"mp/{backup_id}/01-database.tar.zst.sealed")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=1, hours=23, minutes=59)
    with pytest.raises(BackupError, match="whole number"):
        ObjectLock.of("x", None)
    with pytest.raises(BackupError, match="compliance or governance"):
        ObjectLock.of(1, "legal")

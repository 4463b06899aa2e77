"""``tongxin backup`` with object storage as its target (``--to s3://bucket/prefix``),
on the real S3-compatible server (scripts/s3server.sh): create, list, verify, a
damaged object refused by name, restore into an empty site, a backup without its
manifest object neither listed nor restored, retention; and the file blobs of an
S3-backed node larger than one PUT restored in parts."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, start_node
from s3server import s3_server_env
from test_backup_restore import (
    FILE,
    TEXTS,
    bucket_keys,
    buckets,
    fill,
    s3_client,
    tongxin,
    write_config,
)

from tongxin.backup import archive, s3_blobs
from tongxin.backup.s3_target import S3Target

pytestmark = [pytest.mark.integration,
              # The first run on a machine builds the S3 server (minutes): allow for it.
              pytest.mark.timeout(1500)]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    yield from s3_server_env()


@pytest.fixture
async def new_bucket(s3_server: dict[str, str]) -> AsyncIterator[Any]:
    async with buckets(s3_server) as new:
        yield new


@pytest.fixture
def backup_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The backup target's endpoint and keys, from the environment (the node's files stay
    local: nothing of the node's own S3 settings is there to fall back on)."""
    env = {"TONGXIN_BACKUP_S3_ENDPOINT": s3_server["TONGXIN_S3_ENDPOINT"],
           "TONGXIN_BACKUP_S3_ACCESS_KEY": s3_server["TONGXIN_S3_ACCESS_KEY"],
           "TONGXIN_BACKUP_S3_SECRET_KEY": s3_server["TONGXIN_S3_SECRET_KEY"]}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


async def copy_backup(env: dict[str, str], bucket: str, prefix: str, backup_id: str,
                      new_id: str, *, manifest: bool = True) -> None:
    """Another backup under the prefix, server-side copies of ``backup_id``'s objects
    (prune goes by the time in the id)."""
    async with s3_client(env) as s3:
        for key in await bucket_keys(env, bucket, f"{prefix}{backup_id}/"):
            name = key.rsplit("/", 1)[1]
            if name == "manifest.json" and not manifest:
                continue
            await s3.copy_object(Bucket=bucket, Key=f"{prefix}{new_id}/{name}",
                                 CopySource={"Bucket": bucket, "Key": key})


async def test_backup_to_s3_list_verify_damage_restore_incomplete_prune(
        tmp_path: Path, s3_server: dict[str, str], backup_env: dict[str, str],
        new_bucket: Any) -> None:
    env = s3_server
    bucket = await new_bucket("backup")
    prefix = "tongxin/dc1/"
    url = f"s3://{bucket}/tongxin/dc1"
    src = make_config(tmp_path / "src")
    conv, file_id = await fill(src)
    src_cfg = write_config(src, tmp_path / "etc-src" / "tongxin.yml")
    key = tmp_path / "keys" / "backup"
    assert (await tongxin("backup", "keygen", "--out", str(key), home=src.home))[0] == 0

    # ---- create: one object per file, the manifest among them --------------------
    started = time.monotonic()
    rc, out, err = await tongxin("backup", "create", "--config", str(src_cfg), "--to", url,
                                 "--recipient", f"{key}.pub", home=src.home)
    took = time.monotonic() - started
    assert rc == 0, err
    result = json.loads(out)
    backup_id = result["id"]
    assert result["target"] == f"{url}/{backup_id}"
    keys = await bucket_keys(env, bucket)
    files = ["01-database.tar.zst.sealed", "02-files.tar.zst.sealed", "03-data.tar.zst.sealed",
             "04-etc.tar.zst.sealed", "SHA256SUMS", "SM3SUMS", "manifest.json"]
    assert keys == sorted(f"{prefix}{backup_id}/{f}" for f in files)
    async with s3_client(env) as s3:
        objects = {}
        for k in keys:
            res = await s3.get_object(Bucket=bucket, Key=k)
            objects[k.rsplit("/", 1)[1]] = await res["Body"].read()
    # The same bytes as a directory backup holds: the manifest's digests are the parts'.
    doc = json.loads(objects["manifest.json"])
    for part in doc["parts"]:
        data = objects[part["file"]]
        assert hashlib.sha256(data).hexdigest() == part["sha256"]
        assert len(data) == part["sealed_bytes"] == result["parts"][part["name"]]
    assert result["manifest_sha256"] == hashlib.sha256(objects["manifest.json"]).hexdigest()
    sealed = b"".join(objects.values())
    for clear in (*[t.encode() for t in TEXTS], FILE[:64]):
        assert clear not in sealed
    print(f"\ncreate to s3: {took:.1f} s, {result['bytes']} bytes sealed")

    # ---- list, verify --------------------------------------------------------------
    rc, out, err = await tongxin("backup", "list", "--to", url, home=src.home)
    assert rc == 0, err
    assert [(r["id"], r["location"]) for r in json.loads(out)] == [
        (backup_id, f"{url}/{backup_id}")]
    rc, out, err = await tongxin("backup", "verify", f"{url}/{backup_id}", home=src.home)
    assert rc == 0 and json.loads(out)["opened"] is False, err
    rc, out, err = await tongxin("backup", "verify", "--from", url, backup_id,
                                 "--key", f"{key}.key", home=src.home)
    assert rc == 0, err
    assert json.loads(out)["opened"] is True and json.loads(out)["files"]["files"] == 1

    dst = make_config(tmp_path / "dst")
    dst_cfg = write_config(dst, tmp_path / "etc-dst" / "tongxin.yml")

    # ---- a flipped byte in one object: verify and restore refuse, naming it ------------
    part_key = f"{prefix}{backup_id}/02-files.tar.zst.sealed"
    original = objects["02-files.tar.zst.sealed"]
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 1
    async with s3_client(env) as s3:
        await s3.put_object(Bucket=bucket, Key=part_key, Body=bytes(flipped))
    want = f"part s3://{bucket}/{part_key} does not match its SHA-256/SM3 digests"
    rc, out, err = await tongxin("backup", "verify", f"{url}/{backup_id}", home=src.home)
    assert rc == 1 and want in err, err
    rc, out, err = await tongxin("backup", "restore", "--config", str(dst_cfg), "--from", url,
                                 backup_id, "--key", f"{key}.key", home=dst.home)
    assert rc == 1 and want in err, err
    assert not dst.sqlite_file.exists() and not (dst.home / "evidence").exists()
    async with s3_client(env) as s3:
        await s3.put_object(Bucket=bucket, Key=part_key, Body=original)

    # ---- a backup without its manifest object is incomplete ---------------------------
    cut_id = "dc1-20300101T000000Z"  # newer than the real one: still not listed
    await copy_backup(env, bucket, prefix, backup_id, cut_id, manifest=False)
    rc, out, err = await tongxin("backup", "list", "--to", url, home=src.home)
    assert [r["id"] for r in json.loads(out)] == [backup_id]
    for args in (("verify", f"{url}/{cut_id}"),
                 ("restore", "--config", str(dst_cfg), f"{url}/{cut_id}", "--key", f"{key}.key")):
        rc, out, err = await tongxin("backup", *args, home=dst.home)
        assert rc == 1, err
        assert f"s3://{bucket}/{prefix}{cut_id}/manifest.json: no such object (not a " \
               "complete backup" in err, err
    assert not dst.sqlite_file.exists()

    # ---- restore from the bucket into an empty site, which then serves it ----------
    rc, out, err = await tongxin("backup", "restore", "--config", str(dst_cfg),
                                 f"{url}/{backup_id}", "--key", f"{key}.key", home=dst.home)
    assert rc == 0, err
    restored = json.loads(out)
    assert restored["ok"] is True and restored["files"] == 1 and restored["backup"] == backup_id
    running = await start_node(dst)
    try:
        alice = await running.client()
        await alice.login("alice", "alice-password-1")
        history = await alice.sync_all(conv)
        assert [m.content.text for m in history if m.content.text] == TEXTS
        assert await alice.download_file(file_id) == FILE
    finally:
        await running.stop()

    # ---- retention: old complete backups go, the newest and the others' stay --------
    old = ["dc1-20200101T000000Z", "dc1-20200102T000000Z"]
    for old_id in old:
        await copy_backup(env, bucket, prefix, backup_id, old_id)
    async with s3_client(env) as s3:
        # Not ours: another prefix, and a stray object under ours.
        await s3.put_object(Bucket=bucket, Key="elsewhere/dc1-20200101T000000Z/manifest.json",
                            Body=b"{}")
        await s3.put_object(Bucket=bucket, Key=f"{prefix}README", Body=b"hands off")
    rc, out, err = await tongxin("backup", "list", "--to", url, home=src.home)
    assert [r["id"] for r in json.loads(out)] == [*old, backup_id]
    rc, out, err = await tongxin("backup", "create", "--config", str(src_cfg), "--to", url,
                                 "--recipient", f"{key}.pub", "--keep-days", "30",
                                 "--keep-min", "2", home=src.home)
    assert rc == 0, err
    second = json.loads(out)
    assert sorted(second["pruned"]) == old, second["pruned"]
    rc, out, err = await tongxin("backup", "list", "--to", url, home=src.home)
    assert [r["id"] for r in json.loads(out)] == [backup_id, second["id"]]
    keys = await bucket_keys(env, bucket)
    assert not any(k.startswith(f"{prefix}{o}/") for o in old for k in keys)
    # The incomplete one is less than a day old: a backup that may still be running.
    assert f"{prefix}{cut_id}/01-database.tar.zst.sealed" in keys
    assert "elsewhere/dc1-20200101T000000Z/manifest.json" in keys and f"{prefix}README" in keys

    # A day later: the incomplete backup and a multipart upload a crash left go too;
    # the complete ones are within their 30 days.
    async with s3_client(env) as s3:
        mpu = await s3.create_multipart_upload(
            Bucket=bucket, Key=f"{prefix}dc1-20300102T000000Z/02-files.tar.zst.sealed")
    target = S3Target.open(url, None)
    try:
        removed = archive.prune(target, keep_days=30, keep_min=2, now=time.time() + 2 * 86400,
                                progress=lambda _m: None)
        assert archive.list_backups(target) == [backup_id, second["id"]]
    finally:
        target.close()
    assert sorted(removed) == [cut_id, "dc1-20300102T000000Z (unfinished upload of "
                                       "dc1-20300102T000000Z/02-files.tar.zst.sealed)"], removed
    keys = await bucket_keys(env, bucket)
    assert not any(k.startswith(f"{prefix}{cut_id}/") for k in keys)
    async with s3_client(env) as s3:
        uploads = (await s3.list_multipart_uploads(Bucket=bucket)).get("Uploads", [])
        assert mpu["UploadId"] not in [u.get("UploadId") for u in uploads]


async def test_s3_target_refusals(tmp_path: Path, s3_server: dict[str, str],
                                  backup_env: dict[str, str], new_bucket: Any) -> None:
    src = make_config(tmp_path / "src")
    src_cfg = write_config(src, tmp_path / "etc" / "tongxin.yml")
    key = tmp_path / "keys" / "backup"
    assert (await tongxin("backup", "keygen", "--out", str(key), home=src.home))[0] == 0
    missing = f"tx-none-{uuid.uuid4().hex[:12]}"
    rc, out, err = await tongxin("backup", "create", "--config", str(src_cfg), "--to",
                                 f"s3://{missing}/x", "--recipient", f"{key}.pub", home=src.home)
    assert rc == 1 and f"the backup target s3://{missing} at " in err and "not usable" in err
    doc = json.loads(next((src.home / "evidence").glob("backup-*.json")).read_text())
    assert doc["ok"] is False and doc["target"] == f"s3://{missing}/x"
    rc, out, err = await tongxin("backup", "list", "--to", "s3://Bad_Name/x", home=src.home)
    assert rc != 0 and "not an s3://bucket/prefix URL" in err
    # Wrong keys: the server's refusal is reported, not a traceback.
    bucket = await new_bucket("backup")
    rc, out, err = await tongxin("backup", "list", "--to", f"s3://{bucket}", home=src.home)
    assert rc == 0 and json.loads(out) == []
    os.environ["TONGXIN_BACKUP_S3_SECRET_KEY"] = "not-the-secret"
    try:
        rc, out, err = await tongxin("backup", "list", "--to", f"s3://{bucket}", home=src.home)
    finally:
        os.environ["TONGXIN_BACKUP_S3_SECRET_KEY"] = backup_env["TONGXIN_BACKUP_S3_SECRET_KEY"]
    assert rc != 0 and "not usable" in err and "Traceback" not in err, err


async def test_large_blob_goes_back_in_parts(tmp_path: Path, s3_server: dict[str, str],
                                             new_bucket: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob larger than one PUT of the restore (s3_blobs.SINGLE_PUT) is written back as
    a multipart upload, and reads back whole."""
    env = s3_server
    monkeypatch.setenv("TONGXIN_S3_ACCESS_KEY", env["TONGXIN_S3_ACCESS_KEY"])
    monkeypatch.setenv("TONGXIN_S3_SECRET_KEY", env["TONGXIN_S3_SECRET_KEY"])
    monkeypatch.setattr(s3_blobs, "SINGLE_PUT", 5 << 20)  # S3's smallest part
    bucket = await new_bucket("files")
    cfg = make_config(tmp_path / "n", files={"backend": "s3", "part_size": 5 << 20,
                                             "s3_endpoint": env["TONGXIN_S3_ENDPOINT"],
                                             "s3_bucket": bucket})
    big = os.urandom((5 << 20) * 2 + 4321)
    name = "blobs/ab/f_ab" + "0" * 30
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(big)
        tar.addfile(info, io.BytesIO(big))
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r|") as tar:
        assert await asyncio.to_thread(s3_blobs.restore_bucket, cfg, tar, lambda _m: None) == 1
    async with s3_client(env) as s3:
        head = await s3.head_object(Bucket=bucket, Key=name)
        assert head["ETag"].strip('"').endswith("-3")  # three parts
        res = await s3.get_object(Bucket=bucket, Key=name)
        assert await res["Body"].read() == big
    assert await asyncio.to_thread(s3_blobs.bucket_holds_files, cfg) == \
        f"s3 bucket {bucket} holds files (blobs/...)"

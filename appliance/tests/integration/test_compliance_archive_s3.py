"""The audit archive in object storage: segments and the signed manifest are
written to a real S3-compatible server (scripts/s3server.sh) through the files
BlobStore port, and ``tongxin audit verify`` reads them back from the bucket:
a record edited inside an archived segment is named, a deleted segment is
reported missing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
import zstandard
from aiobotocore.session import get_session
from conftest import make_config  # type: ignore[import-not-found, unused-ignore]
from s3server import s3_server_env

from tongxin.clock import now_ms
from tongxin.compliance import chain
from tongxin.compliance.archive import DAY_MS, MANIFEST
from tongxin.compliance.service import Compliance
from tongxin.config import Config, ConfigError
from tongxin.crypto import sm2_available

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available")]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    yield from s3_server_env()


def _client(env: dict[str, str]) -> Any:
    return get_session().create_client(
        "s3", endpoint_url=env["TONGXIN_S3_ENDPOINT"], region_name="us-east-1",
        aws_access_key_id=env["TONGXIN_S3_ACCESS_KEY"],
        aws_secret_access_key=env["TONGXIN_S3_SECRET_KEY"])


async def _keys(s3: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(o["Key"] for o in page.get("Contents", []) if "Key" in o)
    return sorted(keys)


@pytest.fixture
async def bucket(s3_server: dict[str, str]) -> AsyncIterator[str]:
    name = "tx-audit-" + uuid.uuid4().hex[:12]
    async with _client(s3_server) as s3:
        await s3.create_bucket(Bucket=name)
        yield name
        with contextlib.suppress(Exception):
            for key in await _keys(s3, name):
                await s3.delete_object(Bucket=name, Key=key)
            await s3.delete_bucket(Bucket=name)


def s3_config(home: Path, env: dict[str, str], bucket: str) -> Config:
    # The files stay local: the archive's backend is chosen on its own.
    cfg = make_config(home, compliance={
        "audit_archive_backend": "s3", "audit_archive_bucket": bucket}, files={
        "s3_endpoint": env["TONGXIN_S3_ENDPOINT"]})
    cfg.node_id = "n1"
    return cfg


async def tongxin_verify(cfg: Config, env: dict[str, str],
                         *args: str) -> tuple[int, dict[str, Any]]:
    """``tongxin audit verify --json`` as a subprocess, with the same configuration and
    the node's own audit key pinned."""
    path = cfg.home / "tongxin.yml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(cfg.home), "node_id": cfg.node_id,
        "compliance": {"audit_archive_backend": "s3",
                       "audit_archive_bucket": cfg.compliance.audit_archive_bucket,
                       "audit_trusted_keys": ",".join(
                           p.stem for p in (cfg.home / "audit-keys").glob("*.pem"))},
        "files": {"s3_endpoint": cfg.files.s3_endpoint}}), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", "audit", "verify", "--json", "--config", str(path), *args,
        env={**os.environ, "TONGXIN_S3_ACCESS_KEY": env["TONGXIN_S3_ACCESS_KEY"],
             "TONGXIN_S3_SECRET_KEY": env["TONGXIN_S3_SECRET_KEY"]},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode in (0, 1), err.decode()
    return int(proc.returncode or 0), json.loads(out)


def _rechain(cfg: Config, ts: int) -> None:
    """As if every record so far had been written at ts (rebuilds the hashes)."""
    conn = sqlite3.connect(cfg.home / "compliance.db", isolation_level=None)
    prev = chain.GENESIS
    for seq, body in conn.execute("SELECT seq, body FROM audit ORDER BY seq").fetchall():
        rec = json.loads(body)
        rec["ts"], rec["prev"] = ts + seq, prev
        new = chain.canonical(rec)
        prev = chain.digest(new)
        conn.execute("UPDATE audit SET body=?, hash=?, ts=? WHERE seq=?", (new, prev, ts + seq, seq))
    conn.execute("UPDATE audit_state SET last_hash=?", (prev,))
    conn.close()


def test_s3_archive_needs_an_endpoint(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, compliance={"audit_archive_backend": "s3"})
    with pytest.raises(ConfigError, match="audit_archive_backend"):
        Compliance(cfg)


# The first run on a machine builds the S3 server (minutes): allow for it.
@pytest.mark.timeout(1500)
async def test_archive_in_the_bucket_tamper_and_missing_segment(
        s3_server: dict[str, str], bucket: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = s3_server
    monkeypatch.setenv("TONGXIN_S3_ACCESS_KEY", env["TONGXIN_S3_ACCESS_KEY"])
    monkeypatch.setenv("TONGXIN_S3_SECRET_KEY", env["TONGXIN_S3_SECRET_KEY"])
    cfg = s3_config(tmp_path / "home", env, bucket)
    comp = Compliance(cfg, "n1")
    await comp.open()
    try:
        for i in range(6):
            await comp.audit("auth.login", actor=f"u_{i}", target=f"user{i}", n=i)
        _rechain(cfg, now_ms() - 60 * DAY_MS)  # records 1..6, past the hot period
        res = await comp.run_archive(now=now_ms())
        assert (res.archived, res.segments) == (6, 1)
        await comp.audit("auth.login", actor="u_hot", target="hot")  # stays in the database
        assert await comp.sign_head(force=True) is not None  # and anchored in the bucket
    finally:
        await comp.close()

    async with _client(env) as s3:
        keys = await _keys(s3, bucket)
        prefix = "audit-archive/n1/"
        seg_keys = [k for k in keys if k.endswith(".jsonl.zst")]
        assert keys == sorted([prefix + "manifest.json", prefix + "manifest.sig",
                               prefix + "anchor.json", *seg_keys]), keys
        assert len(seg_keys) == 1 and seg_keys[0].startswith(prefix + "audit-")
        assert not (cfg.home / "audit-archive" / MANIFEST).exists()  # nothing written locally

        rc, report = await tongxin_verify(cfg, env)
        assert rc == 0, report["problems"]
        assert report["archived_records"] == 6 and report["manifest_signed"] is True
        assert report["anchors_verified"] == 1
        assert report["latest_anchored_seq"] == report["last_seq"]
        # An auditor may name the anchor object itself.
        rc, report = await tongxin_verify(cfg, env, "--anchor", f"s3://{bucket}/{prefix}anchor.json")
        assert rc == 0 and report["anchors_verified"] == 2, report["problems"]

        # Edit record 3 inside the archived segment (recompressed: it still reads).
        obj = await s3.get_object(Bucket=bucket, Key=seg_keys[0])
        data = await obj["Body"].read()
        lines = zstandard.ZstdDecompressor().stream_reader(data).read().decode()
        edited = lines.replace('"target":"user2"', '"target":"nobody"')
        assert edited != lines
        await s3.put_object(Bucket=bucket, Key=seg_keys[0],
                            Body=zstandard.ZstdCompressor().compress(edited.encode()))
        rc, report = await tongxin_verify(cfg, env)
        assert rc == 1
        seg = seg_keys[0].removeprefix(prefix)
        named = {(p["where"], p["seq"], p["kind"]) for p in report["problems"]}
        assert (f"archive:{seg}", 3, "edited") in named, named
        assert (f"archive:{seg}", 1, "segment-altered") in named, named

        # Delete the segment object: verify reports it missing, and the walk goes on.
        await s3.delete_object(Bucket=bucket, Key=seg_keys[0])
        rc, report = await tongxin_verify(cfg, env)
        assert rc == 1
        named = {(p["where"], p["seq"], p["kind"]) for p in report["problems"]}
        assert (f"archive:{seg}", 1, "missing") in named, named
        assert "1..6" in report["problems"][0]["message"]
        assert all(p["where"] != "database" for p in report["problems"]), report["problems"]

"""File blobs kept in S3-compatible object storage: into a backup's tar, and back.

Only finished files (``blobs/``) are copied, as for the local store; objects go
through a spool file one at a time, so memory stays flat whatever their size.
"""

from __future__ import annotations

import asyncio
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from tongxin.config import Config
from tongxin.files.s3 import S3BlobStore

_PREFIX = "blobs/"


def _store(cfg: Config, spool: Path) -> S3BlobStore:
    return S3BlobStore.from_config(cfg.files, cfg.files.s3_bucket, spool)


def add_bucket(cfg: Config, tar: tarfile.TarFile, progress: Callable[[str], None]) -> int:
    async def run() -> int:
        count = 0
        with tempfile.TemporaryDirectory(prefix="tongxin-backup-s3-") as tmp:
            store = _store(cfg, Path(tmp))
            await store.open()
            try:
                paginator = store.s3.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=store.bucket, Prefix=_PREFIX):
                    for obj in page.get("Contents", []):
                        key = obj["Key"]
                        spool = Path(tmp) / "object"
                        with spool.open("wb") as fh:
                            async for piece in store.read(key):
                                fh.write(piece)
                        tar.add(spool, arcname=key, recursive=False)
                        count += 1
                        if count % 100 == 0:
                            progress(f"files: {count} objects")
            finally:
                await store.close()
        return count

    return asyncio.run(run())


def restore_bucket(cfg: Config, tar: tarfile.TarFile, progress: Callable[[str], None]) -> int:
    async def run() -> int:
        count = 0
        with tempfile.TemporaryDirectory(prefix="tongxin-restore-s3-") as tmp:
            store = _store(cfg, Path(tmp))
            await store.open()
            try:
                for member in tar:
                    if not member.isfile() or not member.name.startswith(_PREFIX):
                        continue
                    src = tar.extractfile(member)
                    assert src is not None
                    await store.put_object(member.name, src.read())
                    count += 1
                    if count % 100 == 0:
                        progress(f"files: {count} objects")
            finally:
                await store.close()
        return count

    return asyncio.run(run())

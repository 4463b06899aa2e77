"""File blobs kept in S3-compatible object storage: into a backup's tar, and back.

Only finished files (``blobs/``) are copied, as for the local store; objects go
through a spool file one at a time, so memory stays flat whatever their size.
"""

from __future__ import annotations

import asyncio
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from tongxin.config import Config
from tongxin.files.s3 import S3BlobStore

_PREFIX = "blobs/"
Progress = Callable[[str], None]


@asynccontextmanager
async def _opened(cfg: Config) -> AsyncIterator[tuple[S3BlobStore, Path]]:
    """The node's bucket (files.s3_*), open, with a spool directory removed after."""
    with tempfile.TemporaryDirectory(prefix="tongxin-backup-s3-") as tmp:
        store = S3BlobStore.from_config(cfg.files, cfg.files.s3_bucket, Path(tmp))
        await store.open()
        try:
            yield store, Path(tmp)
        finally:
            await store.close()


def _counted(count: int, progress: Progress) -> int:
    if count % 100 == 0:
        progress(f"files: {count} objects")
    return count


def add_bucket(cfg: Config, tar: tarfile.TarFile, progress: Progress) -> int:
    async def run() -> int:
        count = 0
        async with _opened(cfg) as (store, tmp):
            paginator = store.s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=store.bucket, Prefix=_PREFIX):
                for obj in page.get("Contents", []):
                    spool = tmp / "object"
                    with spool.open("wb") as fh:
                        async for piece in store.read(obj["Key"]):
                            fh.write(piece)
                    tar.add(spool, arcname=obj["Key"], recursive=False)
                    count = _counted(count + 1, progress)
        return count

    return asyncio.run(run())


def restore_bucket(cfg: Config, tar: tarfile.TarFile, progress: Progress) -> int:
    async def run() -> int:
        count = 0
        async with _opened(cfg) as (store, _tmp):
            for member in tar:
                if not member.isfile() or not member.name.startswith(_PREFIX):
                    continue
                src = tar.extractfile(member)
                assert src is not None
                await store.put_object(member.name, src.read())
                count = _counted(count + 1, progress)
        return count

    return asyncio.run(run())

"""File blobs kept in S3-compatible object storage: into a backup's tar, and back.

Only finished files (``blobs/``) are copied, as for the local store; objects go
through a spool file one at a time, both ways, so memory stays flat whatever
their size (a file larger than :data:`SINGLE_PUT` goes back as a multipart
upload: one PUT takes at most 5 GiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tongxin.backup.target import BackupError
from tongxin.config import Config
from tongxin.files.keys import FILE_KEY_RE
from tongxin.files.ports import BlobError
from tongxin.files.s3 import S3BlobStore

_PREFIX = "blobs/"
SINGLE_PUT = 64 << 20  # larger files go back in parts of this size
Progress = Callable[[str], None]


@asynccontextmanager
async def _opened(cfg: Config) -> AsyncIterator[tuple[S3BlobStore, Path]]:
    """The node's bucket (files.s3_*), open, with a spool directory removed after."""
    with tempfile.TemporaryDirectory(prefix="tongxin-backup-s3-") as tmp:
        store = S3BlobStore.from_config(cfg.files, cfg.files.s3_bucket, Path(tmp))
        try:
            await store.open()
        except BlobError as exc:
            raise BackupError(f"files.backend s3: {exc}") from None
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


async def _put_file(store: S3BlobStore, key: str, path: Path, size: int) -> None:
    s3, bucket = store.s3, store.bucket
    if size <= SINGLE_PUT:
        with path.open("rb") as fh:
            await s3.put_object(Bucket=bucket, Key=key, Body=fh, ContentLength=size)
        return
    upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
    parts: list[dict[str, Any]] = []
    try:
        with path.open("rb") as fh:
            while block := fh.read(SINGLE_PUT):
                res = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                           PartNumber=len(parts) + 1, Body=block,
                                           ContentLength=len(block))
                parts.append({"PartNumber": len(parts) + 1, "ETag": res["ETag"]})
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": parts})  # type: ignore[typeddict-item]
    except BaseException:
        with contextlib.suppress(ClientError, BotoCoreError):
            await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def restore_bucket(cfg: Config, tar: tarfile.TarFile, progress: Progress) -> int:
    async def run() -> int:
        count = 0
        async with _opened(cfg) as (store, tmp):
            spool = tmp / "object"
            for member in tar:
                if not member.isfile() or not member.name.startswith(_PREFIX):
                    continue
                if not FILE_KEY_RE.match(member.name):
                    raise BackupError(f"the backup holds a blob that is not a file's: "
                                      f"{member.name!r}")
                src = tar.extractfile(member)
                assert src is not None
                with spool.open("wb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
                try:
                    await _put_file(store, member.name, spool, member.size)
                except (ClientError, BotoCoreError) as exc:
                    raise BackupError(f"writing {member.name} into s3 bucket {store.bucket}: "
                                      f"{exc}") from exc
                count = _counted(count + 1, progress)
        return count

    return asyncio.run(run())


def bucket_holds_files(cfg: Config) -> str | None:
    """Why the node's bucket is not empty (it holds finished files), or None."""
    async def run() -> str | None:
        async with _opened(cfg) as (store, _tmp):
            res = await store.s3.list_objects_v2(Bucket=store.bucket, Prefix=_PREFIX, MaxKeys=1)
            if res.get("Contents"):
                return f"s3 bucket {store.bucket} holds files ({_PREFIX}...)"
        return None

    return asyncio.run(run())

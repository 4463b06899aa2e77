"""Blob store on S3-compatible object storage (aiobotocore).

Each received part is its own object (``parts/<upload_id>/<n>.<r>``); on
completion the parts are composed into ``blobs/<xx>/<file_id>`` with a
multipart upload whose parts are server-side copies (UploadPartCopy), so the
file's bytes do not pass through the node a second time. Why not send each
part straight into one S3 multipart upload: S3 cannot read back the parts of
an unfinished multipart upload, so the node could neither finish the
whole-file checksum of parts that arrived out of order nor refuse a bad file
before it became an object. Composing has two costs: parts must be at least
5 MiB (S3's minimum for all but the last; config enforces it) and storage
holds parts and file together until the parts are deleted.

A part is spooled to a local temporary file while it arrives (memory stays
bounded by the chunk size), then sent with its length known.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from tongxin.files.keys import file_key, new_part_key, parts_prefix, valid_key
from tongxin.files.ports import BlobError, BlobNotFound
from tongxin.s3client import MISSING, create_client, error_code

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

    from tongxin.config import FilesConfig

READ_CHUNK = 256 * 1024
COPY_PARALLEL = 4


def _check(key: str) -> str:
    if not valid_key(key):
        raise BlobError(f"not a blob key: {key!r}")
    return key


class S3BlobStore:
    @classmethod
    def from_config(cls, f: FilesConfig, bucket: str, spool_dir: Path) -> S3BlobStore:
        """A store on ``bucket`` with the files.s3_* endpoint and credentials (the keys
        from $TONGXIN_S3_ACCESS_KEY / $TONGXIN_S3_SECRET_KEY when the config leaves them out)."""
        return cls(f.s3_endpoint, bucket, f.s3_region,
                   f.s3_access_key or os.environ.get("TONGXIN_S3_ACCESS_KEY", ""),
                   f.s3_secret_key or os.environ.get("TONGXIN_S3_SECRET_KEY", ""),
                   spool_dir=spool_dir)

    def __init__(self, endpoint: str, bucket: str, region: str, access_key: str, secret_key: str,
                 spool_dir: Path) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self.spool_dir = spool_dir
        self._stack = contextlib.AsyncExitStack()
        self._s3: S3Client | None = None

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            raise BlobError("S3 blob store is not open")
        return self._s3

    async def open(self) -> None:
        await asyncio.to_thread(self.spool_dir.mkdir, parents=True, exist_ok=True)
        client = create_client(self.endpoint, self.region, self._access_key, self._secret_key,
                               max_attempts=4, read_timeout=60, max_pool_connections=32)
        self._s3 = await self._stack.enter_async_context(client)
        try:
            await self.s3.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            await self.close()
            raise BlobError(f"S3 bucket {self.bucket!r} at {self.endpoint} is not usable: {exc}") from exc

    async def close(self) -> None:
        self._s3 = None
        await self._stack.aclose()

    async def put_part(self, upload_id: str, n: int, chunks: AsyncIterator[bytes]) -> str:
        key = new_part_key(upload_id, n)
        spool = self.spool_dir / secrets.token_hex(16)
        f = await asyncio.to_thread(open, spool, "w+b")
        try:
            size = 0
            async for chunk in chunks:
                await asyncio.to_thread(f.write, chunk)
                size += len(chunk)
            await asyncio.to_thread(f.flush)
            f.seek(0)
            try:
                await self.s3.put_object(Bucket=self.bucket, Key=key, Body=f, ContentLength=size)
            except (ClientError, BotoCoreError) as exc:
                raise BlobError(f"storing part {n}: {exc}") from exc
        finally:
            f.close()
            with contextlib.suppress(OSError):
                os.unlink(spool)
        return key

    async def list_parts(self, upload_id: str) -> list[str]:
        prefix = parts_prefix(upload_id)
        keys: list[str] = []
        try:
            paginator = self.s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []) if "Key" in o)
        except (ClientError, BotoCoreError) as exc:
            raise BlobError(f"listing parts: {exc}") from exc
        return sorted(k for k in keys if valid_key(k))

    async def assemble(self, part_keys: Sequence[str], file_id: str) -> str:
        key = file_key(file_id)
        for k in part_keys:
            _check(k)
        try:
            if not part_keys:
                await self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"")
            elif len(part_keys) == 1:
                await self.s3.copy_object(Bucket=self.bucket, Key=key,
                                          CopySource={"Bucket": self.bucket, "Key": part_keys[0]})
            else:
                await self._compose(part_keys, key)
        except ClientError as exc:
            if error_code(exc) in MISSING:
                raise BlobNotFound(f"a part of {file_id} is missing") from exc
            raise BlobError(f"assembling {file_id}: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobError(f"assembling {file_id}: {exc}") from exc
        return key

    async def _compose(self, part_keys: Sequence[str], key: str) -> None:
        mpu = await self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = mpu["UploadId"]
        gate = asyncio.Semaphore(COPY_PARALLEL)

        async def copy(number: int, source: str) -> dict[str, Any]:
            async with gate:
                res = await self.s3.upload_part_copy(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": source})
            return {"PartNumber": number, "ETag": res["CopyPartResult"].get("ETag", "")}

        try:
            parts = await asyncio.gather(*(copy(i, k) for i, k in enumerate(part_keys, 1)))
            await self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts})  # type: ignore[typeddict-item]
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):
                await self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                     UploadId=upload_id)
            raise

    async def read(self, key: str, start: int = 0, stop: int | None = None) -> AsyncGenerator[bytes]:
        _check(key)
        if stop is not None and stop <= start:
            return
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or stop is not None:
            args["Range"] = f"bytes={start}-{'' if stop is None else stop - 1}"
        try:
            res = await self.s3.get_object(**args)
        except ClientError as exc:
            if error_code(exc) in MISSING:
                raise BlobNotFound(key) from exc
            raise BlobError(f"reading {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobError(f"reading {key}: {exc}") from exc
        body = res["Body"]
        try:
            async for chunk in body.iter_chunks(READ_CHUNK):
                yield chunk
        finally:
            body.close()

    async def put_object(self, key: str, data: bytes) -> None:
        _check(key)
        try:
            await self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentLength=len(data))
        except (ClientError, BotoCoreError) as exc:
            raise BlobError(f"storing {key}: {exc}") from exc

    async def delete(self, keys: Sequence[str]) -> None:
        checked = [_check(k) for k in keys]
        for i in range(0, len(checked), 1000):
            batch = checked[i:i + 1000]
            try:
                await self.s3.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in batch], "Quiet": True})
            except (ClientError, BotoCoreError) as exc:
                raise BlobError(f"deleting {len(batch)} objects: {exc}") from exc

"""Backups kept in S3-compatible object storage: ``--to s3://bucket/prefix``.

The layout is the directory's (target.py), one object per file under
``<prefix><id>/``. A sealed part is streamed into a multipart upload as it is
made (no local copy: the backup host needs no scratch space the size of the
backup); the checksum files follow, and the manifest object comes last: a
backup without ``manifest.json`` is incomplete, is not listed and is not
restored, and retention removes it (and multipart uploads a crash left
unfinished) a day later. Reading goes by ranged GETs of :data:`RANGE` bytes,
each pinned to the object's ETag, so a slow restore holds no connection open
and an object replaced while it is read is noticed.

The client is aiobotocore's, made by tongxin/s3client.py as for the files
backend, run on an event loop of its own in a helper thread so that the
synchronous tar, zstd and sealing pipeline can write into it and read from it.

Where the endpoint and credentials come from (:meth:`S3Settings.of`):
``$TONGXIN_BACKUP_S3_ENDPOINT`` with ``$TONGXIN_BACKUP_S3_ACCESS_KEY``,
``$TONGXIN_BACKUP_S3_SECRET_KEY`` and ``$TONGXIN_BACKUP_S3_REGION`` (another
object store than the files'); without it the node's own settings
(files.s3_endpoint, files.s3_region, files.s3_access_key or
$TONGXIN_S3_ACCESS_KEY, ...), the backup keys still taken from
$TONGXIN_BACKUP_S3_* when set (a backup user of the same store). Never from the
command line. An endpoint whose certificate a private CA issued: that CA's file
in $AWS_CA_BUNDLE (botocore's; role backup's backup_s3_ca_file sets it).

Object lock (:class:`ObjectLock`, ``--lock-days``/``--lock-mode`` or
$TONGXIN_BACKUP_S3_LOCK_DAYS/_MODE): every object of a backup is written with
ObjectLockMode and ObjectLockRetainUntilDate (the backup's start plus the days;
a multipart upload takes them on CreateMultipartUpload), in a bucket created
with Object Lock, which is checked before anything is written. Such a bucket
is versioned: a DELETE without a version only hides an object behind a delete
marker, so retention there deletes versions (all of a backup's, the manifest's
first) and only of backups whose lock has ended; a backup still locked is kept
(:class:`StillLocked`), and an object store that refuses the deletion all the
same (its clock, GOVERNANCE, ...) counts as locked too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from tongxin.backup.target import (
    MANIFEST,
    STALE_SECONDS,
    BackupError,
    PartFile,
    Reader,
    StillLocked,
    Target,
    Writer,
)
from tongxin.s3client import MISSING, create_client, error_code

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

    from tongxin.config import Config

T = TypeVar("T")
PART = 16 << 20  # multipart part size; grows by PART every 1000 parts (S3 allows 10,000)
MAX_PARTS = 10000
RANGE = 8 << 20  # bytes per ranged GET
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TAKEN_RE = re.compile(r"(\d{8}T\d{6}Z)$")
DAY = 86400.0  # seconds in a day of lock
LOCK_MODES = ("compliance", "governance")
# What object stores answer a deletion that a lock forbids: AWS AccessDenied (or
# ObjectLocked), MinIO InvalidRequest ("Object is WORM protected").
_LOCKED = frozenset({"AccessDenied", "ObjectLocked", "InvalidRequest", "403"})


@dataclass(frozen=True)
class ObjectLock:
    """Every object of a backup locked for ``days`` from the backup's start."""

    mode: str  # COMPLIANCE or GOVERNANCE
    days: int

    @classmethod
    def of(cls, days: int | str | None, mode: str | None,
           env: Mapping[str, str] = os.environ) -> ObjectLock | None:
        """From ``--lock-days``/``--lock-mode``, else $TONGXIN_BACKUP_S3_LOCK_DAYS/_MODE;
        None without days. Days under 1 and unknown modes are refused."""
        raw_days = days if days is not None else env.get("TONGXIN_BACKUP_S3_LOCK_DAYS", "").strip()
        raw_mode = (mode if mode is not None
                    else env.get("TONGXIN_BACKUP_S3_LOCK_MODE", "").strip()) or "compliance"
        if raw_days in ("", None):
            return None
        try:
            n = int(raw_days)
        except ValueError:
            raise BackupError(f"the object lock's days must be a whole number, not "
                              f"{raw_days!r}") from None
        if n < 1:
            raise BackupError(f"an object lock of {n} days: the lock is at least 1 day (leave "
                              "--lock-days and $TONGXIN_BACKUP_S3_LOCK_DAYS unset for none)")
        if raw_mode.lower() not in LOCK_MODES:
            raise BackupError(f"object lock mode {raw_mode!r}: compliance or governance")
        return cls(raw_mode.upper(), n)

    def until(self, start: float) -> datetime:
        return datetime.fromtimestamp(start, UTC) + timedelta(seconds=self.days * DAY)

    def args(self, start: float) -> dict[str, Any]:
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": self.until(start)}


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    region: str
    access_key: str
    secret_key: str

    @classmethod
    def of(cls, cfg: Config | None, env: Mapping[str, str] = os.environ) -> S3Settings:
        """The backup target's endpoint and credentials: $TONGXIN_BACKUP_S3_* first, then
        the node's files.s3_* (and $TONGXIN_S3_ACCESS_KEY/SECRET_KEY, as the node)."""
        def var(name: str) -> str:
            return env.get(f"TONGXIN_BACKUP_S3_{name}", "").strip()

        if var("ENDPOINT"):
            # Another store than the node's: the node's keys are never sent there.
            return cls(var("ENDPOINT"), var("REGION") or "us-east-1", var("ACCESS_KEY"),
                       var("SECRET_KEY"))
        f = cfg.files if cfg is not None else None
        if f is None or not f.s3_endpoint:
            raise BackupError("an s3:// backup target needs an endpoint: files.s3_endpoint in "
                              "the configuration (--config), or $TONGXIN_BACKUP_S3_ENDPOINT")
        access = var("ACCESS_KEY") or f.s3_access_key or env.get("TONGXIN_S3_ACCESS_KEY", "")
        secret = var("SECRET_KEY") or f.s3_secret_key or env.get("TONGXIN_S3_SECRET_KEY", "")
        return cls(f.s3_endpoint, var("REGION") or f.s3_region, access, secret)


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, ``some/prefix/``); the prefix may be empty."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise BackupError(f"{url}: not an s3://bucket/prefix URL (bucket names are 3-63 of "
                          "a-z, 0-9, '.', '-')")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BackupError(f"{url}: '.' and '..' have no place in an object prefix")
    return bucket, "".join(f"{p}/" for p in parts)


class _Connection:
    """An aiobotocore S3 client on an event loop of its own, for synchronous callers."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="tongxin-backup-s3")
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        client = create_client(settings.endpoint, settings.region, settings.access_key,
                               settings.secret_key, max_attempts=5, read_timeout=120,
                               max_pool_connections=8)
        try:
            self.s3: S3Client = self.run(self._stack.enter_async_context(client))
        except BaseException:
            self._stop()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def close(self) -> None:
        try:
            self.run(self._stack.aclose())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _failed(what: str, exc: Exception) -> BackupError:
    return BackupError(f"{what}: {exc}")


class _Upload(PartFile):
    """One object written as it is made: a multipart upload, or one PUT if small.

    One part is in flight while the next fills, so sealing and sending overlap;
    memory holds two parts at most."""

    def __init__(self, conn: _Connection, bucket: str, key: str,
                 lock: Mapping[str, Any] | None = None) -> None:
        self._conn, self._bucket, self._key = conn, bucket, key
        self._lock = dict(lock or {})  # ObjectLockMode, ObjectLockRetainUntilDate
        self._buf = bytearray()
        self._upload_id = ""
        self._parts: list[dict[str, Any]] = []
        self._pending: concurrent.futures.Future[dict[str, Any]] | None = None
        self._number = 0

    def _part_size(self) -> int:
        return PART * (1 + self._number // 1000)

    def write(self, data: bytes) -> int:
        self._buf += data
        if len(self._buf) >= self._part_size():
            self._send(bytes(self._buf))
            self._buf.clear()
        return len(data)

    def _send(self, block: bytes) -> None:
        if not self._upload_id:
            try:
                res = self._conn.run(self._conn.s3.create_multipart_upload(
                    Bucket=self._bucket, Key=self._key, **self._lock))
            except (ClientError, BotoCoreError) as exc:
                raise _failed(f"starting the upload of s3://{self._bucket}/{self._key}",
                              exc) from exc
            self._upload_id = res["UploadId"]
        self._wait()
        if self._number >= MAX_PARTS:
            raise BackupError(f"s3://{self._bucket}/{self._key} would need more than "
                              f"{MAX_PARTS} parts: too large for one S3 object")
        self._number += 1
        self._pending = self._conn.submit(self._upload_part(self._number, block))

    async def _upload_part(self, number: int, block: bytes) -> dict[str, Any]:
        res = await self._conn.s3.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number,
            Body=block, ContentLength=len(block))
        return {"PartNumber": number, "ETag": res["ETag"]}

    def _wait(self) -> None:
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        try:
            self._parts.append(pending.result())
        except (ClientError, BotoCoreError) as exc:
            raise _failed(f"uploading a part of s3://{self._bucket}/{self._key}", exc) from exc

    def commit(self) -> None:
        s3 = self._conn.s3
        try:
            if not self._upload_id:
                data = bytes(self._buf)
                self._conn.run(s3.put_object(Bucket=self._bucket, Key=self._key, Body=data,
                                             ContentLength=len(data), **self._lock))
            else:
                if self._buf:
                    self._send(bytes(self._buf))
                self._wait()
                self._conn.run(s3.complete_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts}))  # type: ignore[typeddict-item]
        except (ClientError, BotoCoreError) as exc:
            raise _failed(f"writing s3://{self._bucket}/{self._key}", exc) from exc
        self._buf.clear()

    def abort(self) -> None:
        if self._pending is not None:
            with contextlib.suppress(Exception):
                self._pending.result()
        if self._upload_id:
            with contextlib.suppress(ClientError, BotoCoreError):
                self._conn.run(self._conn.s3.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id))


class _ObjectRaw(io.RawIOBase):
    """An object read by ranged GETs, each pinned to the ETag seen first."""

    def __init__(self, conn: _Connection, bucket: str, key: str, size: int, etag: str) -> None:
        super().__init__()
        self._conn, self._bucket, self._key = conn, bucket, key
        self._size, self._etag = size, etag
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = min(len(b), RANGE, self._size - self._pos)
        if want <= 0:
            return 0
        data = self._conn.run(self._get(self._pos, self._pos + want - 1))
        if not data:
            raise BackupError(f"s3://{self._bucket}/{self._key} ended at byte {self._pos}, "
                              f"before its {self._size} bytes")
        n = len(data)
        b[:n] = data
        self._pos += n
        return n

    async def _get(self, first: int, last: int) -> bytes:
        try:
            res = await self._conn.s3.get_object(Bucket=self._bucket, Key=self._key,
                                                 Range=f"bytes={first}-{last}", IfMatch=self._etag)
            async with res["Body"] as body:
                return await body.read()
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412"):
                raise BackupError(f"s3://{self._bucket}/{self._key} was replaced while it was "
                                  "read") from exc
            raise _failed(f"reading s3://{self._bucket}/{self._key}", exc) from exc
        except BotoCoreError as exc:
            raise _failed(f"reading s3://{self._bucket}/{self._key}", exc) from exc


class S3Reader(Reader):
    def __init__(self, conn: _Connection, bucket: str, prefix: str) -> None:
        self._conn, self._bucket, self._prefix = conn, bucket, prefix
        self.where = f"s3://{bucket}/{prefix}".rstrip("/")

    def locate(self, name: str) -> str:
        return f"s3://{self._bucket}/{self._prefix}{name}"

    def _head(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._conn.run(self._conn.s3.head_object(
                Bucket=self._bucket, Key=self._prefix + name)))
        except ClientError as exc:
            if error_code(exc) in MISSING:
                return None
            raise _failed(f"looking up {self.locate(name)}", exc) from exc
        except BotoCoreError as exc:
            raise _failed(f"looking up {self.locate(name)}", exc) from exc

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as fh:
            return fh.read()

    def exists(self, name: str) -> bool:
        return self._head(name) is not None

    def open(self, name: str) -> BinaryIO:
        head = self._head(name)
        if head is None:
            raise BackupError(f"{self.locate(name)}: no such object"
                              + (" (not a complete backup: its upload did not finish, or the "
                                 "backup was removed)" if name == MANIFEST else ""))
        raw = _ObjectRaw(self._conn, self._bucket, self._prefix + name,
                         int(head["ContentLength"]), str(head["ETag"]))
        return io.BufferedReader(raw, buffer_size=RANGE)


class _S3Writer(Writer):
    def __init__(self, target: S3Target, backup_id: str) -> None:
        self._t = target
        self._prefix = f"{target.prefix}{backup_id}/"
        self.where = target.location(backup_id)
        if target.keys(self._prefix):
            raise BackupError(f"{self.where} holds objects already (two backups in one second?)")
        self._written: list[str] = []
        # The lock runs from the backup's start (the time in its id), the same for all
        # its objects.
        self._lock = target.lock.args(_taken(backup_id)) if target.lock is not None else None

    def open_part(self, name: str) -> PartFile:
        self._written.append(self._prefix + name)
        return _Upload(self._t.conn, self._t.bucket, self._prefix + name, self._lock)

    def put(self, name: str, data: bytes) -> None:
        self._written.append(self._prefix + name)
        up = _Upload(self._t.conn, self._t.bucket, self._prefix + name, self._lock)
        up.write(data)
        up.commit()

    def commit(self, manifest: bytes) -> None:
        # Last: until this object exists the backup is incomplete.
        self.put(MANIFEST, manifest)

    def abort(self) -> None:
        if self._lock is not None:
            # Locked objects stay until their lock ends (a DELETE would only hide them
            # behind delete markers): an incomplete backup, which retention removes then.
            return
        with contextlib.suppress(BackupError):
            self._t.delete(self._t.keys(self._prefix))


class S3Target(Target):
    def __init__(self, conn: _Connection, bucket: str, prefix: str) -> None:
        self.conn, self.bucket, self.prefix = conn, bucket, prefix
        self.where = f"s3://{bucket}/{prefix}".rstrip("/")
        self.lock: ObjectLock | None = None
        self._lock_enabled: bool | None = None

    def lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock (GetObjectLockConfiguration; cached)."""
        if self._lock_enabled is None:
            try:
                res = self.conn.run(self.conn.s3.get_object_lock_configuration(
                    Bucket=self.bucket))
            except ClientError as exc:
                if error_code(exc) != "ObjectLockConfigurationNotFoundError":
                    raise _failed(f"reading the object lock configuration of "
                                  f"s3://{self.bucket}", exc) from exc
                self._lock_enabled = False
            except BotoCoreError as exc:
                raise _failed(f"reading the object lock configuration of s3://{self.bucket}",
                              exc) from exc
            else:
                conf = res.get("ObjectLockConfiguration", {})
                self._lock_enabled = conf.get("ObjectLockEnabled") == "Enabled"
        return self._lock_enabled

    def require_lock(self, lock: ObjectLock) -> None:
        """Write every object of the next backups with ``lock``; refused (before anything
        is written) if the bucket has no Object Lock."""
        if not self.lock_enabled():
            raise BackupError(f"an object lock was asked for ({lock.mode} {lock.days} days) "
                              f"but the bucket s3://{self.bucket} has no Object Lock; it can "
                              "only be enabled when a bucket is created (S3 "
                              "ObjectLockEnabledForBucket, `mc mb --with-lock`): create a new "
                              "bucket with it, or leave the lock out. Nothing was written")
        self.lock = lock

    def lock_of(self, backup_id: str) -> dict[str, str] | None:
        """The manifest object's lock: {"mode", "until"}, or None."""
        if not self._lock_state():
            return None
        head = S3Reader(self.conn, self.bucket, f"{self.prefix}{backup_id}/")._head(MANIFEST)
        if not head or not head.get("ObjectLockMode"):
            return None
        until = head.get("ObjectLockRetainUntilDate")
        return {"mode": str(head["ObjectLockMode"]),
                "until": until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if isinstance(until, datetime) else str(until)}

    def _lock_state(self) -> bool:
        """lock_enabled(), counting a store that will not say (no permission) as no lock."""
        try:
            return self.lock_enabled()
        except BackupError:
            self._lock_enabled = False
            return False

    def _versions(self, prefix: str) -> list[dict[str, Any]]:
        """Every version and delete marker under ``prefix`` (a versioned bucket's)."""
        async def run() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            paginator = self.conn.s3.get_paginator("list_object_versions")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                found.extend(dict(v) for v in page.get("Versions", []))
                found.extend(dict(m, marker=True) for m in page.get("DeleteMarkers", []))
            return found

        try:
            return self.conn.run(run())
        except (ClientError, BotoCoreError) as exc:
            raise _failed(f"listing the versions in s3://{self.bucket}/{prefix}", exc) from exc

    def _locked_until(self, key: str, version: str) -> datetime | None:
        try:
            head = self.conn.run(self.conn.s3.head_object(Bucket=self.bucket, Key=key,
                                                          VersionId=version))
        except ClientError as exc:
            if error_code(exc) in MISSING or error_code(exc) == "405":
                return None
            raise _failed(f"looking up s3://{self.bucket}/{key}", exc) from exc
        except BotoCoreError as exc:
            raise _failed(f"looking up s3://{self.bucket}/{key}", exc) from exc
        until = head.get("ObjectLockRetainUntilDate")
        return until if head.get("ObjectLockMode") and isinstance(until, datetime) else None

    def purge(self, prefix: str, now: float, what: str) -> None:
        """Delete every version under ``prefix`` (the manifest's first) if no lock holds any
        at ``now``; :class:`StillLocked` otherwise, or if the store refuses."""
        versions = self._versions(prefix)
        latest: datetime | None = None
        for v in versions:
            if v.get("marker"):
                continue
            until = self._locked_until(str(v["Key"]), str(v["VersionId"]))
            if until is not None and until.timestamp() > now and (latest is None
                                                                  or until > latest):
                latest = until
        if latest is not None:
            raise StillLocked(f"{what} is locked until "
                              f"{latest.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}")
        versions.sort(key=lambda v: not str(v["Key"]).endswith("/" + MANIFEST))
        for i in range(0, len(versions), 1000):
            batch = versions[i:i + 1000]
            try:
                res = self.conn.run(self.conn.s3.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": str(v["Key"]), "VersionId": str(v["VersionId"])}
                                for v in batch], "Quiet": True}))
            except ClientError as exc:
                if error_code(exc) in _LOCKED:
                    raise StillLocked(f"{what}: the object store refuses its deletion "
                                      f"(locked: {exc})") from exc
                raise _failed(f"deleting {len(batch)} versions from s3://{self.bucket}",
                              exc) from exc
            except BotoCoreError as exc:
                raise _failed(f"deleting {len(batch)} versions from s3://{self.bucket}",
                              exc) from exc
            if res.get("Errors"):
                first = res["Errors"][0]
                msg = (f"s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} "
                       f"{first.get('Message')}")
                if first.get("Code") in _LOCKED:
                    raise StillLocked(f"{what}: the object store refuses its deletion "
                                      f"(locked: {msg})")
                raise BackupError(f"deleting {msg}")

    @classmethod
    def open(cls, url: str, cfg: Config | None) -> S3Target:
        bucket, prefix = parse_url(url)
        settings = S3Settings.of(cfg)
        target = cls(_Connection(settings), bucket, prefix)
        try:
            target.conn.run(target.conn.s3.head_bucket(Bucket=bucket))
        except (ClientError, BotoCoreError) as exc:
            target.close()
            raise BackupError(f"the backup target s3://{bucket} at {settings.endpoint} is not "
                              f"usable: {exc}") from None
        return target

    def close(self) -> None:
        self.conn.close()

    def check(self, cfg: Config) -> None:
        f = cfg.files
        if f.s3_endpoint.rstrip("/") != self.conn.settings.endpoint.rstrip("/"):
            return
        own = {f.s3_bucket if f.backend == "s3" else "",
               cfg.compliance.audit_archive_bucket or f.s3_bucket
               if cfg.compliance.audit_archive_backend == "s3" else ""}
        if self.bucket in own:
            raise BackupError(f"the backup target {self.where} is in a bucket the node itself "
                              "writes (files or audit archive); choose another bucket, ideally "
                              "on another object store")

    def location(self, backup_id: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{backup_id}"

    def begin(self, backup_id: str) -> Writer:
        return _S3Writer(self, backup_id)

    def here(self) -> Reader:
        """The URL itself names one backup (s3://bucket/prefix/<id>)."""
        return S3Reader(self.conn, self.bucket, self.prefix)

    def reader(self, backup_id: str) -> Reader:
        return S3Reader(self.conn, self.bucket, f"{self.prefix}{backup_id}/")

    def objects(self, prefix: str) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            paginator = self.conn.s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                found.extend(dict(o) for o in page.get("Contents", []) if "Key" in o)
            return found

        try:
            return self.conn.run(run())
        except (ClientError, BotoCoreError) as exc:
            raise _failed(f"listing s3://{self.bucket}/{prefix}", exc) from exc

    def keys(self, prefix: str) -> list[str]:
        return [str(o["Key"]) for o in self.objects(prefix)]

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            try:
                res = self.conn.run(self.conn.s3.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in batch], "Quiet": True}))
            except (ClientError, BotoCoreError) as exc:
                raise _failed(f"deleting {len(batch)} objects from s3://{self.bucket}",
                              exc) from exc
            if res.get("Errors"):
                first = res["Errors"][0]
                raise BackupError(f"deleting s3://{self.bucket}/{first.get('Key')}: "
                                  f"{first.get('Code')} {first.get('Message')}")

    def _uploads(self) -> list[dict[str, Any]]:
        """The bucket's unfinished multipart uploads (all of them: MinIO lists those of an
        exact key only when given a prefix; we filter by ours)."""
        async def run() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            paginator = self.conn.s3.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket):
                found.extend(dict(u) for u in page.get("Uploads", []))
            return found

        try:
            return self.conn.run(run())
        except (ClientError, BotoCoreError) as exc:
            raise _failed(f"listing unfinished uploads in s3://{self.bucket}", exc) from exc

    def _by_backup(self) -> dict[str, list[dict[str, Any]]]:
        """The objects under the prefix, by the first path segment after it."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for obj in self.objects(self.prefix):
            name, sep, _rest = str(obj["Key"])[len(self.prefix):].partition("/")
            if sep:
                groups.setdefault(name, []).append(obj)
        return groups

    def complete_ids(self) -> list[str]:
        return [name for name, objs in self._by_backup().items()
                if any(str(o["Key"]) == f"{self.prefix}{name}/{MANIFEST}" for o in objs)]

    def remove(self, backup_id: str, now: float | None = None) -> None:
        if self._lock_state():
            # Versioned: delete the versions, or keep what a lock holds.
            self.purge(f"{self.prefix}{backup_id}/", time.time() if now is None else now,
                       f"backup {backup_id}")
            return
        # The manifest first: a removal cut short leaves an incomplete backup, not a
        # listed one with parts missing.
        manifest = f"{self.prefix}{backup_id}/{MANIFEST}"
        self.delete([manifest])
        self.delete([k for k in self.keys(f"{self.prefix}{backup_id}/") if k != manifest])

    def remove_unfinished(self, now: float, is_id: Callable[[str], bool]) -> list[str]:
        removed: list[str] = []
        for name, objs in self._by_backup().items():
            if not is_id(name) or any(str(o["Key"]) == f"{self.prefix}{name}/{MANIFEST}"
                                      for o in objs):
                continue
            newest = max(_epoch(o["LastModified"]) for o in objs)
            if now - newest > STALE_SECONDS:
                if self._lock_state():
                    try:
                        self.purge(f"{self.prefix}{name}/", now, name)
                    except StillLocked:
                        continue  # removed once its lock ends
                else:
                    self.delete([str(o["Key"]) for o in objs])
                removed.append(name)
        # Multipart uploads a crash left open hold storage but no object.
        for up in self._uploads():
            key, initiated = str(up.get("Key", "")), up.get("Initiated")
            name, sep, _rest = key[len(self.prefix):].partition("/")
            if not key.startswith(self.prefix) or not sep or initiated is None \
                    or not is_id(name) or now - _epoch(initiated) <= STALE_SECONDS:
                continue
            with contextlib.suppress(ClientError, BotoCoreError):
                self.conn.run(self.conn.s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=str(up.get("UploadId", ""))))
                removed.append(f"{name} (unfinished upload of {key[len(self.prefix):]})")
        return removed


def _taken(backup_id: str) -> float:
    """The time in a backup id (``<site>-YYYYmmddTHHMMSSZ``); now for another name."""
    m = _TAKEN_RE.search(backup_id)
    if not m:
        return time.time()
    return datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def _epoch(t: datetime) -> float:
    return t.timestamp()

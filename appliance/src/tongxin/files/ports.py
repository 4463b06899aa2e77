"""The file ports: where the bytes live (BlobStore) and what is known about them
(FileMetaStore).

Blob keys are made by the blob store from server-generated ids only
(``upload_id``, part number, ``file_id``); nothing a client sends, such as a
file name, ever becomes part of a path or an object key.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol


class BlobError(Exception):
    """The blob backend failed; the operation did not take effect."""


class BlobNotFound(BlobError):
    """No blob under that key."""


class NoSuchUpload(Exception):
    """The upload does not exist any more (aborted, expired or completed)."""


class PartsChanged(Exception):
    """A part was replaced while the upload was being completed."""


@dataclass(slots=True)
class UploadRow:
    id: str
    owner_id: str
    conversation_id: str
    name: str
    size: int
    content_type: str
    sha256: str  # declared by the client, lowercase hex; "" if not given
    sm3: str
    part_size: int
    part_count: int
    created_at: int
    expires_at: int
    file_id: str = ""  # set when the upload completed

    def part_length(self, n: int) -> int:
        """Exact size of part n (1-based): part_size, except a shorter last part."""
        if n < self.part_count:
            return self.part_size
        return self.size - self.part_size * (self.part_count - 1)


@dataclass(slots=True)
class PartRow:
    upload_id: str
    n: int
    size: int
    sha256: str
    key: str  # blob key of this copy of the part


@dataclass(slots=True)
class FileRow:
    id: str
    conversation_id: str
    owner_id: str
    name: str
    size: int
    content_type: str
    sha256: str
    sm3: str
    key: str  # blob key of the whole file
    created_at: int


class BlobStore(Protocol):
    """Bytes of parts and files. Every method streams: no whole part or file in memory."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def put_part(self, upload_id: str, n: int, chunks: AsyncIterator[bytes]) -> str:
        """Store the chunks as a new copy of part n and return its key.

        The copy becomes visible only complete (written to a temporary name,
        then renamed or committed); if ``chunks`` raises, nothing is left.
        """
        ...

    async def list_parts(self, upload_id: str) -> list[str]:
        """Keys of every stored part copy of the upload, recorded or not (for cleanup)."""
        ...

    async def assemble(self, part_keys: Sequence[str], file_id: str) -> str:
        """Concatenate the parts in order into the file's blob; return its key.

        The parts are left in place (the caller deletes them once the file's
        row is committed).
        """
        ...

    def read(self, key: str, start: int = 0, stop: int | None = None) -> AsyncGenerator[bytes]:
        """Bytes ``[start, stop)`` of a blob, in chunks. Raises BlobNotFound."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete blobs; keys that do not exist are ignored."""
        ...

    async def put_object(self, key: str, data: bytes) -> None:
        """Store a small blob whole under a given key (replacing it), durably and
        atomically: readers see the old bytes or the new, never a part. For the
        audit archive (``files.keys.ARCHIVE_KEY_RE``), not for uploads."""
        ...


class FileMetaStore(Protocol):
    """Uploads, their parts and the finished files (the SQLite default shares tongxin.db)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def create_upload(self, upload: UploadRow) -> None: ...
    async def get_upload(self, upload_id: str) -> UploadRow | None: ...
    async def list_parts(self, upload_id: str) -> list[PartRow]:
        """Received parts, ordered by part number."""
        ...

    async def record_part(self, part: PartRow, expires_at: int) -> str | None:
        """Record a received part (replacing an earlier copy) and push the upload's
        expiry to ``expires_at``. Returns the replaced copy's key, if any.
        Raises NoSuchUpload if the upload is gone or already completed."""
        ...

    async def forget_part(self, upload_id: str, n: int, key: str) -> None:
        """Drop part n's record if it still names ``key`` (its stored bytes were bad)."""
        ...

    async def complete(self, upload_id: str, file: FileRow, part_keys: Sequence[str]) -> None:
        """Atomically: insert the file, mark the upload completed, forget its parts.
        Raises PartsChanged if the recorded parts are not exactly ``part_keys``
        and NoSuchUpload if the upload is gone or completed."""
        ...

    async def delete_upload(self, upload_id: str, expired_before: int | None = None) -> bool:
        """Delete the upload and its part rows (only if it expired before the
        given time, when one is given). True if a row was deleted."""
        ...

    async def expired_uploads(self, now: int, limit: int) -> list[UploadRow]: ...
    async def get_file(self, file_id: str) -> FileRow | None: ...

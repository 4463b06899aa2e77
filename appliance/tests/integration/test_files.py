"""Large files through a real node: parallel resumable uploads, verification,
ranged downloads, refusals that store nothing, expiry, file messages, and the
same round trip on a real S3-compatible server (scripts/s3server.sh).

Every test but the S3 one runs twice: on the embedded defaults (SQLite
metadata, bytes in a local directory) and on the shared database (MySQL/TiDB
metadata, ``files.backend: database``) against the MariaDB of
scripts/services.sh; ``Files`` looks at what each of them stored."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import sqlite3
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncmy
import pytest
from aiobotocore.session import get_session
from conftest import NodeFactory, RunningNode
from cryptography.hazmat.primitives import hashes
from engines import storage_section
from s3server import s3_server_env

from tongxin.atrest.blobs import sealed_file_length
from tongxin.client import Client, FileApiError, TongxinError, pb
from tongxin.client.files import FilesHttp, FileSource
from tongxin.store.dsn import parse_dsn

MiB = 1024 * 1024
SMALL_PART = 65536  # the smallest part size the config accepts


# ---- helpers ------------------------------------------------------------------

def digests(data: bytes) -> tuple[str, str]:
    sm3 = hashes.Hash(hashes.SM3())
    sm3.update(data)
    return hashlib.sha256(data).hexdigest(), sm3.finalize().hex()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def db_count(node: RunningNode, table: str) -> int:
    conn = sqlite3.connect(node.cfg.sqlite_file)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def stored_files(node: RunningNode) -> list[str]:
    """Every file under the blob directory (parts, finished files, temporaries)."""
    root = node.cfg.files_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@dataclass
class Files:
    """The file backends under test, and a look at what they stored.

    ``embedded``: SQLite metadata and a local directory. ``database``: the
    tables of store migration 6 in a fresh MariaDB database; "stored" then
    also lists contents no key names (``pending/<id>``, ``chunks/<id>``) and
    anything under the node's local file directory (``local/<path>``), so
    debris of either kind fails the same assertions.
    """

    kind: str
    factory: NodeFactory
    dsn: str = ""

    async def node(self, home: Path | None = None, **sections: dict[str, Any]) -> RunningNode:
        if self.kind == "database":
            sections["files"] = {"backend": "database", **sections.get("files", {})}
            sections["storage"] = {"backend": "mysql", "mysql_dsn": self.dsn,
                                   "mysql_pool_size": 8, **sections.get("storage", {})}
        running: RunningNode = await self.factory(home=home, **sections)
        return running

    async def _sql(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        d = parse_dsn(self.dsn)
        conn = await asyncmy.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                                     database=d.database, autocommit=True)
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql, args)
                return list(await cur.fetchall())
        finally:
            conn.close()

    async def count(self, node: RunningNode, table: str) -> int:
        if self.kind == "embedded":
            return db_count(node, table)
        return int((await self._sql(f"SELECT COUNT(*) FROM {table}"))[0][0])

    async def stored(self, node: RunningNode) -> list[str]:
        if self.kind == "embedded":
            return stored_files(node)
        root = node.cfg.files_dir
        out = [f"local/{p.relative_to(root)}" for p in root.rglob("*") if p.is_file()]
        out += [r[0].decode() for r in await self._sql("SELECT blob_key FROM file_blobs")]
        out += [f"pending/{r[0].decode()}" for r in
                await self._sql("SELECT content_id FROM file_blob_pending")]
        out += [f"chunks/{r[0].decode()}" for r in await self._sql(
            "SELECT DISTINCT c.content_id FROM file_blob_chunks c LEFT JOIN file_blob_segments s "
            "ON s.content_id = c.content_id WHERE s.content_id IS NULL")]
        return sorted(out)

    async def blob_size(self, node: RunningNode, key: str) -> int:
        if self.kind == "embedded":
            return (node.cfg.files_dir / key).stat().st_size
        return int((await self._sql("SELECT size FROM file_blobs WHERE blob_key=%s", (key,)))[0][0])

    async def expire(self, node: RunningNode, upload_id: str) -> None:
        if self.kind == "embedded":
            conn = sqlite3.connect(node.cfg.sqlite_file)
            with conn:
                conn.execute("UPDATE uploads SET expires_at = 1 WHERE id = ?", (upload_id,))
            conn.close()
            return
        await self._sql("UPDATE uploads SET expires_at = 1 WHERE id = %s", (upload_id,))

    async def damage(self, node: RunningNode, upload_id: str, n: int) -> None:
        """Overwrite the stored bytes of part n with zeros, behind the node's back."""
        if self.kind == "embedded":
            damaged = sorted(node.cfg.files_dir.glob(f"parts/{upload_id}/{n:06d}.*"))
            assert len(damaged) == 1
            damaged[0].write_bytes(b"\0" * damaged[0].stat().st_size)
            return
        keys = await self._sql("SELECT blob_key FROM file_blobs WHERE blob_key LIKE %s",
                               (f"parts/{upload_id}/{n:06d}.%",))
        assert len(keys) == 1
        await self._sql(
            "UPDATE file_blob_chunks c JOIN file_blob_segments s ON s.content_id = c.content_id "
            "SET c.data = UNHEX(REPEAT('00', LENGTH(c.data))) WHERE s.blob_key = %s", (keys[0][0],))


@pytest.fixture(params=["embedded", "database"])
async def files_db(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    """(kind, DSN): set up before node_factory, so the database outlives the nodes."""
    if request.param == "embedded":
        yield "embedded", ""
        return
    async with storage_section("mysql") as storage:
        yield "database", storage["mysql_dsn"]


@pytest.fixture
def fx(files_db: tuple[str, str], node_factory: NodeFactory) -> Files:
    return Files(files_db[0], node_factory, files_db[1])


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(size % MiB))


def read_range(path: Path, start: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def metric(node: RunningNode, name: str) -> float:
    value = node.node.metrics.registry.get_sample_value(name)
    return float(value or 0.0)


async def members(node: RunningNode) -> tuple[Client, Client, str]:
    alice = await node.user("alice")
    bob = await node.user("bob")
    conv = await alice.direct("bob")
    return alice, bob, conv.conversation_id


async def create(api: FilesHttp, conv: str, data: bytes, name: str = "data.bin",
                 **override: Any) -> dict[str, Any]:
    sha, sm3 = digests(data)
    body: dict[str, Any] = {"conversation_id": conv, "name": name, "size": len(data),
                            "content_type": "application/octet-stream", "sha256": sha, "sm3": sm3}
    body.update(override)
    answer: dict[str, Any] = await api.call("POST", "/api/v1/files", json=body)
    return answer


async def refused(coro: Any, status: int, error: str, *needles: str) -> FileApiError:
    with pytest.raises(FileApiError) as info:
        await coro
    err = info.value
    assert (err.status, err.error) == (status, error), err
    for needle in needles:
        assert needle in err.message, err.message
    return err


def part_of(data: bytes, n: int, part_size: int) -> bytes:
    return data[(n - 1) * part_size:n * part_size]


# ---- the big one ------------------------------------------------------------------

async def test_50mb_parallel_interrupted_resumed_and_downloaded(fx: Files,
                                                               tmp_path: Path) -> None:
    node = await fx.node(files={"part_size": MiB})
    alice, bob, conv = await members(node)
    size = 50 * MiB
    src = tmp_path / "big.bin"
    write_random(src, size)
    want_sha = sha256_file(src)

    tracemalloc.start()
    try:
        api = alice.files_http()
        sha, sm3 = await asyncio.to_thread(lambda: _file_digests(src))
        up = await api.call("POST", "/api/v1/files", json={
            "conversation_id": conv, "name": "big.bin", "size": size,
            "content_type": "application/octet-stream", "sha256": sha, "sm3": sm3})
        assert (up["part_size"], up["part_count"]) == (MiB, 50)
        # Interrupted: 20 parts, out of order and in parallel, then the client goes away.
        first = random.Random(7).sample(range(1, 51), 20)
        await api.put_parts(up["upload_id"], FileSource(src), MiB, first, parallel=4)
        await alice.close()

        again = await node.client()
        await again.login("alice", "password-1")
        status = await again.files_http().status(up["upload_id"])
        assert sorted(status["parts"]) == sorted(first)
        info = await again.upload_file(conv, src, parallel=4, upload_id=up["upload_id"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Client and server share this process, so the peak covers both: far
    # below the file's 50 MB (parts stream in 256 KiB blocks).
    assert peak < 20 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"
    assert (info.size, info.sha256, info.name) == (size, want_sha, "big.bin")
    assert metric(node, "tongxin_files_completed_total") == 1
    assert metric(node, "tongxin_file_bytes_uploaded_total") == size

    # Nothing of the upload is left; the file is one blob of the right size.
    left = await fx.stored(node)
    assert len(left) == 1 and left[0].startswith("blobs/"), left
    # Sealed at rest (on by default): 64 KiB chunks, each with its nonce and tag.
    assert await fx.blob_size(node, left[0]) == sealed_file_length(size, MiB)
    assert await fx.count(node, "upload_parts") == 0

    # Bob, the other member, downloads it whole and in ranges.
    out = tmp_path / "down.bin"
    assert await bob.download_file_to(info.file_id, out) == size
    assert sha256_file(out) == want_sha
    expect = read_range(src, 12345, 3 * MiB)
    tail = read_range(src, size - 100, 100)
    assert await bob.download_file(info.file_id, range=(12345, 12345 + 3 * MiB)) == expect
    assert await bob.download_file(info.file_id, range=(size - 100, None)) == tail
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {bob.auth.token if bob.auth else ''}"}
        async with http.get(f"{node.http_url}/api/v1/files/{info.file_id}",
                            headers={**headers, "Range": "bytes=-100"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes {size - 100}-{size - 1}/{size}"
            assert await resp.read() == tail
        async with http.head(f"{node.http_url}/api/v1/files/{info.file_id}",
                             headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(size)
            assert resp.headers["ETag"] == f'"{want_sha}"'
            assert await resp.read() == b""
        async with http.get(f"{node.http_url}/api/v1/files/{info.file_id}",
                            headers={**headers, "Range": f"bytes={size}-"}) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == f"bytes */{size}"
            assert (await resp.json())["error"] == "INVALID_ARGUMENT"


def _file_digests(path: Path) -> tuple[str, str]:
    sha, sm3 = hashlib.sha256(), hashes.Hash(hashes.SM3())
    with open(path, "rb") as f:
        while block := f.read(MiB):
            sha.update(block)
            sm3.update(block)
    return sha.hexdigest(), sm3.finalize().hex()


# ---- refusals that store nothing ------------------------------------------------------

async def test_bad_sizes_and_parts_are_refused_and_nothing_is_stored(fx: Files) -> None:
    node = await fx.node(files={"part_size": SMALL_PART, "max_file_size": 10 * MiB})
    alice, _, conv = await members(node)
    api = alice.files_http()
    data = os.urandom(3 * SMALL_PART + 100)  # parts of 64 KiB, 64 KiB, 64 KiB, 100 B

    # Declared sizes that lie or break the rules.
    await refused(create(api, conv, data, size=10 * MiB + 1), 413, "PAYLOAD_TOO_LARGE",
                  "exceeds the limit")
    await refused(create(api, conv, data, size=-1), 400, "INVALID_ARGUMENT", "size")
    await refused(create(api, conv, data, size="12"), 400, "INVALID_ARGUMENT", "size")
    await refused(create(api, conv, data, sha256="", sm3=""), 400, "INVALID_ARGUMENT", "sha256 or sm3")
    await refused(create(api, conv, data, sha256="ABC"), 400, "INVALID_ARGUMENT", "64 lowercase hex")
    await refused(create(api, "d:nobody:else", data), 404, "NOT_FOUND")
    await refused(create(api, conv, data, name="bad\x00name"), 400, "INVALID_ARGUMENT", "control")
    await refused(create(api, conv, data, content_type="text/html\r\nX: y"), 400, "INVALID_ARGUMENT")
    assert await fx.count(node, "uploads") == 0

    up = await create(api, conv, data)
    uid = up["upload_id"]
    assert (up["part_size"], up["part_count"]) == (SMALL_PART, 4)
    path = f"/api/v1/files/uploads/{uid}/parts"
    # Part numbers out of range.
    for bad_n in ("0", "5", "x", "-1", "99999999999"):
        await refused(api.call("PUT", f"{path}/{bad_n}", data=part_of(data, 1, SMALL_PART)),
                      400, "INVALID_ARGUMENT", "out of range")
    # Wrong sizes: short, long, a full-size last part, a long body without Content-Length.
    await refused(api.call("PUT", f"{path}/1", data=b"x" * 100), 400, "INVALID_ARGUMENT",
                  f"exactly {SMALL_PART} bytes")
    await refused(api.call("PUT", f"{path}/2", data=b"x" * (SMALL_PART + 1)), 400,
                  "INVALID_ARGUMENT", f"exactly {SMALL_PART} bytes")
    await refused(api.call("PUT", f"{path}/4", data=part_of(data, 1, SMALL_PART)), 400,
                  "INVALID_ARGUMENT", "exactly 100 bytes")

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 20000

    await refused(api.call("PUT", f"{path}/3", data=endless()), 400, "INVALID_ARGUMENT",
                  "longer than")

    async def short() -> AsyncIterator[bytes]:
        yield b"z" * 1000

    await refused(api.call("PUT", f"{path}/3", data=short()), 400, "INVALID_ARGUMENT",
                  f"exactly {SMALL_PART} bytes, got 1000")
    # A part whose X-Part-SHA256 does not match what arrived.
    await refused(api.call("PUT", f"{path}/1", data=part_of(data, 1, SMALL_PART),
                           headers={"X-Part-SHA256": hashlib.sha256(b"other").hexdigest()}),
                  400, "INVALID_ARGUMENT", "does not match X-Part-SHA256")
    # None of that stored anything, and the upload is still there to resume.
    assert (await api.status(uid))["parts"] == []
    assert await fx.count(node, "upload_parts") == 0
    assert await fx.stored(node) == []

    # Completing with parts missing names them.
    for n in (1, 3):
        good = part_of(data, n, SMALL_PART)
        ok = await api.call("PUT", f"{path}/{n}", data=good,
                            headers={"X-Part-SHA256": hashlib.sha256(good).hexdigest()})
        assert ok == {"part": n, "size": len(good), "sha256": hashlib.sha256(good).hexdigest()}
    err = await refused(api.complete(uid), 409, "CONFLICT", "parts missing: 2, 4")
    assert err.body["missing"] == [2, 4]
    assert await fx.count(node, "files") == 0
    # ... and the upload resumes from there.
    info = await alice.upload_file(conv, data, upload_id=uid)
    assert info.sha256 == digests(data)[0]
    assert len(await alice.download_file(info.file_id)) == len(data)


async def test_whole_file_checksum_mismatch_makes_no_file_then_abort(fx: Files) -> None:
    node = await fx.node(files={"part_size": SMALL_PART})
    alice, _, conv = await members(node)
    api = alice.files_http()
    data = os.urandom(2 * SMALL_PART + 7)
    claimed = bytearray(data)
    claimed[-1] ^= 0xFF  # the client claims other bytes than it sends
    for field in ("sha256", "sm3"):
        sums = dict(zip(("sha256", "sm3"), digests(bytes(claimed)), strict=True))
        up = await create(api, conv, data, **{field: sums[field],
                                              ("sm3" if field == "sha256" else "sha256"): ""})
        uid = up["upload_id"]
        await api.put_parts(uid, FileSource(data), SMALL_PART, [1, 2, 3], parallel=3)
        err = await refused(api.complete(uid), 409, "CONFLICT", "whole-file checksum mismatch",
                            f"{field}: declared {sums[field]}")
        assert err.body[field] == dict(zip(("sha256", "sm3"), digests(data), strict=True))[field]
        assert await fx.count(node, "files") == 0
        assert not [p for p in await fx.stored(node) if p.startswith("blobs/")]
        # Still an upload (resumable): all three parts are there.
        assert sorted((await api.status(uid))["parts"]) == [1, 2, 3]
        assert len([p for p in await fx.stored(node) if p.startswith(f"parts/{uid}/")]) == 3
        # Abort deletes the parts and the upload.
        await api.abort(uid)
        await refused(api.status(uid), 404, "NOT_FOUND")
        assert await fx.stored(node) == []
        assert await fx.count(node, "uploads") == await fx.count(node, "upload_parts") == 0
    assert metric(node, "tongxin_files_completed_total") == 0


async def test_names_are_display_names_only(fx: Files) -> None:
    node = await fx.node(files={"part_size": SMALL_PART})
    alice, bob, conv = await members(node)
    data = b"root:x:0:0:root:/root:/bin/bash\n"
    names = ["../../etc/passwd", "/etc/shadow", "..\\..\\boot.ini", "a/../../b", "名字 .txt"]
    for name in names:
        info = await alice.upload_file(conv, data, name=name, content_type="text/plain")
        assert info.name == name
        assert (await bob.file_info(info.file_id)).name == name
        async with aiohttp.ClientSession() as http, http.get(
                f"{node.http_url}/api/v1/files/{info.file_id}",
                headers={"Authorization": f"Bearer {bob.auth.token if bob.auth else ''}"}) as resp:
            assert await resp.read() == data
            disposition = resp.headers["Content-Disposition"]
            assert disposition.startswith("attachment; filename=\"")
            assert "/" not in disposition.split(";")[1]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # On disk only server-made names, all inside the blob directory.
    for rel in await fx.stored(node):
        assert rel.startswith("blobs/") and rel.split("/")[-1].startswith("f_"), rel
    home = node.cfg.home
    assert not [p for p in home.rglob("*") if p.name in ("passwd", "shadow", "boot.ini", "b")]
    assert not (home.parent / "etc").exists()


async def test_only_members_download_and_no_existence_leaks(fx: Files) -> None:
    node = await fx.node(files={"part_size": SMALL_PART})
    alice, bob, conv = await members(node)
    carol = await node.user("carol")
    info = await alice.upload_file(conv, b"secret report", name="report.txt")
    assert await bob.download_file(info.file_id) == b"secret report"
    absent = "f_" + "0" * 32
    for file_id in (info.file_id, absent, "../../etc/passwd", "x"):
        a = await refused(carol.download_file(file_id), 404, "NOT_FOUND")
        b = await refused(carol.file_info(file_id), 404, "NOT_FOUND")
        assert "secret" not in a.message + b.message
    # Carol's answers for an existing and a made-up id have the same shape.
    a = await refused(carol.download_file(info.file_id), 404, "NOT_FOUND")
    b = await refused(carol.download_file(absent), 404, "NOT_FOUND")
    assert a.message.replace(info.file_id, "ID") == b.message.replace(absent, "ID")
    # Her uploads never see Alice's upload either.
    up = await create(alice.files_http(), conv, b"abc")
    await refused(carol.files_http().status(up["upload_id"]), 404, "NOT_FOUND")
    await refused(carol.files_http().abort(up["upload_id"]), 404, "NOT_FOUND")
    # No token, a bad token.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{node.http_url}/api/v1/files/{info.file_id}") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "NOT_AUTHENTICATED"
        async with http.get(f"{node.http_url}/api/v1/files/{info.file_id}",
                            headers={"Authorization": "Bearer v1.forged.token"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "TOKEN_INVALID"


async def test_resent_parts_empty_files_and_a_restart(fx: Files, tmp_path: Path) -> None:
    node = await fx.node(home=tmp_path / "home", files={"part_size": SMALL_PART})
    alice, bob, conv = await members(node)
    api = alice.files_http()
    # An empty file needs no parts.
    empty = await alice.upload_file(conv, b"", name="empty.txt")
    assert (empty.size, empty.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert await bob.download_file(empty.file_id) == b""

    # Parts sent in order are hashed as they stream; one of them is then sent
    # again with other bytes, and the file is what was sent last.
    first = os.urandom(3 * SMALL_PART)
    final = first[:SMALL_PART] + os.urandom(SMALL_PART) + first[2 * SMALL_PART:]
    up = await create(api, conv, final)
    await api.put_parts(up["upload_id"], FileSource(first), SMALL_PART, [1, 2, 3], parallel=1)
    await api.put_part(up["upload_id"], 2, part_of(final, 2, SMALL_PART))
    assert len([p for p in await fx.stored(node) if p.startswith("parts/")]) == 3  # old copy gone
    info = await api.complete(up["upload_id"])
    assert info.sha256 == digests(final)[0]
    assert await bob.download_file(info.file_id) == final
    assert await api.complete(up["upload_id"]) == info  # completing again: same file

    # Half an upload, a restart (digest state lost), a part damaged on disk
    # meanwhile: completion re-reads the parts, finds it and asks for it again.
    data = os.urandom(4 * SMALL_PART)
    up = await create(api, conv, data)
    uid = up["upload_id"]
    await api.put_parts(uid, FileSource(data), SMALL_PART, [1, 2, 3], parallel=2)
    await node.stop()
    node = await fx.node(home=tmp_path / "home", files={"part_size": SMALL_PART})
    alice = await node.user("alice")
    api = alice.files_http()
    await fx.damage(node, uid, 2)
    await api.put_part(uid, 4, part_of(data, 4, SMALL_PART))
    err = await refused(api.complete(uid), 409, "CONFLICT", "part 2 was damaged in storage")
    assert err.body["missing"] == [2]
    assert sorted((await api.status(uid))["parts"]) == [1, 3, 4]
    info = await alice.upload_file(conv, data, upload_id=uid)
    assert await alice.download_file(info.file_id) == data


# ---- expiry ------------------------------------------------------------------

async def test_expired_uploads_are_swept_in_batches(fx: Files) -> None:
    node = await fx.node(files={"part_size": SMALL_PART, "upload_expiry": 0.4})
    node.node.files.sweep_batch = 2  # five uploads take three batches
    alice, _, conv = await members(node)
    api = alice.files_http()
    data = os.urandom(SMALL_PART + 10)
    uids = []
    for _ in range(5):
        up = await create(api, conv, data)
        await api.call("PUT", f"/api/v1/files/uploads/{up['upload_id']}/parts/1",
                       data=data[:SMALL_PART])
        uids.append(up["upload_id"])
    for _ in range(100):
        if not (await fx.count(node, "uploads") or await fx.stored(node)):
            break
        await asyncio.sleep(0.1)
    assert metric(node, "tongxin_uploads_expired_total") == 5
    assert await fx.count(node, "upload_parts") == 0
    await refused(api.status(uids[0]), 404, "NOT_FOUND")


async def test_expired_upload_is_deleted_when_touched(fx: Files) -> None:
    node = await fx.node(files={"part_size": SMALL_PART})  # sweeper far away
    alice, _, conv = await members(node)
    api = alice.files_http()
    data = os.urandom(SMALL_PART + 10)
    up = await create(api, conv, data)
    uid = up["upload_id"]
    await api.call("PUT", f"/api/v1/files/uploads/{uid}/parts/1", data=data[:SMALL_PART])
    assert len(await fx.stored(node)) == 1
    await fx.expire(node, uid)
    await refused(api.call("PUT", f"/api/v1/files/uploads/{uid}/parts/2", data=data[SMALL_PART:]),
                  404, "NOT_FOUND", "expired")
    assert await fx.stored(node) == []
    assert await fx.count(node, "uploads") == 0
    assert metric(node, "tongxin_uploads_expired_total") == 1


# ---- file messages ------------------------------------------------------------

async def test_file_message_reaches_the_other_member(fx: Files) -> None:
    node = await fx.node(files={"part_size": SMALL_PART})
    alice, bob, conv = await members(node)
    data = os.urandom(3 * SMALL_PART)
    info = await alice.upload_file(conv, data, name="plan.pdf", content_type="application/pdf")
    bob.drain_events()
    # The sender's copy of the metadata is replaced by the stored one.
    forged = pb.FileInfo(file_id=info.file_id, name="other.exe", size=1, sha256="0" * 64)
    ack = await alice.send_file(conv, forged)
    ev = await bob.next_event(pb.DELIVER)
    while ev.message.kind != pb.CHAT:
        ev = await bob.next_event(pb.DELIVER)
    got = ev.message.content.file
    assert ev.message.seq == ack.seq
    assert got == info
    assert (got.name, got.size, got.content_type) == ("plan.pdf", len(data), "application/pdf")
    assert (got.sha256, got.sm3) == digests(data)
    assert await bob.download_file(got.file_id) == data

    # A file that does not exist, or lives in another conversation, is refused.
    carol = await node.user("carol")
    other = (await carol.direct("bob")).conversation_id
    with pytest.raises(TongxinError) as refused_send:
        await alice.send_file(conv, pb.FileInfo(file_id="f_" + "1" * 32, name="x"))
    assert refused_send.value.code == pb.NOT_FOUND
    theirs = await carol.upload_file(other, b"carol's", name="c.txt")
    with pytest.raises(TongxinError) as elsewhere:
        await bob.send_file(conv, theirs)
    assert elsewhere.value.code == pb.NOT_FOUND
    with pytest.raises(TongxinError) as empty:
        await alice.send_file(conv, pb.FileInfo())
    assert empty.value.code == pb.INVALID_ARGUMENT


# ---- S3 ----------------------------------------------------------------------

async def s3_keys(env: dict[str, str], bucket: str) -> list[str]:
    async with get_session().create_client(
            "s3", endpoint_url=env["TONGXIN_S3_ENDPOINT"], region_name="us-east-1",
            aws_access_key_id=env["TONGXIN_S3_ACCESS_KEY"],
            aws_secret_access_key=env["TONGXIN_S3_SECRET_KEY"]) as s3:
        keys: list[str] = []
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys.extend(o["Key"] for o in page.get("Contents", []) if "Key" in o)
        return sorted(keys)


# The first run on a machine builds the S3 server (minutes): allow for it.
@pytest.mark.timeout(1500)
async def test_s3_round_trip(node_factory: NodeFactory, s3_bucket: tuple[dict[str, str], str],
                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, bucket = s3_bucket
    # Secrets from the environment, as an operator would pass them.
    monkeypatch.setenv("TONGXIN_S3_ACCESS_KEY", env["TONGXIN_S3_ACCESS_KEY"])
    monkeypatch.setenv("TONGXIN_S3_SECRET_KEY", env["TONGXIN_S3_SECRET_KEY"])
    part = 5 * MiB
    node = await node_factory(files={"backend": "s3", "part_size": part,
                                     "s3_endpoint": env["TONGXIN_S3_ENDPOINT"],
                                     "s3_bucket": bucket})
    alice, bob, conv = await members(node)
    size = 3 * part + 12345
    src = tmp_path / "s3.bin"
    write_random(src, size)
    want = sha256_file(src)

    # Interrupted after two parts (sent last-first), resumed, completed.
    api = alice.files_http()
    sha, sm3 = _file_digests(src)
    up = await api.call("POST", "/api/v1/files", json={
        "conversation_id": conv, "name": "s3.bin", "size": size, "sha256": sha, "sm3": sm3})
    await api.put_parts(up["upload_id"], FileSource(src), part, [4], parallel=1)
    await api.put_parts(up["upload_id"], FileSource(src), part, [2], parallel=1)
    assert len(await s3_keys(env, bucket)) == 2
    info = await alice.upload_file(conv, src, upload_id=up["upload_id"])
    assert (info.size, info.sha256) == (size, want)
    keys = await s3_keys(env, bucket)
    assert keys == [f"blobs/{info.file_id[2:4]}/{info.file_id}"], keys

    out = tmp_path / "s3-down.bin"
    assert await bob.download_file_to(info.file_id, out) == size
    assert sha256_file(out) == want
    expect = read_range(src, part - 10, 20 + part)
    assert await bob.download_file(info.file_id, range=(part - 10, 2 * part + 10)) == expect
    await refused(bob.download_file(info.file_id, range=(size, None)), 416, "INVALID_ARGUMENT")

    # A whole-file mismatch leaves no object; abort removes the parts.
    small = os.urandom(part + 1)
    bad = await create(api, conv, small, sha256=hashlib.sha256(b"not it").hexdigest(), sm3="")
    await api.put_parts(bad["upload_id"], FileSource(small), part, [1, 2], parallel=2)
    await refused(api.complete(bad["upload_id"]), 409, "CONFLICT", "whole-file checksum mismatch")
    assert len(await s3_keys(env, bucket)) == 3  # the file and the two parts
    await api.abort(bad["upload_id"])
    assert await s3_keys(env, bucket) == keys
    assert db_count(node, "files") == 1


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    yield from s3_server_env()


@pytest.fixture
async def s3_bucket(s3_server: dict[str, str]) -> AsyncIterator[tuple[dict[str, str], str]]:
    """A fresh bucket on the session's S3 server, emptied and removed afterwards."""
    bucket = "tx-" + uuid.uuid4().hex[:12]
    session = get_session()
    async with session.create_client(
            "s3", endpoint_url=s3_server["TONGXIN_S3_ENDPOINT"], region_name="us-east-1",
            aws_access_key_id=s3_server["TONGXIN_S3_ACCESS_KEY"],
            aws_secret_access_key=s3_server["TONGXIN_S3_SECRET_KEY"]) as s3:
        await s3.create_bucket(Bucket=bucket)
        yield s3_server, bucket
        with contextlib.suppress(Exception):
            for key in await s3_keys(s3_server, bucket):
                await s3.delete_object(Bucket=bucket, Key=key)
            await s3.delete_bucket(Bucket=bucket)

"""Files as part of the one dataset: metadata and bytes in the shared database.

* Two node processes with data directories of their own share a fresh
  MariaDB database (TiDB's stand-in), Kafka topics and Redis keys: a file
  uploaded in parts, begun through one node and resumed through the other,
  downloads byte-identical, whole and by range, through either, and neither
  node keeps any of it on its own disk.
* The database blob store under faults: a write whose connection is killed
  half-way, and a writer process killed with SIGKILL half-way, leave nothing
  visible, and the sweep drops their chunks; an interrupted ``put_object``
  leaves the old bytes.
* The MySQL FileMetaStore through two pools (two nodes): a part recorded
  after another node completed the upload, and a completion over part keys
  another node replaced meanwhile, are refused.

The bytes' own contract (parts, assembly, ranges, expiry, refusals) is
test_files.py, which runs every test on this backend too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncmy
import pytest
from engines import (
    NodeProcess,
    create_mysql_database,
    drop_mysql_database,
    isolated_backends,
    service_env,
    services,
    start_node_process,
)
from test_multinode import login

from tongxin.client.files import FileSource
from tongxin.files.db_blobs import DbBlobStore
from tongxin.files.keys import new_upload_id
from tongxin.files.mysql_meta import MysqlFileMeta
from tongxin.files.ports import (
    BlobError,
    BlobNotFound,
    FileRow,
    NoSuchUpload,
    PartRow,
    PartsChanged,
    UploadRow,
)
from tongxin.store.dsn import parse_dsn
from tongxin.store.mysql_store import MysqlStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PART = 65536
SMALL_CHUNK = 16384  # blob rows in the fault tests: many rows per part


# ---- helpers ------------------------------------------------------------------

async def sql(dsn: str, statement: str, args: tuple[Any, ...] = ()) -> list[Any]:
    d = parse_dsn(dsn)
    conn = await asyncmy.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                                 database=d.database, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement, args)
            return list(await cur.fetchall())
    finally:
        conn.close()


async def count(dsn: str, table: str) -> int:
    return int((await sql(dsn, f"SELECT COUNT(*) FROM {table}"))[0][0])


async def read_all(store: DbBlobStore, key: str, start: int = 0, stop: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, stop)])


async def wait_for(what: str, check: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def server_dsn() -> Iterator[str]:
    services("start", "mariadb")
    yield service_env()["TONGXIN_MYSQL_DSN"]


@pytest.fixture
async def dsn(server_dsn: str) -> AsyncIterator[str]:
    """A fresh database with the store's migrations applied."""
    made = await create_mysql_database(server_dsn)
    db = MysqlStore.from_dsn(made, 2)
    await db.open()
    await db.close()
    yield made
    await drop_mysql_database(server_dsn, made)


@pytest.fixture
async def blobs(dsn: str) -> AsyncIterator[DbBlobStore]:
    store = DbBlobStore(MysqlStore.from_dsn(dsn, 4, timeout=5.0), chunk_size=SMALL_CHUNK,
                        sweep_interval=0)
    await store.open()
    yield store
    await store.close()


# ---- two nodes, one dataset ------------------------------------------------------------

@pytest.fixture
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[list[NodeProcess], str]]:
    services("start", "redis", "kafka", "mariadb")
    env = service_env()
    made = await create_mysql_database(env["TONGXIN_MYSQL_DSN"])
    config = isolated_backends(env)
    config["storage"] = {"backend": "mysql", "mysql_dsn": made, "mysql_pool_size": 8}
    config["files"] = {"backend": "database", "part_size": PART}
    # One master key (as the keys role installs it on every node): the data keys that seal
    # file bytes are in the database, wrapped by it.
    config["keys"] = {"master_key_file": str(tmp_path / "master.key")}
    nodes: list[NodeProcess] = []
    try:
        for name in ("files-node-1", "files-node-2"):
            # A data directory each: nothing of a file may depend on a node's disk.
            nodes.append(await start_node_process(name, tmp_path / name, config, tmp_path))
        yield nodes, made
    finally:
        for n in nodes:
            n.stop()
        await drop_mysql_database(env["TONGXIN_MYSQL_DSN"], made)


async def test_a_file_uploaded_through_one_node_downloads_through_the_other(
        two_nodes: tuple[list[NodeProcess], str], tmp_path: Path) -> None:
    (one, two), made = two_nodes
    alice1 = await login(one.ws_url, "alice", "a1", register=True)
    await (await login(one.ws_url, "bob", "b1", register=True)).close()
    conv = (await alice1.direct("bob")).conversation_id
    alice2 = await login(two.ws_url, "alice", "a2")
    bob2 = await login(two.ws_url, "bob", "b2")
    try:
        size = 7 * PART + 12345  # eight parts, the last one short
        src = tmp_path / "report.bin"
        src.write_bytes(os.urandom(size))
        data = src.read_bytes()
        sha = hashlib.sha256(data).hexdigest()

        # Begun through node 1 (parts 1, 3, 5, 8), resumed through node 2, completed there.
        api1 = alice1.files_http()
        up = await api1.call("POST", "/api/v1/files", json={
            "conversation_id": conv, "name": "report.bin", "size": size, "sha256": sha})
        assert up["part_count"] == 8
        await api1.put_parts(up["upload_id"], FileSource(src), PART, [1, 3, 5, 8], parallel=2)
        status = await alice2.files_http().status(up["upload_id"])
        assert sorted(status["parts"]) == [1, 3, 5, 8]
        info = await alice2.upload_file(conv, src, upload_id=up["upload_id"])
        assert (info.size, info.sha256) == (size, sha)

        # Bob downloads through node 2, Alice through node 1: whole and by range.
        assert await bob2.download_file(info.file_id) == data
        assert await alice1.download_file(info.file_id) == data
        for start, stop in ((0, 1), (PART - 3, PART + 3), (3 * PART + 17, 6 * PART), (size - 9, None)):
            want = data[start:stop]
            assert await bob2.download_file(info.file_id, range=(start, stop)) == want
            assert await alice1.download_file(info.file_id, range=(start, stop)) == want

        # Everything is in the database; neither node has a file directory with bytes.
        for node in (one, two):
            assert not [p for p in (tmp_path / node.name).rglob("*")
                        if p.is_file() and "files" in p.relative_to(tmp_path).parts]
        keys = [r[0].decode() for r in await sql(made, "SELECT blob_key FROM file_blobs")]
        assert keys == [f"blobs/{info.file_id[2:4]}/{info.file_id}"]
        assert await count(made, "upload_parts") == await count(made, "file_blob_pending") == 0
    finally:
        for c in (alice1, alice2, bob2):
            await c.close()


# ---- the blob store under faults ------------------------------------------------------

async def test_a_write_whose_connection_is_killed_leaves_nothing_visible(
        blobs: DbBlobStore, dsn: str) -> None:
    upload = new_upload_id()
    d = parse_dsn(dsn)
    killed: list[int] = []

    async def kill_the_blocked_insert(admin: Any) -> None:
        """Kill the writer's connection while its INSERT waits for the table lock."""
        async with admin.cursor() as cur:
            while True:
                await cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s "
                                  "AND info LIKE 'INSERT INTO file_blob_chunks%%'", (d.database,))
                rows = await cur.fetchall()
                if rows:
                    break
                await asyncio.sleep(0.01)
            for (conn_id,) in rows:
                await cur.execute(f"KILL CONNECTION {int(conn_id)}")
                killed.append(int(conn_id))
            await cur.execute("UNLOCK TABLES")

    async def killed_half_way() -> AsyncIterator[bytes]:
        admin = await asyncmy.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                                      database=d.database, autocommit=True)
        try:
            for i in range(8):
                if i == 4:  # half the rows are in; the next INSERT dies in flight
                    async with admin.cursor() as cur:
                        await cur.execute("LOCK TABLES file_blob_chunks WRITE")
                    killer = asyncio.get_running_loop().create_task(kill_the_blocked_insert(admin))
                yield os.urandom(SMALL_CHUNK)
            await killer
        finally:
            admin.close()

    with pytest.raises(BlobError):
        await blobs.put_part(upload, 1, killed_half_way())
    assert killed
    assert await blobs.list_parts(upload) == []
    assert await count(dsn, "file_blobs") == await count(dsn, "file_blob_segments") == 0
    # The writer dropped its rows itself (the pool reconnected), or left them pending for
    # the sweep; either way nothing stays once the sweep has been.
    await blobs.sweep(now_ms=int(time.time() * 1000) + 10 * 3600 * 1000)
    assert await count(dsn, "file_blob_chunks") == await count(dsn, "file_blob_pending") == 0
    # The store works on.
    key = await blobs.put_part(upload, 1, _chunks(b"after"))
    assert await read_all(blobs, key) == b"after"


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


WRITER = textwrap.dedent("""
    import asyncio, os, sys
    from tongxin.files.db_blobs import DbBlobStore
    from tongxin.store.mysql_store import MysqlStore

    async def main() -> None:
        dsn, what = sys.argv[1], sys.argv[2]
        store = DbBlobStore(MysqlStore.from_dsn(dsn, 2), chunk_size=16384, sweep_interval=0)
        await store.open()

        async def slow():
            for i in range(64):
                yield os.urandom(16384)
                await asyncio.sleep(0.05)

        if what == "part":
            await store.put_part("a" * 32, 1, slow())
        else:  # put_object's bytes are in memory; the rows still go one at a time
            store.chunk_size = 256
            await store.put_object("audit-archive/t/manifest.json", os.urandom(1024 * 1024))

    asyncio.run(main())
""")


async def _kill_writer_half_way(dsn: str, what: str) -> None:
    """Run a writer process and SIGKILL it once some of its rows are in the database."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, dsn, what)
    try:
        async def some_rows() -> bool:
            assert proc.returncode is None, "the writer finished before it was killed"
            return await count(dsn, "file_blob_chunks") >= 4

        await wait_for("the writer's first rows", some_rows)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()


async def test_a_writer_killed_half_way_leaves_nothing_visible_and_is_swept(
        blobs: DbBlobStore, dsn: str) -> None:
    await _kill_writer_half_way(dsn, "part")
    assert await blobs.list_parts("a" * 32) == []
    assert await count(dsn, "file_blobs") == 0
    assert await count(dsn, "file_blob_pending") == 1  # what the sweep goes by
    left = await count(dsn, "file_blob_chunks")
    assert left >= 4
    # A sweep that does not find it stale yet leaves it (it might be a slow writer).
    assert await blobs.sweep() == 0
    assert await count(dsn, "file_blob_chunks") == left
    assert await blobs.sweep(now_ms=int(time.time() * 1000) + 2 * 3600 * 1000) == 1
    assert await count(dsn, "file_blob_chunks") == await count(dsn, "file_blob_pending") == 0


async def test_an_interrupted_put_object_leaves_the_old_bytes(blobs: DbBlobStore, dsn: str) -> None:
    key = "audit-archive/t/manifest.json"
    await blobs.put_object(key, b"old manifest")
    await _kill_writer_half_way(dsn, "object")
    assert await read_all(blobs, key) == b"old manifest"
    await blobs.sweep(now_ms=int(time.time() * 1000) + 2 * 3600 * 1000)
    assert await read_all(blobs, key) == b"old manifest"
    # A replacement that completes takes over, and the old content's rows go.
    new = os.urandom(3 * SMALL_CHUNK + 5)
    await blobs.put_object(key, new)
    assert await read_all(blobs, key) == new
    assert await read_all(blobs, key, SMALL_CHUNK - 2, 2 * SMALL_CHUNK + 2) == \
        new[SMALL_CHUNK - 2:2 * SMALL_CHUNK + 2]
    assert await count(dsn, "file_blob_chunks") == 4
    assert await count(dsn, "file_blob_pending") == 0


async def test_assembled_files_keep_their_bytes_when_the_parts_go(
        blobs: DbBlobStore, dsn: str) -> None:
    upload = new_upload_id()
    one, two = os.urandom(SMALL_CHUNK * 2 + 1), os.urandom(7)
    k1 = await blobs.put_part(upload, 1, _chunks(one))
    k2 = await blobs.put_part(upload, 2, _chunks(two))
    rows = await count(dsn, "file_blob_chunks")
    key = await blobs.assemble([k1, k2], "f_" + upload)
    assert await count(dsn, "file_blob_chunks") == rows  # named, not copied
    await blobs.delete([k1, k2])
    assert await blobs.list_parts(upload) == []
    assert await read_all(blobs, key) == one + two
    assert await read_all(blobs, key, len(one) - 1, len(one) + 2) == (one + two)[len(one) - 1:len(one) + 2]
    with pytest.raises(BlobNotFound):
        await blobs.assemble([k1], "f_" + "0" * 32)
    await blobs.delete([key])
    assert await count(dsn, "file_blob_chunks") == await count(dsn, "file_blob_pending") == 0
    with pytest.raises(BlobNotFound):
        await read_all(blobs, key)


# ---- metadata through two nodes' pools --------------------------------------------------

async def test_two_nodes_completing_and_recording_parts_race_safely(dsn: str) -> None:
    metas = [MysqlFileMeta(MysqlStore.from_dsn(dsn, 2), owned=True) for _ in range(2)]
    for m in metas:
        await m.open()
    try:
        a, b = metas
        uid = new_upload_id()
        await a.create_upload(UploadRow(uid, "u_a", "d:u_a:u_b", "名字.bin", 2 * PART, "x/y", "",
                                        "", PART, 2, 1, 10**15))
        assert await a.record_part(PartRow(uid, 1, PART, "s1", "k1"), 10**15) is None
        assert await b.record_part(PartRow(uid, 2, PART, "s2", "k2"), 10**15) is None
        assert await b.record_part(PartRow(uid, 2, PART, "s2", "k2b"), 10**15) == "k2"
        file = FileRow("f_" + uid, "d:u_a:u_b", "u_a", "名字.bin", 2 * PART, "x/y", "h", "s",
                       "blobs/xx/f", 2)
        # Node a assembled k1 + k2, but node b replaced part 2 meanwhile.
        with pytest.raises(PartsChanged):
            await a.complete(uid, file, ["k1", "k2"])
        await a.complete(uid, file, ["k1", "k2b"])
        assert (await b.get_file(file.id)) == file
        assert (await b.get_upload(uid)).file_id == file.id  # type: ignore[union-attr]
        assert await b.list_parts(uid) == []
        with pytest.raises(NoSuchUpload):
            await b.record_part(PartRow(uid, 1, PART, "s1", "k1c"), 10**15)
        with pytest.raises(NoSuchUpload):
            await b.complete(uid, file, [])
        assert await b.delete_upload(uid, expired_before=1) is False
        assert await b.delete_upload(uid) is True
        assert await count(dsn, "uploads") == await count(dsn, "upload_parts") == 0
    finally:
        for m in metas:
            await m.close()


# ---- the audit archive in the database ----------------------------------------------------

async def test_the_audit_archive_goes_into_the_database(dsn: str, tmp_path: Path) -> None:
    from conftest import make_config

    from tongxin.compliance.service import archive_objects

    cfg = make_config(tmp_path, storage={"backend": "mysql", "mysql_dsn": dsn},
                      compliance={"audit_archive_backend": "database"})
    objects = archive_objects(cfg)
    name = parse_dsn(dsn).database
    assert objects.describe() == f"database {name}/audit-archive/{name}/"
    try:
        assert await objects.get("manifest.json") is None
        await objects.put("manifest.json", b'{"v": 1}')
        await objects.put("manifest.json", b'{"v": 2}')
        segment = os.urandom(300_000)
        await objects.put("audit-000000000001-000000000100.jsonl.zst", segment)
        assert await objects.get("manifest.json") == b'{"v": 2}'
        assert await objects.get("audit-000000000001-000000000100.jsonl.zst") == segment
        keys = sorted(r[0].decode() for r in await sql(dsn, "SELECT blob_key FROM file_blobs"))
        assert keys == [f"audit-archive/{name}/audit-000000000001-000000000100.jsonl.zst",
                        f"audit-archive/{name}/manifest.json"]
        await objects.delete(["audit-000000000001-000000000100.jsonl.zst"])
        assert await objects.get("audit-000000000001-000000000100.jsonl.zst") is None
        assert await count(dsn, "file_blob_chunks") == 1  # the manifest's one row
    finally:
        await objects.close()


@pytest.mark.parametrize("section", ["files:\n  backend: database\n",
                                     "compliance:\n  audit_archive_backend: database\n"])
def test_database_backends_need_the_mysql_store(tmp_path: Path, section: str) -> None:
    from tongxin.config import ConfigError, load_config

    path = tmp_path / "tongxin.yml"
    path.write_text(section, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"needs storage\.backend mysql"):
        load_config(path)
    path.write_text(section + "storage:\n  backend: mysql\n", encoding="utf-8")
    load_config(path)

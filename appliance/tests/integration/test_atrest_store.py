"""Encryption at rest on the real stores and blob store: what lies on disk (or in a MariaDB
table) holds no plaintext, and everything still reads back through the API."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from conftest import NodeFactory, RunningNode
from engines import storage_section
from test_files import s3_bucket, s3_keys, s3_server  # noqa: F401 - fixtures

from tongxin.atrest.blobs import sealed_file_length
from tongxin.atrest.keyring import is_sealed
from tongxin.client import FileApiError
from tongxin.proto import tongxin_pb2 as pb
from tongxin.server.admin_api import ADMIN_API
from tongxin.store.dsn import parse_dsn


@pytest.fixture(params=["sqlite", "mysql"])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    async with storage_section(str(request.param)) as section:
        yield section


async def raw_contents(rn: RunningNode) -> list[bytes]:
    """Every message's content column exactly as the database holds it."""
    if rn.cfg.storage.backend == "sqlite":
        with sqlite3.connect(rn.cfg.sqlite_file) as db:
            return [bytes(r[0]) for r in db.execute("SELECT content FROM messages")]
    import asyncmy

    d = parse_dsn(rn.cfg.storage.mysql_dsn)
    conn = await asyncmy.connect(host=d.host, port=d.port, user=d.user, password=d.password,
                                 database=d.database)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT content FROM messages")
            return [bytes(r[0]) for r in await cur.fetchall()]
    finally:
        conn.close()


async def test_messages_are_sealed_in_the_table_and_read_back(
        storage: dict[str, Any], node_factory: NodeFactory, tmp_path: Path) -> None:
    # storage first: its database is dropped only after the nodes have stopped.
    home = tmp_path / "home"
    # First without encryption: these rows stay plaintext (a store from before the upgrade).
    rn: RunningNode = await node_factory(home=home, storage={**storage, "encryption": False})
    assert rn.node.keyring is None
    alice = await rn.user("alice")
    await rn.user("bob")
    conv = (await alice.direct("bob")).conversation_id
    old = f"legacy-{uuid.uuid4().hex}"
    await alice.send_text(conv, old)
    await rn.stop()

    # Encryption on, and the migration's allowance to read the old plaintext rows.
    rn = await node_factory(home=home, storage={**storage, "allow_unsealed_reads": True})
    assert rn.node.keyring is not None
    alice, bob = await rn.user("alice"), await rn.user("bob")
    secrets = [f"secret-{i}-{uuid.uuid4().hex}" for i in range(5)]
    acks = [await alice.send_text(conv, s) for s in secrets]
    await alice.edit(conv, acks[1].seq, "edited-" + secrets[1])
    dup = await alice.send_text(conv, "ignored", client_msg_id=acks[2].client_msg_id)
    assert dup.seq == acks[2].seq  # a re-send answered from the (sealed) log

    texts = [m.content.text for m in await bob.sync_all(conv)]
    assert old in texts and secrets[0] in texts and "edited-" + secrets[1] in texts
    assert secrets[4] in texts

    raw = await raw_contents(rn)
    blob = b"".join(raw)
    assert old.encode() in blob  # the old row is still plaintext, and still readable
    comp = rn.runner.app[ADMIN_API].c
    reads = [r for r in await comp.store.audit_records(0, 1000)
             if r.event == "atrest.unsealed_read"]
    assert reads and all(f'"{conv}#1"' not in r.body for r in reads)  # seq 1: a system entry
    assert any(f'"{conv}#2"' in r.body for r in reads), [r.body for r in reads]
    for s in secrets:
        assert s.encode() not in blob
    sealed = [r for r in raw if is_sealed(r)]
    assert len(sealed) >= len(secrets)  # five sends and the edit entry
    assert rn.node.store.keyring is rn.node.keyring  # type: ignore[attr-defined]

    # The token key is sealed on disk too, and logins still work after a restart.
    token_file = home / "secrets" / "token.key"
    assert is_sealed(token_file.read_bytes())
    await rn.stop()
    # Without the allowance the old plaintext row is withheld; the sealed ones still read.
    rn = await node_factory(home=home, storage=storage)
    carol = await rn.user("bob")
    log = await carol.sync_all(conv)
    assert secrets[3] in [m.content.text for m in log]
    withheld = [m for m in log if m.unavailable]
    assert len(withheld) == 1 and not withheld[0].HasField("content")
    assert old not in [m.content.text for m in log]


async def test_swapped_tampered_or_plaintext_rows_are_withheld_and_the_rest_syncs(
        node_factory: NodeFactory) -> None:
    rn: RunningNode = await node_factory()
    alice = await rn.user("alice")
    bob = await rn.user("bob")
    conv = (await alice.direct("bob")).conversation_id
    await rn.user("carol")
    other = (await alice.direct("carol")).conversation_id
    a = await alice.send_text(conv, "first message")
    b = await alice.send_text(conv, "second message")
    c = await alice.send_text(conv, "third message")
    d = await alice.send_text(conv, "fourth message")
    with sqlite3.connect(rn.cfg.sqlite_file) as db:
        rows = dict(db.execute("SELECT seq, content FROM messages WHERE conversation_id=?",
                               (conv,)).fetchall())
        # Swap two ciphertexts: each is intact, but bound to the other row.
        db.execute("UPDATE messages SET content=? WHERE conversation_id=? AND seq=?",
                   (rows[b.seq], conv, a.seq))
        db.execute("UPDATE messages SET content=? WHERE conversation_id=? AND seq=?",
                   (rows[a.seq], conv, b.seq))
        # Plaintext written straight into the table, as someone with database access could.
        db.execute("UPDATE messages SET content=? WHERE conversation_id=? AND seq=?",
                   (pb.Content(text="planted").SerializeToString(), conv, d.seq))
    page = await bob.sync(conv, after_seq=0, limit=100)
    by_seq = {m.seq: m for m in page.messages}
    assert [s for s, m in sorted(by_seq.items()) if m.unavailable] == [a.seq, b.seq, d.seq]
    assert by_seq[c.seq].content.text == "third message"  # the neighbour is served
    assert not any(m.content.text == "planted" for m in page.messages)
    assert all(not m.HasField("content") for m in page.messages if m.unavailable)
    # Tampered: one flipped bit in the ciphertext of the good row.
    with sqlite3.connect(rn.cfg.sqlite_file) as db:
        bad = bytearray(rows[c.seq])
        bad[-20] ^= 1
        db.execute("UPDATE messages SET content=? WHERE conversation_id=? AND seq=?",
                   (bytes(bad), conv, c.seq))
    page = await bob.sync(conv, after_seq=c.seq - 1, limit=1)
    assert [(m.seq, m.unavailable) for m in page.messages] == [(c.seq, True)]
    failures = [r for r in await rn.runner.app[ADMIN_API].c.store.audit_records(0, 1000)
                if r.event == "atrest.integrity"]
    assert failures and all(r.outcome == "failed" for r in failures)
    assert f'"{conv}#{d.seq}"' in failures[0].body and "at-rest seal" in failures[0].body
    # The node is still up and other conversations work.
    await alice.send_text(other, "still fine")
    assert (await alice.sync_all(other))[-1].content.text == "still fine"


async def test_file_blobs_are_sealed_on_disk_and_ranges_still_read(
        node_factory: NodeFactory) -> None:
    part = 65536 * 2
    rn: RunningNode = await node_factory(files={"part_size": part})
    alice = await rn.user("alice")
    bob = await rn.user("bob")
    conv = (await alice.direct("bob")).conversation_id
    marker = b"PLAINTEXT-MARKER-" + uuid.uuid4().hex.encode()
    buf = bytearray(os.urandom(3 * part + 12345))
    for at in (0, 70000, part + 3, len(buf) - len(marker)):
        buf[at:at + len(marker)] = marker
    data = bytes(buf)
    info = await alice.upload_file(conv, data, name="secret.bin", parallel=3)
    on_disk = [p for p in rn.cfg.files_dir.rglob("*") if p.is_file()]
    assert on_disk
    for p in on_disk:
        assert marker not in p.read_bytes()
    assert await bob.download_file(info.file_id) == data
    for start, stop in ((0, 10), (65530, 65546), (part - 1, part + 1), (70000, 70000 + 40),
                        (len(data) - 100, None), (2 * part + 5, 3 * part + 7)):
        want = data[start:stop]
        assert await bob.download_file(info.file_id, range=(start, stop)) == want, (start, stop)
    # A chunk altered on disk: the download fails instead of returning altered bytes.
    blob = next(p for p in on_disk if "blobs" in p.parts)
    raw = bytearray(blob.read_bytes())
    raw[100] ^= 1
    blob.write_bytes(bytes(raw))
    # The first chunk of the range is checked before the headers: a clean 500 naming
    # the integrity failure (not a cut 200/206), logged and audited.
    for span in ((0, 10), None):
        with pytest.raises(FileApiError) as refused:
            await bob.download_file(info.file_id, range=span)
        assert (refused.value.status, refused.value.error) == (500, "INTEGRITY_FAILURE")
        assert info.file_id in refused.value.message
    assert await bob.download_file(info.file_id, range=(part, part + 10)) == data[part:part + 10]
    comp = rn.runner.app[ADMIN_API].c
    failures = [r.fields() for r in await comp.store.audit_records(0, 100000)
                if r.event == "file.integrity"]
    assert [(r["outcome"], r["target"], r["actor"]) for r in failures] == [
        ("failed", info.file_id, bob.user_id)] * 2
    assert "integrity failure" in failures[0]["details"]["reason"]


async def test_s3_objects_are_sealed(
        node_factory: NodeFactory,
        s3_bucket: tuple[dict[str, str], str]) -> None:  # noqa: F811 - the imported fixture
    env, bucket = s3_bucket
    part = 5 * 1024 * 1024
    rn: RunningNode = await node_factory(files={
        "backend": "s3", "part_size": part, "s3_endpoint": env["TONGXIN_S3_ENDPOINT"],
        "s3_bucket": bucket, "s3_access_key": env["TONGXIN_S3_ACCESS_KEY"],
        "s3_secret_key": env["TONGXIN_S3_SECRET_KEY"]})
    alice = await rn.user("alice")
    bob = await rn.user("bob")
    conv = (await alice.direct("bob")).conversation_id
    marker = b"S3-PLAINTEXT-" + uuid.uuid4().hex.encode()
    data = marker + os.urandom(part) + marker + os.urandom(999) + marker
    info = await alice.upload_file(conv, data, name="s3.bin")
    keys = await s3_keys(env, bucket)
    assert keys == [f"blobs/{info.file_id[2:4]}/{info.file_id}"]
    async with get_session().create_client(
            "s3", endpoint_url=env["TONGXIN_S3_ENDPOINT"], region_name="us-east-1",
            aws_access_key_id=env["TONGXIN_S3_ACCESS_KEY"],
            aws_secret_access_key=env["TONGXIN_S3_SECRET_KEY"]) as s3:
        obj = await s3.get_object(Bucket=bucket, Key=keys[0])
        stored = await obj["Body"].read()
    assert marker not in stored and stored[:4] == b"\x00TB\x01"
    assert len(stored) == sealed_file_length(len(data), part)
    at = part + len(marker) - 5
    assert await bob.download_file(info.file_id, range=(at, at + 30)) == data[at:at + 30]


async def test_files_from_before_encryption_still_download(node_factory: NodeFactory,
                                                           tmp_path: Path) -> None:
    home = tmp_path / "home"
    rn: RunningNode = await node_factory(home=home, storage={"encryption": False})
    alice = await rn.user("alice")
    await rn.user("bob")
    conv = (await alice.direct("bob")).conversation_id
    data = b"plain before the upgrade " * 5000
    old = await alice.upload_file(conv, data, name="old.bin")
    await rn.stop()
    rn = await node_factory(home=home)
    bob = await rn.user("bob")
    new = await bob.upload_file(conv, data, name="new.bin")
    stored = {p.name: p.read_bytes() for p in rn.cfg.files_dir.rglob("f_*")}
    assert stored[old.file_id] == data  # never rewritten
    assert data[:100] not in stored[new.file_id]
    for f in (old, new):
        assert await bob.download_file(f.file_id) == data
        assert await bob.download_file(f.file_id, range=(70000, 70100)) == data[70000:70100]


async def test_report_confidentiality_items_read_the_real_evidence(
        node_factory: NodeFactory, tmp_path: Path) -> None:
    """DC-1 passes on the evidence of encryption at rest (config, master key, data keys,
    sealed secrets) and turns red when a piece is removed; DC-2 follows the E2EE settings."""
    import copy

    from tongxin.atrest.keyring import DekStore
    from tongxin.compliance.report import build_report

    rn: RunningNode = await node_factory()
    alice = await rn.user("alice")
    await rn.user("bob")
    await alice.send_text((await alice.direct("bob")).conversation_id, "hello")
    comp = rn.runner.app[ADMIN_API].c
    deks: DekStore = rn.node.store  # type: ignore[assignment]

    async def item(cfg: Any, item_id: str, with_deks: bool = True) -> dict[str, Any]:
        report = await build_report(cfg, comp, await rn.node.store.list_users(),
                                    deks=deks if with_deks else None)
        return next(i for i in report["items"] if i["id"] == item_id)

    dc1 = await item(rn.cfg, "DC-1")
    assert dc1["status"] == "pass", dc1
    ev = "\n".join(dc1["evidence"])
    assert "storage.encryption = true" in ev and f"file {rn.cfg.master_key_file}" in ev
    n = len(await deks.data_keys(-1, 1000))
    assert n >= 1 and f"data keys in the store: {n} under 1 KEK(s)" in ev
    for name in ("token.key", "totp.key", "audit_sign.key"):
        assert f"secrets/{name}: mode 0o600, sealed" in ev
    assert not any("unencrypted" in f for f in dc1["findings"])
    # The evidence removed, one piece at a time: no longer a pass.
    off = copy.deepcopy(rn.cfg)
    off.storage.encryption = False
    dc1 = await item(off, "DC-1")
    assert dc1["status"] == "gap" and any("stored unencrypted" in f for f in dc1["findings"])
    assert "storage.encryption" in dc1["remedy"]
    assert (await item(rn.cfg, "DC-1", with_deks=False))["status"] == "gap"
    rn.cfg.master_key_file.chmod(0o644)
    try:
        dc1 = await item(rn.cfg, "DC-1")
        assert dc1["status"] == "fail" and any("master key file" in f for f in dc1["findings"])
    finally:
        rn.cfg.master_key_file.chmod(0o600)

    dc2 = await item(rn.cfg, "DC-2")  # the default: plaintext content is accepted
    assert dc2["status"] == "gap" and any("e2ee.required is off" in f for f in dc2["findings"])
    e2ee = copy.deepcopy(rn.cfg)
    e2ee.e2ee.required = True
    assert (await item(e2ee, "DC-2"))["status"] == "gap"  # no escrow
    e2ee.e2ee.escrow_public_key_file = str(tmp_path / "escrow.pub")
    # Escrow without the root's statement, and with a plain private key on the node.
    e2ee.e2ee.escrow_private_key_file = str(tmp_path / "escrow.key")
    dc2 = await item(e2ee, "DC-2")
    assert dc2["status"] == "gap" and any("escrow_statement_file" in f for f in dc2["findings"])
    assert any("plain file on the node" in f for f in dc2["findings"])
    e2ee.e2ee.escrow_private_key_file = ""
    e2ee.e2ee.escrow_sealed_key_file = str(tmp_path / "escrow.sealed.json")
    e2ee.e2ee.escrow_statement_file = str(tmp_path / "escrow-statement.json")
    dc2 = await item(e2ee, "DC-2")
    assert dc2["status"] == "pass", dc2
    assert any("no one person can decrypt" in e for e in dc2["evidence"])
    assert "e2ee.required = true: plaintext CHAT content is refused" in dc2["evidence"]
    assert any(e.startswith("compliance escrow: on") for e in dc2["evidence"])

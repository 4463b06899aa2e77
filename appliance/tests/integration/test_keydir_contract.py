"""The key directory's storage (KeyDirStore) against SQLite and the MySQL-protocol adapter
on the real MariaDB and TiDB: devices, one-time prekeys, and the cross-signing tables
(docs/e2ee.md 9.1): one user key per user, its backup replaced only under the same key,
device signatures kept with the identity key they signed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_store_contract import Opener, backend, opener  # noqa: F401 (fixtures)

from tongxin.keydir.mysql_keydir import MysqlKeyDir
from tongxin.keydir.ports import DeviceRow, DeviceSignatureRow, KeyDirStore, PreKeyRow, UserKeyRow
from tongxin.keydir.sqlite_keydir import SqliteKeyDir
from tongxin.store.mysql_store import MysqlStore

pytestmark = pytest.mark.integration


@pytest.fixture
async def keydir(opener: Opener, tmp_path: Path) -> AsyncIterator[KeyDirStore]:  # noqa: F811
    chat = await opener()
    store: KeyDirStore = (MysqlKeyDir(chat) if isinstance(chat, MysqlStore) else
                          SqliteKeyDir(tmp_path / "keydir.db", "FULL", 64, "keydir"))
    await store.open()
    yield store
    await store.close()


async def test_devices_and_one_time_prekeys(keydir: KeyDirStore) -> None:
    row = DeviceRow("u_b", "b1", "international", b"ik1", 1, b"spk", b"sig", 10)
    await keydir.put_device(row, new_identity=True)
    assert await keydir.get_device("u_b", "b1") == row
    assert await keydir.add_one_time("u_b", "b1", [PreKeyRow(i, b"k%d" % i, b"s")
                                                   for i in (3, 1, 2)], 5) == 3
    taken = await keydir.take_one_time("u_b", "b1")
    assert taken is not None and taken.key_id == 1
    assert await keydir.count_one_time("u_b", "b1") == 2
    # A new identity key drops the prekeys its predecessor signed.
    await keydir.put_device(DeviceRow("u_b", "b1", "international", b"ik2", 2, b"spk2", b"s2",
                                      11), new_identity=True)
    assert await keydir.count_one_time("u_b", "b1") == 0
    assert [d.identity_key for d in await keydir.devices(["u_b", "u_x"], 5)] == [b"ik2"]


async def test_one_user_key_per_user_and_its_backup(keydir: KeyDirStore) -> None:
    first = UserKeyRow("u_b", "international", b"key-1", b"backup-1", 1)
    assert await keydir.insert_user_key(first)
    assert not await keydir.insert_user_key(UserKeyRow("u_b", "international", b"key-2",
                                                       b"backup-2", 2))
    assert await keydir.user_keys(["u_b", "u_none"]) == [first]
    # The backup is replaced only under the key it belongs to.
    await keydir.set_user_key_backup("u_b", b"key-2", b"forged", 3)
    assert (await keydir.user_keys(["u_b"]))[0].backup == b"backup-1"
    await keydir.set_user_key_backup("u_b", b"key-1", b"backup-1b", 4)
    got = (await keydir.user_keys(["u_b"]))[0]
    assert (got.backup, got.updated_at) == (b"backup-1b", 4)
    # The store is still usable after the refused insert (a MySQL transaction that met a
    # duplicate key is not left half-open).
    assert await keydir.insert_user_key(UserKeyRow("u_c", "international", b"k", b"", 5))


async def test_device_signatures_are_replaced_per_device(keydir: KeyDirStore) -> None:
    await keydir.put_device_signature(DeviceSignatureRow("u_b", "b1", b"ik1", b"sig1"))
    await keydir.put_device_signature(DeviceSignatureRow("u_b", "b2", b"ik2", b"sig2"))
    await keydir.put_device_signature(DeviceSignatureRow("u_b", "b1", b"ik1b", b"sig1b"))
    await keydir.put_device_signature(DeviceSignatureRow("u_c", "c1", b"ikc", b"sigc"))
    got = sorted(await keydir.device_signatures(["u_b"]), key=lambda r: r.device_id)
    assert got == [DeviceSignatureRow("u_b", "b1", b"ik1b", b"sig1b"),
                   DeviceSignatureRow("u_b", "b2", b"ik2", b"sig2")]

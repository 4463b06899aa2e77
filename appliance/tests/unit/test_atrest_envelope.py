"""Envelope encryption at rest: records, providers, rotation (tongxin.atrest)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from tongxin.atrest import blobs
from tongxin.atrest.errors import IntegrityError, KeyProviderError, UnknownDataKey
from tongxin.atrest.keyring import DataKeyRow, Keyring, is_sealed
from tongxin.atrest.providers import CommandKeyProvider, FileKeyProvider
from tongxin.atrest.records import load_or_create_secret, message_aad, open_entries
from tongxin.atrest.rotate import key_status, rotate
from tongxin.chat.service import entry_to_pb
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import Entry


class MemoryDeks:
    """The DekStore port in memory (the SQLite and MySQL stores implement it for real)."""

    def __init__(self) -> None:
        self.rows: dict[int, DataKeyRow] = {}

    async def data_keys(self, after_id: int, limit: int) -> list[DataKeyRow]:
        return [self.rows[k] for k in sorted(self.rows) if k > after_id][:limit]

    async def data_key(self, key_id: int) -> DataKeyRow | None:
        return self.rows.get(key_id)

    async def add_data_key(self, row: DataKeyRow) -> bool:
        if row.id in self.rows:
            return False
        self.rows[row.id] = DataKeyRow(row.id, row.suite, row.kek_id, row.wrapped, row.created_at)
        return True

    async def rewrap_data_key(self, key_id: int, old_kek_id: str, new_kek_id: str,
                              wrapped: bytes) -> bool:
        row = self.rows.get(key_id)
        if row is None or row.kek_id != old_kek_id:
            return False
        row.kek_id, row.wrapped = new_kek_id, wrapped
        return True


async def keyring(tmp_path: Path, deks: MemoryDeks | None = None, suite: str = "gm") -> Keyring:
    provider = FileKeyProvider(tmp_path / "master.key", suite, create=True)
    ring = Keyring(provider, deks or MemoryDeks(), suite)
    await ring.start()
    return ring


@pytest.mark.parametrize("suite", ["gm", "international"])
async def test_seal_round_trip_and_format(tmp_path: Path, suite: str) -> None:
    ring = await keyring(tmp_path, suite=suite)
    aad = message_aad("c1", 7)
    sealed = ring.seal(b"hello secret", aad)
    assert is_sealed(sealed) and b"hello secret" not in sealed
    assert sealed[:4] == b"\x00TX\x01"
    assert ring.open(sealed, aad) == b"hello secret"
    assert ring.seal(b"hello secret", aad) != sealed  # a fresh nonce every time
    row = next(iter(ring.store.rows.values()))  # type: ignore[attr-defined]
    assert row.suite == suite and len(row.wrapped) == 12 + (16 if suite == "gm" else 32) + 16


async def test_tampered_wrong_tag_swapped_aad_and_truncated_are_refused(tmp_path: Path) -> None:
    ring = await keyring(tmp_path)
    sealed = ring.seal(b"content of message 7", message_aad("c1", 7))
    flipped = bytearray(sealed)
    flipped[25] ^= 1  # ciphertext
    wrong_tag = sealed[:-1] + bytes([sealed[-1] ^ 0x80])
    for bad, aad in ((bytes(flipped), message_aad("c1", 7)), (wrong_tag, message_aad("c1", 7)),
                     (sealed, message_aad("c1", 8)), (sealed, message_aad("c2", 7))):
        with pytest.raises(IntegrityError, match="failed authentication"):
            ring.open(bad, aad)
    with pytest.raises(IntegrityError, match="truncated"):
        ring.open(sealed[:30], message_aad("c1", 7))
    with pytest.raises(IntegrityError, match="known version"):
        ring.open(b"\x00TX\x02" + sealed[4:], message_aad("c1", 7))


async def test_wrong_kek_cannot_unwrap_and_unknown_dek_is_named(tmp_path: Path) -> None:
    deks = MemoryDeks()
    ring = await keyring(tmp_path / "a", deks)
    sealed = ring.seal(b"x", b"aad")
    # Another installation's key file over the same store: its KEK is not the one used.
    other = Keyring(FileKeyProvider(tmp_path / "b" / "master.key", create=True), deks)
    with pytest.raises(UnknownDataKey):
        other.open(sealed, b"aad")
    with pytest.raises(KeyProviderError, match="is not in"):
        await other.open_async(sealed, b"aad")
    # Same KEK id but different key bytes: the wrapping fails authentication.
    kek_line = (tmp_path / "a" / "master.key").read_text().split()
    forged = tmp_path / "c" / "master.key"
    forged.parent.mkdir()
    forged.write_text(f"tongxin-kek-v1 {kek_line[1]} gm {'A' * 22}==\n")
    forged.chmod(0o600)
    with pytest.raises(KeyProviderError, match="failed authentication"):
        await Keyring(FileKeyProvider(forged), deks).open_async(sealed, b"aad")
    # A wrapped DEK moved to another id does not unwrap either.
    row = next(iter(deks.rows.values()))
    deks.rows[row.id + 1] = DataKeyRow(row.id + 1, row.suite, row.kek_id, row.wrapped, 0)
    fresh = Keyring(FileKeyProvider(tmp_path / "a" / "master.key"), deks)
    moved = sealed[:4] + (row.id + 1).to_bytes(4, "big") + sealed[8:]
    with pytest.raises(KeyProviderError, match="failed authentication"):
        await fresh.open_async(moved, b"aad")


async def test_a_dek_missing_from_the_store_is_an_integrity_error(tmp_path: Path) -> None:
    ring = await keyring(tmp_path)
    sealed = ring.seal(b"x", b"aad")
    fresh = Keyring(ring.provider, MemoryDeks())
    with pytest.raises(IntegrityError, match="does not exist"):
        await fresh.open_async(sealed, b"aad")


async def test_processes_share_the_young_dek(tmp_path: Path) -> None:
    deks = MemoryDeks()
    first = await keyring(tmp_path, deks)
    second = Keyring(FileKeyProvider(tmp_path / "master.key"), deks)
    await second.start()
    assert len(deks.rows) == 1
    assert second.open(first.seal(b"m", b"a"), b"a") == b"m"


def test_key_file_is_created_0600_and_loose_modes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "master.key"
    FileKeyProvider(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    for mode in (0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(KeyProviderError, match="chmod 600"):
            FileKeyProvider(path)
    path.chmod(0o600)
    FileKeyProvider(path, create=True)  # an existing file is kept, not replaced
    assert path.read_bytes() == before


@pytest.mark.parametrize("text, needle", [
    ("", "holds no key"),
    ("tongxin-kek-v1 zz gm AAAA\n", "not a"),
    ("tongxin-kek-v1 0123456789abcdef gm !!!!\n", "base64"),
    ("tongxin-kek-v1 0123456789abcdef gm AAAA\n", "16 bytes"),
    ("tongxin-kek-v1 0123456789abcdef rot13 AAAAAAAAAAAAAAAAAAAAAA==\n", "unknown crypto suite"),
])
def test_bad_key_files_are_refused(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "master.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    with pytest.raises(KeyProviderError, match=needle):
        FileKeyProvider(path)
    with pytest.raises(KeyProviderError, match="does not exist"):
        FileKeyProvider(tmp_path / "absent.key")


async def test_rotation_rewraps_every_dek_and_old_data_still_opens(tmp_path: Path) -> None:
    deks = MemoryDeks()
    path = tmp_path / "master.key"
    ring = await keyring(tmp_path, deks)
    old_kek = ring.provider.current_id()
    sealed = [ring.seal(b"before %d" % i, b"row%d" % i) for i in range(3)]
    # More DEKs, as other nodes make them over time.
    for _ in range(250):
        await ring._new_dek()
    assert len(deks.rows) == 251
    wrapped_before = {k: r.wrapped for k, r in deks.rows.items()}
    seen: list[int] = []
    res = await rotate(FileKeyProvider(path), deks, batch=40, progress=seen.append)
    assert res.complete and not res.resumed and res.rewrapped == 251
    assert res.kek_id != old_kek and res.retired == [old_kek]
    assert seen == sorted(seen) and seen[-1] == 251
    assert {r.kek_id for r in deks.rows.values()} == {res.kek_id}
    assert all(deks.rows[k].wrapped != w for k, w in wrapped_before.items())
    assert old_kek not in path.read_text()
    # A process started after the rotation (only the new KEK) opens data sealed before it.
    after = Keyring(FileKeyProvider(path), deks)
    for i, s in enumerate(sealed):
        assert await after.open_async(s, b"row%d" % i) == b"before %d" % i
    status = await key_status(FileKeyProvider(path), deks)
    assert status.pending == 0 and status.by_kek == {res.kek_id: 251}


async def test_interrupted_rotation_resumes_and_keeps_the_old_kek(tmp_path: Path) -> None:
    deks = MemoryDeks()
    path = tmp_path / "master.key"
    ring = await keyring(tmp_path, deks)
    for _ in range(9):
        await ring._new_dek()
    old_kek = ring.provider.current_id()
    sealed = ring.seal(b"kept", b"aad")
    part = await rotate(FileKeyProvider(path), deks, batch=3, max_batches=2)
    assert not part.complete and part.rewrapped == 6 and part.retired == []
    status = await key_status(FileKeyProvider(path), deks)
    assert status.pending == 4 and status.by_kek[old_kek] == 4
    assert old_kek in path.read_text()  # still needed by the rows not yet re-wrapped
    assert await Keyring(FileKeyProvider(path), deks).open_async(sealed, b"aad") == b"kept"
    done = await rotate(FileKeyProvider(path), deks, batch=3)
    assert done.resumed and done.complete and done.kek_id == part.kek_id
    assert done.rewrapped == 4 and done.retired == [old_kek]
    assert len(path.read_text().splitlines()) == 1


async def test_a_running_node_wraps_new_deks_under_the_rotated_kek(tmp_path: Path) -> None:
    deks = MemoryDeks()
    ring = await keyring(tmp_path, deks)  # its provider read the file before the rotation
    res = await rotate(FileKeyProvider(tmp_path / "master.key"), deks)
    dek = await ring._new_dek()
    assert deks.rows[dek.id].kek_id == res.kek_id


KMS = r'''
import base64, json, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
state_file = os.environ["KMS_STATE"]
state = json.load(open(state_file)) if os.path.exists(state_file) else {"keys": {}, "current": ""}
def save():
    json.dump(state, open(state_file, "w"))
def new_key():
    kid = "kms-%d" % (len(state["keys"]) + 1)
    state["keys"][kid] = base64.b64encode(os.urandom(32)).decode()
    state["current"] = kid
    save()
if not state["current"]:
    new_key()
if os.environ.get("KMS_FAIL"):
    sys.stderr.write("kms: hsm offline\n")
    sys.exit(7)
req = json.load(sys.stdin)
op = req["op"]
key = lambda kid: AESGCM(base64.b64decode(state["keys"][kid]))
if op == "wrap":
    nonce = os.urandom(12)
    ct = nonce + key(state["current"]).encrypt(nonce, base64.b64decode(req["plaintext"]),
                                               base64.b64decode(req["aad"]))
    out = {"key_id": state["current"], "ciphertext": base64.b64encode(ct).decode()}
elif op == "unwrap":
    ct = base64.b64decode(req["ciphertext"])
    try:
        pt = key(req["key_id"]).decrypt(ct[:12], ct[12:], base64.b64decode(req["aad"]))
    except Exception as exc:
        sys.stderr.write("kms: unwrap refused\n")
        sys.exit(3)
    out = {"plaintext": base64.b64encode(pt).decode()}
elif op == "rotate":
    new_key()
    out = {"key_id": state["current"]}
elif op == "current":
    out = {"key_id": state["current"]}
else:
    out = "nonsense"
print(json.dumps(out))
'''


async def test_kms_command_provider_wraps_rotates_and_reports_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "kms.py"
    script.write_text(KMS)
    monkeypatch.setenv("KMS_STATE", str(tmp_path / "kms.json"))
    provider = CommandKeyProvider(f"{sys.executable} {script}")
    deks = MemoryDeks()
    ring = Keyring(provider, deks, "gm")
    await ring.start()
    sealed = ring.seal(b"via kms", b"aad")
    assert next(iter(deks.rows.values())).kek_id == "kms-1"
    res = await rotate(provider, deks)
    assert res.complete and res.kek_id == "kms-2" and res.rewrapped == 1
    assert await Keyring(provider, deks).open_async(sealed, b"aad") == b"via kms"
    # The KMS refuses a wrapped key moved to another id (the AAD it was given differs).
    row = next(iter(deks.rows.values()))
    with pytest.raises(KeyProviderError, match=r"failed \(unwrap, exit 3\): kms: unwrap refused"):
        provider.unwrap(row.kek_id, row.wrapped, b"other aad")
    monkeypatch.setenv("KMS_FAIL", "1")
    with pytest.raises(KeyProviderError, match=r"exit 7\): kms: hsm offline"):
        await Keyring(provider, deks).open_async(sealed, b"aad")
    with pytest.raises(KeyProviderError, match="exit 7"):
        await Keyring(provider, MemoryDeks()).start()


def test_kms_command_bad_answers_and_commands(tmp_path: Path) -> None:
    silly = tmp_path / "silly.py"
    silly.write_text("print(" + json.dumps(json.dumps({"key_id": 5})) + ")")
    with pytest.raises(KeyProviderError, match="lacks key_id"):
        CommandKeyProvider(f"{sys.executable} {silly}").current_id()
    noise = tmp_path / "noise.py"
    noise.write_text("print('hello')")
    with pytest.raises(KeyProviderError, match="not JSON"):
        CommandKeyProvider(f"{sys.executable} {noise}").rotate()
    with pytest.raises(KeyProviderError, match="cannot run"):
        CommandKeyProvider(str(tmp_path / "absent-kms")).current_id()
    with pytest.raises(KeyProviderError, match="kms_command"):
        CommandKeyProvider("'unclosed")
    slow = tmp_path / "slow.py"
    slow.write_text("import time; time.sleep(5)")
    with pytest.raises(KeyProviderError, match="timed out"):
        CommandKeyProvider(f"{sys.executable} {slow}", timeout=0.2).current_id()


async def test_secret_files_are_sealed_and_legacy_ones_migrated(tmp_path: Path) -> None:
    ring = await keyring(tmp_path)
    path = tmp_path / "secrets" / "token.key"
    path.parent.mkdir()
    legacy = os.urandom(32)
    path.write_bytes(legacy)
    assert await load_or_create_secret(path, 32, ring) == legacy
    stored = path.read_bytes()
    assert is_sealed(stored) and legacy not in stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await load_or_create_secret(path, 32, ring) == legacy
    # A sealed secret renamed into another secret's place fails (AAD names the file).
    other = path.with_name("totp.key")
    other.write_bytes(stored)
    with pytest.raises(IntegrityError, match=r"totp\.key"):
        await load_or_create_secret(other, 32, ring)
    fresh = await load_or_create_secret(tmp_path / "secrets" / "new.key", 32, ring)
    assert await load_or_create_secret(tmp_path / "secrets" / "new.key", 32, ring) == fresh
    with pytest.raises(KeyProviderError, match="no master key"):
        await load_or_create_secret(path, 32, None)


async def _collect(gen: object) -> bytes:
    out = b""
    async for piece in gen:  # type: ignore[attr-defined]
        out += piece
    return out


async def test_chunked_blob_range_reads_and_tampering(tmp_path: Path) -> None:
    ring = await keyring(tmp_path)
    part_size = 3 * blobs.CHUNK
    data = os.urandom(2 * part_size + 1000)
    file_id = blobs.file_id_for_upload("ab" * 16)

    async def body(chunk: bytes) -> object:
        for i in range(0, len(chunk), 10000):  # odd request-body pieces
            yield chunk[i:i + 10000]

    stored = b""
    for n in (1, 2, 3):
        part = data[(n - 1) * part_size:n * part_size]
        sealed = await _collect(blobs.seal_part(ring, file_id, len(data), part_size, n,
                                                body(part)))  # type: ignore[arg-type]
        assert len(sealed) == blobs.sealed_length(len(part))
        stored += sealed
    assert len(stored) == blobs.sealed_file_length(len(data), part_size)
    assert data[:64] not in stored

    reads: list[tuple[int, int | None]] = []

    def reader(blob: bytes) -> blobs.Reader:
        async def read(start: int, stop: int | None) -> object:
            reads.append((start, stop))
            end = len(blob) if stop is None else stop
            for i in range(start, end, 7777):
                yield blob[i:min(i + 7777, end)]
        return read  # type: ignore[return-value]

    head = await blobs.read_head(reader(stored))
    assert blobs.head_part_size(head) == part_size
    for start, stop in ((0, len(data)), (5, 6), (blobs.CHUNK - 1, blobs.CHUNK + 1),
                        (part_size - 10, part_size + 10), (len(data) - 3, len(data)),
                        (100000, 300000)):
        reads.clear()
        got = await _collect(blobs.open_range(ring, file_id, len(data), part_size,
                                              reader(stored), start, stop))
        assert got == data[start:stop], (start, stop)
        if stop - start < 100:
            # Only the chunks holding the range are read (at most two here).
            assert sum((b or 0) - a for a, b in reads) <= 2 * (blobs.CHUNK + blobs.OVERHEAD)

    async def refused(blob: bytes, fid: str = file_id, size: int = len(data)) -> None:
        with pytest.raises(IntegrityError):
            await _collect(blobs.open_range(ring, fid, size, part_size, reader(blob), 0, size))

    flipped = bytearray(stored)
    flipped[blobs.CHUNK + 200] ^= 1
    await refused(bytes(flipped))
    one = blobs.CHUNK + blobs.OVERHEAD
    swapped = stored[one:2 * one] + stored[:one] + stored[2 * one:]
    await refused(swapped)  # two chunks exchanged
    await refused(stored[:-5])  # truncated
    await refused(stored, fid=blobs.file_id_for_upload("cd" * 16))  # another file's blob
    await refused(stored, size=len(data) + 1)  # the recorded size does not match


# ---- message rows: unsealed or damaged ones are withheld, their neighbours served (#16) --


def _entry(seq: int, content: bytes) -> Entry:
    return Entry("c1", "u_1", "d1", f"m{seq}", 1000 + seq, pb.CHAT, content, seq=seq)


def _text(s: str) -> bytes:
    data: bytes = pb.Content(text=s).SerializeToString()
    return data


async def test_a_plaintext_row_is_withheld_while_encrypting_and_its_neighbours_open(
        tmp_path: Path) -> None:
    """Plaintext written straight into the table used to be served as a message."""
    ring = await keyring(tmp_path)
    audited: list[tuple[str, dict[str, object]]] = []

    async def audit(event: str, fields: dict[str, object]) -> None:
        audited.append((event, fields))

    ring.audit = audit
    damaged = bytearray(ring.seal(_text("three"), message_aad("c1", 3)))
    damaged[-1] ^= 1
    entries = [_entry(1, ring.seal(_text("one"), message_aad("c1", 1))),
               _entry(2, _text("planted")),  # no seal
               _entry(3, bytes(damaged)),
               _entry(4, ring.seal(_text("four"), message_aad("c1", 4))),
               _entry(5, b"")]  # a system entry: empty content is never sealed
    await open_entries(ring, entries)
    assert [e.unavailable for e in entries] == [False, True, True, False, False]
    assert [e.content for e in entries] == [_text("one"), b"", b"", _text("four"), b""]
    assert [(ev, f["outcome"], f["rows"], f["count"]) for ev, f in audited] == [
        ("atrest.integrity", "failed", ["c1#2", "c1#3"], 2)]
    assert "without the at-rest seal" in str(audited[0][1]["reason"])
    # What a client receives: the entry in its place, marked, with no content.
    m = entry_to_pb(entries[1])
    assert m.unavailable and not m.HasField("content") and m.seq == 2 and m.kind == pb.CHAT
    assert not entry_to_pb(entries[0]).unavailable


async def test_unsealed_rows_are_served_audited_only_when_allowed(tmp_path: Path) -> None:
    ring = await keyring(tmp_path)
    audited: list[tuple[str, dict[str, object]]] = []

    async def audit(event: str, fields: dict[str, object]) -> None:
        audited.append((event, fields))

    ring.audit, ring.allow_unsealed = audit, True
    entries = [_entry(1, _text("from before encryption")), _entry(2, _text("another"))]
    await open_entries(ring, entries)
    assert [e.content for e in entries] == [_text("from before encryption"), _text("another")]
    assert not any(e.unavailable for e in entries)
    assert [(ev, f["outcome"], f["rows"]) for ev, f in audited] == [
        ("atrest.unsealed_read", "ok", ["c1#1", "c1#2"])]
    # Encryption switched off (or never used): plaintext rows are expected, not audited.
    ring.encrypt, ring.allow_unsealed = False, False
    audited.clear()
    plain = [_entry(1, _text("written with encryption off"))]
    await open_entries(ring, plain)
    await open_entries(None, plain)
    assert plain[0].content == _text("written with encryption off") and audited == []


async def test_gm_at_rest_needs_sm4_and_sm3_not_sm2(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Where SM2 cannot be used (a host without OpenSSL >= 3.0 libcrypto) the GM suite as a
    whole refuses to start, but encryption at rest, which needs only SM4 and SM3, works
    and reads what was sealed where SM2 was present."""
    from tongxin.crypto import suite as suites
    from tongxin.crypto.errors import SM2UnavailableError

    deks = MemoryDeks()
    before = await keyring(tmp_path, deks)
    sealed = before.seal(b"sealed with SM2 around", message_aad("c1", 1))

    def unavailable() -> None:
        raise SM2UnavailableError("libcrypto is not available (test)")

    monkeypatch.setattr(suites, "require_sm2", unavailable)
    with pytest.raises(SM2UnavailableError):
        suites.get_suite("gm")
    assert suites.get_symmetric_suite("gm").name == "gm"
    ring = Keyring(FileKeyProvider(tmp_path / "master.key", "gm"), deks, "gm")
    await ring.start()
    assert await ring.open_async(sealed, message_aad("c1", 1)) == b"sealed with SM2 around"
    again = ring.seal(b"and without it", message_aad("c1", 2))
    assert before.open(again, message_aad("c1", 2)) == b"and without it"
    with pytest.raises(ValueError, match="unknown crypto suite"):
        suites.get_symmetric_suite("rot13")

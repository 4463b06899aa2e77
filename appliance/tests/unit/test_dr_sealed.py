"""The DR site's sealed secrets (tongxin.site.sealed, tongxin dr-secrets)."""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path

import pytest

from tongxin.cli.main import main
from tongxin.site.sealed import (
    SealError,
    generate_key,
    header,
    is_current,
    load_key,
    part,
    seal,
    unseal,
)

FILES = {
    "secrets/master.key": b"tongxin-kek-v1 0011223344556677 gm " + base64.b64encode(os.urandom(16)),
    "secrets/token.key": os.urandom(32),
    "secrets/totp.key": os.urandom(32),
    "ca/sm2-ca.key": b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n",
}


@pytest.mark.parametrize("suite", ["gm", "international"])
def test_round_trip_gives_back_every_file(suite: str) -> None:
    key = generate_key(suite)
    doc = seal(key, FILES)
    assert unseal(key, doc) == FILES
    # Nothing of the files is readable in the document.
    text = json.dumps(doc)
    for data in FILES.values():
        assert base64.b64encode(data).decode() not in text
    assert doc["suite"] == suite and doc["names"] == sorted(FILES)


def test_a_document_survives_the_key_files_json() -> None:
    key = generate_key("gm")
    public = load_key(json.loads(json.dumps(key.public_document())), need_private=False)
    private = load_key(json.loads(json.dumps(key.private_document())), need_private=True)
    assert unseal(private, seal(public, FILES)) == FILES


def test_current_only_for_the_same_files_and_key() -> None:
    key, other = generate_key("gm"), generate_key("gm")
    doc = seal(key, FILES)
    assert is_current(doc, key, FILES)
    changed = {**FILES, "secrets/token.key": os.urandom(32)}
    assert not is_current(doc, key, changed)
    assert not is_current(doc, key, {k: v for k, v in FILES.items() if k != "ca/sm2-ca.key"})
    assert not is_current(doc, other, FILES)
    assert not is_current(None, key, FILES)


def test_two_seals_of_the_same_files_differ() -> None:
    key = generate_key("international")
    a, b = seal(key, FILES), seal(key, FILES)
    assert a["ciphertext"] != b["ciphertext"] and a["kem"] != b["kem"]
    assert a["digest"] == b["digest"]


def test_a_key_other_than_the_recipient_is_refused_by_name() -> None:
    key, other = generate_key("gm"), generate_key("gm")
    with pytest.raises(SealError, match=f"sealed to key {key.key_id}"):
        unseal(other, seal(key, FILES))


def test_forcing_the_recipient_field_does_not_open_it_either() -> None:
    key, other = generate_key("international"), generate_key("international")
    doc = seal(key, FILES)
    doc["recipient"] = other.key_id
    with pytest.raises(SealError, match="does not open"):
        unseal(other, doc)


@pytest.mark.parametrize("field,value", [
    ("digest", "00" * 32),
    ("names", ["secrets/token.key"]),
    ("sealed_at", "2020-01-01T00:00:00Z"),
])
def test_any_header_change_is_detected(field: str, value: object) -> None:
    key = generate_key("gm")
    doc = seal(key, FILES)
    doc[field] = value
    with pytest.raises(SealError, match="does not open"):
        unseal(key, doc)


def test_a_flipped_ciphertext_bit_is_detected() -> None:
    key = generate_key("gm")
    doc = seal(key, FILES)
    raw = bytearray(base64.b64decode(doc["ciphertext"]))
    raw[len(raw) // 2] ^= 1
    doc["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SealError, match="does not open"):
        unseal(key, doc)


def test_an_edited_key_id_in_a_key_file_is_refused() -> None:
    doc = generate_key("gm").public_document()
    doc["key_id"] = "00" * 16
    with pytest.raises(SealError, match="edited or damaged"):
        load_key(doc, need_private=False)


def test_a_public_key_cannot_unseal() -> None:
    key = generate_key("gm")
    with pytest.raises(SealError, match="private key"):
        load_key(key.public_document(), need_private=True)


@pytest.mark.parametrize("name", ["secrets/../x", "../secrets/x", "secrets/a/b", "other/x",
                                  "secrets/.hidden", "secrets/"])
def test_only_plain_file_names_are_sealed(name: str) -> None:
    with pytest.raises(SealError, match="not a sealable name"):
        seal(generate_key("gm"), {name: b"x"})


def test_parts_strip_their_prefix() -> None:
    assert part(FILES, "secrets") == {
        "master.key": FILES["secrets/master.key"],
        "token.key": FILES["secrets/token.key"],
        "totp.key": FILES["secrets/totp.key"],
    }
    assert part(FILES, "ca") == {"sm2-ca.key": FILES["ca/sm2-ca.key"]}
    with pytest.raises(SealError):
        part(FILES, "etc")


def test_header_refuses_other_documents() -> None:
    with pytest.raises(SealError, match="not a sealed DR secrets document"):
        header({"format": "something-else"})
    doc = seal(generate_key("gm"), FILES)
    del doc["kem"]
    with pytest.raises(SealError, match="lacks kem"):
        header(doc)


# ---- the command ---------------------------------------------------------------------------


def _secrets_dirs(root: Path) -> tuple[Path, Path]:
    src, ca = root / "src", root / "pki"
    src.mkdir()
    ca.mkdir()
    (ca / "issued").mkdir()  # directories are not sealed
    for name, data in FILES.items():
        prefix, bare = name.split("/")
        (src / bare if prefix == "secrets" else ca / bare).write_bytes(data)
    return src, ca


def test_cli_keygen_seal_unseal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, ca = _secrets_dirs(tmp_path)
    assert main(["dr-secrets", "keygen", "--out", str(tmp_path / "dr")]) == 0
    assert (tmp_path / "dr.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(SystemExit, match="never overwritten"):
        main(["dr-secrets", "keygen", "--out", str(tmp_path / "dr")])
    sealed = tmp_path / "sealed.json"
    assert main(["dr-secrets", "seal", "--public-key", str(tmp_path / "dr.pub"),
                 "--from-dir", str(src), "--ca-dir", str(ca), "--out", str(sealed)]) == 0
    first = sealed.read_text()
    # Same files, same key: --current keeps the document byte for byte.
    assert main(["dr-secrets", "seal", "--public-key", str(tmp_path / "dr.pub"),
                 "--from-dir", str(src), "--ca-dir", str(ca), "--current", str(sealed),
                 "--out", str(sealed)]) == 0
    assert sealed.read_text() == first
    # Without the CA the content differs: a new document.
    assert main(["dr-secrets", "seal", "--public-key", str(tmp_path / "dr.pub"),
                 "--from-dir", str(src), "--current", str(sealed), "--out",
                 str(tmp_path / "no-ca.json")]) == 0
    assert json.loads((tmp_path / "no-ca.json").read_text())["names"] == sorted(
        n for n in FILES if n.startswith("secrets/"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "token.key").write_bytes(b"the node's own")
    capsys.readouterr()
    assert main(["dr-secrets", "unseal", "--key", str(tmp_path / "dr.key"), "--part",
                 "secrets", "--to-dir", str(out), str(sealed)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["written"] == ["master.key", "totp.key"] and result["kept"] == ["token.key"]
    assert (out / "token.key").read_bytes() == b"the node's own"
    assert (out / "totp.key").read_bytes() == FILES["secrets/totp.key"]
    assert (out / "totp.key").stat().st_mode & 0o777 == 0o600
    assert not (out / "sm2-ca.key").exists()
    assert main(["dr-secrets", "unseal", "--key", str(tmp_path / "dr.key"), "--part",
                 "secrets", "--replace", "--to-dir", str(out), str(sealed)]) == 0
    assert (out / "token.key").read_bytes() == FILES["secrets/token.key"]


def test_cli_unseal_never_writes_through_a_symlink(tmp_path: Path) -> None:
    key = generate_key("gm")
    (tmp_path / "dr.key").write_text(json.dumps(key.private_document()))
    (tmp_path / "sealed.json").write_text(json.dumps(seal(key, FILES)))
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.write_bytes(b"untouched")
    (out / "totp.key").symlink_to(victim)
    main(["dr-secrets", "unseal", "--key", str(tmp_path / "dr.key"), "--part", "secrets",
          "--to-dir", str(out), str(tmp_path / "sealed.json")])
    assert victim.read_bytes() == b"untouched"


def test_cli_current_from_stdin_is_kept_until_a_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import io

    src, ca = _secrets_dirs(tmp_path)
    key = generate_key("international")
    (tmp_path / "dr.pub").write_text(json.dumps(key.public_document()))
    current = seal(key, FILES)
    argv = ["dr-secrets", "seal", "--public-key", str(tmp_path / "dr.pub"), "--from-dir", str(src),
            "--ca-dir", str(ca), "--current", "-"]
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(copy.deepcopy(current))))
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == current
    (src / "token.key").write_bytes(os.urandom(32))
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(current)))
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["digest"] != current["digest"]
    # No current document at all (a standby's first run): a new one.
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["recipient"] == key.key_id


def test_cli_unseal_with_a_tampered_document_writes_nothing(tmp_path: Path) -> None:
    key = generate_key("gm")
    (tmp_path / "dr.key").write_text(json.dumps(key.private_document()))
    doc = seal(key, FILES)
    doc["names"] = ["secrets/token.key"]
    (tmp_path / "sealed.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SystemExit, match="does not open"):
        main(["dr-secrets", "unseal", "--key", str(tmp_path / "dr.key"), "--part", "secrets",
              "--to-dir", str(out), str(tmp_path / "sealed.json")])
    assert list(out.iterdir()) == []


def test_cli_seal_only_takes_the_named_secrets(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Another role's file appearing in the directory later must not change the seal."""
    src, ca = _secrets_dirs(tmp_path)
    key = generate_key("international")
    (tmp_path / "dr.pub").write_text(json.dumps(key.public_document()))
    argv = ["dr-secrets", "seal", "--public-key", str(tmp_path / "dr.pub"), "--from-dir", str(src),
            "--ca-dir", str(ca), "--only", "master.key", "--only", "token.key", "--only",
            "totp.key", "--out", str(tmp_path / "sealed.json")]
    assert main(argv) == 0
    first = (tmp_path / "sealed.json").read_text()
    assert json.loads(first)["names"] == sorted(FILES)
    (src / "vrrp-dc1.pass").write_text("written by the lb role after the seal")
    assert main([*argv[:-2], "--current", str(tmp_path / "sealed.json"),
                 "--out", str(tmp_path / "sealed.json")]) == 0
    assert (tmp_path / "sealed.json").read_text() == first
    (src / "totp.key").unlink()
    with pytest.raises(SystemExit, match=r"has no totp\.key"):
        main(argv)

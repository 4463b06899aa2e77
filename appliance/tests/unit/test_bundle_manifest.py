"""The offline bundle's signed manifest: build, sign, verify, and every refusal."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tongxin.bundle import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleError,
    Missing,
    build_manifest,
    load_or_create_signing_key,
    sign_manifest,
    verify_bundle,
)
from tongxin.cli.main import main
from tongxin.compliance.keys import fingerprint
from tongxin.crypto import SM2PrivateKey, sm2_available, sm3_digest

pytestmark = pytest.mark.skipif(not sm2_available(), reason="SM2 (OpenSSL libcrypto) unavailable")

DEB = b"!<arch>\ndebian-binary redis-server" * 100


def _bundle(root: Path, key: SM2PrivateKey) -> Path:
    (root / "debs" / "x86_64").mkdir(parents=True)
    (root / "debs" / "x86_64" / "redis-server_7.0_amd64.deb").write_bytes(DEB)
    (root / "debs" / "x86_64" / "Packages").write_text("Package: redis-server\n")
    (root / "wheels" / "aarch64").mkdir(parents=True)
    (root / "wheels" / "aarch64" / "tongxin-0.1.0-py3-none-any.whl").write_bytes(b"PK wheel")
    (root / "kafka").mkdir()
    (root / "kafka" / "kafka-4.3.1.tgz").write_bytes(b"\x1f\x8b kafka")
    missing = [Missing("wheels", "aarch64", "example-x86-only==1.0", "no manylinux2014_aarch64 wheel")]
    data = build_manifest(root, name="tongxin", version="0.1.0", signer=key.public_key(),
                          missing=missing)
    sign_manifest(root, data, key)
    return root


@pytest.fixture(scope="module")
def key() -> SM2PrivateKey:
    return SM2PrivateKey.generate()


def test_manifest_lists_each_file_with_independent_digests(tmp_path: Path, key: SM2PrivateKey) -> None:
    root = _bundle(tmp_path, key)
    doc = json.loads((root / MANIFEST_NAME).read_bytes())
    by_path = {f["path"]: f for f in doc["files"]}
    assert set(by_path) == {"debs/x86_64/redis-server_7.0_amd64.deb", "debs/x86_64/Packages",
                            "wheels/aarch64/tongxin-0.1.0-py3-none-any.whl", "kafka/kafka-4.3.1.tgz"}
    deb = by_path["debs/x86_64/redis-server_7.0_amd64.deb"]
    # Digests computed here with hashlib / tongxin.crypto, not the module under test.
    assert deb["sha256"] == hashlib.sha256(DEB).hexdigest()
    assert deb["sm3"] == sm3_digest(DEB).hex()
    assert (deb["size"], deb["component"], deb["arch"]) == (len(DEB), "debs", "x86_64")
    assert by_path["kafka/kafka-4.3.1.tgz"]["arch"] == "any"
    assert doc["signer"] == fingerprint(key.public_key())
    assert doc["missing"] == [{"component": "wheels", "arch": "aarch64", "name": "example-x86-only==1.0",
                               "reason": "no manylinux2014_aarch64 wheel"}]
    # The signature is over the exact manifest bytes.
    key.public_key().verify((root / SIGNATURE_NAME).read_bytes(), (root / MANIFEST_NAME).read_bytes())


def test_intact_bundle_verifies(tmp_path: Path, key: SM2PrivateKey) -> None:
    summary = verify_bundle(_bundle(tmp_path, key), key.public_key())
    assert summary["files"] == 4
    assert summary["components"]["debs/x86_64"] == {"files": 2, "bytes": len(DEB) + 22}
    assert summary["missing"][0]["name"] == "example-x86-only==1.0"


def test_flipped_byte_in_a_file_is_refused_naming_it(tmp_path: Path, key: SM2PrivateKey) -> None:
    root = _bundle(tmp_path, key)
    deb = root / "debs" / "x86_64" / "redis-server_7.0_amd64.deb"
    data = bytearray(deb.read_bytes())
    data[10] ^= 0x01  # same size: only the digests can tell
    deb.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"^debs/x86_64/redis-server_7\.0_amd64\.deb: SHA-256 mismatch"):
        verify_bundle(root, key.public_key())


def test_truncated_file_is_refused_on_size(tmp_path: Path, key: SM2PrivateKey) -> None:
    root = _bundle(tmp_path, key)
    (root / "kafka" / "kafka-4.3.1.tgz").write_bytes(b"\x1f\x8b")
    with pytest.raises(BundleError, match=r"^kafka/kafka-4\.3\.1\.tgz: size 2 differs"):
        verify_bundle(root, key.public_key())


def test_deleted_and_added_files_are_refused(tmp_path: Path, key: SM2PrivateKey) -> None:
    root = _bundle(tmp_path, key)
    (root / "debs" / "x86_64" / "evil_1.0_amd64.deb").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"^debs/x86_64/evil_1\.0_amd64\.deb: not listed"):
        verify_bundle(root, key.public_key())
    (root / "debs" / "x86_64" / "evil_1.0_amd64.deb").unlink()
    (root / "wheels" / "aarch64" / "tongxin-0.1.0-py3-none-any.whl").unlink()
    with pytest.raises(BundleError, match=r"py3-none-any\.whl: listed in the manifest but missing"):
        verify_bundle(root, key.public_key())


def test_tampered_manifest_is_refused_by_the_signature(tmp_path: Path, key: SM2PrivateKey) -> None:
    root = _bundle(tmp_path, key)
    # An attacker replaces a deb and updates its digests in the manifest.
    deb = root / "debs" / "x86_64" / "redis-server_7.0_amd64.deb"
    deb.write_bytes(b"evil")
    doc = json.loads((root / MANIFEST_NAME).read_bytes())
    for f in doc["files"]:
        if f["path"].endswith(".deb"):
            f.update(size=4, sha256=hashlib.sha256(b"evil").hexdigest(), sm3=sm3_digest(b"evil").hex())
    (root / MANIFEST_NAME).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    with pytest.raises(BundleError, match=r"^manifest\.sig: SM2 signature over manifest\.json does not"):
        verify_bundle(root, key.public_key())


def test_corrupt_signature_is_refused(tmp_path: Path, key: SM2PrivateKey) -> None:
    root = _bundle(tmp_path, key)
    sig = bytearray((root / SIGNATURE_NAME).read_bytes())
    sig[-1] ^= 0x01
    (root / SIGNATURE_NAME).write_bytes(bytes(sig))
    with pytest.raises(BundleError, match=r"^manifest\.sig: SM2 signature"):
        verify_bundle(root, key.public_key())


def test_bundle_signed_by_another_key_is_refused_naming_both(tmp_path: Path, key: SM2PrivateKey) -> None:
    root = _bundle(tmp_path, key)
    other = SM2PrivateKey.generate().public_key()
    with pytest.raises(BundleError) as exc:
        verify_bundle(root, other)
    msg = str(exc.value)
    assert f"trusted key {fingerprint(other)}" in msg
    assert f"names signer {fingerprint(key.public_key())}" in msg


def test_missing_signature_is_refused(tmp_path: Path, key: SM2PrivateKey) -> None:
    root = _bundle(tmp_path, key)
    (root / SIGNATURE_NAME).unlink()
    with pytest.raises(BundleError, match=r"^manifest\.sig: missing"):
        verify_bundle(root, key.public_key())


def test_signed_manifest_with_escaping_path_is_refused(tmp_path: Path, key: SM2PrivateKey) -> None:
    # Even a validly signed manifest may not point outside the bundle.
    root = _bundle(tmp_path / "b", key)
    doc = json.loads((root / MANIFEST_NAME).read_bytes())
    doc["files"][0]["path"] = "../outside"
    data = json.dumps(doc).encode()
    sign_manifest(root, data, key)
    with pytest.raises(BundleError, match=r"refusing path '\.\./outside'"):
        verify_bundle(root, key.public_key())


def test_symlink_in_bundle_is_refused(tmp_path: Path, key: SM2PrivateKey) -> None:
    root = tmp_path / "b"
    (root / "kafka").mkdir(parents=True)
    os.symlink("/etc/passwd", root / "kafka" / "link")
    with pytest.raises(BundleError, match=r"^kafka/link: not a regular file"):
        build_manifest(root, name="t", version="1", signer=key.public_key())


def test_unknown_arch_directory_is_refused(tmp_path: Path, key: SM2PrivateKey) -> None:
    (tmp_path / "debs" / "amd64").mkdir(parents=True)
    (tmp_path / "debs" / "amd64" / "x.deb").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"^debs/amd64/x\.deb: unknown architecture directory 'amd64'"):
        build_manifest(tmp_path, name="t", version="1", signer=key.public_key())


def test_signing_key_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "bundle-signing" / "signing.key"
    key, created = load_or_create_signing_key(path)
    assert created and (path.stat().st_mode & 0o777) == 0o600
    again, created2 = load_or_create_signing_key(path)
    assert not created2 and again.public_key() == key.public_key()
    path.chmod(0o644)
    with pytest.raises(BundleError, match="accessible by group/others"):
        load_or_create_signing_key(path)


def test_cli_verify_exit_codes_and_messages(tmp_path: Path, key: SM2PrivateKey,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = _bundle(tmp_path / "b", key)
    pub = tmp_path / "trusted.pem"
    pub.write_bytes(key.public_key().to_pem())
    assert main(["bundle", "verify", str(root), "--public-key", str(pub), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == 4
    wrong_fp = "00" * 32
    assert main(["bundle", "verify", str(root), "--public-key", str(pub), "--fingerprint", wrong_fp]) == 1
    assert f"is not the expected {wrong_fp}" in capsys.readouterr().err
    (root / "kafka" / "kafka-4.3.1.tgz").write_bytes(b"\x1f\x8b kafkA")
    assert main(["bundle", "verify", str(root), "--public-key", str(pub)]) == 1
    assert "REFUSED: kafka/kafka-4.3.1.tgz: SHA-256 mismatch" in capsys.readouterr().err


def test_cli_manifest_records_missing_and_prints_fingerprint(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "b"
    (root / "kafka").mkdir(parents=True)
    (root / "kafka" / "k.tgz").write_bytes(b"k")
    gaps = tmp_path / "missing.tsv"
    gaps.write_text("wheels\taarch64\texample-x86-only==1.0\tno wheel\n")
    keyfile = tmp_path / "k" / "signing.key"
    assert main(["bundle", "manifest", str(root), "--key", str(keyfile), "--version", "9.9",
                 "--missing-file", str(gaps)]) == 0
    out = capsys.readouterr()
    key, _ = load_or_create_signing_key(keyfile)
    assert out.out.strip() == fingerprint(key.public_key())
    assert "MISSING wheels/aarch64: example-x86-only==1.0: no wheel" in out.err
    doc = json.loads((root / MANIFEST_NAME).read_bytes())
    assert doc["version"] == "9.9" and doc["missing"][0]["name"] == "example-x86-only==1.0"
    gaps.write_text("only two\tfields\n")
    assert main(["bundle", "manifest", str(root), "--key", str(keyfile), "--version", "9.9",
                 "--missing-file", str(gaps)]) == 1
    assert "expected 4 tab-separated fields" in capsys.readouterr().err


def test_images_are_recorded_per_architecture(tmp_path: Path, key: SM2PrivateKey) -> None:
    """images/<arch>/ (the OCI image for hosts whose Python is too old) is a per-architecture
    component like wheels and debs: the role picks the image by the host's architecture."""
    (tmp_path / "images" / "aarch64").mkdir(parents=True)
    (tmp_path / "images" / "aarch64" / "tongxin-0.1.0.tar").write_bytes(b"image")
    data = build_manifest(tmp_path, name="t", version="0.1.0", signer=key.public_key())
    sign_manifest(tmp_path, data, key)
    summary = verify_bundle(tmp_path, key.public_key())
    assert summary["components"] == {"images/aarch64": {"files": 1, "bytes": 5}}
    (tmp_path / "images" / "arm64").mkdir()
    (tmp_path / "images" / "arm64" / "x.tar").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"^images/arm64/x\.tar: unknown architecture directory 'arm64'"):
        build_manifest(tmp_path, name="t", version="0.1.0", signer=key.public_key())

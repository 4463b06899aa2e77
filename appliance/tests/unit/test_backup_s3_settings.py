"""An s3:// backup target: its URL, and where its endpoint and keys come from."""

from __future__ import annotations

import pytest

from tongxin.backup.s3_target import S3Settings, parse_url
from tongxin.backup.target import BackupError, is_s3
from tongxin.config import Config, load_config


@pytest.mark.parametrize(("url", "want"), [
    ("s3://backups", ("backups", "")),
    ("s3://backups/", ("backups", "")),
    ("s3://backups/tongxin/dc1", ("backups", "tongxin/dc1/")),
    ("s3://backups//tongxin/dc1/", ("backups", "tongxin/dc1/")),
    ("s3://b.example-1/dc1-20261205T023000Z", ("b.example-1", "dc1-20261205T023000Z/")),
])
def test_urls(url: str, want: tuple[str, str]) -> None:
    assert is_s3(url)
    assert parse_url(url) == want


@pytest.mark.parametrize("url", ["s3://", "s3://Backups/x", "s3://ab/x", "s3://b_k/x",
                                 "s3://backups/../x", "s3://backups/a/./b"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(BackupError):
        parse_url(url)


def test_a_path_is_not_s3() -> None:
    assert not is_s3("/var/backups/tongxin") and not is_s3("s3-copies")


def node(**files: str) -> Config:
    cfg = load_config()
    for k, v in files.items():
        setattr(cfg.files, k, v)
    return cfg


def test_backup_variables_name_another_store_and_keep_the_node_keys_away() -> None:
    cfg = node(s3_endpoint="https://files.internal:9000", s3_access_key="node",
               s3_secret_key="node-secret")
    env = {"TONGXIN_BACKUP_S3_ENDPOINT": "https://backup.internal:9000",
           "TONGXIN_S3_ACCESS_KEY": "node2", "TONGXIN_S3_SECRET_KEY": "node2-secret"}
    got = S3Settings.of(cfg, env)
    assert got == S3Settings("https://backup.internal:9000", "us-east-1", "", "")
    env |= {"TONGXIN_BACKUP_S3_ACCESS_KEY": "bk", "TONGXIN_BACKUP_S3_SECRET_KEY": "bk-secret",
            "TONGXIN_BACKUP_S3_REGION": "cn-north-1"}
    got = S3Settings.of(None, env)
    assert got == S3Settings("https://backup.internal:9000", "cn-north-1", "bk", "bk-secret")


def test_the_nodes_store_by_default() -> None:
    cfg = node(s3_endpoint="https://files.internal:9000", s3_region="r1")
    env = {"TONGXIN_S3_ACCESS_KEY": "node", "TONGXIN_S3_SECRET_KEY": "node-secret"}
    assert S3Settings.of(cfg, env) == S3Settings(
        "https://files.internal:9000", "r1", "node", "node-secret")
    # A backup user of the same store.
    env |= {"TONGXIN_BACKUP_S3_ACCESS_KEY": "bk", "TONGXIN_BACKUP_S3_SECRET_KEY": "bk-secret"}
    assert S3Settings.of(cfg, env) == S3Settings(
        "https://files.internal:9000", "r1", "bk", "bk-secret")
    # Keys in the configuration come before the node's environment.
    cfg = node(s3_endpoint="https://files.internal:9000", s3_access_key="cfg",
               s3_secret_key="cfg-secret")
    assert S3Settings.of(cfg, {"TONGXIN_S3_ACCESS_KEY": "env"}).access_key == "cfg"


def test_no_endpoint_anywhere() -> None:
    with pytest.raises(BackupError, match="TONGXIN_BACKUP_S3_ENDPOINT"):
        S3Settings.of(load_config(), {})
    with pytest.raises(BackupError, match=r"files\.s3_endpoint"):
        S3Settings.of(None, {})

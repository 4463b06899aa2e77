"""The configuration view's redaction rule (GET /api/v1/admin/config): which keys
are redacted, and that a secret's value appears nowhere in what leaves the node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tongxin.config import Config, documented_keys, load_config
from tongxin.config_view import SECRET_ENV, SECRET_KEYS, effective_config, is_secret

DB_PASSWORD = "Db-Pa55-word-9f3k"


def _cfg(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "tongxin.yml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _by_key(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in view["keys"]}


def test_every_secret_key_is_a_real_key_and_these_are_redacted() -> None:
    keys = {k for k, _d, _doc in documented_keys()}
    assert set(SECRET_KEYS) <= keys
    # The keys that hold or point at a secret: credentials, the DSN, commands and a
    # webhook URL that may carry one, the private keys' files.
    assert set(SECRET_KEYS) == {
        "storage.mysql_dsn", "files.s3_access_key", "files.s3_secret_key",
        "compliance.sms_webhook_secret", "compliance.sms_webhook_url", "compliance.sms_command",
        "keys.kms_command", "keys.master_key_file", "server.tls.key_file",
        "e2ee.escrow_private_key_file", "e2ee.escrow_sealed_key_file"}


def test_secret_values_never_appear_and_are_shown_as_set(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, f"""
storage:
  backend: mysql
  mysql_dsn: mysql://tongxin:{DB_PASSWORD}@db1:4000,db2:4000/tongxin
files:
  s3_secret_key: s3-SECRET-value
kafka:
  bootstrap_servers: k1:9092,k2:9092
""")
    env = {"TONGXIN_REDIS_PASSWORD": "redis-SECRET-pw", "TONGXIN_S3_ACCESS_KEY": "AKIA-SECRET"}
    view = effective_config(cfg, env)
    text = json.dumps(view)
    for secret in (DB_PASSWORD, "s3-SECRET-value", "redis-SECRET-pw", "AKIA-SECRET", "db1:4000"):
        assert secret not in text
    rows = _by_key(view)
    dsn = rows["storage.mysql_dsn"]
    assert dsn["redacted"] and dsn["set"] and dsn["value"] is None and dsn["default"] is None
    assert dsn["differs"] is True
    assert rows["files.s3_secret_key"]["set"] is True
    # Empty in the file, but the node falls back to the environment variable: set.
    assert rows["files.s3_access_key"]["set"] is True and rows["files.s3_access_key"]["value"] is None
    assert rows["compliance.sms_webhook_secret"]["set"] is False
    assert rows["server.tls.key_file"] == {"key": "server.tls.key_file", "section": "server.tls",
                                           "differs": False, "value": None, "default": None,
                                           "redacted": True, "set": False}
    assert {e["name"]: e["set"] for e in view["environment"]} == {
        name: name in env for name in SECRET_ENV}


def test_ordinary_keys_show_value_default_and_whether_they_differ(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "kafka:\n  bootstrap_servers: k1:9092\nchat:\n  recall_window: 60\n")
    rows = _by_key(effective_config(cfg, {}))
    assert len(rows) == len(documented_keys())
    assert rows["kafka.bootstrap_servers"] == {
        "key": "kafka.bootstrap_servers", "section": "kafka", "differs": True,
        "value": "k1:9092", "default": "127.0.0.1:9092", "redacted": False}
    assert rows["chat.recall_window"]["value"] == 60.0 and rows["chat.recall_window"]["default"] == 120.0
    assert rows["chat.edit_window"]["differs"] is False
    assert rows["data_dir"]["section"] == ""


def test_a_password_in_any_url_is_redacted_whatever_the_key(tmp_path: Path) -> None:
    assert is_secret("files.s3_endpoint", "https://minio:pw@s3.internal:9000")
    assert is_secret("site.standby_status_urls", "http://a:1, http://u:p@b:2")
    assert not is_secret("files.s3_endpoint", "https://s3.internal:9000")
    assert not is_secret("files.s3_endpoint", "https://user@s3.internal:9000")
    cfg = _cfg(tmp_path, "")
    cfg.files.s3_endpoint = "https://minio:hunter2@s3.internal:9000"
    view = effective_config(cfg, {})
    assert "hunter2" not in json.dumps(view)
    row = _by_key(view)["files.s3_endpoint"]
    assert row["redacted"] and row["set"] and row["differs"]

"""Configuration: strict loading, and docs/operations.md kept equal to the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tongxin.config import ConfigError, documented_keys, load_config

DOCS = Path(__file__).resolve().parents[3] / "docs" / "operations.md"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tongxin.yml"
    p.write_text(text, encoding="utf-8")
    return p


def test_no_file_gives_embedded_defaults() -> None:
    cfg = load_config()
    assert cfg.server.listen == "127.0.0.1:8080"
    assert cfg.storage.backend == "sqlite"
    assert cfg.listen_address() == ("127.0.0.1", 8080)


def test_values_are_read(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "server:\n  listen: 0.0.0.0:9000\nchat:\n  recall_window: 30\n"))
    assert cfg.listen_address() == ("0.0.0.0", 9000)
    assert cfg.chat.recall_window == 30.0
    assert isinstance(cfg.chat.recall_window, float)


@pytest.mark.parametrize(("text", "needle"), [
    ("server:\n  lisen: 1.2.3.4:1\n", "unknown configuration key 'server.lisen' (did you mean 'listen'?)"),
    ("bogus: 1\n", "unknown configuration key 'bogus'"),
    ("server:\n  max_frame_payload: lots\n", "server.max_frame_payload: expected int"),
    ("accounts:\n  self_registration: 1\n", "accounts.self_registration: expected bool"),
    ("server:\n  listen: nowhere\n", "server.listen: expected HOST:PORT"),
    ("storage:\n  backend: oracle\n", "storage.backend: 'oracle' is not one of sqlite"),
    ("chat:\n  recall_window: -1\n", "chat.recall_window: must not be negative"),
    ("chat:\n  max_content_size: 100\n", "chat.max_content_size: must be at least 1024"),
    ("server: [1, 2]\n", "server: expected a mapping"),
    ("accounts:\n  scrypt_n: 1000\n", "accounts.scrypt_n: must be a power of two"),
    ("server: {max_frame_payload: 2048, max_message_size: 1024}\n", "server.max_message_size"),
    ("server: {listen: [\n", "is not valid YAML"),
    ("compliance:\n  audit_archive_backend: s3\n", "compliance.audit_archive_backend s3: files.s3"),
    ("compliance:\n  audit_archive_backend: nfs\n", "'nfs' is not one of local, s3"),
    ("compliance:\n  audit_archive_name: a/b\n", "compliance.audit_archive_name"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert needle in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yml")


def test_operations_doc_lists_every_key_with_its_default() -> None:
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \| `([^`]*)` \|", DOCS.read_text(encoding="utf-8"), re.M)
    documented = {key: json.loads(default) for key, default in rows}
    in_code = {key: default for key, default, _ in documented_keys()}
    assert documented == in_code

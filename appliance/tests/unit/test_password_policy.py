"""Password policy rules and the configuration that sets them (and the SMS provider)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tongxin.auth.passwords import char_classes, check_policy
from tongxin.compliance.service import _mask_url
from tongxin.config import ConfigError, load_config


def test_character_classes() -> None:
    assert char_classes("abc") == {0}
    assert char_classes("Abc1") == {0, 1, 2}
    assert char_classes("Abc1-") == {0, 1, 2, 3}
    assert char_classes("口令口令口令口令") == {3}  # letters without case count as "other"
    assert char_classes("") == set()


def test_policy_with_classes() -> None:
    assert check_policy("abcdefgh", 8) is None  # default: no class rule
    assert check_policy("abcdefgh", 8, 1) is None
    assert check_policy("abcdefgh", 8, 2) == ("password must mix at least 2 of: lower-case "
                                               "letters, upper-case letters, digits, other characters")
    assert check_policy("abcdefg1", 8, 2) is None
    assert check_policy("Abcdefg1", 8, 3) is None
    assert check_policy("Abcdefg1", 8, 4) is not None
    assert check_policy("Abc1", 8, 3) == "password must be at least 8 characters"  # length first


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tongxin.yml"
    p.write_text(text, encoding="utf-8")
    return p


def test_policy_keys_load(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "accounts:\n  password_min_classes: 3\n  password_history: 5\n"
                                      "  password_max_age_days: 90\n  session_idle_timeout: 900\n"))
    a = cfg.accounts
    assert (a.password_min_classes, a.password_history, a.password_max_age_days,
            a.session_idle_timeout) == (3, 5, 90.0, 900.0)


@pytest.mark.parametrize(("text", "needle"), [
    ("accounts:\n  password_min_classes: 0\n", "accounts.password_min_classes: must be 1, 2, 3 or 4"),
    ("accounts:\n  password_min_classes: 5\n", "accounts.password_min_classes: must be 1, 2, 3 or 4"),
    ("accounts:\n  password_history: -1\n", "accounts.password_history: must not be negative"),
    ("compliance:\n  sms_provider: carrier-pigeon\n", "compliance.sms_provider: 'carrier-pigeon' "
                                                      "is not one of none, command, webhook"),
    ("compliance:\n  sms_provider: command\n", "compliance.sms_command: required"),
    ("compliance:\n  sms_provider: webhook\n  sms_webhook_url: ftp://x\n",
     "compliance.sms_webhook_url: an http:// or https:// URL"),
    ("compliance:\n  sms_provider: command\n  sms_command: \"send 'unbalanced\"\n",
     "compliance.sms_command: No closing quotation"),
])
def test_bad_policy_or_sms_config(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert needle in str(info.value)


def test_urls_in_the_config_snapshot_lose_their_credentials() -> None:
    assert _mask_url("https://u:p@sms.example:8443/send?key=k") == "https://***@sms.example:8443/send?***"
    assert _mask_url("http://gw.internal/send") == "http://gw.internal/send"
    assert _mask_url("https://gw?token=t") == "https://gw?***"

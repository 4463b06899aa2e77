"""The password and lockout policy against 等保's thresholds (the console's policy page)."""

from __future__ import annotations

import math

import pytest

from tongxin.compliance.account_policy import (
    EDITABLE,
    check_changes,
    check_value,
    document,
    editable_document,
    effective,
    rules,
    stored_overrides,
)
from tongxin.config import AccountsConfig


def by_key(a: AccountsConfig) -> dict[str, bool | None]:
    return {r.key: r.ok for r in rules(a)}


def test_the_embedded_defaults_fall_short_where_they_are_weaker() -> None:
    got = by_key(AccountsConfig())
    # Defaults: 8 characters, lockout after 5 for 900 s, scrypt N 16384 - enough;
    # one character class, no history, no expiry, no idle timeout - not.
    assert got["password_min_length"] and got["lockout_threshold"] and got["lockout_duration"]
    assert got["scrypt_n"]
    assert got["password_min_classes"] is False and got["password_history"] is False
    assert got["password_max_age_days"] is False and got["session_idle_timeout"] is False
    assert got["token_ttl"] is None and got["lockout_window"] is None
    assert document(AccountsConfig())["meets_dengbao"] is False


def test_a_policy_that_meets_every_rule_and_the_edges() -> None:
    strong = AccountsConfig(password_min_classes=3, password_history=5, password_max_age_days=90,
                            session_idle_timeout=1800, lockout_threshold=10, lockout_duration=60)
    assert all(ok is not False for ok in by_key(strong).values())
    assert document(strong)["meets_dengbao"] is True
    # One past each edge fails that rule only.
    for change, key in (({"password_max_age_days": 91}, "password_max_age_days"),
                        ({"session_idle_timeout": 1801}, "session_idle_timeout"),
                        ({"lockout_threshold": 11}, "lockout_threshold"),
                        ({"lockout_duration": 59}, "lockout_duration"),
                        ({"password_min_length": 7}, "password_min_length"),
                        ({"scrypt_n": 8192}, "scrypt_n")):
        weaker = AccountsConfig(**{**strong.__dict__, **change})
        failing = [k for k, ok in by_key(weaker).items() if ok is False]
        assert failing == [key], (change, failing)


# ---- what the security administrator may change, and within which limits ---------------


def test_every_editable_setting_is_a_rule_on_the_page_and_scrypt_n_is_not_editable() -> None:
    keys = [r.key for r in rules(AccountsConfig())]
    assert set(EDITABLE) == set(keys) - {"scrypt_n"}
    # The file's defaults are within the limits (the console's form starts from them).
    for key in EDITABLE:
        assert check_value(key, getattr(AccountsConfig(), key))[1] is None, key


@pytest.mark.parametrize(("key", "value", "stored"), [
    ("password_min_length", 6, 6), ("password_min_length", 128, 128),
    ("password_min_length", 12.0, 12),  # JSON numbers: a whole float is a whole number
    ("password_min_classes", 4, 4), ("password_history", 0, 0),
    ("password_max_age_days", 0, 0.0), ("password_max_age_days", 90, 90.0),
    ("password_max_age_days", 0.5 + 0.5, 1.0), ("session_idle_timeout", 0, 0.0),
    ("session_idle_timeout", 1800, 1800.0), ("lockout_duration", 60, 60.0),
    ("token_ttl", 300, 300.0), ("lockout_threshold", 100, 100),
    ("password_min_length", None, None),  # null: back to the configuration file's value
])
def test_accepted_values(key: str, value: object, stored: object) -> None:
    got, err = check_value(key, value)
    assert err is None and got == stored and type(got) is type(stored)


@pytest.mark.parametrize(("key", "value", "reason", "message"), [
    ("password_min_length", 5, "range", "password_min_length: must be a whole number from 6 "
                                        "to 128, got 5"),
    ("password_min_length", 129, "range", None),
    ("password_min_length", 8.5, "integer", None),
    ("password_min_length", "12", "number", "password_min_length: must be a whole number from "
                                            "6 to 128, got '12'"),
    ("password_min_length", True, "number", None),
    ("password_min_classes", 0, "range", None), ("password_min_classes", 5, "range", None),
    ("password_history", -1, "range", None), ("password_history", 25, "range", None),
    ("password_max_age_days", 0.5, "range", "password_max_age_days: must be 0 (off) or a number "
                                            "from 1 to 3650 days, got 0.5"),
    ("password_max_age_days", math.inf, "number", None),
    ("password_max_age_days", math.nan, "number", None),
    ("lockout_threshold", 0, "range", None),
    ("lockout_duration", 59, "range", "lockout_duration: must be a number from 60 to 604800 "
                                      "seconds, got 59"),
    ("lockout_window", 0, "range", None),
    ("session_idle_timeout", 59, "range", None),
    ("token_ttl", 299, "range", None), ("token_ttl", [3600], "number", None),
    ("scrypt_n", 16384, "fixed", "accounts.scrypt_n is set in the configuration file only, not here"),
    ("self_registration", True, "fixed", None),
    ("password_min_lenght", 12, "unknown", None),
])
def test_refused_values_name_the_field(key: str, value: object, reason: str,
                                       message: str | None) -> None:
    got, err = check_value(key, value)
    assert got is None and err is not None
    assert err.reason == reason and key in err.message
    if message is not None:
        assert err.message == message
    details = err.as_dict(key)
    assert details["reason"] == reason and details["message"] == err.message
    if key in EDITABLE:
        assert details["min"] == EDITABLE[key].low and details["max"] == EDITABLE[key].high


def test_one_refused_field_and_the_rest_are_still_told_apart() -> None:
    accepted, errors = check_changes({"password_min_length": 12, "lockout_threshold": 0,
                                      "token_ttl": None})
    assert accepted == {"password_min_length": 12, "token_ttl": None}
    assert list(errors) == ["lockout_threshold"]


def test_stored_overrides_win_over_the_file_and_bad_rows_are_dropped() -> None:
    base = AccountsConfig(password_min_length=10, lockout_threshold=5)
    assert stored_overrides(None) == {} and stored_overrides({"values": "x"}) == {}
    stored = {"values": {"password_min_length": 14, "lockout_threshold": 0, "scrypt_n": 2,
                         "session_idle_timeout": 900}, "at": 1, "by": "u_sec"}
    overrides = stored_overrides(stored)
    assert overrides == {"password_min_length": 14, "session_idle_timeout": 900.0}
    policy = effective(base, overrides)
    assert policy.password_min_length == 14 and policy.session_idle_timeout == 900.0
    assert policy.lockout_threshold == 5 and policy.scrypt_n == base.scrypt_n
    assert base.password_min_length == 10  # the configuration itself is untouched
    doc = editable_document(base, overrides, stored)
    assert doc["configured"]["password_min_length"] == 10
    assert doc["overrides"] == overrides and doc["changed_by"] == "u_sec"
    assert doc["editable"]["session_idle_timeout"] == {
        "min": 60, "max": 604800, "integer": False, "zero_off": True, "unit": "seconds"}

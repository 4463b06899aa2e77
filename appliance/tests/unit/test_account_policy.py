"""The password and lockout policy against 等保's thresholds (the console's policy page)."""

from __future__ import annotations

from tongxin.compliance.account_policy import document, rules
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

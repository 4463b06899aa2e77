"""The password and lockout policy in force, rule by rule, against what 等保 2.0
asks (GB/T 22239-2019 8.1.4.1 a) and b); the thresholds are the compliance
report's IA-1 and IA-2). For the security administrator's console page."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tongxin.compliance.report import (
    MAX_PASSWORD_AGE_DAYS,
    MAX_SESSION_IDLE_SECONDS,
    MIN_PASSWORD_CLASSES,
    MIN_PASSWORD_HISTORY,
    MIN_PASSWORD_LENGTH,
    MIN_SCRYPT_N,
)
from tongxin.config import AccountsConfig

MAX_LOCKOUT_THRESHOLD = 10
MIN_LOCKOUT_SECONDS = 60


@dataclass(frozen=True)
class Rule:
    key: str          # accounts.<key> in the configuration
    value: float
    required: str     # what 等保 asks, e.g. ">= 8", "1-90"; "" when it asks nothing
    ok: bool | None   # None: nothing is required of this setting


def _between(v: float, low: float, high: float) -> bool:
    return low <= v <= high


def rules(a: AccountsConfig) -> list[Rule]:
    return [
        Rule("password_min_length", a.password_min_length, f">= {MIN_PASSWORD_LENGTH}",
             a.password_min_length >= MIN_PASSWORD_LENGTH),
        Rule("password_min_classes", a.password_min_classes, f">= {MIN_PASSWORD_CLASSES}",
             a.password_min_classes >= MIN_PASSWORD_CLASSES),
        Rule("password_history", a.password_history, f">= {MIN_PASSWORD_HISTORY}",
             a.password_history >= MIN_PASSWORD_HISTORY),
        Rule("password_max_age_days", a.password_max_age_days, f"1-{MAX_PASSWORD_AGE_DAYS}",
             _between(a.password_max_age_days, 1, MAX_PASSWORD_AGE_DAYS)),
        Rule("lockout_threshold", a.lockout_threshold, f"1-{MAX_LOCKOUT_THRESHOLD}",
             _between(a.lockout_threshold, 1, MAX_LOCKOUT_THRESHOLD)),
        Rule("lockout_duration", a.lockout_duration, f">= {MIN_LOCKOUT_SECONDS}",
             a.lockout_duration >= MIN_LOCKOUT_SECONDS),
        Rule("lockout_window", a.lockout_window, "", None),
        Rule("session_idle_timeout", a.session_idle_timeout, f"1-{MAX_SESSION_IDLE_SECONDS}",
             _between(a.session_idle_timeout, 1, MAX_SESSION_IDLE_SECONDS)),
        Rule("token_ttl", a.token_ttl, "", None),
        Rule("scrypt_n", a.scrypt_n, f">= {MIN_SCRYPT_N}", a.scrypt_n >= MIN_SCRYPT_N),
    ]


def document(a: AccountsConfig) -> dict[str, Any]:
    found = rules(a)
    return {"rules": [asdict(r) for r in found],
            "meets_dengbao": all(r.ok is not False for r in found)}

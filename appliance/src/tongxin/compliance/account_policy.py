"""The password and lockout policy in force, rule by rule, against what 等保 2.0
asks (GB/T 22239-2019 8.1.4.1 a) and b); the thresholds are the compliance
report's IA-1 and IA-2). For the security administrator's console page, which also
changes them: what may be changed, within which limits, and how a stored change
combines with the configuration file."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
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


# ---- what the security administrator may change (console, CLI) ------------------------
#
# The configuration file (accounts.*) sets the policy a node starts with; the security
# administrator's changes (PUT /api/v1/admin/policy, `tongxin admin policy set`) are
# stored as overrides in the compliance store's settings, which every node of an
# installation shares (storage.backend mysql), and win over the file. scrypt_n is not
# among them: it is the hashing cost the hosts were sized for, and the node times
# unknown-user logins against a hash made with it at start.

POLICY_SETTING = "accounts.policy"


@dataclass(frozen=True)
class Limit:
    low: float
    high: float
    integer: bool
    zero_off: bool = False  # 0 is accepted too and turns the rule off
    unit: str = ""          # "", "days" or "seconds"

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        off = "0 (off) or " if self.zero_off else ""
        unit = f" {self.unit}" if self.unit else ""
        return f"{off}{kind} from {self.low:g} to {self.high:g}{unit}"


EDITABLE: dict[str, Limit] = {
    "password_min_length": Limit(6, 128, True),
    "password_min_classes": Limit(1, 4, True),
    "password_history": Limit(0, 24, True),
    "password_max_age_days": Limit(1, 3650, False, zero_off=True, unit="days"),
    "lockout_threshold": Limit(1, 100, True),
    "lockout_window": Limit(60, 86400, False, unit="seconds"),
    "lockout_duration": Limit(60, 604800, False, unit="seconds"),
    "session_idle_timeout": Limit(60, 604800, False, zero_off=True, unit="seconds"),
    "token_ttl": Limit(300, 31536000, False, unit="seconds"),
}


@dataclass(frozen=True)
class FieldError:
    reason: str   # "unknown", "fixed", "number", "integer" or "range"
    message: str  # names the field

    def as_dict(self, key: str) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "message": self.message}
        limit = EDITABLE.get(key)
        if limit is not None:
            out.update(min=limit.low, max=limit.high, integer=limit.integer,
                       zero_off=limit.zero_off)
        return out


def check_value(key: str, value: Any) -> tuple[int | float | None, FieldError | None]:
    """One requested value: (the value to store, None) or (None, why not). None clears
    the override (the configuration file's value applies again)."""
    limit = EDITABLE.get(key)
    if limit is None:
        if key == "scrypt_n" or key in AccountsConfig.__dataclass_fields__:
            return None, FieldError("fixed", f"accounts.{key} is set in the configuration file "
                                             "only, not here")
        return None, FieldError("unknown", f"{key}: not a setting of the password and lockout "
                                           f"policy (one of {', '.join(EDITABLE)})")
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None, FieldError("number", f"{key}: must be {limit.describe()}, "
                                          f"got {value!r}")
    if limit.integer and value != int(value):
        return None, FieldError("integer", f"{key}: must be {limit.describe()}, got {value!r}")
    if not (limit.low <= value <= limit.high or (limit.zero_off and value == 0)):
        return None, FieldError("range", f"{key}: must be {limit.describe()}, got {value:g}")
    return (int(value) if limit.integer else float(value)), None


def check_changes(changes: Mapping[str, Any]) -> tuple[dict[str, int | float | None],
                                                        dict[str, FieldError]]:
    """Every requested change checked: (the accepted ones, an error per refused field).
    Nothing is applied when any field is refused."""
    accepted: dict[str, int | float | None] = {}
    errors: dict[str, FieldError] = {}
    for key, value in changes.items():
        ok, err = check_value(str(key), value)
        if err is not None:
            errors[str(key)] = err
        else:
            accepted[str(key)] = ok
    return accepted, errors


def stored_overrides(stored: Any) -> dict[str, int | float]:
    """The overrides in a stored setting; a value that no longer passes the checks (a row
    edited by hand, limits narrowed by an upgrade) is left out, so the file's applies."""
    values = stored.get("values") if isinstance(stored, dict) else None
    if not isinstance(values, dict):
        return {}
    out: dict[str, int | float] = {}
    for key, value in values.items():
        ok, err = check_value(str(key), value)
        if err is None and ok is not None:
            out[str(key)] = ok
    return out


def effective(base: AccountsConfig, overrides: Mapping[str, int | float]) -> AccountsConfig:
    """The policy in force: the configuration's, with the stored overrides on top."""
    fields: dict[str, Any] = {k: v for k, v in overrides.items() if k in EDITABLE}
    return replace(base, **fields)


def editable_document(base: AccountsConfig, overrides: Mapping[str, int | float],
                      stored: Any = None) -> dict[str, Any]:
    """What the console's form needs besides the rules: the limits of each field, the
    configuration file's value and which ones are overridden, and the last change."""
    meta = stored if isinstance(stored, dict) else {}
    return {
        "editable": {k: {"min": lim.low, "max": lim.high, "integer": lim.integer,
                         "zero_off": lim.zero_off, "unit": lim.unit}
                     for k, lim in EDITABLE.items()},
        "configured": {k: getattr(base, k) for k in EDITABLE},
        "overrides": dict(overrides),
        "changed_at": meta.get("at"), "changed_by": meta.get("by"),
    }

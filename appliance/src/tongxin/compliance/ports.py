"""The compliance store port: audit records, signed heads, second factors,
admin sessions, settings, legal holds and retention state.

The embedded default is :class:`tongxin.compliance.sqlite_store.SqliteComplianceStore`
(a file of its own, ``<data_dir>/compliance.db``, one node's state). With
``storage.backend: mysql`` it is
:class:`tongxin.compliance.mysql_store.MysqlComplianceStore`: tables in the
shared MySQL/TiDB database, so every node sees the same chain, second
factors, sessions, holds and policies. tests/integration/
test_compliance_store_contract.py runs the same contract against both.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class AuditRecord:
    seq: int
    ts: int
    event: str
    actor: str
    target: str
    outcome: str
    body: str  # canonical JSON of the record, "hash" excluded
    hash: str  # hex SM3 of body

    def fields(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass(slots=True)
class SignedHead:
    seq: int
    hash: str
    ts: int
    node: str
    key_fp: str  # hex SM3 of the signing key's SubjectPublicKeyInfo DER
    signature: str  # hex DER SM2 signature over chain.head_message(...)


@dataclass(slots=True)
class TotpRow:
    user_id: str
    secret_enc: bytes  # nonce(12) || SM4-GCM(secret) || tag(16), AAD = user id
    enrolled_at: int
    last_step: int = 0
    enrolled_by: str = ""


@dataclass(slots=True)
class SmsPhone:
    user_id: str
    phone_enc: bytes  # nonce(12) || SM4-GCM(phone number) || tag(16), AAD = user id
    enrolled_at: int
    enrolled_by: str = ""


@dataclass(slots=True)
class SmsCode:
    """The one outstanding SMS code of a user (a new one replaces it)."""

    user_id: str
    code_mac: str  # hex HMAC-SM3 over user id, created_at and the code: never the code
    created_at: int
    expires_at: int
    used_at: int = 0
    attempts: int = 0  # wrong codes tried against it


@dataclass(slots=True)
class AdminSession:
    token_id: str
    user_id: str
    role: str
    issued_at: int
    expires_at: int
    factor_at: int  # last time a TOTP code was verified for this session (ms)


@dataclass(slots=True)
class Hold:
    id: int
    kind: str  # "user" or "conversation"
    target: str  # user id or conversation id
    reason: str
    created_by: str
    created_at: int
    released_at: int = 0
    released_by: str = ""


@dataclass(slots=True)
class RetentionRun:
    id: int
    started_at: int
    started_by: str
    cutoffs: dict[str, int]  # scope -> sent_at cutoff (ms), fixed when the run starts
    cursor: str  # last conversation id finished
    deleted: int
    finished_at: int = 0


class ComplianceStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    @property
    def shared(self) -> bool:
        """True when several nodes use this store (one chain, one set of holds)."""
        ...

    def exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Hold the lock ``name`` for the block if no one else does; yields False otherwise.

        Installation-wide on a shared store (archive runs, retention runs);
        a no-op yielding True on a one-node store, whose callers lock locally.
        """
        ...

    # audit chain
    async def append_audit(self, fields: dict[str, Any]) -> AuditRecord:
        """Link the record to the chain's head and store it durably (one transaction)."""
        ...
    async def audit_state(self) -> tuple[int, str]:
        """(seq, hash) of the newest record ever appended, archived or not."""
        ...
    async def audit_records(self, after_seq: int, limit: int) -> list[AuditRecord]: ...
    async def audit_older_than(self, ts: int, limit: int) -> list[AuditRecord]: ...
    async def delete_audit_through(self, seq: int) -> int: ...
    async def add_head(self, head: SignedHead) -> None: ...
    async def heads(self) -> list[SignedHead]: ...
    async def publish_key(self, key_fp: str, pem: bytes, node: str, at: int) -> None:
        """Make an audit public key known to every node (a no-op on a one-node store,
        whose ``audit-keys/`` directory is the record)."""
        ...
    async def published_keys(self) -> dict[str, bytes]:
        """Public keys published by ``publish_key``, PEM by fingerprint."""
        ...

    # second factor
    async def get_totp(self, user_id: str) -> TotpRow | None: ...
    async def put_totp(self, row: TotpRow) -> None: ...
    async def delete_totp(self, user_id: str) -> bool: ...
    async def use_totp_step(self, user_id: str, step: int) -> bool:
        """Record ``step`` as used; False if it (or a later one) was used before."""
        ...
    async def totp_user_ids(self) -> list[str]: ...

    # SMS second factor
    async def get_sms_phone(self, user_id: str) -> SmsPhone | None: ...
    async def put_sms_phone(self, row: SmsPhone) -> None: ...
    async def delete_sms_phone(self, user_id: str) -> bool: ...
    async def sms_user_ids(self) -> list[str]: ...
    async def reserve_sms_send(self, user_id: str, at: int, interval_ms: int,
                               per_hour: int) -> int:
        """Record a send at ``at`` unless the rate limit forbids it; 0 if recorded,
        else how many ms until one is allowed (one transaction, so racing requests
        cannot both pass)."""
        ...
    async def put_sms_code(self, row: SmsCode) -> None: ...
    async def get_sms_code(self, user_id: str) -> SmsCode | None: ...
    async def use_sms_code(self, user_id: str, created_at: int, at: int) -> bool:
        """Mark that code used; False if it was used (or replaced) before."""
        ...
    async def sms_code_failed(self, user_id: str, created_at: int) -> int:
        """Count a wrong code against that code; returns its attempts so far."""
        ...

    # admin sessions
    async def add_admin_session(self, s: AdminSession) -> None: ...
    async def get_admin_session(self, token_id: str) -> AdminSession | None: ...
    async def set_factor_at(self, token_id: str, at: int) -> None: ...

    # settings (JSON values)
    async def get_setting(self, key: str) -> Any: ...
    async def set_setting(self, key: str, value: Any, at: int, by: str) -> None: ...

    # legal holds
    async def add_hold(self, kind: str, target: str, reason: str, by: str, at: int) -> Hold: ...
    async def release_hold(self, hold_id: int, by: str, at: int) -> Hold | None: ...
    async def holds(self, active_only: bool = True) -> list[Hold]: ...

    # message retention
    async def set_policy(self, scope: str, days: float | None) -> None: ...
    async def policies(self) -> dict[str, float]: ...
    async def open_run(self) -> RetentionRun | None: ...
    async def start_run(self, at: int, by: str, cutoffs: dict[str, int]) -> RetentionRun: ...
    async def save_run(self, run: RetentionRun) -> None: ...
    async def last_run(self) -> RetentionRun | None: ...

"""TOTP: codes from pyotp, replay refused, secrets encrypted at rest."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest
from conftest import make_config  # type: ignore[import-not-found, unused-ignore]

from tongxin.compliance import roles
from tongxin.compliance.service import Compliance
from tongxin.compliance.totp import TotpResult


@pytest.fixture
async def comp(tmp_path: Path) -> AsyncIterator[Compliance]:
    c = Compliance(make_config(tmp_path / "home"))
    await c.open()
    yield c
    await c.close()


async def test_wrong_replayed_and_old_codes_are_refused(comp: Compliance) -> None:
    secret, uri = await comp.totp.enroll("u_1", "alice", "test")
    assert uri.startswith("otpauth://totp/Tongxin:alice?secret=")
    totp = pyotp.TOTP(secret)
    t0 = 1_800_000_015.0  # mid-step
    assert await comp.totp.verify("u_1", totp.at(t0), at=t0) is TotpResult.OK
    assert await comp.totp.verify("u_1", totp.at(t0), at=t0) is TotpResult.REPLAYED
    assert await comp.totp.verify("u_1", totp.at(t0 - 30), at=t0) is TotpResult.REPLAYED
    assert await comp.totp.verify("u_1", totp.at(t0 + 90), at=t0) is TotpResult.WRONG  # too far
    assert await comp.totp.verify("u_1", "12345", at=t0) is TotpResult.WRONG
    assert await comp.totp.verify("u_1", totp.at(t0 + 30), at=t0) is TotpResult.OK  # drift +1
    assert await comp.totp.verify("u_2", totp.at(t0), at=t0) is TotpResult.NOT_ENROLLED


async def test_secret_is_encrypted_and_bound_to_the_user(comp: Compliance) -> None:
    secret, _ = await comp.totp.enroll("u_1", "alice", "test")
    conn = sqlite3.connect(comp.cfg.home / "compliance.db")
    blob = conn.execute("SELECT secret_enc FROM totp WHERE user_id='u_1'").fetchone()[0]
    assert secret.encode() not in blob
    # The row moved to another user does not decrypt (the user id is the AAD).
    conn.execute("UPDATE totp SET user_id='u_2' WHERE user_id='u_1'")
    conn.commit()
    conn.close()
    now = time.time()
    assert await comp.totp.verify("u_2", pyotp.TOTP(secret).at(now), at=now) is TotpResult.WRONG


def test_role_permissions_are_disjoint_and_sensitive_ops_have_owners() -> None:
    admin = [roles.PERMISSIONS[r] for r in roles.ADMIN_ROLES]
    for i, a in enumerate(admin):
        for b in admin[i + 1:]:
            assert not a & b
    assert not roles.PERMISSIONS[roles.USER]
    for op in roles.SENSITIVE:
        assert roles.owner_of(op) in roles.ADMIN_ROLES
    assert roles.allowed("auditor", "session.read") and not roles.allowed("user", "session.read")


async def test_secret_files_are_sealed_at_rest_and_plaintext_ones_migrate(
        tmp_path: Path) -> None:
    """secrets/totp.key and secrets/audit_sign.key from before encryption at rest are read
    as they are and resealed on first load; every secret keeps working afterwards."""
    from tongxin.atrest.errors import KeyProviderError
    from tongxin.atrest.keyring import is_sealed
    from tongxin.auth.tokens import KEY_BYTES
    from tongxin.crypto import sm2_available

    home = tmp_path / "home"
    # The state an installation from before had: plaintext secrets, a TOTP made with them.
    old = Compliance(make_config(home, storage={"encryption": False}))
    await old.open()
    try:
        secret, _ = await old.totp.enroll("u_1", "alice", "test")
        fp = (await old.rotate_key()) if sm2_available() else ""
        await old.audit("auth.login", actor="u_1")
    finally:
        await old.close()
    totp_file, sign_file = home / "secrets" / "totp.key", home / "secrets" / "audit_sign.key"
    assert len(totp_file.read_bytes()) == KEY_BYTES and not is_sealed(totp_file.read_bytes())

    for _ in range(2):  # the first open migrates, the second reads the sealed files
        c = Compliance(make_config(home))
        await c.open()
        try:
            t0 = time.time()
            code = pyotp.TOTP(secret).at(t0 + 30 * _)
            assert await c.totp.verify("u_1", code, at=t0 + 30 * _) is TotpResult.OK
            if sm2_available():
                assert c.keys.current_fingerprint() == fp
                c.cfg.compliance.audit_trusted_keys = fp
                await c.sign_head(force=True)
                assert (await c.verify()).ok  # what `tongxin audit verify` runs
        finally:
            await c.close()
        assert is_sealed(totp_file.read_bytes())
        assert not sm2_available() or is_sealed(sign_file.read_bytes())
    assert (totp_file.stat().st_mode & 0o777) == 0o600
    # Sealed: unreadable without the master key (a copied data directory minus the key).
    bare = Compliance(make_config(home))
    with pytest.raises(KeyProviderError):
        await bare.open(None, load_keyring=False)
    await bare.close()

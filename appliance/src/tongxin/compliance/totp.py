"""Second factor: TOTP (RFC 6238) through pyotp, with replay protection.

Secrets are 160-bit (pyotp.random_base32), stored SM4-GCM encrypted under a
key derived (HKDF-SM3) from ``<data_dir>/secrets/totp.key``, with the user id
as associated data, so a copied ``compliance.db`` alone yields no secrets and a
row moved to another user does not decrypt. Codes are 6 digits, 30-second
steps, SHA-1 (what every authenticator app implements), and one step of clock
drift either way is accepted. A code's time step is remembered per user and
only a later step is accepted next: a code is never accepted twice.
"""

from __future__ import annotations

import enum
import os
import time
from pathlib import Path

import pyotp
from pyotp.exceptions import OTPVerificationError

from tongxin.auth.tokens import load_or_create_key
from tongxin.clock import now_ms
from tongxin.compliance.ports import ComplianceStore, TotpRow
from tongxin.crypto import hkdf_sm3, sm4_gcm_decrypt, sm4_gcm_encrypt
from tongxin.crypto.errors import DecryptionError

ISSUER = "Tongxin"
DIGITS = 6
INTERVAL = 30
VALID_WINDOW = 1


class TotpResult(enum.Enum):
    OK = "ok"
    WRONG = "wrong"
    REPLAYED = "replayed"
    NOT_ENROLLED = "not_enrolled"


def totp_key(master: bytes) -> bytes:
    """The SM4 key of the TOTP secrets, from the contents of secrets/totp.key (which
    Compliance.open loads sealed at rest: tongxin.atrest.records.load_or_create_secret)."""
    return hkdf_sm3(master, 16, info=b"tongxin totp secrets v1")


def secrets_key(home: Path) -> bytes:
    """:func:`totp_key` of a plaintext secrets/totp.key (tests, tools without a keyring)."""
    return totp_key(load_or_create_key(home / "secrets" / "totp.key"))


class Totp:
    def __init__(self, store: ComplianceStore, key: bytes) -> None:
        self.store = store
        self._key = key

    def _seal(self, user_id: str, secret: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + sm4_gcm_encrypt(self._key, nonce, secret.encode(), user_id.encode())

    def _open(self, row: TotpRow) -> str:
        data = row.secret_enc
        return sm4_gcm_decrypt(self._key, data[:12], data[12:], row.user_id.encode()).decode()

    async def enroll(self, user_id: str, username: str, by: str) -> tuple[str, str]:
        """A new secret (replacing any old one): (base32 secret, otpauth:// URI)."""
        secret = pyotp.random_base32()
        await self.store.put_totp(TotpRow(user_id, self._seal(user_id, secret), now_ms(), 0, by))
        uri = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL).provisioning_uri(
            name=username, issuer_name=ISSUER)
        return secret, uri

    async def enrolled(self, user_id: str) -> bool:
        return await self.store.get_totp(user_id) is not None

    async def reset(self, user_id: str) -> bool:
        return await self.store.delete_totp(user_id)

    async def verify(self, user_id: str, code: str, at: float | None = None) -> TotpResult:
        row = await self.store.get_totp(user_id)
        if row is None:
            return TotpResult.NOT_ENROLLED
        code = code.strip().replace(" ", "")
        if len(code) != DIGITS or not code.isdigit():
            return TotpResult.WRONG
        try:
            secret = self._open(row)
        except DecryptionError:
            return TotpResult.WRONG
        totp = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL)
        try:
            step = totp.verify_and_get_timecode(
                code, for_time=time.time() if at is None else at, valid_window=VALID_WINDOW)
        except OTPVerificationError:
            return TotpResult.WRONG
        if not await self.store.use_totp_step(user_id, step):
            return TotpResult.REPLAYED
        return TotpResult.OK

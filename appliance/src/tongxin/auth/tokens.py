"""Login tokens: a JSON claim set authenticated with HMAC-SM3.

Form: ``v1.<base64url(claims)>.<base64url(HMAC-SM3(key, "v1." + claims_b64))>``.
HMAC-SM3 comes from ``cryptography`` (OpenSSL), never a hand-written SM3.
Revocation is a lookup of the token id in the store, so a stolen token can be
cut off before it expires.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

PREFIX = "v1"
KEY_BYTES = 32


class TokenError(Exception):
    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Claims:
    token_id: str
    user_id: str
    device_id: str
    issued_at_ms: int
    expires_at_ms: int


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, data: bytes) -> hmac.HMAC:
    h = hmac.HMAC(key, hashes.SM3())
    h.update(data)
    return h


def load_or_create_key(path: Path) -> bytes:
    """The signing key lives in the data directory, readable by the service only."""
    if path.exists():
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise ValueError(f"token key {path} must hold {KEY_BYTES} bytes, found {len(key)}")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = os.urandom(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("token key too short")
        self._key = key

    def sign(self, claims: Claims) -> str:
        body = _b64e(json.dumps({
            "tid": claims.token_id, "uid": claims.user_id, "did": claims.device_id,
            "iat": claims.issued_at_ms, "exp": claims.expires_at_ms,
        }, separators=(",", ":"), sort_keys=True).encode())
        signed = f"{PREFIX}.{body}".encode()
        return f"{PREFIX}.{body}.{_b64e(_mac(self._key, signed).finalize())}"

    def verify(self, token: str, now_ms: int) -> Claims:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise TokenError("token is not in v1.<claims>.<mac> form")
        try:
            mac = _b64d(parts[2])
            _mac(self._key, f"{parts[0]}.{parts[1]}".encode()).verify(mac)
        except (InvalidSignature, ValueError) as exc:
            raise TokenError("token signature does not verify") from exc
        try:
            data = json.loads(_b64d(parts[1]))
            claims = Claims(str(data["tid"]), str(data["uid"]), str(data["did"]),
                            int(data["iat"]), int(data["exp"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError("token claims are malformed") from exc
        if claims.expires_at_ms <= now_ms:
            raise TokenError("token has expired", expired=True)
        return claims

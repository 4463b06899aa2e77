"""The escrow private key, split k-of-n (docs/security.md, "Escrow: who can read what").

The key is never a plain file on a node: ``tongxin keys escrow-split`` encrypts it under a
random 32-byte secret and splits that secret with Shamir's scheme (pycryptodome's
``Crypto.Protocol.SecretSharing.Shamir``, over GF(2^128), so the secret is split as two
16-byte halves with the same share indices). The node keeps only the sealed key; the
shares are held by people (the security administrator and the auditor) and meet only in
the memory of the node that runs an approved escrow decryption.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from Crypto.Protocol.SecretSharing import Shamir

from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite
from tongxin.e2ee import encoding as enc

SEALED_FORMAT = "tongxin-escrow-sealed-v1"
SHARE_PREFIX = "tongxin-escrow-share-v1"
L_SEAL = "tongxin-escrow-seal-v1"
_HALF = 16  # Shamir in pycryptodome shares 16-byte secrets
_SHARE = re.compile(rf"^{SHARE_PREFIX}:([0-9a-f]{{16}}):(\d+):(\d+):([0-9a-f]{{{4 * _HALF}}})$")


class ShareError(ValueError):
    """Shares that cannot open the sealed key: malformed, for another key, too few,
    repeated, or wrong (the sealed key's AEAD does not open)."""


@dataclass(frozen=True)
class Share:
    key_id: str
    threshold: int
    index: int
    value: bytes
    """The two 16-byte halves' share values, concatenated."""

    def __str__(self) -> str:
        return f"{SHARE_PREFIX}:{self.key_id}:{self.threshold}:{self.index}:{self.value.hex()}"

    @classmethod
    def parse(cls, text: str) -> Share:
        m = _SHARE.match(text.strip())
        if m is None:
            raise ShareError(f"not a share ({SHARE_PREFIX}:KEY_ID:K:INDEX:HEX)")
        return cls(m[1], int(m[2]), int(m[3]), bytes.fromhex(m[4]))


@dataclass(frozen=True)
class SealedKey:
    suite: str
    key_id: str
    threshold: int
    shares: int
    nonce: bytes
    ciphertext: bytes

    def aad(self) -> bytes:
        return (enc.lp(L_SEAL) + enc.lp(self.suite) + enc.lp(self.key_id)
                + enc.u32(self.threshold) + enc.u32(self.shares))

    def to_json(self) -> str:
        return json.dumps({"format": SEALED_FORMAT, "suite": self.suite, "key_id": self.key_id,
                           "threshold": self.threshold, "shares": self.shares,
                           "nonce": base64.b64encode(self.nonce).decode(),
                           "ciphertext": base64.b64encode(self.ciphertext).decode()},
                          indent=2) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> SealedKey:
        try:
            d: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
            if d.get("format") != SEALED_FORMAT:
                raise ValueError(f"format is not {SEALED_FORMAT!r}")
            return cls(str(d["suite"]), str(d["key_id"]), int(d["threshold"]), int(d["shares"]),
                       base64.b64decode(d["nonce"], validate=True),
                       base64.b64decode(d["ciphertext"], validate=True))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise ValueError(f"{path}: not a sealed escrow key: {exc}") from exc


def _seal_key(suite: CryptoSuite, secret: bytes) -> bytes:
    return suite.hkdf(secret, suite.aead_key_size, info=L_SEAL.encode())


def split(suite: CryptoSuite, private_key: bytes, key_id: str, threshold: int,
          shares: int) -> tuple[SealedKey, list[Share]]:
    """Seal ``private_key`` and split the sealing secret into ``shares`` shares of which any
    ``threshold`` open it (2 <= threshold <= shares <= 255: one share alone never does)."""
    if not 2 <= threshold <= shares <= 255:
        raise ValueError("need 2 <= threshold <= shares <= 255")
    secret = os.urandom(2 * _HALF)
    nonce = os.urandom(enc.NONCE_SIZE)
    sealed = SealedKey(suite.name, key_id, threshold, shares, nonce, b"")
    ct = suite.aead_encrypt(_seal_key(suite, secret), nonce, private_key, sealed.aad())
    sealed = SealedKey(suite.name, key_id, threshold, shares, nonce, ct)
    lo = Shamir.split(threshold, shares, secret[:_HALF])
    hi = Shamir.split(threshold, shares, secret[_HALF:])
    out = [Share(key_id, threshold, i, a + b) for (i, a), (j, b) in zip(lo, hi, strict=True)
           if i == j]
    if len(out) != shares:  # pycryptodome numbers both splits 1..n; anything else is a bug
        raise RuntimeError("Shamir split returned mismatched indices")
    return sealed, out


def combine(suite: CryptoSuite, sealed: SealedKey, shares: list[Share]) -> bytes:
    """The escrow private key from ``sealed`` and at least ``threshold`` distinct shares."""
    if sealed.suite != suite.name:
        raise ShareError(f"the sealed key is for suite {sealed.suite!r}, not {suite.name!r}")
    for s in shares:
        if s.key_id != sealed.key_id:
            raise ShareError(f"a share is for escrow key {s.key_id}, not {sealed.key_id}")
        if not 1 <= s.index <= sealed.shares or len(s.value) != 2 * _HALF:
            raise ShareError(f"share {s.index} is not one of this key's {sealed.shares}")
    indices = {s.index for s in shares}
    if len(indices) != len(shares):
        raise ShareError("the same share was given twice")
    if len(shares) < sealed.threshold:
        raise ShareError(f"{len(shares)} share(s) given; this key needs {sealed.threshold}")
    use = shares[:sealed.threshold]
    secret = (Shamir.combine([(s.index, s.value[:_HALF]) for s in use])
              + Shamir.combine([(s.index, s.value[_HALF:]) for s in use]))
    try:
        return suite.aead_decrypt(_seal_key(suite, secret), sealed.nonce, sealed.ciphertext,
                                  sealed.aad())
    except (CryptoError, ValueError) as exc:
        raise ShareError("the shares do not open the sealed escrow key (a wrong share)") from exc

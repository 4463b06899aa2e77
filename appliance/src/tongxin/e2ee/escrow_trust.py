"""Who vouches for the escrow key (docs/e2ee.md section 10.1).

Without this a server could announce its own escrow key in ``AUTH_OK`` and read every
message. The organisation root, a signing key of the suite made offline
(``tongxin keys org-root``) and provisioned into clients at install time (role ``pki``),
signs a statement binding (suite, escrow key id, escrow public key, not-before, sequence).
Clients verify it against the provisioned root, pin the newest verified statement per
device state, refuse one older than the pin and report a change of escrow key.

A pure library: the statement file on the node, the ``EscrowStatement`` of the wire and
the client's pin all go through here.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee.errors import EscrowUntrustedError
from tongxin.proto import tongxin_pb2 as pb

STATEMENT_FORMAT = "tongxin-escrow-statement-v1"
"""The ``format`` member of a statement file, so a wrong file is named as such."""
CLOCK_SKEW_MS = 5 * 60 * 1000
"""A statement whose not-before is this far ahead of the client's clock is refused: a
root may sign ahead of a planned rotation, and such a statement must not be used early."""


def key_bytes(data: bytes) -> bytes:
    """DER, or the DER inside a PEM text (the forms ``openssl pkey`` writes)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        body = re.sub(rb"-----[^-]+-----", b"", data)
        try:
            return base64.b64decode(b"".join(body.split()), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not a PEM file: {exc}") from exc
    return data


def pem(der: bytes, label: str) -> bytes:
    b64 = base64.encodebytes(der).replace(b"\n", b"")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return (f"-----BEGIN {label}-----\n".encode() + b"\n".join(lines)
            + f"\n-----END {label}-----\n".encode())


def root_key_id(suite: CryptoSuite, root_public_key: bytes) -> str:
    """hex(H(root public key, SPKI DER)): the root's fingerprint, 64 hex digits with both
    suites, which operators compare with the one the install printed."""
    return suite.hash(root_public_key).hex()


@dataclass(frozen=True)
class EscrowStatement:
    suite: str
    key_id: str
    public_key: bytes
    not_before_ms: int
    sequence: int
    root_key_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return enc.escrow_statement(self.suite, self.key_id, self.public_key,
                                    self.not_before_ms, self.sequence)

    # ---- the wire ---------------------------------------------------------------------

    def to_proto(self) -> pb.EscrowStatement:
        return pb.EscrowStatement(not_before_ms=self.not_before_ms, sequence=self.sequence,
                                  root_key_id=self.root_key_id, signature=self.signature)

    @classmethod
    def from_auth(cls, auth: pb.AuthResponse) -> EscrowStatement | None:
        """The statement an ``AUTH_OK`` carries for its escrow key; None when it has none."""
        if not auth.HasField("escrow_statement"):
            return None
        st = auth.escrow_statement
        return cls(auth.crypto_suite, auth.escrow_key_id, bytes(auth.escrow_public_key),
                   st.not_before_ms, st.sequence, st.root_key_id, bytes(st.signature))

    # ---- the node's file ----------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({
            "format": STATEMENT_FORMAT, "suite": self.suite, "escrow_key_id": self.key_id,
            "escrow_public_key": base64.b64encode(self.public_key).decode(),
            "not_before_ms": self.not_before_ms, "sequence": self.sequence,
            "root_key_id": self.root_key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EscrowStatement:
        try:
            d: dict[str, Any] = json.loads(text)
            if d.get("format") != STATEMENT_FORMAT:
                raise ValueError(f"format is not {STATEMENT_FORMAT!r}")
            return cls(str(d["suite"]), str(d["escrow_key_id"]),
                       base64.b64decode(d["escrow_public_key"], validate=True),
                       int(d["not_before_ms"]), int(d["sequence"]), str(d["root_key_id"]),
                       base64.b64decode(d["signature"], validate=True))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise ValueError(f"not an escrow key statement: {exc}") from exc

    @classmethod
    def read(cls, path: str | Path) -> EscrowStatement:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def sign(suite: CryptoSuite, root_private_key: bytes, root_public_key: bytes,
         escrow_public_key: bytes, not_before_ms: int, sequence: int) -> EscrowStatement:
    """The root's statement for ``escrow_public_key``; refuses a key that is not a KEM key
    of the suite (a wrong file signed would be vouched for)."""
    if sequence < 1:
        raise ValueError("the sequence starts at 1")
    suite.kem_encapsulate(escrow_public_key)  # raises unless it is a KEM key of this suite
    key_id = enc.escrow_key_id(suite, escrow_public_key)
    unsigned = EscrowStatement(suite.name, key_id, escrow_public_key, not_before_ms, sequence,
                               root_key_id(suite, root_public_key), b"")
    signature = suite.sign(root_private_key, unsigned.signed_bytes())
    st = replace(unsigned, signature=signature)
    verify(suite, root_public_key, st)  # a root key pair that does not match fails here
    return st


def verify(suite: CryptoSuite, root_public_key: bytes, st: EscrowStatement,
           now_ms: int | None = None) -> None:
    """Raise :class:`EscrowUntrustedError` unless the root signed ``st`` for this suite,
    its key id names its key and (with ``now_ms``) it is already valid."""
    if st.suite != suite.name:
        raise EscrowUntrustedError(f"the escrow statement is for suite {st.suite!r}, the "
                                   f"server uses {suite.name!r}")
    if st.key_id != enc.escrow_key_id(suite, st.public_key):
        raise EscrowUntrustedError(f"escrow key id {st.key_id!r} does not name the announced "
                                   "escrow public key")
    expected_root = root_key_id(suite, root_public_key)
    if st.root_key_id != expected_root:
        raise EscrowUntrustedError(
            f"the escrow key statement names root {st.root_key_id[:16] or '(none)'}…, not the "
            f"provisioned organisation root {expected_root[:16]}…")
    try:
        suite.verify(root_public_key, st.signed_bytes(), st.signature)
    except (CryptoError, ValueError) as exc:
        raise EscrowUntrustedError("the escrow key statement's signature does not verify "
                                   "against the provisioned organisation root") from exc
    if now_ms is not None and st.not_before_ms > now_ms + CLOCK_SKEW_MS:
        raise EscrowUntrustedError("the escrow key statement is not valid yet (not before "
                                   f"{st.not_before_ms} ms, now {now_ms} ms)")


@dataclass(frozen=True)
class EscrowPin:
    """The newest verified statement a device state has seen."""
    key_id: str
    sequence: int
    root_key_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "sequence": self.sequence,
                "root_key_id": self.root_key_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EscrowPin:
        return cls(str(d["key_id"]), int(d["sequence"]), str(d["root_key_id"]))


class EscrowKeyChangedWarning(UserWarning):
    """Issued (``warnings.warn``) by the SDK when the organisation's escrow key changes."""


@dataclass(frozen=True)
class EscrowKeyChange:
    """The organisation's escrow key changed (a rotation the root signed): show it."""
    old: EscrowPin
    new: EscrowPin

    def __str__(self) -> str:
        return (f"the organisation's compliance escrow key changed from {self.old.key_id} "
                f"(statement {self.old.sequence}) to {self.new.key_id} (statement "
                f"{self.new.sequence}), signed by the organisation root")


def advance_pin(pin: EscrowPin | None, st: EscrowStatement) -> tuple[EscrowPin,
                                                                      EscrowKeyChange | None]:
    """The pin after a verified ``st``, and the change to report (None: first use, or the
    same key). Refuses going back: a server replaying an older statement (an old escrow
    key, perhaps one whose private half has since leaked) must not be believed, and two
    different keys under one sequence mean the root signed both (the root is misused)."""
    new = EscrowPin(st.key_id, st.sequence, st.root_key_id)
    if pin is None:
        return new, None
    if pin.root_key_id == st.root_key_id:
        if st.sequence < pin.sequence:
            raise EscrowUntrustedError(
                f"the server announced escrow statement {st.sequence} (key {st.key_id}), "
                f"older than statement {pin.sequence} (key {pin.key_id}) this device has seen")
        if st.sequence == pin.sequence and st.key_id != pin.key_id:
            raise EscrowUntrustedError(
                f"escrow statement {st.sequence} names key {st.key_id}, but this device saw "
                f"it name {pin.key_id}: the organisation root signed two keys with one "
                "sequence")
    # A statement of a newly provisioned root (a reinstall) starts its own sequence.
    return new, (EscrowKeyChange(pin, new) if new.key_id != pin.key_id else None)

"""Compliance escrow (docs/e2ee.md section 10): every content key also KEM-wrapped to the
organisation's escrow public key; opened only by the audited admin operation."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from tongxin.crypto.errors import CryptoError
from tongxin.crypto.suite import CryptoSuite
from tongxin.e2ee import encoding as enc
from tongxin.e2ee.errors import EscrowError, MalformedError, TamperedError
from tongxin.proto import e2ee_pb2 as e2


def _kdf(suite: CryptoSuite, shared_secret: bytes) -> tuple[bytes, bytes]:
    k = suite.aead_key_size
    okm = suite.hkdf(shared_secret, k + enc.NONCE_SIZE, info=enc.L_ESCROW)
    return okm[:k], okm[k:]


def wrap(suite: CryptoSuite, public_key: bytes, key_id: str, content_key: bytes,
         body_aad: bytes) -> e2.EscrowWrap:
    encap = suite.kem_encapsulate(public_key)
    key, nonce = _kdf(suite, encap.shared_secret)
    wrapped = suite.aead_encrypt(key, nonce, content_key, body_aad + enc.lp(key_id))
    return e2.EscrowWrap(key_id=key_id, kem_ciphertext=encap.encapsulated_key,
                         wrapped_key=wrapped)


def unwrap(suite: CryptoSuite, private_key: bytes, key_id: str, wrap_msg: e2.EscrowWrap,
           body_aad: bytes) -> bytes:
    if wrap_msg.key_id != key_id:
        raise EscrowError(f"escrow wrap is for key {wrap_msg.key_id!r}, not {key_id!r}")
    try:
        ss = suite.kem_decapsulate(private_key, wrap_msg.kem_ciphertext)
        key, nonce = _kdf(suite, ss)
        return suite.aead_decrypt(key, nonce, wrap_msg.wrapped_key,
                                  body_aad + enc.lp(wrap_msg.key_id))
    except (CryptoError, ValueError) as exc:
        raise EscrowError("escrow wrap does not open with the escrow key") from exc


def check_structure(suite: CryptoSuite, encrypted: bytes, key_id: str) -> str | None:
    """What the server can check without the private key; the refusal reason or None."""
    try:
        env = e2.Envelope.FromString(encrypted)
    except DecodeError:
        return "encrypted content is not an E2EE envelope"
    if env.version != enc.VERSION or env.suite != suite.name:
        return f"envelope must be version {enc.VERSION} of suite {suite.name!r}"
    if not env.HasField("escrow") or env.escrow.key_id != key_id:
        return f"compliance escrow is on: the envelope needs an escrow wrap for key {key_id}"
    if (not env.escrow.kem_ciphertext
            or len(env.escrow.wrapped_key) != suite.aead_key_size + suite.aead_tag_size):
        return "escrow wrap is malformed"
    return None


def open_envelope(suite: CryptoSuite, private_key: bytes, key_id: str, conversation_id: str,
                  sender_user: str, encrypted: bytes) -> e2.Payload:
    """Decrypt a stored envelope with the escrow private key (auditor operation)."""
    try:
        env = e2.Envelope.FromString(encrypted)
    except DecodeError as exc:
        raise MalformedError("not an E2EE envelope") from exc
    if not env.HasField("escrow"):
        raise EscrowError("this envelope carries no escrow wrap (sent while escrow was off)")
    aad = enc.body_aad(suite.name, conversation_id, sender_user, env.sender_device, env.kind)
    content_key = unwrap(suite, private_key, key_id, env.escrow, aad)
    try:
        plain = suite.aead_decrypt(content_key, env.nonce, env.ciphertext, aad)
        return e2.Payload.FromString(plain)
    except (CryptoError, ValueError, DecodeError) as exc:
        raise TamperedError("envelope body does not open with the escrowed key") from exc

"""The exact byte strings that are signed, hashed or used as AEAD data (docs/e2ee.md).

Protobuf serialisation is not canonical across languages, so none of these is protobuf:
each is a concatenation of length-prefixed fields that a second implementation rebuilds
from the same values.
"""

from __future__ import annotations

from tongxin.crypto.suite import CryptoSuite

VERSION = 1
PREKEY_SIGNED = 1
PREKEY_ONE_TIME = 2

L_PREKEY = "tongxin-e2ee-v1/prekey"
L_SESSION = "tongxin-e2ee-v1/session"
L_SESSION_KEYS = b"tongxin-e2ee-v1/session-keys"
L_RATCHET = b"tongxin-e2ee-v1/ratchet"
L_MESSAGE_KEY = b"tongxin-e2ee-v1/message-key"
L_RECIPIENT = "tongxin-e2ee-v1/recipient"
L_BODY = "tongxin-e2ee-v1/body"
L_GROUP = "tongxin-e2ee-v1/group"
L_GROUP_KEY = b"tongxin-e2ee-v1/group-key"
L_ESCROW = b"tongxin-e2ee-v1/escrow"
L_ATTACHMENT = "tongxin-e2ee-v1/attachment"
L_FINGERPRINT = "tongxin-e2ee-v1/fingerprint"
L_ESCROW_STATEMENT = "tongxin-e2ee-v1/escrow-statement"

NONCE_SIZE = 12
CHAIN_KEY_SIZE = 32


def lp(value: bytes | str) -> bytes:
    """u32 big-endian length, then the bytes (text as UTF-8)."""
    data = value.encode() if isinstance(value, str) else bytes(value)
    return len(data).to_bytes(4, "big") + data


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def prekey_statement(suite: str, user_id: str, device_id: str, kind: int, key_id: int,
                     public_key: bytes) -> bytes:
    return (lp(L_PREKEY) + lp(suite) + lp(user_id) + lp(device_id) + bytes([kind])
            + u32(key_id) + lp(public_key))


def session_transcript(suite: str, a_user: str, a_device: str, a_identity: bytes,
                       b_user: str, b_device: str, b_identity: bytes, spk_id: int,
                       spk_ct: bytes, opk_id: int, opk_ct: bytes, ratchet_key: bytes) -> bytes:
    return (lp(L_SESSION) + lp(suite) + lp(a_user) + lp(a_device) + lp(a_identity)
            + lp(b_user) + lp(b_device) + lp(b_identity) + u32(spk_id) + lp(spk_ct)
            + u32(opk_id) + lp(opk_ct) + lp(ratchet_key))


def body_aad(suite: str, conversation_id: str, sender_user: str, sender_device: str,
             kind: int) -> bytes:
    return (lp(L_BODY) + lp(suite) + lp(conversation_id) + lp(sender_user)
            + lp(sender_device) + bytes([kind]))


def recipient_aad(suite: str, conversation_id: str, sender_user: str, sender_device: str,
                  recipient_user: str, recipient_device: str, session_id: bytes,
                  ratchet_key: bytes, kem_ciphertext: bytes, previous_chain_length: int,
                  counter: int) -> bytes:
    return (lp(L_RECIPIENT) + lp(suite) + lp(conversation_id) + lp(sender_user)
            + lp(sender_device) + lp(recipient_user) + lp(recipient_device) + lp(session_id)
            + lp(ratchet_key) + lp(kem_ciphertext) + u32(previous_chain_length) + u32(counter))


def group_statement(suite: str, conversation_id: str, sender_user: str, sender_device: str,
                    epoch: int, iteration: int, nonce: bytes, ciphertext: bytes) -> bytes:
    return (lp(L_GROUP) + lp(suite) + lp(conversation_id) + lp(sender_user)
            + lp(sender_device) + u32(epoch) + u32(iteration) + lp(nonce) + lp(ciphertext))


def body_digest(suite: CryptoSuite, nonce: bytes, ciphertext: bytes) -> bytes:
    return suite.hash(lp(nonce) + lp(ciphertext))


def attachment_aad(suite: str) -> bytes:
    return lp(L_ATTACHMENT) + lp(suite)


def escrow_key_id(suite: CryptoSuite, public_key: bytes) -> str:
    """16 lowercase hex digits naming an escrow public key."""
    return suite.hash(public_key)[:8].hex()


def escrow_statement(suite: str, key_id: str, public_key: bytes, not_before_ms: int,
                     sequence: int) -> bytes:
    """What the organisation root signs to vouch for an escrow key (section 10.1)."""
    return (lp(L_ESCROW_STATEMENT) + lp(suite) + lp(key_id) + lp(public_key)
            + u64(not_before_ms) + u64(sequence))


def fingerprint(suite: CryptoSuite, user_id: str, identity_keys: list[bytes]) -> bytes:
    data = lp(L_FINGERPRINT) + lp(user_id) + b"".join(lp(k) for k in sorted(identity_keys))
    return suite.hash(data)


def safety_number(suite: CryptoSuite, user_a: str, keys_a: list[bytes], user_b: str,
                  keys_b: list[bytes]) -> str:
    """30 digits in six groups of five; the same for both users."""
    sides = sorted([(user_a.encode(), user_a, keys_a), (user_b.encode(), user_b, keys_b)])
    digits = []
    for _, user, keys in sides:
        fp = fingerprint(suite, user, keys)
        for i in range(3):
            chunk = int.from_bytes(fp[i * 5:(i + 1) * 5], "big") % 100000
            digits.append(f"{chunk:05d}")
    return " ".join(digits)

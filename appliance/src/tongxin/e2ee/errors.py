"""Typed errors of the E2EE layer (docs/e2ee.md section 11).

Every refusal of hostile or broken input is an :class:`E2EEError` subclass, so a client
can reject one message with one ``except`` clause and keep running; no parser or crypto
exception escapes as anything else.
"""

from __future__ import annotations


class E2EEError(Exception):
    """Base class of every E2EE refusal."""


class TamperedError(E2EEError):
    """An AEAD did not open or a digest did not match: the bytes were changed."""


class ReplayError(E2EEError):
    """A message key, sender-key iteration or one-time prekey was already used."""


class TooFarAheadError(E2EEError):
    """Opening this would skip more message keys than the bound allows."""


class WrongSignatureError(E2EEError):
    """A prekey, session transcript or group signature did not verify."""


class NoSessionError(E2EEError):
    """There is no session (or no entry for this device) to open the message with."""


class NoSenderKeyError(E2EEError):
    """No sender key for this group sender and epoch was distributed to this device."""


class MalformedError(E2EEError):
    """The envelope or one of its fields is not what this protocol version allows."""


class EscrowError(E2EEError):
    """Escrow is required but missing, or an escrow wrap does not open."""


class EscrowUntrustedError(EscrowError):
    """Escrow is on but its key is not vouched for by the provisioned organisation root (no
    root, no statement, a statement that does not verify, or one older than the pinned one):
    the SDK refuses to encrypt, since a wrap to that key may be readable by the server."""


class IdentityChangedError(E2EEError):
    """A pinned identity key changed. Nothing is sent to, or accepted from, the device with
    the new key until the user accepts it (:meth:`IdentityStore.accept`)."""

    def __init__(self, user_id: str, device_id: str, old_key: bytes, new_key: bytes) -> None:
        super().__init__(
            f"the identity key of {user_id}/{device_id} changed; verify the safety number "
            "and accept the new key before exchanging messages with that device")
        self.user_id = user_id
        self.device_id = device_id
        self.old_key = old_key
        self.new_key = new_key


class UnannouncedMemberError(E2EEError):
    """The server lists group members that no entry of the conversation's log announced
    (docs/e2ee.md section 7.1): nothing is encrypted to the group until the log shows them."""

    def __init__(self, conversation_id: str, user_ids: list[str]) -> None:
        super().__init__(
            f"the server lists {', '.join(user_ids)} as members of {conversation_id}, but no "
            "membership change in the conversation's log added them; refusing to encrypt")
        self.conversation_id = conversation_id
        self.user_ids = list(user_ids)


class UserKeyChangedError(IdentityChangedError):
    """A user's pinned user key (docs/e2ee.md 9.1) changed, or the directory stopped listing
    one: none of that user's devices is used until the user accepts the new key
    (``E2EEClient.accept_user_key``). ``device_id`` is empty; ``new_key`` is empty when
    the key disappeared."""

    def __init__(self, user_id: str, old_key: bytes, new_key: bytes) -> None:
        super().__init__(user_id, "", old_key, new_key)
        self.args = (
            f"the user key of {user_id} {'changed' if new_key else 'is no longer listed'}; "
            "verify the safety number and accept it before exchanging messages with them",)


class UnsignedDeviceError(E2EEError):
    """A message came from a device its user's key did not sign (a device the server may
    have made): it is not opened."""

    def __init__(self, user_id: str, device_id: str) -> None:
        super().__init__(f"{user_id}/{device_id} is not signed by {user_id}'s user key; its "
                         "messages are refused")
        self.user_id = user_id
        self.device_id = device_id


class DeviceNotSignedError(E2EEError):
    """This device holds no signature of its user's key, so other clients refuse it: open
    the key backup (``E2EEClient.restore_user_key``) or sign it from another device."""

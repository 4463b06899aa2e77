"""Errors of the at-rest layer. None of them carries key material or plaintext."""

from __future__ import annotations


class AtRestError(Exception):
    """Base of every at-rest encryption failure."""


class IntegrityError(AtRestError):
    """A ciphertext failed authentication: tampered, truncated, moved to another row or
    blob (AAD mismatch), or sealed under a key this keyring does not hold."""


class UnknownDataKey(AtRestError):
    """The ciphertext names a DEK that is not loaded (yet); :meth:`Keyring.load` it."""

    def __init__(self, key_id: int) -> None:
        super().__init__(f"data key {key_id} is not loaded")
        self.key_id = key_id


class KeyProviderError(AtRestError):
    """The master key provider could not wrap or unwrap (bad key file, failing KMS hook)."""

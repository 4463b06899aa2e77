"""Encryption at rest: envelope encryption of what is not end-to-end encrypted.

Data is encrypted with data-encryption keys (DEKs: SM4-GCM, or AES-256-GCM with the
international suite). Each DEK is stored in the chat store (table ``data_keys``) wrapped by a
key-encryption key (KEK) that never leaves its master key provider: a 0600 key file
(:class:`~tongxin.atrest.providers.FileKeyProvider`) or an operator's KMS command
(:class:`~tongxin.atrest.providers.CommandKeyProvider`). Rotating the KEK re-wraps the few
DEK rows and never touches the encrypted data. docs/security.md describes the formats.
"""

from __future__ import annotations

from tongxin.atrest.errors import AtRestError, IntegrityError, KeyProviderError, UnknownDataKey
from tongxin.atrest.keyring import DataKeyRow, DekStore, Keyring, is_sealed

__all__ = ["AtRestError", "DataKeyRow", "DekStore", "IntegrityError", "KeyProviderError",
           "Keyring", "UnknownDataKey", "is_sealed"]

"""Exceptions raised by the crypto layer.

Every failure of authenticity (tag, MAC, signature, SM2 C3 hash) surfaces as one of these
types rather than as a library-specific exception, so callers can reject a frame with one
``except`` clause and never crash on hostile input.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class for every error raised by :mod:`tongxin.crypto`."""


class DecryptionError(CryptoError):
    """Ciphertext failed authentication or could not be decrypted.

    The message is deliberately generic: telling a caller *why* a ciphertext was rejected
    (bad tag versus bad padding versus bad point) is the raw material of oracle attacks.
    """


class InvalidSignatureError(CryptoError):
    """A signature did not verify, or was not a well-formed signature at all."""


class InvalidMacError(CryptoError):
    """An HMAC tag did not match."""


class KeyFormatError(CryptoError, ValueError):
    """Key material could not be parsed, is of the wrong algorithm, or is out of range.

    Also a ``ValueError`` so that configuration loaders treating bad input as a value error
    keep working.
    """


class SM2UnavailableError(CryptoError):
    """SM2 was requested but no usable libcrypto (OpenSSL >= 3.0 with SM2) loaded here.

    Raised instead of falling back to another algorithm or to a pure-Python SM2: a GM
    deployment that silently lost SM2 would no longer be the deployment it claims to be.
    """

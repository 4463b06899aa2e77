"""Second, independent implementations of the GM algorithms, for cross-checks in tests only.

* ``gmssl`` (pure Python, dev extra, installs everywhere): SM2, SM3, SM4-ECB/CBC. Its SM2
  nonces come from ``random``, which is why it is never used outside tests.
* ``gmssl-pyx`` (GmSSL's C code): dev extra on x86_64 only, PyPI has no other wheel.
  :data:`GMSSL_PYX` is the module, or None where it is not installed. Checks that only it
  can make are *defined* only when it imports, and checks with another reference are
  parametrized over the references present, so a machine without it runs fewer tests
  instead of counting skipped ones.
"""

from __future__ import annotations

import hmac
import importlib
from collections.abc import Callable
from typing import Any

from gmssl import func as _gmssl_func
from gmssl import sm3 as _gmssl_sm3


def _optional(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


GMSSL_PYX: Any | None = _optional("gmssl_pyx")


def gmssl_sm3(data: bytes) -> bytes:
    """SM3 by the pure-Python gmssl package."""
    return bytes.fromhex(_gmssl_sm3.sm3_hash(_gmssl_func.bytes_to_list(data)))


class _GmsslSM3Hash:
    """The hashlib-object shape the standard library's :mod:`hmac` asks of a digestmod."""

    digest_size = 32
    block_size = 64
    name = "sm3"

    def __init__(self, data: bytes = b"") -> None:
        self._data = bytearray(data)

    def update(self, data: bytes) -> None:
        self._data += data

    def copy(self) -> _GmsslSM3Hash:
        return _GmsslSM3Hash(bytes(self._data))

    def digest(self) -> bytes:
        return gmssl_sm3(bytes(self._data))


def gmssl_hmac_sm3(key: bytes, data: bytes) -> bytes:
    """HMAC (RFC 2104, the standard library's construction) over gmssl's SM3."""
    digestmod: Callable[[], Any] = _GmsslSM3Hash  # duck-typed like a hashlib object
    return hmac.new(key, data, digestmod).digest()


def sm3_references() -> dict[str, Any]:
    refs: dict[str, Any] = {"gmssl": gmssl_sm3}
    if GMSSL_PYX is not None:
        refs["gmssl-pyx"] = GMSSL_PYX.sm3_hash
    return refs


def hmac_sm3_references() -> dict[str, Any]:
    refs: dict[str, Any] = {"hmac+gmssl": gmssl_hmac_sm3}
    if GMSSL_PYX is not None:
        refs["gmssl-pyx"] = GMSSL_PYX.sm3_hmac
    return refs

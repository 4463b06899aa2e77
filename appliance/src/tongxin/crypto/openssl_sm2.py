"""SM2 from the system's OpenSSL 3 libcrypto, reached through ctypes.

A thin binding: every SM2 computation (key generation, d*G, signatures with Z_A over SM3,
encryption and decryption) runs inside libcrypto. Nothing here does arithmetic on curve
points or scalars, or hashes anything; this module only moves bytes in and out and frees
what it allocates. :mod:`tongxin.crypto.sm2` builds the DER containers and enforces the
formats; this module is its only way to libcrypto.

The library is looked up once, on first use: ``$TONGXIN_LIBCRYPTO`` if set (a path or a
soname; nothing else is tried then), otherwise ``ctypes.util.find_library("crypto")`` and
``libcrypto.so.3``. The first candidate that loads, reports OpenSSL >= 3.0 and has SM2
(some builds are configured ``no-sm2``) is used; otherwise every entry point raises
:class:`~tongxin.crypto.errors.SM2UnavailableError` naming libcrypto, the candidates and
what was wrong with each (e.g. Kylin V10's OpenSSL 1.1.1, whose SM2 API differs).

OpenSSL keeps a per-thread error queue, which Python's own ``hashlib`` and ``ssl`` share.
Every call here leaves it empty: a failure drains it into the message of the raised
:class:`OpenSSLError`, a success clears what declined decoders or a bad signature queued.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from ctypes import POINTER, byref, c_char_p, c_int, c_long, c_size_t, c_ulong, c_void_p
from typing import Any, Final

from tongxin.crypto.errors import CryptoError, SM2UnavailableError

LIBCRYPTO_ENV: Final = "TONGXIN_LIBCRYPTO"
MIN_VERSION_NUMBER: Final = 0x30000000  # OpenSSL 3.0.0
_COORD: Final = 32


class OpenSSLError(CryptoError):
    """A libcrypto call failed; the message carries OpenSSL's error strings."""


class _Libcrypto:
    """The loaded library with argtypes/restype declared for every function used.

    A ``c_void_p`` result arrives as ``int`` or ``None`` (NULL); a ``c_int`` one as ``int``.
    """

    ERR_get_error: Callable[[], int]
    ERR_error_string_n: Callable[..., None]
    ERR_clear_error: Callable[[], None]
    OBJ_sn2nid: Callable[..., int]
    d2i_PrivateKey: Callable[..., int | None]
    d2i_PUBKEY: Callable[..., int | None]
    EVP_PKEY_free: Callable[..., None]
    EVP_PKEY_is_a: Callable[..., int]
    EVP_PKEY_get_bn_param: Callable[..., int]
    BN_bn2binpad: Callable[..., int]
    BN_free: Callable[..., None]
    BN_clear_free: Callable[..., None]
    EVP_PKEY_CTX_new: Callable[..., int | None]
    EVP_PKEY_CTX_new_from_name: Callable[..., int | None]
    EVP_PKEY_CTX_free: Callable[..., None]
    EVP_PKEY_keygen_init: Callable[..., int]
    EVP_PKEY_generate: Callable[..., int]
    EVP_PKEY_public_check_quick: Callable[..., int]
    EVP_PKEY_CTX_set1_id: Callable[..., int]
    EVP_MD_CTX_new: Callable[[], int | None]
    EVP_MD_CTX_free: Callable[..., None]
    EVP_MD_CTX_set_pkey_ctx: Callable[..., None]
    EVP_sm3: Callable[[], int | None]
    EVP_DigestSignInit: Callable[..., int]
    EVP_DigestSign: Callable[..., int]
    EVP_DigestVerifyInit: Callable[..., int]
    EVP_DigestVerify: Callable[..., int]
    EVP_PKEY_encrypt_init: Callable[..., int]
    EVP_PKEY_encrypt: Callable[..., int]
    EVP_PKEY_decrypt_init: Callable[..., int]
    EVP_PKEY_decrypt: Callable[..., int]

    _SIGNATURES: Final[dict[str, tuple[list[type[Any]], type[Any] | None]]] = {
        "ERR_get_error": ([], c_ulong),
        "ERR_error_string_n": ([c_ulong, c_char_p, c_size_t], None),
        "ERR_clear_error": ([], None),
        "OBJ_sn2nid": ([c_char_p], c_int),
        # EVP_PKEY *d2i_PrivateKey(int type, EVP_PKEY **a, const unsigned char **pp, long len)
        "d2i_PrivateKey": ([c_int, c_void_p, POINTER(c_void_p), c_long], c_void_p),
        # EVP_PKEY *d2i_PUBKEY(EVP_PKEY **a, const unsigned char **pp, long length)
        "d2i_PUBKEY": ([c_void_p, POINTER(c_void_p), c_long], c_void_p),
        "EVP_PKEY_free": ([c_void_p], None),
        "EVP_PKEY_is_a": ([c_void_p, c_char_p], c_int),
        "EVP_PKEY_get_bn_param": ([c_void_p, c_char_p, POINTER(c_void_p)], c_int),
        "BN_bn2binpad": ([c_void_p, c_void_p, c_int], c_int),
        "BN_free": ([c_void_p], None),
        "BN_clear_free": ([c_void_p], None),
        "EVP_PKEY_CTX_new": ([c_void_p, c_void_p], c_void_p),
        "EVP_PKEY_CTX_new_from_name": ([c_void_p, c_char_p, c_char_p], c_void_p),
        "EVP_PKEY_CTX_free": ([c_void_p], None),
        "EVP_PKEY_keygen_init": ([c_void_p], c_int),
        "EVP_PKEY_generate": ([c_void_p, POINTER(c_void_p)], c_int),
        "EVP_PKEY_public_check_quick": ([c_void_p], c_int),
        "EVP_PKEY_CTX_set1_id": ([c_void_p, c_char_p, c_int], c_int),
        "EVP_MD_CTX_new": ([], c_void_p),
        "EVP_MD_CTX_free": ([c_void_p], None),
        "EVP_MD_CTX_set_pkey_ctx": ([c_void_p, c_void_p], None),
        "EVP_sm3": ([], c_void_p),
        # int EVP_DigestSignInit(EVP_MD_CTX *, EVP_PKEY_CTX **, const EVP_MD *, ENGINE *,
        #                        EVP_PKEY *)
        "EVP_DigestSignInit": ([c_void_p, c_void_p, c_void_p, c_void_p, c_void_p], c_int),
        "EVP_DigestSign": ([c_void_p, c_void_p, POINTER(c_size_t), c_char_p, c_size_t], c_int),
        "EVP_DigestVerifyInit": ([c_void_p, c_void_p, c_void_p, c_void_p, c_void_p], c_int),
        "EVP_DigestVerify": ([c_void_p, c_char_p, c_size_t, c_char_p, c_size_t], c_int),
        "EVP_PKEY_encrypt_init": ([c_void_p], c_int),
        "EVP_PKEY_encrypt": ([c_void_p, c_void_p, POINTER(c_size_t), c_char_p, c_size_t], c_int),
        "EVP_PKEY_decrypt_init": ([c_void_p], c_int),
        "EVP_PKEY_decrypt": ([c_void_p, c_void_p, POINTER(c_size_t), c_char_p, c_size_t], c_int),
    }

    def __init__(self, lib: ctypes.CDLL, name: str, version: str) -> None:
        self.name = name
        self.version = version
        for fname, (argtypes, restype) in self._SIGNATURES.items():
            func = getattr(lib, fname)  # AttributeError names a missing symbol
            func.argtypes = argtypes
            func.restype = restype
            setattr(self, fname, func)
        self.nid_sm2 = self.OBJ_sn2nid(b"SM2")  # NID_sm2, 1172

    def errors(self) -> str:
        """Drain this thread's OpenSSL error queue into one string."""
        texts: list[str] = []
        buf = ctypes.create_string_buffer(256)
        while code := self.ERR_get_error():
            self.ERR_error_string_n(code, buf, len(buf))
            texts.append(buf.value.decode("ascii", "replace"))
        return "; ".join(texts) or "no OpenSSL error recorded"

    def fail(self, what: str) -> OpenSSLError:
        return OpenSSLError(f"{what}: {self.errors()}")


_lock = threading.Lock()
_loaded: _Libcrypto | None = None
_reason: str | None = None
_tried = False


def _candidates() -> list[str]:
    override = os.environ.get(LIBCRYPTO_ENV)
    if override:
        return [override]
    names = [ctypes.util.find_library("crypto"), "libcrypto.so.3"]
    return list(dict.fromkeys(n for n in names if n))


def _open(name: str) -> _Libcrypto:
    """Load one candidate or raise ValueError saying why it cannot serve SM2."""
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise ValueError(f"cannot load {name}: {exc}") from exc
    return _bind(lib, name)


def _bind(lib: ctypes.CDLL, name: str) -> _Libcrypto:
    try:
        version_num = lib.OpenSSL_version_num
        version_text = lib.OpenSSL_version
    except AttributeError as exc:
        raise ValueError(f"{name} is not OpenSSL 1.1 or later (no OpenSSL_version_num)") from exc
    version_num.argtypes, version_num.restype = [], c_ulong
    version_text.argtypes, version_text.restype = [c_int], c_char_p
    number = int(version_num())
    text = (version_text(0) or b"").decode("ascii", "replace")
    if number < MIN_VERSION_NUMBER:
        raise ValueError(f"{name} is {text or hex(number)}; SM2 needs OpenSSL 3.0 or later")
    try:
        bound = _Libcrypto(lib, name, text)
    except AttributeError as exc:
        raise ValueError(f"{name} ({text}) lacks a function SM2 needs: {exc}") from exc
    # Builds configured no-sm2/no-sm3 (some distributions) export the symbols but have
    # no SM2 key management; find out now rather than on the first signature.
    ctx = bound.EVP_PKEY_CTX_new_from_name(None, b"SM2", None)
    try:
        if (
            not bound.nid_sm2
            or not ctx
            or bound.EVP_PKEY_keygen_init(ctx) != 1
            or not bound.EVP_sm3()
        ):
            raise ValueError(f"{name} ({text}) has no SM2/SM3: {bound.errors()}")
    finally:
        bound.EVP_PKEY_CTX_free(ctx)
    return bound


def _load() -> _Libcrypto | None:
    global _loaded, _reason, _tried
    if _tried:
        return _loaded
    with _lock:
        if not _tried:
            problems: list[str] = []
            for name in _candidates():
                try:
                    _loaded = _open(name)
                    break
                except ValueError as exc:
                    problems.append(str(exc))
            else:
                source = (
                    f"${LIBCRYPTO_ENV}" if os.environ.get(LIBCRYPTO_ENV) else "the system libcrypto"
                )
                _reason = (
                    f"SM2 needs OpenSSL >= 3.0 libcrypto (tried {source}): "
                    + ("; ".join(problems) or "no libcrypto found")
                )
            _tried = True
        return _loaded


def libcrypto() -> _Libcrypto:
    """The loaded library, or :class:`SM2UnavailableError` with the reason."""
    lib = _load()
    if lib is None:
        raise SM2UnavailableError(_reason or "libcrypto is not available")
    return lib


def available() -> bool:
    return _load() is not None


def unavailable_reason() -> str | None:
    _load()
    return _reason


def version() -> str:
    """``OpenSSL 3.0.x ...`` of the loaded library (raises when unavailable)."""
    return libcrypto().version


# -- keys ----------------------------------------------------------------------------------


class Key:
    """An ``EVP_PKEY`` of type SM2, freed when this object is collected."""

    __slots__ = ("_lib", "_ptr")

    def __init__(self, lib: _Libcrypto, ptr: int) -> None:
        self._lib = lib
        self._ptr = ptr

    def __del__(self) -> None:
        if self._ptr:
            self._lib.EVP_PKEY_free(self._ptr)
            self._ptr = 0

    def public_point(self) -> bytes:
        """The uncompressed point 04||x||y, whatever form the key was loaded from."""
        return b"\x04" + self._bn_param(b"qx") + self._bn_param(b"qy")

    def _bn_param(self, name: bytes, *, secret: bool = False) -> bytes:
        lib = self._lib
        bn = c_void_p()
        if lib.EVP_PKEY_get_bn_param(self._ptr, name, byref(bn)) != 1:
            raise lib.fail(f"EVP_PKEY_get_bn_param({name.decode()})")
        out = ctypes.create_string_buffer(_COORD)
        try:
            if lib.BN_bn2binpad(bn, out, _COORD) != _COORD:
                raise lib.fail(f"BN_bn2binpad({name.decode()})")
            return out.raw
        finally:
            (lib.BN_clear_free if secret else lib.BN_free)(bn)
            ctypes.memset(out, 0, _COORD)
            lib.ERR_clear_error()


class PrivateKey(Key):
    __slots__ = ()

    def private_scalar(self) -> bytes:
        """The 32-byte scalar d."""
        return self._bn_param(b"priv", secret=True)


def _d2i(lib: _Libcrypto, what: str, der: bytes, *, secret: bool) -> int:
    buf = ctypes.create_string_buffer(der, len(der))
    start = ctypes.addressof(buf)
    cursor = c_void_p(start)
    try:
        if secret:
            # Typed: only the SM2 decoders are tried (d2i_AutoPrivateKey tries every key
            # type and takes about three times as long).
            ptr = lib.d2i_PrivateKey(lib.nid_sm2, None, byref(cursor), len(der))
        else:
            ptr = lib.d2i_PUBKEY(None, byref(cursor), len(der))
        if not ptr:
            raise lib.fail(what)
        if cursor.value != start + len(der):
            lib.EVP_PKEY_free(ptr)
            raise OpenSSLError(f"{what}: trailing bytes after the key")
        if lib.EVP_PKEY_is_a(ptr, b"SM2") != 1:
            lib.EVP_PKEY_free(ptr)
            raise OpenSSLError(f"{what}: not an SM2 key")
        return ptr
    finally:
        lib.ERR_clear_error()  # decoders that were tried and declined leave entries
        if secret:
            ctypes.memset(buf, 0, len(der))


def load_private_key(der: bytes) -> PrivateKey:
    """A PKCS#8 or SEC1 DER private key on the SM2 curve. Without an embedded public key,
    libcrypto computes d*G while loading."""
    lib = libcrypto()
    return PrivateKey(lib, _d2i(lib, "d2i_PrivateKey", der, secret=True))


def load_public_key(der: bytes) -> Key:
    """A SubjectPublicKeyInfo DER public key on the SM2 curve. libcrypto refuses a point
    that is not on the curve while decoding; the infinity point is refused by the check."""
    lib = libcrypto()
    key = Key(lib, _d2i(lib, "d2i_PUBKEY", der, secret=False))
    ctx = lib.EVP_PKEY_CTX_new(key._ptr, None)
    try:
        if not ctx or lib.EVP_PKEY_public_check_quick(ctx) != 1:
            raise lib.fail("EVP_PKEY_public_check_quick")
    finally:
        lib.EVP_PKEY_CTX_free(ctx)
        lib.ERR_clear_error()
    return key


def generate_private_key() -> PrivateKey:
    """A fresh key pair from libcrypto's keygen (its DRBG, d in [1, n-2])."""
    lib = libcrypto()
    ctx = lib.EVP_PKEY_CTX_new_from_name(None, b"SM2", None)
    try:
        pkey = c_void_p()
        if not ctx or lib.EVP_PKEY_keygen_init(ctx) != 1:
            raise lib.fail("EVP_PKEY_keygen_init")
        if lib.EVP_PKEY_generate(ctx, byref(pkey)) != 1 or not pkey.value:
            raise lib.fail("EVP_PKEY_generate")
        return PrivateKey(lib, pkey.value)
    finally:
        lib.EVP_PKEY_CTX_free(ctx)
        lib.ERR_clear_error()


# -- operations ----------------------------------------------------------------------------


def _digest_ctx(lib: _Libcrypto, key: Key, signer_id: bytes) -> tuple[int, int]:
    """An EVP_MD_CTX with an SM2 EVP_PKEY_CTX carrying ``signer_id`` (as man 7 SM2 does).
    The caller frees both: EVP_MD_CTX_set_pkey_ctx does not hand over the pkey ctx."""
    pctx = lib.EVP_PKEY_CTX_new(key._ptr, None)
    if not pctx:
        raise lib.fail("EVP_PKEY_CTX_new")
    mctx = lib.EVP_MD_CTX_new()
    if not mctx:
        lib.EVP_PKEY_CTX_free(pctx)
        raise lib.fail("EVP_MD_CTX_new")
    if lib.EVP_PKEY_CTX_set1_id(pctx, signer_id, len(signer_id)) != 1:
        lib.EVP_MD_CTX_free(mctx)
        lib.EVP_PKEY_CTX_free(pctx)
        raise lib.fail("EVP_PKEY_CTX_set1_id")
    lib.EVP_MD_CTX_set_pkey_ctx(mctx, pctx)
    return int(mctx), int(pctx)


def sign(key: PrivateKey, signer_id: bytes, message: bytes) -> bytes:
    """DER ``SEQUENCE { r, s }`` over SM3(Z_A || message), nonce from libcrypto's DRBG."""
    lib = key._lib
    mctx, pctx = _digest_ctx(lib, key, signer_id)
    try:
        if lib.EVP_DigestSignInit(mctx, None, lib.EVP_sm3(), None, key._ptr) != 1:
            raise lib.fail("EVP_DigestSignInit")
        size = c_size_t(0)
        if lib.EVP_DigestSign(mctx, None, byref(size), message, len(message)) != 1:
            raise lib.fail("EVP_DigestSign (size)")
        out = ctypes.create_string_buffer(size.value)
        if lib.EVP_DigestSign(mctx, out, byref(size), message, len(message)) != 1:
            raise lib.fail("EVP_DigestSign")
        return out.raw[: size.value]
    finally:
        lib.EVP_MD_CTX_free(mctx)
        lib.EVP_PKEY_CTX_free(pctx)
        lib.ERR_clear_error()


def verify(key: Key, signer_id: bytes, message: bytes, signature: bytes) -> bool:
    """True only if EVP_DigestVerify says 1; 0 (bad signature) and errors are False."""
    lib = key._lib
    mctx, pctx = _digest_ctx(lib, key, signer_id)
    try:
        if lib.EVP_DigestVerifyInit(mctx, None, lib.EVP_sm3(), None, key._ptr) != 1:
            raise lib.fail("EVP_DigestVerifyInit")
        # 1 valid, 0 invalid, < 0 error (e.g. not DER): anything but 1 is "invalid".
        rc = lib.EVP_DigestVerify(mctx, signature, len(signature), message, len(message))
        return rc == 1
    finally:
        lib.EVP_MD_CTX_free(mctx)
        lib.EVP_PKEY_CTX_free(pctx)
        lib.ERR_clear_error()  # a bad signature queues an error too


def _pkey_crypt(key: Key, data: bytes, *, decrypt: bool) -> bytes:
    lib = key._lib
    init, run = (
        (lib.EVP_PKEY_decrypt_init, lib.EVP_PKEY_decrypt)
        if decrypt
        else (lib.EVP_PKEY_encrypt_init, lib.EVP_PKEY_encrypt)
    )
    op = "EVP_PKEY_decrypt" if decrypt else "EVP_PKEY_encrypt"
    ctx = lib.EVP_PKEY_CTX_new(key._ptr, None)
    if not ctx:
        raise lib.fail("EVP_PKEY_CTX_new")
    out: ctypes.Array[ctypes.c_char] | None = None
    try:
        if init(ctx) != 1:  # default digest for C3 and the KDF: SM3
            raise lib.fail(f"{op}_init")
        size = c_size_t(0)
        if run(ctx, None, byref(size), data, len(data)) != 1:
            raise lib.fail(f"{op} (size)")
        out = ctypes.create_string_buffer(size.value)
        if run(ctx, out, byref(size), data, len(data)) != 1:
            raise lib.fail(op)
        return out.raw[: size.value]
    finally:
        lib.EVP_PKEY_CTX_free(ctx)
        lib.ERR_clear_error()
        if decrypt and out is not None:
            ctypes.memset(out, 0, len(out))


def encrypt(key: Key, plaintext: bytes) -> bytes:
    """DER SM2Ciphertext (GM/T 0009: x, y, C3 = SM3 hash, C2), KDF and hash SM3."""
    return _pkey_crypt(key, plaintext, decrypt=False)


def decrypt(key: PrivateKey, ciphertext: bytes) -> bytes:
    """Plaintext of a DER SM2Ciphertext; OpenSSLError when C1 is not on the curve, C3 does
    not match (compared in constant time by libcrypto) or the DER is malformed."""
    return _pkey_crypt(key, ciphertext, decrypt=True)


__all__ = [
    "LIBCRYPTO_ENV",
    "Key",
    "OpenSSLError",
    "PrivateKey",
    "available",
    "decrypt",
    "encrypt",
    "generate_private_key",
    "libcrypto",
    "load_private_key",
    "load_public_key",
    "sign",
    "unavailable_reason",
    "verify",
    "version",
]

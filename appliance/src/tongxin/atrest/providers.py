"""Master key providers: where the key-encryption keys (KEKs) live.

Both providers are synchronous (they read a file or run a command); async callers run them
in a worker thread. A provider wraps a DEK under its *current* KEK and unwraps under any KEK
it still holds, so data keys wrapped before a rotation keep opening until they are re-wrapped.

File provider: ``keys.master_key_file`` holds one line per KEK,
``tongxin-kek-v1 <kek id> <suite> <base64 key>``; the last line is the current KEK. The file
must be mode 0600 (or stricter): a group- or world-readable key file is refused.

Command provider (KMS hook): ``keys.kms_command`` is run once per request (argv split like a
shell, run without one). It reads one JSON object on stdin and writes one on stdout:

    {"op": "wrap", "plaintext": B64, "aad": B64}      -> {"key_id": ID, "ciphertext": B64}
    {"op": "unwrap", "key_id": ID, "ciphertext": B64, "aad": B64} -> {"plaintext": B64}
    {"op": "rotate"}                                  -> {"key_id": NEW_CURRENT_ID}
    {"op": "current"}                                 -> {"key_id": CURRENT_ID}

A non-zero exit status or anything but that JSON is a failure; its stderr (first 500 bytes)
goes into the error message. The KMS must bind ``aad`` (it is the DEK's identity) and keep old
KEKs able to unwrap until ``tongxin keys status`` shows none of them in use.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import shlex
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tongxin.atrest.errors import KeyProviderError
from tongxin.crypto.errors import DecryptionError
from tongxin.crypto.suite import SymmetricSuite, get_symmetric_suite

LINE_TAG = "tongxin-kek-v1"
_KEK_ID = re.compile(r"^[0-9a-f]{16}$")
COMMAND_TIMEOUT = 30.0  # seconds one KMS request may take
_NONCE = 12


class MasterKeyProvider(Protocol):
    name: str

    def current_id(self) -> str: ...
    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap under the current KEK; return (kek id, wrapped bytes)."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Raise :class:`KeyProviderError` for an unknown KEK or a bad wrapping."""
        ...

    def rotate(self) -> str:
        """Make a new current KEK (older ones still unwrap); return its id."""
        ...

    def retire(self, keep: set[str]) -> list[str]:
        """Forget KEKs not in ``keep`` (the current one always stays); return the ids dropped."""
        ...


@dataclass(frozen=True, slots=True)
class _Kek:
    id: str
    suite: str
    key: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyProviderError(f"{what}: expected a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyProviderError(f"{what}: not valid base64") from exc


class FileKeyProvider:
    """KEKs in a local 0600 file; see the module docstring for the format."""

    name = "file"

    def __init__(self, path: Path, suite: str = "gm", create: bool = False) -> None:
        self.path = path
        self.suite_name = suite
        if create and not path.exists():
            self._write([self._new_kek()], exclusive=True)
        self._stamp = (0, 0)
        self._keks = self._read()

    def _new_kek(self) -> _Kek:
        return _Kek(secrets.token_hex(8), self.suite_name,
                    os.urandom(get_symmetric_suite(self.suite_name).aead_key_size))

    def _read(self) -> list[_Kek]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError as exc:
            raise KeyProviderError(f"master key file {self.path} does not exist; create it with "
                                   "`tongxin keys init`") from exc
        if st.st_mode & 0o077:
            raise KeyProviderError(
                f"master key file {self.path} is readable or writable by group or others "
                f"(mode {stat.filemode(st.st_mode)}); run: chmod 600 {self.path}")
        keks: list[_Kek] = []
        for number, line in enumerate(self.path.read_text("ascii").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 4 or parts[0] != LINE_TAG or not _KEK_ID.match(parts[1]):
                raise KeyProviderError(f"{self.path}:{number}: not a '{LINE_TAG} ID SUITE KEY' line")
            key = _unb64(parts[3], f"{self.path}:{number}")
            try:
                size = get_symmetric_suite(parts[2]).aead_key_size
            except ValueError as exc:
                raise KeyProviderError(f"{self.path}:{number}: {exc}") from exc
            if len(key) != size:
                raise KeyProviderError(f"{self.path}:{number}: a {parts[2]} KEK has {size} bytes")
            keks.append(_Kek(parts[1], parts[2], key))
        if not keks:
            raise KeyProviderError(f"master key file {self.path} holds no key")
        self._stamp = (st.st_mtime_ns, st.st_size)
        return keks

    def _refresh(self) -> None:
        """Re-read the file if `tongxin keys rotate` replaced it since: a running node then
        wraps new data keys under the new KEK, not one about to be retired."""
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if (st.st_mtime_ns, st.st_size) != self._stamp:
            self._keks = self._read()

    def _write(self, keks: list[_Kek], exclusive: bool = False) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = "".join(f"{LINE_TAG} {k.id} {k.suite} {_b64(k.key)}\n" for k in keks)
        target = self.path if exclusive else self.path.with_name(
            f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if not exclusive:
            os.replace(target, self.path)  # readers see the old file or the new, never a part
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _suite(self, kek: _Kek) -> SymmetricSuite:
        return get_symmetric_suite(kek.suite)

    def current_id(self) -> str:
        self._refresh()
        return self._keks[-1].id

    def known_ids(self) -> list[str]:
        return [k.id for k in self._keks]

    def _find(self, kek_id: str) -> _Kek | None:
        return next((k for k in self._keks if k.id == kek_id), None)

    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        self._refresh()
        kek = self._keks[-1]
        nonce = os.urandom(_NONCE)
        return kek.id, nonce + self._suite(kek).aead_encrypt(kek.key, nonce, dek, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        kek = self._find(kek_id)
        if kek is None:
            # Another process may have rotated since this one read the file.
            self._keks = self._read()
            kek = self._find(kek_id)
        if kek is None:
            raise KeyProviderError(f"KEK {kek_id} is not in {self.path} (retired too early, or "
                                   "the nodes do not share one key file)")
        if len(wrapped) <= _NONCE:
            raise KeyProviderError(f"wrapped data key under KEK {kek_id} is truncated")
        try:
            return self._suite(kek).aead_decrypt(kek.key, wrapped[:_NONCE], wrapped[_NONCE:], aad)
        except DecryptionError as exc:
            raise KeyProviderError(f"a data key wrapped under KEK {kek_id} failed "
                                   "authentication (tampered or swapped)") from exc

    def rotate(self) -> str:
        self._keks = [*self._read(), self._new_kek()]
        self._write(self._keks)
        return self._keks[-1].id

    def retire(self, keep: set[str]) -> list[str]:
        current = self._read()
        keep = keep | {current[-1].id}
        dropped = [k.id for k in current if k.id not in keep]
        if dropped:
            self._keks = [k for k in current if k.id in keep]
            self._write(self._keks)
        return dropped


class CommandKeyProvider:
    """KEKs in an external KMS reached through an operator command (module docstring)."""

    name = "command"

    def __init__(self, command: str, timeout: float = COMMAND_TIMEOUT) -> None:
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise KeyProviderError(f"keys.kms_command: {exc}") from exc
        if not self.argv:
            raise KeyProviderError("keys.kms_command is empty")
        self.timeout = timeout

    def _call(self, request: dict[str, Any], *want: str) -> dict[str, Any]:
        op = request["op"]
        try:
            done = subprocess.run(self.argv, input=json.dumps(request).encode(),
                                  capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise KeyProviderError(f"KMS command timed out after {self.timeout:g}s ({op})") from exc
        except OSError as exc:
            raise KeyProviderError(f"KMS command {self.argv[0]!r} cannot run: {exc}") from exc
        if done.returncode != 0:
            err = done.stderr[:500].decode(errors="replace").strip()
            raise KeyProviderError(f"KMS command failed ({op}, exit {done.returncode}): {err}")
        try:
            answer = json.loads(done.stdout)
        except ValueError as exc:
            raise KeyProviderError(f"KMS command answered {op} with something not JSON") from exc
        if not isinstance(answer, dict) or any(not isinstance(answer.get(k), str) for k in want):
            raise KeyProviderError(f"KMS command answer to {op} lacks {', '.join(want)}")
        return answer

    def current_id(self) -> str:
        return str(self._call({"op": "current"}, "key_id")["key_id"])

    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        answer = self._call({"op": "wrap", "plaintext": _b64(dek), "aad": _b64(aad)},
                            "key_id", "ciphertext")
        return str(answer["key_id"]), _unb64(answer["ciphertext"], "KMS wrap answer")

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        answer = self._call({"op": "unwrap", "key_id": kek_id, "ciphertext": _b64(wrapped),
                             "aad": _b64(aad)}, "plaintext")
        return _unb64(answer["plaintext"], "KMS unwrap answer")

    def rotate(self) -> str:
        return str(self._call({"op": "rotate"}, "key_id")["key_id"])

    def retire(self, keep: set[str]) -> list[str]:
        # The KMS owns its key lifecycle; `tongxin keys status` tells the operator which
        # KEKs are still referenced.
        return []


def make_provider(master_key_file: Path, kms_command: str, suite: str,
                  create: bool = False) -> MasterKeyProvider:
    """The command provider when ``kms_command`` is set, else the key file."""
    if kms_command.strip():
        return CommandKeyProvider(kms_command)
    return FileKeyProvider(master_key_file, suite, create=create)

"""Sealing applied: message content in the chat stores, and server secret files."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tongxin.atrest.errors import IntegrityError, KeyProviderError
from tongxin.atrest.keyring import DekStore, Keyring, is_sealed
from tongxin.atrest.providers import FileKeyProvider, make_provider

if TYPE_CHECKING:
    from tongxin.config import Config
    from tongxin.store.ports import Entry

log = logging.getLogger("tongxin.atrest")
# Rows named in one audit record (the count is always complete).
AUDIT_ROWS = 100


def message_aad(conversation_id: str, seq: int) -> bytes:
    """A message's content is bound to its row: (conversation, seq)."""
    return b"tongxin/msg/v1\x00" + conversation_id.encode() + b"\x00" + str(seq).encode()


def seal_content(keyring: Keyring | None, conversation_id: str, seq: int, content: bytes) -> bytes:
    if keyring is None:
        return content
    return keyring.maybe_seal(content, message_aad(conversation_id, seq))


async def open_entries(keyring: Keyring | None, entries: list[Entry]) -> list[Entry]:
    """Replace sealed content with its plaintext, in place.

    While the keyring encrypts, every non-empty row must be sealed: a plaintext row is
    what someone writing straight into the database would leave, so it is withheld like
    a row whose seal fails (``storage.allow_unsealed_reads`` serves it, audited, during a
    migration from encryption off). A withheld entry keeps its place in the log with
    empty content and ``unavailable`` set, so one bad row does not fail the page it is
    in. Without encryption (no keyring, or encryption switched off) plaintext rows are
    expected and pass.
    """
    bad: list[tuple[Entry, str]] = []
    unsealed: list[Entry] = []
    for e in entries:
        if not e.content:
            continue  # system entries and recalls: nothing to seal
        if not is_sealed(e.content):
            if keyring is None or not keyring.encrypt:
                continue
            if keyring.allow_unsealed:
                unsealed.append(e)
            else:
                bad.append((e, "stored without the at-rest seal although encryption is on"))
            continue
        if keyring is None:
            # Not one row's fault: the installation runs without its master key.
            raise IntegrityError(f"message {e.conversation_id}#{e.seq} is encrypted at rest, "
                                 "but no master key is loaded")
        try:
            e.content = await keyring.open_async(e.content, message_aad(e.conversation_id, e.seq))
        except IntegrityError as exc:
            bad.append((e, str(exc)))
    if bad:
        await _withhold(keyring, bad)
    if unsealed and keyring is not None:
        await _audit(keyring, "atrest.unsealed_read", "ok", unsealed,
                     "served: storage.allow_unsealed_reads is on")
    return entries


async def _withhold(keyring: Keyring | None, bad: list[tuple[Entry, str]]) -> None:
    for e, reason in bad:
        log.error("stored message %s#%d withheld: %s", e.conversation_id, e.seq, reason)
        e.content = b""
        e.unavailable = True
    if keyring is not None:
        await _audit(keyring, "atrest.integrity", "failed", [e for e, _ in bad],
                     "; ".join(sorted({reason for _, reason in bad})))


async def _audit(keyring: Keyring, event: str, outcome: str, rows: list[Entry],
                 reason: str) -> None:
    """One audit record per read (a page of a sync, an export), naming its rows."""
    if keyring.audit is None:
        log.warning("%s (%s): %d rows, not audited (no audit trail in this process)",
                    event, reason, len(rows))
        return
    await keyring.audit(event, {
        "actor": "system", "outcome": outcome, "target": rows[0].conversation_id,
        "rows": [f"{e.conversation_id}#{e.seq}" for e in rows[:AUDIT_ROWS]],
        "count": len(rows), "reason": reason})


async def open_entry(keyring: Keyring | None, entry: Entry | None) -> Entry | None:
    if entry is not None:
        await open_entries(keyring, [entry])
    return entry


# ---- the keyring of a node or a CLI command ------------------------------------------


async def open_keyring(cfg: Config, store: object) -> Keyring | None:
    """The keyring for ``store`` (and attached to it), or None when at-rest encryption was
    never used here (off, and no key file). A fresh install gets a master key file; an
    install whose store already holds data keys refuses to start without its key file."""
    if not hasattr(store, "data_keys"):
        return None  # a store without a data_keys table (test doubles)
    dek_store = cast(DekStore, store)
    path = cfg.master_key_file
    kms = cfg.keys.kms_command
    if not kms and not path.exists():
        existing = await dek_store.data_keys(-1, 1)
        if existing:
            raise KeyProviderError(
                f"master key file {path} is missing, but the store holds data keys wrapped under "
                f"KEK {existing[0].kek_id}: restore the key file (every node needs the same one)")
        if not cfg.storage.encryption:
            return None
    provider = await asyncio.to_thread(make_provider, path, kms, cfg.crypto.suite,
                                       cfg.storage.encryption)
    keyring = Keyring(provider, dek_store, cfg.crypto.suite, cfg.storage.encryption)
    keyring.allow_unsealed = cfg.storage.allow_unsealed_reads
    await keyring.start()
    cast(Any, store).keyring = keyring
    return keyring


def init_key_file(path: Path, suite: str) -> bool:
    """``tongxin keys init``: create the master key file; False if it already exists."""
    if path.exists():
        FileKeyProvider(path, suite)  # still check its mode and format
        return False
    FileKeyProvider(path, suite, create=True)
    return True


# ---- secret files ------------------------------------------------------------------------


def _secret_aad(name: str) -> bytes:
    return b"tongxin/secret/v1\x00" + name.encode()


def _write_private(path: Path, data: bytes, exclusive: bool = False) -> bool:
    """Write atomically (mode 0600). ``exclusive``: only if ``path`` does not exist (False
    then), so node processes starting together agree on one secret."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        if exclusive:
            os.unlink(tmp)


async def load_or_create_secret(path: Path, size: int, keyring: Keyring | None) -> bytes:
    """A random secret of ``size`` bytes kept in ``path``, sealed when encrypting.

    A plaintext file from before encryption (exactly ``size`` bytes) is read and, when
    encrypting, replaced by its sealed form; a sealed file whose tag fails is refused.
    """
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        data = b""
    aad = _secret_aad(path.name)
    if data and is_sealed(data) and len(data) != size:
        if keyring is None:
            raise KeyProviderError(f"{path} is encrypted at rest, but no master key is loaded")
        try:
            secret = await keyring.open_async(data, aad)
        except IntegrityError as exc:
            raise IntegrityError(f"secret file {path}: {exc}") from exc
        if len(secret) != size:
            raise IntegrityError(f"secret file {path} holds {len(secret)} bytes, not {size}")
        return secret
    if data and len(data) != size:
        raise ValueError(f"secret file {path} must hold {size} bytes, found {len(data)}")
    secret = data or os.urandom(size)
    sealing = keyring is not None and keyring.encrypt
    if data and not sealing:
        return secret
    stored = keyring.seal(secret, aad) if keyring is not None and sealing else secret
    if not await asyncio.to_thread(_write_private, path, stored, not data):
        return await load_or_create_secret(path, size, keyring)  # another process made it first
    return secret


# ---- secret files of any length (the audit signing key, PEM) -------------------------


def write_secret_file(path: Path, data: bytes, keyring: Keyring | None) -> None:
    """Write a secret file (0600, atomically), sealed when the keyring encrypts."""
    sealing = keyring is not None and keyring.encrypt
    stored = keyring.seal(data, _secret_aad(path.name)) if keyring is not None and sealing \
        else data
    _write_private(path, stored)


def read_secret_file(path: Path, keyring: Keyring | None) -> bytes:
    """The plaintext of a secret file written by :func:`write_secret_file` (sealed or from
    before encryption). Synchronous: the data key must be loaded (:func:`load_secret_file`
    loads it); raises KeyProviderError for a sealed file without a keyring."""
    data = path.read_bytes()
    if not is_sealed(data):
        return data
    if keyring is None:
        raise KeyProviderError(f"{path} is encrypted at rest, but no master key is loaded")
    try:
        return keyring.open(data, _secret_aad(path.name))
    except IntegrityError as exc:
        raise IntegrityError(f"secret file {path}: {exc}") from exc


async def load_secret_file(path: Path, keyring: Keyring | None) -> bytes | None:
    """Plaintext of a secret file of any length, or None if there is none.

    A sealed file is opened (its data key loaded from the store); a plaintext file from
    before encryption is returned and, when encrypting, replaced by its sealed form, so
    existing installations migrate on first load.
    """
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        return None
    aad = _secret_aad(path.name)
    if is_sealed(data):
        if keyring is None:
            raise KeyProviderError(f"{path} is encrypted at rest, but no master key is loaded")
        try:
            return await keyring.open_async(data, aad)
        except IntegrityError as exc:
            raise IntegrityError(f"secret file {path}: {exc}") from exc
    if keyring is not None and keyring.encrypt:
        await asyncio.to_thread(write_secret_file, path, data, keyring)
    return data

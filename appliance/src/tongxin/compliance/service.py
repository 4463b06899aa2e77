"""The compliance facade one node (or one CLI command) opens: the store, the
audit log with its signing key and archive, and the second factor.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from tongxin.atrest.keyring import Keyring
from tongxin.atrest.records import load_or_create_secret
from tongxin.auth.tokens import KEY_BYTES
from tongxin.clock import now_ms
from tongxin.compliance import chain
from tongxin.compliance.anchor import (
    ANCHOR,
    AnchorSource,
    anchor_file_name,
    decode_anchor,
    encode_anchor,
)
from tongxin.compliance.archive import (
    DAY_MS,
    Archive,
    ArchiveObjects,
    ArchiveResult,
    BlobObjects,
    DirObjects,
)
from tongxin.compliance.keys import AuditKeys, fingerprint, parse_pins
from tongxin.compliance.ports import AuditRecord, ComplianceStore, SignedHead
from tongxin.compliance.sms import SmsFactor, make_provider, sms_keys_from
from tongxin.compliance.sqlite_store import SqliteComplianceStore
from tongxin.compliance.totp import Totp, totp_key
from tongxin.compliance.verify import VerifyReport, verify_chain
from tongxin.config import AccountsConfig, Config, ConfigError, documented_keys
from tongxin.crypto import sm2_available
from tongxin.crypto.errors import CryptoError
from tongxin.files.ports import BlobNotFound
from tongxin.store.dsn import parse_dsn

if TYPE_CHECKING:
    # account_policy reads the report's thresholds, and the report imports this module.
    from tongxin.compliance.account_policy import FieldError

log = logging.getLogger("tongxin.compliance")

# 《网络安全法》第二十一条: network logs are kept for no less than six months.
LEGAL_MIN_RETENTION_DAYS = 180.0
AUDIT_RETENTION_SETTING = "audit.retention"
CONFIG_SNAPSHOT_SETTING = "config.snapshot"
_SECRET_WORDS = ("secret", "password", "access_key", "dsn")


def compliance_db(cfg: Config) -> Path:
    return cfg.home / "compliance.db"


def compliance_store(cfg: Config) -> ComplianceStore:
    """The store for this configuration: the shared database with ``storage.backend:
    mysql`` (every node sees the same chain, factors, sessions and holds), else
    the node's own ``compliance.db``."""
    if cfg.storage.backend == "mysql":
        from tongxin.compliance.mysql_store import MysqlComplianceStore  # imports the driver

        # A few connections: audit appends are serial anyway (one chain head).
        return MysqlComplianceStore.from_dsn(cfg.storage.mysql_dsn,
                                             min(4, max(1, cfg.storage.mysql_pool_size)),
                                             cfg.storage.mysql_timeout)
    return SqliteComplianceStore(compliance_db(cfg), cfg.storage.sqlite_synchronous)


def archive_dir(cfg: Config) -> Path:
    c = cfg.compliance
    return Path(c.audit_archive_dir) if c.audit_archive_dir else cfg.home / "audit-archive"


def archive_name(cfg: Config) -> str:
    """The archive's prefix name in a bucket (the same for the node and its CLI).

    With ``storage.backend: mysql`` the chain is the installation's, not a
    node's, so every node must archive to the same place: the default is then
    the database name.
    """
    if cfg.compliance.audit_archive_name:
        return cfg.compliance.audit_archive_name
    if cfg.storage.backend == "mysql":
        return re.sub(r"[^A-Za-z0-9_.-]", "_", parse_dsn(cfg.storage.mysql_dsn).database)
    node = cfg.node_id or f"{socket.gethostname()}:{cfg.listen_address()[1]}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", node)


def archive_objects(cfg: Config) -> ArchiveObjects:
    """The archive's storage: a directory, or the S3 bucket through the files BlobStore port."""
    c, f = cfg.compliance, cfg.files
    if c.audit_archive_backend == "database":
        return database_archive(cfg)
    if c.audit_archive_backend != "s3":
        return DirObjects(archive_dir(cfg))
    bucket = c.audit_archive_bucket or f.s3_bucket
    if not f.s3_endpoint or not bucket:
        raise ConfigError("compliance.audit_archive_backend s3: files.s3_endpoint and a bucket "
                          "(compliance.audit_archive_bucket or files.s3_bucket) are required")
    from tongxin.files.s3 import S3BlobStore  # imports botocore: only when used

    blobs = S3BlobStore.from_config(f, bucket, archive_dir(cfg) / "spool")
    return BlobObjects(blobs, archive_name(cfg), f"s3://{bucket}")


def database_archive(cfg: Config) -> ArchiveObjects:
    """The archive in the shared database (``audit_archive_backend: database``), so it
    replicates to dr with the chain it continues."""
    from tongxin.files.db_blobs import DbBlobStore, mysql_database

    db = mysql_database(cfg, 2)
    return BlobObjects(DbBlobStore(db), archive_name(cfg), f"database {db.dsn.database}")


def _mask_url(url: str) -> str:
    """A URL without what may be a credential: the user info and the query."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def config_snapshot(cfg: Config) -> dict[str, Any]:
    """Every configuration key and its value, secrets replaced by '***'."""
    out: dict[str, Any] = {}
    for key, _default, _doc in documented_keys():
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        # Secrets are strings; numbers such as accounts.password_min_length are policy.
        if any(w in key for w in _SECRET_WORDS) and isinstance(obj, str) and obj:
            obj = "***"
        elif isinstance(obj, str) and "://" in obj:
            obj = _mask_url(obj)
        out[key] = obj if isinstance(obj, bool | int | str) or obj is None else repr(obj)
    return out


class RetentionBelowMinimum(ValueError):
    """Audit retention below the legal minimum was asked for without an override."""


class PolicyInvalid(ValueError):
    """A change of the password and lockout policy refused (already audited): one
    error per field, each naming it. Nothing was changed."""

    def __init__(self, errors: dict[str, FieldError]) -> None:
        super().__init__("; ".join(e.message for e in errors.values()))
        self.errors = errors


@dataclass(frozen=True)
class PolicyChange:
    before: AccountsConfig
    after: AccountsConfig
    changed: dict[str, dict[str, Any]]  # key -> {"from": old, "to": new} (values in force)


class Compliance:
    def __init__(self, cfg: Config, node_id: str = "", store: ComplianceStore | None = None) -> None:
        self.cfg = cfg
        # A command's records name the host it ran on: on a shared store the
        # chain holds every node's and every host's records.
        self.node_id = node_id or f"cli@{cfg.node_id or socket.gethostname()}"
        self.store: ComplianceStore = store or compliance_store(cfg)
        self.keys = AuditKeys(cfg.home)
        self.archive = Archive(archive_objects(cfg), self.keys, archive_dir(cfg))
        self.totp: Totp
        self.sms: SmsFactor
        self.keyring: Keyring | None = None
        self._chat_store: Any = None  # opened for its keyring when no node gave one
        self._signed_seq = -1
        self._published = ""
        self._task: asyncio.Task[None] | None = None

    async def open(self, keyring: Keyring | None = None, *, load_keyring: bool = True) -> None:
        """Open the store and the secrets. ``keyring`` is the node's (tongxin.atrest; the
        node passes ``load_keyring=False``, its None meaning encryption was never used); a
        command gives none and the chat store is opened for it, because secrets/totp.key
        and secrets/audit_sign.key are sealed at rest with the installation's data keys."""
        if keyring is None and load_keyring:
            keyring = await self._open_keyring()
        self.keyring = self.keys.keyring = keyring
        await self.store.open()
        await self.keys.load()
        if self.store.shared and self.keys.exists():
            await self._publish_key()
        master = await load_or_create_secret(self.cfg.home / "secrets" / "totp.key",
                                             KEY_BYTES, keyring)
        self.totp = Totp(self.store, totp_key(master))
        self.sms = SmsFactor(self.store, self.cfg.compliance, sms_keys_from(master),
                             make_provider(self.cfg.compliance))

    async def _open_keyring(self) -> Keyring | None:
        from tongxin.server.node import make_store  # the node imports this module

        chat = make_store(self.cfg)
        await chat.open()  # loads the keyring (tongxin.atrest.records.open_keyring)
        self._chat_store = chat
        keyring: Keyring | None = getattr(chat, "keyring", None)
        return keyring

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.archive.objects.close()
        await self.store.close()
        if self._chat_store is not None:
            await self._chat_store.close()
            self._chat_store = None

    # ---- the audit trail ---------------------------------------------------

    async def audit(self, event: str, *, actor: str = "", actor_role: str = "", target: str = "",
                    outcome: str = "ok", source: str = "", **details: Any) -> AuditRecord:
        return await self.store.append_audit({
            "ts": now_ms(), "node": self.node_id, "event": event, "outcome": outcome,
            "actor": actor, "actor_role": actor_role, "target": target, "source": source,
            "details": details})

    async def hook(self, event: str, fields: dict[str, Any]) -> None:
        """For Accounts and ChatService: record an event, never fail the caller."""
        f = dict(fields)
        try:
            await self.audit(event, actor=str(f.pop("actor", "")),
                             actor_role=str(f.pop("actor_role", "")),
                             target=str(f.pop("target", "")), outcome=str(f.pop("outcome", "ok")),
                             source=str(f.pop("source", "")), **f)
        except Exception:
            log.exception("audit record %s could not be written", event)

    async def sign_head(self, force: bool = False) -> SignedHead | None:
        seq, digest = await self.store.audit_state()
        if seq == 0 or (seq == self._signed_seq and not force):
            return None
        ts = now_ms()
        fp, sig = await asyncio.to_thread(self.keys.sign, chain.head_message(seq, digest, ts,
                                                                              self.node_id))
        head = SignedHead(seq, digest, ts, self.node_id, fp, sig)
        await self._publish_key()
        await self.store.add_head(head)
        self._signed_seq = seq
        await self._anchor(head)  # after the store: verification relies on this order
        return head

    def _anchor_places(self) -> list[tuple[str, ArchiveObjects, str]]:
        """(description, objects, name) of every configured anchor."""
        places: list[tuple[str, ArchiveObjects, str]] = [
            (f"{self.archive.objects.describe().rstrip('/')}/{ANCHOR}", self.archive.objects,
             ANCHOR)]
        if self.cfg.compliance.audit_anchor_dir:
            d = Path(self.cfg.compliance.audit_anchor_dir)
            name = anchor_file_name(archive_name(self.cfg))
            places.append((str(d / name), DirObjects(d), name))
        return places

    async def _anchor(self, head: SignedHead) -> None:
        """Write the head to every anchor place. A failure is logged, not raised: the
        head is in the store, and the next signature anchors again."""
        body = encode_anchor(head)
        for where, objects, name in self._anchor_places():
            try:
                old = await objects.get(name)
                # Nodes of a shared store anchor in turn: never replace a newer head.
                if old is not None and decode_anchor(old).seq > head.seq:
                    continue
            except ValueError:
                pass  # a damaged anchor is replaced
            except Exception as exc:
                log.error("audit anchor %s not read: %s", where, exc)
                continue
            try:
                await objects.put(name, body)
            except Exception as exc:
                log.error("audit anchor %s not written: %s", where, exc)

    async def anchor_sources(self, extra: Sequence[str] = ()) -> list[AnchorSource]:
        """The configured anchors, then ``extra`` (``--anchor``: a file, a directory
        holding the anchor, or ``s3://bucket/key`` read with the files.s3_* credentials)."""
        out: list[AnchorSource] = []
        for where, objects, name in self._anchor_places():
            try:
                body = await objects.get(name)
            except Exception as exc:
                log.error("audit anchor %s not read: %s", where, exc)
                body = None
            out.append(AnchorSource(where, body))
        for spec in extra:
            out.append(AnchorSource(spec, await self._read_anchor(spec), required=True))
        return out

    async def _read_anchor(self, spec: str) -> bytes | None:
        if spec.startswith("s3://"):
            bucket, _, key = spec[len("s3://"):].partition("/")
            from tongxin.files.s3 import S3BlobStore  # imports botocore: only when used

            blobs = S3BlobStore.from_config(self.cfg.files, bucket,
                                            archive_dir(self.cfg) / "spool")
            await blobs.open()
            try:
                out = bytearray()
                async for chunk in blobs.read(key or ANCHOR):
                    out += chunk
                return bytes(out)
            except BlobNotFound:
                return None
            finally:
                await blobs.close()
        return await asyncio.to_thread(self._read_anchor_file, Path(spec))

    def _read_anchor_file(self, path: Path) -> bytes | None:
        if path.is_dir():
            for name in (anchor_file_name(archive_name(self.cfg)), ANCHOR):
                if (path / name).is_file():
                    path = path / name
                    break
            else:
                return None
        try:
            return path.read_bytes()
        except OSError:
            return None

    async def _publish_key(self) -> None:
        """On a shared store, make this node's audit public key known to the others
        (every node signs heads of the one chain with its own key)."""
        if not self.store.shared or not sm2_available():
            return
        try:
            pub = (await asyncio.to_thread(self.keys.signing_key, False)).public_key()
        except (CryptoError, OSError) as exc:
            log.error("audit public key not published: %s", exc)
            return
        fp = fingerprint(pub)
        if fp != self._published:
            await self.store.publish_key(fp, pub.to_pem(), self.node_id, now_ms())
            self._published = fp

    async def rotate_key(self) -> str:
        """A new audit signing key; the chain head is signed with it at once."""
        await asyncio.to_thread(self.keys.rotate)
        fp = self.keys.current_fingerprint() or ""
        await self.sign_head(force=True)
        return fp

    async def verify(self, given: Sequence[Path] = (), anchors: Sequence[str] = (),
                     empty_ok: bool = False) -> VerifyReport:
        """Verify the chain with the pinned keys, or exactly the ``given`` ones, against
        the configured anchors and ``anchors`` (tongxin.compliance.verify)."""
        sources = await self.anchor_sources(anchors)
        return await verify_chain(self.store, self.keys, self.archive,
                                  parse_pins(self.cfg.compliance.audit_trusted_keys), given,
                                  sources, empty_ok)

    async def audit_retention(self) -> tuple[float, bool]:
        """(days, override) in force: a stored setting wins over the config file."""
        stored = await self.store.get_setting(AUDIT_RETENTION_SETTING)
        if isinstance(stored, dict):
            return float(stored["days"]), bool(stored.get("override", False))
        c = self.cfg.compliance
        return c.audit_retention_days, c.audit_retention_override

    async def set_audit_retention(self, days: float, override: bool, reason: str, *, actor: str,
                                  actor_role: str, source: str = "") -> None:
        """Change audit retention; below the legal minimum only with an override and a reason.

        Both the refusal and the change are audited.
        """
        before, _ = await self.audit_retention()
        if days < LEGAL_MIN_RETENTION_DAYS and not (override and reason.strip()):
            await self.audit("retention.audit.set", actor=actor, actor_role=actor_role,
                             outcome="denied", source=source, days=str(days), before=str(before),
                             reason="below the legal minimum of 180 days without an override")
            raise RetentionBelowMinimum(
                f"audit retention {days:g} days is below the legal minimum of "
                f"{LEGAL_MIN_RETENTION_DAYS:g} days (网络安全法); an override with a reason is required")
        await self.store.set_setting(AUDIT_RETENTION_SETTING,
                                     {"days": days, "override": bool(override), "reason": reason},
                                     now_ms(), actor)
        event = ("retention.audit.override" if days < LEGAL_MIN_RETENTION_DAYS
                 else "retention.audit.set")
        await self.audit(event, actor=actor, actor_role=actor_role, source=source,
                         days=str(days), before=str(before), override=bool(override), reason=reason)

    # ---- the password and lockout policy (accounts.*, compliance/account_policy.py) ----

    async def account_policy_state(self, base: AccountsConfig | None = None
                                   ) -> tuple[AccountsConfig, dict[str, int | float], Any]:
        """(the policy in force, the stored overrides, the stored setting as read): the
        configuration's ``accounts`` (or ``base``) with the security administrator's
        changes on top. With ``storage.backend: mysql`` every node reads the same."""
        from tongxin.compliance import account_policy

        base = self.cfg.accounts if base is None else base
        stored = await self.store.get_setting(account_policy.POLICY_SETTING)
        overrides = account_policy.stored_overrides(stored)
        return account_policy.effective(base, overrides), overrides, stored

    async def account_policy(self, base: AccountsConfig | None = None) -> AccountsConfig:
        return (await self.account_policy_state(base))[0]

    async def set_account_policy(self, changes: Mapping[str, Any], *, actor: str,
                                 actor_role: str, source: str = "", reason: str = "",
                                 **details: Any) -> PolicyChange:
        """Change the policy: every field checked first, nothing stored unless all pass
        (:class:`PolicyInvalid`); a value of None removes that override (the file's value
        applies again). The refusal and the change are audited (``policy.set``), the
        change with each setting's value in force before and after."""
        from tongxin.compliance import account_policy

        who = {"actor": actor, "actor_role": actor_role, "source": source, **details}
        if reason:
            who["reason"] = reason
        accepted, errors = account_policy.check_changes(changes)
        if not changes:
            errors = {"settings": account_policy.FieldError(
                "empty", "settings: no setting to change was given")}
        if errors:
            await self.audit("policy.set", target="accounts", outcome="denied", **{
                **who, "reason": "; ".join(e.message for e in errors.values())},
                requested={str(k): v if isinstance(v, int | float | None) else repr(v)[:64]
                           for k, v in list(changes.items())[:20]})
            raise PolicyInvalid(errors)
        before, overrides, _ = await self.account_policy_state()
        new = dict(overrides)
        for key, value in accepted.items():
            if value is None:
                new.pop(key, None)
            else:
                new[key] = value
        after = account_policy.effective(self.cfg.accounts, new)
        if new != overrides:
            await self.store.set_setting(account_policy.POLICY_SETTING,
                                         {"values": new, "at": now_ms(), "by": actor},
                                         now_ms(), actor)
        # Whole numbers as integers: the audit chain's canonical JSON keeps other floats
        # as strings.
        def plain(v: float) -> float:
            return int(v) if isinstance(v, float) and v.is_integer() else v

        changed = {k: {"from": plain(getattr(before, k)), "to": plain(getattr(after, k))}
                   for k in account_policy.EDITABLE if getattr(before, k) != getattr(after, k)}
        await self.audit("policy.set", target="accounts", **who, changed=changed,
                         overrides={k: ("set" if accepted[k] is not None else "cleared")
                                    for k in accepted})
        return PolicyChange(before, after, changed)

    async def record_config(self) -> list[str]:
        """Audit configuration changes since the last start; returns the changed keys."""
        snap = config_snapshot(self.cfg)
        old = await self.store.get_setting(CONFIG_SNAPSHOT_SETTING)
        changed = sorted(k for k in snap if not isinstance(old, dict) or old.get(k) != snap[k])
        if old is None:
            await self.audit("config.initial", actor="system", keys=len(snap))
        elif changed:
            await self.audit("config.change", actor="system", changed={
                k: {"from": old.get(k), "to": snap[k]} for k in changed})
        if changed or old is None:
            await self.store.set_setting(CONFIG_SNAPSHOT_SETTING, snap, now_ms(), "system")
        c = self.cfg.compliance
        if c.audit_retention_override and c.audit_retention_days < LEGAL_MIN_RETENTION_DAYS:
            await self.audit("retention.audit.override", actor="system", source="config",
                             days=str(c.audit_retention_days),
                             reason="compliance.audit_retention_override is set in the configuration")
        return changed

    async def run_archive(self, now: int | None = None) -> ArchiveResult:
        """Archive records past the hot period; purge archives past the retention."""
        now = now_ms() if now is None else now
        hot = self.cfg.compliance.audit_hot_days
        # On a shared store the chain is every node's: one archive run at a
        # time in the installation (the archive's own lock is per host).
        async with self.store.exclusive("audit-archive") as mine:
            if not mine:
                return ArchiveResult()
            result = await self.archive.archive(self.store, now - int(hot * DAY_MS), now)
            days, _ = await self.audit_retention()
            if await self.archive.exists():
                result.purged_segments = await self.archive.purge(days, now)
        if result.archived or result.purged_segments:
            await self.audit("audit.archive", actor="system", records=result.archived,
                             segments=result.segments, purged_segments=result.purged_segments)
        return result

    # ---- background work of a node -----------------------------------------

    def start_background(self) -> None:
        c = self.cfg.compliance
        if self.store.shared and c.audit_archive_backend == "local":
            # The chain is the installation's; a segment in a directory only
            # this host sees is "missing" to verification everywhere else.
            log.warning("the audit chain is shared (storage.backend mysql) but archived to %s: "
                        "use compliance.audit_archive_backend database or s3, or a directory every node "
                        "mounts", archive_dir(self.cfg))
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        interval = max(1.0, self.cfg.compliance.audit_sign_interval)
        next_archive = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                if sm2_available():
                    await self.sign_head()
                if loop.time() >= next_archive:
                    next_archive = loop.time() + 3600
                    await self.run_archive()
            except (CryptoError, OSError) as exc:
                log.error("audit head signing or archiving failed: %s", exc)
            except Exception:
                log.exception("audit background task")

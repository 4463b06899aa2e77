"""``tongxin report compliance``: 等保 2.0 (GB/T 22239-2019) level-3 items mapped
to evidence read from this installation's data directory and configuration.

Each item is ``pass`` (evidence found and it meets the requirement), ``fail``
(evidence found and it does not) or ``gap`` (no evidence: not a pass). The
HTML shows pass green and fail/gap red. The report reads Chinese first: every
finding and remedy in Chinese (``findings_zh``, ``remedy_zh``) beside the
English (``findings``, ``remedy``), from the catalogue in report_text.py.

Backup and DR drill results are read from ``<data_dir>/evidence/``:
``backup-*.json`` and ``dr-drill-*.json``, each a JSON object with at least
``finished_at`` (ms or ISO-8601) and ``ok`` (bool); drills add ``rpo_seconds``
and ``rto_seconds``. TLS that terminates outside the node (the front proxy) is
evidenced by ``<data_dir>/evidence/tls.json`` (``{"terminates": "...",
"protocols": [...], "ciphers": [...]}``).
"""

from __future__ import annotations

import datetime
import html
import json
import os
import re
import socket
import stat
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tongxin import __version__
from tongxin.atrest.keyring import DEK_CIPHERS, DataKeyRow, DekStore, is_sealed
from tongxin.clock import now_ms
from tongxin.compliance import report_text, roles
from tongxin.compliance.report_text import STATUS, Pair, finding, want
from tongxin.compliance.service import (
    CONFIG_SNAPSHOT_SETTING,
    LEGAL_MIN_RETENTION_DAYS,
    Compliance,
    compliance_db,
    config_snapshot,
)
from tongxin.compliance.verify import VerifyReport
from tongxin.config import Config, documented_keys
from tongxin.crypto import available_suites, sm2_available
from tongxin.store.dsn import parse_dsn
from tongxin.store.ports import User

DAY_MS = 86_400_000
PASS, FAIL, GAP = "pass", "fail", "gap"

# The report's thresholds for IA-1 and IA-2 (common 等保 assessment practice;
# GB/T 22239 names the requirement, not the numbers).
MIN_PASSWORD_LENGTH = 8
MIN_PASSWORD_CLASSES = 3
MIN_PASSWORD_HISTORY = 3
MAX_PASSWORD_AGE_DAYS = 90
MIN_SCRYPT_N = 16384  # accounts.scrypt_n default
MAX_SESSION_IDLE_SECONDS = 1800


@dataclass
class Item:
    id: str
    clause: str
    category: str
    title: str
    requirement: str
    status: str = GAP
    evidence: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # English (the API's historical field)
    findings_zh: list[str] = field(default_factory=list)  # the same findings in Chinese
    remedy: str = ""  # what closes the item, shown when it is not a pass
    remedy_zh: str = ""

    def find(self, text: Pair) -> None:
        """A finding, from report_text: Chinese and English at the same index."""
        self.findings_zh.append(text[0])
        self.findings.append(text[1])


# How an item that is not a pass is closed (docs/compliance.md, docs/operations.md):
# item -> (zh, en).
REMEDIES: dict[str, Pair] = {
    k: report_text.fill(v, min_length=MIN_PASSWORD_LENGTH, min_classes=MIN_PASSWORD_CLASSES,
                        min_history=MIN_PASSWORD_HISTORY, max_age=MAX_PASSWORD_AGE_DAYS,
                        max_idle=MAX_SESSION_IDLE_SECONDS)
    for k, v in report_text.REMEDIES.items()
}


def _parse_time(value: Any) -> int:
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        dt = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=datetime.UTC)
        return int(dt.timestamp() * 1000)
    raise ValueError("no time")


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def latest_evidence(home: Path, prefix: str) -> tuple[Path, dict[str, Any], int] | None:
    folder = home / "evidence"
    best: tuple[Path, dict[str, Any], int] | None = None
    if not folder.is_dir():
        return None
    for p in folder.glob(f"{prefix}-*.json"):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            at = _parse_time(data["finished_at"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if best is None or at > best[2]:
            best = (p, data, at)
    return best


def _mode(path: Path) -> str | None:
    try:
        return oct(stat.S_IMODE(path.stat().st_mode))
    except OSError:
        return None


def _tls_evidence(cfg: Config) -> list[str]:
    found = []
    for key, _default, _doc in documented_keys():
        if "tls" not in key:
            continue
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj:
            found.append(f"{key} = {obj!r}")
    t = cfg.server.tls
    if t.cert_file and t.key_file:
        found.append("the node serves HTTPS and wss:// with TLS 1.3 only"
                     + (" and requires client certificates (mutual TLS)" if t.client_ca_file
                        else ""))
    tls_file = cfg.home / "evidence" / "tls.json"
    if tls_file.exists():
        try:
            data = json.loads(tls_file.read_text(encoding="utf-8"))
            found.append(f"evidence/tls.json: {json.dumps(data, ensure_ascii=False, sort_keys=True)}")
        except (OSError, ValueError):
            pass
    return found


def _role(role: str) -> Pair:
    """("系统管理员", "sysadmin"): a role in a finding (the Chinese half of roles.ROLE_TITLES)."""
    return roles.ROLE_TITLES.get(role, role).split(" ", 1)[0], role


def _yes(flag: bool | None) -> str:
    return "yes" if flag else "NO"


_SEALED_SECRETS = ("token.key", "audit_sign.key", "totp.key")


async def _at_rest_item(cfg: Config, deks: DekStore | None,
                        events_last: dict[str, int]) -> Item:
    """DC-1 from real evidence: storage.encryption, the master key provider, the data keys
    in the chat store and the last KEK rotation (audit trail), the secret files."""
    it = Item("DC-1", "8.1.4.9", "数据保密性 Data confidentiality",
              "采用密码技术保证重要数据在存储过程中的保密性（鉴别数据、重要业务数据）",
              "Confidentiality at rest: message contents, file blobs, authentication data, keys")
    enc = cfg.storage.encryption
    cipher = DEK_CIPHERS.get(cfg.crypto.suite, cfg.crypto.suite)
    it.evidence.append(f"storage.encryption = {str(enc).lower()}"
                       + (f": message contents, file blobs and secrets/* sealed with {cipher} "
                          f"data keys (crypto.suite {cfg.crypto.suite})" if enc else ""))
    if not enc:
        it.find(finding("dc1.encryption_off"))
    if cfg.keys.kms_command:
        it.evidence.append("master key provider: command (keys.kms_command, an external KMS "
                           "holds the KEK)")
        kek_mode = None
    else:
        kek_mode = _mode(cfg.master_key_file)
        it.evidence.append(f"master key provider: file {cfg.master_key_file} "
                           f"(mode {kek_mode or 'absent'})")
        if enc and kek_mode is None:
            it.find(finding("dc1.no_master_key"))
        elif kek_mode is not None and kek_mode != "0o600":
            it.find(finding("dc1.master_key_readable", mode=kek_mode))
    rows: list[DataKeyRow] | None = None
    if deks is not None:
        rows, after = [], -1
        while batch := await deks.data_keys(after, 1000):
            rows += batch
            after = batch[-1].id
    if rows is None:
        it.evidence.append("data keys: not read (no chat store given)")
        if enc:
            it.find(finding("dc1.keys_not_read"))
    else:
        keks = Counter(r.kek_id for r in rows)
        it.evidence.append(f"data keys in the store: {len(rows)} under "
                           f"{len(keks)} KEK(s) ({', '.join(sorted(keks)) or 'none'})")
        if rows:
            it.evidence.append(f"newest data key made {_iso(max(r.created_at for r in rows))}")
        elif enc:
            it.find(finding("dc1.no_data_key"))
    rotated = events_last.get("keys.rotate")
    it.evidence.append("last master key (KEK) rotation: "
                       + (_iso(rotated) if rotated else "none in the hot audit log")
                       + " (`tongxin keys rotate`, or 密钥管理 in the console)")
    for name in _SEALED_SECRETS:
        path = cfg.home / "secrets" / name
        mode = _mode(path)
        try:
            sealed = is_sealed(path.read_bytes())
        except OSError:
            sealed = False
        it.evidence.append(f"secrets/{name}: mode {mode or 'absent'}"
                           + (", sealed" if sealed else ", plaintext" if mode else ""))
        if mode is not None and mode != "0o600":
            it.find(finding("dc1.secret_readable", name=name, mode=mode))
        elif enc and mode is not None and not sealed:
            it.find(finding("dc1.secret_plain", name=name))
    it.evidence.append("passwords: scrypt; TOTP secrets: SM4-GCM under a key derived with HKDF-SM3")
    readable = any("readable" in f for f in it.findings)
    it.status = FAIL if readable else GAP if it.findings else PASS
    return it


def _e2ee_item(cfg: Config) -> Item:
    """DC-2: message contents the server itself cannot read (end-to-end encryption)."""
    e = cfg.e2ee
    it = Item("DC-2", "8.1.4.9", "数据保密性 Data confidentiality",
              "重要业务数据（消息内容）端到端加密，合规托管密钥受控解密",
              "End-to-end encrypted message contents; escrow decryption only under audit")
    it.evidence.append(f"crypto.suite = {cfg.crypto.suite}")
    it.evidence.append(f"e2ee.required = {str(e.required).lower()}"
                       + (": plaintext CHAT content is refused" if e.required else ""))
    escrow = bool(e.escrow_public_key_file)
    it.evidence.append("compliance escrow: " + (
        f"on (public key {e.escrow_public_key_file}; decryption needs the auditor's request "
        "and a security administrator's approval, each with a fresh second factor, audited "
        "as escrow.request, escrow.approve and escrow.decrypt)" if escrow else "off"))
    if not e.required:
        it.find(finding("dc2.not_required"))
    if e.required and not escrow:
        it.find(finding("dc2.no_escrow"))
    if escrow:
        if e.escrow_statement_file:
            it.evidence.append(f"escrow key vouched for by the organisation root "
                               f"({e.escrow_statement_file}; clients verify it, docs/e2ee.md "
                               "10.1)")
        else:
            it.find(finding("dc2.no_statement"))
        if e.escrow_sealed_key_file:
            it.evidence.append(f"escrow private key sealed and split k-of-n "
                               f"({e.escrow_sealed_key_file}): no one person can decrypt")
        if e.escrow_private_key_file:
            it.find(finding("dc2.plain_private_key", file=e.escrow_private_key_file))
    it.status = GAP if it.findings else PASS
    return it


async def build_report(cfg: Config, comp: Compliance, users: list[User],
                       verify: VerifyReport | None = None, now: int | None = None,
                       generated_by: str = "", deks: DekStore | None = None) -> dict[str, Any]:
    """The report; ``deks`` is the chat store (its data_keys table is DC-1's evidence)."""
    now = now_ms() if now is None else now
    home = cfg.home
    verify = verify or await comp.verify()
    totp_ids = set(await comp.store.totp_user_ids())
    sms_ids = set(await comp.store.sms_user_ids()) if comp.sms.enabled else set()
    active = [u for u in users if not u.disabled]
    admins = [u for u in active if roles.is_admin(u.role)]
    items: list[Item] = []
    # The policy in force: the configuration's, with the security administrator's changes.
    a, policy_overrides, _ = await comp.account_policy_state(cfg.accounts)

    # ---- 身份鉴别 identity authentication ---------------------------------
    it = Item("IA-1", "8.1.4.1 a)", "身份鉴别 Identity authentication",
              "身份标识唯一，口令具有复杂度要求并定期更换",
              "Unique identities; passwords with complexity rules and periodic change")
    events: Counter[str] = Counter()
    outcomes: Counter[tuple[str, str]] = Counter()
    expired_logins = 0
    events_last: dict[str, int] = {}  # event -> time of its newest successful record
    after = 0
    while rows := await comp.store.audit_records(after, 5000):
        for r in rows:
            events[r.event] += 1
            outcomes[r.event, r.outcome] += 1
            if r.outcome == "denied" and r.event in ("auth.login", "admin.login") and \
                    r.fields()["details"].get("reason") == "password expired":
                expired_logins += 1
            if r.outcome in ("ok", "partial"):
                events_last[r.event] = r.ts
        after = rows[-1].seq
    it.evidence.append("usernames are unique (UNIQUE index on users.username)")
    # (rule, configured value shown, "ok" | "missing" | "weak", what is asked: (zh, en))
    rules: list[tuple[str, str, str, Pair]] = [
        ("accounts.password_min_length", str(a.password_min_length),
         "ok" if a.password_min_length >= MIN_PASSWORD_LENGTH else "weak",
         want("min_length", MIN_PASSWORD_LENGTH)),
        ("accounts.password_min_classes", str(a.password_min_classes),
         "missing" if a.password_min_classes <= 1 else
         "ok" if a.password_min_classes >= MIN_PASSWORD_CLASSES else "weak",
         want("min_classes", MIN_PASSWORD_CLASSES)),
        ("accounts.password_history", str(a.password_history),
         "missing" if a.password_history <= 0 else
         "ok" if a.password_history >= MIN_PASSWORD_HISTORY else "weak",
         want("history", MIN_PASSWORD_HISTORY)),
        ("accounts.password_max_age_days", f"{a.password_max_age_days:g}",
         "missing" if a.password_max_age_days <= 0 else
         "ok" if a.password_max_age_days <= MAX_PASSWORD_AGE_DAYS else "weak",
         want("max_age", MAX_PASSWORD_AGE_DAYS)),
    ]
    # The hash protects the passwords themselves (鉴别信息): a cost below the
    # shipped default makes a stolen hash cheap to guess.
    rules.append(("accounts.scrypt_n", str(a.scrypt_n),
                  "ok" if a.scrypt_n >= MIN_SCRYPT_N else "weak",
                  want("scrypt_n", MIN_SCRYPT_N)))
    for key, value, state, wanted in rules:
        it.evidence.append(f"{key} = {value}" + (" (off)" if state == "missing" else ""))
        if state == "missing":
            it.find(finding("rule.not_configured", want=wanted, key=key))
        elif state == "weak":
            it.find(finding("rule.too_weak", key=key, value=value, want=wanted))
    if policy_overrides:
        it.evidence.append("changed by the security administrator (stored, in force on every "
                           "node instead of the configuration file's value): "
                           + ", ".join(f"accounts.{k}" for k in sorted(policy_overrides)))
    it.evidence.append(f"password changes recorded: {outcomes['password.change', 'ok']}; "
                       f"refused by the policy: {outcomes['password.policy', 'denied']}; "
                       f"logins refused for an expired password: {expired_logins} "
                       "(hot audit log)")
    states = {state for _k, _v, state, _w in rules}
    it.status = FAIL if "weak" in states else GAP if "missing" in states else PASS
    items.append(it)

    it = Item("IA-2", "8.1.4.1 b)", "身份鉴别 Identity authentication",
              "登录失败处理：限制非法登录次数，登录连接超时自动退出",
              "Lock accounts after repeated failures; sessions time out")
    idle = a.session_idle_timeout
    it.evidence += [f"accounts.lockout_threshold = {a.lockout_threshold}",
                    f"accounts.lockout_window = {a.lockout_window:g} s",
                    f"accounts.lockout_duration = {a.lockout_duration:g} s",
                    f"accounts.session_idle_timeout = {idle:g} s" + (" (off)" if idle <= 0 else
                                                                     ""),
                    f"accounts.token_ttl = {a.token_ttl:g} s (a login lasts at most this long)",
                    f"lockouts recorded: {events['auth.lockout']}; resumes refused after the "
                    f"idle timeout: {events['auth.idle_timeout']} (hot audit log)"]
    lockout_ok = 0 < a.lockout_threshold <= 10 and a.lockout_duration >= 60
    if not lockout_ok:
        it.find(finding("ia2.lockout_weak"))
    if idle <= 0:
        it.find(finding("ia2.idle_missing", max=MAX_SESSION_IDLE_SECONDS))
    elif idle > MAX_SESSION_IDLE_SECONDS:
        it.find(finding("ia2.idle_weak", idle=idle, max=MAX_SESSION_IDLE_SECONDS))
    it.status = (FAIL if not lockout_ok or idle > MAX_SESSION_IDLE_SECONDS
                 else GAP if idle <= 0 else PASS)
    items.append(it)

    tls = _tls_evidence(cfg)
    it = Item("IA-3", "8.1.4.1 c)", "身份鉴别 Identity authentication",
              "远程管理时采取必要措施防止鉴别信息在网络传输过程中被窃听",
              "Remote administration protects credentials in transit (TLS / TLCP)")
    it.evidence += tls
    if not tls:
        it.find(finding("ia3.no_tls"))
    it.status = PASS if tls else GAP
    items.append(it)

    it = Item("IA-4", "8.1.4.1 d)", "身份鉴别 Identity authentication",
              "采用两种或两种以上组合的鉴别技术（口令 + 动态口令），至少一种为密码技术",
              "Two authentication factors for administrators (password + TOTP or SMS code)")
    coverage: dict[str, dict[str, int]] = {}
    missing = sms_only = False
    for role in roles.ADMIN_ROLES:
        holders = [u for u in admins if u.role == role]
        with_totp = [u for u in holders if u.id in totp_ids]
        with_sms = [u for u in holders if u.id in sms_ids]
        coverage[role] = {"accounts": len(holders), "totp": len(with_totp), "sms": len(with_sms)}
        it.evidence.append(f"{role}: {len(with_totp)} of {len(holders)} accounts with TOTP"
                           + (f", {len(with_sms)} with an SMS number" if comp.sms.enabled else ""))
        for u in holders:
            if u.id in totp_ids:
                continue
            if u.id in sms_ids:
                sms_only = True
                it.find(finding("ia4.sms_only", role=_role(role), user=u.username))
            else:
                missing = True
                it.find(finding("ia4.no_factor", role=_role(role), user=u.username))
    it.evidence.append(f"compliance.sms_provider = {cfg.compliance.sms_provider}")
    it.evidence.append("the admin login gives no token without a valid, unreplayed one-time code "
                       "(TOTP: HMAC-SHA-1, RFC 6238); sensitive operations need a fresh code "
                       f"(step-up window {cfg.compliance.step_up_window:g} s)")
    if not admins:
        it.find(finding("ia4.no_admins"))
        it.status = GAP
    else:
        it.status = FAIL if missing else GAP if sms_only else PASS
    items.append(it)

    # ---- 访问控制 access control -------------------------------------------
    it = Item("AC-1", "8.1.4.2 a)-d)", "访问控制 Access control",
              "分配账户和权限，删除或停用多余账户，实现管理用户的权限分离（三员分立）",
              "Accounts and least privilege; separation of duties among administrators")
    for role in roles.ADMIN_ROLES:
        names = sorted(u.username for u in admins if u.role == role)
        it.evidence.append(f"{role} ({roles.ROLE_TITLES[role]}): {', '.join(names) or 'none'}")
        if not names:
            it.find(finding("ac1.no_role", role=_role(role)))
    overlap = [(r1, r2) for i, r1 in enumerate(roles.ADMIN_ROLES) for r2 in roles.ADMIN_ROLES[i + 1:]
               if roles.PERMISSIONS[r1] & roles.PERMISSIONS[r2]]
    it.evidence.append("permission sets of the three roles are disjoint" if not overlap
                       else f"overlapping permissions: {overlap}")
    if overlap:
        it.find(finding("ac1.overlap"))
    it.evidence.append("one role per account (users.role); admin accounts cannot use the chat login")
    it.status = FAIL if overlap else (GAP if it.findings else PASS)
    items.append(it)

    it = Item("AC-2", "8.1.4.2 e)", "访问控制 Access control",
              "由授权主体配置访问控制策略，越权访问被拒绝并记录",
              "Access policy set by the authorised role; refused attempts are recorded")
    it.evidence.append(f"admin.forbidden records in the hot audit log: {events['admin.forbidden']}")
    it.evidence.append("every admin API operation is checked against the role matrix "
                       "(docs/compliance.md); refusals answer 403 and are audited")
    it.status = PASS
    items.append(it)

    # ---- 安全审计 security audit --------------------------------------------
    it = Item("AU-1", "8.1.4.3 a)-b)", "安全审计 Security audit",
              "启用安全审计功能，审计覆盖到每个用户；记录日期和时间、用户、事件类型、结果",
              "Audit enabled for every user; records carry time, user, event type and outcome")
    total = verify.archived_records + verify.hot_records
    it.evidence.append(f"{total} records ({verify.archived_records} archived, "
                       f"{verify.hot_records} hot), seq {verify.first_seq}..{verify.last_seq}")
    it.evidence.append("event types in the hot log: " +
                       (", ".join(f"{k} x{v}" for k, v in sorted(events.items())) or "none"))
    it.evidence.append("record fields: ts, node, event, outcome, actor, actor_role, target, source")
    if total == 0:
        it.find(finding("au1.empty"))
    it.status = PASS if total else GAP
    items.append(it)

    it = Item("AU-2", "8.1.4.3 c)", "安全审计 Security audit",
              "对审计记录进行保护，定期备份，避免受到未预期的删除、修改或覆盖；留存不少于六个月",
              "Audit records protected against deletion and modification; kept at least 6 months")
    days, override = await comp.audit_retention()
    it.evidence.append(f"SM3 hash chain verified: {_yes(verify.ok)} "
                       f"({len(verify.problems)} problems)")
    for p in verify.problems[:5]:
        it.find(finding("au2.problem", where=p.where, message=p.message,
                        kind_zh=report_text.PROBLEM_KINDS.get(p.kind, p.kind)))
    it.evidence.append(f"signed heads: {verify.heads_verified}/{verify.heads_total} verify with SM2; "
                       f"latest covers record {verify.latest_signed_seq}"
                       + (f" at {_iso(verify.latest_signed_ts)}" if verify.latest_signed_ts else ""))
    if verify.heads_verified and verify.latest_signed_seq < verify.last_seq:
        it.evidence.append(
            f"records {verify.latest_signed_seq + 1}..{verify.last_seq} are not yet covered by a "
            f"signed head (the node signs every {cfg.compliance.audit_sign_interval:g} s; "
            "`tongxin audit sign` signs now)")
    if verify.manifest_signed is not None:
        it.evidence.append(f"archive manifest signature verifies: {_yes(verify.manifest_signed)}")
    it.evidence.append(f"anchored heads: {verify.anchors_verified}/{verify.anchors_total} verify; "
                       f"latest covers record {verify.latest_anchored_seq}")
    it.evidence.append(f"trusted audit keys ({verify.trust_source}): "
                       f"{', '.join(verify.key_fingerprints) or 'none'}")
    for fp, where in verify.untrusted_keys.items():
        it.find(finding("au2.untrusted_key", fp=fp, where=where))
    it.evidence.append(f"audit signing key fingerprint (SM3 of SPKI): "
                       f"{comp.keys.current_fingerprint() or 'none'}")
    key_mode = _mode(comp.keys.private_path)
    it.evidence.append(f"secrets/audit_sign.key mode {key_mode}")
    it.evidence.append(f"audit retention {days:g} days (legal minimum "
                       f"{LEGAL_MIN_RETENTION_DAYS:g}, 网络安全法 第二十一条)"
                       + (" — override in force" if override else ""))
    if days < LEGAL_MIN_RETENTION_DAYS:
        it.find(finding("au2.retention_short", days=days, minimum=LEGAL_MIN_RETENTION_DAYS))
    if verify.heads_verified == 0:
        it.find(finding("au2.no_signed_head"))
    elif verify.latest_signed_seq < verify.last_seq and verify.latest_signed_ts and \
            now - verify.latest_signed_ts > 2 * cfg.compliance.audit_sign_interval * 1000 + 60_000:
        it.find(finding("au2.head_stale"))
    if key_mode is not None and key_mode != "0o600":
        it.find(finding("au2.key_readable"))
    if not verify.ok or days < LEGAL_MIN_RETENTION_DAYS or it.findings:
        it.status = FAIL if (not verify.ok or days < LEGAL_MIN_RETENTION_DAYS
                             or key_mode not in (None, "0o600")) else GAP
    else:
        it.status = PASS
    items.append(it)

    it = Item("AU-3", "8.1.4.3 d)", "安全审计 Security audit",
              "对审计进程进行保护，防止未经授权的中断；审计记录仅审计管理员可查阅",
              "Audit process protected; only the auditor reads the audit log")
    readers = [r for r, ops in roles.PERMISSIONS.items() if "audit.read" in ops]
    it.evidence.append(f"roles that may read the audit log: {', '.join(readers)}")
    it.evidence.append("the node writes records and signs heads itself; no API deletes records")
    it.status = PASS if readers == [roles.AUDITOR] else FAIL
    items.append(it)

    # ---- 通信 communication ------------------------------------------------
    it = Item("CM-1", "8.1.2.2 / 8.1.4.8-9", "通信完整性与保密性 Communication integrity and "
              "confidentiality", "采用密码技术保证通信过程中数据的完整性和保密性",
              "Cryptography protects data in transit (TLS 1.3 or TLCP at the proxy)")
    suites = available_suites()
    it.evidence.append(f"crypto suites available: {', '.join(suites)}")
    it.evidence.append(f"SM2 (OpenSSL libcrypto) available: {_yes(sm2_available())}")
    it.evidence.append("login tokens: HMAC-SM3; audit chain: SM3; signatures: SM2")
    it.evidence += tls
    if not tls:
        it.find(finding("cm1.no_tls"))
    if "gm" not in suites:
        it.find(finding("cm1.no_gm"))
    it.status = PASS if tls and "gm" in suites else GAP
    items.append(it)

    # ---- 数据 data ----------------------------------------------------------
    it = Item("DI-1", "8.1.4.8", "数据完整性 Data integrity",
              "采用校验技术或密码技术保证重要数据在传输和存储过程中的完整性",
              "Integrity of important data in storage: audit, messages, tokens")
    if cfg.storage.backend == "sqlite":
        it.evidence.append(f"storage.sqlite_synchronous = {cfg.storage.sqlite_synchronous!r} "
                           "(acknowledged messages are fsynced)")
    else:
        # The node's SQLite setting says nothing about a MySQL/TiDB store.
        it.evidence.append(f"storage.backend = {cfg.storage.backend}: a message is ACKed after "
                           "its transaction commits; durability is the database's (TiDB: Raft "
                           "replicas; MySQL/MariaDB: innodb_flush_log_at_trx_commit = 1)")
    it.evidence.append(f"audit chain verified: {_yes(verify.ok)}")
    it.evidence.append("login tokens carry an HMAC-SM3; exports and archives carry SM3 digests "
                       "and an SM2-signed manifest")
    if cfg.storage.backend == "sqlite" and cfg.storage.sqlite_synchronous != "full":
        it.find(finding("di1.not_synchronous"))
    if not verify.ok:
        it.find(finding("di1.chain_broken"))
    it.status = FAIL if it.findings else PASS
    items.append(it)

    items.append(await _at_rest_item(cfg, deks, events_last))
    items.append(_e2ee_item(cfg))

    it = Item("BR-1", "8.1.4.10 a)", "数据备份恢复 Backup and recovery",
              "提供重要数据的本地数据备份与恢复功能", "Backups of important data, recently taken and good")
    backup = latest_evidence(home, "backup")
    if backup is None:
        it.find(finding("br1.no_backup"))
        it.status = GAP
    else:
        path, data, at = backup
        it.evidence.append(f"{path.name}: finished {_iso(at)}, ok = {data.get('ok')}")
        if data.get("ok") is not True:
            it.find(finding("br1.backup_failed"))
        if now - at > 7 * DAY_MS:
            it.find(finding("br1.backup_old"))
        it.status = FAIL if it.findings else PASS
    # A backup nobody has restored is a hope, not a backup: the restore drill
    # (playbooks/restore.yml, `tongxin backup restore`) leaves evidence/restore-*.json.
    restored = latest_evidence(home, "restore")
    if restored is None:
        it.find(finding("br1.no_restore"))
    else:
        path, data, at = restored
        it.evidence.append(f"{path.name}: backup {data.get('backup')} restored {_iso(at)}, "
                           f"ok = {data.get('ok')}")
        if data.get("ok") is not True:
            it.find(finding("br1.restore_failed"))
        elif now - at > 365 * DAY_MS:
            it.find(finding("br1.restore_old"))
    if it.status == PASS and it.findings:
        it.status = GAP
    items.append(it)

    it = Item("BR-2", "8.1.4.10 b)-c)", "数据备份恢复 Backup and recovery",
              "异地备份与热冗余（同城双活 + 异地容灾）；演练证明 RPO<15 s、RTO<5 min",
              "Off-site redundancy; a DR drill shows RPO < 15 s and RTO < 5 min")
    drill = latest_evidence(home, "dr-drill")
    if drill is None:
        it.find(finding("br2.no_drill"))
        it.status = GAP
    else:
        path, data, at = drill
        rpo, rto = data.get("rpo_seconds"), data.get("rto_seconds")
        it.evidence.append(f"{path.name}: finished {_iso(at)}, ok = {data.get('ok')}, "
                           f"RPO = {rpo} s, RTO = {rto} s")
        if data.get("ok") is not True:
            it.find(finding("br2.drill_failed"))
        if not isinstance(rpo, int | float) or rpo >= 15:
            it.find(finding("br2.rpo"))
        if not isinstance(rto, int | float) or rto >= 300:
            it.find(finding("br2.rto"))
        if now - at > 365 * DAY_MS:
            it.find(finding("br2.drill_old"))
        it.status = FAIL if it.findings else PASS
    items.append(it)

    it = Item("RI-1", "8.1.4.11 / 8.1.4.6", "剩余信息保护与个人信息 Retention",
              "按策略保存与删除数据；法律保全期间不删除", "Retention policy applied; legal holds respected")
    policies = dict(await comp.store.policies())
    default_days = policies.get("default", cfg.compliance.message_retention_days)
    holds = await comp.store.holds()
    last = await comp.store.last_run()
    it.evidence.append(f"default message retention: {default_days:g} days"
                       + (" (kept forever)" if default_days == 0 else ""))
    it.evidence.append(f"conversation policies: {len([k for k in policies if k != 'default'])}")
    it.evidence.append(f"active legal holds: {len(holds)}")
    if last is not None:
        it.evidence.append(f"last retention run #{last.id}: started {_iso(last.started_at)}, "
                           f"{'finished' if last.finished_at else 'unfinished'}, "
                           f"{last.deleted} messages deleted")
    if default_days == 0 and len(policies) <= 1:
        it.find(finding("ri1.no_period"))
    elif last is None:
        it.find(finding("ri1.never_run"))
    it.status = GAP if it.findings else PASS
    items.append(it)

    for i in items:
        if i.status != PASS:
            i.remedy_zh, i.remedy = REMEDIES.get(i.id, ("", ""))
    # The report judges the configuration it was given; the node records the one
    # it started with. A difference (a CLI run without the node's --config) is
    # shown, or the report would judge settings the node does not run with.
    stored = await comp.store.get_setting(CONFIG_SNAPSHOT_SETTING)
    mine = config_snapshot(cfg)
    mismatch = sorted(k for k in mine if isinstance(stored, dict) and k in stored
                      and stored[k] not in (mine[k], "***")
                      and k not in ("server.listen", "node_id"))
    summary = Counter(i.status for i in items)
    return {
        "title": "等级保护 2.0 第三级 合规报告 — Tongxin compliance report",
        "standard": "GB/T 22239-2019 (等保 2.0), level 3; 网络安全法",
        "generated_at": now, "generated_at_iso": _iso(now), "version": __version__,
        "generated_by": generated_by, "host": socket.gethostname(), "node_id": cfg.node_id,
        "data_dir": str(home.resolve()),
        "compliance_store": _store_text(cfg, comp),
        "audit_key_fingerprint": comp.keys.current_fingerprint() or "",
        "audit_keys": sorted(verify.key_fingerprints),
        "config_differs_from_node": mismatch,
        "summary": {PASS: summary[PASS], FAIL: summary[FAIL], GAP: summary[GAP]},
        "two_factor_coverage": coverage,
        "audit_verify": verify.as_dict(),
        "items": [asdict(i) for i in items],
    }


def _store_text(cfg: Config, comp: Compliance) -> str:
    """Where the audit chain and the rest of the compliance state live, for the reader."""
    if comp.store.shared:
        d = parse_dsn(cfg.storage.mysql_dsn)
        return (f"shared database {d.host}:{d.port}/{d.database} (storage.backend "
                f"{cfg.storage.backend}): one audit chain, holds and second factors for every node")
    return f"{compliance_db(cfg)} (this node only)"


_CSS = """
body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei",
       "WenQuanYi Micro Hei", system-ui, sans-serif; margin: 2em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
.sub { color: #555; margin-top: 0; }
dl.scope { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; margin: 1em 0; }
dl.scope dt { color: #555; } dl.scope dd { margin: 0; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .92em;
              overflow-wrap: anywhere; }
.badges { display: flex; gap: .6em; margin: 1em 0 .3em; }
.badge { padding: .3em .8em; border-radius: 4px; color: #fff; font-weight: bold; }
.b-pass { background: #2e7d32; } .b-fail { background: #c62828; }
.b-gap { background: repeating-linear-gradient(135deg, #c62828 0 8px, #b71c1c 8px 16px); }
.b-none { background: #9e9e9e; }
.legend { color: #555; font-size: .9em; margin: 0 0 1em; }
.attention { border-left: 4px solid #c62828; padding: .3em .8em; background: #fff5f5; }
.attention a { color: #b71c1c; margin-right: .6em; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; margin-top: 1em; }
th, td { border: 1px solid #bbb; padding: .45em .6em; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
col.c-item { width: 9em; } col.c-req { width: 30%; } col.c-status { width: 6.5em; }
td.item b { font-size: 1.05em; } td.item span { color: #555; font-size: .9em; }
td.req .cat { font-weight: bold; } td.req .en { color: #555; font-size: .9em; }
td.status { color: #fff; font-weight: bold; text-align: center; }
td.status small { display: block; font-weight: normal; font-size: .75em; }
tr.green td.status { background: #2e7d32; }
tr.red td.status { background: #c62828; }
tr.red td.status.gap { background: repeating-linear-gradient(135deg, #c62828 0 8px, #b71c1c 8px 16px); }
ul { margin: .2em 0 .4em; padding-left: 1.3em; }
.findings { color: #b71c1c; } .findings b, .remedy b { display: block; margin-top: .3em; }
.remedy { background: #f7f7f7; padding: .3em .5em; border-radius: 3px; margin-top: .3em; }
footer { margin-top: 2em; color: #555; font-size: .9em; }
@media print { body { margin: 1cm; } tr { break-inside: avoid; } }
"""


def _code(escaped: str) -> str:
    """`command` in (already escaped) text as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


_CSS_EXTRA = """
.en { color: #666; font-size: .85em; font-weight: normal; }
li .en, .remedy .en, p .en, footer .en, .attention .en { display: block; }
th .en { display: block; } .findings b .en, .remedy b .en { display: inline; }
.findings li > span.zh { color: #b71c1c; }
.summary { font-size: 1.05em; margin: .2em 0; }
"""


def _both(zh: str, en: str, code: bool = False) -> str:
    """The Chinese text, then the English in a smaller muted line (both escaped)."""
    fmt = _code if code else (lambda x: x)
    zh_html = fmt(html.escape(zh))
    if not en or en == zh:
        return zh_html
    return f'<span class="zh">{zh_html}</span><span class="en" lang="en">{fmt(html.escape(en))}</span>'


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    rows = []
    for i in report["items"]:
        status = i["status"]
        colour = "green" if status == PASS else "red"
        zh_word, code, zh_meaning, meaning = STATUS.get(status, (status, status.upper(), "", ""))
        ev = "".join(f"<li>{e(x)}</li>" for x in i["evidence"])
        findings_zh = i.get("findings_zh") or i["findings"]  # (a report from before findings_zh)
        fi = "".join(f"<li>{_both(zh, en)}</li>" for zh, en in zip(findings_zh, i["findings"],
                                                                     strict=False))
        remedy, remedy_zh = i.get("remedy", ""), i.get("remedy_zh", "")
        rows.append(
            f'<tr class="{colour}" id="{e(i["id"])}">'
            f'<td class="item"><b>{e(i["id"])}</b><br><span>{e(i["clause"])}</span></td>'
            f'<td class="req"><div class="cat">{e(i["category"])}</div><div>{e(i["title"])}</div>'
            f'<div class="en">{e(i["requirement"])}</div></td>'
            f'<td class="status {e(status)}" title="{e(zh_meaning)} / {e(meaning)}">{e(zh_word)}'
            f'<small>{e(code)}</small>'
            f'{"<small>未取得证据 not evidenced</small>" if status == GAP else ""}</td>'
            + "<td>" + ('<b>证据 <span class="en">Evidence</span></b>' if ev else "")
            + f"<ul>{ev}</ul>"
            + (f'<div class="findings"><b>发现 <span class="en">Findings</span></b><ul>{fi}</ul>'
               "</div>" if fi else "")
            + (f'<div class="remedy"><b>整改措施 <span class="en">To close</span></b>'
               f'{_both(remedy_zh or remedy, remedy, code=True)}</div>' if remedy else "")
            + "</td></tr>")
    s = report["summary"]
    attention = [i for i in report["items"] if i["status"] != PASS]
    mismatch = report.get("config_differs_from_node", [])
    links = "".join(f'<a href="#{e(i["id"])}">{e(i["id"])}（{e(STATUS.get(i["status"], (i["status"],))[0])} '
                    f'{e(i["status"])}）</a>' for i in attention)
    verify = report.get("audit_verify", {})
    problems = len(verify.get("problems", []))
    chain = ("完整 intact" if verify.get("ok") else
             f"已损坏 BROKEN（{problems} 个问题，见 AU-2; {problems} problems, see AU-2）")
    by = report.get("generated_by")
    scope = [
        ("生成时间 generated", f'{report["generated_at_iso"]}' + (f'，生成者 by {by}' if by else "")),
        ("安装 installation", f'主机 host {report.get("host", "")}'
                             + (f'，节点 node {report["node_id"]}' if report.get("node_id") else "")
                             + f'，数据目录 data directory {report["data_dir"]}，'
                               f'Tongxin {report["version"]}'),
        ("审计链 audit chain", f'{chain}：记录 records {verify.get("first_seq", 0)}..'
                              f'{verify.get("last_seq", 0)}，已签名链头 {verify.get("heads_verified", 0)}'
                              f'/{verify.get("heads_total", 0)} 验证通过 (signed heads verify)'),
    ]
    if report.get("compliance_store"):
        scope.append(("合规状态存储 compliance state", report["compliance_store"]))
    scope_html = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in scope)
    fp = report.get("audit_key_fingerprint", "")
    others = [k for k in report.get("audit_keys", []) if k != fp]
    scope_html += (f'<dt>审计密钥 audit key</dt><dd><span class="mono">{e(fp or "none")}</span>'
                   "（本节点）— 请与保存在设备之外的副本比对 (this node) — compare with the copy "
                   "kept outside the appliance</dd>")
    if others:
        # On a shared store every node signs heads with its own key.
        scope_html += ('<dt>其他审计密钥 other audit keys</dt><dd>' + "<br>".join(
            f'<span class="mono">{e(k)}</span>' for k in others)
            + " — 其他节点的密钥（发布在数据库中），请逐一比对; other nodes' keys (published in "
              "the database); compare each</dd>")
    badges = "".join(
        f'<span class="badge b-{k if s[k] else "none"}">{STATUS[k][0]} {STATUS[k][1]} {s[k]}</span>'
        for k in (PASS, FAIL, GAP))
    legend_zh = "。".join(f"{STATUS[k][0]}（{STATUS[k][1]}）：{STATUS[k][2]}" for k in (PASS, FAIL, GAP))
    legend_en = ". ".join(f"{STATUS[k][1]}: {STATUS[k][3]}" for k in (PASS, FAIL, GAP))
    warning = (
        f'<p class="attention"><b>警告：</b>本报告读取的配置与节点最近一次启动时的配置不同'
        f'（{e("、".join(mismatch))}）；请使用节点的 <code>--config</code> 重新生成。'
        f'<span class="en" lang="en"><b>Warning:</b> this report read a configuration that differs '
        f'from the one the node last started with ({e(", ".join(mismatch))}); run it with the '
        f'node&#39;s <code>--config</code>.</span></p>' if mismatch else "")
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>{e(report["title"])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}{_CSS_EXTRA}</style></head><body>
<h1>{e(report["title"])}</h1>
<p class="sub">{e(report["standard"])}</p>
<dl class="scope">{scope_html}</dl>
<p class="summary">{e(report_text.summary_line(s))}</p>
<div class="badges">{badges}</div>
<p class="legend">{e(legend_zh)}。不符合与差距均显示为红色。
<span class="en" lang="en">{e(legend_en)}. Both FAIL and GAP are red.</span></p>
{f'<p class="attention"><b>未通过 Not passed:</b> {links}</p>' if attention else ""}
{warning}
<table><colgroup><col class="c-item"><col class="c-req"><col class="c-status"><col></colgroup>
<thead><tr><th>条款 <span class="en">item · clause</span></th>
<th>要求 <span class="en">requirement (GB/T 22239-2019)</span></th>
<th>结论 <span class="en">status</span></th>
<th>证据与发现 <span class="en">evidence, findings</span></th></tr></thead>
<tbody>
{"".join(rows)}
</tbody></table>
<footer><p>同一报告的 JSON 版本（含完整的审计链校验结果和各角色的第二鉴别因子覆盖情况）：
<code>compliance-report.json</code>。独立核查审计记录：在数据目录的副本上运行
<code>tongxin audit verify --pubkey TRUSTED.pem</code>。</p>
<p class="en" lang="en">The same report as JSON, with the full audit verification result and the
second-factor coverage per role: <code>compliance-report.json</code>. To check the audit trail
independently: <code>tongxin audit verify --pubkey TRUSTED.pem</code> on a copy of the data
directory.</p></footer>
</body></html>
"""


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, h = out / "compliance-report.json", out / "compliance-report.html"
    j.write_text(json.dumps(report, ensure_ascii=False, indent=2, sort_keys=True), encoding="utf-8")
    h.write_text(render_html(report), encoding="utf-8")
    for p in (j, h):
        os.chmod(p, 0o640)
    return j, h

"""``tongxin report compliance``: 等保 2.0 (GB/T 22239-2019) level-3 items mapped
to evidence read from this installation's data directory and configuration.

Each item is ``pass`` (evidence found and it meets the requirement), ``fail``
(evidence found and it does not) or ``gap`` (no evidence: not a pass). The
HTML shows pass green and fail/gap red.

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
import stat
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tongxin import __version__
from tongxin.clock import now_ms
from tongxin.compliance import roles
from tongxin.compliance.service import LEGAL_MIN_RETENTION_DAYS, Compliance
from tongxin.compliance.verify import VerifyReport
from tongxin.config import Config, documented_keys
from tongxin.crypto import available_suites, sm2_available
from tongxin.store.ports import User

DAY_MS = 86_400_000
PASS, FAIL, GAP = "pass", "fail", "gap"


@dataclass
class Item:
    id: str
    clause: str
    category: str
    title: str
    requirement: str
    status: str = GAP
    evidence: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


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


def _latest_evidence(home: Path, prefix: str) -> tuple[Path, dict[str, Any], int] | None:
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
    tls_file = cfg.home / "evidence" / "tls.json"
    if tls_file.exists():
        try:
            data = json.loads(tls_file.read_text(encoding="utf-8"))
            found.append(f"evidence/tls.json: {json.dumps(data, ensure_ascii=False, sort_keys=True)}")
        except (OSError, ValueError):
            pass
    return found


async def build_report(cfg: Config, comp: Compliance, users: list[User],
                       verify: VerifyReport | None = None, now: int | None = None) -> dict[str, Any]:
    now = now_ms() if now is None else now
    home = cfg.home
    verify = verify or await comp.verify()
    totp_ids = set(await comp.store.totp_user_ids())
    active = [u for u in users if not u.disabled]
    admins = [u for u in active if roles.is_admin(u.role)]
    items: list[Item] = []
    a = cfg.accounts

    # ---- 身份鉴别 identity authentication ---------------------------------
    it = Item("IA-1", "8.1.4.1 a)", "身份鉴别 Identity authentication",
              "身份标识唯一，口令具有复杂度要求并定期更换",
              "Unique identities; passwords with complexity rules and periodic change")
    it.evidence.append("usernames are unique (UNIQUE index on users.username)")
    it.evidence.append(f"accounts.password_min_length = {a.password_min_length}")
    it.evidence.append(f"password hashes: scrypt, N = {a.scrypt_n}")
    it.findings.append("no character-class rule and no password expiry are enforced")
    it.status = FAIL if a.password_min_length < 8 else GAP
    items.append(it)

    it = Item("IA-2", "8.1.4.1 b)", "身份鉴别 Identity authentication",
              "登录失败处理：限制非法登录次数，登录连接超时自动退出",
              "Lock accounts after repeated failures; sessions time out")
    it.evidence += [f"accounts.lockout_threshold = {a.lockout_threshold}",
                    f"accounts.lockout_window = {a.lockout_window:g} s",
                    f"accounts.lockout_duration = {a.lockout_duration:g} s",
                    f"accounts.token_ttl = {a.token_ttl:g} s",
                    f"server.idle_timeout_factor x heartbeat = "
                    f"{cfg.server.idle_timeout_factor * cfg.server.heartbeat_interval:g} s"]
    ok = 0 < a.lockout_threshold <= 10 and a.lockout_duration >= 60
    if not ok:
        it.findings.append("lockout must engage within 10 failures and last at least 60 s")
    it.status = PASS if ok else FAIL
    items.append(it)

    tls = _tls_evidence(cfg)
    it = Item("IA-3", "8.1.4.1 c)", "身份鉴别 Identity authentication",
              "远程管理时采取必要措施防止鉴别信息在网络传输过程中被窃听",
              "Remote administration protects credentials in transit (TLS / TLCP)")
    it.evidence += tls
    if not tls:
        it.findings.append("no TLS in this node's configuration and no evidence/tls.json for a "
                           "front proxy")
    it.status = PASS if tls else GAP
    items.append(it)

    it = Item("IA-4", "8.1.4.1 d)", "身份鉴别 Identity authentication",
              "采用两种或两种以上组合的鉴别技术（口令 + 动态口令），至少一种为密码技术",
              "Two authentication factors for administrators (password + TOTP)")
    coverage: dict[str, dict[str, int]] = {}
    for role in roles.ADMIN_ROLES:
        holders = [u for u in admins if u.role == role]
        with_totp = [u for u in holders if u.id in totp_ids]
        coverage[role] = {"accounts": len(holders), "totp": len(with_totp)}
        it.evidence.append(f"{role}: {len(with_totp)}/{len(holders)} accounts with TOTP enrolled")
        for u in holders:
            if u.id not in totp_ids:
                it.findings.append(f"{role} {u.username} has no second factor enrolled")
    it.evidence.append("admin login refuses a token without a valid, unreplayed TOTP code; "
                       "sensitive operations need a fresh code (step-up window "
                       f"{cfg.compliance.step_up_window:g} s)")
    if not admins:
        it.findings.append("no administrative accounts exist")
        it.status = GAP
    else:
        it.status = FAIL if it.findings else PASS
    items.append(it)

    # ---- 访问控制 access control -------------------------------------------
    it = Item("AC-1", "8.1.4.2 a)-d)", "访问控制 Access control",
              "分配账户和权限，删除或停用多余账户，实现管理用户的权限分离（三员分立）",
              "Accounts and least privilege; separation of duties among administrators")
    for role in roles.ADMIN_ROLES:
        names = sorted(u.username for u in admins if u.role == role)
        it.evidence.append(f"{role} ({roles.ROLE_TITLES[role]}): {', '.join(names) or 'none'}")
        if not names:
            it.findings.append(f"no active {role} account")
    overlap = [(r1, r2) for i, r1 in enumerate(roles.ADMIN_ROLES) for r2 in roles.ADMIN_ROLES[i + 1:]
               if roles.PERMISSIONS[r1] & roles.PERMISSIONS[r2]]
    it.evidence.append("permission sets of the three roles are disjoint" if not overlap
                       else f"overlapping permissions: {overlap}")
    if overlap:
        it.findings.append("administrative roles share permissions")
    it.evidence.append("one role per account (users.role); admin accounts cannot use the chat login")
    it.status = FAIL if overlap else (GAP if it.findings else PASS)
    items.append(it)

    events: Counter[str] = Counter()
    after = 0
    while rows := await comp.store.audit_records(after, 5000):
        events.update(r.event for r in rows)
        after = rows[-1].seq
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
        it.findings.append("the audit log is empty")
    it.status = PASS if total else GAP
    items.append(it)

    it = Item("AU-2", "8.1.4.3 c)", "安全审计 Security audit",
              "对审计记录进行保护，定期备份，避免受到未预期的删除、修改或覆盖；留存不少于六个月",
              "Audit records protected against deletion and modification; kept at least 6 months")
    days, override = await comp.audit_retention()
    it.evidence.append(f"SM3 hash chain verified: {'yes' if verify.ok else 'NO'} "
                       f"({len(verify.problems)} problems)")
    for p in verify.problems[:5]:
        it.findings.append(f"{p.where}: {p.message}")
    it.evidence.append(f"signed heads: {verify.heads_verified}/{verify.heads_total} verify with SM2; "
                       f"latest covers record {verify.latest_signed_seq}"
                       + (f" at {_iso(verify.latest_signed_ts)}" if verify.latest_signed_ts else ""))
    if verify.manifest_signed is not None:
        it.evidence.append(f"archive manifest signature verifies: {verify.manifest_signed}")
    it.evidence.append(f"audit signing key fingerprint (SM3 of SPKI): "
                       f"{comp.keys.current_fingerprint() or 'none'}")
    key_mode = _mode(comp.keys.private_path)
    it.evidence.append(f"secrets/audit_sign.key mode {key_mode}")
    it.evidence.append(f"audit retention {days:g} days (legal minimum "
                       f"{LEGAL_MIN_RETENTION_DAYS:g}, 网络安全法 第二十一条)"
                       + (" — override in force" if override else ""))
    if days < LEGAL_MIN_RETENTION_DAYS:
        it.findings.append(f"audit retention {days:g} days is below the legal minimum")
    if verify.heads_verified == 0:
        it.findings.append("no signed chain head: a rewrite of the whole chain would go unnoticed")
    elif verify.latest_signed_seq < verify.last_seq and verify.latest_signed_ts and \
            now - verify.latest_signed_ts > 2 * cfg.compliance.audit_sign_interval * 1000 + 60_000:
        it.findings.append("the newest records are not covered by a recent signed head")
    if key_mode is not None and key_mode != "0o600":
        it.findings.append("the audit signing key is readable by others than the service")
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
    it.evidence.append(f"SM2 (gmssl-pyx) available: {sm2_available()}")
    it.evidence.append("login tokens: HMAC-SM3; audit chain: SM3; signatures: SM2")
    it.evidence += tls
    if not tls:
        it.findings.append("no evidence of TLS or TLCP on the client connections")
    if "gm" not in suites:
        it.findings.append("the GM (SM2/SM3/SM4) suite is not available in this process")
    it.status = PASS if tls and "gm" in suites else GAP
    items.append(it)

    # ---- 数据 data ----------------------------------------------------------
    it = Item("DI-1", "8.1.4.8", "数据完整性 Data integrity",
              "采用校验技术或密码技术保证重要数据在传输和存储过程中的完整性",
              "Integrity of important data in storage: audit, messages, tokens")
    it.evidence.append(f"storage.sqlite_synchronous = {cfg.storage.sqlite_synchronous!r} "
                       "(acknowledged messages are fsynced)")
    it.evidence.append(f"audit chain verified: {verify.ok}")
    it.evidence.append("login tokens carry an HMAC-SM3; exports and archives carry SM3 digests "
                       "and an SM2-signed manifest")
    if cfg.storage.backend == "sqlite" and cfg.storage.sqlite_synchronous != "full":
        it.findings.append("sqlite_synchronous is not full: acknowledged messages may be lost")
    if not verify.ok:
        it.findings.append("the audit chain does not verify")
    it.status = FAIL if it.findings else PASS
    items.append(it)

    it = Item("DC-1", "8.1.4.9", "数据保密性 Data confidentiality",
              "采用密码技术保证重要数据在存储过程中的保密性（鉴别数据、重要业务数据）",
              "Confidentiality of authentication data and keys at rest")
    for name in ("token.key", "audit_sign.key", "totp.key"):
        mode = _mode(home / "secrets" / name)
        it.evidence.append(f"secrets/{name}: mode {mode or 'absent'}")
        if mode is not None and mode != "0o600":
            it.findings.append(f"secrets/{name} is readable by others than the service (mode {mode})")
    it.evidence.append("passwords: scrypt; TOTP secrets: SM4-GCM under a key derived with HKDF-SM3")
    it.findings.append("message contents are stored unencrypted in the message database "
                       "(end-to-end encryption is not implemented yet)")
    it.status = FAIL if any("readable" in f for f in it.findings) else GAP
    items.append(it)

    it = Item("BR-1", "8.1.4.10 a)", "数据备份恢复 Backup and recovery",
              "提供重要数据的本地数据备份与恢复功能", "Backups of important data, recently taken and good")
    backup = _latest_evidence(home, "backup")
    if backup is None:
        it.findings.append("no backup result in evidence/backup-*.json")
        it.status = GAP
    else:
        path, data, at = backup
        it.evidence.append(f"{path.name}: finished {_iso(at)}, ok = {data.get('ok')}")
        if data.get("ok") is not True:
            it.findings.append("the latest backup failed")
        if now - at > 7 * DAY_MS:
            it.findings.append("the latest backup is older than 7 days")
        it.status = FAIL if it.findings else PASS
    items.append(it)

    it = Item("BR-2", "8.1.4.10 b)-c)", "数据备份恢复 Backup and recovery",
              "异地备份与热冗余（同城双活 + 异地容灾）；演练证明 RPO<15 s、RTO<5 min",
              "Off-site redundancy; a DR drill shows RPO < 15 s and RTO < 5 min")
    drill = _latest_evidence(home, "dr-drill")
    if drill is None:
        it.findings.append("no DR drill result in evidence/dr-drill-*.json")
        it.status = GAP
    else:
        path, data, at = drill
        rpo, rto = data.get("rpo_seconds"), data.get("rto_seconds")
        it.evidence.append(f"{path.name}: finished {_iso(at)}, ok = {data.get('ok')}, "
                           f"RPO = {rpo} s, RTO = {rto} s")
        if data.get("ok") is not True:
            it.findings.append("the latest DR drill failed")
        if not isinstance(rpo, int | float) or rpo >= 15:
            it.findings.append("RPO not measured below 15 s")
        if not isinstance(rto, int | float) or rto >= 300:
            it.findings.append("RTO not measured below 5 min")
        if now - at > 365 * DAY_MS:
            it.findings.append("the latest DR drill is more than a year old")
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
        it.findings.append("no message retention period is set")
    elif last is None:
        it.findings.append("retention has never been run")
    it.status = GAP if it.findings else PASS
    items.append(it)

    summary = Counter(i.status for i in items)
    return {
        "title": "等级保护 2.0 第三级 合规报告 — Tongxin compliance report",
        "standard": "GB/T 22239-2019 (等保 2.0), level 3; 网络安全法",
        "generated_at": now, "generated_at_iso": _iso(now), "version": __version__,
        "data_dir": str(home.resolve()),
        "summary": {PASS: summary[PASS], FAIL: summary[FAIL], GAP: summary[GAP]},
        "two_factor_coverage": coverage,
        "audit_verify": verify.as_dict(),
        "items": [asdict(i) for i in items],
    }


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    rows = []
    for i in report["items"]:
        colour = "green" if i["status"] == PASS else "red"
        ev = "".join(f"<li>{e(x)}</li>" for x in i["evidence"])
        fi = "".join(f"<li>{e(x)}</li>" for x in i["findings"])
        rows.append(
            f'<tr class="{colour}" id="{e(i["id"])}"><td>{e(i["id"])}</td><td>{e(i["clause"])}</td>'
            f'<td><b>{e(i["category"])}</b><br>{e(i["title"])}<br><small>{e(i["requirement"])}</small></td>'
            f'<td class="status">{e(i["status"].upper())}</td>'
            f"<td><ul>{ev}</ul>{'<b>Findings</b><ul>' + fi + '</ul>' if fi else ''}</td></tr>")
    s = report["summary"]
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>{e(report["title"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border: 1px solid #999; padding: .4em; vertical-align: top; text-align: left; }}
tr.green td.status {{ background: #2e7d32; color: #fff; }}
tr.red td.status {{ background: #c62828; color: #fff; }}
</style></head><body>
<h1>{e(report["title"])}</h1>
<p>{e(report["standard"])} — generated {e(report["generated_at_iso"])} from {e(report["data_dir"])}
(Tongxin {e(report["version"])})</p>
<p>pass {s[PASS]} · fail {s[FAIL]} · gap {s[GAP]} (gaps have no evidence and are not passes)</p>
<table><tr><th>item</th><th>clause</th><th>requirement</th><th>status</th><th>evidence</th></tr>
{"".join(rows)}
</table></body></html>
"""


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, h = out / "compliance-report.json", out / "compliance-report.html"
    j.write_text(json.dumps(report, ensure_ascii=False, indent=2, sort_keys=True), encoding="utf-8")
    h.write_text(render_html(report), encoding="utf-8")
    for p in (j, h):
        os.chmod(p, 0o640)
    return j, h

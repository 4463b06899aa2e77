"""The compliance report's words in Simplified Chinese and English.

The report is read by the auditors (审计管理员) in Chinese and generated on the
server in both languages at once: every finding and remedy is a message key
here with a (zh, en) template pair, formatted with the same values. The English
text is the report's historical wording (``findings``, ``remedy``, kept for API
compatibility); the Chinese goes into ``findings_zh`` and ``remedy_zh`` and is
shown first (docs/compliance.md).

A value may itself be a (zh, en) pair (a phrase that differs per language, such
as what a rule asks for, or a role's name); every other value is embedded as it
is in both.
"""

from __future__ import annotations

from typing import Any

Pair = tuple[str, str]

# message key -> (zh, en)
FINDINGS: dict[str, Pair] = {
    # IA-1 / IA-2: a rule that is off, or set weaker than the report asks
    "rule.not_configured": ("未配置：{want}（{key}）", "not configured: {want} ({key})"),
    "rule.too_weak": ("强度不足：{key} = {value}；要求：{want}",
                      "too weak: {key} = {value}; required: {want}"),
    "ia2.lockout_weak": ("强度不足：登录失败不超过 10 次必须锁定账户，且锁定不少于 60 秒",
                         "too weak: the lockout must engage within 10 failures and last at "
                         "least 60 s"),
    "ia2.idle_missing": ("未配置：不超过 {max} 秒的会话空闲超时（accounts.session_idle_timeout）",
                         "not configured: a session idle timeout of at most {max} s "
                         "(accounts.session_idle_timeout)"),
    "ia2.idle_weak": ("强度不足：accounts.session_idle_timeout = {idle:g} 秒；要求：不超过 {max} 秒",
                      "too weak: accounts.session_idle_timeout = {idle:g} s; required: at most "
                      "{max} s"),
    # IA-3
    "ia3.no_tls": ("本节点配置中未启用 TLS，前置代理也没有 evidence/tls.json 证据",
                   "no TLS in this node's configuration and no evidence/tls.json for a front "
                   "proxy"),
    # IA-4
    "ia4.sms_only": ("{role} {user} 仅有短信验证码，短信验证码不属于密码技术（请绑定 TOTP）",
                     "{role} {user} has only an SMS code, which is not a cryptographic "
                     "technique (enrol TOTP)"),
    "ia4.no_factor": ("{role} {user} 未绑定第二鉴别因子",
                      "{role} {user} has no second factor enrolled"),
    "ia4.no_admins": ("不存在管理员账户", "no administrative accounts exist"),
    # AC-1
    "ac1.no_role": ("没有启用状态的{role}账户", "no active {role} account"),
    "ac1.overlap": ("管理员角色之间存在相同的权限", "administrative roles share permissions"),
    # AU-1
    "au1.empty": ("审计日志为空", "the audit log is empty"),
    # AU-2
    "au2.problem": ("审计链校验问题（{kind_zh}）：{where}：{message}", "{where}: {message}"),
    "au2.untrusted_key": ("{where} 中的审计密钥 {fp} 未固定（pin），不受信任",
                          "audit key {fp} in {where} is not pinned, so not trusted"),
    "au2.retention_short": ("审计记录留存 {days:g} 天，低于法定最低要求 {minimum:g} 天",
                            "audit retention {days:g} days is below the legal minimum"),
    "au2.no_signed_head": ("没有已签名的链头：整条审计链被改写将无法发现",
                           "no signed chain head: a rewrite of the whole chain would go "
                           "unnoticed"),
    "au2.head_stale": ("最新的审计记录未被近期签名的链头覆盖",
                       "the newest records are not covered by a recent signed head"),
    "au2.key_readable": ("审计签名密钥可被服务账户以外的用户读取",
                         "the audit signing key is readable by others than the service"),
    # CM-1
    "cm1.no_tls": ("没有客户端连接使用 TLS 或 TLCP 的证据",
                   "no evidence of TLS or TLCP on the client connections"),
    "cm1.no_gm": ("本进程中国密算法套件（SM2/SM3/SM4）不可用",
                  "the GM (SM2/SM3/SM4) suite is not available in this process"),
    # DI-1
    "di1.not_synchronous": ("sqlite_synchronous 不是 full：已确认的消息可能丢失",
                            "sqlite_synchronous is not full: acknowledged messages may be lost"),
    "di1.chain_broken": ("审计链校验未通过", "the audit chain does not verify"),
    # DC-1
    "dc1.encryption_off": ("storage.encryption 已关闭：消息内容和文件以明文存储",
                           "storage.encryption is off: message contents and file blobs are "
                           "stored unencrypted"),
    "dc1.no_master_key": ("没有主密钥文件：尚未加密任何数据（启动节点或运行 `tongxin keys init`）",
                          "no master key file: nothing has been sealed yet (start the node or "
                          "run `tongxin keys init`)"),
    "dc1.master_key_readable": ("主密钥文件可被服务账户以外的用户读取（权限 {mode}）",
                                "the master key file is readable by others than the service "
                                "(mode {mode})"),
    "dc1.keys_not_read": ("未读取数据密钥：没有数据已加密的证据",
                          "the data keys were not read: no evidence that data is sealed"),
    "dc1.no_data_key": ("存储中没有数据密钥：尚未加密任何数据",
                        "no data key in the store: nothing has been sealed yet"),
    "dc1.secret_readable": ("secrets/{name} 可被服务账户以外的用户读取（权限 {mode}）",
                            "secrets/{name} is readable by others than the service (mode {mode})"),
    "dc1.secret_plain": ("secrets/{name} 尚未加密（节点下次启动时加密）",
                         "secrets/{name} is not sealed yet (sealed when the node next starts)"),
    # DC-2
    "dc2.not_required": ("e2ee.required 已关闭：客户端可以发送明文消息内容",
                         "e2ee.required is off: clients may send plaintext message contents"),
    "dc2.no_escrow": ("未配置合规托管密钥（e2ee.escrow_public_key_file）：依法导出时无法提供加密消息",
                      "no compliance escrow (e2ee.escrow_public_key_file): encrypted messages "
                      "cannot be produced for a lawful export"),
    "dc2.no_statement": ("未配置 e2ee.escrow_statement_file：固定了组织根密钥的客户端拒绝加密"
                         "（tongxin keys escrow-sign）",
                         "no e2ee.escrow_statement_file: clients that pin the organisation root "
                         "refuse to encrypt (tongxin keys escrow-sign)"),
    "dc2.plain_private_key": ("托管私钥是节点上的普通文件（{file}）：节点的 root 用户可读取每条托管"
                              "消息；请拆分该密钥（tongxin keys escrow-split）并删除 "
                              "e2ee.escrow_private_key_file",
                              "the escrow private key is a plain file on the node ({file}): root "
                              "on the node reads every escrowed message; split it (tongxin keys "
                              "escrow-split) and remove e2ee.escrow_private_key_file"),
    # BR-1
    "br1.no_backup": ("没有备份结果（evidence/backup-*.json）",
                      "no backup result in evidence/backup-*.json"),
    "br1.backup_failed": ("最近一次备份失败", "the latest backup failed"),
    "br1.backup_old": ("最近一次备份已超过 7 天", "the latest backup is older than 7 days"),
    "br1.no_restore": ("未测试过备份恢复（evidence/restore-*.json）",
                       "no restore of a backup tested (evidence/restore-*.json)"),
    "br1.restore_failed": ("最近一次恢复测试失败", "the latest restore test failed"),
    "br1.restore_old": ("最近一次恢复测试已超过一年", "the latest restore test is older than a year"),
    # BR-2
    "br2.no_drill": ("没有容灾演练结果（evidence/dr-drill-*.json）",
                     "no DR drill result in evidence/dr-drill-*.json"),
    "br2.drill_failed": ("最近一次容灾演练失败", "the latest DR drill failed"),
    "br2.rpo": ("未测得低于 15 秒的 RPO", "RPO not measured below 15 s"),
    "br2.rto": ("未测得低于 5 分钟的 RTO", "RTO not measured below 5 min"),
    "br2.drill_old": ("最近一次容灾演练已超过一年", "the latest DR drill is more than a year old"),
    # RI-1
    "ri1.no_period": ("未设置消息保存期限", "no message retention period is set"),
    "ri1.never_run": ("从未执行过保存期限清理（tongxin retention run）",
                      "retention has never been run"),
}

# What IA-1's rules ask for (the ``want`` of rule.not_configured / rule.too_weak).
WANTS: dict[str, Pair] = {
    "min_length": ("口令长度至少 {n} 个字符", "at least {n} characters"),
    "min_classes": ("至少包含 4 类字符中的 {n} 类（复杂度）",
                    "at least {n} of 4 character classes (complexity)"),
    "history": ("不得重复使用最近 {n} 个及以上的口令",
                "the last {n} or more passwords may not be reused"),
    "max_age": ("口令最长 {n} 天后过期（定期更换）",
                "passwords expire after at most {n} days (periodic change)"),
    "scrypt_n": ("scrypt 参数 N 至少为 {n}（默认值）", "scrypt N of at least {n} (the default)"),
}

# The audit verifier's problem kinds (compliance/verify.py), for AU-2's findings.
PROBLEM_KINDS: dict[str, str] = {
    "reordered": "顺序错乱", "missing": "缺失", "unreadable": "无法读取", "edited": "被修改",
    "broken-link": "链接断开", "bad-key": "密钥无效", "no-trusted-key": "没有受信任的密钥",
    "untrusted-key": "密钥不受信任", "bad-signature": "签名无效", "unsigned": "未签名",
    "segment-altered": "归档分段被改动", "truncated": "被截断", "diverged": "分叉",
    "no-anchor": "没有锚定", "unanchored": "未锚定",
}

# How an item that is not a pass is closed (docs/compliance.md, docs/operations.md).
REMEDIES: dict[str, Pair] = {
    "IA-1": ("设置 accounts.password_min_length（>= {min_length}）、password_min_classes"
             "（>= {min_classes}）、password_history（>= {min_history}）和 "
             "password_max_age_days（1-{max_age}）：由安全管理员在控制台“密码与锁定策略”页修改"
             "（数秒内在所有节点生效），或在配置中设置后重启节点。",
             "Set accounts.password_min_length (>= {min_length}), password_min_classes "
             "(>= {min_classes}), password_history (>= {min_history}) and "
             "password_max_age_days (1-{max_age}): the security administrator changes them "
             "on the console's password and lockout policy page (in force on every node "
             "within seconds), or set them in the configuration and restart the node."),
    "IA-2": ("设置 accounts.session_idle_timeout（1-{max_idle} 秒）；保持 "
             "accounts.lockout_threshold <= 10、lockout_duration >= 60 秒"
             "（控制台“密码与锁定策略”页或配置）。",
             "Set accounts.session_idle_timeout (1-{max_idle} s); keep "
             "accounts.lockout_threshold <= 10 and lockout_duration >= 60 s (the console's "
             "password and lockout policy page, or the configuration)."),
    "IA-3": ("在节点前端终结 TLS（或 TLCP），并记录在 evidence/tls.json 中（docs/compliance.md）。",
             "Terminate TLS (or TLCP) in front of the node and record it in evidence/tls.json "
             "(docs/compliance.md)."),
    "IA-4": ("为每个管理员绑定 TOTP：在节点上运行 `tongxin admin totp-reset NAME`，或由安全管理员"
             "调用 POST /api/v1/admin/users/NAME/totp。",
             "Enrol TOTP for every administrator: `tongxin admin totp-reset NAME` on the node, or "
             "the security administrator's POST /api/v1/admin/users/NAME/totp."),
    "AC-1": ("在节点上创建缺少的角色账户：`tongxin admin create --role ROLE NAME`。",
             "Create the missing role on the node: `tongxin admin create --role ROLE NAME`."),
    "AU-1": ("节点自首次启动起即写入审计记录；请确认节点使用的是本数据目录。",
             "The node writes audit records from its first start; check that it runs against "
             "this data directory."),
    "AU-2": ("对每个问题运行 `tongxin audit verify`；将每个节点的审计密钥固定在 "
             "compliance.audit_trusted_keys 中（appliance 角色：appliance_audit_trusted_keys）；"
             "签名链头（`tongxin audit sign`）并将其锚定保存在节点之外（compliance.audit_anchor_dir"
             "，或 s3 归档）；secrets/audit_sign.key 权限保持 0600，审计留存不少于 180 天。",
             "Run `tongxin audit verify` for every problem; pin every node's audit key in "
             "compliance.audit_trusted_keys (role appliance: appliance_audit_trusted_keys); sign "
             "the chain head (`tongxin audit sign`) and keep its anchor off the node "
             "(compliance.audit_anchor_dir, or an s3 archive); keep secrets/audit_sign.key at "
             "mode 0600 and the audit retention at 180 days or more."),
    "AU-3": ("只有审计管理员角色可以拥有 audit.read 权限（compliance/roles.py）。",
             "Only the auditor role may hold audit.read (compliance/roles.py)."),
    "CM-1": ("在节点前端终结 TLS 1.3 或 TLCP，并记录在 evidence/tls.json 中。",
             "Terminate TLS 1.3 or TLCP in front of the node and record it in evidence/tls.json."),
    "DI-1": ("设置 storage.sqlite_synchronous: full；对审计链运行 `tongxin audit verify`。",
             "Set storage.sqlite_synchronous: full; run `tongxin audit verify` for the chain."),
    "DC-1": ("设置 storage.encryption: true（默认值）并重启节点：节点生成主密钥（或使用 "
             "keys.kms_command）并加密消息、文件和 secrets/*；主密钥文件和 secrets/* 权限保持 "
             "0600；用 `tongxin keys rotate` 轮换密钥。",
             "Set storage.encryption: true (the default) and restart the node: it makes the "
             "master key (or use keys.kms_command) and seals messages, files and secrets/*; keep "
             "the master key file and secrets/* at mode 0600; rotate with `tongxin keys rotate`."),
    "DC-2": ("设置 e2ee.required: true 和合规托管密钥（e2ee.escrow_public_key_file，以及 "
             "e2ee.escrow_statement_file，私钥加密拆分保存在 e2ee.escrow_sealed_key_file，见 "
             "docs/security.md），然后重启节点。",
             "Set e2ee.required: true and a compliance escrow key (e2ee.escrow_public_key_file, "
             "with e2ee.escrow_statement_file and the key sealed in e2ee.escrow_sealed_key_file, "
             "docs/security.md), then restart the node."),
    "BR-1": ("定期运行 `tongxin backup create`（playbooks/backup.yml），并至少每年测试一次恢复"
             "（playbooks/restore.yml）：它们写入 evidence/backup-*.json 和 restore-*.json。",
             "Schedule `tongxin backup create` (playbooks/backup.yml) and test a restore at "
             "least once a year (playbooks/restore.yml): they write evidence/backup-*.json and "
             "restore-*.json."),
    "BR-2": ("进行容灾演练：演练写入 evidence/dr-drill-*.json（finished_at、ok、rpo_seconds、"
             "rto_seconds）。",
             "Run a DR drill: it writes evidence/dr-drill-*.json (finished_at, ok, rpo_seconds, "
             "rto_seconds)."),
    "RI-1": ("设置消息保存期限（PUT /api/v1/admin/retention，或 "
             "compliance.message_retention_days），并运行 `tongxin retention run`。",
             "Set a message retention period (PUT /api/v1/admin/retention, or "
             "compliance.message_retention_days) and run `tongxin retention run`."),
}

# Status code -> (zh word, en word, zh meaning, en meaning)
STATUS: dict[str, tuple[str, str, str, str]] = {
    "pass": ("通过", "PASS", "有证据，且满足要求", "evidence found, and it meets the requirement"),
    "fail": ("不符合", "FAIL", "有证据，但与要求不符", "evidence found, and it contradicts the requirement"),
    "gap": ("差距", "GAP", "没有满足要求的证据：不算通过",
            "no evidence that the requirement is met: not a pass"),
}


def _pick(values: dict[str, Any], lang: int) -> dict[str, Any]:
    return {k: v[lang] if isinstance(v, tuple) else v for k, v in values.items()}


def fill(pair: Pair, /, **values: Any) -> Pair:
    """Both templates of ``pair`` formatted with the same values."""
    return pair[0].format(**_pick(values, 0)), pair[1].format(**_pick(values, 1))


def finding(msg: str, /, **values: Any) -> Pair:
    """The (zh, en) text of finding ``msg`` with ``values`` in both."""
    return fill(FINDINGS[msg], **values)


def want(key: str, n: Any) -> Pair:
    return fill(WANTS[key], n=n)


def summary_line(counts: dict[str, int]) -> str:
    """``通过 5，不符合 3，差距 8（pass 5, fail 3, gap 8）`` (the English part is stable)."""
    p, f, g = counts.get("pass", 0), counts.get("fail", 0), counts.get("gap", 0)
    return f"通过 {p}，不符合 {f}，差距 {g}（pass {p}, fail {f}, gap {g}）"

"""Separation of duties (三员分立): the administrative roles and what each may do.

Three administrative roles split the work that one "root" account would
otherwise hold, so that no single person can both act and hide the act:

* ``sysadmin`` (系统管理员) administers ordinary user accounts, the
  organisation units they belong to, and sees groups (names and members only);
* ``secadmin`` (安全管理员) sets security policy: roles, second factors, keys,
  the password and lockout policy, retention and legal holds, and sees and ends
  the accounts' live sessions (force logout);
* ``auditor`` (审计管理员) reads the audit log, verifies it, reports and exports,
  and sees (never changes) what is kept how long and what is held: retention
  and legal holds are the secadmin's to set, the auditor's to check.

Ordinary users (``user``) hold none of these permissions. An account holds
exactly one role (the ``users.role`` column), so no one holds two. The admin
API checks every request against :data:`PERMISSIONS`; anything else is refused
with 403 and audited.
"""

from __future__ import annotations

USER = "user"
SYSADMIN = "sysadmin"
SECADMIN = "secadmin"
AUDITOR = "auditor"

ADMIN_ROLES: tuple[str, ...] = (SYSADMIN, SECADMIN, AUDITOR)
ALL_ROLES: tuple[str, ...] = (USER, *ADMIN_ROLES)

PERMISSIONS: dict[str, frozenset[str]] = {
    SYSADMIN: frozenset({
        "user.list", "user.create", "user.disable", "user.enable", "user.unlock",
        "user.revoke_tokens", "user.reset_password", "user.delete",
        # the node's own counters (connections, messages) for the console's chart
        "node.status",
        # organisation units (组织机构): read the tree; create, rename, move, delete
        # units and put users in them (tongxin.org.units)
        "org.list", "org.manage",
        # group conversations and their members, never their messages: the
        # sysadmin administers, the auditor alone reads content (export, escrow)
        "group.list",
        # the node's effective configuration, every secret redacted (tongxin.config_view)
        "config.read",
    }),
    SECADMIN: frozenset({
        # sms.confirm: the code sent at enrolment (sms.enroll, stepped up) comes back
        "role.list", "role.assign", "totp.reset", "sms.enroll", "sms.confirm", "key.rotate",
        # the keys' state: the audit signing key's fingerprint, the at-rest master key's
        # status and a rotation's progress (never key material)
        "key.read",
        # the password and lockout policy in force, against 等保's thresholds, and changing it
        "policy.read", "policy.set",
        # end every session of another administrator (a lost laptop, a leaver)
        "admin.sign_out",
        # the live sessions (devices) of any account, and forcing one or all of a user's
        # out at once (tongxin.server.sessions_api; not "session.*", which is one's own)
        "user_session.list", "user_session.revoke",
        "retention.read", "retention.set", "hold.list", "hold.set", "hold.release",
        # the second person of an escrow decryption (the auditor asks: escrow.request),
        # and the list of what waits for approval (who asked, for what, why; no share)
        "escrow.approve", "escrow.list",
    }),
    AUDITOR: frozenset({
        "audit.read", "audit.verify", "audit.sign", "report.read", "export.messages",
        # the files of an export already made (and stepped up): audited, not stepped up again
        "export.download",
        "escrow.decrypt", "escrow.request",
        # retention and legal holds, read only, through a route of its own (GET
        # /audit/retention): the secadmin sets them, and no two roles share an operation
        "retention.inspect",
    }),
    USER: frozenset(),
}

# Operations every administrative role may do on its own session.
SESSION_OPERATIONS: frozenset[str] = frozenset({"session.read", "session.logout", "session.sms"})

# Operations that need a fresh second factor (step-up) on top of the login.
SENSITIVE: frozenset[str] = frozenset({
    "user.delete", "key.rotate", "retention.set", "export.messages", "hold.release",
    "admin.sign_out", "user_session.revoke", "policy.set",
    "role.assign", "sms.enroll", "escrow.decrypt", "escrow.request", "escrow.approve",
})

ROLE_TITLES: dict[str, str] = {
    SYSADMIN: "系统管理员 system administrator",
    SECADMIN: "安全管理员 security administrator",
    AUDITOR: "审计管理员 auditor",
    USER: "普通用户 ordinary user",
}


def is_admin(role: str) -> bool:
    return role in ADMIN_ROLES


def allowed(role: str, operation: str) -> bool:
    if operation in SESSION_OPERATIONS:
        return is_admin(role)
    return operation in PERMISSIONS.get(role, frozenset())


def owner_of(operation: str) -> str | None:
    """The role that may perform ``operation`` (None if no role may)."""
    for role, ops in PERMISSIONS.items():
        if operation in ops:
            return role
    return None

"""Sensitive CLI commands need an administrator: password, current TOTP code, the role.

Issue #6: export, escrow decryption, user deletion, key rotation and retention changes
need a second factor, and 三员分立 decides who may do each. Running on the node as the
service's OS user is not enough (whoever has a shell there would be every role at once),
so these commands take ``--admin USERNAME``; the password and the current TOTP code are
prompted, or read from ``TONGXIN_ADMIN_PASSWORD`` / ``TONGXIN_ADMIN_TOTP`` for
automation. The account must hold the role the admin API requires for the same operation
(:data:`tongxin.compliance.roles.PERMISSIONS`). Every refusal is audited with its reason
under the operation's event; the operation's own record names the administrator as actor.

``--break-glass REASON`` exists only where an operation must be possible before any
administrator is enrolled (``tongxin keys init`` on a first install): it is refused as
soon as an active account of the owning role has a TOTP, and it is audited with the
reason and the OS user (docs/compliance.md, "Sensitive commands on the node").
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from dataclasses import dataclass
from typing import Any

from tongxin.compliance import roles
from tongxin.config import Config

ENV_PASSWORD = "TONGXIN_ADMIN_PASSWORD"
ENV_TOTP = "TONGXIN_ADMIN_TOTP"
# A failed code counts towards the lockout like a wrong password (as at the admin API).
_COUNTED = frozenset({"wrong", "replayed"})


class Refused(Exception):
    """The command may not run; already audited. ``str()`` is the reason shown."""


@dataclass(frozen=True, slots=True)
class AdminActor:
    """Who authorised a sensitive command: the audit record's actor."""

    user_id: str
    username: str
    role: str
    os_user: str
    break_glass: str = ""

    def audit_fields(self) -> dict[str, Any]:
        """actor/actor_role and details for Compliance.audit(...)."""
        fields: dict[str, Any] = {"actor": self.user_id or self.os_user,
                                  "actor_role": self.role, "via": "cli", "os_user": self.os_user}
        if self.username:
            fields["admin"] = self.username
        if self.break_glass:
            fields["break_glass"] = self.break_glass
        return fields


def add_arguments(p: argparse.ArgumentParser, operation: str, break_glass: bool = False) -> None:
    owner = roles.owner_of(operation) or "administrator"
    p.add_argument("--admin", metavar="USERNAME", default="",
                   help=f"the {owner} authorising this (password and current TOTP code are "
                   f"prompted, or read from ${ENV_PASSWORD} and ${ENV_TOTP})")
    if break_glass:
        p.add_argument("--break-glass", metavar="REASON", default=None,
                       help=f"only while no {owner} with a TOTP exists yet (first install): "
                       "run without an administrator; audited with the reason")


def _os_user() -> str:
    from tongxin.cli.compliance import _cli_actor

    return _cli_actor()


def _secret(env: str, prompt: str) -> str:
    value = os.environ.get(env)
    if value is not None:
        return value
    return getpass.getpass(prompt)


async def authorize(cfg: Config, comp: Any, args: argparse.Namespace, operation: str,
                    event: str, target: str = "", *, break_glass_ok: bool = False) -> AdminActor:
    """The administrator who may run ``operation`` now, or :class:`Refused` (audited as
    ``event`` with outcome denied/failed and the reason). ``break_glass_ok``: the command
    may run without one while no account of the owning role has a TOTP."""
    from tongxin.auth.accounts import Accounts
    from tongxin.auth.tokens import KEY_BYTES, TokenSigner
    from tongxin.compliance.totp import TotpResult
    from tongxin.errors import RequestError
    from tongxin.server.node import make_store

    os_user = _os_user()
    owner = roles.owner_of(operation) or "administrator"
    admin = (getattr(args, "admin", "") or "").strip()
    glass = getattr(args, "break_glass", None)

    async def refuse(reason: str, *, outcome: str = "denied", actor: str = "",
                     actor_role: str = "") -> Refused:
        await comp.audit(event, actor=actor or os_user, actor_role=actor_role, target=target,
                         outcome=outcome, via="cli", os_user=os_user, operation=operation,
                         reason=reason, **({"admin": admin} if admin else {}))
        return Refused(reason)

    store = make_store(cfg)
    store.atrest_config = None  # type: ignore[attr-defined]  # users only: no keyring needed
    await store.open()
    try:
        if glass is not None:
            if not break_glass_ok:
                raise await refuse(f"--break-glass is not accepted for {event}: it needs an "
                                   "administrator (--admin)")
            if admin:
                raise await refuse("give --admin or --break-glass, not both")
            if not glass.strip():
                raise await refuse("--break-glass needs a reason")
            totp_ids = set(await comp.store.totp_user_ids())
            holders = [u.username for u in await store.list_users()
                       if u.role == owner and not u.disabled and u.id in totp_ids]
            if holders:
                raise await refuse(f"break-glass refused: {owner} {', '.join(sorted(holders))} "
                                   f"can authorise this (--admin)")
            await comp.audit("cli.break_glass", actor=os_user, target=target, via="cli",
                             operation=operation, reason=glass.strip())
            return AdminActor("", "", "", os_user, break_glass=glass.strip())
        if not admin:
            raise await refuse(f"{operation} needs --admin USERNAME: an account with the "
                               f"{owner} role and a TOTP (三员分立, second factor)")
        password = await asyncio.to_thread(_secret, ENV_PASSWORD, f"password of {admin}: ")
        # Accounts is used to check the password (lockout, failure counting, audit
        # records of refusals); it never issues a token here, so no token key is read.
        # The lockout in force on the nodes (the security administrator's changes included).
        acc = Accounts(store, TokenSigner(os.urandom(KEY_BYTES)),
                       await comp.account_policy(cfg.accounts))
        acc.audit = comp.hook
        try:
            user = await acc.authenticate(admin, password, clear_failures=False, event=event)
        except RequestError as err:
            raise Refused(err.message) from None  # audited by authenticate (as ``event``)
        who = {"actor": user.id, "actor_role": user.role}
        if not roles.allowed(user.role, operation):
            raise await refuse(f"role {user.role} may not {operation} (三员分立: the {owner} "
                               "does)", **who)
        if await acc.password_expired(user):
            raise await refuse("the administrator's password has expired", **who)
        if not await comp.totp.enrolled(user.id):
            raise await refuse("no TOTP enrolled for this administrator", **who)
        code = await asyncio.to_thread(_secret, ENV_TOTP, "TOTP code: ")
        result = await comp.totp.verify(user.id, code)
        if result is not TotpResult.OK:
            if result.value in _COUNTED:
                await acc.record_failure(user)
            raise await refuse(f"TOTP {result.value}", outcome="failed", **who)
        if user.failed_logins:
            await store.update_login_state(user.id, 0, 0, 0)
        await comp.audit("auth.step_up", actor=user.id, actor_role=user.role, target=operation,
                         via="cli", os_user=os_user, factor="TOTP")
        return AdminActor(user.id, user.username, user.role, os_user)
    finally:
        await store.close()


def refused(exc: Refused) -> int:
    print(f"tongxin: refused: {exc}", file=sys.stderr)
    return 1

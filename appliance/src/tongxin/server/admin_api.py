"""The admin HTTP API under /api/v1/admin: separation of duties (三员分立),
second factor, the audit trail, retention and holds, exports and the report.

Every request but the login carries ``Authorization: Bearer <token>`` where
the token came from ``POST /api/v1/admin/login`` (password + TOTP). Each route
names one operation; the caller's role must hold it (tongxin.compliance.roles).
Refusals answer 401/403 and are audited like everything that succeeds.
Sensitive operations also need a fresh second factor: a TOTP code verified
within ``compliance.step_up_window`` seconds on this session, or one sent now
in the ``X-Tongxin-TOTP`` header (or, with ``compliance.sms_provider``, an SMS
code in ``X-Tongxin-SMS``). ``POST /api/v1/admin/password`` (old password and
a second factor) changes an administrator's own password, also an expired one.

The compliance state (compliance.db, the audit key, the signer task) is opened
by this module's startup hook, after the node itself has started, and closed
by its cleanup hook, after the node has stopped; ``Node.app()`` only calls
:func:`add_routes`, after registering its own hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from tongxin import __version__
from tongxin.clock import now_ms
from tongxin.compliance import account_policy, roles
from tongxin.compliance.audit_search import AuditFilter, FilterInvalid
from tongxin.compliance.export import export_messages
from tongxin.compliance.ports import AdminSession, AuditRecord
from tongxin.compliance.report import build_report
from tongxin.compliance.retention import DEFAULT_SCOPE, conversation_scope, effective_policies
from tongxin.compliance.service import Compliance, PolicyInvalid, RetentionBelowMinimum
from tongxin.compliance.sms import SmsError, SmsRateLimited, SmsResult, SmsUnavailable
from tongxin.crypto import sm2_available
from tongxin.crypto.errors import CryptoError
from tongxin.e2ee.errors import E2EEError
from tongxin.e2ee.escrow import open_envelope as escrow_open
from tongxin.errors import RequestError
from tongxin.keydir.service import read_key_file
from tongxin.org.units import MAX_DEPTH, MAX_NAME, OrgRefused, new_unit_id, unit_paths
from tongxin.proto import tongxin_pb2 as pb
from tongxin.server import sessions_api
from tongxin.server.audit_download import AuditDownload
from tongxin.server.escrow_api import EscrowAccess, payload_json
from tongxin.server.http_util import json_body
from tongxin.store.ports import ConversationRow, NodeBeat, StoreError, User

if TYPE_CHECKING:
    from tongxin.atrest.keyring import DekStore
    from tongxin.server.node import Node

# The files of an export (compliance/export.py) and how they are served.
_EXPORT_ID = re.compile(r"exp_[0-9]{1,16}_[0-9a-f]{8}")
_EXPORT_FILES = {"messages.jsonl": "application/x-ndjson", "manifest.json": "application/json",
                 "manifest.sig": "application/json"}

log = logging.getLogger("tongxin.admin")

PREFIX = "/api/v1/admin"
STEP_UP_HEADER = "X-Tongxin-TOTP"
SMS_HEADER = "X-Tongxin-SMS"
AUDIT_SCAN = 50_000
POLICY_REFRESH_SECONDS = 5.0
"""How often a node re-reads the stored password and lockout policy (a change made
through another node or the CLI is in force here within this time)."""
"""Records one filtered audit read scans at most (the console pages on with next_after)."""
# Second-factor results that count towards the lockout like a wrong password
# (guesses); "not enrolled", "no code sent" and "sms disabled" do not.
_COUNTED = frozenset({"wrong", "replayed", "expired"})
_STATUS = {pb.ACCOUNT_LOCKED: 423, pb.FORBIDDEN: 403, pb.INVALID_ARGUMENT: 400, pb.CONFLICT: 409,
           pb.UNAVAILABLE: 503}


@dataclass(frozen=True, slots=True)
class Ctx:
    user: User
    role: str
    session: AdminSession
    source: str


AdminHandler = Callable[[web.Request, Ctx], Awaitable[web.StreamResponse]]


def _err(status: int, error: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, "message": message, **extra}, status=status)


def _user_json(u: User, totp: bool, sms: bool = False, unit_id: str = "") -> dict[str, Any]:
    state = "disabled" if u.disabled else "locked" if u.locked_until > now_ms() else "active"
    return {"id": u.id, "username": u.username, "display_name": u.display_name, "role": u.role,
            "state": state, "totp": totp, "sms": sms, "created_at": u.created_at,
            "unit_id": unit_id}


_GROUP_ROLES = {pb.OWNER: "owner", pb.ADMIN: "admin", pb.MEMBER: "member"}
GROUP_PAGE = 50
"""Groups one page of GET /groups lists by default (at most 200)."""
GROUP_MEMBERS_MAX = 10_000
"""Members GET /groups/{id}/members lists at most (chat.max_group_members' default)."""
NODE_STALE_BEATS = 3
"""GET /nodes: a node whose last beat is this many heartbeat intervals old is stale."""
NODE_ROWS_KEPT_MS = 86_400_000
"""GET /nodes: a node whose last beat is older than a day is no longer listed."""


def _str_field(body: dict[str, Any], key: str) -> str | None:
    """A string field of a JSON body: None when absent, INVALID_ARGUMENT when not a string."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(pb.INVALID_ARGUMENT, f"{key} is a string")
    return value


class AdminApi:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._compliance: Compliance | None = None
        self._policy_task: asyncio.Task[None] | None = None
        # The at-rest key rotation this node runs or ran last (POST /keys/atrest/rotate).
        self._rotation: AtRestRotation | None = None
        self._rotation_task: asyncio.Task[None] | None = None

    @property
    def c(self) -> Compliance:
        if self._compliance is None:
            raise web.HTTPServiceUnavailable(text="compliance is not open yet")
        return self._compliance

    # ---- lifecycle: on_startup after Node.start, on_cleanup after Node.stop ------

    async def on_startup(self, app: web.Application) -> None:
        node = self.node
        comp = Compliance(node.cfg, node.node_id)
        await comp.open(node.keyring, load_keyring=False)
        self._compliance = comp
        node.accounts.audit = comp.hook
        node.chat.audit = comp.hook
        if node.keyring is not None:
            node.keyring.audit = comp.hook  # withheld and unsealed message rows
        await comp.record_config()
        await comp.audit("node.start", actor="system", version=__version__)
        if sm2_available():
            try:
                await comp.sign_head()
            except (CryptoError, OSError) as exc:
                log.error("cannot sign the audit chain head: %s", exc)
        else:
            log.error("SM2 is unavailable: audit heads and archives cannot be signed")
        comp.start_background()
        # The password and lockout policy: the file's, with the secadmin's stored changes.
        await self._follow_policy_once(comp)
        self._policy_task = asyncio.get_running_loop().create_task(self._follow_policy(comp))

    async def _follow_policy_once(self, comp: Compliance) -> None:
        """Put the stored policy in force on this node if it changed (another node's
        admin API or `tongxin admin policy set` wrote it). A store that cannot be read
        leaves the policy as it was."""
        accounts = self.node.accounts
        try:
            policy = await comp.account_policy(self.node.cfg.accounts)
        except Exception as exc:
            log.warning("cannot read the password and lockout policy: %s", exc)
            return
        if policy != accounts.cfg:
            changed = {k: getattr(policy, k) for k in account_policy.EDITABLE
                       if getattr(policy, k) != getattr(accounts.cfg, k)}
            log.info("password and lockout policy now in force: %s", changed)
            accounts.cfg = policy

    async def _follow_policy(self, comp: Compliance) -> None:
        while True:
            await asyncio.sleep(POLICY_REFRESH_SECONDS)
            await self._follow_policy_once(comp)

    async def on_cleanup(self, app: web.Application) -> None:
        if self._policy_task is not None:
            self._policy_task.cancel()
            self._policy_task = None
        if self._rotation_task is not None and not self._rotation_task.done():
            # Stopped between batches: the next rotation finishes it (tongxin.atrest.rotate).
            self._rotation_task.cancel()
            await asyncio.gather(self._rotation_task, return_exceptions=True)
        comp = self._compliance
        if comp is None:
            return
        self._compliance = None
        try:
            await comp.audit("node.stop", actor="system")
            if sm2_available():
                try:
                    await comp.sign_head(force=True)
                except (CryptoError, OSError) as exc:
                    log.error("cannot sign the audit chain head: %s", exc)
        except StoreError as exc:
            # A shared compliance store may be down at shutdown: stop anyway.
            log.error("node.stop could not be audited: %s", exc)
        finally:
            await comp.close()

    # ---- authentication, authorisation, step-up ------------------------------

    def guard(self, operation: str, handler: AdminHandler) -> Callable[[web.Request],
                                                                       Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            comp = self.c
            source = request.remote or ""
            where = {"method": request.method, "path": request.path, "operation": operation}
            auth = request.headers.get("Authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not token:
                await comp.audit("admin.unauthenticated", outcome="denied", source=source,
                                 reason="no bearer token", **where)
                return _err(401, "NOT_AUTHENTICATED", "send Authorization: Bearer <admin token>")
            try:
                session = await self.node.accounts.resume(token, "")
            except RequestError as err:
                await comp.audit("admin.unauthenticated", outcome="denied", source=source,
                                 reason=err.message, **where)
                return _err(401, pb.ErrorCode.Name(err.code), err.message)
            user = session.user
            admin = await comp.store.get_admin_session(session.claims.token_id)
            if not roles.is_admin(user.role):
                await comp.audit("admin.forbidden", actor=user.id, actor_role=user.role,
                                 target=operation, outcome="denied", source=source,
                                 reason="not an administrative account", **where)
                return _err(403, "FORBIDDEN", f"{operation} needs an administrative role",
                            operation=operation, required_role=roles.owner_of(operation))
            if admin is None or admin.role != user.role:
                await comp.audit("admin.unauthenticated", actor=user.id, actor_role=user.role,
                                 outcome="denied", source=source,
                                 reason="token not issued by the admin login for this role", **where)
                return _err(401, "TOKEN_INVALID",
                            "sign in at /api/v1/admin/login (again, if your role changed)")
            if not roles.allowed(user.role, operation):
                owner = roles.owner_of(operation)
                await comp.audit("admin.forbidden", actor=user.id, actor_role=user.role,
                                 target=operation, outcome="denied", source=source,
                                 reason=f"{operation} belongs to {owner}", **where)
                return _err(403, "FORBIDDEN", f"{user.role} may not {operation} "
                            f"(separation of duties: it belongs to {owner})",
                            operation=operation, required_role=owner)
            if operation in roles.SENSITIVE:
                refused = await self._step_up(request, user, admin, operation, source, where)
                if refused is not None:
                    return refused
            try:
                return await handler(request, Ctx(user, user.role, admin, source))
            except RequestError as err:
                return _err(_STATUS.get(err.code, 400), pb.ErrorCode.Name(err.code), err.message)

        return wrapped

    async def _step_up(self, request: web.Request, user: User, admin: AdminSession,
                       operation: str, source: str, where: dict[str, str]) -> web.Response | None:
        comp = self.c
        code = request.headers.get(STEP_UP_HEADER, "").strip()
        sms_code = request.headers.get(SMS_HEADER, "").strip()
        now = now_ms()
        if code or sms_code:
            factor, result = await self._second_factor(user, code, sms_code)
            if result == "ok":
                await comp.store.set_factor_at(admin.token_id, now)
                await comp.audit("auth.step_up", actor=user.id, actor_role=user.role,
                                 target=operation, source=source, factor=factor)
                return None
            if result in _COUNTED:
                fresh = await self.node.store.get_user(user.id)
                if fresh is not None:
                    await self.node.accounts.record_failure(fresh)
            await comp.audit("auth.step_up", actor=user.id, actor_role=user.role, target=operation,
                             outcome="failed", source=source, reason=result, factor=factor, **where)
            return _err(403, "STEP_UP_FAILED", f"second factor refused ({result})",
                        operation=operation)
        window = comp.cfg.compliance.step_up_window * 1000
        if window > 0 and now - admin.factor_at < window:
            return None
        await comp.audit("auth.step_up", actor=user.id, actor_role=user.role, target=operation,
                         outcome="denied", source=source, reason="no fresh second factor", **where)
        sms_hint = (f", or an SMS code (POST {PREFIX}/sms sends one) in the {SMS_HEADER} header"
                    if comp.sms.enabled else "")
        return _err(403, "STEP_UP_REQUIRED", f"{operation} needs a fresh second factor: send a "
                    f"current TOTP code in the {STEP_UP_HEADER} header{sms_hint}",
                    operation=operation)

    async def _second_factor(self, user: User, totp: str, sms: str) -> tuple[str, str]:
        """Verify a TOTP code, or an SMS code when only that is given:
        (factor, "ok" or why not). Lockout counting is the caller's."""
        comp = self.c
        if sms and not totp:
            return "SMS", (await comp.sms.verify(user.id, sms)).value
        return "TOTP", (await comp.totp.verify(user.id, totp)).value

    async def _has_factor(self, user_id: str) -> bool:
        comp = self.c
        return await comp.totp.enrolled(user_id) or (
            comp.sms.enabled and await comp.sms.enrolled(user_id))

    # ---- login ----------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        comp = self.c
        accounts = self.node.accounts
        body = await json_body(request)
        source = request.remote or ""
        username = str(body.get("username", ""))
        try:
            user = await accounts.authenticate(username, str(body.get("password", "")),
                                               clear_failures=False)
        except RequestError as err:
            return _err(_STATUS.get(err.code, 401), pb.ErrorCode.Name(err.code), err.message,
                        retry_after_ms=err.retry_after_ms)
        if not roles.is_admin(user.role):
            await comp.audit("admin.login", actor=user.id, actor_role=user.role, target=user.username,
                             outcome="denied", source=source, reason="not an administrative account")
            return _err(403, "FORBIDDEN", "not an administrative account")
        if not await self._has_factor(user.id):
            await comp.audit("admin.login", actor=user.id, actor_role=user.role, target=user.username,
                             outcome="denied", source=source, reason="no second factor enrolled")
            return _err(403, "NO_SECOND_FACTOR", "no TOTP (or SMS number) enrolled for this "
                        "account; a security administrator (or `tongxin admin totp-reset` on the "
                        "node) enrols one")
        if await accounts.password_expired(user):
            await comp.audit("admin.login", actor=user.id, actor_role=user.role, target=user.username,
                             outcome="denied", source=source, reason="password expired")
            return _err(403, "PASSWORD_EXPIRED", f"the password has expired: change it with POST "
                        f"{PREFIX}/password (username, old_password, new_password and totp or "
                        f"sms_code), then log in", password_expired=True,
                        change_password=f"{PREFIX}/password")
        factor, result = await self._second_factor(user, str(body.get("totp", "")),
                                                   str(body.get("sms_code", "")))
        if result != "ok":
            if result in _COUNTED:
                await accounts.record_failure(user)
            await comp.audit("admin.login", actor=user.id, actor_role=user.role, target=user.username,
                             outcome="failed", source=source, reason=f"{factor} {result}")
            return _err(401, "AUTH_FAILED", f"second factor refused ({result})")
        if user.failed_logins:
            await self.node.store.update_login_state(user.id, 0, 0, 0)
        try:
            s = await accounts.issue(user, str(body.get("device_id", "")) or "admin-console")
        except RequestError as err:
            return _err(400, pb.ErrorCode.Name(err.code), err.message)
        now = now_ms()
        await comp.store.add_admin_session(AdminSession(
            s.claims.token_id, user.id, user.role, now, s.claims.expires_at_ms, now))
        await comp.audit("admin.login", actor=user.id, actor_role=user.role, target=user.username,
                         source=source, token_id=s.claims.token_id, factor=factor)
        return web.json_response({"user_id": user.id, "role": user.role, "token": s.token,
                                  "expires_at_ms": s.claims.expires_at_ms,
                                  "permissions": sorted(roles.PERMISSIONS[user.role])})

    async def _send_sms(self, user: User, source: str) -> web.Response:
        comp = self.c
        who = {"actor": user.id, "actor_role": user.role, "target": user.username,
               "source": source}
        try:
            sent = await comp.sms.send(user.id, user.username)
        except SmsUnavailable as exc:
            await comp.audit("sms.send", outcome="denied", reason=str(exc), **who)
            return _err(409, "SMS_UNAVAILABLE", str(exc))
        except SmsRateLimited as exc:
            await comp.audit("sms.send", outcome="denied", reason="rate limited", **who)
            return _err(429, "RATE_LIMITED", str(exc), retry_after_ms=exc.retry_after_ms)
        except SmsError as exc:
            log.error("SMS code for %s not sent: %s", user.username, exc)
            await comp.audit("sms.send", outcome="failed", reason=str(exc), **who)
            return _err(502, "SMS_FAILED", "the SMS gateway did not accept the message")
        await comp.audit("sms.send", phone=sent.phone_masked, expires_at=sent.expires_at, **who)
        return web.json_response({"sent": True, "phone": sent.phone_masked,
                                  "expires_at_ms": sent.expires_at})

    async def login_sms(self, request: web.Request) -> web.Response:
        """Before the login: password right, then an SMS code goes to the enrolled number."""
        body = await json_body(request)
        source = request.remote or ""
        try:
            user = await self.node.accounts.authenticate(
                str(body.get("username", "")), str(body.get("password", "")),
                clear_failures=False, event="sms.send")
        except RequestError as err:
            return _err(_STATUS.get(err.code, 401), pb.ErrorCode.Name(err.code), err.message,
                        retry_after_ms=err.retry_after_ms)
        if not roles.is_admin(user.role):
            await self.c.audit("sms.send", actor=user.id, actor_role=user.role,
                               target=user.username, outcome="denied", source=source,
                               reason="not an administrative account")
            return _err(403, "FORBIDDEN", "not an administrative account")
        return await self._send_sms(user, source)

    async def session_sms(self, request: web.Request, ctx: Ctx) -> web.Response:
        """For a step-up: an SMS code to this session's own account."""
        return await self._send_sms(ctx.user, ctx.source)

    async def change_password(self, request: web.Request) -> web.Response:
        """An administrator's own password: old password and a second factor
        (works when the password has expired, which is what it is for)."""
        comp = self.c
        accounts = self.node.accounts
        body = await json_body(request)
        source = request.remote or ""
        try:
            user = await accounts.authenticate(str(body.get("username", "")),
                                               str(body.get("old_password", "")),
                                               clear_failures=False, event="password.change")
        except RequestError as err:
            return _err(_STATUS.get(err.code, 401), pb.ErrorCode.Name(err.code), err.message,
                        retry_after_ms=err.retry_after_ms)
        who = {"actor": user.id, "actor_role": user.role, "target": user.username,
               "source": source}
        if not roles.is_admin(user.role):
            await comp.audit("password.change", outcome="denied",
                             reason="not an administrative account", **who)
            return _err(403, "FORBIDDEN", "ordinary accounts use POST /api/v1/password")
        factor, result = await self._second_factor(user, str(body.get("totp", "")),
                                                   str(body.get("sms_code", "")))
        if result != "ok":
            if result in _COUNTED:
                await accounts.record_failure(user)
            await comp.audit("password.change", outcome="failed", reason=f"{factor} {result}",
                             **who)
            return _err(401, "AUTH_FAILED", f"second factor refused ({result})")
        try:
            revoked = await accounts.set_password(
                user, str(body.get("new_password", "")), actor=user.id, actor_role=user.role,
                via="self", source=source)
        except RequestError as err:
            return _err(400, pb.ErrorCode.Name(err.code), err.message)
        if user.failed_logins:
            await self.node.store.update_login_state(user.id, 0, 0, 0)
        return web.json_response({"username": user.username, "changed": True,
                                  "revoked_tokens": revoked})

    async def whoami(self, request: web.Request, ctx: Ctx) -> web.Response:
        return web.json_response({"user_id": ctx.user.id, "username": ctx.user.username,
                                  "role": ctx.role,
                                  "permissions": sorted(roles.PERMISSIONS[ctx.role])})

    async def logout(self, request: web.Request, ctx: Ctx) -> web.Response:
        await self.node.accounts.revoke(ctx.session.token_id, ctx.session.user_id,
                                        ctx.session.expires_at)
        return web.json_response({"revoked": True})

    # ---- sysadmin: user administration ------------------------------------------

    async def _target(self, request: web.Request, ctx: Ctx, operation: str,
                      ordinary_only: bool = True) -> User | web.Response:
        name = request.match_info["name"].strip().lower()
        user = await self.node.store.get_user_by_name(name)
        if user is None:
            return _err(404, "NOT_FOUND", f"no user {name!r}")
        if ordinary_only and roles.is_admin(user.role):
            await self.c.audit("admin.forbidden", actor=ctx.user.id, actor_role=ctx.role,
                               target=user.username, outcome="denied", source=ctx.source,
                               operation=operation,
                               reason="administrative accounts are managed on the node "
                                      "(tongxin admin) and their roles by the security administrator")
            return _err(403, "FORBIDDEN", f"{user.username} is an administrative account")
        return user

    async def list_users(self, request: web.Request, ctx: Ctx) -> web.Response:
        totp = set(await self.c.store.totp_user_ids())
        sms = set(await self.c.store.sms_user_ids())
        units = await self.node.store.org_assignments()
        paths = unit_paths(await self.node.store.org_units()) if units else {}
        users = [{**_user_json(u, u.id in totp, u.id in sms, units.get(u.id, "")),
                  "unit_path": paths.get(units.get(u.id, ""), "")}
                 for u in await self.node.store.list_users()]
        await self.c.audit("user.list", actor=ctx.user.id, actor_role=ctx.role, source=ctx.source,
                           count=len(users))
        return web.json_response({"users": users})

    async def create_user(self, request: web.Request, ctx: Ctx) -> web.Response:
        body = await json_body(request)
        user = await self.node.accounts.create_user(str(body.get("username", "")),
                                                    str(body.get("password", "")),
                                                    str(body.get("display_name", "")))
        await self.c.audit("user.create", actor=ctx.user.id, actor_role=ctx.role,
                           target=user.username, source=ctx.source, user_id=user.id, role=user.role)
        return web.json_response(_user_json(user, False), status=201)

    def user_action(self, action: str) -> AdminHandler:
        async def handler(request: web.Request, ctx: Ctx) -> web.Response:
            op = f"user.{action}"
            target = await self._target(request, ctx, op)
            if isinstance(target, web.Response):
                return target
            store = self.node.store
            detail: dict[str, Any] = {}
            if action == "disable":
                await store.set_disabled(target.id, True)
                detail["revoked_tokens"] = await self.node.accounts.revoke_user(target.id)
            elif action == "enable":
                await store.set_disabled(target.id, False)
            elif action == "unlock":
                await store.update_login_state(target.id, 0, 0, 0)
            elif action == "revoke_tokens":
                detail["revoked_tokens"] = await self.node.accounts.revoke_user(target.id)
            elif action == "reset_password":
                body = await json_body(request)
                # Policy (length, classes), history record, token revocation;
                # a refusal is audited as password.policy and answers 400.
                detail["revoked_tokens"] = await self.node.accounts.set_password(
                    target, str(body.get("password", "")), actor=ctx.user.id,
                    actor_role=ctx.role, via="admin", check_history=False, source=ctx.source)
            elif action == "delete":
                # Message history keeps referring to the account's id, so the
                # row stays: disabled, tokens revoked, password unusable.
                await store.set_disabled(target.id, True)
                await store.set_password(target.id, "!deleted")
                detail["revoked_tokens"] = await self.node.accounts.revoke_user(target.id)
                # A leaver leaves their unit too, so the unit can be deleted later.
                left = await store.org_assign(target.id, "", now_ms())
                if left:
                    detail["unit_id"] = left
            await self.c.audit(op, actor=ctx.user.id, actor_role=ctx.role, target=target.username,
                               source=ctx.source, user_id=target.id, **detail)
            return web.json_response({"username": target.username, "done": action, **detail})

        return handler

    # ---- sysadmin: organisation units (组织机构) -----------------------------------

    async def _org_refused(self, ctx: Ctx, event: str, exc: OrgRefused, target: str,
                           **fields: Any) -> web.Response:
        """A change the tree's rules refused: audited as denied, answered 4xx."""
        await self.c.audit(event, actor=ctx.user.id, actor_role=ctx.role, target=target,
                           outcome="denied", source=ctx.source, reason=str(exc), **fields)
        return _err(exc.status, exc.error, str(exc))

    async def list_org(self, request: web.Request, ctx: Ctx) -> web.Response:
        units = await self.node.store.org_units()
        await self.c.audit("org.list", actor=ctx.user.id, actor_role=ctx.role, source=ctx.source,
                           count=len(units))
        return web.json_response({"units": [asdict(u) for u in units], "max_depth": MAX_DEPTH,
                                  "max_name": MAX_NAME})

    async def create_org(self, request: web.Request, ctx: Ctx) -> web.Response:
        body = await json_body(request)
        name = _str_field(body, "name") or ""
        parent_id = _str_field(body, "parent_id") or ""
        try:
            unit = await self.node.store.org_create(new_unit_id(), parent_id, name, now_ms())
        except OrgRefused as exc:
            return await self._org_refused(ctx, "org.create", exc, name, parent_id=parent_id)
        await self.c.audit("org.create", actor=ctx.user.id, actor_role=ctx.role, target=unit.id,
                           source=ctx.source, name=unit.name, parent_id=unit.parent_id)
        return web.json_response(asdict(unit), status=201)

    async def update_org(self, request: web.Request, ctx: Ctx) -> web.Response:
        """Rename (``name``) and/or move (``parent_id``, "" for the top level) a unit."""
        unit_id = request.match_info["unit_id"]
        body = await json_body(request)
        name = _str_field(body, "name")
        parent_id = _str_field(body, "parent_id")
        if name is None and parent_id is None:
            return _err(400, "INVALID_ARGUMENT", "give a new name, a new parent_id, or both")
        event = "org.update" if name is not None and parent_id is not None else (
            "org.rename" if name is not None else "org.move")
        try:
            before, after = await self.node.store.org_update(unit_id, name, parent_id)
        except OrgRefused as exc:
            return await self._org_refused(ctx, event, exc, unit_id, name=name, parent_id=parent_id)
        await self.c.audit(event, actor=ctx.user.id, actor_role=ctx.role, target=unit_id,
                           source=ctx.source, name=after.name, old_name=before.name,
                           parent_id=after.parent_id, old_parent_id=before.parent_id)
        return web.json_response(asdict(after))

    async def delete_org(self, request: web.Request, ctx: Ctx) -> web.Response:
        unit_id = request.match_info["unit_id"]
        try:
            unit = await self.node.store.org_delete(unit_id)
        except OrgRefused as exc:
            return await self._org_refused(ctx, "org.delete", exc, unit_id)
        await self.c.audit("org.delete", actor=ctx.user.id, actor_role=ctx.role, target=unit_id,
                           source=ctx.source, name=unit.name, parent_id=unit.parent_id)
        return web.json_response({"deleted": unit_id, "name": unit.name})

    async def assign_unit(self, request: web.Request, ctx: Ctx) -> web.Response:
        """PUT: put the user in ``unit_id``; DELETE: take them out of their unit."""
        op = "org.assign" if request.method == "PUT" else "org.unassign"
        target = await self._target(request, ctx, op)
        if isinstance(target, web.Response):
            return target
        unit_id = ""
        if request.method == "PUT":
            unit_id = _str_field(await json_body(request), "unit_id") or ""
            if not unit_id:
                return _err(400, "INVALID_ARGUMENT", "give the unit_id to put the user in")
        try:
            previous = await self.node.store.org_assign(target.id, unit_id, now_ms())
        except OrgRefused as exc:
            return await self._org_refused(ctx, op, exc, target.username, unit_id=unit_id)
        await self.c.audit(op, actor=ctx.user.id, actor_role=ctx.role, target=target.username,
                           source=ctx.source, user_id=target.id, unit_id=unit_id,
                           previous_unit_id=previous)
        return web.json_response({"username": target.username, "unit_id": unit_id,
                                  "previous_unit_id": previous})

    # ---- sysadmin: groups (their names and members, never their messages) ------------

    async def _usernames(self, ids: list[str]) -> dict[str, User]:
        wanted = set(ids)
        if len(wanted) > 200:  # one read of every account beats thousands of lookups
            return {u.id: u for u in await self.node.store.list_users() if u.id in wanted}
        found = await asyncio.gather(*(self.node.store.get_user(i) for i in wanted))
        return {u.id: u for u in found if u is not None}

    async def list_groups(self, request: web.Request, ctx: Ctx) -> web.Response:
        """``q`` (part of the name, case-sensitive), ``after`` (the last id of the
        previous page) and ``limit``: a page of group conversations, by id."""
        q = request.query
        try:
            limit = max(1, min(200, int(q.get("limit", str(GROUP_PAGE)))))
        except ValueError:
            return _err(400, "INVALID_ARGUMENT", "limit is an integer")
        name = q.get("q", "").strip()
        after = q.get("after", "")
        rows = await self.node.store.list_groups(name, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        creators = await self._usernames([r.created_by for r in rows])

        def row(r: ConversationRow) -> dict[str, Any]:
            u = creators.get(r.created_by)
            return {"id": r.id, "name": r.name, "member_count": r.member_count,
                    "created_at": r.created_at, "created_by": r.created_by,
                    "created_by_username": u.username if u else ""}

        await self.c.audit("group.list", actor=ctx.user.id, actor_role=ctx.role,
                           source=ctx.source, q=name, after=after, count=len(rows))
        return web.json_response({"groups": [row(r) for r in rows],
                                  "next_after": rows[-1].id if rows else after, "more": more})

    async def group_members(self, request: web.Request, ctx: Ctx) -> web.Response:
        conv_id = request.match_info["conversation_id"]
        conv = await self.node.store.get_conversation(conv_id)
        if conv is None or conv.kind != pb.GROUP:
            return _err(404, "NOT_FOUND", f"no group {conv_id!r}")
        members = await self.node.store.list_members(conv_id, GROUP_MEMBERS_MAX)
        users = await self._usernames([m.user_id for m in members])
        out = [{"user_id": m.user_id,
                "username": users[m.user_id].username if m.user_id in users else "",
                "display_name": users[m.user_id].display_name if m.user_id in users else "",
                "role": _GROUP_ROLES.get(m.role, "member")} for m in members]
        await self.c.audit("group.members", actor=ctx.user.id, actor_role=ctx.role,
                           target=conv_id, source=ctx.source, count=len(out))
        return web.json_response({"id": conv.id, "name": conv.name,
                                  "member_count": conv.member_count, "created_at": conv.created_at,
                                  "members": out})

    async def node_status(self, request: web.Request, ctx: Ctx) -> web.Response:
        """A few of this node's own counters (the Prometheus registry the metrics
        listener serves on loopback), for the console's chart. Not audited: it reads
        numbers, not data, and the console asks every few seconds."""
        wanted = {"tongxin_connections": "connections",
                  "tongxin_authenticated_connections": "authenticated",
                  "tongxin_messages_stored_total": "messages_stored",
                  "tongxin_deliveries_total": "deliveries",
                  "tongxin_ack_latency_seconds_sum": "ack_latency_sum_s",
                  "tongxin_ack_latency_seconds_count": "ack_latency_count"}
        out: dict[str, Any] = {"node": self.node.node_id, "site": self.node.cfg.site.name,
                               "ts": now_ms(), **dict.fromkeys(wanted.values(), 0)}
        for metric in self.node.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name in wanted and not sample.labels:
                    out[wanted[sample.name]] = sample.value
        return web.json_response(out)

    async def list_nodes(self, request: web.Request, ctx: Ctx) -> web.Response:
        """Every active node of the installation, from the replication heartbeat rows
        the nodes rewrite every site.heartbeat_interval in the shared database (each
        with its version, address, open connections and start time): "live" while
        its beat is younger than NODE_STALE_BEATS intervals (this node's), else
        "stale"; a node that stopped stays listed, stale, until its row is a day old.
        On the embedded SQLite store (one node, no heartbeat) the list is this node.
        Not audited, like GET /node: numbers the console polls; refusals are."""
        from tongxin.site.heartbeat import HeartbeatStore, local_status

        node, cfg = self.node, self.node.cfg
        now = now_ms()
        if isinstance(node.store, HeartbeatStore):
            try:
                beats = await node.store.node_beats(now - NODE_ROWS_KEPT_MS)
            except StoreError as exc:  # as the node's 503 for any backend outage
                refused = _err(503, "UNAVAILABLE", f"the node list cannot be read from the "
                               f"database: {exc}", retry_after_ms=1000)
                refused.headers["Retry-After"] = "1"
                return refused
            source = "heartbeat"
        else:
            beats = [NodeBeat(node.node_id, cfg.site.name, now,
                              local_status(node.address, len(node.hub.all)))]
            source = "self"
        live_ms = NODE_STALE_BEATS * cfg.site.heartbeat_interval * 1000

        def row(b: NodeBeat) -> dict[str, Any]:
            age = max(0, now - b.beat_ms)
            return {"node_id": b.node_id, "site": b.site, "version": b.status.version,
                    "address": b.status.address, "connections": b.status.connections,
                    "started_at": b.status.started_ms, "last_beat_ms": b.beat_ms,
                    "age_s": round(age / 1000, 1), "state": "live" if age < live_ms else "stale",
                    "self": b.node_id == node.node_id}

        return web.json_response({"nodes": [row(b) for b in beats], "source": source,
                                  "stale_after_s": live_ms / 1000, "ts": now})

    async def site_status(self, request: web.Request, ctx: Ctx) -> web.Response:
        """This node's site, the database endpoint it uses, and the newest evidence of
        the operations an auditor asks about: backup, restore test, DR drill (the
        files `tongxin backup` and the DR drill write; the 等保 report reads the same),
        and how far behind the DR copy is, as each standby in site.standby_status_urls
        reports it (asked while the evidence is read, within standby_status's deadline:
        the answer never waits on a standby that does not answer)."""
        from tongxin.compliance.report import latest_evidence
        from tongxin.config import standby_url_list
        from tongxin.site.standby_status import standby_statuses

        db: dict[str, Any] = {}
        heartbeat = None
        for metric in self.node.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "tongxin_db_endpoint_index":
                    db = {"endpoint": sample.labels.get("endpoint", ""), "index": sample.value}
                elif sample.name == "tongxin_replication_heartbeat_written_timestamp_seconds":
                    heartbeat = int(sample.value * 1000) if sample.value else None
        keep = {"backup": ("id", "bytes", "duration_seconds", "signed_by", "error"),
                "restore": ("backup", "duration_seconds", "error"),
                "dr-drill": ("kind", "rpo_seconds", "rto_seconds", "error")}
        home = self.node.cfg.home

        async def read_evidence() -> dict[str, Any]:
            evidence: dict[str, Any] = {}
            for prefix, fields in keep.items():
                found = await asyncio.to_thread(latest_evidence, home, prefix)
                if found is None:
                    evidence[prefix] = None
                    continue
                path, data, at = found
                evidence[prefix] = {"file": path.name, "finished_at": at,
                                    "ok": data.get("ok") is True,
                                    **{k: data[k] for k in fields if k in data}}
            return evidence

        cfg = self.node.cfg
        evidence, standbys = await asyncio.gather(
            read_evidence(), standby_statuses(standby_url_list(cfg.site.standby_status_urls)))
        return web.json_response({
            "node": self.node.node_id, "site": cfg.site.name, "role": cfg.site.role,
            "storage": cfg.storage.backend, "database": db or None,
            "heartbeat_written_at": heartbeat, "evidence": evidence, "standbys": standbys,
            "ts": now_ms()})

    async def config_view(self, request: web.Request, ctx: Ctx) -> web.Response:
        """The node's effective configuration: every key, its value and default,
        whether it differs; secrets only as set / not set (tongxin.config_view).
        Audited like the other reads."""
        from tongxin.config_view import effective_config

        data = effective_config(self.node.cfg)
        await self.c.audit("config.read", actor=ctx.user.id, actor_role=ctx.role,
                           source=ctx.source, count=len(data["keys"]),
                           redacted=sum(1 for k in data["keys"] if k["redacted"]))
        return web.json_response({"node": self.node.node_id, **data})

    # ---- secadmin: roles, second factors, keys, retention, holds -------------------

    async def sign_out_admin(self, request: web.Request, ctx: Ctx) -> web.Response:
        """End every session of another administrator: its tokens are revoked on
        every node, so the console and the API refuse them at once. Ordinary users
        are the sysadmin's (revoke-tokens); one's own session ends with logout."""
        target = await self._target(request, ctx, "admin.sign_out", ordinary_only=False)
        if isinstance(target, web.Response):
            return target
        if not roles.is_admin(target.role) or target.id == ctx.user.id:
            reason = ("an ordinary account: the system administrator revokes its sessions"
                      if not roles.is_admin(target.role) else "your own session: sign out instead")
            await self.c.audit("admin.forbidden", actor=ctx.user.id, actor_role=ctx.role,
                               target=target.username, outcome="denied", source=ctx.source,
                               operation="admin.sign_out", reason=reason)
            return _err(403, "FORBIDDEN", f"{target.username}: {reason}")
        revoked = await self.node.accounts.revoke_user(target.id)
        await self.c.audit("admin.sign_out", actor=ctx.user.id, actor_role=ctx.role,
                           target=target.username, source=ctx.source, user_id=target.id,
                           revoked_tokens=revoked)
        return web.json_response({"username": target.username, "revoked_tokens": revoked})

    async def _policy_view(self) -> dict[str, Any]:
        in_force, overrides, stored = await self.c.account_policy_state(self.node.cfg.accounts)
        return {**account_policy.document(in_force),
                **account_policy.editable_document(self.node.cfg.accounts, overrides, stored)}

    async def policy(self, request: web.Request, ctx: Ctx) -> web.Response:
        """The password and lockout policy in force, rule by rule against 等保's
        thresholds: the configuration's accounts.* with the security administrator's
        stored changes on top; what may be changed and within which limits."""
        view = await self._policy_view()
        await self.c.audit("policy.read", actor=ctx.user.id, actor_role=ctx.role,
                           source=ctx.source)
        return web.json_response(view)

    async def set_policy(self, request: web.Request, ctx: Ctx) -> web.Response:
        """``{settings: {key: value | null, ...}, reason?}``: change the policy on every
        node (stored; null goes back to the configuration file's value). All fields are
        checked before anything changes; 400 names each refused field."""
        body = await json_body(request)
        settings = body.get("settings")
        if not isinstance(settings, dict):
            return _err(400, "INVALID_ARGUMENT", "send {\"settings\": {\"<key>\": <value or null>, "
                        "...}, \"reason\": \"...\"}")
        try:
            change = await self.c.set_account_policy(
                settings, actor=ctx.user.id, actor_role=ctx.role, source=ctx.source,
                reason=str(body.get("reason", "")).strip()[:500])
        except PolicyInvalid as exc:
            return _err(400, "INVALID_ARGUMENT", str(exc),
                        fields={k: e.as_dict(k) for k, e in exc.errors.items()})
        # In force here at once; the other nodes read it within POLICY_REFRESH_SECONDS.
        self.node.accounts.cfg = change.after
        return web.json_response({"changed": change.changed, **await self._policy_view()})

    async def list_roles(self, request: web.Request, ctx: Ctx) -> web.Response:
        totp = set(await self.c.store.totp_user_ids())
        sms = set(await self.c.store.sms_user_ids())
        admins = [_user_json(u, u.id in totp, u.id in sms) for u in await self.node.store.list_users()
                  if roles.is_admin(u.role)]
        await self.c.audit("role.list", actor=ctx.user.id, actor_role=ctx.role, source=ctx.source)
        return web.json_response({"roles": {r: sorted(roles.PERMISSIONS[r]) for r in roles.ALL_ROLES},
                                  "sensitive": sorted(roles.SENSITIVE), "admins": admins})

    async def assign_role(self, request: web.Request, ctx: Ctx) -> web.Response:
        body = await json_body(request)
        role = str(body.get("role", ""))
        target = await self._target(request, ctx, "role.assign", ordinary_only=False)
        if isinstance(target, web.Response):
            return target
        if role not in roles.ALL_ROLES:
            return _err(400, "INVALID_ARGUMENT", f"role must be one of {', '.join(roles.ALL_ROLES)}")
        if target.id == ctx.user.id:
            await self.c.audit("admin.forbidden", actor=ctx.user.id, actor_role=ctx.role,
                               target=target.username, outcome="denied", source=ctx.source,
                               operation="role.assign", reason="own role")
            return _err(403, "FORBIDDEN", "no one changes their own role")
        before = target.role
        await self.node.store.set_role(target.id, role)
        # Sessions opened under the old role end now.
        revoked = await self.node.accounts.revoke_user(target.id)
        enrolled = await self.c.totp.enrolled(target.id)
        await self.c.audit("role.change", actor=ctx.user.id, actor_role=ctx.role,
                           target=target.username, source=ctx.source, user_id=target.id,
                           before=before, after=role, revoked_tokens=revoked)
        return web.json_response({"username": target.username, "before": before, "role": role,
                                  "totp_enrolled": enrolled})

    async def reset_totp(self, request: web.Request, ctx: Ctx) -> web.Response:
        target = await self._target(request, ctx, "totp.reset", ordinary_only=False)
        if isinstance(target, web.Response):
            return target
        if target.id == ctx.user.id:
            await self.c.audit("admin.forbidden", actor=ctx.user.id, actor_role=ctx.role,
                               target=target.username, outcome="denied", source=ctx.source,
                               operation="totp.reset", reason="own second factor")
            return _err(403, "FORBIDDEN", "another security administrator resets your second factor")
        secret, uri = await self.c.totp.enroll(target.id, target.username, ctx.user.id)
        await self.c.audit("totp.reset", actor=ctx.user.id, actor_role=ctx.role,
                           target=target.username, source=ctx.source, user_id=target.id)
        return web.json_response({"username": target.username, "secret": secret, "uri": uri})

    async def enroll_sms(self, request: web.Request, ctx: Ctx) -> web.Response:
        """PUT {phone}: send a confirmation code to an administrator's new SMS number
        (202; ``POST .../sms/confirm {code}`` enrols it); DELETE removes the number."""
        target = await self._target(request, ctx, "sms.enroll", ordinary_only=False)
        if isinstance(target, web.Response):
            return target
        if not roles.is_admin(target.role) or target.id == ctx.user.id:
            reason = ("own second factor" if target.id == ctx.user.id
                      else "only administrative accounts have a second factor")
            await self.c.audit("admin.forbidden", actor=ctx.user.id, actor_role=ctx.role,
                               target=target.username, outcome="denied", source=ctx.source,
                               operation="sms.enroll", reason=reason)
            return _err(403, "FORBIDDEN", reason)
        who = {"actor": ctx.user.id, "actor_role": ctx.role, "target": target.username,
               "source": ctx.source, "user_id": target.id}
        if request.method == "DELETE":
            removed = await self.c.sms.remove(target.id)
            await self.c.audit("sms.remove", removed=removed, **who)
            return web.json_response({"username": target.username, "removed": removed})
        body = await json_body(request)
        if request.path.endswith("/confirm"):
            result, masked = await self.c.sms.confirm_enrollment(
                target.id, str(body.get("code", "")), ctx.user.id)
            if result is not SmsResult.OK:
                await self.c.audit("sms.enroll", outcome="failed", step="confirm",
                                   reason=result.value, **who)
                return _err(400, "INVALID_CODE", f"confirmation code {result.value}: send a new "
                            f"one with PUT {PREFIX}/users/{target.username}/sms")
            await self.c.audit("sms.enroll", step="confirmed", phone=masked,
                               provider=self.c.cfg.compliance.sms_provider, **who)
            return web.json_response({"username": target.username, "phone": masked,
                                      "enrolled": True})
        try:
            sent = await self.c.sms.start_enrollment(target.id, target.username,
                                                     str(body.get("phone", "")), ctx.user.id)
        except ValueError as exc:
            return _err(400, "INVALID_ARGUMENT", str(exc))
        except SmsUnavailable as exc:
            await self.c.audit("sms.enroll", outcome="denied", step="send", reason=str(exc), **who)
            return _err(409, "SMS_UNAVAILABLE", str(exc))
        except SmsRateLimited as exc:
            await self.c.audit("sms.enroll", outcome="denied", step="send", reason="rate limited",
                               **who)
            return _err(429, "RATE_LIMITED", str(exc), retry_after_ms=exc.retry_after_ms)
        except SmsError as exc:
            log.error("SMS confirmation code for %s not sent: %s", target.username, exc)
            await self.c.audit("sms.enroll", outcome="failed", step="send", reason=str(exc), **who)
            return _err(502, "SMS_FAILED", "the SMS gateway did not accept the message")
        await self.c.audit("sms.enroll", step="code_sent", phone=sent.phone_masked,
                           expires_at=sent.expires_at, **who)
        return web.json_response({"username": target.username, "phone": sent.phone_masked,
                                  "pending": True, "expires_at_ms": sent.expires_at,
                                  "confirm": f"{PREFIX}/users/{target.username}/sms/confirm"},
                                 status=202)

    async def rotate_key(self, request: web.Request, ctx: Ctx) -> web.Response:
        old = self.c.keys.current_fingerprint()
        try:
            new = await self.c.rotate_key()
        except CryptoError as exc:
            return _err(503, "UNAVAILABLE", str(exc))
        await self.c.audit("key.rotate", actor=ctx.user.id, actor_role=ctx.role, target="audit_sign",
                           source=ctx.source, old_fingerprint=old or "", new_fingerprint=new)
        await self.c.sign_head(force=True)
        return web.json_response({"key": "audit_sign", "old_fingerprint": old, "fingerprint": new})

    async def audit_key(self, request: web.Request, ctx: Ctx) -> web.Response:
        """This node's audit signing key (each node signs the chain head with its own):
        the fingerprint the page shows before a rotation, and how many public keys
        audit-keys/ keeps for verifying older heads."""
        keys = self.c.keys
        fp = await asyncio.to_thread(keys.current_fingerprint)
        kept = await asyncio.to_thread(keys.found_keys)
        await self.c.audit("key.read", actor=ctx.user.id, actor_role=ctx.role,
                           target="audit_sign", source=ctx.source, fingerprint=fp or "")
        return web.json_response({"key": "audit_sign", "node": self.node.node_id,
                                  "fingerprint": fp, "public_keys": len(kept)})

    def _atrest_store(self) -> DekStore | None:
        store = self.node.store
        return cast("DekStore", store) if hasattr(store, "data_keys") else None

    async def atrest_status(self, request: web.Request, ctx: Ctx) -> web.Response:
        """The master key of encryption at rest (``tongxin keys status`` and more): suite,
        provider and where the key comes from (never the key, nor the KMS command, which
        may carry a credential), the current KEK, the older KEKs and how many data keys
        each still wraps (the small data_keys table; messages are not read), and this
        node's last rotation with its progress."""
        from tongxin.atrest.errors import AtRestError
        from tongxin.atrest.keyring import DEK_CIPHERS
        from tongxin.atrest.providers import FileKeyProvider, make_provider
        from tongxin.atrest.rotate import all_data_keys, key_status

        cfg = self.node.cfg
        out: dict[str, Any] = {
            "node": self.node.node_id, "encryption": cfg.storage.encryption,
            "suite": cfg.crypto.suite, "cipher": DEK_CIPHERS.get(cfg.crypto.suite, ""),
            "in_use": self.node.keyring is not None,
            "source": ({"kind": "command", "setting": "keys.kms_command"}
                       if cfg.keys.kms_command.strip() else
                       {"kind": "file", "setting": "keys.master_key_file",
                        "path": str(cfg.master_key_file)}),
            "rotation": None if self._rotation is None else self._rotation.view()}
        who = {"actor": ctx.user.id, "actor_role": ctx.role, "target": "master key",
               "source": ctx.source}
        deks = self._atrest_store()
        if self.node.keyring is None or deks is None:
            await self.c.audit("keys.status", in_use=False, **who)
            return web.json_response(out)
        try:
            provider = await asyncio.to_thread(make_provider, cfg.master_key_file,
                                               cfg.keys.kms_command, cfg.crypto.suite)
            rows = await all_data_keys(deks)
            st = await key_status(provider, deks, rows)
        except (AtRestError, StoreError) as exc:
            await self.c.audit("keys.status", outcome="failed", reason=str(exc), **who)
            return _err(503, "UNAVAILABLE", f"the at-rest key status cannot be read: {exc}",
                        rotation=out["rotation"])
        held: list[str] = []
        if isinstance(provider, FileKeyProvider):
            # The file has no date per KEK; it is rewritten by each rotation (then by the
            # retirement of the old KEK at its end), so this is when the current KEK came.
            held = provider.known_ids()
            with contextlib.suppress(OSError):
                out["source"]["modified_at"] = int(
                    (await asyncio.to_thread(cfg.master_key_file.stat)).st_mtime * 1000)
        older = [k for k in [*held, *sorted(st.by_kek)] if k != st.current_kek]
        out.update({
            "provider": st.provider,
            "kek": {"id": st.current_kek, "data_keys": st.by_kek.get(st.current_kek, 0)},
            "older_keks": [{"id": k, "data_keys": st.by_kek.get(k, 0), "in_key_file": k in held}
                           for k in dict.fromkeys(older)],
            "data_keys": {"total": len(rows), "pending": st.pending,
                          "newest_created_at": max((r.created_at for r in rows), default=None),
                          "by_suite": dict(Counter(r.suite for r in rows))}})
        await self.c.audit("keys.status", kek=st.current_kek, pending=st.pending, **who)
        return web.json_response(out)

    async def atrest_rotation(self, request: web.Request, ctx: Ctx) -> web.Response:
        """Only this node's rotation and its progress: what the console polls every second
        while one runs. Not audited, like GET /node (GET /keys/atrest, which reads the key
        provider and every data key, is), and it touches neither the provider nor the store."""
        return web.json_response({"rotation": None if self._rotation is None
                                  else self._rotation.view()})

    async def atrest_rotate(self, request: web.Request, ctx: Ctx) -> web.Response:
        """Rotate the master key as ``tongxin keys rotate`` does (the same function,
        tongxin.atrest.rotate.rotate_audited), in a task of this node: 202 at once, the
        progress and the result in GET /keys/atrest. A second rotation while one runs on
        this node is refused (409)."""
        from tongxin.atrest.errors import AtRestError
        from tongxin.atrest.providers import make_provider
        from tongxin.atrest.rotate import key_status, rotate_audited

        comp, cfg = self.c, self.node.cfg
        who = {"actor": ctx.user.id, "actor_role": ctx.role, "target": "master key",
               "source": ctx.source, "via": "admin-api", "admin": ctx.user.username}
        deks = self._atrest_store()
        running = self._rotation is not None and self._rotation.state == "running"
        reason = ("a rotation is already running on this node" if running else
                  "at-rest encryption is not in use on this node (no master key)"
                  if self.node.keyring is None or deks is None else "")
        if reason or deks is None:
            await comp.audit("keys.rotate", outcome="denied", reason=reason, **who)
            return _err(409, "ROTATION_RUNNING" if running else "FAILED_PRECONDITION", reason,
                        rotation=None if self._rotation is None else self._rotation.view())
        job = AtRestRotation(started_at=now_ms(), by=ctx.user.username)
        self._rotation = job  # from here on a second request sees it running
        try:
            provider = await asyncio.to_thread(make_provider, cfg.master_key_file,
                                               cfg.keys.kms_command, cfg.crypto.suite)
            before = await key_status(provider, deks)
        except (AtRestError, StoreError) as exc:
            job.finish("failed", error=str(exc))
            await comp.audit("keys.rotate", outcome="failed", error=str(exc), **who)
            return _err(503, "UNAVAILABLE", f"cannot rotate the master key: {exc}",
                        rotation=job.view())
        job.old_kek = before.current_kek
        job.total = before.pending or sum(before.by_kek.values())

        async def record(event: str, outcome: str, **details: Any) -> None:
            await comp.audit(event, outcome=outcome, **who, **details)

        def progress(n: int) -> None:
            job.rewrapped = n

        async def run() -> None:
            try:
                res = await rotate_audited(provider, deks, record, progress=progress)
            except AtRestError as exc:
                job.finish("failed", error=str(exc))  # audited by rotate_audited
            except asyncio.CancelledError:
                job.finish("failed", error="the node stopped during the rotation; rotate "
                           "again to finish it")
                await record("keys.rotate", "partial", error=job.error, kek=job.kek,
                             rewrapped=job.rewrapped)
                raise
            except Exception as exc:  # a store failure: audited, shown, the node goes on
                log.exception("at-rest key rotation failed")
                job.finish("failed", error=str(exc))
                await record("keys.rotate", "failed", error=str(exc))
            else:
                job.kek, job.rewrapped, job.resumed = res.kek_id, res.rewrapped, res.resumed
                job.retired = res.retired
                job.finish("done" if res.complete else "partial")

        self._rotation_task = asyncio.get_running_loop().create_task(run())
        return web.json_response({"rotation": job.view()}, status=202)

    async def _retention_view(self) -> dict[str, Any]:
        days, override = await self.c.audit_retention()
        holds = await self.c.store.holds()
        last = await self.c.store.last_run()
        return {"audit_retention_days": days, "audit_retention_override": override,
                "message_policies": await effective_policies(self.c.cfg, self.c.store),
                "holds": [asdict(h) for h in holds],
                "last_run": None if last is None else asdict(last)}

    async def get_retention(self, request: web.Request, ctx: Ctx) -> web.Response:
        return web.json_response(await self._retention_view())

    async def set_retention(self, request: web.Request, ctx: Ctx) -> web.Response:
        body = await json_body(request)
        comp = self.c
        if "audit_retention_days" in body:
            try:
                days = float(body["audit_retention_days"])
            except (TypeError, ValueError):
                return _err(400, "INVALID_ARGUMENT", "audit_retention_days must be a number")
            try:
                await comp.set_audit_retention(days, bool(body.get("override", False)),
                                               str(body.get("reason", "")), actor=ctx.user.id,
                                               actor_role=ctx.role, source=ctx.source)
            except RetentionBelowMinimum as exc:
                return _err(400, "BELOW_LEGAL_MINIMUM", str(exc))
        if "message_retention_days" in body:
            raw = body["message_retention_days"]
            if raw is not None and (not isinstance(raw, int | float) or raw < 0):
                return _err(400, "INVALID_ARGUMENT", "message_retention_days must be >= 0 or null")
            cid = str(body.get("conversation_id", ""))
            scope = conversation_scope(cid) if cid else DEFAULT_SCOPE
            await comp.store.set_policy(scope, None if raw is None else float(raw))
            await comp.audit("retention.messages.set", actor=ctx.user.id, actor_role=ctx.role,
                             target=scope, source=ctx.source,
                             days="cleared" if raw is None else str(raw))
        return web.json_response(await self._retention_view())

    async def list_holds(self, request: web.Request, ctx: Ctx) -> web.Response:
        holds = await self.c.store.holds(active_only=request.query.get("all") != "1")
        return web.json_response({"holds": [asdict(h) for h in holds]})

    async def add_hold(self, request: web.Request, ctx: Ctx) -> web.Response:
        body = await json_body(request)
        kind = str(body.get("kind", ""))
        target = str(body.get("target", ""))
        reason = str(body.get("reason", "")).strip()
        if kind not in ("user", "conversation") or not target or not reason:
            return _err(400, "INVALID_ARGUMENT", "kind (user|conversation), target and reason needed")
        if kind == "user" and not target.startswith("u_"):
            u = await self.node.store.get_user_by_name(target.lower())
            if u is None:
                return _err(404, "NOT_FOUND", f"no user {target!r}")
            target = u.id
        hold = await self.c.store.add_hold(kind, target, reason, ctx.user.id, now_ms())
        await self.c.audit("hold.set", actor=ctx.user.id, actor_role=ctx.role,
                           target=f"{kind}:{target}", source=ctx.source, hold_id=hold.id,
                           reason=reason)
        return web.json_response(asdict(hold), status=201)

    async def release_hold(self, request: web.Request, ctx: Ctx) -> web.Response:
        try:
            hold_id = int(request.match_info["hold_id"])
        except ValueError:
            return _err(400, "INVALID_ARGUMENT", "hold id must be a number")
        hold = await self.c.store.release_hold(hold_id, ctx.user.id, now_ms())
        if hold is None:
            return _err(404, "NOT_FOUND", f"no active hold {hold_id}")
        await self.c.audit("hold.release", actor=ctx.user.id, actor_role=ctx.role,
                           target=f"{hold.kind}:{hold.target}", source=ctx.source, hold_id=hold_id)
        return web.json_response(asdict(hold))

    # ---- auditor: the audit log, verification, export, report ----------------------

    async def read_audit(self, request: web.Request, ctx: Ctx) -> web.Response:
        """Records after ``after`` (seq), ``limit`` at most; optional filters ``actor``
        (user id, username or e.g. ``system``), ``event`` (exact, or a prefix ending in
        ``.`` or ``*``), ``outcome``, ``from_ms`` and ``to_ms`` (record time, to exclusive).
        With filters the node scans up to AUDIT_SCAN records per call; ``next_after`` is
        where the next page starts and ``more`` says whether there may be one.
        ``order=desc`` pages from the newest record down instead (``before``)."""
        q = request.query
        try:
            after = int(q.get("after", "0"))
            limit = max(1, min(1000, int(q.get("limit", "100"))))
            f = await self.audit_filter(q)
        except (ValueError, FilterInvalid):
            return _err(400, "INVALID_ARGUMENT", "after, limit, from_ms and to_ms are integers")
        filters = f.as_dict()
        wanted = f.matches

        if q.get("order") == "desc":
            return await self._read_audit_newest_first(ctx, q.get("before", ""), limit, wanted,
                                                       filters)
        rows: list[AuditRecord] = []
        cursor, scanned, more = after, 0, False
        while True:
            batch = await self.c.store.audit_records(cursor, limit if not filters else 1000)
            for r in batch:
                cursor = r.seq
                scanned += 1
                if wanted(r):
                    rows.append(r)
                    if len(rows) >= limit:
                        break
            if len(rows) >= limit:
                more = True
                break
            if len(batch) < (limit if not filters else 1000):
                break
            if scanned >= AUDIT_SCAN:
                more = True
                break
        await self.c.audit("audit.read", actor=ctx.user.id, actor_role=ctx.role, source=ctx.source,
                           after=after, count=len(rows), filters=filters)
        return web.json_response({"records": [{**r.fields(), "hash": r.hash} for r in rows],
                                  "next_after": cursor, "more": more})

    async def audit_filter(self, q: Mapping[str, str]) -> AuditFilter:
        """The filters of GET /audit and GET /audit/download; an actor given by username
        becomes the user's id (FilterInvalid for a bad number)."""
        f = AuditFilter.from_query(q)
        if f.actor and not f.actor.startswith("u_"):
            named = await self.node.store.get_user_by_name(f.actor.lower())
            if named is not None:
                f = f.with_actor(named.id)
        return f

    async def _read_audit_newest_first(self, ctx: Ctx, before_arg: str, limit: int,
                                       wanted: Callable[[AuditRecord], bool],
                                       filters: dict[str, Any]) -> web.Response:
        """``order=desc``: records with seq below ``before`` (default: all), newest first;
        ``next_before`` continues with older ones. Walks down in windows of seq numbers."""
        try:
            before = int(before_arg) if before_arg else 0
        except ValueError:
            return _err(400, "INVALID_ARGUMENT", "before is an integer")
        newest, _ = await self.c.store.audit_state()
        hi = min(before - 1, newest) if before > 0 else newest  # the highest seq to look at
        rows: list[AuditRecord] = []
        scanned = 0
        while hi >= 1 and len(rows) < limit and scanned < AUDIT_SCAN:
            lo = max(0, hi - 1000)
            batch = [r for r in await self.c.store.audit_records(lo, hi - lo) if r.seq <= hi]
            scanned += hi - lo
            for r in reversed(batch):
                hi = r.seq - 1
                if wanted(r):
                    rows.append(r)
                    if len(rows) >= limit:
                        break
            else:
                hi = lo
        more = hi >= 1
        await self.c.audit("audit.read", actor=ctx.user.id, actor_role=ctx.role, source=ctx.source,
                           before=before, order="desc", count=len(rows), filters=filters)
        return web.json_response({"records": [{**r.fields(), "hash": r.hash} for r in rows],
                                  "next_before": hi + 1, "more": more})

    async def verify_audit(self, request: web.Request, ctx: Ctx) -> web.Response:
        report = await self.c.verify()
        await self.c.audit("audit.verify", actor=ctx.user.id, actor_role=ctx.role,
                           source=ctx.source, ok=report.ok, problems=len(report.problems))
        return web.json_response(report.as_dict())

    async def sign_audit(self, request: web.Request, ctx: Ctx) -> web.Response:
        try:
            head = await self.c.sign_head(force=True)
        except CryptoError as exc:
            return _err(503, "UNAVAILABLE", str(exc))
        await self.c.audit("audit.sign", actor=ctx.user.id, actor_role=ctx.role, source=ctx.source,
                           seq=head.seq if head else 0)
        return web.json_response({"seq": head.seq if head else 0, "hash": head.hash if head else "",
                                  "key_fp": head.key_fp if head else ""})

    async def export(self, request: web.Request, ctx: Ctx) -> web.Response:
        body = await json_body(request)
        try:
            from_ms = int(body.get("from_ms", 0))
            to_ms = int(body.get("to_ms", now_ms() + 1))
        except (TypeError, ValueError):
            return _err(400, "INVALID_ARGUMENT", "from_ms and to_ms are integers (ms)")
        if body.get("user"):
            ref = str(body["user"]).lower()
            u = await (self.node.store.get_user(ref) if ref.startswith("u_")
                       else self.node.store.get_user_by_name(ref))
            if u is None:
                return _err(404, "NOT_FOUND", f"no user {ref!r}")
            kind, target, name = "user", u.id, u.username
        elif body.get("conversation_id"):
            kind, target = "conversation", str(body["conversation_id"])
            name = target
        else:
            return _err(400, "INVALID_ARGUMENT", "name a user or a conversation_id")
        try:
            path, manifest = await export_messages(
                self.node.store, self.c.keys, self.c.cfg.home / "exports", kind=kind, target=target,
                target_name=name, from_ms=from_ms, to_ms=to_ms, actor=ctx.user.id, now=now_ms())
        except ValueError as exc:
            return _err(400, "INVALID_ARGUMENT", str(exc))
        await self.c.audit("export.messages", actor=ctx.user.id, actor_role=ctx.role,
                           target=f"{kind}:{target}", source=ctx.source,
                           export_id=manifest["export_id"], records=manifest["records"],
                           from_ms=from_ms, to_ms=to_ms, sm3=manifest["files"][0]["sm3"])
        return web.json_response({"path": str(path), "manifest": manifest})

    async def export_file(self, request: web.Request, ctx: Ctx) -> web.Response:
        """One file of an export this node wrote (the console's download): the
        messages, the manifest or its signature. Every download is audited."""
        export_id = request.match_info["export_id"]
        name = request.match_info["name"]
        if not _EXPORT_ID.fullmatch(export_id) or name not in _EXPORT_FILES:
            return _err(400, "INVALID_ARGUMENT",
                        f"an export id (exp_<ms>_<8 hex>) and one of {', '.join(_EXPORT_FILES)}")
        path = self.c.cfg.home / "exports" / export_id / name
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return _err(404, "NOT_FOUND", f"no export {export_id} on this node")
        await self.c.audit("export.download", actor=ctx.user.id, actor_role=ctx.role,
                           target=f"{export_id}/{name}", source=ctx.source, bytes=len(data))
        return web.Response(body=data, content_type=_EXPORT_FILES[name], headers={
            "Content-Disposition": f'attachment; filename="{export_id}-{name}"',
            "Cache-Control": "no-store"})

    async def escrow_decrypt(self, request: web.Request, ctx: Ctx) -> web.Response:
        """Open one stored E2EE message with the compliance escrow key (docs/e2ee.md
        section 10): auditor, fresh second factor, every attempt audited."""
        body = await json_body(request)
        conv = str(body.get("conversation_id", ""))
        try:
            seq = int(body.get("seq", 0))
        except (TypeError, ValueError):
            seq = 0
        if not conv or seq < 1:
            return _err(400, "INVALID_ARGUMENT", "give conversation_id and seq (>= 1)")
        target = f"conversation:{conv}:{seq}"
        e2ee_policy = self.node.keydir.policy

        async def refuse(status: int, error: str, reason: str) -> web.Response:
            await self.c.audit("escrow.decrypt", actor=ctx.user.id, actor_role=ctx.role,
                               target=target, outcome="failed", source=ctx.source, reason=reason)
            return _err(status, error, reason)

        key_file = self.node.cfg.e2ee.escrow_private_key_file
        if not e2ee_policy.escrow_key_id or not key_file or e2ee_policy.suite is None:
            return await refuse(503, "UNAVAILABLE", "compliance escrow is not configured on this "
                                "node (e2ee.escrow_public_key_file and escrow_private_key_file)")
        entry = await self.node.store.get_entry(conv, seq)
        if entry is None:
            return await refuse(404, "NOT_FOUND", f"no entry {seq} in {conv}")
        content = pb.Content.FromString(entry.content)
        if content.WhichOneof("body") != "encrypted":
            return await refuse(400, "INVALID_ARGUMENT", "that entry is not end-to-end encrypted")
        try:
            private = read_key_file(key_file)
            payload = escrow_open(e2ee_policy.suite, private, e2ee_policy.escrow_key_id, conv,
                                  entry.sender_id, content.encrypted)
        except OSError as exc:
            return await refuse(503, "UNAVAILABLE", f"cannot read the escrow private key: {exc}")
        except E2EEError as exc:
            return await refuse(422, "ESCROW_FAILED", str(exc))
        out: dict[str, Any] = {"conversation_id": conv, "seq": seq, "sender_id": entry.sender_id,
                               "sender_device": entry.sender_device, "sent_at_ms": entry.sent_at,
                               **payload_json(payload)}
        await self.c.audit("escrow.decrypt", actor=ctx.user.id, actor_role=ctx.role,
                           target=target, source=ctx.source, sender=entry.sender_id,
                           payload_kind=out["kind"], key_id=e2ee_policy.escrow_key_id)
        return web.json_response(out)

    async def report(self, request: web.Request, ctx: Ctx) -> web.Response:
        users = await self.node.store.list_users()
        store = self.node.store
        data = await build_report(self.c.cfg, self.c, users,
                                  generated_by=f"{ctx.user.username} ({ctx.role})",
                                  deks=cast("DekStore", store) if hasattr(store, "data_keys") else None)
        await self.c.audit("report.compliance", actor=ctx.user.id, actor_role=ctx.role,
                           source=ctx.source, summary=data["summary"])
        return web.json_response(data)


    # ---- auditor: backup, restore and DR drill evidence (演练报告) -------------------

    async def list_evidence(self, request: web.Request, ctx: Ctx) -> web.Response:
        """Every evidence file of the node's data directory (tongxin.compliance.evidence),
        newest first: kind, when, outcome, RPO/RTO of drills, backup id and size, the error."""
        from tongxin.compliance.evidence import list_evidence

        records = await asyncio.to_thread(list_evidence, self.node.cfg.home)
        await self.c.audit("evidence.list", actor=ctx.user.id, actor_role=ctx.role,
                           source=ctx.source, count=len(records))
        return web.json_response({"records": records})

    async def _evidence(self, ctx: Ctx, name: str, event: str,
                        ) -> tuple[str, bytes, dict[str, Any]] | web.Response:
        from tongxin.compliance.evidence import EvidenceNotFound, EvidenceRefused, read_evidence

        try:
            return await asyncio.to_thread(read_evidence, self.node.cfg.home, name)
        except EvidenceRefused as exc:
            await self.c.audit(event, actor=ctx.user.id, actor_role=ctx.role, target=name[:200],
                               outcome="denied", source=ctx.source, reason=str(exc)[:300])
            return _err(400, "INVALID_ARGUMENT", str(exc))
        except EvidenceNotFound:
            await self.c.audit(event, actor=ctx.user.id, actor_role=ctx.role, target=name[:200],
                               outcome="failed", source=ctx.source, reason="no such evidence file")
            return _err(404, "NOT_FOUND", f"no evidence file {name} on this node")

    async def evidence_file(self, request: web.Request, ctx: Ctx) -> web.Response:
        """One evidence file as it is on disk (JSON): the page's detail and its download."""
        from tongxin.compliance.evidence import has_html, summary

        name = request.match_info["name"]
        found = await self._evidence(ctx, name, "evidence.read")
        if isinstance(found, web.Response):
            return found
        _kind, data, doc = found
        await self.c.audit("evidence.read", actor=ctx.user.id, actor_role=ctx.role, target=name,
                           source=ctx.source, bytes=len(data))
        if request.query.get("download") == "1":
            return web.Response(body=data, content_type="application/json", headers={
                "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})
        return web.json_response({**summary(name, doc), "html": has_html(self.node.cfg.home, name),
                                  "report": doc}, headers={"Cache-Control": "no-store"})

    async def evidence_html(self, request: web.Request, ctx: Ctx) -> web.Response:
        """A DR drill report as its HTML page, rendered again here from the JSON (every
        value escaped), not the file beside it read back: a page that runs nothing
        (CSP: no script, nothing loaded; sandboxed)."""
        from tongxin.drill.html import render_html

        name = request.match_info["name"]
        found = await self._evidence(ctx, name, "evidence.html")
        if isinstance(found, web.Response):
            return found
        kind, _data, doc = found
        if kind != "dr-drill":
            return _err(404, "NOT_FOUND", f"{name} is not a DR drill report: it has no HTML page")
        try:
            page = await asyncio.to_thread(render_html, doc)
        except (KeyError, TypeError, ValueError) as exc:
            await self.c.audit("evidence.html", actor=ctx.user.id, actor_role=ctx.role, target=name,
                               outcome="failed", source=ctx.source, reason=f"cannot render: {exc!r}")
            return _err(422, "INVALID_ARGUMENT", f"{name} is not a complete drill report")
        await self.c.audit("evidence.html", actor=ctx.user.id, actor_role=ctx.role, target=name,
                           source=ctx.source)
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers={
            "Content-Security-Policy": EVIDENCE_HTML_CSP, "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store"})


# The drill report's page: inline styles and inline SVG charts, nothing else.
EVIDENCE_HTML_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                     "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox")

ADMIN_API = web.AppKey("tongxin_admin_api", AdminApi)

@dataclass(slots=True)
class AtRestRotation:
    """One master key rotation run by this node's admin API (GET /keys/atrest shows it)."""

    started_at: int
    by: str
    state: str = "running"  # running, done, partial (run again), failed
    old_kek: str = ""
    kek: str = ""
    resumed: bool = False
    total: int = 0  # data keys to re-wrap when it started
    rewrapped: int = 0
    retired: list[str] = field(default_factory=list)
    finished_at: int | None = None
    error: str = ""

    def finish(self, state: str, error: str = "") -> None:
        self.state, self.error, self.finished_at = state, error, now_ms()

    def view(self) -> dict[str, Any]:
        return asdict(self)



def add_routes(app: web.Application, node: Node) -> None:
    api = AdminApi(node)
    app[ADMIN_API] = api
    # Registered after the node's own hooks (see Node.app): startup needs node.accounts.
    app.on_startup.append(api.on_startup)
    app.on_cleanup.append(api.on_cleanup)
    r, g, p = app.router, api.guard, PREFIX
    r.add_post(f"{p}/login", api.login)
    r.add_post(f"{p}/login/sms", api.login_sms)
    r.add_post(f"{p}/password", api.change_password)
    r.add_post(f"{p}/sms", g("session.sms", api.session_sms))
    r.add_get(f"{p}/whoami", g("session.read", api.whoami))
    r.add_post(f"{p}/logout", g("session.logout", api.logout))
    # sysadmin
    r.add_get(f"{p}/users", g("user.list", api.list_users))
    r.add_post(f"{p}/users", g("user.create", api.create_user))
    for action, verb in (("disable", "disable"), ("enable", "enable"), ("unlock", "unlock"),
                         ("revoke_tokens", "revoke-tokens"), ("reset_password", "password")):
        r.add_post(f"{p}/users/{{name}}/{verb}", g(f"user.{action}", api.user_action(action)))
    r.add_delete(f"{p}/users/{{name}}", g("user.delete", api.user_action("delete")))
    r.add_get(f"{p}/org", g("org.list", api.list_org))
    r.add_post(f"{p}/org", g("org.manage", api.create_org))
    r.add_patch(f"{p}/org/{{unit_id}}", g("org.manage", api.update_org))
    r.add_delete(f"{p}/org/{{unit_id}}", g("org.manage", api.delete_org))
    r.add_put(f"{p}/users/{{name}}/unit", g("org.manage", api.assign_unit))
    r.add_delete(f"{p}/users/{{name}}/unit", g("org.manage", api.assign_unit))
    r.add_get(f"{p}/groups", g("group.list", api.list_groups))
    r.add_get(f"{p}/groups/{{conversation_id}}/members", g("group.list", api.group_members))
    r.add_get(f"{p}/node", g("node.status", api.node_status))
    r.add_get(f"{p}/site", g("node.status", api.site_status))
    r.add_get(f"{p}/nodes", g("node.status", api.list_nodes))
    r.add_get(f"{p}/config", g("config.read", api.config_view))
    # secadmin
    r.add_get(f"{p}/roles", g("role.list", api.list_roles))
    r.add_get(f"{p}/policy", g("policy.read", api.policy))
    r.add_put(f"{p}/policy", g("policy.set", api.set_policy))
    r.add_post(f"{p}/users/{{name}}/sign-out", g("admin.sign_out", api.sign_out_admin))
    sessions_api.add_routes(r, p, api)
    r.add_put(f"{p}/users/{{name}}/role", g("role.assign", api.assign_role))
    r.add_post(f"{p}/users/{{name}}/totp", g("totp.reset", api.reset_totp))
    r.add_put(f"{p}/users/{{name}}/sms", g("sms.enroll", api.enroll_sms))
    r.add_delete(f"{p}/users/{{name}}/sms", g("sms.enroll", api.enroll_sms))
    r.add_post(f"{p}/users/{{name}}/sms/confirm", g("sms.confirm", api.enroll_sms))
    r.add_get(f"{p}/keys/audit", g("key.read", api.audit_key))
    r.add_post(f"{p}/keys/audit/rotate", g("key.rotate", api.rotate_key))
    r.add_get(f"{p}/keys/atrest", g("key.read", api.atrest_status))
    r.add_get(f"{p}/keys/atrest/rotation", g("key.read", api.atrest_rotation))
    r.add_post(f"{p}/keys/atrest/rotate", g("key.rotate", api.atrest_rotate))
    r.add_get(f"{p}/retention", g("retention.read", api.get_retention))
    # the same answer for the auditor, who checks what the secadmin set
    r.add_get(f"{p}/audit/retention", g("retention.inspect", api.get_retention))
    r.add_put(f"{p}/retention", g("retention.set", api.set_retention))
    r.add_get(f"{p}/holds", g("hold.list", api.list_holds))
    r.add_post(f"{p}/holds", g("hold.set", api.add_hold))
    r.add_delete(f"{p}/holds/{{hold_id}}", g("hold.release", api.release_hold))
    # auditor
    r.add_get(f"{p}/audit", g("audit.read", api.read_audit))
    # the whole result of a search as a file: the same operation, so the same role
    r.add_get(f"{p}/audit/download", g("audit.read", AuditDownload(api).download))
    r.add_post(f"{p}/audit/verify", g("audit.verify", api.verify_audit))
    r.add_post(f"{p}/audit/sign", g("audit.sign", api.sign_audit))
    r.add_post(f"{p}/export", g("export.messages", api.export))
    r.add_get(f"{p}/exports/{{export_id}}/{{name}}", g("export.download", api.export_file))
    r.add_get(f"{p}/report", g("report.read", api.report))
    r.add_get(f"{p}/evidence", g("report.read", api.list_evidence))
    r.add_get(f"{p}/evidence/{{name}}", g("report.read", api.evidence_file))
    r.add_get(f"{p}/evidence/{{name}}/html", g("report.read", api.evidence_html))
    r.add_post(f"{p}/e2ee/escrow-decrypt", g("escrow.decrypt", api.escrow_decrypt))
    # two-person escrow decryption (issue 16): the auditor asks, the secadmin approves
    escrow = EscrowAccess(api)
    r.add_post(f"{p}/e2ee/escrow-requests", g("escrow.request", escrow.request))
    r.add_get(f"{p}/e2ee/escrow-requests", g("escrow.list", escrow.pending))
    r.add_post(f"{p}/e2ee/escrow-requests/{{request_id}}/approve",
               g("escrow.approve", escrow.approve))
    r.add_get(f"{p}/e2ee/escrow-requests/{{request_id}}", g("escrow.decrypt", escrow.collect))

"""Accounts: registration, password login with lockout, token issue and checks."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tongxin.auth.passwords import check_policy, hash_password, verify_password
from tongxin.auth.revocation import NoRevocations, Revocations
from tongxin.auth.tokens import Claims, TokenError, TokenSigner
from tongxin.clock import now_ms
from tongxin.compliance.roles import ADMIN_ROLES
from tongxin.config import AccountsConfig
from tongxin.errors import RequestError
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import ChatStore, Conflict, StoreError, User

log = logging.getLogger("tongxin.accounts")
DAY_MS = 86_400_000
# Token use is written at most this often (and at most every quarter of the
# idle timeout), so a busy session costs one store write a minute.
TOUCH_INTERVAL_MS = 60_000

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
DEVICE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# (event, fields): where security events go (tongxin.compliance.service.Compliance.hook,
# wired by the node). Unset, nothing is recorded.
AuditHook = Callable[[str, dict[str, Any]], Awaitable[None]]

# (user_id, token_id, issued_before_ms): end the live sessions a revocation
# covers, on every node (tongxin.server.session_end, wired by the node). One
# token when token_id is set; else every token issued at or before the time.
SessionsHook = Callable[[str, str, int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    device_id: str
    token: str
    claims: Claims


class Accounts:
    def __init__(self, store: ChatStore, signer: TokenSigner, cfg: AccountsConfig,
                 revocations: Revocations | None = None) -> None:
        self.store = store
        self.signer = signer
        self.cfg = cfg
        # Published revocations in front of the store (Redis with many nodes);
        # revoke(), revoke_user() and resume() are the only users.
        self.revocations: Revocations = revocations or NoRevocations()
        self.audit: AuditHook | None = None
        self.end_sessions: SessionsHook | None = None
        # A hash of a random password, checked when the username does not exist
        # so that "no such user" and "wrong password" take the same time: it
        # must cost what real hashes cost (scrypt_n), or timing reveals names.
        self._dummy_hash = hash_password(secrets.token_hex(8), n=cfg.scrypt_n)
        self._touched: dict[str, int] = {}  # token id -> last use written (ms)

    async def _hash(self, password: str) -> str:
        # scrypt is deliberately slow (~50 ms); keep it off the event loop.
        return await asyncio.to_thread(hash_password, password, self.cfg.scrypt_n)

    async def create_user(self, username: str, password: str, display_name: str = "",
                          role: str = "user") -> User:
        username = username.strip().lower()
        if not USERNAME_RE.match(username):
            raise RequestError(pb.INVALID_ARGUMENT,
                               "username must be 2-32 of a-z 0-9 . _ - starting with a letter "
                               "or digit")
        why = self.policy_error(password)
        if why:
            await self._emit("password.policy", target=username[:64], outcome="denied",
                             via="create", reason=why)
            raise RequestError(pb.INVALID_ARGUMENT, why)
        user = User(id="u_" + uuid.uuid4().hex[:20], username=username,
                    display_name=(display_name.strip() or username)[:64],
                    password_hash=await self._hash(password), role=role, created_at=now_ms())
        try:
            return await self.store.create_user(user)
        except Conflict as exc:
            raise RequestError(pb.CONFLICT, str(exc)) from exc

    async def register(self, username: str, password: str, display_name: str,
                       device_id: str) -> Session:
        """Self-registration (the WS REGISTER frame): a new ordinary account and its first
        token. Both the account and every refusal are audited (``user.register``), as an
        account an administrator creates is, so the audit trail covers every user."""
        name = username.strip().lower()[:64]
        if not self.cfg.self_registration:
            await self._emit("user.register", target=name, outcome="denied",
                             reason="self-registration is disabled")
            raise RequestError(pb.REGISTRATION_DISABLED,
                               "self-registration is disabled; ask an administrator for an account")
        try:
            user = await self.create_user(username, password, display_name)
        except RequestError as err:
            await self._emit("user.register", target=name, outcome="denied", reason=err.message)
            raise
        session = await self.issue(user, device_id)
        await self._emit("user.register", actor=user.id, actor_role=user.role,
                         target=user.username, user_id=user.id, via="self-registration",
                         device=session.device_id, token_id=session.claims.token_id)
        return session

    async def _emit(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            await self.audit(event, fields)

    async def login(self, username: str, password: str, device_id: str) -> Session:
        user = await self.authenticate(username, password, clear_failures=False)
        if user.role in ADMIN_ROLES:
            # Separation of duties: administrative accounts are not chat
            # accounts, and they never get a token without a second factor.
            await self._emit("auth.login", actor=user.id, actor_role=user.role,
                             target=user.username, outcome="denied",
                             reason="administrative account at the chat login")
            raise RequestError(pb.FORBIDDEN, "administrative accounts sign in at "
                               "/api/v1/admin/login with a second factor")
        if await self.password_expired(user):
            await self._emit("auth.login", actor=user.id, actor_role=user.role,
                             target=user.username, outcome="denied", reason="password expired")
            raise RequestError(pb.PASSWORD_EXPIRED, "the password has expired: change it with "
                               "POST /api/v1/password (username, old_password, new_password), "
                               "then log in")
        if user.failed_logins:
            await self.store.update_login_state(user.id, 0, 0, 0)
        session = await self.issue(user, device_id)
        await self._emit("auth.login", actor=user.id, actor_role=user.role, target=user.username,
                         device=session.device_id, token_id=session.claims.token_id)
        return session

    async def authenticate(self, username: str, password: str, *,
                           clear_failures: bool = True, event: str = "auth.login") -> User:
        """Check a password, counting failures towards the lockout.

        ``event`` names the audit records of refusals (a password change
        checks the old password here too).
        """
        name = username.strip().lower()
        user = await self.store.get_user_by_name(name)
        now = now_ms()
        if user is None:
            await asyncio.to_thread(verify_password, password, self._dummy_hash)
            await self._emit(event, target=name[:64], outcome="failed", reason="unknown user")
            raise RequestError(pb.AUTH_FAILED, "wrong username or password")
        if user.disabled:
            await self._emit(event, actor=user.id, target=name, outcome="denied",
                             reason="account disabled")
            raise RequestError(pb.ACCOUNT_LOCKED, "account is disabled")
        if user.locked_until > now:
            await self._emit(event, actor=user.id, target=name, outcome="denied",
                             reason="account locked")
            raise RequestError(pb.ACCOUNT_LOCKED, "account is locked after repeated failures",
                               retry_after_ms=user.locked_until - now)
        ok = await asyncio.to_thread(verify_password, password, user.password_hash)
        if not ok:
            await self._emit(event, actor=user.id, target=name, outcome="failed",
                             reason="wrong password")
            await self._record_failure(user, now)
            raise RequestError(pb.AUTH_FAILED, "wrong username or password")
        if clear_failures and user.failed_logins:
            await self.store.update_login_state(user.id, 0, 0, 0)
        return user

    async def record_failure(self, user: User) -> None:
        """A failed second factor counts like a wrong password."""
        await self._record_failure(user, now_ms())

    async def _record_failure(self, user: User, now: int) -> None:
        window_ms = int(self.cfg.lockout_window * 1000)
        if user.first_failure_at and now - user.first_failure_at <= window_ms:
            failures, first = user.failed_logins + 1, user.first_failure_at
        else:
            failures, first = 1, now
        locked_until = 0
        if failures >= self.cfg.lockout_threshold:
            locked_until = now + int(self.cfg.lockout_duration * 1000)
            failures, first = 0, 0
            await self._emit("auth.lockout", actor=user.id, target=user.username,
                             outcome="locked", until=locked_until)
        await self.store.update_login_state(user.id, failures, first, locked_until)

    async def issue(self, user: User, device_id: str) -> Session:
        device_id = device_id or "d_" + uuid.uuid4().hex[:12]
        if not DEVICE_RE.match(device_id):
            raise RequestError(pb.INVALID_ARGUMENT, "device_id must be 1-64 of A-Z a-z 0-9 . _ : -")
        now = now_ms()
        claims = Claims(uuid.uuid4().hex, user.id, device_id, now,
                        now + int(self.cfg.token_ttl * 1000))
        await self.store.add_token(claims.token_id, user.id, device_id, now, claims.expires_at_ms)
        return Session(user, device_id, self.signer.sign(claims), claims)

    async def resume(self, token: str, device_id: str) -> Session:
        try:
            claims = self.signer.verify(token, now_ms())
        except TokenError as exc:
            code = pb.TOKEN_EXPIRED if exc.expired else pb.TOKEN_INVALID
            raise RequestError(code, str(exc)) from exc
        if device_id and device_id != claims.device_id:
            raise RequestError(pb.TOKEN_INVALID, "token was issued to another device")
        # A published revocation answers without the store (and while it is
        # down); no answer there is never "valid": the store decides.
        if await self.revocations.revoked(claims.user_id, claims.token_id, claims.issued_at_ms):
            raise RequestError(pb.TOKEN_REVOKED, "token has been revoked")
        revoked = await self.store.token_revoked(claims.token_id)
        if revoked is None:
            raise RequestError(pb.TOKEN_INVALID, "token is unknown to this installation")
        if revoked:
            raise RequestError(pb.TOKEN_REVOKED, "token has been revoked")
        await self._check_idle(claims)
        user = await self.store.get_user(claims.user_id)
        if user is None or user.disabled:
            raise RequestError(pb.ACCOUNT_LOCKED, "account is disabled")
        return Session(user, claims.device_id, token, claims)

    # Every revocation goes through revoke() or revoke_user(): the store
    # first (the source of truth; if it fails, nothing is published), then
    # the shared revocation list, whose failure only costs store reads.

    async def revoke(self, token_id: str, user_id: str, expires_at_ms: int,
                     reason: str = "logout") -> bool:
        """Revoke one token (logout; a security administrator's force logout)."""
        revoked = await self.store.revoke_token(token_id, now_ms())
        await self.revocations.revoke_token(user_id, token_id, expires_at_ms)
        if revoked:
            await self._emit("auth.token_revoked", target=token_id, reason=reason)
        if self.end_sessions is not None:
            await self.end_sessions(user_id, token_id, 0)
        return revoked

    async def revoke_user(self, user_id: str) -> int:
        """Revoke every token of a user (disable, password change, revoke-tokens,
        role change, delete); returns how many the store revoked."""
        now = now_ms()
        count = await self.store.revoke_user_tokens(user_id, now)
        await self.revocations.revoke_user(user_id, now, int(self.cfg.token_ttl * 1000))
        if self.end_sessions is not None:
            await self.end_sessions(user_id, "", now)
        return count

    # ---- password policy (accounts.password_*) ----------------------------

    def policy_error(self, password: str) -> str | None:
        """Why length or character classes refuse the password, or None."""
        return check_policy(password, self.cfg.password_min_length, self.cfg.password_min_classes)

    async def password_changed_at(self, user: User) -> int:
        """When the current password was set; accounts without history: their creation."""
        newest = await self.store.password_history(user.id, 1)
        return newest[0][0] if newest else user.created_at

    async def password_expired(self, user: User, now: int | None = None) -> bool:
        days = self.cfg.password_max_age_days
        if days <= 0 or user.password_hash.startswith("!"):
            return False
        now = now_ms() if now is None else now
        return now - await self.password_changed_at(user) > days * DAY_MS

    async def _reused(self, user: User, password: str) -> bool:
        """Whether the password is one of the last ``password_history`` (current included)."""
        n = self.cfg.password_history
        if n <= 0:
            return False
        hashes = [user.password_hash]
        hashes += [h for _, h in await self.store.password_history(user.id, n)
                   if h != user.password_hash]
        for stored in hashes[:n]:
            if await asyncio.to_thread(verify_password, password, stored):
                return True
        return False

    async def set_password(self, user: User, password: str, *, actor: str, actor_role: str = "",
                           via: str, check_history: bool = True, source: str = "") -> int:
        """Set a new password under the policy, record it in the history and revoke
        the user's tokens; returns how many were revoked.

        ``via`` is ``self`` (the user, with the old password), ``admin`` (the
        admin API) or ``cli``. An administrator's reset is not checked against
        the history (the user chooses the next one). Refusals raise
        INVALID_ARGUMENT; they and the change are audited.
        """
        why = self.policy_error(password)
        if why is None and check_history and await self._reused(user, password):
            why = (f"the new password must differ from the last {self.cfg.password_history} "
                   "passwords")
        if why:
            await self._emit("password.policy", actor=actor, actor_role=actor_role,
                             target=user.username, outcome="denied", source=source, via=via,
                             user_id=user.id, reason=why)
            raise RequestError(pb.INVALID_ARGUMENT, why)
        hashed = await self._hash(password)
        await self.store.record_password(user.id, hashed, now_ms(), self.cfg.password_history)
        revoked = await self.revoke_user(user.id)
        await self._emit("password.change", actor=actor, actor_role=actor_role,
                         target=user.username, source=source, via=via, user_id=user.id,
                         revoked_tokens=revoked)
        return revoked

    async def change_own_password(self, username: str, old_password: str, new_password: str, *,
                                  allow_admin: bool = False, source: str = "") -> User:
        """A user changes their own password with the old one (also when it has
        expired). Administrative accounts only through the admin API
        (``allow_admin``), which checks their second factor too."""
        user = await self.authenticate(username, old_password, event="password.change")
        if user.role in ADMIN_ROLES and not allow_admin:
            await self._emit("password.change", actor=user.id, actor_role=user.role,
                             target=user.username, outcome="denied", source=source,
                             reason="administrative account: use /api/v1/admin/password")
            raise RequestError(pb.FORBIDDEN, "administrative accounts change their password at "
                               "/api/v1/admin/password with a second factor")
        await self.set_password(user, new_password, actor=user.id, actor_role=user.role,
                                via="self", source=source)
        return user

    # ---- session idle timeout (accounts.session_idle_timeout) ---------------

    async def _check_idle(self, claims: Claims) -> None:
        idle_ms = int(self.cfg.session_idle_timeout * 1000)
        if idle_ms <= 0:
            return
        now = now_ms()
        last = max(claims.issued_at_ms, self._touched.get(claims.token_id, 0),
                   await self.store.token_last_used(claims.token_id))
        if now - last > idle_ms:
            await self._emit("auth.idle_timeout", actor=claims.user_id, target=claims.token_id,
                             outcome="denied", idle_ms=now - last, device=claims.device_id)
            raise RequestError(pb.TOKEN_EXPIRED, "the token was not used for longer than the "
                               "session idle timeout; log in again")
        await self.touch(claims.token_id, now)

    async def touch(self, token_id: str, now: int | None = None, force: bool = False) -> None:
        """Record a use of the token (for the idle timeout), at most once a minute
        unless ``force`` (a connection closing). Never raises."""
        idle_ms = int(self.cfg.session_idle_timeout * 1000)
        if idle_ms <= 0:
            return
        now = now_ms() if now is None else now
        if not force and now - self._touched.get(token_id, 0) < min(TOUCH_INTERVAL_MS,
                                                                    idle_ms // 4):
            return
        self._touched[token_id] = now
        if len(self._touched) > 100_000:
            self._touched = {t: at for t, at in self._touched.items() if now - at < idle_ms}
        try:
            await self.store.touch_token(token_id, now)
        except StoreError as exc:
            log.warning("token use not recorded: %s", exc)

"""Accounts: registration, password login with lockout, token issue and checks."""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tongxin.auth.passwords import check_policy, hash_password, verify_password
from tongxin.auth.tokens import Claims, TokenError, TokenSigner
from tongxin.clock import now_ms
from tongxin.compliance.roles import ADMIN_ROLES
from tongxin.config import AccountsConfig
from tongxin.errors import RequestError
from tongxin.proto import tongxin_pb2 as pb
from tongxin.store.ports import ChatStore, Conflict, User

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
DEVICE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# (event, fields): where security events go (tongxin.compliance.service.Compliance.hook,
# wired by the node). Unset, nothing is recorded.
AuditHook = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    device_id: str
    token: str
    claims: Claims


class Accounts:
    def __init__(self, store: ChatStore, signer: TokenSigner, cfg: AccountsConfig) -> None:
        self.store = store
        self.signer = signer
        self.cfg = cfg
        self.audit: AuditHook | None = None
        # A hash of a random password, checked when the username does not exist
        # so that "no such user" and "wrong password" take the same time: it
        # must cost what real hashes cost (scrypt_n), or timing reveals names.
        self._dummy_hash = hash_password(secrets.token_hex(8), n=cfg.scrypt_n)

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
        why = check_policy(password, self.cfg.password_min_length)
        if why:
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
        if not self.cfg.self_registration:
            raise RequestError(pb.REGISTRATION_DISABLED,
                               "self-registration is disabled; ask an administrator for an account")
        user = await self.create_user(username, password, display_name)
        return await self.issue(user, device_id)

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
        if user.failed_logins:
            await self.store.update_login_state(user.id, 0, 0, 0)
        session = await self.issue(user, device_id)
        await self._emit("auth.login", actor=user.id, actor_role=user.role, target=user.username,
                         device=session.device_id, token_id=session.claims.token_id)
        return session

    async def authenticate(self, username: str, password: str, *,
                           clear_failures: bool = True) -> User:
        """Check a password, counting failures towards the lockout."""
        name = username.strip().lower()
        user = await self.store.get_user_by_name(name)
        now = now_ms()
        if user is None:
            await asyncio.to_thread(verify_password, password, self._dummy_hash)
            await self._emit("auth.login", target=name[:64], outcome="failed", reason="unknown user")
            raise RequestError(pb.AUTH_FAILED, "wrong username or password")
        if user.disabled:
            await self._emit("auth.login", actor=user.id, target=name, outcome="denied",
                             reason="account disabled")
            raise RequestError(pb.ACCOUNT_LOCKED, "account is disabled")
        if user.locked_until > now:
            await self._emit("auth.login", actor=user.id, target=name, outcome="denied",
                             reason="account locked")
            raise RequestError(pb.ACCOUNT_LOCKED, "account is locked after repeated failures",
                               retry_after_ms=user.locked_until - now)
        ok = await asyncio.to_thread(verify_password, password, user.password_hash)
        if not ok:
            await self._emit("auth.login", actor=user.id, target=name, outcome="failed",
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
        revoked = await self.store.token_revoked(claims.token_id)
        if revoked is None:
            raise RequestError(pb.TOKEN_INVALID, "token is unknown to this installation")
        if revoked:
            raise RequestError(pb.TOKEN_REVOKED, "token has been revoked")
        user = await self.store.get_user(claims.user_id)
        if user is None or user.disabled:
            raise RequestError(pb.ACCOUNT_LOCKED, "account is disabled")
        return Session(user, claims.device_id, token, claims)

    async def revoke(self, token_id: str) -> bool:
        revoked = await self.store.revoke_token(token_id, now_ms())
        if revoked:
            await self._emit("auth.token_revoked", target=token_id, reason="logout")
        return revoked

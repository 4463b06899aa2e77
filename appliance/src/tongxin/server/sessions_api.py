"""The accounts' live sessions and force logout, for the security administrator
(安全管理员; the console's 会话管理 page):

    GET    /sessions?user=&before=&limit=   user_session.list
    DELETE /sessions/{token_id}             user_session.revoke (step-up)
    DELETE /users/{name}/sessions           user_session.revoke (step-up)

A session is a login token neither revoked nor expired (the store's ``tokens`` table,
shared by every node and, through the database, every site): who, which device, when
it was issued (the login) and last recorded as used. What only a connection knows, the
client's address and since when it is connected, is known for the connections this
node holds (its hub); for the others presence says on which node(s) the user has a
device connected.

Force logout is the revocation every other path uses (``Accounts.revoke`` for one token,
``Accounts.revoke_user`` for all of a user's, as ``tongxin user revoke-tokens``): the
store first, then the shared revocation list, then the "end sessions" signal that
closes the client's connection on whichever node holds it (server/session_end.py).
One's own sessions are not ended here (log out instead). Every list, force logout and
refusal is audited (``user_session.list``, ``user_session.revoke``, with the actor).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tongxin.clock import now_ms
from tongxin.store.ports import TokenRow, Unavailable, User

if TYPE_CHECKING:
    from tongxin.server.admin_api import AdminApi, Ctx
    from tongxin.server.connection import Connection

PAGE = 50
"""Sessions one page of GET /sessions lists by default."""
PAGE_MAX = 200
"""The most one page lists."""
_CURSOR = re.compile(r"([0-9]{1,16}):([0-9a-f]{1,64})")
_TOKEN_ID = re.compile(r"[0-9a-f]{32}")


def _err(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


def parse_cursor(text: str) -> tuple[int, str] | None:
    """``before`` of GET /sessions: "<issued_at>:<token_id>" of the last row shown."""
    m = _CURSOR.fullmatch(text)
    if m is None:
        raise ValueError("before is <issued_at>:<token_id> as next_before gave it")
    return int(m.group(1)), m.group(2)


def _wall_ms(monotonic: float, now: int) -> int:
    """A connection's monotonic instant as epoch ms."""
    return now - int((time.monotonic() - monotonic) * 1000)


class SessionsApi:
    """``api`` is the admin API: its node (store, accounts, hub, presence) and its ``c``
    (the Compliance) that audits."""

    def __init__(self, api: AdminApi) -> None:
        self.api = api

    def _here(self, row: TokenRow) -> Connection | None:
        """This node's authenticated connection of the row's token, if it holds one."""
        conn = self.api.node.hub.devices.get(row.user_id, {}).get(row.device_id)
        s = None if conn is None else conn.session
        if conn is None or s is None or conn.closing or s.claims.token_id != row.token_id:
            return None
        return conn

    async def _elsewhere(self, user_ids: list[str]) -> dict[str, list[str]] | None:
        """user id -> the other nodes where presence has a device of theirs; None when
        presence cannot be read."""
        node = self.api.node
        try:
            routes = await node.presence.nodes_of(user_ids)
        except (Unavailable, OSError):
            return None
        out: dict[str, list[str]] = {}
        for node_id, users in routes.items():
            if node_id != node.node_id:
                for uid in users:
                    out.setdefault(uid, []).append(node_id)
        return {uid: sorted(nodes) for uid, nodes in out.items()}

    def _row(self, r: TokenRow, user: User | None, own: str, elsewhere: dict[str, list[str]] | None,
             now: int) -> dict[str, Any]:
        conn = self._here(r)
        live: dict[str, Any] | None = None
        last_seen = max(r.issued_at, r.last_used_at)  # the login is a use too
        if conn is not None:
            seen = _wall_ms(conn.last_seen, now)
            live = {"node": self.api.node.node_id, "address": conn.remote,
                    "connected_at": _wall_ms(conn.opened, now), "last_seen": seen}
            last_seen = max(last_seen, seen)
        return {"token_id": r.token_id, "user_id": r.user_id,
                "username": user.username if user else "", "display_name": user.display_name if user else "",
                "role": user.role if user else "", "device_id": r.device_id, "issued_at": r.issued_at,
                "expires_at": r.expires_at, "last_seen": last_seen, "current": r.token_id == own,
                "here": live, "online_nodes": None if elsewhere is None else elsewhere.get(r.user_id, [])}

    async def list(self, request: web.Request, ctx: Ctx) -> web.Response:
        comp, store = self.api.c, self.api.node.store
        q = request.query
        try:
            limit = int(q.get("limit", PAGE))
            if not 1 <= limit <= PAGE_MAX:
                raise ValueError(f"limit is 1-{PAGE_MAX}")
            before = parse_cursor(q["before"]) if q.get("before") else None
        except ValueError as exc:
            return _err(400, "INVALID_ARGUMENT", str(exc))
        name = q.get("user", "").strip().lower()
        target: User | None = None
        if name:
            target = await store.get_user_by_name(name)
            if target is None:
                await comp.audit("user_session.list", actor=ctx.user.id, actor_role=ctx.role,
                                 target=name[:64], outcome="denied", source=ctx.source,
                                 reason="no such user")
                return _err(404, "NOT_FOUND", f"no user {name!r}")
        now = now_ms()
        rows = await store.live_tokens(target.id if target else "", now, before, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        ids = sorted({r.user_id for r in rows})
        users = dict(zip(ids, await asyncio.gather(*(store.get_user(i) for i in ids)), strict=True))
        elsewhere = await self._elsewhere(ids) if ids else {}
        out = [self._row(r, users.get(r.user_id), ctx.session.token_id, elsewhere, now)
               for r in rows]
        await comp.audit("user_session.list", actor=ctx.user.id, actor_role=ctx.role,
                         target=target.username if target else "*", source=ctx.source,
                         count=len(out))
        last = rows[-1] if rows else None
        return web.json_response({
            "node": self.api.node.node_id, "sessions": out, "more": more,
            "next_before": f"{last.issued_at}:{last.token_id}" if more and last else "",
            "presence": elsewhere is not None})

    async def _refuse(self, ctx: Ctx, status: int, error: str, target: str, reason: str,
                      **fields: Any) -> web.Response:
        await self.api.c.audit("user_session.revoke", actor=ctx.user.id, actor_role=ctx.role,
                               target=target, outcome="denied", source=ctx.source, reason=reason,
                               **fields)
        return _err(status, error, reason)

    async def revoke_one(self, request: web.Request, ctx: Ctx) -> web.Response:
        """Force one session out: its token revoked everywhere, its connection closed."""
        token_id = request.match_info["token_id"].strip().lower()
        if not _TOKEN_ID.fullmatch(token_id):
            return await self._refuse(ctx, 400, "INVALID_ARGUMENT", token_id[:64],
                                      "not a session id", scope="one")
        store, accounts = self.api.node.store, self.api.node.accounts
        row = await self._find(token_id)
        if row is None:
            return await self._refuse(ctx, 404, "NOT_FOUND", token_id,
                                      "no such live session (ended, expired or unknown)",
                                      scope="one", token_id=token_id)
        user = await store.get_user(row.user_id)
        who = user.username if user else row.user_id
        if row.user_id == ctx.user.id:
            return await self._refuse(ctx, 403, "FORBIDDEN", who,
                                      "your own session: log out instead", scope="one",
                                      token_id=token_id)
        revoked = await accounts.revoke(row.token_id, row.user_id, row.expires_at,
                                        reason="force logout")
        await self.api.c.audit("user_session.revoke", actor=ctx.user.id, actor_role=ctx.role,
                               target=who, source=ctx.source, scope="one", user_id=row.user_id,
                               token_id=row.token_id, device=row.device_id,
                               revoked_tokens=int(revoked))
        return web.json_response({"username": who, "token_id": row.token_id,
                                  "device_id": row.device_id, "revoked_tokens": int(revoked)})

    async def _find(self, token_id: str) -> TokenRow | None:
        rows = await self.api.node.store.live_tokens("", now_ms(), None, 1, token_id=token_id)
        return rows[0] if rows else None

    async def revoke_user(self, request: web.Request, ctx: Ctx) -> web.Response:
        """Force every session of a user out: ``Accounts.revoke_user``, as
        ``tongxin user revoke-tokens`` does."""
        name = request.match_info["name"].strip().lower()
        user = await self.api.node.store.get_user_by_name(name)
        if user is None:
            return await self._refuse(ctx, 404, "NOT_FOUND", name[:64], "no such user", scope="all")
        if user.id == ctx.user.id:
            return await self._refuse(ctx, 403, "FORBIDDEN", user.username,
                                      "your own sessions: log out instead", scope="all")
        revoked = await self.api.node.accounts.revoke_user(user.id)
        await self.api.c.audit("user_session.revoke", actor=ctx.user.id, actor_role=ctx.role,
                               target=user.username, source=ctx.source, scope="all",
                               user_id=user.id, revoked_tokens=revoked)
        return web.json_response({"username": user.username, "revoked_tokens": revoked})


def add_routes(r: web.UrlDispatcher, prefix: str, api: AdminApi) -> None:
    s = SessionsApi(api)
    g = api.guard
    r.add_get(f"{prefix}/sessions", g("user_session.list", s.list))
    r.add_delete(f"{prefix}/sessions/{{token_id}}", g("user_session.revoke", s.revoke_one))
    r.add_delete(f"{prefix}/users/{{name}}/sessions", g("user_session.revoke", s.revoke_user))

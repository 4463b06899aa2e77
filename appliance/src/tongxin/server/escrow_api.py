"""Two-person escrow decryption (issue 16; docs/compliance.md, "Escrow decryption").

    POST /e2ee/escrow-requests                 auditor: {conversation_id, from_ms, to_ms,
                                               reason, share} -> {request_id, expires_at_ms}
    GET  /e2ee/escrow-requests                 security administrator: the open requests of
                                               this node (what to approve), never a share or
                                               a result
    POST /e2ee/escrow-requests/{id}/approve    security administrator: {share}
    GET  /e2ee/escrow-requests/{id}            the requesting auditor: the decrypted entries,
                                               once

Each step needs the role's fresh second factor (the admin API's step-up) and is audited
(``escrow.request``, ``escrow.approve``, ``escrow.decrypt``, refusals included). The escrow
private key is on the node only sealed (:mod:`tongxin.compliance.escrow_shares`); it is
opened in memory when the second, different person approves with a second share, used for
the requested conversation and time range only, and dropped. Shares and results live in
this process's memory only (never in the database or the audit trail), so a request is
approved and collected on the node that took it, within ``REQUEST_TTL``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from tongxin.compliance.escrow_shares import SealedKey, Share, ShareError, combine
from tongxin.compliance.export import entries_in_range
from tongxin.crypto.suite import CryptoSuite
from tongxin.e2ee.errors import E2EEError
from tongxin.e2ee.escrow import open_envelope
from tongxin.proto import tongxin_pb2 as pb

REQUEST_TTL = 3600.0
"""Seconds a request waits for approval, and an approved one for collection."""
MAX_RANGE_MS = 366 * 86400 * 1000
"""The widest time range one request may cover: a scope, not a way round it."""
MAX_PENDING = 100


class _User(Protocol):
    @property
    def id(self) -> str: ...


class _Ctx(Protocol):
    """What the admin API's Ctx gives a handler (read only)."""
    @property
    def user(self) -> _User: ...
    @property
    def role(self) -> str: ...
    @property
    def source(self) -> str: ...


@dataclass
class EscrowRequest:
    request_id: str
    requester: str
    conversation_id: str
    from_ms: int
    to_ms: int
    reason: str
    share: Share
    expires_at: float
    approver: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"conversation:{self.conversation_id}"

    def scope(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "from_ms": self.from_ms, "to_ms": self.to_ms}


def _err(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


def payload_json(payload: Any) -> dict[str, Any]:
    """An opened E2EE payload as the admin API answers it (both escrow endpoints)."""
    which = payload.WhichOneof("body")
    out: dict[str, Any] = {"kind": which or ""}
    if which == "text":
        out["text"] = payload.text
    elif which == "attachment":
        a = payload.attachment
        out["attachment"] = {"file_id": a.file_id, "name": a.name, "size": a.size,
                             "content_type": a.content_type, "key": a.key.hex(),
                             "nonce": a.nonce.hex()}
    return out


class EscrowAccess:
    """The requests of one node. ``api`` is the admin API: its ``node`` gives ``cfg``,
    ``store`` and ``keydir.policy``, its ``c`` the Compliance (made at startup) that
    audits."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.requests: dict[str, EscrowRequest] = {}

    @property
    def node(self) -> Any:
        return self.api.node

    @property
    def c(self) -> Any:
        return self.api.c

    # ---- helpers ------------------------------------------------------------------------

    def _expire(self) -> None:
        now = time.monotonic()
        for rid in [r for r, req in self.requests.items() if req.expires_at < now]:
            del self.requests[rid]

    def _sealed(self) -> tuple[CryptoSuite, SealedKey] | str:
        """The suite and sealed key, or why two-person escrow is not configured here."""
        policy = self.node.keydir.policy
        path = self.node.cfg.e2ee.escrow_sealed_key_file
        if not policy.escrow_key_id or policy.suite is None or not path:
            return ("two-person escrow decryption is not configured on this node "
                    "(e2ee.escrow_public_key_file and e2ee.escrow_sealed_key_file)")
        try:
            sealed = SealedKey.read(path)
        except (OSError, ValueError) as exc:
            return f"cannot read the sealed escrow key: {exc}"
        if sealed.key_id != policy.escrow_key_id:
            # An older sealed key could still open older messages, but the node is set up
            # for one key: say so rather than decrypt with a key nobody expects.
            return (f"the sealed escrow key is {sealed.key_id}, the current escrow key is "
                    f"{policy.escrow_key_id}")
        return policy.suite, sealed

    async def _audit(self, event: str, ctx: _Ctx, target: str, outcome: str = "ok",
                     **details: Any) -> None:
        await self.c.audit(event, actor=ctx.user.id, actor_role=ctx.role, target=target,
                           outcome=outcome, source=ctx.source, **details)

    # ---- the three steps --------------------------------------------------------------------

    async def request(self, request: web.Request, ctx: _Ctx) -> web.Response:
        """The auditor asks, with their share, for one conversation and time range."""
        try:
            body = await request.json()
            conv = str(body["conversation_id"])
            from_ms, to_ms = int(body["from_ms"]), int(body["to_ms"])
            reason = str(body.get("reason", "")).strip()
            share = Share.parse(str(body["share"]))
        except (ValueError, KeyError, TypeError) as exc:
            await self._audit("escrow.request", ctx, "", "failed", reason=f"bad request: {exc}")
            return _err(400, "INVALID_ARGUMENT", "give conversation_id, from_ms, to_ms, reason "
                        f"and share ({exc})")
        target = f"conversation:{conv}"
        problem = ""
        if not conv or to_ms <= from_ms or to_ms - from_ms > MAX_RANGE_MS:
            problem = "conversation_id and a time range from_ms < to_ms of at most 366 days"
        elif not reason:
            problem = "give the reason (it is audited)"
        if problem:
            await self._audit("escrow.request", ctx, target, "failed", reason=problem)
            return _err(400, "INVALID_ARGUMENT", problem)
        sealed = self._sealed()
        if isinstance(sealed, str):
            await self._audit("escrow.request", ctx, target, "failed", reason=sealed)
            return _err(503, "UNAVAILABLE", sealed)
        if share.key_id != sealed[1].key_id:
            why = f"the share is for escrow key {share.key_id}, not {sealed[1].key_id}"
            await self._audit("escrow.request", ctx, target, "failed", reason=why)
            return _err(400, "INVALID_ARGUMENT", why)
        self._expire()
        if len(self.requests) >= MAX_PENDING:
            await self._audit("escrow.request", ctx, target, "failed", reason="too many open")
            return _err(429, "RATE_LIMITED", "too many open escrow requests on this node")
        req = EscrowRequest(uuid.uuid4().hex, ctx.user.id, conv, from_ms, to_ms, reason, share,
                            time.monotonic() + REQUEST_TTL)
        self.requests[req.request_id] = req
        await self._audit("escrow.request", ctx, target, reason=reason, share_index=share.index,
                          **req.scope())
        return web.json_response({"request_id": req.request_id, "conversation_id": conv,
                                  "from_ms": from_ms, "to_ms": to_ms,
                                  "expires_in_s": int(REQUEST_TTL)}, status=201)

    async def pending(self, request: web.Request, ctx: _Ctx) -> web.Response:
        """The security administrator's list of this node's open requests, oldest first: who
        asked, for what and why, and whether it is approved and waiting to be collected. The
        shares and the decrypted entries are not in it."""
        self._expire()
        now = time.monotonic()
        names: dict[str, str] = {}
        for req in self.requests.values():
            if req.requester not in names:
                user = await self.node.store.get_user(req.requester)
                names[req.requester] = user.username if user else ""
        items = [{"request_id": r.request_id, "requester_id": r.requester,
                  "requester": names.get(r.requester, ""), "conversation_id": r.conversation_id,
                  "from_ms": r.from_ms, "to_ms": r.to_ms, "reason": r.reason,
                  "approved": bool(r.approver), "expires_in_s": max(0, int(r.expires_at - now))}
                 for r in sorted(self.requests.values(), key=lambda r: r.expires_at)]
        await self._audit("escrow.list", ctx, "escrow-requests", count=len(items))
        return web.json_response({"requests": items})

    async def approve(self, request: web.Request, ctx: _Ctx) -> web.Response:
        """The security administrator, another person, approves with a second share; the
        node opens the key in memory and decrypts the scope for the requester."""
        self._expire()
        rid = request.match_info["request_id"]
        req = self.requests.get(rid)
        if req is None:
            await self._audit("escrow.approve", ctx, f"escrow-request:{rid}", "failed",
                              reason="no such open request on this node", request_id=rid)
            return _err(404, "NOT_FOUND", "no such open escrow request on this node")

        async def refuse(status: int, error: str, why: str, outcome: str = "denied") -> web.Response:
            await self._audit("escrow.approve", ctx, req.target, outcome, reason=why,
                              requester=req.requester, **req.scope())
            return _err(status, error, why)

        if req.approver:
            return await refuse(409, "CONFLICT", "this request is already approved")
        if ctx.user.id == req.requester:
            return await refuse(403, "FORBIDDEN", "the requester cannot approve their own "
                                "escrow request (two people)")
        try:
            body = await request.json()
            share = Share.parse(str(body["share"]))
        except (ValueError, KeyError, TypeError) as exc:
            return await refuse(400, "INVALID_ARGUMENT", f"give share ({exc})", "failed")
        if share.index == req.share.index:
            return await refuse(403, "FORBIDDEN", "that is the requester's share; the approval "
                                "needs a second, different share")
        sealed = self._sealed()
        if isinstance(sealed, str):
            return await refuse(503, "UNAVAILABLE", sealed, "failed")
        suite, key = sealed
        try:
            private = combine(suite, key, [req.share, share])
        except ShareError as exc:
            return await refuse(403, "ESCROW_SHARES", str(exc), "failed")
        try:
            results = await self._decrypt(suite, key.key_id, private, req)
        finally:
            del private  # the only reference: the opened key lives as long as this call
        req.approver, req.results = ctx.user.id, results
        req.expires_at = time.monotonic() + REQUEST_TTL
        await self._audit("escrow.approve", ctx, req.target, requester=req.requester,
                          entries=len(results), reason=req.reason, key_id=key.key_id,
                          **req.scope())
        return web.json_response({"request_id": rid, "approved": True, "entries": len(results)})

    async def collect(self, request: web.Request, ctx: _Ctx) -> web.Response:
        """The requesting auditor reads the result of an approved request, once."""
        self._expire()
        rid = request.match_info["request_id"]
        req = self.requests.get(rid)
        target = req.target if req else f"escrow-request:{rid}"
        if req is None or req.requester != ctx.user.id:
            # Another auditor gets the same answer as for no request: they did not ask.
            await self._audit("escrow.decrypt", ctx, target, "denied",
                              reason="no such request of this auditor on this node",
                              request_id=rid)
            return _err(404, "NOT_FOUND", "no such escrow request of yours on this node")
        if not req.approver:
            await self._audit("escrow.decrypt", ctx, target, "denied",
                              reason="not approved yet", **req.scope())
            return _err(409, "NOT_APPROVED", "the security administrator has not approved "
                        "this request yet")
        del self.requests[rid]
        await self._audit("escrow.decrypt", ctx, target, approver=req.approver,
                          entries=len(req.results), reason=req.reason, **req.scope())
        return web.json_response({"request_id": rid, "conversation_id": req.conversation_id,
                                  "from_ms": req.from_ms, "to_ms": req.to_ms,
                                  "approved_by": req.approver, "entries": req.results})

    async def _decrypt(self, suite: CryptoSuite, key_id: str, private: bytes,
                       req: EscrowRequest) -> list[dict[str, Any]]:
        """Every encrypted entry of the conversation in the range; one that does not open is
        listed with its error rather than failing the rest."""
        out: list[dict[str, Any]] = []
        for e in await entries_in_range(self.node.store, "conversation", req.conversation_id,
                                req.from_ms, req.to_ms):
            content = pb.Content.FromString(e.content) if e.content else pb.Content()
            if content.WhichOneof("body") != "encrypted":
                continue
            row: dict[str, Any] = {"seq": e.seq, "sender_id": e.sender_id,
                                   "sender_device": e.sender_device, "sent_at_ms": e.sent_at}
            try:
                row.update(payload_json(open_envelope(suite, private, key_id,
                                                       req.conversation_id, e.sender_id,
                                                       content.encrypted)))
            except E2EEError as exc:
                row["error"] = str(exc)
            out.append(row)
        return out

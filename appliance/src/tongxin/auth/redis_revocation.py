"""Token revocations published in Redis Cluster (seed §4: sessions in Redis).

Keys (``{user}`` is a hash tag: both live in the user's slot, so one MGET
reads them together on any cluster):

* ``<prefix>:{<user_id>}:rv:<token_id>`` -- that token is revoked (logout);
  expires when the token would have.
* ``<prefix>:{<user_id>}:rvall`` -- epoch ms before which every token of the
  user was revoked (disable, password change, revoke-tokens, role change);
  only ever raised, expires ``accounts.token_ttl`` after the revocation, when
  every token it covers has expired anyway.

A token issued within ``SKEW_MS`` before a user-wide revocation gets no
answer here and is checked in the store: node clocks differ a little, and a
login racing the revocation must be judged by what the store recorded.

Redis holds only "revoked", never "valid", and the store is written first.
So a Redis that lost a key (failover, eviction, expiry) or does not answer
only sends the question to the store: the answer stays right. Calls are
bounded; after a failure Redis is skipped for a second (``Breaker``).

Across sites each site has its own Redis Cluster and this publishes only to
the local one (``presence.redis_nodes``): the other sites' nodes find the
revocation in the store they share, on their first AUTH of the token,
whether or not their Redis could have been told (docs/security.md,
"Revocation across sites").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tongxin.clock import now_ms
from tongxin.presence.redis_presence import misconfigured
from tongxin.redisutil import FAILURES, Breaker, bounded_cluster

log = logging.getLogger("tongxin.revocation")

SKEW_MS = 5000

# KEYS[1] the user's marker; ARGV[1] revoked-before ms, ARGV[2] ttl ms. Never lowers it.
RAISE_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class RedisRevocations:
    def __init__(self, nodes: str, prefix: str, *, timeout: float = 1.0, pause: float = 1.0,
                 on_fallback: Callable[[], None] | None = None, tls_ca_file: str = "") -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.breaker = Breaker("token revocation", log, pause, on_fallback,
                               explain=lambda exc: misconfigured(exc, nodes, tls_ca_file))
        # Retries as for presence, but bounded in time: a failover lasts
        # longer than a login should wait, and the store has the answer.
        self.redis = bounded_cluster(nodes, timeout / 2, retries=3, tls_ca_file=tls_ca_file)

    def token_key(self, user_id: str, token_id: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:rv:{token_id}"

    def user_key(self, user_id: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:rvall"

    async def revoked(self, user_id: str, token_id: str, issued_at_ms: int) -> bool | None:
        if not self.breaker.closed():
            return None
        try:
            tok, before = await asyncio.wait_for(
                self.redis.mget(self.token_key(user_id, token_id), self.user_key(user_id)),
                self.timeout)
        except FAILURES as exc:
            self.breaker.failed(exc)
            return None
        self.breaker.ok()
        if tok is not None:
            return True
        if before is not None and issued_at_ms < int(before) - SKEW_MS:
            return True
        return None

    async def revoke_token(self, user_id: str, token_id: str, expires_at_ms: int) -> None:
        ttl = expires_at_ms - now_ms()
        if ttl <= 0:
            return
        try:
            await asyncio.wait_for(
                self.redis.set(self.token_key(user_id, token_id), "1", px=ttl), self.timeout)
        except FAILURES as exc:
            # The store already has it; resumes ask the store while Redis cannot say.
            log.warning("token revocation not published to Redis (the store has it): %r", exc)
            self.breaker.failed(exc)

    async def revoke_user(self, user_id: str, at_ms: int, token_ttl_ms: int) -> None:
        try:
            await asyncio.wait_for(
                self.redis.eval(RAISE_LUA, 1, self.user_key(user_id), at_ms,
                                max(1, token_ttl_ms)),
                self.timeout)
        except FAILURES as exc:
            log.warning("user token revocation not published to Redis (the store has it): %r",
                        exc)
            self.breaker.failed(exc)

    async def close(self) -> None:
        await self.redis.aclose()

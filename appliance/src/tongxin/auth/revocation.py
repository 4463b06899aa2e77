"""Where token revocations are published besides the store.

The store's ``tokens`` table is the source of truth: every revocation is
written there first, and a token the store does not call revoked is refused
only if the store is never asked (it always is when this port has no answer).
This port is a faster, shared answer in front of it: with Redis Cluster every
node sees a revocation at once and refuses the token without a store read,
even while the database is unreachable. It is per site: with several sites
the shared store is what makes a revocation at one site hold at the others.

``Accounts`` is the only caller (``revoke``, ``revoke_user``, ``resume``),
so every revocation path (logout, admin logout, disable, password change,
revoke-tokens, role change, delete) goes through one place.
"""

from __future__ import annotations

from typing import Protocol


class Revocations(Protocol):
    async def revoked(self, user_id: str, token_id: str, issued_at_ms: int) -> bool | None:
        """True if known revoked; None if this port has no answer (ask the store).

        Never False: only the store knows that a token exists and is valid.
        """
        ...

    async def revoke_token(self, user_id: str, token_id: str, expires_at_ms: int) -> None:
        """Publish one revoked token until it would have expired anyway."""
        ...

    async def revoke_user(self, user_id: str, at_ms: int, token_ttl_ms: int) -> None:
        """Publish "every token of this user issued before ``at_ms`` is revoked"."""
        ...

    async def close(self) -> None: ...


class NoRevocations:
    """The embedded default: no second place, the store answers every time."""

    async def revoked(self, user_id: str, token_id: str, issued_at_ms: int) -> bool | None:
        return None

    async def revoke_token(self, user_id: str, token_id: str, expires_at_ms: int) -> None:
        return None

    async def revoke_user(self, user_id: str, at_ms: int, token_ttl_ms: int) -> None:
        return None

    async def close(self) -> None:
        return None

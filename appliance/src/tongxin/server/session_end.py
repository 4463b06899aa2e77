"""Ending a user's live sessions when their tokens are revoked, on every node.

A revoked token is refused at its next AUTH, but a WebSocket authenticated
before the revocation would keep sending and receiving. So every revocation
(``Accounts.revoke`` and ``Accounts.revoke_user``: logout, disable, delete,
password change or reset, revoke-tokens, role change) also publishes an
"end sessions" signal on the delivery bus, addressed to the user. The bus
already knows where a user is connected: in-process it reaches this node's
hub; with Kafka the router sends it to the nodes presence says hold the
user's devices (and, through MirrorMaker 2, to the other sites' routers).
Each node closes the matching connections with ERROR ``TOKEN_REVOKED``
(fatal) and close code 4010 ``session_revoked`` (docs/protocol.md).

The signal rides an ordinary ``Delivery`` with an internal frame type above
the wire's u8 range, so no wire frame can ever be mistaken for it and the
bus, its record format and its router need no change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tongxin.delivery.ports import Delivery

#: Internal frame type of the signal: wire frame types are one byte, so this
#: value never reaches or comes from a client.
END_SESSIONS = 0x1_0000


@dataclass(frozen=True, slots=True)
class EndSessions:
    user_id: str
    #: One token (logout, admin session logout): its connections only.
    token_id: str = ""
    #: Every token issued at or before this epoch ms (user-wide revocation).
    #: A token issued after it (a new login after a password reset) is kept.
    issued_before_ms: int = 0
    reason: str = "session revoked"

    def matches(self, user_id: str, token_id: str, issued_at_ms: int) -> bool:
        if user_id != self.user_id:
            return False
        if self.token_id and token_id == self.token_id:
            return True
        return bool(self.issued_before_ms) and issued_at_ms <= self.issued_before_ms

    def delivery(self) -> Delivery:
        payload = json.dumps({"user_id": self.user_id, "token_id": self.token_id,
                              "issued_before_ms": self.issued_before_ms,
                              "reason": self.reason}).encode()
        # skip_user keys the Kafka record by user; the hub never pushes this.
        return Delivery(frame_type=END_SESSIONS, payload=payload, user_ids=(self.user_id,),
                        skip_user=self.user_id)


def parse(payload: bytes) -> EndSessions | None:
    """The signal in a delivery's payload; None if it is not one this node understands."""
    try:
        data = json.loads(payload)
        return EndSessions(str(data["user_id"]), str(data.get("token_id", "")),
                           int(data.get("issued_before_ms", 0)),
                           str(data.get("reason", "session revoked"))[:100])
    except (ValueError, KeyError, TypeError):
        return None

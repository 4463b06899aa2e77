"""WebSocket close codes the server uses (docs/protocol.md, "Close codes")."""

from __future__ import annotations

NORMAL = 1000  # LOGOUT, or the client closed
GOING_AWAY = 1001  # the server is shutting down; reconnect to another node
MESSAGE_TOO_BIG = 1009  # a WebSocket message beyond the transport limit (aiohttp)
PROTOCOL_ERROR = 4000  # a fatal frame error; the ERROR frame before it says which
AUTH_REQUIRED = 4001  # no AUTH within auth_timeout, or too many frames before AUTH
IDLE = 4003  # nothing received for idle_timeout_factor heartbeat intervals
SLOW_CONSUMER = 4008  # the send queue filled: the client reads too slowly
REPLACED = 4009  # another connection authenticated with the same device id
SESSION_REVOKED = 4010  # the session's token was revoked (disable, delete, password, logout)

_NAMES = {
    NORMAL: "normal", GOING_AWAY: "going_away", MESSAGE_TOO_BIG: "message_too_big",
    PROTOCOL_ERROR: "protocol_error", AUTH_REQUIRED: "auth_required", IDLE: "idle",
    SLOW_CONSUMER: "slow_consumer", REPLACED: "replaced", SESSION_REVOKED: "session_revoked",
}


def name(code: int) -> str:
    return _NAMES.get(code, str(code))

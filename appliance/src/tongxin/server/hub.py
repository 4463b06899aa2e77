"""The local side of fan-out: which devices this node holds, and pushing to them.

A delivery's frames are encoded once and the same bytes objects are queued
to every recipient connection, so a 10,000-member group costs one encode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tongxin.chat.members import MemberCache
from tongxin.delivery.ports import Delivery
from tongxin.metrics import Metrics
from tongxin.proto import tongxin_pb2 as pb
from tongxin.server import session_end
from tongxin.wire import closecodes
from tongxin.wire.codec import Encoder

if TYPE_CHECKING:
    from tongxin.server.connection import Connection


class Hub:
    def __init__(self, encoder: Encoder, members: MemberCache, metrics: Metrics) -> None:
        self.encoder = encoder
        self.members = members
        self.metrics = metrics
        self.devices: dict[str, dict[str, Connection]] = {}
        self.watchers: dict[str, set[Connection]] = {}
        self.all: set[Connection] = set()

    def attach(self, conn: Connection) -> Connection | None:
        """Register an authenticating connection; return the one it replaces.

        Frames are pushed to it only once it has its session (AUTH_OK sent,
        ``conn.session`` set): until then ``dispatch`` passes it by. Nothing is
        lost by that: the client syncs after AUTH_OK, and what was delivered
        before had been stored before."""
        devs = self.devices.setdefault(conn.user_id, {})
        old = devs.get(conn.device_id)
        devs[conn.device_id] = conn
        return old

    def unregister(self, conn: Connection, restore: Connection | None) -> None:
        """Undo ``attach(conn)`` (its AUTH failed): the device's entry goes back to
        ``restore``, the connection attach replaced, if that is still open."""
        devs = self.devices.get(conn.user_id)
        if devs is None or devs.get(conn.device_id) is not conn:
            return
        if restore is not None and restore is not conn and not restore.closing:
            devs[conn.device_id] = restore
            return
        del devs[conn.device_id]
        if not devs:
            del self.devices[conn.user_id]

    def detach(self, conn: Connection) -> bool:
        """Forget a connection; True if it was the registered one for its device."""
        self.all.discard(conn)
        for uid in conn.watching:
            ws = self.watchers.get(uid)
            if ws is not None:
                ws.discard(conn)
                if not ws:
                    del self.watchers[uid]
        conn.watching = ()
        devs = self.devices.get(conn.user_id)
        if devs is None or devs.get(conn.device_id) is not conn:
            return False
        del devs[conn.device_id]
        if not devs:
            del self.devices[conn.user_id]
        return True

    def watch(self, conn: Connection, user_ids: tuple[str, ...]) -> None:
        for uid in conn.watching:
            ws = self.watchers.get(uid)
            if ws is not None:
                ws.discard(conn)
                if not ws:
                    del self.watchers[uid]
        conn.watching = user_ids
        for uid in user_ids:
            self.watchers.setdefault(uid, set()).add(conn)

    def end_sessions(self, sig: session_end.EndSessions) -> int:
        """Close this node's connections whose token the signal revokes; how many."""
        ended = 0
        for conn in list(self.devices.get(sig.user_id, {}).values()):
            s = conn.session
            if s is None or conn.closing or conn.logging_out or not sig.matches(
                    s.claims.user_id, s.claims.token_id, s.claims.issued_at_ms):
                continue
            # The ERROR says why before the close (fatal: no reconnect with this token).
            conn.error(pb.TOKEN_REVOKED, f"{sig.reason}; sign in again", fatal=True)
            conn.request_close(closecodes.SESSION_REVOKED, sig.reason)
            ended += 1
        return ended

    async def dispatch(self, d: Delivery) -> None:
        if d.frame_type == session_end.END_SESSIONS:
            sig = session_end.parse(d.payload)
            if sig is not None:
                self.end_sessions(sig)
            return
        if d.presence_bundle:
            self._push_presence(d.frame_type, d.presence_bundle)
            return
        if d.members_changed and d.conversation_id:
            self.members.invalidate(d.conversation_id)
        if d.watchers_of:
            targets = list(self.watchers.get(d.watchers_of, ()))
        else:
            users = d.user_ids if (d.user_ids or d.routed) else await self.members.get(d.conversation_id)
            targets = []
            for uid in users:
                devs = self.devices.get(uid)
                if not devs:
                    continue
                for dev, conn in devs.items():
                    if (uid == d.skip_user and dev == d.skip_device) or conn.session is None:
                        continue
                    targets.append(conn)
        self._push(targets, d.frame_type, d.payload)

    def _push_presence(self, frame_type: int, bundle: tuple[tuple[str, bytes], ...]) -> None:
        """A router's bundle: each change to its user's watchers here, as its own
        frame (a client sees what it would without the bundle)."""
        for user_id, payload in bundle:
            self._push(list(self.watchers.get(user_id, ())), frame_type, payload)

    def _push(self, targets: list[Connection], frame_type: int, payload: bytes) -> None:
        """One encode for every target (none when there is no target)."""
        if not targets:
            return
        frames = self.encoder.encode(frame_type, 0, payload)
        for conn in targets:
            conn.push(frames, frame_type)
        self.metrics.deliveries.inc(len(targets))

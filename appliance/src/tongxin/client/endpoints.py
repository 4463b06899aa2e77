"""Several entry points for one installation: choosing, backing off, resuming by seq.

An installation publishes one entry per site (dc1, dc2 and the DR standby), in the
order clients should prefer them. The client connects to the first that answers and,
when the connection drops, moves round robin to the next one; these helpers hold the
parts of that behaviour that do not touch the network (docs/protocol.md section 15).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CONNECTION_LOST",
    "RECONNECTED",
    "RECONNECT_FAILED",
    "Backoff",
    "ConnectionEvent",
    "NoEndpointAvailable",
    "SeqCursors",
    "parse_endpoints",
]

# Client-side event types in Client.events, beside the frame types (all >= 0).
CONNECTION_LOST = -1
RECONNECTED = -2
RECONNECT_FAILED = -3


def parse_endpoints(urls: str | Iterable[str]) -> tuple[str, ...]:
    """The ordered, de-duplicated endpoint list from a URL, a comma-separated list of
    URLs, or an iterable of either (``--url a,b --url c``)."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out: dict[str, None] = {}
    for item in items:
        for part in item.split(","):
            if part.strip():
                out[part.strip()] = None
    if not out:
        raise ValueError("no endpoint URL given")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Backoff:
    """When to try again after a connection drops.

    Attempt 0 goes out at once (to the next endpoint); attempt n waits
    ``min(cap, initial * factor**(n-1))`` scaled down by up to ``jitter`` at random,
    so that a site's users, dropped together, do not all return in the same instant.
    An episode ends after ``max_attempts`` attempts or ``deadline`` seconds, whichever
    comes first (0 turns either bound off).
    """

    initial: float = 0.25
    factor: float = 2.0
    cap: float = 4.0
    jitter: float = 0.5
    max_attempts: int = 0
    deadline: float = 300.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.cap < self.initial:
            raise ValueError("Backoff needs 0 < initial <= cap and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff.jitter is a fraction between 0 and 1")
        if self.max_attempts < 0 or self.deadline < 0:
            raise ValueError("Backoff.max_attempts and deadline must not be negative")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt number ``attempt`` (counted from 0)."""
        if attempt <= 0:
            return 0.0
        # The exponent stops growing once the cap is reached (and before floats overflow).
        base = min(self.cap, self.initial * self.factor ** min(attempt - 1, 64))
        return base * (1.0 - self.jitter * (rng or random).random())

    def exhausted(self, attempts: int, elapsed: float) -> bool:
        """Whether an episode that made ``attempts`` attempts in ``elapsed`` s is over."""
        return bool((self.max_attempts and attempts >= self.max_attempts)
                    or (self.deadline and elapsed >= self.deadline))


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """What a CONNECTION_LOST, RECONNECTED or RECONNECT_FAILED event carries."""

    kind: int
    endpoint: str  # RECONNECTED: the entry now in use; otherwise the one lost
    previous: str  # the entry in use before the drop
    attempts: int = 0
    error: str = ""

    @property
    def moved(self) -> bool:
        """True when the client now talks to another entry than before the drop."""
        return self.kind == RECONNECTED and self.endpoint != self.previous


class NoEndpointAvailable(ConnectionError):
    """No endpoint of the list accepted a WebSocket (refused, 503/standby, timed out)."""

    def __init__(self, failures: Sequence[tuple[str, BaseException]]) -> None:
        self.failures = list(failures)
        detail = "; ".join(f"{url}: {describe(exc)}" for url, exc in self.failures)
        super().__init__(f"no endpoint answered ({detail})")


def describe(exc: BaseException) -> str:
    """A short reason for an endpoint failure, for logs and the CLI."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        return f"HTTP {status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


@dataclass(slots=True)
class _Cursor:
    floor: int  # seqs up to here came before this client knew the conversation
    mark: int  # every seq in (floor, mark] is held
    above: set[int] = field(default_factory=set)  # held seqs past a gap
    # Pushes at or below the floor already passed on: the first copy of a late
    # push goes through, a second copy of it (a multi-node backend re-publishes
    # an entry on a re-sent SEND) must not.
    late: set[int] = field(default_factory=set)


class SeqCursors:
    """Which entries of each conversation this device holds: pushed to it, or its own
    (ACKed) sends. A reconnect syncs each conversation from its mark, and a push of a
    seq already held is dropped (a multi-node backend may push an entry twice)."""

    def __init__(self, max_gap_entries: int = 4096) -> None:
        self._convs: dict[str, _Cursor] = {}
        self._max_above = max_gap_entries

    def __contains__(self, conversation_id: object) -> bool:
        return conversation_id in self._convs

    def learn(self, conversation_id: str, last_seq: int) -> None:
        """A conversation seen in an answer (CONV_INFO, CONV_LIST, SYNC_RESULT): what
        exists now is history, not something a reconnect must deliver."""
        if conversation_id not in self._convs:
            self._convs[conversation_id] = _Cursor(last_seq, last_seq)

    def see(self, conversation_id: str, seq: int) -> bool:
        """Record ``seq`` as held; False if it already was (drop the duplicate)."""
        c = self._convs.get(conversation_id)
        if c is None:
            c = self._convs[conversation_id] = _Cursor(seq - 1, seq - 1)
        if seq <= c.floor:
            # Older than what we track: a late push racing the answer that taught us
            # the conversation. Let its first copy through; it cannot be told from
            # an entry the answer did not carry.
            if seq in c.late:
                return False
            c.late.add(seq)
            if len(c.late) > self._max_above:
                c.late.discard(min(c.late))
            return True
        if seq <= c.mark or seq in c.above:
            return False
        c.above.add(seq)
        self._advance(c)
        if len(c.above) > self._max_above:
            # An entry that never arrives (one of our own sends whose ACK was lost and
            # was not retried): stop waiting for it rather than grow without bound.
            c.mark = min(c.above)
            c.above.discard(c.mark)
            self._advance(c)
        return True

    @staticmethod
    def _advance(c: _Cursor) -> None:
        while c.mark + 1 in c.above:
            c.mark += 1
            c.above.discard(c.mark)

    def mark(self, conversation_id: str) -> int:
        """The seq to sync after: everything up to it is held."""
        c = self._convs.get(conversation_id)
        return c.mark if c else 0

    def conversations(self) -> list[str]:
        return list(self._convs)

"""Malformed HTTP requests: a short, rate-limited warning, never a traceback.

aiohttp logs every request it cannot parse at ERROR level with the parser's
traceback ("Error handling request"), except a bad method on a connection's
first request. Anyone who can reach the port can send such requests, so each
would cost the log ~2 KB and an alert on "error". This filter on the
``aiohttp.server`` logger turns them into one WARNING line without traceback
(remote address, the parser's reason cut short and escaped, so bytes from
the peer cannot forge log lines), at most ``burst`` lines per ``period``;
the next line says how many were left out. Errors of our own handlers are
untouched: those are bugs and keep their traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

LOGGER = "aiohttp.server"
REASON_MAX = 120


class MalformedRequestFilter(logging.Filter):
    def __init__(self, burst: int = 10, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self._clock = clock
        self._window_start = float("-inf")
        self._in_window = 0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = self._clock()
        if now - self._window_start >= self.period:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self.burst:
            self.suppressed += 1
            return False
        self._in_window += 1
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        reason = (exc.message or type(exc).__name__).strip()
        reason = reason.encode("unicode_escape").decode("ascii")[:REASON_MAX]
        more = f" ({self.suppressed} more since the last such line)" if self.suppressed else ""
        self.suppressed = 0
        record.msg = "malformed HTTP request from %s: %s%s"
        record.args = (str(remote)[:64], reason, more)
        # ERROR becomes WARNING; aiohttp's DEBUG (a bad first method) stays DEBUG.
        record.levelno = min(record.levelno, logging.WARNING)
        record.levelname = logging.getLevelName(record.levelno)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def install(logger_name: str = LOGGER) -> MalformedRequestFilter:
    """Add the filter to aiohttp's server logger once per process; return it."""
    logger = logging.getLogger(logger_name)
    for f in logger.filters:
        if isinstance(f, MalformedRequestFilter):
            return f
    f = MalformedRequestFilter()
    logger.addFilter(f)
    return f

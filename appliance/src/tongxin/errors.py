"""The one exception type that request handlers raise to answer with an ERROR frame."""

from __future__ import annotations


class RequestError(Exception):
    """A request refused for a documented reason; ``code`` is a tongxin.v1.ErrorCode."""

    def __init__(self, code: int, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms

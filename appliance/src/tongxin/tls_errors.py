"""Reading a failed certificate check out of a client library's exception.

Redis's and Kafka's clients wrap the ssl module's error in their own
connection errors (sometimes only its text survives); the node turns it into
one configuration line naming the CA setting (presence/redis_presence.py,
delivery/kafka_client.py)."""

from __future__ import annotations

import re
import ssl

_VERIFY_FAILED = re.compile(r"certificate verify failed: ([^(]*[^ (])")


def cert_verify_reason(exc: BaseException) -> str | None:
    """Why the peer's certificate was not verified (OpenSSL's reason, e.g.
    "unable to get local issuer certificate"), if ``exc`` or what caused it
    is that; None for any other failure."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
            found = _VERIFY_FAILED.search(text)
            return getattr(seen, "verify_message", "") or (found.group(1) if found else text)
        seen = seen.__cause__ or seen.__context__
    return None

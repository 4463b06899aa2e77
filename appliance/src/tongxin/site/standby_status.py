"""How far behind the DR copy is, as its standby nodes report it, for the active site.

Only a standby node knows its replica's lag (it reads the newest heartbeat the
active site wrote, tongxin.site.heartbeat); it says so on its public
``/readyz``, which answers 503 by design (a load balancer must never send users
there) with ``replication_lag_seconds`` and friends in the JSON body. An active
node lists the standby nodes in ``site.standby_status_urls`` and asks each of
them, all at once and within a short deadline, so the admin console's site
panel (GET /api/v1/admin/site) shows whether the DR copy keeps up, and never
waits on a standby that does not answer.

A 503 is therefore the normal answer; an error is a standby that cannot be
reached (refused, timed out, TLS not accepted, an answer that is not its JSON)
or that reports its own ``replication_error`` (its replica does not answer).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import ssl
from typing import Any

import aiohttp

DEFAULT_TIMEOUT = 2.0  # seconds for all standbys together: the console's panel waits on it
_MAX_BODY = 64 * 1024  # a /readyz body is a few hundred bytes; more is not a standby's
_LAG_FIELDS = ("replication_lag_seconds", "replication_silent_seconds",
               "replication_lag_at_last_advance_seconds")


async def standby_statuses(urls: list[str], within: float = DEFAULT_TIMEOUT,
                           ssl_context: ssl.SSLContext | None = None) -> list[dict[str, Any]]:
    """One entry per base URL, in order: ``{url, site, node, reachable, replication_lag_seconds,
    replication_silent_seconds, replication_lag_at_last_advance_seconds, error}``.

    Every standby is asked concurrently through one session and each request ends at
    ``within`` seconds, so the whole takes about ``within`` at most. https is verified
    (``ssl_context``, else the system's CAs); verification is never turned off.
    """
    if not urls:
        return []
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True,
                                     limit=len(urls), force_close=True)
    async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=within)) as http:
        return list(await asyncio.gather(*(_one(http, url, within) for url in urls)))


async def _one(http: aiohttp.ClientSession, url: str, within: float) -> dict[str, Any]:
    out: dict[str, Any] = {"url": url, "site": None, "node": None, "reachable": False,
                           **dict.fromkeys(_LAG_FIELDS), "error": None}
    try:
        # The session's timeout covers connect and read; asyncio.timeout also bounds
        # what it does not (a DNS lookup stuck in the resolver's thread).
        async with asyncio.timeout(within), http.get(
                url.rstrip("/") + "/readyz", allow_redirects=False,
                headers={"Accept": "application/json"}) as r:
            status = r.status
            raw = await r.content.read(_MAX_BODY + 1)
    except TimeoutError:
        out["error"] = f"no answer within {within:g} s"
        return out
    except aiohttp.ClientConnectorCertificateError as exc:
        out["error"] = f"TLS certificate not accepted: {exc.certificate_error}"
        return out
    except aiohttp.ClientConnectorError as exc:
        err = exc.os_error
        # asyncio's refusal reads "Connect call failed (...)": the errno says it plainly
        # (a name that does not resolve has a negative one: its strerror is the text).
        why = os.strerror(err.errno) if err.errno and err.errno > 0 else err.strerror or err
        out["error"] = f"cannot connect: {why}"
        return out
    except aiohttp.ServerDisconnectedError:
        out["error"] = "closed the connection without answering"
        return out
    except aiohttp.ClientOSError as exc:  # reset before the answer (after the connect)
        out["error"] = f"connection lost before an answer: {exc.strerror or exc}"
        return out
    except (aiohttp.ClientError, OSError) as exc:
        out["error"] = f"request failed: {type(exc).__name__}: {exc}"
        return out
    out["reachable"] = True
    try:
        body = json.loads(raw) if len(raw) <= _MAX_BODY else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        out["error"] = f"answered HTTP {status} without a /readyz JSON body"
        return out
    out["site"] = _text(body.get("site"))
    out["node"] = _text(body.get("node"))
    for key in _LAG_FIELDS:
        out[key] = _seconds(body.get(key))
    if body.get("role") != "standby":
        # 200 from an active node (a promoted DR site, a wrong address): no copy to measure.
        out["error"] = (f"not a standby: answered HTTP {status} as role "
                        f"{_text(body.get('role')) or 'unknown'}")
    elif body.get("replication_error"):
        out["error"] = _text(body.get("replication_error"))
    return out


def _seconds(value: Any) -> float | None:
    # NaN or Infinity (json.loads accepts them) would make our own answer invalid JSON.
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:500]

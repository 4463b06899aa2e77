"""The Content-Security-Policy of the two browser pages a node serves: the web client at
``/`` and the administrators' console at ``/console/`` (docs/security.md)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# The console runs only its own bundled script and stylesheet: a value an attacker
# got into the node's data (a username, an audit detail, a report field) that the
# page failed to escape still cannot run, load or send anything elsewhere, and no
# other site may frame the page. Inline styles stay allowed for the drill reports the
# auditor's page shows in a sandboxed srcdoc frame, which inherits this policy.
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; connect-src 'self'; frame-src 'self'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
# The web client (the chat page at /) gets the same strictness: only its own bundled
# app.js and style.css, no inline script or <style>, nothing framed or framing it, so
# a message, file name or display name the page failed to escape still cannot run,
# load or send anything. Each relaxation, and why:
# - img-src data: the safety number's QR code (qrcode's toDataURL) and the page's icon
#   are data: URLs; blob: is not needed (a download is a blob: link the page clicks,
#   a navigation, not an image);
# - connect-src 'self': /api/v1/info, the files API (fetch and XHR) and the WebSocket
#   to this entry (a CSP Level 3 browser matches ws:/wss: to the page's host and port
#   with 'self'); web_client_csp() adds the installation's other entries
#   (server.client_endpoints), which the page moves to when this one dies;
# - style-src 'self' without 'unsafe-inline': the per-user avatar and sender colours
#   are set through CSSOM (element.style), which CSP does not govern;
# - no 'wasm-unsafe-eval': the E2EE code is JavaScript and Web Crypto, no WebAssembly;
#   no font-src or media-src: the page loads no fonts (system ones) and plays nothing.
WEB_CLIENT_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                  "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                  "form-action 'self'; frame-ancestors 'none'")
# A ws:// or wss:// URL as a CSP source: a host CSP can name (no IPv6 literal, no user
# info) and a path without the characters that end a source or a directive.
_CSP_WS_SOURCE = re.compile(r"wss?://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:[0-9]{1,5})?"
                            r"(/[A-Za-z0-9._~!$&()*+=:@%/-]*)?")


def csp_ws_source(url: str) -> str | None:
    """``url`` (an entry of server.client_endpoints) as a connect-src source (scheme,
    host, port and path: the query is not matched by CSP), or None when CSP cannot name it."""
    try:
        parts = urlsplit(url)
        source = f"{parts.scheme}://{parts.netloc}{parts.path}"
    except ValueError:
        return None
    return source if _CSP_WS_SOURCE.fullmatch(source) else None


def web_client_csp(endpoints: list[str]) -> str:
    """WEB_CLIENT_CSP with the installation's entries added to connect-src."""
    sources = [s for s in dict.fromkeys(csp_ws_source(u) for u in endpoints) if s]
    if not sources:
        return WEB_CLIENT_CSP
    return WEB_CLIENT_CSP.replace("connect-src 'self'",
                                  " ".join(["connect-src 'self'", *sources]))

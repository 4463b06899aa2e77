"""The web client's Content-Security-Policy (issue 21), as a real node serves it.

GET / from a node on a loopback socket must carry the exact policy (docs/security.md,
"Browser pages"); the installation's other entries (server.client_endpoints) are added
to connect-src, since the page moves its WebSocket to them when its own entry dies, and
an entry CSP cannot name is left out rather than allowed to end the directive. The
bundle the page loads is fetched too. That no page the client shows breaks this policy
is the browser tests' part (appliance/web/tests/e2e.mjs, failover.mjs, e2ee_driver.mjs
fail on any CSP message in the page's console).
"""

from __future__ import annotations

import re

import aiohttp
import pytest
from conftest import NodeFactory, RunningNode  # type: ignore[import-not-found, unused-ignore]

from tongxin.server.csp import csp_ws_source, web_client_csp
from tongxin.server.node import WEB_DIR

# Written out, not imported: a change to the policy must change this test too.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _require_bundle() -> None:
    """Fail (not skip) with the command that builds the page."""
    if not (WEB_DIR / "index.html").exists() or not (WEB_DIR / "app.js").exists():
        pytest.fail(f"the web client is not built into {WEB_DIR}: run `make web`", pytrace=False)


async def _get(url: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_the_page_and_its_bundle_are_served_under_the_exact_policy(
        node_factory: NodeFactory) -> None:
    _require_bundle()
    node: RunningNode = await node_factory()
    status, headers, page = await _get(f"{node.http_url}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    # Nothing in the page itself the policy would refuse: no inline script, no handler
    # attribute, no style attribute or element, no javascript: URL.
    assert all('src="/static/' in tag for tag in re.findall(r"<script\b[^>]*>", page)), page
    assert not re.search(r"\son[a-z]+\s*=|\sstyle\s*=|<style\b|javascript:", page, re.I)
    # The bundle the page names (content-hashed URL) is there, as a script.
    script = re.search(r'<script type="module" src="(/static/app\.js\?v=[0-9a-f]+)"', page)
    assert script, page
    status, headers, body = await _get(f"{node.http_url}{script.group(1)}")
    assert status == 200 and "javascript" in headers["Content-Type"] and len(body) > 10_000
    # The bundle compiles no strings and no WebAssembly (script-src has neither
    # 'unsafe-eval' nor 'wasm-unsafe-eval').
    assert "WebAssembly" not in body and "new Function(" not in body
    assert not re.search(r"[^.\w]eval\(", body)


async def test_connect_src_adds_the_installations_other_entries(
        node_factory: NodeFactory) -> None:
    _require_bundle()
    endpoints = ("ws://127.0.0.1:18081/ws, wss://dc2.im.example.cn/ws?site=dc2,"
                 "wss://dc2.im.example.cn/ws, ws://evil.example;script-src *,"
                 "wss://[::1]:8443/ws, wss://user:pw@dc3.example.cn/ws")
    node: RunningNode = await node_factory(server={"client_endpoints": endpoints})
    _, headers, _ = await _get(f"{node.http_url}/")
    assert headers["Content-Security-Policy"] == POLICY.replace(
        "connect-src 'self'",
        "connect-src 'self' ws://127.0.0.1:18081/ws wss://dc2.im.example.cn/ws")


@pytest.mark.parametrize("url", ["wss://a.example.cn/ws ws://b", "ws://a/ws;img-src *",
                                 "wss://[2001:db8::1]/ws", "ws://u@a/ws", "wss://a.example.cn/w's",
                                 "wss://", "wss://a..b/ws"])
def test_an_entry_csp_cannot_name_is_left_out(url: str) -> None:
    assert csp_ws_source(url) is None
    assert web_client_csp([url]) == POLICY


def test_an_entry_is_its_scheme_host_port_and_path() -> None:
    assert csp_ws_source("wss://im.example.cn:8443/ws?x=1#f") == "wss://im.example.cn:8443/ws"
    assert csp_ws_source("ws://10.0.0.5") == "ws://10.0.0.5"


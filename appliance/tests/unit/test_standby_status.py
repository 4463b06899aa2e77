"""The active site's view of its DR standbys (tongxin.site.standby_status, issue 21).

Each standby is a real aiohttp server on loopback: one answers /readyz the way a
standby node does (503 and StandbyNode.status()'s JSON), one never answers, one
closes the connection, one is not listening at all. The panel must get the
numbers of the first and a reason for each of the others, all within the
deadline, and https must be verified.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from tongxin.config import ConfigError, load_config, standby_url_list
from tongxin.server.standby import StandbyNode
from tongxin.site.standby_status import standby_statuses

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Reader:
    """What StandbyNode.status() reads from its LagReader."""

    def __init__(self, lag: float | None, silent: float | None, before: float | None,
                 error: str = "") -> None:
        self._lag, self._silent, self.lag_at_advance, self.error = lag, silent, before, error

    def lag(self) -> float | None:
        return self._lag

    def silent_for(self) -> float | None:
        return self._silent


def _standby(site: str, node: str, reader: _Reader) -> StandbyNode:
    cfg = load_config()
    cfg.site.name, cfg.site.role, cfg.node_id = site, "standby", node
    sb = StandbyNode(cfg)
    sb.reader = reader  # type: ignore[assignment]
    return sb


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> str:
        app = web.Application()
        app.router.add_get("/readyz", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    yield start
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def hung_up() -> AsyncIterator[str]:
    """A TCP server that reads the request head and closes without a byte of answer."""
    async def close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def _closed_port() -> str:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return f"http://127.0.0.1:{port}"


async def test_a_standby_a_hung_one_a_closed_one_and_a_refused_one_within_the_deadline(
        serve: Callable[..., Awaitable[str]], hung_up: str) -> None:
    dr1 = _standby("dr", "dr-appliance-01", _Reader(2.5, 0.75, 1.25))
    dr2 = _standby("dr", "dr-appliance-02", _Reader(48.0, 47.0, 1.0,
                                                    error="database not answering: timeout"))

    good = await serve(dr1.readyz)
    failing = await serve(dr2.readyz)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    hung = await serve(hang)
    refused = await _closed_port()
    started = time.monotonic()
    out = await standby_statuses([good, hung, hung_up, refused, failing], within=0.5)
    took = time.monotonic() - started
    # Concurrently: the hanging one costs the deadline once, not once per standby.
    assert took < 1.5, took
    assert [o["url"] for o in out] == [good, hung, hung_up, refused, failing]
    assert out[0] == {"url": good, "site": "dr", "node": "dr-appliance-01", "reachable": True,
                      "replication_lag_seconds": 2.5, "replication_silent_seconds": 0.75,
                      "replication_lag_at_last_advance_seconds": 1.25, "error": None}
    assert out[1]["reachable"] is False and out[1]["error"] == "no answer within 0.5 s"
    assert out[1]["replication_lag_seconds"] is None and out[1]["site"] is None
    assert out[2]["reachable"] is False
    assert out[2]["error"] == "closed the connection without answering"
    assert out[3]["reachable"] is False and out[3]["error"].startswith("cannot connect: ")
    # Reached, with its numbers, and the replica's own trouble as the error.
    assert out[4]["reachable"] is True and out[4]["replication_lag_seconds"] == 48.0
    assert out[4]["error"] == "database not answering: timeout"


async def test_answers_that_are_not_a_standbys(serve: Callable[..., Awaitable[str]]) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy error</html>", status=502, content_type="text/html")

    async def active(request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "role": "active", "site": "dr", "node": "n1"})

    async def nan(request: web.Request) -> web.Response:
        # What a standby that has read no beat yet could send: NaN is not JSON for the console.
        return web.Response(text='{"role": "standby", "site": "dr", "node": "n2", '
                                 '"replication_lag_seconds": NaN, "replication_silent_seconds": null}',
                            status=503, content_type="application/json")

    out = await standby_statuses([await serve(html), await serve(active), await serve(nan)])
    assert out[0]["reachable"] is True
    assert out[0]["error"] == "answered HTTP 502 without a /readyz JSON body"
    assert out[1]["error"] == "not a standby: answered HTTP 200 as role active"
    assert out[1]["site"] == "dr" and out[1]["node"] == "n1"
    assert out[2]["error"] is None and out[2]["replication_lag_seconds"] is None
    assert out[2]["replication_silent_seconds"] is None
    assert await standby_statuses([]) == []


def _self_signed(d: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tongxin-dr-standby")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = d / "standby.pem", d / "standby.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_https_is_verified(serve: Callable[..., Awaitable[str]], tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    sb = _standby("dr", "dr-appliance-01", _Reader(1.5, 0.5, 1.0))
    url = await serve(sb.readyz, ssl_context=server_ctx)
    # A certificate the system's CAs did not sign is refused, not read past.
    [out] = await standby_statuses([url])
    assert out["reachable"] is False and out["error"].startswith("TLS certificate not accepted")
    trusting = ssl.create_default_context(cafile=str(cert_file))
    [out] = await standby_statuses([url], ssl_context=trusting)
    assert out["error"] is None and out["replication_lag_seconds"] == 1.5


def test_standby_urls_in_the_configuration(tmp_path: Path) -> None:
    p = tmp_path / "tongxin.yml"
    p.write_text("site:\n  standby_status_urls: 'http://10.3.0.22:8080/, https://[fd00::3]:8443,"
                 "http://10.3.0.22:8080'\n")
    cfg = load_config(p)
    assert standby_url_list(cfg.site.standby_status_urls) == [
        "http://10.3.0.22:8080", "https://[fd00::3]:8443"]
    assert standby_url_list("") == []
    for bad in ("10.3.0.22:8080", "ftp://10.3.0.22", "http://10.3.0.22:8080/readyz",
                "http://10.3.0.22:99999", "http://", "http://[fd00::3"):
        p.write_text(f"site:\n  standby_status_urls: 'http://10.3.0.21:8080,{bad}'\n")
        with pytest.raises(ConfigError, match=r"site\.standby_status_urls: .* is not an http:// "
                                              r"or https:// base URL"):
            load_config(p)


def test_lag_values_are_finite_or_none() -> None:
    from tongxin.site.standby_status import _seconds

    assert _seconds(3) == 3.0 and _seconds(math.inf) is None and _seconds(True) is None
    assert _seconds("2") is None and _seconds(None) is None

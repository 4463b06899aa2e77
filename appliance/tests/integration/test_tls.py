"""The node serving TLS 1.3 itself: wss:// with a CA file, TLS 1.2 refused, mutual TLS.

Certificates are made at test time by the system ``openssl`` (ECDSA P-256).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import RunningNode, make_config

from tongxin.client import Client, client_tls_context
from tongxin.config import ConfigError, load_config
from tongxin.server.node import Node, server_tls_context

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all P-256."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Tongxin test CA", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=tongxin-{name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)
        (d / f"{name}.key").chmod(0o600)
    return {n: str(d / n) for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                    "client.key")}


async def start_tls_node(home: Path, tls: dict[str, str]) -> RunningNode:
    cfg = make_config(home, server={})
    cfg.server.tls.cert_file = tls.get("cert_file", "")
    cfg.server.tls.key_file = tls.get("key_file", "")
    cfg.server.tls.client_ca_file = tls.get("client_ca_file", "")
    ctx = server_tls_context(cfg)
    assert ctx is not None
    node = Node(cfg)
    runner = web.AppRunner(node.app(), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = cfg.listen_address()
    await web.TCPSite(runner, host, port, ssl_context=ctx).start()
    return RunningNode(node, runner, cfg)


@pytest.fixture
async def pki(tmp_path: Path) -> dict[str, str]:
    return await asyncio.to_thread(make_pki, tmp_path / "pki")


async def test_wss_with_a_ca_file_and_tls12_refused(tmp_path: Path, pki: dict[str, str]) -> None:
    rn = await start_tls_node(tmp_path / "home", {"cert_file": pki["server.pem"],
                                                  "key_file": pki["server.key"]})
    port = rn.port
    try:
        await rn.node.accounts.create_user("alice", "password-1")
        await rn.node.accounts.create_user("bob", "password-1")
        url = f"wss://127.0.0.1:{port}/ws"
        alice = Client(url, ca_file=pki["ca.pem"])
        bob = Client(url, ca_file=pki["ca.pem"])
        for c, name in ((alice, "alice"), (bob, "bob")):
            await c.connect()
            rn.clients.append(c)
            await c.login(name, "password-1")
        conv = (await alice.direct("bob")).conversation_id
        await alice.send_text(conv, "over TLS 1.3")
        assert [m.content.text for m in await bob.sync_all(conv)][-1] == "over TLS 1.3"
        info = await alice.upload_file(conv, b"file over https" * 1000, name="t.bin")
        assert await bob.download_file(info.file_id, range=(5, 20)) == (
            b"file over https" * 1000)[5:20]
        assert alice._ws is not None
        tls_obj = alice._ws.get_extra_info("ssl_object")
        assert tls_obj is not None and tls_obj.version() == "TLSv1.3"

        # A client that stops at TLS 1.2 is refused in the handshake (the server aborts it:
        # an SSL alert or a reset, depending on timing), while the same client allowed 1.3
        # gets through.
        _, writer = await asyncio.open_connection("127.0.0.1", port,
                                                  ssl=client_tls_context(pki["ca.pem"]))
        writer.close()
        old = client_tls_context(pki["ca.pem"])
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.open_connection("127.0.0.1", port, ssl=old)
        # The server's certificate is checked: without the CA the client refuses it.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await Client(url).connect()
        # Plain HTTP to the TLS port gets no answer from the app.
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientError):
                await s.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        await rn.stop()


async def test_mutual_tls_needs_a_client_certificate(tmp_path: Path,
                                                     pki: dict[str, str]) -> None:
    rn = await start_tls_node(tmp_path / "home", {
        "cert_file": pki["server.pem"], "key_file": pki["server.key"],
        "client_ca_file": pki["ca.pem"]})
    try:
        url = f"https://127.0.0.1:{rn.port}/healthz"
        with_cert = client_tls_context(pki["ca.pem"], pki["client.pem"], pki["client.key"])
        async with (aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=with_cert)) as s,
                    s.get(url) as r):
            assert r.status == 200
        without = client_tls_context(pki["ca.pem"])
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=without)) as s:
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                async with s.get(url) as r:
                    await r.read()
    finally:
        await rn.stop()


def test_unusable_tls_settings_are_config_errors(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    cfg_file = tmp_path / "c.yml"
    cfg_file.write_text(f"server:\n  tls:\n    cert_file: {pki['server.pem']}\n")
    with pytest.raises(ConfigError, match="give both or neither"):
        load_config(cfg_file)
    cfg = make_config(tmp_path / "h")
    cfg.server.tls.cert_file, cfg.server.tls.key_file = pki["server.pem"], pki["server.key"]
    Path(pki["server.key"]).chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        server_tls_context(cfg)
    Path(pki["server.key"]).chmod(0o600)
    cfg.server.tls.key_file = pki["client.key"]  # not the certificate's key
    with pytest.raises(ConfigError, match="cannot load"):
        server_tls_context(cfg)
    cfg.server.tls.key_file = str(tmp_path / "absent.key")
    with pytest.raises(ConfigError, match="cannot read"):
        server_tls_context(cfg)
    assert server_tls_context(make_config(tmp_path / "plain")) is None

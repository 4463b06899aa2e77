"""End-to-end encryption between the web client in a real browser and Python SDK clients.

A node runs with ``e2ee.required`` (plaintext CHAT content is refused) and a compliance
escrow key, at-rest encryption off so that only E2EE can keep plaintext off the disk.
The web client (headless Chromium, remote-controlled through
``appliance/web/tests/e2ee_driver.mjs``) and two SDK clients (``tongxin.client.e2ee``)
exchange messages 1:1 and in a group, both ways, and files; the web client rotates its
sender key when a member is removed, shows that escrow is on, shows a tampered message as
"cannot decrypt", and warns about a changed identity key until the user accepts it.
Finally no message text or file content is anywhere in the node's data directory.
Screenshots land in test-artifacts/browser/.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tongxin.client import Client, pb
from tongxin.client.e2ee import E2EEClient, Opened
from tongxin.crypto import sm2_available
from tongxin.crypto.suite import get_suite
from tongxin.e2ee import escrow_trust
from tongxin.proto import e2ee_pb2 as e2

ROOT = Path(__file__).resolve().parents[3]
WEB = ROOT / "appliance" / "web"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
sys.path.insert(0, str(Path(__file__).parent))
from test_web_client import (  # noqa: E402
    _free_port,
    _require_tools,
    _serve,
    _stop,
    _wait_healthy,
)

SUITES = [pytest.param("international", id="international"),
          pytest.param("gm", id="gm", marks=pytest.mark.skipif(
              not sm2_available(), reason="SM2 (OpenSSL libcrypto) is not available"))]


@dataclass
class Node:
    url: str
    home: Path
    suite: str
    org_root: Path
    """The organisation root's public key the SDK trusts (docs/e2ee.md section 10.1)."""

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


@pytest.fixture
def node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Node]:
    # "suite" or "suite:no-root" (a node that names no organisation root in /api/v1/info).
    suite, _, variant = str(request.param).partition(":")
    escrow = get_suite(suite).generate_kem_keypair()
    (tmp_path / "escrow.pub.der").write_bytes(escrow.public_key)
    root = get_suite(suite).generate_signing_keypair()
    (tmp_path / "org-root.der").write_bytes(root.public_key)
    (tmp_path / "escrow-statement.json").write_text(escrow_trust.sign(
        get_suite(suite), root.private_key, root.public_key, escrow.public_key,
        int(time.time() * 1000) - 1000, 1).to_json())
    cfg = tmp_path / "tongxin.yaml"
    cfg.write_text(f"""\
crypto:
  suite: {suite}
storage:
  encryption: false
e2ee:
  required: true
  escrow_public_key_file: {tmp_path / "escrow.pub.der"}
  escrow_statement_file: {tmp_path / "escrow-statement.json"}
{"" if variant == "no-root" else f"  org_root_public_key_file: {tmp_path / 'org-root.der'}"}
accounts:
  scrypt_n: 1024
logging:
  json: false
""")
    home = tmp_path / "home"
    port = _free_port()
    log_path = tmp_path / "server.log"
    proc = _serve(["--allow-registration", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                  {**os.environ, "TONGXIN_HOME": str(home)}, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log_path)
        yield Node(url, home, suite, tmp_path / "org-root.der")
    finally:
        _stop(proc)


class Browser:
    """The driver script: one JSON command per line in, one JSON answer per line out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.next_id = 0

    async def __call__(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.next_id += 1
        self.proc.stdin.write((json.dumps({"id": self.next_id, "op": op, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if not line:
            err = b""
            if self.proc.stderr is not None:
                err = await self.proc.stderr.read()
            pytest.fail(f"the browser driver exited during {op}: {err.decode(errors='replace')}")
        answer = json.loads(line)
        if not answer["ok"]:
            pytest.fail(f"browser step {op} {args.get('text') or args.get('name') or ''} failed: "
                        f"{answer['error']}\npage console: {answer.get('console')}")
        return answer["result"]


@pytest.fixture
async def browser(node: Node) -> AsyncIterator[Browser]:
    node_bin = _require_tools()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        node_bin, str(WEB / "tests" / "e2ee_driver.mjs"), node.url, str(ARTIFACTS), cwd=WEB,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHROMIUM": os.environ.get("CHROMIUM", "/usr/bin/chromium")})
    try:
        yield Browser(proc)
    finally:
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.write(b'{"op": "quit"}\n')
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def sdk_user(node: Node, name: str, keys: Path, *, register: bool = True) -> E2EEClient:
    c = Client(node.ws, device_id="py")
    await c.connect()
    if register:
        await c.register(name, "sdk-password-1", name.capitalize())
    else:
        await c.login(name, "sdk-password-1")
    # One passphrase per user: a reinstall opens the user key's backup and signs its new
    # identity key (docs/e2ee.md 9.1), as a user would type it.
    return await c.e2ee(keys / name, trusted_org_root=node.org_root,
                        key_backup_passphrase=f"{name} backup passphrase")


async def next_opened(e: E2EEClient, wait: float = 30) -> tuple[pb.Message, Opened]:
    """The next DELIVER from another device that opens to something a user sees (not a
    sender-key control)."""
    me = (e.device.user_id, e.device.device_id)
    async with asyncio.timeout(wait):
        while True:
            ev = await e.client.next_event(pb.DELIVER, wait=wait)
            if (ev.message.sender_id, ev.message.sender_device) == me:
                continue
            opened = await e.open(ev.message)
            if opened is not None and opened.payload.WhichOneof("body") != "sender_key":
                return ev.message, opened


def stored_bytes(home: Path) -> bytes:
    """Every byte the node keeps on disk: databases (with their WAL), files, everything."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


@pytest.mark.timeout(420)
@pytest.mark.parametrize("node", SUITES, indirect=True)
async def test_web_client_and_sdk_clients_exchange_e2ee(node: Node, browser: Browser,
                                                        tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    suite = node.suite
    keys = tmp_path / "sdk-keys"
    secrets: list[bytes] = []

    await browser("page", page="w")
    reg = await browser("register", page="w", username=f"wendy{tag}", password="web-password-1",
                        name="Wendy Web")
    assert reg["status"] == "on", reg
    state = await browser("state", page="w")
    assert state["status"] == "on" and state["escrow"] == "on", state
    assert state["escrowIndicatorVisible"], state
    await browser("shot", page="w", name=f"e2ee-{suite}-01-web-logged-in-escrow-on")

    sam = await sdk_user(node, f"sam{tag}", keys)
    sue = await sdk_user(node, f"sue{tag}", keys)
    assert sam.escrow_enabled and sam.client.auth is not None
    assert sam.client.auth.crypto_suite == suite and sam.client.auth.e2ee_required
    wendy_id = (await sam.client.users([f"wendy{tag}"]))[0].user_id

    # ---- 1:1, both ways ------------------------------------------------------------------
    text = f"web to sam {tag} 你好"
    secrets.append(text.encode())
    await browser("startDirect", page="w", peer=f"sam{tag}", title=f"Sam{tag}")
    sent = await browser("send", page="w", text=text)
    assert sent["locked"], "the web client's own message shows no E2EE lock"
    msg, opened = await next_opened(sam)
    assert opened.payload.text == text and msg.sender_id == wendy_id
    env = e2.Envelope.FromString(msg.content.encrypted)
    assert env.kind == e2.Envelope.PAIRWISE and env.suite == suite and env.HasField("escrow")

    reply = f"sam to web {tag} 收到"
    secrets.append(reply.encode())
    await sam.send_text(msg.conversation_id, reply)
    got = await browser("expectMessage", page="w", text=reply)
    assert got["locked"]
    await browser("shot", page="w", name=f"e2ee-{suite}-02-direct")

    # ---- files, both ways (encrypted before upload) -----------------------------------------
    web_file = os.urandom(3000) + f"web file {tag}".encode()
    secrets.append(f"web file {tag}".encode())
    up = await browser("sendFile", page="w", name=f"plan-{tag}.bin",
                       b64=base64.b64encode(web_file).decode())
    assert up["locked"]
    _, opened = await next_opened(sam)
    assert opened.payload.WhichOneof("body") == "attachment"
    assert opened.payload.attachment.name == f"plan-{tag}.bin"
    assert await sam.download(opened.payload.attachment) == web_file
    sdk_file = os.urandom(2000) + f"sdk file {tag}".encode()
    secrets.append(f"sdk file {tag}".encode())
    await sam.send_file(msg.conversation_id, sdk_file, f"notes-{tag}.bin")
    dl = await browser("download", page="w", name=f"notes-{tag}.bin")
    assert base64.b64decode(dl["b64"]) == sdk_file and dl["suggested"] == f"notes-{tag}.bin"

    # ---- a tampered envelope shows "cannot decrypt" and breaks nothing -----------------------
    probe = f"probe {tag}"
    secrets.append(probe.encode())
    ack = await sam.send_text(msg.conversation_id, probe)
    await browser("expectMessage", page="w", text=probe)
    stored = (await sam.client.sync(msg.conversation_id, after_seq=ack.seq - 1)).messages[0]
    bad = e2.Envelope.FromString(stored.content.encrypted)
    bad.ciphertext = bytes([bad.ciphertext[0] ^ 1]) + bad.ciphertext[1:]
    await sam.client.send(msg.conversation_id, pb.Content(encrypted=bad.SerializeToString()))
    shown = await browser("expectUndecryptable", page="w")
    assert "Cannot decrypt" in shown
    await browser("shot", page="w", name=f"e2ee-{suite}-03-cannot-decrypt")

    # ---- group of three: SDK -> web, web -> both SDKs ------------------------------------------
    group = await sam.client.create_group(f"Trio{tag}", [f"wendy{tag}", f"sue{tag}"])
    gid = group.conversation_id
    g1 = f"sam to group {tag}"
    secrets.append(g1.encode())
    await sam.send_text(gid, g1)
    await browser("openConv", page="w", title=f"Trio{tag}")
    assert (await browser("expectMessage", page="w", text=g1))["locked"]
    g2 = f"web to group {tag}"
    secrets.append(g2.encode())
    assert (await browser("send", page="w", text=g2))["locked"]
    for e in (sam, sue):
        while True:
            gm, opened = await next_opened(e)
            if opened.payload.text == g2:
                break
        env = e2.Envelope.FromString(gm.content.encrypted)
        assert env.kind == e2.Envelope.GROUP and env.sender_key.epoch == 1
    await browser("shot", page="w", name=f"e2ee-{suite}-04-group")

    # ---- removing a member rotates the web client's sender key ----------------------------------
    await sam.change_members(gid, pb.MemberChange.REMOVE, [f"sue{tag}"])
    await browser("expectSystem", page="w", text="removed")
    g3 = f"web after removal {tag}"
    secrets.append(g3.encode())
    await browser("send", page="w", text=g3)
    while True:
        gm, opened = await next_opened(sam)
        if opened.payload.text == g3:
            break
    assert e2.Envelope.FromString(gm.content.encrypted).sender_key.epoch == 2

    # ---- a changed identity key: warning, nothing sent, accept, then it works --------------------
    sam.client.drain_events()
    await sam.client.close()
    # Same account and device id, new keys: a reinstall, or a server swapping keys.
    sam2 = await sdk_user(node, f"sam{tag}", tmp_path / "reinstalled", register=False)
    await browser("openConv", page="w", title=f"Sam{tag}")
    blocked = f"blocked until accepted {tag}"
    refused = await browser("sendRefused", page="w", text=blocked)
    assert "not sent" in refused
    banner = await browser("expectIdentityBanner", page="w")
    assert "security key" in banner and "changed" in banner
    await browser("shot", page="w", name=f"e2ee-{suite}-05-identity-changed")
    await browser("acceptIdentity", page="w")
    secrets.append(blocked.encode())
    await browser("retryFailed", page="w", text=blocked)
    while True:
        _, opened = await next_opened(sam2)
        if opened.payload.text == blocked:
            break

    assert await browser("consoleErrors") == []
    await sam2.client.close()
    await sue.client.close()

    # ---- the node holds no plaintext ---------------------------------------------------------------
    disk = stored_bytes(node.home)
    assert len(disk) > 10000
    for s in secrets:
        assert s not in disk, f"plaintext {s!r} found in the node's data directory"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("node", SUITES[:1], indirect=True)
async def test_web_client_refuses_a_ghost_device_and_signs_itself_with_the_backup(
        node: Node, browser: Browser, tmp_path: Path) -> None:
    """Cross-signing in the browser (docs/e2ee.md 9.1): a device the server made for an SDK
    user gets nothing from the web client, which says so; that user's own new browser is
    unsigned until they type their key backup passphrase, and then receives."""
    tag = uuid.uuid4().hex[:8]
    keys = tmp_path / "sdk-keys"
    await browser("page", page="w")
    await browser("register", page="w", username=f"wendy{tag}", password="web-password-1",
                  name="Wendy Web")
    sam = await sdk_user(node, f"sam{tag}", keys)
    assert sam.signed
    # The server logs in as sam on a device id of its own and publishes keys for it; it has
    # neither sam's user key nor the passphrase, so it cannot sign them.
    ghost_c = Client(node.ws, device_id="ghost")
    await ghost_c.connect()
    await ghost_c.login(f"sam{tag}", "sdk-password-1")
    ghost = await ghost_c.e2ee(keys / "ghost", trusted_org_root=node.org_root)
    assert not ghost.signed

    await browser("startDirect", page="w", peer=f"sam{tag}", title=f"Sam{tag}")
    first = f"only for sam's signed devices {tag}"
    assert (await browser("send", page="w", text=first))["locked"]
    msg, opened = await next_opened(sam)
    assert opened.payload.text == first
    env = e2.Envelope.FromString(msg.content.encrypted)
    assert {(r.user_id, r.device_id) for r in env.recipients
            if r.user_id == sam.device.user_id} == {(sam.device.user_id, "py")}
    banner = await browser("expectDeviceBanner", page="w", text="ghost")
    assert "did not sign" in banner
    await browser("shot", page="w", name=f"e2ee-{node.suite}-06-ghost-device-refused")

    # Sam opens the web client: a new device of a user with a user key.
    await browser("page", page="s")
    state = await browser("login", page="s", username=f"sam{tag}", password="sdk-password-1")
    assert state["status"] == "on" and "passphrase" in state["notSigned"], state
    await browser("expectDeviceBanner", page="s", text="not signed")
    await browser("shot", page="s", name=f"e2ee-{node.suite}-07-device-not-signed")
    assert await browser("restoreKey", page="s", passphrase=f"sam{tag} backup passphrase") == ""
    await browser("openConv", page="s", title="Wendy Web")
    second = f"now to sam's browser too {tag}"
    await browser("send", page="w", text=second)
    assert (await browser("expectMessage", page="s", text=second))["locked"]

    # The safety number: wendy's page and sam's SDK show the same digits (sam's side is
    # his user key, so his new browser did not change it); marking it verified sticks.
    await browser("openConv", page="w", title=f"Sam{tag}")
    shown = await browser("safetyNumber", page="w", markVerified=True)
    assert shown["number"] == sam.safety_number(wendy_id := (await sam.client.users(
        [f"wendy{tag}"]))[0].user_id), (shown["number"], wendy_id)
    assert shown["qr"].startswith("data:image/png;base64,")
    again = await browser("safetyNumber", page="w")
    assert again["number"] == shown["number"] and again["status"] == "Verified"
    await ghost_c.close()
    await sam.client.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("node", ["international:no-root"], indirect=True)
async def test_web_client_refuses_an_escrow_key_no_root_vouches_for(node: Node,
                                                                   browser: Browser) -> None:
    """docs/e2ee.md section 10.1 in the browser: escrow is on, but the node names no
    organisation root, so the page cannot check the escrow key: it says so and sends
    nothing (e2ee.required is on)."""
    tag = uuid.uuid4().hex[:8]
    await browser("page", page="w")
    reg = await browser("register", page="w", username=f"wendy{tag}", password="web-password-1",
                        name="Wendy Web")
    assert reg["status"] == "error" and "escrow key is not trusted" in reg["reason"], reg
    assert "organisation root" in reg["reason"], reg
    sdk = Client(node.ws, device_id="py")
    await sdk.connect()
    await sdk.register(f"sam{tag}", "sdk-password-1", "Sam")
    await browser("startDirect", page="w", peer=f"sam{tag}", title="Sam")
    refused = await browser("sendRefused", page="w", text=f"must not leave {tag}")
    assert "not sent" in refused
    await browser("shot", page="w", name="e2ee-escrow-untrusted")
    await sdk.close()

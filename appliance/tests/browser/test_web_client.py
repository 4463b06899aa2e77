"""The web client in a real browser against a real node.

Starts ``tongxin serve`` as a subprocess on a free loopback port (a small
``max_frame_payload`` so that long messages are fragmented both ways), then
runs ``node appliance/web/tests/e2e.mjs``, which drives Debian's headless
Chromium with playwright-core: two users in two browser contexts chat both
ways, send a file, see receipts, presence and typing, page back through
history, and a phone-width page logs in. The users' browsers are zh-CN:
the page must be Chinese, an en-US browser English, and the 中文/English
switch must stick (docs/web-client.md "Language"). Screenshots land in
test-artifacts/browser/; a CJK font must be installed so they show Chinese.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
WEB = ROOT / "appliance" / "web"
BUILT = ROOT / "appliance" / "src" / "tongxin" / "web"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))

# Small enough that a 12,000-character message is fragmented on the way in
# and on the way out; the protocol's minimum is 1024.
CONFIG = """\
server:
  max_frame_payload: 4096
accounts:
  scrypt_n: 1024
logging:
  json: false
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _require_tools() -> str:
    """Fail (not skip) with the command that fixes whatever is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: the browser test needs Debian's headless "
                    "Chromium. Install it with `apt-get install -y chromium` (.ci/run does).",
                    pytrace=False)
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: `make web` installs nodejs and npm", pytrace=False)
    if not (WEB / "node_modules" / "playwright-core").is_dir():
        pytest.fail("appliance/web/node_modules is missing: run `make web`", pytrace=False)
    fc_list = shutil.which("fc-list")
    fonts = subprocess.run([fc_list, ":lang=zh"], capture_output=True, text=True).stdout if fc_list else ""
    if not fonts.strip():
        pytest.fail("no CJK font is installed (`fc-list :lang=zh` is empty): the zh-CN pages and their "
                    "screenshots would show boxes. Install one with `apt-get install -y "
                    "fonts-wqy-microhei` (.ci/run does).", pytrace=False)
    page = BUILT / "index.html"
    sources = [*(WEB / "src").rglob("*.js"), *(WEB / "src").rglob("*.json"), WEB / "index.html",
               WEB / "style.css", WEB / "build.mjs"]
    if not page.exists() or page.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        pytest.fail("the web client bundle is missing or older than its sources: run `make web`",
                    pytrace=False)
    return node


def _tongxin() -> list[str]:
    script = Path(sys.executable).parent / "tongxin"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from tongxin.cli.main import main; sys.exit(main())"]


def _serve(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``tongxin serve ARGS`` as a subprocess, its output in ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen([*_tongxin(), "serve", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    """Until ``url``/healthz answers 200 (30 s); fails with the node's log otherwise."""
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"tongxin serve exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"tongxin serve did not answer /healthz within 30s:\n{log_path.read_text()}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def node_url(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    cfg = tmp_path / "tongxin.yaml"
    cfg.write_text(CONFIG)
    log_path = tmp_path / "server.log"
    proc = _serve(["--allow-registration", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                  {**os.environ, "TONGXIN_HOME": str(tmp_path / "home")}, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log_path)
        yield url
    finally:
        _stop(proc)


@pytest.mark.timeout(300)
def test_web_client_two_users_in_chromium(node_url: str) -> None:
    node = _require_tools()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(
            [node, str(WEB / "tests" / "e2e.mjs"), node_url, "--artifacts", str(ARTIFACTS)],
            cwd=WEB, capture_output=True, text=True, timeout=240,
            env={**os.environ, "CHROMIUM": str(CHROMIUM)})
    except subprocess.TimeoutExpired as exc:
        partial = b"".join(x if isinstance(x, bytes) else (x or "").encode()
                           for x in (exc.stdout, exc.stderr))
        pytest.fail(f"the browser test did not finish within 240s:\n{partial.decode(errors='replace')}")
    out = run.stdout + run.stderr
    print(out)
    assert run.returncode == 0, f"browser test failed (exit {run.returncode}):\n{out}"
    expected = [
        "the page is served with its Content-Security-Policy",
        "a zh-CN browser gets the Chinese UI",
        "an en-US browser gets the English UI",
        "the 中文/English switch changes the page at once and the choice survives a reload",
        "dates and times follow the language",
        "two users registered and logged in",
        "bob opened the chat and sees alice's message",
        'alice sees "read" on her message',
        "bob replied and alice received it live",
        "alice sees bob online",
        "alice sees bob typing",
        "alice recalled a message",
        "arrived intact",
        "after SYNC before_seq paging",
        "alice created a group with bob",
        "at 390px",
        "no errors in the page consoles",
    ]
    if importlib.util.find_spec("tongxin.server.files_api") is not None:
        # The node has the files API (docs/files-api.md), so the file step must run.
        expected += ["alice uploaded a", "downloaded it with the same sha256",
                     "alice sees her file message read by bob"]
    ok_lines = [line for line in out.splitlines() if line.startswith("ok - ")]
    for verified in expected:
        assert any(verified in line for line in ok_lines), f"not verified: {verified}\n{out}"
    # A small max_frame_payload must have made both directions fragment.
    assert "alice sent 0 fragment frames" not in out, out
    assert "e2e: " in out and " checks passed" in out, out
    for shot in ("01-login-desktop", "01-login-en", "06-alice-chat-desktop", "07-alice-group-en",
                 "10-phone-list", "11-phone-chat"):
        assert (ARTIFACTS / f"{shot}.png").stat().st_size > 1000, shot

"""The administrators' console (docs/console.md) in a real browser against a real node.

Provisions the three administrators of 三员分立 the way docs/compliance.md says
(``tongxin admin create --role ... --password-stdin``, which prints each TOTP
secret once), starts ``tongxin serve`` on embedded defaults on a free loopback
port with ``compliance.step_up_window: 0`` (every sensitive action asks for a
fresh TOTP code, so the console's step-up dialog is exercised) and the audit
key made by ``tongxin audit sign`` pinned in ``compliance.audit_trusted_keys``, then runs
``node appliance/web/tests/console.mjs``: each role signs in with its TOTP code,
does its work, is refused another role's page and the API behind it, and the
auditor finds every action in the audit trail. axe-core checks every page;
screenshots (zh-CN) land in test-artifacts/console/.

For the sysadmin's groups page, two ordinary accounts made with ``tongxin user add``
hold a group that one of them creates through the Python SDK, as any client would;
console.mjs finds it by name (CONSOLE_GROUP).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tongxin.client import Client, TongxinError
from tongxin.proto import tongxin_pb2 as pb
from tongxin.wire import closecodes

sys.path.insert(0, str(Path(__file__).parent))
from test_web_client import (
    BUILT,
    CHROMIUM,
    ROOT,
    WEB,
    _free_port,
    _require_tools,
    _serve,
    _stop,
    _tongxin,
    _wait_healthy,
)

ARTIFACTS = ROOT / "test-artifacts" / "console"

# Secrets the node is given (the configuration page shows neither: only "set").
DB_PASSWORD = "Db-Console-Secret-7q"
REDIS_PASSWORD = "Redis-Console-Secret-4k"

CONFIG = f"""\
accounts:
  scrypt_n: 1024
storage:
  mysql_dsn: "mysql://tongxin:{DB_PASSWORD}@db.internal:4000/tongxin"
compliance:
  step_up_window: 0
logging:
  json: false
site:
  standby_status_urls: "{{standbys}}"
"""

ADMINS = {
    "sysadmin": ("sysadm", "Sys-admin-pass-1"),
    "secadmin": ("secadm", "Sec-admin-pass-2"),
    "auditor": ("audrey", "Audit-pass-3"),
}


@dataclass
class Standbys:
    """site.standby_status_urls for the node, and the URL that makes the standby which
    is behind catch up (POST), so the driver can check that the panel reads again."""

    urls: str
    catch_up: str


@pytest.fixture
def standbys() -> Iterator[Standbys]:
    """Two DR standbys as the site panel reads them (503 and the lag on /readyz, like
    tongxin.server.standby): one keeping up, one 42 s behind until told to catch up
    (POST /catch-up: 2 s from then on); and a port nobody listens on."""
    def answering(node: str, lag: float, silent: float) -> type[BaseHTTPRequestHandler]:
        state = {"lag": lag, "silent": silent}

        class Readyz(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"ready": False, "reason": "standby", "role": "standby",
                                   "site": "dr", "node": node,
                                   "replication_lag_seconds": state["lag"],
                                   "replication_silent_seconds": state["silent"],
                                   "replication_lag_at_last_advance_seconds": 1.0}).encode()
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                state.update(lag=2.0, silent=0.5)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass
        return Readyz

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), answering(node, lag, silent))
               for node, lag, silent in (("dr-standby-01", 1.5, 0.5),
                                         ("dr-standby-02", 42.0, 41.0))]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield Standbys(
            urls=",".join([*(f"http://127.0.0.1:{srv.server_address[1]}" for srv in servers),
                           f"http://127.0.0.1:{_free_port()}"]),
            catch_up=f"http://127.0.0.1:{servers[1].server_address[1]}/catch-up")
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def _provision(cfg: Path, env: dict[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for role, (name, password) in ADMINS.items():
        run = subprocess.run([*_tongxin(), "admin", "create", "--config", str(cfg), "--role", role,
                              "--password-stdin", name], input=password + "\n", env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        secret = re.search(r"TOTP secret: ([A-Z2-7]+)", run.stdout)
        assert secret, run.stdout
        out[role] = {"username": name, "password": password, "secret": secret.group(1)}
    return out


GROUP = {"name": "同心项目组", "owner": "qunzhu", "member": "chengyuan",
         "password": "Qun-zhu-pass-1"}


def _group_members(cfg: Path, env: dict[str, str]) -> None:
    for name in (GROUP["owner"], GROUP["member"]):
        run = subprocess.run([*_tongxin(), "user", "add", name, "--config", str(cfg),
                              "--password-stdin"], input=GROUP["password"] + "\n", env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr


async def _create_group(port: int) -> str:
    async with Client(f"ws://127.0.0.1:{port}/ws", device_id="console-test") as c:
        await c.login(GROUP["owner"], GROUP["password"])
        conv = await c.create_group(GROUP["name"], [GROUP["member"]])
        await c.send_text(conv.conversation_id, "群里的消息不应出现在控制台")
        return str(conv.conversation_id)


LIVE_DEVICE = "console-live-phone"


class _LiveClient:
    """An ordinary user's client kept connected over WebSocket, in a thread of its own,
    while console.mjs runs: the secadmin forces it out from the sessions page. Records
    its token and the close code the node sent."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.token = ""
        self.close_code: int | None = None
        self.ready = threading.Event()
        self.done = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        try:
            async with Client(self.url, device_id=LIVE_DEVICE) as c:
                auth = await c.login(GROUP["member"], GROUP["password"])
                self.token = auth.token
                self.ready.set()
                while not c.closed and not self.stop.is_set():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                self.close_code = c.close_code if c.closed else None
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.ready.set()
            self.done.set()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(30) and self.error is None and self.token, self.error


async def _resume_refused(port: int, token: str) -> int:
    """The error code the node answers a resume with the token (0: accepted)."""
    async with Client(f"ws://127.0.0.1:{port}/ws", device_id=LIVE_DEVICE) as c:
        try:
            await c.resume(token)
        except TongxinError as err:
            return int(err.code)
    return 0


def _evidence(home: Path) -> dict[str, str]:
    """The auditor's drill reports page reads the node's evidence/: a DR drill report as
    `tongxin drill report` writes it (JSON and HTML), its run id with markup that must
    stay text, and a later failed backup as `tongxin backup create` records one."""
    sys.path.insert(0, str(ROOT / "appliance" / "tests"))
    from drill_sample import drill_report

    from tongxin.drill.report import write_report

    run_id = "演练<b>01</b><script>x()</script>"
    drill_json, _ = write_report(drill_report(run_id=run_id), home / "evidence")
    backup = home / "evidence" / "backup-20261202T023000Z.json"
    error = "目标磁盘已满 disk full"
    backup.write_text(json.dumps({"ok": False, "started_at": "2026-12-02T02:30:00Z",
                                  "finished_at": "2026-12-02T02:31:00Z", "target": "/mnt/nfs",
                                  "error": error}, ensure_ascii=False), encoding="utf-8")
    return {"drillFile": drill_json.name, "drillRunId": run_id, "backupFile": backup.name,
            "backupError": error}


@pytest.mark.timeout(420)
def test_console_three_roles_in_chromium(tmp_path: Path, standbys: Standbys) -> None:
    node = _require_tools()
    page = BUILT / "console.html"
    sources = [p for p in (WEB / "src" / "console").rglob("*") if p.is_file()]
    if not page.exists() or page.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        pytest.fail("the console bundle is missing or older than its sources: run "
                    "`cd appliance/web && node build.mjs`", pytrace=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    config = CONFIG.replace("{standbys}", standbys.urls)
    cfg = tmp_path / "tongxin.yaml"
    cfg.write_text(config)
    env = {**os.environ, "TONGXIN_HOME": str(tmp_path / "home"),
           "TONGXIN_REDIS_PASSWORD": REDIS_PASSWORD}
    evidence = _evidence(tmp_path / "home")
    admins = _provision(cfg, env)
    _group_members(cfg, env)
    # Pin the audit key the node made (docs/compliance.md, "Trusted keys"): the chain
    # verifies until the secadmin rotates it; the new key is then reported as not pinned.
    signed = subprocess.run([*_tongxin(), "audit", "sign", "--config", str(cfg)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert signed.returncode == 0, signed.stdout + signed.stderr
    pins = sorted(p.stem for p in (tmp_path / "home" / "audit-keys").glob("*.pem"))
    assert pins, "tongxin admin create made no audit key"
    cfg.write_text(config.replace("compliance:\n",
                                  f"compliance:\n  audit_trusted_keys: \"{','.join(pins)}\"\n"))
    port = _free_port()
    log_path = tmp_path / "server.log"
    proc = _serve(["--config", str(cfg), "--listen", f"127.0.0.1:{port}"], env, log_path)
    try:
        # The page is opened at once: the node must answer first (a loaded host is slow).
        _wait_healthy(proc, f"http://127.0.0.1:{port}", log_path)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/console/", timeout=10) as resp:
            csp = resp.headers.get("Content-Security-Policy", "")
        # Only the console's own script runs, and no other site may frame it.
        for directive in ("script-src 'self';", "default-src 'none';", "frame-ancestors 'none'"):
            assert directive in csp, f"console CSP lacks {directive!r}: {csp!r}"
        group = {**GROUP, "id": asyncio.run(_create_group(port))}
        live = _LiveClient(port)
        live.start()
        run = subprocess.run(
            [node, str(WEB / "tests" / "console.mjs"), f"http://127.0.0.1:{port}",
             "--artifacts", str(ARTIFACTS)],
            cwd=WEB, capture_output=True, text=True, timeout=360,
            env={**os.environ, "CHROMIUM": str(CHROMIUM), "CONSOLE_ADMINS": json.dumps(admins),
                 "CONSOLE_GROUP": json.dumps(group),
                 "CONSOLE_SECRETS": json.dumps([DB_PASSWORD, REDIS_PASSWORD]),
                 "CONSOLE_EVIDENCE": json.dumps(evidence),
                 "CONSOLE_LIVE": json.dumps({"username": GROUP["member"], "device": LIVE_DEVICE}),
                 "CONSOLE_STANDBY_CATCH_UP": standbys.catch_up})
        # The secadmin's force logout closed the live client's connection (4010) and its
        # token is refused afterwards, on a new connection.
        live.done.wait(10)
        live.stop.set()
        live.thread.join(10)
        refused_with = asyncio.run(_resume_refused(port, live.token)) if run.returncode == 0 else -1
    finally:
        _stop(proc)
    out = run.stdout + run.stderr
    print(out)
    assert run.returncode == 0, f"console test failed (exit {run.returncode}):\n{out}\n" \
                                f"--- server log ---\n{log_path.read_text()[-4000:]}"
    assert live.error is None, live.error
    assert live.close_code == closecodes.SESSION_REVOKED, live.close_code
    assert refused_with == pb.TOKEN_REVOKED, refused_with
    ok_lines = [line for line in out.splitlines() if line.startswith("ok - ")]
    for verified in ("sysadmin signed in with password and TOTP",
                     "sysadmin created, disabled, enabled",
                     "sysadmin built a unit and a sub-unit",
                     "deleting a unit that still has",
                     "the users page shows each user's unit",
                     "the groups page lists the group",
                     "the site panel shows the DR copy",
                     "the configuration page shows accounts.scrypt_n 1024",
                     "sysadmin is refused the auditor's pages (audit trail, drill reports)",
                     "secadmin enrolled a new TOTP for the auditor",
                     "secadmin saw the at-rest key status and rotated the master key",
                     "secadmin rotated the audit signing key",
                     "secadmin changed the password policy from the page",
                     "secadmin is refused the sysadmin's page and its API",
                     "secadmin forced the live session of",
                     "the audit trail shows who forced whom out",
                     "no raw catalogue key shown",
                     "auditor signed in with the TOTP enrolled on the secadmin's page",
                     "the audit trail shows the sysadmin's actions",
                     "the audit trail shows the secadmin's master key rotation",
                     "the audit chain verifies from the page",
                     "the compliance report is shown and downloaded",
                     "the drill reports page lists the failed backup and the drill",
                     "auditor is refused the secadmin's page and its API",
                     "no serious or critical accessibility violations",
                     "follows the browser language"):
        assert any(verified in line for line in ok_lines), f"not verified: {verified}\n{out}"
    for shot in ("01-login", "02-users", "02b-org", "02c-groups", "03-status", "03b-config",
                 "05-admins-totp", "05b-sessions", "06-keys-atrest", "06b-policy",
                 "06d-policy-changed", "09-audit",
                 "10-report", "10b-drills", "10c-drill-open"):
        assert (ARTIFACTS / f"{shot}.png").stat().st_size > 1000, shot

"""The real ``tongxin`` command, run as subprocesses against a temporary TONGXIN_HOME."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

# conftest is importable under pytest (pythonpath) and when mypy checks tests/ whole.
from conftest import free_port  # type: ignore[import-not-found, unused-ignore]

from tongxin.client import Client, pb
from tongxin.config import documented_keys
from tongxin.e2ee import E2EEError
from tongxin.wire import closecodes

PASSWORD = "password-1"
Proc = asyncio.subprocess.Process


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    """Subprocesses started by a test; killed at teardown whatever happened."""
    started: list[Proc] = []
    yield started
    for p in started:
        if p.returncode is None:
            p.kill()
        await p.wait()


def env_for(home: Path) -> dict[str, str]:
    # `tongxin chat` speaks Chinese under a zh* locale: these tests read its English lines.
    return {**os.environ, "TONGXIN_HOME": str(home), "PYTHONUNBUFFERED": "1", "TONGXIN_LANG": "en"}


async def spawn(procs: list[Proc], home: Path, *args: str, stderr: Path | None = None,
                env: dict[str, str] | None = None) -> Proc:
    err = open(stderr, "wb") if stderr else asyncio.subprocess.PIPE  # noqa: ASYNC230, SIM115
    try:
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tongxin.cli.main", *args, env={**env_for(home), **(env or {})},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err)
    finally:
        if not isinstance(err, int):
            err.close()
    procs.append(p)
    return p


async def run(procs: list[Proc], home: Path, *args: str,
              stdin: str = "") -> tuple[int, str, str]:
    p = await spawn(procs, home, *args)
    async with asyncio.timeout(60):
        out, err = await p.communicate(stdin.encode())
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def read_until(p: Proc, needle: str, wait: float = 20.0) -> list[str]:
    """Lines of ``p``'s stdout up to and including the first containing ``needle``."""
    assert p.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(wait):
        while True:
            raw = await p.stdout.readline()
            if not raw:
                raise AssertionError(f"stdout ended before {needle!r}; got {lines}")
            line = raw.decode().rstrip("\n")
            lines.append(line)
            if needle in line:
                return lines


async def write(p: Proc, text: str) -> None:
    assert p.stdin is not None
    p.stdin.write(text.encode())
    await p.stdin.drain()


async def exit_code(p: Proc, wait: float = 10.0) -> int:
    async with asyncio.timeout(wait):
        return await p.wait()


async def ready(port: int, server: Proc, wait: float = 30.0) -> None:
    """Poll /readyz until the node answers ready (it has no other signal)."""
    url = f"http://127.0.0.1:{port}/readyz"
    async with aiohttp.ClientSession() as http, asyncio.timeout(wait):
        while True:
            assert server.returncode is None, "tongxin serve exited"
            try:
                async with http.get(url) as resp:
                    if resp.status == 200 and (await resp.json())["ready"] is True:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


# ---- accounts and configuration -----------------------------------------------


async def test_user_add_and_duplicate(home: Path, procs: list[Proc]) -> None:
    code, out, err = await run(procs, home, "user", "add", "alice", "--password-stdin",
                               stdin=PASSWORD + "\n")
    assert code == 0, err
    assert out.startswith("created alice (u_")
    code, out, err = await run(procs, home, "user", "add", "alice", "--password-stdin",
                               stdin="other-password\n")
    assert code != 0
    assert "alice" in err and "taken" in err
    code, out, err = await run(procs, home, "user", "add", "bob", "--password-stdin",
                               stdin="short\n")
    assert code != 0 and "at least" in err
    code, out, _ = await run(procs, home, "user", "list")
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines()]
    assert [(r[1], r[3]) for r in rows] == [("alice", "active")]


async def test_config_defaults_lists_every_key(home: Path, procs: list[Proc]) -> None:
    code, out, err = await run(procs, home, "config", "defaults")
    assert code == 0, err
    printed = [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]
    assert printed == [key for key, _, _ in documented_keys()]
    assert "server.listen: '127.0.0.1:8080'" in out
    assert "chat.recall_window: 120.0" in out


async def test_bad_config_exits_2_naming_the_key(home: Path, procs: list[Proc],
                                                 tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("server:\n  listne: 127.0.0.1:9999\n", encoding="utf-8")
    code, out, err = await run(procs, home, "serve", "--config", str(bad))
    assert code == 2
    assert "server.listne" in err and "listen" in err
    assert "running" not in out
    wrong_type = tmp_path / "wrong.yml"
    wrong_type.write_text("chat:\n  recall_window: soon\n", encoding="utf-8")
    code, _, err = await run(procs, home, "config", "check", "--config", str(wrong_type))
    assert code == 2 and "chat.recall_window" in err
    good = tmp_path / "good.yml"
    good.write_text("chat:\n  recall_window: 60\n", encoding="utf-8")
    code, out, _ = await run(procs, home, "config", "check", "--config", str(good))
    assert code == 0 and "valid" in out


async def test_database_down_is_one_line_and_exit_2(home: Path, procs: list[Proc],
                                                    tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the database is "down"
    cfg = tmp_path / "down.yml"
    cfg.write_text("storage:\n  backend: mysql\n"
                   f"  mysql_dsn: mysql://tx:secret-pw@127.0.0.1:{port}/txdown\n"
                   "  mysql_timeout: 2\n", encoding="utf-8")
    for args in (("user", "list"), ("audit", "tail"), ("migrate",)):
        code, _out, err = await run(procs, home, *args, "--config", str(cfg))
        assert code == 2, (args, err)
        assert "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"mysql at 127.0.0.1:{port}" in lines[0], err
        assert "secret-pw" not in err


# ---- serve and chat -------------------------------------------------------------


async def serve_alice_and_bob(home: Path, procs: list[Proc], tmp_path: Path) -> tuple[Proc, str]:
    """``tongxin serve`` with accounts alice and bob; the node and its WebSocket URL."""
    for name in ("alice", "bob"):
        code, _, err = await run(procs, home, "user", "add", name, "--password-stdin",
                                 stdin=PASSWORD + "\n")
        assert code == 0, err
    port = free_port()
    server = await spawn(procs, home, "serve", "--listen", f"127.0.0.1:{port}",
                         stderr=tmp_path / "serve.log")
    await ready(port, server)
    return server, f"ws://127.0.0.1:{port}/ws"


async def test_serve_and_two_terminal_chats(home: Path, procs: list[Proc],
                                            tmp_path: Path) -> None:
    server, url = await serve_alice_and_bob(home, procs, tmp_path)

    alice = await spawn(procs, home, "chat", "--url", url, "--user", "alice",
                        "--password-stdin", "--to", "bob", "--device", "cli-alice")
    await write(alice, PASSWORD + "\n")
    await read_until(alice, "-- now chatting with bob")

    # Bob's password and first message arrive in one write, as from a pipe.
    bob = await spawn(procs, home, "chat", "--url", url, "--user", "bob",
                      "--password-stdin", "--to", "alice", "--device", "cli-bob")
    await write(bob, PASSWORD + "\nhi alice, from bob\n")
    await read_until(bob, "-- now chatting with alice")
    sent = await read_until(bob, "sent #")
    assert sent[-1].strip().startswith("sent #")
    await read_until(alice, "bob: hi alice, from bob")

    await write(alice, "hello bob, from alice\n")
    await read_until(alice, "sent #")
    await read_until(bob, "alice: hello bob, from alice")

    # A third party sees the same conversation through the SDK.
    watcher = Client(url, device_id="sdk")
    await watcher.connect()
    try:
        await watcher.login("bob", PASSWORD)
        [conv] = await watcher.conversations()
        log = await watcher.sync_all(conv.conversation_id)
        assert [m.content.text for m in log if m.kind == pb.CHAT] == [
            "hi alice, from bob", "hello bob, from alice"]

        for p in (alice, bob):
            await write(p, "/quit\n")
        assert await exit_code(alice) == 0
        assert await exit_code(bob) == 0

        # SIGTERM: the node closes connections (1001) and exits 0.
        server.send_signal(signal.SIGTERM)
        assert await exit_code(server, wait=10) == 0
        reader = watcher._reader  # ends when the server closes the connection
        assert reader is not None
        async with asyncio.timeout(5):
            await asyncio.shield(reader)
        assert watcher.close_code == closecodes.GOING_AWAY
    finally:
        await watcher.close()


async def test_terminal_chats_end_to_end_encrypted_refuse_a_ghost_device(
        home: Path, procs: list[Proc], tmp_path: Path) -> None:
    """``tongxin chat --e2ee``: the server stores ciphertext only, and a device the server
    made for bob is named as unsigned in alice's terminal and gets nothing (docs/e2ee.md
    9.1)."""
    _, url = await serve_alice_and_bob(home, procs, tmp_path)
    passphrase = {"TONGXIN_KEY_BACKUP_PASSPHRASE": "bob's long backup passphrase"}

    bob = await spawn(procs, home, "chat", "--url", url, "--user", "bob", "--password-stdin",
                      "--to", "alice", "--device", "cli-bob", "--e2ee", str(tmp_path / "bob"),
                      env=passphrase)
    await write(bob, PASSWORD + "\n")
    await read_until(bob, "end-to-end encryption on")
    await read_until(bob, "-- now chatting with alice")

    ghost_c = Client(url, device_id="ghost")
    await ghost_c.connect()
    try:
        await ghost_c.login("bob", PASSWORD)
        ghost = await ghost_c.e2ee(tmp_path / "ghost")
        assert not ghost.signed

        alice = await spawn(procs, home, "chat", "--url", url, "--user", "alice",
                            "--password-stdin", "--to", "bob", "--device", "cli-alice",
                            "--e2ee", str(tmp_path / "alice"))
        await write(alice, PASSWORD + "\nonly for bob's real devices\n")
        lines = await read_until(alice, "sent #")
        assert "end-to-end encrypted" in lines[-1], lines
        assert any("bob/ghost" in line and "NOT signed" in line for line in lines), lines
        await read_until(bob, "alice: only for bob's real devices")

        [conv] = await ghost_c.conversations()
        log = [m for m in await ghost_c.sync_all(conv.conversation_id) if m.kind == pb.CHAT]
        assert log and all(m.content.HasField("encrypted") for m in log)
        assert all(b"only for bob" not in m.content.encrypted for m in log)
        for m in log:
            with pytest.raises(E2EEError):
                await ghost.open(m)
        for p in (alice, bob):
            await write(p, "/quit\n")
            assert await exit_code(p) == 0
    finally:
        await ghost_c.close()

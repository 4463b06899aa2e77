"""Start `tongxin serve` once and see how it ends: the tests of start-up
errors (a wrong password, CA or certificate) want either the one line the
node exits with, or proof that it came up."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path


async def serve_once(config: Path, env: dict[str, str],
                     wait: float) -> tuple[int | None, str, str]:
    """(None, stdout, stderr) once the node says it is running (it is then
    stopped), else (exit code, stdout, stderr) when it exits by itself."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tongxin.cli.main", "serve", "--config", str(config), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(wait):
            assert proc.stdout is not None
            out = b""
            while b"is running" not in out:
                line = await proc.stdout.readline()
                if not line:
                    break
                out += line
            if b"is running" in out:
                proc.terminate()
                _, err = await proc.communicate()
                return None, out.decode(), err.decode()
            _, err = await proc.communicate()
            return proc.returncode, out.decode(), err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

"""The S3-compatible server for tests that need one (scripts/s3server.sh).

A real S3 implementation, not a mock, started once per session. If it cannot
start, the tests that need it fail with the script's output: they never skip.

Not a conftest.py: the tests import the root conftest as ``conftest``, and a
second conftest module here would shadow it. Use it as

    from s3server import s3_server_env

    @pytest.fixture(scope="session")
    def s3_server() -> Iterator[dict[str, str]]:
        yield from s3_server_env()
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

S3SERVER = Path(__file__).resolve().parents[2] / "scripts" / "s3server.sh"


def s3server(action: str, timeout: float = 1400) -> str:
    try:
        proc = subprocess.run(["bash", str(S3SERVER), action], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"s3server.sh {action} did not finish within {timeout:g}s: {exc}")
    if proc.returncode != 0:
        pytest.fail(f"s3server.sh {action} failed ({proc.returncode}); the S3 tests need it.\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc.stdout


def s3_server_env() -> Iterator[dict[str, str]]:
    """Start the server, yield its TONGXIN_S3_ENDPOINT, TONGXIN_S3_ACCESS_KEY and
    TONGXIN_S3_SECRET_KEY, stop it afterwards."""
    s3server("start")
    env: dict[str, str] = {}
    for line in s3server("env").splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            env[key] = value.strip("'\"")
    missing = {"TONGXIN_S3_ENDPOINT", "TONGXIN_S3_ACCESS_KEY", "TONGXIN_S3_SECRET_KEY"} - set(env)
    if missing:
        pytest.fail(f"s3server.sh env did not print {sorted(missing)}")
    yield env
    s3server("stop")

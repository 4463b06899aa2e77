"""The web client when the entry that served the page dies.

Two node processes of one installation (shared MariaDB database, Kafka, Redis and
token key, as the failover SDK tests use) each publish both entries in
``server.client_endpoints``. ``node appliance/web/tests/failover.mjs`` drives
headless Chromium: a page from entry A and a page from entry B chat, A is killed
with SIGKILL, and the first page must continue on B by itself (token resume,
missed message shown once, the "已切换到备用入口" banner) and send through it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from test_web_client import ARTIFACTS, WEB, _require_tools

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
# The node helpers live beside the integration tests.
from engines import (
    NodeProcess,
    _spawn,
    create_mysql_database,
    drop_mysql_database,
    free_port,
    isolated_backends,
    service_env,
    services,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, str]]:
    services("start", "redis", "kafka", "mariadb")
    yield service_env()


@pytest.fixture
async def two_entries(engines: dict[str, str], tmp_path: Path) -> AsyncIterator[list[NodeProcess]]:
    server_dsn = engines["TONGXIN_MYSQL_DSN"]
    dsn = await create_mysql_database(server_dsn)
    config = isolated_backends(engines)
    config["storage"] = {"backend": "mysql", "mysql_dsn": dsn, "mysql_pool_size": 8}
    ports = [free_port(), free_port()]
    config["server"] = {"client_endpoints": ",".join(f"ws://127.0.0.1:{p}/ws" for p in ports)}
    nodes: list[NodeProcess] = []
    try:
        for name, port in zip(("entry-a", "entry-b"), ports, strict=True):
            node = _spawn(name, tmp_path / "shared", config, tmp_path, port)
            nodes.append(node)
            await wait_ready(node.http_url, node.proc, node.log)
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        await drop_mysql_database(server_dsn, dsn)


def test_page_continues_on_the_next_entry_when_its_own_dies(
        two_entries: list[NodeProcess]) -> None:
    node = _require_tools()
    a, b = two_entries
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [node, str(WEB / "tests" / "failover.mjs"), a.http_url, b.http_url, str(a.proc.pid),
         "--artifacts", str(ARTIFACTS)],
        cwd=WEB, capture_output=True, text=True, timeout=240, check=False)
    print(run.stdout)
    assert run.returncode == 0, (f"{run.stdout}\n{run.stderr}\n--- entry-a log ---\n"
                                 f"{a.log.read_text()[-2000:]}\n--- entry-b log ---\n"
                                 f"{b.log.read_text()[-2000:]}")
    assert a.proc.wait(10) == -9  # the page's own entry really died
    assert run.stdout.count("ok - ") == 5

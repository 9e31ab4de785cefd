"""Private PostgreSQL nodes: one starts in a directory of its own, keeps its data across a
crash (SIGKILL) and a restart, and `ensure` / `stop` start and stop one for a URL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devtools import pgnode
from devtools.rabbitnode import free_port

pytestmark = pytest.mark.postgresql
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory the `postgres` user can reach (pytest's own may not be)."""
    path = Path(tempfile.mkdtemp(prefix="aifi-test-pgnode-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node(base: Path) -> Iterator[pgnode.PgNode]:
    pgnode.ensure_installed()
    made = pgnode.PgNode(base, free_port())
    yield made
    made.kill()


def test_a_node_keeps_its_data_across_a_crash(node: pgnode.PgNode) -> None:
    node.start()
    with psycopg.connect(node.url, autocommit=True) as connection:
        connection.execute("CREATE TABLE kept (n int)")
        connection.execute("INSERT INTO kept VALUES (42)")
    node.kill()
    assert not node.is_running()
    assert not pgnode.reachable(node.url, 0.5)
    node.start()
    with psycopg.connect(node.url) as connection:
        assert connection.execute("SELECT n FROM kept").fetchall() == [(42,)]
    node.stop()
    assert not node.is_running()


def test_it_listens_on_loopback_only(node: pgnode.PgNode) -> None:
    node.start()
    with psycopg.connect(node.url) as connection:
        row = connection.execute("SHOW listen_addresses").fetchone()
    assert row == ("127.0.0.1",)


def pgnode_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "devtools.pgnode", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_ensure_starts_a_node_for_the_url_and_stop_stops_it(base: Path) -> None:
    url = f"postgresql://aifi@127.0.0.1:{free_port()}/postgres"
    try:
        started = pgnode_cli("ensure", "--url", url, "--dir", str(base))
        assert started.returncode == 0, started.stderr
        assert "started a private node" in started.stdout
        assert "reachable at" in pgnode_cli("ensure", "--url", url, "--dir", str(base)).stdout
        assert pgnode_cli("stop", "--dir", str(base)).returncode == 0
        assert not pgnode.reachable(url, 0.5)
    finally:
        pgnode.PgNode(base, int(url.split(":")[-1].split("/")[0])).kill()

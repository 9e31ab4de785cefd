"""`aifi-gateway`'s process set-up: the collector is tuned for a server's steady load, and a
command that prints exits quietly when its reader goes away (`aifi-gateway asyncapi | head`)."""

from __future__ import annotations

import fcntl
import gc
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.processes import GC_THRESHOLDS, quiet_gc
from tests.support.gateway import CONFIG
from tests.support.processes import GATEWAY_ARGV, child_environ

# The smallest pipe Linux makes: a larger output blocks in the writer until it is read.
PIPE_BYTES = 4096


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_quiet_gc_freezes_what_is_alive_and_collects_the_young_less_often() -> None:
    gc.unfreeze()
    quiet_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS


def into_leaving_reader(argv: list[str], read_bytes: int) -> tuple[int, str]:
    """Run `argv` with its stdout into a pipe whose reader reads `read_bytes` and leaves
    (at 0, before the command even starts); its exit code and stderr."""
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    env = child_environ() | {"AIFI_CONFIG": str(CONFIG)}
    if not read_bytes:
        os.close(reader)
    with subprocess.Popen(
        argv, stdout=writer, stderr=subprocess.PIPE, env=env, process_group=0
    ) as child:
        os.close(writer)
        if read_bytes:
            assert len(os.read(reader, read_bytes)) > 0
            os.close(reader)
        assert child.stderr is not None
        stderr = child.stderr.read().decode()
        return child.wait(timeout=30), stderr


@pytest.mark.parametrize(
    ("command", "read_bytes"),
    [(["asyncapi"], 10), (["openapi"], 10), (["spool", "--dir", "{tmp}"], 0)],
    ids=["asyncapi", "openapi", "spool"],
)
def test_a_printing_command_exits_quietly_when_its_reader_leaves(
    command: list[str], read_bytes: int, tmp_path: Path
) -> None:
    argv = [*GATEWAY_ARGV, *(arg.format(tmp=tmp_path) for arg in command)]
    exit_code, stderr = into_leaving_reader(argv, read_bytes)
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr
    assert exit_code == 1


def test_serving_without_a_token_is_refused_before_anything_starts(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    env = child_environ() | {"AIFI_CONFIG": str(CONFIG), "AIFI_SPOOL_DIR": str(spool_dir)}
    done = subprocess.run(
        [*GATEWAY_ARGV, "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "no token configured" in done.stderr
    assert "Traceback" not in done.stderr
    assert not spool_dir.exists()


def test_a_bad_http_value_stops_it_naming_the_key(tmp_path: Path) -> None:
    env = child_environ() | {
        "AIFI_CONFIG": str(CONFIG),
        "AIFI_SPOOL_DIR": str(tmp_path / "spool"),
        "AIFI_TOKENS": "aifi=main-test-token",
        "AIFI_HTTP_PORT": "eighty",
    }
    done = subprocess.run(
        [*GATEWAY_ARGV, "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        2,
        "aifi-gateway: invalid settings: http.port: Input should be a valid integer, "
        "unable to parse string as an integer",
    )

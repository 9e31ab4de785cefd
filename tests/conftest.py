"""Fixtures: a real broker of the session's own, a gateway on a loopback port, and
per-test queues; and the session-end check that nothing the tests started outlives them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

import aio_pika
import pytest
from _pytest.terminal import TerminalReporter
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.amqp import declare_topology
from core.settings import ConsumerSettings, LedgerSettings, Settings
from devtools import pgnode, procs
from devtools.rabbitnode import Node, NodeSpec, ensure_installed, free_port
from tests.support import validators
from tests.support.broker import Capture, started_node
from tests.support.consumer import Launcher, Scratch, WorkerProcess
from tests.support.gateway import gateway_settings, started_client
from tests.support.lazyfs import LazyFS, mounted
from tests.support.loadcheck import Verdict
from tests.support.monitoring import Prometheus, Stack, prometheus_for, traffic
from tests.support.processes import GatewayProcess
from tests.support.waiting import eventually

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# A PostgreSQL the ledger tests may use instead of starting one of their own (each test
# works in a schema of its own there, dropped afterwards).
TEST_POSTGRES_URL = "TEST_POSTGRES_URL"


# Set for the session and inherited by every process it starts, gateways, workers and
# brokers alike, which is how the end of the session finds them. Not AIFI_*: the tests
# strip those from a child's environment.
SESSION_MARK = "PYTEST_AIFI_SESSION_MARK"
# Shared by every Erlang node on the machine and meant to outlive them; started by the
# first node when none runs.
SHARED_DAEMONS = frozenset({"epmd"})
STRAGGLERS = pytest.StashKey[list[str]]()
# Fixtures that give a test a broker: the session's own, or a private node to kill.
BROKER_FIXTURES = frozenset({"amqp_url", "private_node"})
# Fixtures that give a test a PostgreSQL: the session's, a schema in it, or a private node.
POSTGRESQL_FIXTURES = frozenset({"postgres_url", "pg_url", "private_pg"})
# The markers `make test-fast` deselects (its FAST_MARKERS): a test with none of them runs
# in the fast tier, which must need nothing but the .venv.
BEYOND_FAST_TIER = frozenset({"broker", "postgresql", "nodejs", "slow", "cluster", "compose"})
# The markers of the longest files, longest first.
LONG_FIRST = ("compose", "slow")


@pytest.fixture(scope="session")
def broker_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A RabbitMQ node of this session's own, on free ports, its data in a temporary
    directory: the suite never writes into the broker (or the data) of a running
    `make run`. A node that cannot start fails the run loudly, never skips it."""
    base = tmp_path_factory.mktemp("rabbitmq")
    # A unique name: epmd refuses a second node with a name that is already registered.
    node = Node(NodeSpec(f"aifi-test-{uuid.uuid4().hex[:8]}", free_port(), free_port(), base))
    try:
        ensure_installed()
        node.start(timeout_s=120)
    # A failed start has already stopped whatever it had started.
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"cannot start the test session's RabbitMQ node: {exc}", pytrace=False)
    yield node
    node.stop()


@pytest.fixture
def private_node(tmp_path: Path) -> Iterator[Node]:
    """A broker of this test's own, to kill, stop or restart at will; never the session's."""
    with started_node(tmp_path / "rabbit") as node:
        yield node


@pytest.fixture(scope="session")
def amqp_url(broker_node: Node) -> str:
    """The URL of the session's own broker."""
    return broker_node.url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server: the one at `TEST_POSTGRES_URL` if it answers, else a private
    node of this session's own, on a free port, its data in a temporary directory that the
    `postgres` user can reach, stopped at the end. A node that cannot start fails the run."""
    given = os.environ.get(TEST_POSTGRES_URL, "")
    if given and pgnode.reachable(given):
        yield given
        return
    with private_postgres("aifi-test-pg-") as node:
        yield node.url


@contextlib.contextmanager
def private_postgres(prefix: str) -> Iterator[pgnode.PgNode]:
    """A PostgreSQL node on a free port, its data in a temporary directory that the
    `postgres` user can reach, stopped and removed at the end. A node that cannot start
    fails the test loudly, never skips it."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    node = pgnode.PgNode(base, free_port())
    try:
        try:
            pgnode.ensure_installed()
            node.start(timeout_s=120)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            node.kill()
            pytest.fail(f"cannot start a private PostgreSQL: {exc}", pytrace=False)
        try:
            yield node
        finally:
            node.stop("immediate")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[pgnode.PgNode]:
    """A PostgreSQL of this test's own, to stop at will; never the session's."""
    with private_postgres("aifi-private-pg-") as node:
        yield node


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """`postgres_url` in a schema of this test's own (its `search_path`), dropped after."""
    import psycopg  # only the tests that use PostgreSQL need the driver loaded

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{separator}options=-csearch_path%3D{schema}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def ledger_settings(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerSettings:
    """A new, empty ledger on each backend: a SQLite file, a PostgreSQL schema."""
    if request.param == "sqlite":
        return LedgerSettings(db=tmp_path / "data" / "ledger.sqlite3")
    return LedgerSettings(url=request.getfixturevalue("pg_url"))


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[LazyFS]:
    """A lazy file system of this test's own, to cut the power of or fail the fsync of."""
    with mounted(tmp_path / "lazy") as fs:
        yield fs


@pytest.fixture
def gateways(disk: LazyFS) -> Iterator[list[GatewayProcess]]:
    """The gateways a test starts on `disk`, stopped before it unmounts however it ends."""
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
def examples() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in EXAMPLES.glob("*.json")}


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    connection: AbstractConnection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        yield channel


@pytest.fixture
async def capture(channel: AbstractChannel) -> AsyncIterator[Capture]:
    """A unique queue bound to `#`, deleted after the test."""
    async with Capture.bound(channel, f"test.{uuid.uuid4().hex}", "#") as cap:
        yield cap


@pytest.fixture
def store() -> int:
    """A store id no other test uses, so that routing keys are this test's own."""
    return random.randrange(10**6, 10**9)


@pytest.fixture
def consumer_base() -> ConsumerSettings:
    """The settings `scratch` makes consumers from; a module overrides this fixture to
    give its consumers other settings (short retries, say)."""
    return ConsumerSettings()


@pytest.fixture
async def scratch(amqp_url: str, consumer_base: ConsumerSettings) -> AsyncIterator[Scratch]:
    """Consumers of this test's own, made from `consumer_base`; their queues are deleted after."""
    made = Scratch(amqp_url, consumer_base)
    yield made
    await made.delete()


@pytest.fixture
def launcher(tmp_path: Path, amqp_url: str) -> Iterator[Launcher]:
    made: list[WorkerProcess] = []

    def launch(consumers: dict[str, ConsumerSettings]) -> WorkerProcess:
        made.append(WorkerProcess(tmp_path / str(len(made)), amqp_url, consumers))
        return made[-1]

    yield launch
    for each in made:
        each.kill_all()


@pytest.fixture
def settings(amqp_url: str, tmp_path: Path) -> Settings:
    return gateway_settings(amqp_url, tmp_path)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The gateway on a loopback port, connected to the broker."""
    async for started in started_client(settings):
        yield started


@pytest.fixture(scope="session")
def monitored(
    amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Prometheus]]:
    """A gateway, a ledger worker and the presence API as processes, with some traffic, and
    Prometheus with the project's rules scraping them every second; for the rule and
    dashboard tests, which only read."""
    base = tmp_path_factory.mktemp("monitored")
    store = random.randrange(10**6, 10**9)
    name = f"t{uuid.uuid4().hex[:16]}"
    routes = {"bindings": [f"entered.{store}", f"exited.{store}"]}
    stack = Stack(base / "stack", amqp_url, name, routes)
    try:
        stack.start()
        traffic(stack, store)
        with prometheus_for(base / "prometheus", stack) as prometheus:
            asyncio.run(eventually(lambda: scraped_twice(prometheus), 60, "two scrapes"))
            yield stack, prometheus
    finally:
        stack.stop()
        asyncio.run(Scratch(amqp_url, ConsumerSettings(**routes)).delete_named(name))


def scraped_twice(prometheus: Prometheus) -> bool:
    """Every target up and scraped twice (rates need two samples), the ledger's rows in."""
    counts = prometheus.query("count_over_time(up[1m]) >= 2 and up == 1")
    return len(counts) == len(prometheus.targets) and bool(
        prometheus.query("aifi_ledger_occupancy")
    )


# Figures a test measured, waiting to ride on this process's next test report: a report is
# what reaches the run's summary from any pytest-xdist worker.
PENDING_FINDINGS = pytest.StashKey[list[str]]()
FINDING = "finding"
# Where a pytest-xdist worker hands the processes it found left running to the controller.
STRAGGLERS_OUTPUT = "aifi_stragglers"


@pytest.fixture(scope="session")
def finding(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Record a measured figure for the summary at the end of the run."""
    return pytestconfig.stash.setdefault(PENDING_FINDINGS, []).append


@pytest.fixture
def checker_report(
    request: pytest.FixtureRequest, finding: Callable[[str], None]
) -> Callable[[str, Verdict], None]:
    """Keep a checker verdict for the summary at the end of the run, duplicates included."""

    def report(name: str, verdict: Verdict) -> None:
        finding(f"{request.node.name} [{name}]: {verdict.summary()}")

    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    pending = item.config.stash.get(PENDING_FINDINGS, [])
    report.user_properties += [(FINDING, text) for text in pending]
    pending.clear()
    return report


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    stragglers = config.stash.get(STRAGGLERS, [])
    if stragglers:
        terminalreporter.section("processes the tests left running (killed now)", red=True)
        for line in stragglers:
            terminalreporter.write_line(line)
    if found := _findings(terminalreporter.stats.values()):
        terminalreporter.section("measured")
        for line in found:
            terminalreporter.write_line(line)


def _findings(stats: Iterable[list[Any]]) -> list[str]:
    properties = [
        p for reports in stats for r in reports for p in getattr(r, "user_properties", ())
    ]
    return [str(value) for key, value in properties if key == FINDING]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `broker` or `postgresql` every test that needs one, through any chain of
    fixtures; then put the long files first, so that the pytest-xdist workers (a file each,
    taken in this order) do not end the run waiting on one long file started last."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if BROKER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.broker)
        if POSTGRESQL_FIXTURES & fixtures:
            item.add_marker(pytest.mark.postgresql)
    items.sort(key=_shortness)


def _shortness(item: pytest.Item) -> int:
    """0 for the compose scenarios, 1 for the other fault, fuzz and load suites, 2 else."""
    return next((rank for rank, name in enumerate(LONG_FIRST) if item.get_closest_marker(name)), 2)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """A test of the fast tier that starts a RabbitMQ or PostgreSQL node or runs a Node.js
    validator fails, however it gets there (its own fixtures included): it lacks a marker."""
    if any(item.get_closest_marker(name) for name in BEYOND_FAST_TIER):
        return (yield)
    needs = {
        "broker": (Node, "start"),
        "postgresql": (pgnode.PgNode, "start"),
        "nodejs": (validators, "_run"),
    }
    with contextlib.ExitStack() as refusals:
        for marker, (owner, name) in needs.items():
            refusals.enter_context(mock.patch.object(owner, name, _refused(item, marker)))
        return (yield)


def _refused(item: pytest.Item, marker: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        pytest.fail(f"{item.nodeid} needs what `{marker}` marks: mark it so", pytrace=False)

    return refuse


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[SESSION_MARK] = uuid.uuid4().hex


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run if anything it started is still alive, after killing it. Under
    pytest-xdist each worker checks what it started (its own mark) and hands what it found
    to the controller, which starts nothing but the workers."""
    config = session.config
    if config.pluginmanager.getplugin("dsession") is None and (left := _stragglers()):
        config.stash[STRAGGLERS] = left
        getattr(config, "workeroutput", {})[STRAGGLERS_OUTPUT] = left
    if config.stash.get(STRAGGLERS, []):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller keeps what a pytest-xdist worker found left running."""
    left = getattr(node, "workeroutput", {}).get(STRAGGLERS_OUTPUT, [])
    node.config.stash.setdefault(STRAGGLERS, []).extend(left)


def _stragglers() -> list[str]:
    """The processes with this session's mark still alive after a grace period, killed."""
    mark = f"{SESSION_MARK}={os.environ.get(SESSION_MARK, '')}".encode()
    deadline = time.monotonic() + 10.0
    # Processes being stopped right now get a moment to finish.
    while (left := _marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, _ in left:
        _kill_group(pid)
    return [f"{pid}: {cmdline}" for pid, cmdline in left]


def _marked_processes(mark: bytes) -> list[tuple[int, str]]:
    """(pid, command line) of live processes other than this one whose environment has mark."""
    found = []
    for process in procs.everyone():
        if process.pid == os.getpid() or mark not in procs.environ(process.pid):
            continue
        proc = Path("/proc", str(process.pid))
        try:
            if (proc / "comm").read_text().strip() in SHARED_DAEMONS:
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        found.append((process.pid, cmdline.strip()))
    return found


def _kill_group(pid: int) -> None:
    try:
        pgid = os.getpgid(pid)
        # Never our own group: that would take this very process down too.
        if pgid == os.getpgrp():
            os.kill(pid, signal.SIGKILL)
        else:
            os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass

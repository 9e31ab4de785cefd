"""docker-compose.yml run as users run it: the project's Dockerfile and compose file on a
private Docker engine (its own socket, data root and network namespace; tests/support/
dockerengine.py), every check made from outside through the published ports.

Runner: docker-compose 1.29 (Debian's). What it or a stand-in image does not understand is
translated, and printed at the start of the run:
- the top-level `name:` is dropped, `-p <project>` given instead;
- with the RabbitMQ stand-in (Debian's 3.10), deploy/rabbitmq-cluster.conf is mounted
  without `quorum_queue.initial_cluster_size`, `queue_leader_locator` and
  `default_queue_type`, which 3.10 refuses.
Images that cannot be pulled here are stand-ins of the same name built from Debian's
packages (devtools/standins.py); the run says which.

Scenarios share a stack where they can; each figure (time to healthy, events sent,
answered 200, arrived, lost) is printed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from devtools import standins as standins_module
from tests.support.compose import ROOT, Secrets, Stack, translate
from tests.support.dockerengine import (
    PREFIX,
    Engine,
    EngineUnavailable,
    private_engine,
)
from tests.support.loadcheck import Sent, marked_body, markers, post_one
from tests.support.processes import child_environ

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

EXAMPLES = ROOT / "examples"
DEFAULT = [
    "rabbitmq",
    "migrate",
    "gateway",
    "consumer-entered",
    "consumer-exited",
    "consumer-tracking",
    "presence",
]
PG = [
    "postgres",
    "rabbitmq",
    "migrate",
    "gateway",
    "consumer-entered-pg",
    "consumer-exited-pg",
    "consumer-tracking-pg",
    "presence-pg",
]
CLUSTER = [
    "rabbitmq-1",
    "rabbitmq-2",
    "rabbitmq-3",
    "migrate-cluster",
    "gateway-cluster",
    "consumer-entered-cluster",
    "consumer-exited-cluster",
    "consumer-tracking-cluster",
]
HEALTHY_TIMEOUT_S = 240
ARRIVAL_TIMEOUT_S = 180
Report = Callable[[str], None]


@pytest.fixture(scope="session")
def report(finding: Callable[[str], None]) -> Report:
    """A measured figure, for the run's summary."""
    return lambda text: finding(f"[compose] {text}")


@pytest.fixture(scope="session")
def engine(report: Report) -> Iterator[Engine]:
    """A private engine, torn down with all it holds at the end of the session."""
    start = time.monotonic()
    try:
        with private_engine() as made:
            report(
                f"engine up in {time.monotonic() - start:.1f} s at {made.address} "
                f"(namespace {PREFIX}{made.tag}), data root {made.data_root}"
            )
            yield made
    except (EngineUnavailable, subprocess.CalledProcessError, OSError) as exc:
        pytest.fail(f"containers cannot run here: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def standins(engine: Engine, report: Report) -> list[str]:
    """The images docker-compose.yml and the Dockerfile name: the images that cannot be
    pulled here are stand-ins of the same name, built once from Debian's packages."""
    start = time.monotonic()
    try:
        # The cache `python -m devtools.standins` fills for users: built once for both.
        made = standins_module.ensure_standins(engine.env, standins_module.DEFAULT_CACHE_DIR)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.fail(f"cannot build the stand-in images: {exc}", pytrace=False)
    if made:
        report(
            f"stand-ins used (built from Debian's packages): {', '.join(made)} "
            f"(ready in {time.monotonic() - start:.1f} s)"
        )
    return made


@pytest.fixture(scope="session")
def compose_file(
    standins: list[str], tmp_path_factory: pytest.TempPathFactory, report: Report
) -> Path:
    rabbitmq_standin = any(name.startswith("rabbitmq:") for name in standins)
    path, changes = translate(tmp_path_factory.mktemp("compose"), rabbitmq_standin)
    for change in changes:
        report(f"translated: {change}")
    return path


@pytest.fixture(scope="session")
def built(engine: Engine, compose_file: Path, report: Report) -> str:
    """The project's image, built once from its Dockerfile by compose."""
    start = time.monotonic()
    Stack(engine, compose_file, "aifibuild", Secrets()).compose("build", "gateway", timeout_s=600)
    report(f"image built in {time.monotonic() - start:.1f} s")
    return "aifi-gateway:local"


def new_stack(engine: Engine, compose_file: Path, *profiles: str) -> Stack:
    project = f"aifi{uuid.uuid4().hex[:8]}"
    return Stack(engine, compose_file, project, Secrets(), profiles)


@pytest.fixture(scope="module")
def default_stack(engine: Engine, compose_file: Path, built: str) -> Iterator[Stack]:
    stack = new_stack(engine, compose_file)
    try:
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", timeout_s=180)


def url(engine: Engine, port: int, path: str) -> str:
    return f"http://{engine.address}:{port}{path}"


async def answered(engine: Engine, timeout_s: float) -> float:
    """Seconds until the gateway's published port answers its /healthz with 200."""
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() - start < timeout_s:
            try:
                async with session.get(url(engine, 8080, "/healthz")) as response:
                    if response.status == 200:
                        return time.monotonic() - start
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"the gateway did not answer on {engine.address}:8080 in {timeout_s} s")


async def post_examples(stack: Stack) -> dict[str, int]:
    headers = {
        "Authorization": f"Bearer {stack.keys.gateway_token}",
        "Content-Type": "application/json",
    }
    statuses = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for kind in ("entered", "left", "tracking"):
            body = (EXAMPLES / f"{kind}.json").read_bytes()
            async with session.post(
                url(stack.engine, 8080, f"/webhooks/aifi/{kind}"), data=body
            ) as r:
                statuses[kind] = r.status
    return statuses


def presence_session(stack: Stack) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {stack.keys.presence_token}"}
    return aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=10))


async def presence_get(
    session: aiohttp.ClientSession, stack: Stack, path: str
) -> tuple[int, dict[str, object]]:
    """The presence API's answer (0 when none came) and its body when 200."""
    try:
        async with session.get(url(stack.engine, 8090, path)) as response:
            body = await response.read()
            return response.status, (orjson.loads(body) if response.status == 200 else {})
    except (aiohttp.ClientError, TimeoutError):
        return 0, {}


async def send_visits(stack: Stack, batch: list[str], sent: Sent, concurrency: int = 8) -> Sent:
    """POST one `entered` webhook per marker (its session id) to the published port."""
    template = orjson.loads((EXAMPLES / "entered.json").read_bytes())
    headers = {
        "Authorization": f"Bearer {stack.keys.gateway_token}",
        "Content-Type": "application/json",
    }
    slots = asyncio.Semaphore(concurrency)
    target = url(stack.engine, 8080, "/webhooks/aifi/entered")
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as s:

        async def one(marker: str) -> None:
            async with slots:
                await post_one(s, target, marker, marked_body(template, marker), sent)

        await asyncio.gather(*(one(m) for m in batch))
    return sent


async def in_ledger(
    stack: Stack, wanted: set[str], timeout_s: float
) -> dict[str, dict[str, object]]:
    """The presence API's record of each session in `wanted`, polled until all are there or
    `timeout_s` passed (then those found)."""
    found: dict[str, dict[str, object]] = {}
    deadline, slots = time.monotonic() + timeout_s, asyncio.Semaphore(16)
    async with presence_session(stack) as session:

        async def one(marker: str) -> None:
            async with slots:
                status, body = await presence_get(session, stack, f"/sessions/{marker}")
            if status == 200:
                found[marker] = body

        while True:
            await asyncio.gather(*(one(m) for m in wanted - found.keys()))
            if found.keys() >= wanted or time.monotonic() > deadline:
                return found
            await asyncio.sleep(1)


def figures(report: Report, scenario: str, sent: Sent, batch: list[str], arrived: set[str]) -> int:
    lost = len(sent.acknowledged - arrived)
    report(
        f"{scenario}: sent {len(batch)}, answered 200 {len(sent.acknowledged)}, "
        f"arrived {len(arrived & sent.acknowledged)}, lost {lost}"
    )
    return lost


async def test_default_stack_healthy_and_examples_reach_the_presence_api(
    default_stack: Stack, report: Report
) -> None:
    start = time.monotonic()
    await asyncio.to_thread(default_stack.compose, "up", "-d")
    up_s = time.monotonic() - start
    # Right after `up`: as soon as the gateway answers, before the workers are up.
    gateway_s = await answered(default_stack.engine, HEALTHY_TIMEOUT_S)
    statuses = await post_examples(default_stack)
    assert statuses == {"entered": 200, "left": 200, "tracking": 200}
    healthy_s = await asyncio.to_thread(default_stack.wait_settled, DEFAULT, HEALTHY_TIMEOUT_S)
    report(
        f"default stack: `up -d` {up_s:.1f} s, gateway answering {up_s + gateway_s:.1f} s, "
        f"all healthy {up_s + healthy_s:.1f} s after `up`"
    )
    session = json.loads((EXAMPLES / "entered.json").read_text())["sessionId"]
    visit = await in_ledger(default_stack, {session}, ARRIVAL_TIMEOUT_S)
    async with presence_session(default_stack) as client:
        status, tracking = await presence_get(client, default_stack, "/tracking/string")
    report(
        f"default stack: examples posted {sum(s == 200 for s in statuses.values())}/3 "
        f"answered 200; visit in the ledger: {bool(visit)}, tracking match: {status == 200}"
    )
    assert visit, "the example visit never reached the presence API (stuck in aifi.unrouted?)"
    assert visit[session]["personsEntered"] == 1
    assert visit[session]["personsExited"] == 1
    assert status == 200
    assert tracking["matched"] is True


def test_our_containers_run_read_only_and_write_no_secret(
    default_stack: Stack, tmp_path: Path, report: Report
) -> None:
    """Each running container of our image: a read-only root (a write outside its volumes
    and /tmp fails), and no secret of its environment in its file system."""
    stack = default_stack
    stack.compose("up", "-d")
    stack.wait_settled(DEFAULT, HEALTHY_TIMEOUT_S)
    ours = [stack.container(s) for s in DEFAULT if s not in ("rabbitmq", "migrate")]
    writable = [c for c in ours if not _read_only(stack.engine, c)]
    exported = tmp_path / "gateway.tar"
    stack.engine.docker("export", "-o", str(exported), stack.container("gateway"))
    blob = exported.read_bytes()
    leaked = [v for v in stack.keys.values() if v.encode() in blob]
    report(
        f"running containers: {len(ours) - len(writable)}/{len(ours)} on a read-only root; "
        f"secrets in the gateway container's files: {len(leaked)}"
    )
    assert not writable
    assert not leaked


def _read_only(engine: Engine, container: str) -> bool:
    flag = engine.docker("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container)
    write = ["exec", container, "python", "-c", "open('/app/probe', 'w')"]
    tmp = ["exec", container, "python", "-c", "open('/tmp/probe', 'w')"]
    refused = subprocess.run(["docker", *write], env=engine.env, capture_output=True).returncode
    return flag.strip() == "true" and refused != 0 and engine.docker(*tmp) == ""


async def test_broker_away_gateway_restarted_meanwhile_lost_0(
    default_stack: Stack, report: Report
) -> None:
    """Webhooks while RabbitMQ is stopped, the gateway container restarted in between:
    every one answered 200 reaches the ledger once the broker is back."""
    stack, run = default_stack, f"away-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(stack.compose, "up", "-d")
    await asyncio.to_thread(stack.wait_settled, DEFAULT, HEALTHY_TIMEOUT_S)
    batch, sent = markers(run, 200), Sent()
    await asyncio.to_thread(stack.compose, "stop", "rabbitmq")
    await send_visits(stack, batch[:100], sent)
    await asyncio.to_thread(stack.compose, "restart", "gateway")
    await answered(stack.engine, HEALTHY_TIMEOUT_S)
    await send_visits(stack, batch[100:], sent)
    await asyncio.to_thread(stack.compose, "start", "rabbitmq")
    arrived = await in_ledger(stack, sent.acknowledged, ARRIVAL_TIMEOUT_S)
    lost = figures(report, "broker away, gateway restarted", sent, batch, set(arrived))
    assert sent.acknowledged, f"nothing answered 200: {set(sent.status.values())}"
    assert lost == 0, sorted(sent.acknowledged - arrived.keys())[:10]
    assert all(v["personsEntered"] == 1 for v in arrived.values())


async def test_down_then_up_keeps_the_ledger_and_the_spool(
    default_stack: Stack, report: Report
) -> None:
    """Events spooled while the broker is stopped survive `down` and `up` (the spool
    volume) and then reach the ledger, which kept the earlier visits (the ledger volume)."""
    stack, run = default_stack, f"spooled-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(stack.compose, "up", "-d")
    await asyncio.to_thread(stack.wait_settled, DEFAULT, HEALTHY_TIMEOUT_S)
    kept = set(markers(f"{run}-kept", 5))
    earlier = await send_visits(stack, sorted(kept), Sent())
    before = await in_ledger(stack, earlier.acknowledged, ARRIVAL_TIMEOUT_S)
    batch, sent = markers(run, 50), Sent()
    await asyncio.to_thread(stack.compose, "stop", "rabbitmq")
    await send_visits(stack, batch, sent)
    await asyncio.to_thread(stack.compose, "down")
    left = stack.containers(), stack.engine.ids("network", stack.label())
    volumes = stack.engine.ids("volume", stack.label())
    report(
        f"after `down`: containers {len(left[0])}, networks {len(left[1])}, "
        f"volumes kept {len(volumes)}"
    )
    assert left == ({}, []), f"`down` left {left}"
    assert {f"{stack.project}_spool", f"{stack.project}_ledger"} <= set(volumes)
    start = time.monotonic()
    await asyncio.to_thread(stack.compose, "up", "-d")
    await asyncio.to_thread(stack.wait_settled, DEFAULT, HEALTHY_TIMEOUT_S)
    healthy_s = time.monotonic() - start
    arrived = await in_ledger(stack, sent.acknowledged | kept, ARRIVAL_TIMEOUT_S)
    report(
        f"`down` + `up`: healthy {healthy_s:.1f} s after `up`; "
        f"earlier visits kept {len(kept & arrived.keys())}/5"
    )
    lost = figures(report, "spooled across down/up", sent, batch, set(arrived))
    assert before.keys() == kept, "the earlier visits were not in the ledger before `down`"
    assert kept <= arrived.keys(), "`down` + `up` lost the ledger"
    assert len(sent.acknowledged) == len(batch)
    assert lost == 0, sorted(sent.acknowledged - arrived.keys())[:10]


def test_down_leaves_nothing_running(default_stack: Stack, report: Report) -> None:
    stack = default_stack
    stack.compose("up", "-d")
    running = len(stack.containers())
    stack.compose("down", "-v")
    left = (
        stack.containers(),
        stack.engine.ids("network", stack.label()),
        stack.engine.ids("volume", stack.label()),
    )
    report(
        f"`down -v`: containers {running} -> {len(left[0])}, networks left {len(left[1])}, "
        f"volumes left {len(left[2])}; engine-wide running: {len(stack.engine.ids('container'))}"
    )
    assert running >= len(DEFAULT)
    assert left == ({}, [], [])
    assert stack.engine.ids("container") == []


@pytest.fixture
def fresh_stack(
    engine: Engine, compose_file: Path, default_stack: Stack
) -> Iterator[Callable[..., Stack]]:
    """A new project (fresh volumes) per call, each taken `down -v` at the end; the default
    stack, which publishes the same ports, is taken down first."""
    default_stack.compose("down", "-v")
    made: list[Stack] = []

    def make(*profiles: str) -> Stack:
        made.append(new_stack(engine, compose_file, *profiles))
        return made[-1]

    yield make
    for stack in made:
        stack.compose("down", "-v", "--remove-orphans", timeout_s=180)


def in_namespace(stack: Stack, *argv: str) -> str:
    """Run the project's Python with `argv` inside the engine's namespace (where the
    compose network's containers are reachable) and return its output."""
    netns = f"--net=/var/run/netns/{PREFIX}{stack.engine.tag}"
    done = subprocess.run(
        ["nsenter", netns, sys.executable, *argv],
        cwd=ROOT,
        env=child_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def address_of(stack: Stack, service: str) -> str:
    return stack.engine.docker(
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        stack.container(service),
    ).strip()


async def test_upgrade_migrate_gives_an_earlier_queue_its_new_arguments_with_its_messages(
    fresh_stack: Callable[..., Stack], report: Report
) -> None:
    """An earlier release's `aifi.entered` (other arguments) holding visits the gateway
    published: `up` runs `migrate`, the worker starts, and every visit reaches the ledger."""
    stack, run = fresh_stack(), f"upgrade-{uuid.uuid4().hex[:6]}"
    # The broker alone first: the earlier release's queue exists before this release's
    # gateway (which declares the consumers' queues) ever connects.
    await asyncio.to_thread(stack.compose, "up", "-d", "rabbitmq")
    await asyncio.to_thread(stack.wait_settled, ["rabbitmq"], HEALTHY_TIMEOUT_S)
    amqp = f"amqp://aifi:{stack.keys.rabbitmq_password}@{address_of(stack, 'rabbitmq')}:5672/"
    in_namespace(
        stack, "-m", "tests.support.nsamqp", "old-queue", amqp, "aifi.entered", "entered.#"
    )
    await asyncio.to_thread(stack.compose, "up", "-d", "gateway")
    await asyncio.to_thread(stack.wait_settled, ["rabbitmq", "gateway"], HEALTHY_TIMEOUT_S)
    batch, sent = markers(run, 40), Sent()
    await send_visits(stack, batch, sent)
    depth = await wait_depth(stack, amqp, "aifi.entered", len(sent.acknowledged))
    start = time.monotonic()
    await asyncio.to_thread(stack.compose, "up", "-d")
    await asyncio.to_thread(stack.wait_settled, DEFAULT, HEALTHY_TIMEOUT_S)
    healthy_s = time.monotonic() - start
    migrated = "aifi.entered" in stack.compose("logs", "--no-color", "migrate")
    arrived = await in_ledger(stack, sent.acknowledged, ARRIVAL_TIMEOUT_S)
    report(
        f"upgrade: {depth} messages in the earlier queue; healthy {healthy_s:.1f} s "
        f"after `up`; migrate names the queue: {migrated}"
    )
    lost = figures(report, "upgrade", sent, batch, set(arrived))
    assert depth == len(batch) == len(sent.acknowledged)
    assert lost == 0, sorted(sent.acknowledged - arrived.keys())[:10]


async def wait_depth(stack: Stack, amqp: str, queue: str, count: int, timeout_s: float = 60) -> int:
    """The queue's depth once it reaches `count` (or whatever it is after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        argv = ("-m", "tests.support.nsamqp", "depth", amqp, queue)
        depth = int((await asyncio.to_thread(in_namespace, stack, *argv)).strip())
        if depth >= count or time.monotonic() > deadline:
            return depth
        await asyncio.sleep(0.5)


async def test_postgres_profile_two_entered_workers_each_visit_once(
    fresh_stack: Callable[..., Stack], report: Report
) -> None:
    stack, run = fresh_stack("postgres"), f"pg-{uuid.uuid4().hex[:6]}"
    services = [
        "gateway",
        "consumer-entered-pg",
        "consumer-exited-pg",
        "consumer-tracking-pg",
        "presence-pg",
    ]
    start = time.monotonic()
    await asyncio.to_thread(
        stack.compose, "up", "-d", "--scale", "consumer-entered-pg=2", *services
    )
    await asyncio.to_thread(stack.wait_settled, PG, HEALTHY_TIMEOUT_S)
    healthy_s = time.monotonic() - start
    workers = [n for n in stack.containers() if "consumer-entered-pg" in n]
    batch = markers(run, 200)
    sent = await send_visits(stack, batch, Sent())
    arrived = await in_ledger(stack, sent.acknowledged, ARRIVAL_TIMEOUT_S)
    twice = {m for m, v in arrived.items() if v["personsEntered"] != 1}
    report(
        f"postgres profile: {len(workers)} entered workers, healthy {healthy_s:.1f} s "
        f"after `up`; visits counted other than once: {len(twice)}"
    )
    lost = figures(report, "postgres profile", sent, batch, set(arrived))
    assert len(workers) == 2
    assert len(sent.acknowledged) == len(batch)
    assert lost == 0, sorted(sent.acknowledged - arrived.keys())[:10]
    assert not twice, sorted(twice)[:10]


def test_the_image_holds_no_secret_and_no_development_file(
    engine: Engine, built: str, tmp_path: Path, report: Report
) -> None:
    listing = engine.docker(
        "run",
        "--rm",
        "--entrypoint",
        "python",
        built,
        "-c",
        "import os; print('\\n'.join(os.path.relpath(os.path.join(d, n), '/app') "
        "for d, ds, fs in os.walk('/app') for n in ds + fs))",
    ).split()
    size_mb = int(engine.docker("image", "inspect", "--format", "{{.Size}}", built)) / 1e6
    history = engine.docker("history", "--no-trunc", built)
    saved = tmp_path / "image.tar"
    engine.docker("save", "-o", str(saved), built)
    blob = saved.read_bytes()
    secrets_seen = [s for s in local_secrets() if s.encode() in blob or s in history]
    dev = sorted(p for p in listing if is_development_file(p))
    tops = [p.split("/", 1)[0] for p in listing]
    report(
        f"image {built}: {size_mb:.0f} MB; /app holds {', '.join(sorted(set(tops)))}; "
        f"development files: {dev[:5] or 'none'}; local secrets found: {len(secrets_seen)}"
    )
    assert not dev, f"development files in the image: {dev[:20]}"
    assert not secrets_seen


# What a user's image has no use for: the suite, history, local state, build leftovers.
DEVELOPMENT = {
    "tests",
    ".git",
    "bench",
    "devtools",
    ".venv",
    "node_modules",
    ".env",
    ".rabbitmq",
    "package.json",
    "build",
    ".mypy_cache",
    ".pytest_cache",
}
DEVELOPMENT_FILES = {"data/dev-token", "data/dev-presence-token"}


def is_development_file(path: str) -> bool:
    top = path.split("/", 1)[0]
    return top in DEVELOPMENT or top.endswith(".egg-info") or path in DEVELOPMENT_FILES


def local_secrets() -> list[str]:
    """What a careless build could copy in: the clone's development tokens and .env values."""
    found = []
    for name in ("data/dev-token", "data/dev-presence-token"):
        path = ROOT / name
        if path.exists() and (value := path.read_text().strip()):
            found.append(value)
    env = ROOT / ".env"
    if env.exists():
        found += [
            line.split("=", 1)[1].strip()
            for line in env.read_text().splitlines()
            if "=" in line and len(line.split("=", 1)[1].strip()) >= 8
        ]
    return found


def management(stack: Stack, path: str) -> list[dict[str, object]]:
    """GET the management API that rabbitmq-1 publishes on the namespace's loopback."""
    netns = f"--net=/var/run/netns/{PREFIX}{stack.engine.tag}"
    config = f'user = "aifi:{stack.keys.rabbitmq_password}"\n'  # on stdin, never in argv
    done = subprocess.run(
        [
            "nsenter",
            netns,
            "curl",
            "-sSf",
            "--max-time",
            "10",
            "-K",
            "-",
            f"http://127.0.0.1:15672{path}",
        ],
        input=config,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    found: list[dict[str, object]] = json.loads(done.stdout)
    return found


async def test_cluster_profile_kill_the_gateways_node_under_load_lost_0(
    fresh_stack: Callable[..., Stack], report: Report
) -> None:
    stack, run = fresh_stack("cluster"), f"cluster-{uuid.uuid4().hex[:6]}"
    start = time.monotonic()
    # `presence` too: the cluster's workers keep the same ledger volume it reads.
    await asyncio.to_thread(stack.compose, "up", "-d", *CLUSTER[4:], "presence")
    await asyncio.to_thread(stack.wait_settled, [*CLUSTER, "presence"], HEALTHY_TIMEOUT_S)
    healthy_s = time.monotonic() - start
    running = sorted(str(n["name"]) for n in management(stack, "/api/nodes") if n.get("running"))
    gateway_ip = address_of(stack, "gateway-cluster")
    connections = management(stack, "/api/connections")
    nodes = {str(c["node"]) for c in connections if c.get("peer_host") == gateway_ip}
    report(
        f"cluster profile: healthy {healthy_s:.1f} s after `up`; running nodes {running}; "
        f"the gateway is connected to {sorted(nodes)}"
    )
    assert running == ["rabbit@rabbitmq-1", "rabbit@rabbitmq-2", "rabbit@rabbitmq-3"]
    assert len(nodes) == 1, connections
    victim = nodes.pop().split("@", 1)[1]
    batch, sent = markers(run, 400), Sent()
    await send_visits(stack, batch[:100], sent, concurrency=4)
    # The node dies while the next 200 are being sent; the last 100 come after.
    kill = asyncio.to_thread(stack.engine.docker, "kill", stack.container(victim))
    await asyncio.gather(kill, send_visits(stack, batch[100:300], sent, concurrency=4))
    await send_visits(stack, batch[300:], sent, concurrency=4)
    arrived = await in_ledger(stack, sent.acknowledged, ARRIVAL_TIMEOUT_S)
    report(f"cluster profile: killed {victim} after 100 answers, while 200 more were sent")
    lost = figures(report, "cluster, gateway's node killed", sent, batch, set(arrived))
    assert sent.acknowledged >= set(batch[300:]), "the gateway stopped answering"
    assert lost == 0, sorted(sent.acknowledged - arrived.keys())[:10]

"""docker-compose.yml, the Dockerfile and .dockerignore, checked without a Docker engine:
the stack's structure, that each of our services runs a command the test suite itself runs
as a process, and that the build context carries what the image needs and nothing else."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from core.settings import BUILT_IN_CONSUMERS, load
from devtools.stack import CONSUMER_COMMAND, GATEWAY_COMMAND, PRESENCE_COMMAND

ROOT = Path(__file__).resolve().parent.parent
# What must never reach a build context: secrets, local state, history, caches, results.
KEPT_OUT = [
    "data/dev-token",
    "data/spool/00000000000000000001.seg",
    "data/ledger.sqlite3",
    ".env",
    ".venv/bin/python",
    ".rabbitmq/aifi-dev/mnesia/x",
    "node_modules/.bin/asyncapi",
    ".git/HEAD",
    ".mypy_cache/3.11/x.json",
    ".ruff_cache/x",
    ".pytest_cache/v/x",
    "gateway/__pycache__/app.cpython-311.pyc",
    "bench/results/latest.json",
    "tests/support/broker.py",
    "build/lib/gateway/app.py",
    "aifi_gateway.egg-info/PKG-INFO",
]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from our Dockerfile."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def test_rabbitmq_is_4x_with_management_and_a_healthcheck(compose: dict[str, Any]) -> None:
    rabbitmq = compose["services"]["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq:4")
    assert rabbitmq["image"].endswith("-management")
    assert rabbitmq["healthcheck"]["test"][0] == "CMD"


def test_our_services_run_on_a_read_only_root_with_a_private_tmp(compose: dict[str, Any]) -> None:
    for name, service in ours(compose).items():
        assert service.get("read_only") is True, name
        assert service.get("tmpfs") == ["/tmp"], name


def test_every_rabbitmq_node_keeps_its_name_across_containers(compose: dict[str, Any]) -> None:
    """A node's data on its volume is under rabbit@<hostname>: a container's default
    hostname (its id) would make every recreated container a new, empty node."""
    nodes = [s for s in compose["services"].values() if s.get("image", "").startswith("rabbitmq:")]
    assert len(nodes) == 4
    assert all(node.get("hostname") for node in nodes)


MIGRATE_COMMAND = [*CONSUMER_COMMAND, "migrate"]


def presence_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in ours(compose).items() if s["command"] == list(PRESENCE_COMMAND)}


def migrate_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in ours(compose).items() if s["command"] == MIGRATE_COMMAND}


def worker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The consumer workers: `aifi-consumer NAME`."""
    return {
        n: s
        for n, s in ours(compose).items()
        if s["command"][:1] == list(CONSUMER_COMMAND) and s["command"] != MIGRATE_COMMAND
    }


def test_the_stack_is_a_gateway_one_service_per_consumer_and_the_presence_api(
    compose: dict[str, Any],
) -> None:
    default = {n for n, s in ours(compose).items() if "profiles" not in s}
    workers = {f"consumer-{name}" for name in BUILT_IN_CONSUMERS}
    assert default == {"gateway", "migrate", *workers, "presence"}


def brokers(compose: dict[str, Any]) -> set[str]:
    return {n for n, s in compose["services"].items() if "rabbitmq" in s.get("image", "")}


def test_every_service_of_the_broker_waits_for_it_healthy(compose: dict[str, Any]) -> None:
    for name, service in ours(compose).items():
        needed = {dep: c["condition"] for dep, c in service["depends_on"].items()}
        if name in presence_services(compose):
            assert not set(needed) & brokers(compose), name
        else:
            assert set(needed) & brokers(compose), name
        for dep in set(needed) - set(migrate_services(compose)):
            assert needed[dep] == "service_healthy", (name, dep)


def test_every_worker_starts_after_the_migrate_of_its_broker(compose: dict[str, Any]) -> None:
    """A queue an earlier release declared with other arguments stops a worker with a
    topology error: the one-shot `migrate` must have run, on the same broker, first."""
    migrations = migrate_services(compose)
    for name, service in worker_services(compose).items():
        found = set(service["depends_on"]) & set(migrations)
        assert len(found) == 1, name
        [migration] = found
        completed = {"condition": "service_completed_successfully"}
        assert service["depends_on"][migration] == completed, name
        migrate = migrations[migration]
        assert migrate["image"] == service["image"], name
        amqp_url = service["environment"]["AIFI_AMQP_URL"]
        assert migrate["environment"]["AIFI_AMQP_URL"] == amqp_url, name
        assert migrate.get("profiles") in (None, service.get("profiles")), name
        nodes = brokers(compose)
        assert set(migrate["depends_on"]) & nodes == set(service["depends_on"]) & nodes, name


def test_migrate_runs_once_and_is_never_restarted(compose: dict[str, Any]) -> None:
    for name, service in migrate_services(compose).items():
        assert service["restart"] == "no", name
        assert "healthcheck" not in service, name


def test_every_command_is_one_the_tests_run(compose: dict[str, Any]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, service in ours(compose).items():
        program, *args = service["command"]
        assert program in scripts, name
        if (program,) in (GATEWAY_COMMAND, PRESENCE_COMMAND):
            assert args == [], name
        else:
            assert (program,) == CONSUMER_COMMAND, name
            assert len(args) == 1, name
            assert args[0] in {*BUILT_IN_CONSUMERS, "migrate"}, name


def test_health_checks_probe_the_ports_config_yaml_gives(compose: dict[str, Any]) -> None:
    settings = load({"AIFI_CONFIG": str(ROOT / "config.yaml")})
    for name, service in ours(compose).items():
        if name in migrate_services(compose):
            continue
        probe = service["healthcheck"]["test"][-1]
        if service["command"] == list(GATEWAY_COMMAND):
            assert f":{service['environment']['AIFI_HTTP_PORT']}/healthz" in probe, name
        elif service["command"] == list(PRESENCE_COMMAND):
            assert f":{service['environment']['AIFI_PRESENCE_PORT']}/healthz" in probe, name
        else:
            port = settings.consumers[service["command"][1]].health_port
            assert f":{port}/healthz" in probe, name


def test_no_secret_is_written_in_it(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for service in ours(compose).values():
        for key in ("AIFI_TOKENS", "AIFI_PRESENCE_TOKENS"):
            if key in service.get("environment", {}):
                assert service["environment"][key].startswith("${"), key
    assert "guest:guest" not in text


def test_every_worker_serves_health_and_metrics_on_all_interfaces(
    compose: dict[str, Any],
) -> None:
    for name, service in worker_services(compose).items():
        environ = {**service["environment"], "AIFI_CONFIG": str(ROOT / "config.yaml")}
        consumer = load(environ).consumers[service["command"][1]]
        assert consumer.health_host == "0.0.0.0", name


def test_postgres_is_pinned_checked_with_pg_isready_and_kept_in_a_volume(
    compose: dict[str, Any],
) -> None:
    postgres = compose["services"]["postgres"]
    image, _, version = postgres["image"].partition(":")
    assert (image, version.split(".")[0]) == ("postgres", "17")
    assert "." in version, "a pinned minor version"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    [volume] = postgres["volumes"]
    assert volume.split(":")[0] in compose["volumes"]
    assert postgres["profiles"] == ["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${")


def test_the_postgres_profile_runs_each_worker_on_the_postgres_ledger(
    compose: dict[str, Any],
) -> None:
    workers = {
        n: s for n, s in worker_services(compose).items() if s.get("profiles") == ["postgres"]
    }
    assert {s["command"][1] for s in workers.values()} == set(BUILT_IN_CONSUMERS)
    for name, service in workers.items():
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
        environ = {**service["environment"], "AIFI_CONFIG": str(ROOT / "config.yaml")}
        ledger = load(environ).ledger
        assert ledger.backend == "postgresql", name
        assert ledger.url.startswith("postgresql://aifi:${POSTGRES_PASSWORD"), name
        assert ledger.url.endswith("@postgres:5432/aifi"), name


def test_the_presence_api_reads_the_workers_ledger_on_each_backend(
    compose: dict[str, Any],
) -> None:
    services = ours(compose)
    presence = presence_services(compose)
    assert set(presence) == {"presence", "presence-pg"}
    for name, service in presence.items():
        environ = {
            k: v for k, v in service["environment"].items() if k != "AIFI_PRESENCE_TOKENS"
        } | {"AIFI_CONFIG": str(ROOT / "config.yaml")}
        settings = load(environ)
        assert settings.presence.host == "0.0.0.0", name
        assert service["environment"]["AIFI_PRESENCE_TOKENS"].startswith("${"), name
        assert f"{settings.presence.port}:{settings.presence.port}" in service["ports"], name
        worker = services["consumer-entered" + name.removeprefix("presence")]
        worker_env = {**worker["environment"], "AIFI_CONFIG": str(ROOT / "config.yaml")}
        assert settings.ledger == load(worker_env).ledger, name
        assert service.get("volumes") == worker.get("volumes"), name
        assert service.get("profiles") == worker.get("profiles"), name


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (excludes, pattern) in order; the last rule that matches wins."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = str(PurePosixPath(line.removeprefix("!").strip("/")))
        rules.append((excludes, re.compile(glob_regex(pattern))))
    return rules


def glob_regex(pattern: str) -> str:
    """Docker's matching: `**` spans directories, `*` and `?` do not."""
    parts = re.split(r"(\*\*/?|\*|\?|\[[^]]*\])", pattern)
    table = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    regex = "".join(
        table.get(p, p if p.startswith("[") and len(p) > 1 else re.escape(p)) for p in parts
    )
    return f"^{regex}$"


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves `path` out: a rule matches it or a parent of it."""
    candidates = [path, *(str(p) for p in PurePosixPath(path).parents if str(p) != ".")]
    verdict = False
    for excludes, pattern in rules:
        if any(pattern.match(c) for c in candidates):
            verdict = excludes
    return verdict


def copied_sources() -> list[str]:
    """The sources of the Dockerfile's COPY instructions (all but the destination)."""
    sources: list[str] = []
    # Only COPY lines are split (others may end in a line continuation shlex refuses), and
    # not those copying from an earlier stage of the build.
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.split()[:1] == ["COPY"] and "--from=" not in line:
            args = [w for w in shlex.split(line)[1:] if not w.startswith("--")]
            sources += [str(PurePosixPath(a)) for a in args[:-1]]
    return sources


def test_the_build_context_leaves_out_secrets_and_local_state() -> None:
    rules = ignore_rules()
    for path in KEPT_OUT:
        assert excluded(path, rules), path


def test_the_build_context_holds_every_file_the_dockerfile_copies() -> None:
    rules, sources = ignore_rules(), copied_sources()
    assert {"pyproject.toml", "ledger", "gateway", "consumers", "presence", "config.yaml"} <= set(
        sources
    )
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if p.is_file()]
        assert files, source
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not excluded(relative, rules), relative

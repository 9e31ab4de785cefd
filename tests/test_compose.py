"""docker-compose.yml, checked without a Docker engine: its structure, and that each of our
services runs a command the test suite itself runs as a process."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumers.__main__ import BUILT_IN
from devtools.gatewayproc import CONSUMER_COMMAND, GATEWAY_COMMAND
from gateway.settings import load

ROOT = Path(__file__).resolve().parent.parent


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


def test_the_stack_is_a_gateway_and_one_service_per_consumer(compose: dict[str, Any]) -> None:
    default = {n for n, s in ours(compose).items() if "profiles" not in s}
    assert default == {"gateway", *(f"consumer-{name}" for name in BUILT_IN)}


def test_every_service_waits_for_a_healthy_broker(compose: dict[str, Any]) -> None:
    for name, service in ours(compose).items():
        conditions = {dep["condition"] for dep in service["depends_on"].values()}
        assert conditions == {"service_healthy"}, name


def test_every_command_is_one_the_tests_run(compose: dict[str, Any]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, service in ours(compose).items():
        program, *args = service["command"]
        assert program in scripts, name
        if (program,) == GATEWAY_COMMAND:
            assert args == [], name
        else:
            assert (program,) == CONSUMER_COMMAND, name
            assert len(args) == 1, name
            assert args[0] in BUILT_IN, name


def test_health_checks_probe_the_ports_config_yaml_gives(compose: dict[str, Any]) -> None:
    settings = load({"AIFI_CONFIG": str(ROOT / "config.yaml")})
    for name, service in ours(compose).items():
        probe = service["healthcheck"]["test"][-1]
        if service["command"] == list(GATEWAY_COMMAND):
            assert f":{service['environment']['AIFI_HTTP_PORT']}/healthz" in probe, name
        else:
            port = settings.consumers[service["command"][1]].health_port
            assert f":{port}/healthz" in probe, name


def test_no_secret_is_written_in_it(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for service in ours(compose).values():
        for key in ("AIFI_TOKENS",):
            if key in service.get("environment", {}):
                assert service["environment"][key].startswith("${"), key
    assert "guest:guest" not in text

"""Unit tests of settings loading (core.settings); never touches os.environ."""

from __future__ import annotations

import logging
import re
import traceback
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from core import settings
from core.settings import Settings, SettingsError

REPO_CONFIG = Path(__file__).parents[1] / "config.yaml"


def write(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return {"AIFI_CONFIG": str(path)}


def test_defaults_with_empty_environ_and_no_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config.yaml in the working directory
    loaded = settings.load({})
    assert loaded == Settings()
    assert (loaded.http.port, loaded.auth.tokens, loaded.auth.allow_anonymous) == (8080, {}, False)
    assert set(loaded.consumers) == {"entered", "exited", "tracking"}


def test_config_named_by_aifi_config_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(SettingsError, match=re.escape(str(tmp_path / "nowhere.yaml"))):
        settings.load({"AIFI_CONFIG": str(missing)})


def test_yaml_file_is_read(tmp_path: Path) -> None:
    text = (
        "http:\n  port: 9001\n  host: 0.0.0.0\nlog:\n  level: DEBUG\ngateway:\n  ack: confirmed\n"
    )
    loaded = settings.load(write(tmp_path, text))
    assert (loaded.http.port, loaded.http.host, loaded.log.level) == (9001, "0.0.0.0", "DEBUG")
    assert loaded.gateway.ack == "confirmed"
    assert loaded.http.base_path == Settings().http.base_path  # untouched keys keep defaults


def test_environment_overrides_yaml_key_by_key(tmp_path: Path) -> None:
    env = write(tmp_path, "http:\n  port: 9001\n  host: 0.0.0.0\nauth:\n  allow_anonymous: false\n")
    loaded = settings.load(
        env
        | {"AIFI_HTTP_PORT": "9100", "AIFI_AUTH_ALLOW_ANONYMOUS": "true"}
        | {"AIFI_GATEWAY_ACK": "confirmed"}
    )
    assert (loaded.http.port, loaded.http.host) == (9100, "0.0.0.0")
    assert (loaded.auth.allow_anonymous, loaded.gateway.ack) == (True, "confirmed")


def test_unrelated_environment_variables_are_ignored(tmp_path: Path) -> None:
    env = write(tmp_path, "")
    assert (
        settings.load(env | {"PATH": "/bin", "HOME": "/root", "aifi_http_port": "1"}) == Settings()
    )


def test_aifi_tokens_several_pairs_with_spaces(tmp_path: Path) -> None:
    env = write(tmp_path, "") | {"AIFI_TOKENS": " primary = tok-A1 , secondary=tok=B2=,, "}
    tokens = settings.load(env).auth.tokens
    assert {n: s.get_secret_value() for n, s in tokens.items()} == {
        "primary": "tok-A1",
        "secondary": "tok=B2=",
    }
    assert "tok-A1" not in repr(settings.load(env))


@pytest.mark.parametrize(
    "text",
    [
        "good=tok-visible-1,tok-visible-2",
        "tok-visible-1",
        "=tok-visible-1",
        "good=,x=tok-visible-2",
    ],
)
def test_malformed_aifi_tokens_never_shows_a_token(tmp_path: Path, text: str) -> None:
    with pytest.raises(SettingsError) as exc:
        settings.load(write(tmp_path, "") | {"AIFI_TOKENS": text})
    message = str(exc.value)
    assert "auth.tokens" in message
    assert "tok-visible" not in message


@pytest.mark.parametrize("key", ["auth.tokens", "presence.tokens"])
def test_a_blank_token_is_refused_by_name(tmp_path: Path, key: str) -> None:
    section, _, field = key.partition(".")
    with pytest.raises(SettingsError, match=f"{key}.*empty token for quiet"):
        settings.load(write(tmp_path, f"{section}:\n  {field}:\n    quiet: '  '\n"))


def test_malformed_aifi_tokens_traceback_never_shows_a_token(tmp_path: Path) -> None:
    # The token is built here so that the traceback's source lines cannot show it.
    secret = "-".join(["tok", "visible", "1"])
    with pytest.raises(SettingsError) as exc:
        settings.load(write(tmp_path, "") | {"AIFI_TOKENS": f"good={secret},broken"})
    assert secret not in "".join(traceback.format_exception(exc.value))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("http:\n  prot: 1\n", "http.prot"),
        ("htp:\n  port: 1\n", "htp"),
        ("amqp:\n  url: x\n", "amqp.url"),
    ],
)
def test_unknown_yaml_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SettingsError, match=rf"{re.escape(key)}: unknown key"):
        settings.load(write(tmp_path, text))


@pytest.mark.parametrize("name", ["AIFI_HTTP_PROT", "AIFI_TOKEN", "AIFI_AMQP_URLZ"])
def test_unknown_aifi_environment_variable_is_named(tmp_path: Path, name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        settings.load(write(tmp_path, "") | {name: "1"})


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("AIFI_HTTP_PORT", "eighty", "http.port"),
        ("AIFI_HTTP_PORT", "70000", "http.port"),
        ("AIFI_LOG_LEVEL", "VERBOSE", "log.level"),
        ("AIFI_SPOOL_FSYNC", "sometimes", "spool.fsync"),
        ("AIFI_AMQP_PUBLISH_TIMEOUT_S", "0", "amqp.publish_timeout_s"),
        ("AIFI_AMQP_DECLARE_TIMEOUT_S", "0", "amqp.declare_timeout_s"),
        ("AIFI_AMQP_MAX_MESSAGE_BYTES", str(512 * 1024 * 1024 + 1), "amqp.max_message_bytes"),
    ],
)
def test_bad_value_is_named(tmp_path: Path, name: str, value: str, key: str) -> None:
    with pytest.raises(SettingsError, match=rf"^invalid settings: {re.escape(key)}: "):
        settings.load(write(tmp_path, "") | {name: value})


def test_bad_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="top level must be a mapping"):
        settings.load(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SettingsError, match="cannot read"):
        settings.load(write(tmp_path, "http: [unclosed\n"))


def test_amqp_url_comma_separated_gives_several_urls(tmp_path: Path) -> None:
    env = write(tmp_path, "") | {"AIFI_AMQP_URL": "amqp://a:5672/, amqp://b:5672/,,amqp://c/ "}
    assert settings.load(env).amqp.urls == ("amqp://a:5672/", "amqp://b:5672/", "amqp://c/")


@pytest.mark.parametrize("names", ["X-Request-Id,Authorization", " authorization ", "Cookie"])
def test_forward_headers_refuses_credentials_from_env(tmp_path: Path, names: str) -> None:
    with pytest.raises(SettingsError, match=r"http\.forward_headers: .*credentials"):
        settings.load(write(tmp_path, "") | {"AIFI_HTTP_FORWARD_HEADERS": names})


def test_forward_headers_refuses_credentials_from_yaml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"http\.forward_headers: .*credentials"):
        settings.load(write(tmp_path, "http:\n  forward_headers: [X-Trace, AUTHORIZATION]\n"))


def test_forward_headers_from_yaml_list(tmp_path: Path) -> None:
    env = write(tmp_path, "http:\n  forward_headers: [X-Request-Id, X-Store]\n")
    assert settings.load(env).http.forward_headers == ("X-Request-Id", "X-Store")


def test_forward_headers_from_env_are_stripped(tmp_path: Path) -> None:
    env = write(tmp_path, "") | {"AIFI_HTTP_FORWARD_HEADERS": "X-Request-Id, X-Store"}
    assert settings.load(env).http.forward_headers == ("X-Request-Id", "X-Store")


def test_the_repository_config_file_loads() -> None:
    document = yaml.safe_load(REPO_CONFIG.read_text())
    loaded = settings.load({"AIFI_CONFIG": str(REPO_CONFIG)})
    assert loaded.http.port == document["http"]["port"]
    assert loaded.http.base_path == document["http"]["base_path"]
    assert loaded.amqp.urls == tuple(document["amqp"]["urls"])
    assert loaded.log.level == document["log"]["level"]
    assert loaded.auth.tokens == {}


def test_max_message_bytes_defaults_to_rabbitmq_4_default_max_message_size() -> None:
    assert Settings().amqp.max_message_bytes == 16 * 1024 * 1024


@pytest.mark.parametrize("body_bytes", [16 * 1024 * 1024, 16 * 1024 * 1024 - 65536 + 1])
def test_a_body_that_cannot_fit_a_message_is_refused_naming_both_keys(
    tmp_path: Path, body_bytes: int
) -> None:
    env = write(tmp_path, "") | {"AIFI_HTTP_MAX_BODY_BYTES": str(body_bytes)}
    with pytest.raises(SettingsError) as refused:
        settings.load(env)
    message = str(refused.value)
    assert message.startswith("invalid settings: http.max_body_bytes")
    assert "amqp.max_message_bytes (16777216)" in message


def test_the_largest_body_that_fits_with_its_envelope_is_accepted(tmp_path: Path) -> None:
    largest = 16 * 1024 * 1024 - settings.ENVELOPE_ALLOWANCE_BYTES
    env = write(tmp_path, "") | {"AIFI_HTTP_MAX_BODY_BYTES": str(largest)}
    assert settings.load(env).http.max_body_bytes == largest


def test_a_larger_body_fits_once_max_message_bytes_is_raised(tmp_path: Path) -> None:
    env = write(tmp_path, "http:\n  max_body_bytes: 33554432\n") | {
        "AIFI_AMQP_MAX_MESSAGE_BYTES": str(64 * 1024 * 1024)
    }
    loaded = settings.load(env)
    assert (loaded.http.max_body_bytes, loaded.amqp.max_message_bytes) == (2**25, 2**26)


BAD_HTTP = {"AIFI_HTTP_PORT": "eighty", "AIFI_HTTP_MAX_BODY_BYTES": str(2**30)}


@pytest.mark.parametrize(("name", "value"), BAD_HTTP.items())
def test_a_bad_http_value_stops_the_gateway_alone(tmp_path: Path, name: str, value: str) -> None:
    env = write(tmp_path, "") | {name: value}
    with pytest.raises(SettingsError, match=r"^invalid settings: http\.(port|max_body_bytes)"):
        settings.load_as(settings.GatewayProcessSettings, env)
    consumer = settings.load_as(settings.ConsumerProcessSettings, env)
    presence = settings.load_as(settings.PresenceProcessSettings, env)
    assert (consumer.ledger, presence.presence) == (Settings().ledger, Settings().presence)
    assert not hasattr(consumer, "http")
    assert not hasattr(presence, "http")


@pytest.mark.parametrize(
    "model", [settings.ConsumerProcessSettings, settings.PresenceProcessSettings]
)
def test_every_process_refuses_an_unknown_section(tmp_path: Path, model: type[BaseModel]) -> None:
    with pytest.raises(SettingsError, match=r"^invalid settings: htp: unknown key$"):
        settings.load_as(model, write(tmp_path, "htp:\n  port: 1\n"))  # type: ignore[type-var]


OLD_TOP_LEVEL = "ack: confirmed\nconfirm_timeout_ms: 50\n"


def test_old_top_level_gateway_keys_are_read_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = write(tmp_path, OLD_TOP_LEVEL) | {"AIFI_ACK": "spooled"}
    with caplog.at_level(logging.WARNING, logger="core.settings"):
        loaded = settings.load_as(settings.GatewayProcessSettings, env)
    assert (loaded.gateway.ack, loaded.gateway.confirm_timeout_ms) == ("spooled", 50)
    config = env["AIFI_CONFIG"]
    assert [record.getMessage() for record in caplog.records] == [
        f"{config}: ack is deprecated: read as gateway.ack; rename it",
        f"{config}: confirm_timeout_ms is deprecated: read as gateway.confirm_timeout_ms; "
        "rename it",
        "environment: AIFI_ACK is deprecated: read as AIFI_GATEWAY_ACK; rename it",
    ]


def test_old_gateway_keys_concern_the_gateway_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = write(tmp_path, OLD_TOP_LEVEL)
    with caplog.at_level(logging.WARNING, logger="core.settings"):
        settings.load_as(settings.ConsumerProcessSettings, env)
    assert caplog.records == []


@pytest.mark.parametrize(
    ("text", "given", "warning"),
    [
        (
            "",
            {"AIFI_HTTP_WORKERS": "3"},
            "AIFI_HTTP_WORKERS is deprecated: read as AIFI_HTTP_PROCESSES",
        ),
        ("http:\n  workers: 3\n", {}, "http.workers is deprecated: read as http.processes"),
    ],
)
def test_http_workers_is_read_as_http_processes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, given: dict[str, str], warning: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="core.settings"):
        loaded = settings.load_as(settings.GatewayProcessSettings, write(tmp_path, text) | given)
    assert loaded.http.processes == 3
    [record] = caplog.records
    assert warning in record.getMessage()


def test_an_old_and_a_new_name_together_are_refused(tmp_path: Path) -> None:
    env = write(tmp_path, "ack: confirmed\ngateway:\n  ack: spooled\n")
    with pytest.raises(SettingsError, match=r"give gateway\.ack only \(ack is its old name\)"):
        settings.load(env)


def test_a_consumer_is_its_entry_or_a_built_in_default(tmp_path: Path) -> None:
    loaded = settings.load(write(tmp_path, "consumers:\n  printer:\n    prefetch: 7\n"))
    assert loaded.consumer("printer").prefetch == 7
    assert loaded.consumer("entered") == settings.ConsumerSettings()
    with pytest.raises(SettingsError, match="no consumer 'nosuch'"):
        loaded.consumer("nosuch")

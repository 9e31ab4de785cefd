"""Settings: `config.yaml` for non-secret defaults, the environment for overrides.

Every leaf setting `section.key` is overridden by `AIFI_SECTION_KEY`
(e.g. `AIFI_HTTP_PORT`); `AIFI_TOKENS` and `AIFI_AMQP_URL` are the documented
short names. Unknown keys and bad values stop start-up with a message naming them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from core import logs
from core.validation import problems

log = logging.getLogger(__name__)


def split_list(value: object) -> object:
    """A comma-separated string from the environment into a tuple of trimmed items."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list):
        return tuple(str(item).strip() for item in value)
    return value


def token_pairs(value: object) -> object:
    """Tokens from the environment arrive as one `name=token,...` string."""
    return parse_token_pairs(value) if isinstance(value, str) else value


def no_blank_token(value: dict[str, SecretStr]) -> dict[str, SecretStr]:
    blank = [name for name, token in value.items() if not token.get_secret_value().strip()]
    if blank:
        raise ValueError(f"empty token for {', '.join(blank)}")
    return value


# Lists from the environment arrive as one comma-separated string.
CommaList = Annotated[tuple[str, ...], BeforeValidator(split_list)]
# Bearer tokens by name (rotation: every one listed is accepted); never shown in errors.
TokenMap = Annotated[
    dict[str, SecretStr], BeforeValidator(token_pairs), AfterValidator(no_blank_token)
]
# Room for what the event envelope adds to a request body (ids, times, fingerprint)
# within one AMQP message; an envelope larger still is set aside when published.
ENVELOPE_ALLOWANCE_BYTES: Final = 64 * 1024


class SettingsError(Exception):
    """Configuration that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    base_path: str = "/webhooks/aifi"
    tracking_path: str = "/webhooks/aifi/tracking"
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    access_log: bool = False
    shutdown_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(10.0, gt=0)
    header_timeout_s: float = Field(10.0, gt=0)
    processes: int = Field(1, ge=1)  # gateway processes sharing the port
    forward_headers: CommaList = ()

    @field_validator("forward_headers")
    @classmethod
    def _no_credentials(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if {n.lower() for n in names} & {"authorization", "cookie", "proxy-authorization"}:
            raise ValueError("credentials headers cannot be forwarded")
        return names


class AuthSettings(_Section):
    tokens: TokenMap = Field(default_factory=dict)
    allow_anonymous: bool = False
    rate_limit_per_s: float = Field(0.0, ge=0)  # 0: no rate limit
    rate_limit_burst: int = Field(50, gt=0)


class AmqpSettings(_Section):
    urls: CommaList = ("amqp://guest:guest@127.0.0.1:5672/",)
    publish_timeout_s: float = Field(5.0, gt=0)
    # Bounds the declarations at connect: a node that cannot reach its cluster's
    # majority holds them (about 30 s on Khepri) while the next URL might answer.
    declare_timeout_s: float = Field(5.0, gt=0)
    # The broker's `max_message_size` (16 MiB by default since RabbitMQ 4.0, at most
    # 512 MiB): a larger message would close the channel and fail its whole batch.
    max_message_bytes: int = Field(16 * 1024 * 1024, gt=0, le=512 * 1024 * 1024)
    reconnect_max_s: float = Field(5.0, gt=0)
    heartbeat_s: int = Field(30, ge=0)


class SpoolSettings(_Section):
    dir: Path = Path("data/spool")
    fsync: Literal["always", "interval", "never"] = "always"
    fsync_interval_ms: int = Field(50, gt=0)
    max_bytes: int = Field(256 * 1024 * 1024, gt=0)
    segment_bytes: int = Field(16 * 1024 * 1024, gt=0)
    max_in_flight: int = Field(256, gt=0)
    memory_max_bytes: int = Field(8 * 1024 * 1024, gt=0)


class ConsumerSettings(_Section):
    """One worker process: its queue `aifi.<name>`, bindings, handler and settlement policy."""

    handler: str = ""  # "module:attribute"; empty: the presence ledger, as entered/exited/tracking
    bindings: CommaList = ()  # default: ("<name>.#",)
    prefetch: int = Field(64, gt=0, le=65535)
    linger_ms: float = Field(2.0, ge=0)  # how long a short batch waits for more deliveries
    max_attempts: int = Field(5, gt=0)
    retry_base_ms: int = Field(1000, gt=0)
    retry_max_ms: int = Field(60_000, gt=0)
    delivery_limit: int = Field(20, gt=0)
    # A longer call is a failed attempt. Keep it well below the broker's consumer timeout
    # (30 min by default), which would otherwise cancel the consumer mid-batch.
    handler_timeout_s: float = Field(300.0, gt=0)
    health_host: str = "127.0.0.1"
    health_port: int = Field(0, ge=0, le=65535)  # 0: no health endpoint


POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
SQLITE_SCHEME: Final = "sqlite:///"


class LedgerSettings(_Section):
    # Where the ledger is: empty for the SQLite file `db`; `sqlite:///relative/path` or
    # `sqlite:////absolute/path`; or `postgresql://user:password@host:port/database`.
    url: str = ""
    db: Path = Path("data/ledger.sqlite3")  # the SQLite file when `url` is empty
    # FULL: a commit survives power loss, which acking after the commit relies on.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    busy_timeout_ms: int = Field(10_000, ge=0)  # the three workers share one database file
    # How long an applied event's id is kept to recognise a redelivery; 0 keeps them forever.
    processed_retention_days: float = Field(7, ge=0)
    prune_interval_s: float = Field(600, gt=0)
    # PostgreSQL: connections each worker keeps, and how long a statement or a wait for a
    # connection may take before the database counts as unavailable.
    pool_size: int = Field(4, gt=0)
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if url and not url.startswith((*POSTGRES_SCHEMES, SQLITE_SCHEME)):
            # Never echo the URL: it may hold a password.
            raise ValueError("must start with postgresql://, postgres:// or sqlite:///")
        return url

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "postgresql" if self.url.startswith(POSTGRES_SCHEMES) else "sqlite"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file: the `url`'s path if it names one, else `db`."""
        if self.url.startswith(SQLITE_SCHEME):
            return Path(self.url.removeprefix(SQLITE_SCHEME))
        return self.db


class PresenceSettings(_Section):
    """`aifi-presence`, the read-only HTTP API over the ledger, with tokens of its own."""

    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)
    tokens: TokenMap = Field(default_factory=dict)
    access_log: bool = False
    shutdown_timeout_s: float = Field(10.0, gt=0)
    # How long it waits at most between two attempts to open a ledger it cannot open yet.
    retry_max_s: float = Field(5.0, gt=0)
    # /readyz answers 503 if the database does not answer its ping within this.
    ready_timeout_s: float = Field(2.0, gt=0)


# The workers that keep the presence ledger: they run with no `consumers.<name>` entry.
BUILT_IN_CONSUMERS: Final = ("entered", "exited", "tracking")


def default_consumers() -> dict[str, ConsumerSettings]:
    return {name: ConsumerSettings() for name in BUILT_IN_CONSUMERS}


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class TracingSettings(_Section):
    """Spans over OTLP (needs the `otel` extra): on when an endpoint is set, here or in the
    standard OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT."""

    otlp_endpoint: str = ""  # e.g. http://collector:4318 (OTLP over HTTP)
    service_name: str = ""  # empty: OTEL_SERVICE_NAME, else aifi-gateway / aifi-consumer-<name>


class GatewaySettings(_Section):
    """What only `aifi-gateway` reads: when a 200 is answered (`ack`), and how long
    `ack: confirmed` waits for the broker's confirm before answering as `spooled`."""

    ack: Literal["spooled", "confirmed"] = "spooled"
    confirm_timeout_ms: int = Field(200, gt=0)


class _ProcessSettings(_Section):
    """What every process reads. Each kind of process validates only its own sections of
    the one `config.yaml`: a mistake in another's section does not stop it."""

    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()


class _ConsumersTable(_Section):
    consumers: dict[str, ConsumerSettings] = Field(default_factory=default_consumers)

    def consumer(self, name: str) -> ConsumerSettings:
        """`consumers.<name>`; the built-in workers need no entry."""
        if name in self.consumers:
            return self.consumers[name]
        if name in BUILT_IN_CONSUMERS:
            return ConsumerSettings()
        raise SettingsError(f"no consumer {name!r}: add consumers.{name} to the config")


class GatewayProcessSettings(_ProcessSettings, _ConsumersTable):
    """`aifi-gateway`: it declares the workers' queues, hence `consumers`."""

    http: HttpSettings = HttpSettings()
    auth: AuthSettings = AuthSettings()
    amqp: AmqpSettings = AmqpSettings()
    spool: SpoolSettings = SpoolSettings()
    gateway: GatewaySettings = GatewaySettings()

    @model_validator(mode="after")
    def _body_fits_a_message(self) -> Self:
        """A body the gateway accepts must fit, in its envelope, in one AMQP message."""
        largest = self.http.max_body_bytes + ENVELOPE_ALLOWANCE_BYTES
        if largest > self.amqp.max_message_bytes:
            raise PydanticCustomError(
                "body_over_message",
                "http.max_body_bytes ({body}) plus {allowance} bytes for the event envelope "
                "exceeds amqp.max_message_bytes ({message}): lower http.max_body_bytes, or "
                "raise the broker's max_message_size and amqp.max_message_bytes with it",
                {
                    "body": self.http.max_body_bytes,
                    "allowance": ENVELOPE_ALLOWANCE_BYTES,
                    "message": self.amqp.max_message_bytes,
                },
            )
        return self


class ConsumerProcessSettings(_ProcessSettings, _ConsumersTable):
    """`aifi-consumer`, the workers."""

    amqp: AmqpSettings = AmqpSettings()
    ledger: LedgerSettings = LedgerSettings()


class PresenceProcessSettings(_ProcessSettings):
    """`aifi-presence`."""

    ledger: LedgerSettings = LedgerSettings()
    presence: PresenceSettings = PresenceSettings()


class Settings(GatewayProcessSettings, ConsumerProcessSettings, PresenceProcessSettings):
    """The whole `config.yaml`, every section validated: what tools that run all three kinds
    of process (the stack, the docs) read."""


ProcessSettingsT = TypeVar("ProcessSettingsT", bound=_ProcessSettings)
# Keys that moved, old path to new: still read, with a warning naming the new one.
MOVED: Final[Mapping[tuple[str, ...], tuple[str, ...]]] = {
    ("ack",): ("gateway", "ack"),
    ("confirm_timeout_ms",): ("gateway", "confirm_timeout_ms"),
    # "Workers" are the consumers' processes; the gateway's are gateway processes.
    ("http", "workers"): ("http", "processes"),
}


ENV_ALIASES = {"AIFI_TOKENS": ("auth", "tokens"), "AIFI_AMQP_URL": ("amqp", "urls")}
NOT_SETTINGS = {"AIFI_CONFIG"}


def parse_token_pairs(text: str) -> dict[str, str]:
    """`name=token,name2=token2` into a mapping; the error never shows a token."""
    pairs: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, token = item.partition("=")
        if not sep or not name.strip() or not token.strip():
            raise ValueError("each entry must be name=token (entry without '=' or empty part)")
        if name.strip() in pairs:
            raise ValueError(f"token name {name.strip()!r} given twice")
        pairs[name.strip()] = token.strip()
    return pairs


def env_name(path: tuple[str, ...]) -> str:
    return "_".join(("AIFI", *path)).upper()


def section_names(path: tuple[str, ...], section: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    return {env_name((*path, leaf)): (*path, leaf) for leaf in section.model_fields}


def env_names(model: type[BaseModel] = Settings) -> dict[str, tuple[str, ...]]:
    """Every accepted environment name and the settings path it sets; a built-in consumer's
    settings are `AIFI_CONSUMERS_<NAME>_<KEY>` (e.g. `AIFI_CONSUMERS_ENTERED_PREFETCH`); a
    moved key's old name sets its old path (`AIFI_ACK`), read as `MOVED` says."""
    names: dict[str, tuple[str, ...]] = dict(ENV_ALIASES)
    names.update({env_name(old): old for old in MOVED})
    for key, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, _Section):
            names.update(section_names((key,), sub))
        elif key == "consumers":
            for name in default_consumers():
                names.update(section_names((key, name), ConsumerSettings))
        else:
            names[env_name((key,))] = (key,)
    return names


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    known = env_names()
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("AIFI_") or name in NOT_SETTINGS:
            continue
        if name not in known:
            raise SettingsError(f"unknown setting in environment: {name}")
        *parents, leaf = known[name]
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


Spelling = Callable[[tuple[str, ...]], str]


def moved(tree: dict[str, Any], source: str, spell: Spelling = ".".join) -> list[tuple[str, str]]:
    """Move each `MOVED` key given in `tree` (from `source`) to its new path, in place: for
    each, its new section and a warning."""
    warnings = ((new[0], move(tree, old, new, f"{source}: ", spell)) for old, new in MOVED.items())
    return [(section, warning) for section, warning in warnings if warning]


def move(
    tree: dict[str, Any], old: tuple[str, ...], new: tuple[str, ...], where: str, spell: Spelling
) -> str:
    """Move `old` to `new` in `tree` if given, and say so; an error if both are given."""
    parent = dig(tree, old[:-1])
    if parent is None or old[-1] not in parent:
        return ""
    target = dig(tree, new[:-1], create=True)
    if target is None:
        return ""  # a section that is no mapping: validation names it
    if new[-1] in target:
        raise SettingsError(f"{where}give {spell(new)} only ({spell(old)} is its old name)")
    target[new[-1]] = parent.pop(old[-1])
    return f"{where}{spell(old)} is deprecated: read as {spell(new)}; rename it"


def dig(tree: dict[str, Any], path: tuple[str, ...], create: bool = False) -> dict[str, Any] | None:
    """The mapping at `path` in `tree`, made empty where missing if `create`."""
    node: Any = tree
    for part in path:
        if create and isinstance(node, dict):
            node.setdefault(part, {})
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise SettingsError(f"{path}: top level must be a mapping")
    return loaded


def describe(error: ValidationError) -> str:
    """Name each offending key, never echoing a value (it might be a token)."""
    # A check across sections has no single key; its message names the keys.
    return "invalid settings: " + "; ".join(
        f"{p.field}: {p.message}" if p.field else p.message for p in problems(error)
    )


def document(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The settings tree of `AIFI_CONFIG` (default `config.yaml` if present) under `AIFI_*`
    overrides, moved keys at their new paths, and the warnings about them (with the
    section each concerns). Its top-level keys are all known sections."""
    path = Path(environ.get("AIFI_CONFIG", "config.yaml"))
    base = read_yaml(path) if "AIFI_CONFIG" in environ or path.exists() else {}
    over = env_overrides(environ)
    notes = moved(base, str(path)) + moved(over, "environment", env_name)
    tree = merge(base, over)
    if unknown := sorted(set(tree) - set(Settings.model_fields)):
        raise SettingsError("invalid settings: " + "; ".join(f"{k}: unknown key" for k in unknown))
    return tree, notes


def read(
    model: type[ProcessSettingsT], environ: Mapping[str, str]
) -> tuple[ProcessSettingsT, list[str]]:
    """`model`'s settings, its sections alone validated, and the warnings about its moved keys
    (to log once logging is configured)."""
    tree, notes = document(environ)
    own = {key: value for key, value in tree.items() if key in model.model_fields}
    try:
        settings = model.model_validate(own)
    # `from None`: pydantic's error text repeats the input, which may hold a token.
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None
    return settings, [warning for section, warning in notes if section in model.model_fields]


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Every section's settings (what tools running all three kinds of process read)."""
    return load_as(Settings, environ)


def load_as(
    model: type[ProcessSettingsT], environ: Mapping[str, str] | None = None
) -> ProcessSettingsT:
    """`model`'s settings, deprecated keys logged."""
    settings, warnings = read(model, os.environ if environ is None else environ)
    for warning in warnings:
        log.warning(warning)
    return settings


def configured(model: type[ProcessSettingsT]) -> ProcessSettingsT:
    """`model`'s settings, logging configured at their level, then deprecated keys logged
    (a warning before `logs.configure` would escape the JSON log)."""
    settings, warnings = read(model, os.environ)
    logs.configure(settings.log.level)
    for warning in warnings:
        log.warning(warning)
    return settings


def settings_for(
    program: str,
    model: type[ProcessSettingsT],
    check: Callable[[ProcessSettingsT], None] | None = None,
) -> ProcessSettingsT:
    """`model`'s settings, logging configured at their level (then deprecated keys logged),
    then `check`ed if given; what is wrong is printed as `program: why`, and the process
    exits with status 2."""
    try:
        settings = configured(model)
        if check is not None:
            check(settings)
    except SettingsError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings

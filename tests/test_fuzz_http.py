"""Schemathesis against a real gateway process: no 5xx, only documented answers, and what
reaches the exchange is exactly what was answered (issue 6, "Bad input, for real").

One fuzzing run per module, judged by several tests, so that a bug in one property does
not hide the others. The broker is shared with other test runs, so the gateway gets a
token name of its own and only messages stamped with it are judged.

Last, bodies at the edges of what the models accept, through an in-process gateway: every
one answered 200 is an event that the built-in workers apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import aio_pika
import aiohttp
import hypothesis
import orjson
import pytest
import requests
import schemathesis
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from hypothesis import HealthCheck, given, settings, strategies as st
from pydantic import ValidationError
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from consumers import topology
from core import contract
from core.amqp import declare_topology
from core.contract import dead_queue_name
from devtools.rabbitnode import free_port
from tests.support import broker
from tests.support.broker import Capture, token_name_of
from tests.support.consumer import Launcher, Scratch, WorkerProcess
from tests.support.gateway import AUTH, TOKEN, TOKEN_NAME
from tests.support.processes import GatewayProcess
from tests.support.waiting import eventually
from tests.test_fuzz_models import (
    CLEAN_TEXT,
    DOCUMENTS,
    LAX_INTEGERS,
    NAMES,
    TIMES,
    dump,
    valid_bodies,
)

pytestmark = pytest.mark.slow  # a fault, fuzz or load suite: not in `make test-fast`

CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TRACKING: Final = "/webhooks/aifi/tracking"
ENTERED: Final = "/webhooks/aifi/entered"
WEBHOOKS: Final = (ENTERED, "/webhooks/aifi/left", "/webhooks/aifi/exited", TRACKING)
Operation = APIOperation[Any, Any, Any, Any]

# Per operation and generation mode: 4 operations x 2 modes x 100 = 800 requests.
MAX_EXAMPLES: Final = 100
REQUEST_TIMEOUT_S: Final = 10.0
# Answers the gateway publishes something for: 200 an event, the others a quarantined copy.
QUARANTINED_STATUSES: Final = frozenset({400, 415, 422})

# Only passive checks: an active one (ignored_auth, unsupported_method, ...) sends
# requests of its own, which would not be counted against what gets published.
CHECKS: Final = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

FUZZ_SETTINGS: Final = settings(
    max_examples=MAX_EXAMPLES,
    # Generous: a loopback request with a group-committed fsync takes milliseconds; this
    # only catches a gateway that stalls (a hang beyond it fails on REQUEST_TIMEOUT_S).
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def request_headers(token: str) -> st.SearchStrategy[dict[str, str | None]]:
    """Mostly the right token and the generated media type, so that bodies reach the parser.

    Sometimes no token or a wrong one (401), and sometimes another media type: not JSON or
    none at all (415, quarantined), or a JSON one spelled differently (parsed). A `None`
    value makes requests drop the header even when schemathesis generated one.
    """
    right = {"Authorization": f"Bearer {token}"}
    wrong: list[dict[str, str | None]] = [
        {"Authorization": None},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": "Bearer "},
    ]
    media: list[dict[str, str | None]] = [
        {"Content-Type": "text/plain"},
        {"Content-Type": None},
        {"Content-Type": "application/vnd.aifi+json"},
        {"Content-Type": "application/json; charset=utf-8"},
    ]
    auth = st.sampled_from([right] * 12 + wrong)
    content_type = st.sampled_from([{}] * 12 + media)
    return st.builds(lambda a, c: a | c, auth, content_type)


@dataclass(frozen=True, slots=True)
class Served:
    """A gateway process and the token name that marks everything it publishes."""

    process: GatewayProcess
    token_name: str

    @property
    def url(self) -> str:
        return self.process.url

    def log_tail(self) -> str:
        return self.process.log_path.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def served_gateway(amqp_url: str, directory: Path) -> Iterator[Served]:
    # Starts with this run's TOKEN_NAME, so that `Capture` keeps its messages.
    token_name = f"{TOKEN_NAME}-fuzz-{uuid.uuid4().hex[:8]}"
    env = {
        "AIFI_CONFIG": str(CONFIG),
        "AIFI_AMQP_URL": amqp_url,
        "AIFI_TOKENS": f"{token_name}={TOKEN}",
        "AIFI_SPOOL_DIR": str(directory / "spool"),
    }
    process = GatewayProcess(free_port(), env, directory / "gateway.log")
    process.start()
    try:
        yield Served(process, token_name)
    finally:
        process.stop()


@pytest.fixture
def gateway(amqp_url: str, tmp_path: Path) -> Iterator[Served]:
    with served_gateway(amqp_url, tmp_path) as served:
        yield served


# The fuzzing: schemathesis cases, every answer recorded.


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    fingerprint: str  # sha256 of the body as sent, as the gateway computes it


@dataclass(slots=True)
class Fuzzing:
    """What the fuzzing sent and got, and the check failures, one per operation and mode."""

    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)

    def fingerprints(self, statuses: frozenset[int]) -> Counter[str]:
        return Counter(a.fingerprint for a in self.answers if a.status in statuses)


def sent_fingerprint(body: object) -> str:
    """sha256 of a request body as it went on the wire (http.client sends a str as ISO-8859-1)."""
    if isinstance(body, str):
        body = body.encode("iso-8859-1")
    if not isinstance(body, bytes | None):
        raise TypeError(f"a streamed request body cannot be fingerprinted: {type(body)}")
    return hashlib.sha256(body or b"").hexdigest()


def fuzz_operation(
    operation: Operation,
    mode: GenerationMode,
    served: Served,
    session: requests.Session,
    fuzzing: Fuzzing,
) -> None:
    """Schemathesis cases for one operation, until the first failure (shrunk)."""

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode), headers=request_headers(TOKEN))
    def send(case: Case[Any], headers: dict[str, str | None]) -> None:
        response = case.call(
            base_url=served.url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S
        )
        # Recorded first: shrinking a failure sends requests too, and they publish too.
        fingerprint = sent_fingerprint(response.request.body)
        fuzzing.answers.append(Answer(response.status_code, fingerprint))
        case.validate_response(response, checks=CHECKS)

    try:
        send()
    # schemathesis' FailureGroup is a BaseExceptionGroup, not an Exception.
    except (Exception, BaseExceptionGroup) as exc:
        # Kept for its own test; the other operations and the accounting still run.
        notes = "\n".join(getattr(exc, "__notes__", []))
        fuzzing.failures.append(f"{operation.label} ({mode.value}): {exc}\n{notes}")


def operations(schema: BaseSchema) -> list[Operation]:
    """Every operation of the document, which must hold exactly the four webhooks."""
    found: list[Operation] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found.append(result.ok())
    assert sorted(op.label for op in found) == sorted(f"POST {path}" for path in WEBHOOKS)
    return found


def fuzz(served: Served) -> Fuzzing:
    """Every operation of the served `/openapi.json`, positive and negative; blocking."""
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", timeout=5)
    fuzzing = Fuzzing()
    with requests.Session() as session:
        for operation in operations(schema):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(operation, mode, served, session, fuzzing)
    return fuzzing


# Afterwards: the process, and what reached the exchange.


async def get_json(url: str, timeout_s: float) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        return response.status, await response.json()


async def healthz(served: Served) -> int:
    """The status of `/healthz` within a second, 0 if there was none."""
    try:
        status, _ = await get_json(f"{served.url}/healthz", timeout_s=1.0)
    except (aiohttp.ClientError, TimeoutError):
        return 0
    return status


async def wait_relayed(served: Served, limit_s: float = 10.0) -> dict[str, Any]:
    """The readiness status once the spool is empty (all confirmed), or the last one seen."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            _, status = await get_json(f"{served.url}/readyz", timeout_s=2.0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"ready": False, "error": repr(exc)}
        relayed = status["spool"]["depth"] == 0 and status["relay_pending"] == 0
        if relayed or time.monotonic() > deadline:
            return dict(status)
        await asyncio.sleep(0.1)


async def collect(
    capture: Capture, token_name: str, expected: int, limit_s: float = 15.0, settle_s: float = 0.5
) -> list[AbstractIncomingMessage]:
    """This gateway's messages: `expected` of them, then whatever else comes in `settle_s`.

    Other runs keep publishing to the shared exchange, so "until the queue is quiet" may
    never come; the spool was seen empty, so all of ours are routed already.
    """
    ours: list[AbstractIncomingMessage] = []
    deadline = time.monotonic() + limit_s
    settle_at = time.monotonic() + settle_s if expected == 0 else None
    while time.monotonic() < min(deadline, settle_at or deadline):
        try:
            message = await capture.get(timeout_s=0.1)
        except TimeoutError:
            continue
        # `Capture` keeps the whole run's messages; other tests' gateways use TOKEN_NAME.
        if token_name_of(message) == token_name:
            ours.append(message)
            if len(ours) == expected:
                settle_at = time.monotonic() + settle_s
    return ours


def event_fingerprint(message: AbstractIncomingMessage, token_name: str) -> str:
    """The fingerprint of a published event; AssertionError or ValidationError if it is not one."""
    event = contract.CloudEvent.model_validate_json(message.body)
    data = event.data
    assert message.routing_key == contract.routing_key(data.kind, data.storeId)
    assert message.content_type == contract.EVENT_CONTENT_TYPE
    assert message.message_id == event.id
    assert data.tokenName == token_name
    return data.fingerprint


def quarantined_fingerprint(message: AbstractIncomingMessage, token_name: str) -> str:
    """The fingerprint of a quarantined request; AssertionError if it is not one."""
    headers = message.headers or {}
    kind = (message.routing_key or "").removeprefix("invalid.")
    assert kind in contract.KINDS
    assert message.routing_key == contract.invalid_routing_key(kind)
    reason = headers.get(contract.INVALID_REASON_HEADER)
    assert isinstance(reason, str)
    assert reason
    assert headers.get(contract.TOKEN_NAME_HEADER) == token_name
    fingerprint = hashlib.sha256(message.body).hexdigest()
    assert headers.get(contract.FINGERPRINT_HEADER) == fingerprint
    return fingerprint


@dataclass(slots=True)
class Published:
    """Fingerprints of the events and of the quarantined requests, and anything else."""

    events: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    neither: list[str] = field(default_factory=list)

    @classmethod
    def classify(cls, messages: list[AbstractIncomingMessage], token_name: str) -> Published:
        published = cls()
        for message in messages:
            try:
                if (message.routing_key or "").startswith("invalid."):
                    published.quarantined[quarantined_fingerprint(message, token_name)] += 1
                else:
                    published.events[event_fingerprint(message, token_name)] += 1
            except (AssertionError, ValueError) as exc:
                text = f"{message.routing_key} {message.headers} {message.body[:300]!r}: {exc}"
                published.neither.append(text)
        return published


@dataclass(frozen=True, slots=True)
class Outcome:
    fuzzing: Fuzzing
    alive: bool
    healthz: int
    readiness: dict[str, Any]
    published: Published
    log_tail: str

    def summary(self) -> str:
        return (
            f"answers {dict(self.fuzzing.statuses())}, readiness {self.readiness}, "
            f"published {self.published.events.total()} events and "
            f"{self.published.quarantined.total()} quarantined; gateway log: {self.log_tail}"
        )


async def fuzz_and_collect(served: Served, amqp_url: str) -> Outcome:
    connection = await aio_pika.connect(amqp_url)
    async with connection, connection.channel() as channel:
        await declare_topology(channel)
        # Bound to `#` before the first request. The fuzzing blocks, so it runs in a
        # thread while this loop keeps the AMQP connection and the capture going.
        async with Capture.bound(channel, f"test.fuzz.{uuid.uuid4().hex}", "#") as capture:
            fuzzing = await asyncio.to_thread(fuzz, served)
            process = served.process.process
            alive = process is not None and process.poll() is None
            health = await healthz(served)
            readiness = await wait_relayed(served)
            refused = fuzzing.fingerprints(QUARANTINED_STATUSES)
            expected = fuzzing.fingerprints(frozenset({200})).total() + refused.total()
            messages = await collect(capture, served.token_name, expected)
    published = Published.classify(messages, served.token_name)
    return Outcome(fuzzing, alive, health, readiness, published, served.log_tail())


@pytest.fixture(scope="module")
def fuzzed(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """One fuzzing run of a fresh gateway, for every test below to judge."""
    with served_gateway(amqp_url, tmp_path_factory.mktemp("fuzz")) as served:
        return asyncio.run(fuzz_and_collect(served, amqp_url))


def test_every_answer_is_documented_and_none_is_a_server_error(fuzzed: Outcome) -> None:
    assert not fuzzed.fuzzing.failures, "\n\n".join(fuzzed.fuzzing.failures)


def test_the_gateway_survives_the_fuzzing(fuzzed: Outcome) -> None:
    assert fuzzed.alive, fuzzed.log_tail
    assert fuzzed.healthz == 200
    assert fuzzed.readiness["ready"], fuzzed.summary()


def test_the_fuzzing_reaches_every_kind_of_answer(fuzzed: Outcome) -> None:
    # A fuzzing that only ever met 401s would prove nothing below.
    statuses = fuzzed.fuzzing.statuses()
    assert all(statuses[s] for s in (200, 400, 401, 415, 422)), fuzzed.summary()


def test_everything_published_is_an_event_or_a_quarantined_request(fuzzed: Outcome) -> None:
    assert not fuzzed.published.neither, fuzzed.published.neither[:5]


def test_each_200_is_published_as_one_event(fuzzed: Outcome) -> None:
    accepted = fuzzed.fuzzing.fingerprints(frozenset({200}))
    assert fuzzed.published.events == accepted, fuzzed.summary()


def test_each_400_415_422_is_published_as_one_quarantined_request(fuzzed: Outcome) -> None:
    refused = fuzzed.fuzzing.fingerprints(QUARANTINED_STATUSES)
    assert fuzzed.published.quarantined == refused, fuzzed.summary()


# Regressions, one fresh gateway each: inputs at the limits of what the models accept,
# found by probing parse -> normalize -> publish (see test_fuzz_models.py) and by the
# fuzzing above. `raises` keeps a broken fixture from passing for the expected failure.


def example(name: str, **changes: Any) -> bytes:
    document: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_bytes())
    return json.dumps(document | changes).encode()


async def post(served: Served, path: str, body: bytes, content_type: str) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(f"{served.url}{path}", data=body, headers=headers) as response,
    ):
        return response.status


async def first_of_ours(capture: Capture, token_name: str, limit_s: float = 5.0) -> bytes | None:
    """The body of this gateway's first message within `limit_s`, or None if none came."""
    messages = await collect(capture, token_name, expected=1, limit_s=limit_s, settle_s=0)
    return messages[0].body if messages else None


def contract_violation(body: bytes) -> str | None:
    try:
        contract.CloudEvent.model_validate_json(body)
    except ValidationError as exc:
        return str(exc)
    return None


ENCODE_64_BITS: Final = (
    "orjson.dumps in contract.encode_event (events.to_outbound) raises TypeError "
    "'Integer exceeds 64-bit range': 500"
)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(
            TRACKING,
            example("tracking", storeId="100000000000000000000000"),
            id="storeId-string-beyond-64-bits",
        ),
        pytest.param(
            ENTERED,
            example("entered", customer={"id": 8707240281037881222384978967396352, "role": None}),
            id="customer-id-json-number-beyond-64-bits",
        ),
        pytest.param(
            TRACKING,
            example("tracking", storeId=44499768279179206656),
            id="storeId-json-number-beyond-64-bits",
        ),
        pytest.param(
            ENTERED,
            example("entered", timeOfOrigin="0001-01-01T00:00:00+01:00"),
            id="timeOfOrigin-at-datetime-min-with-offset",
        ),
    ],
)
async def test_regression_extreme_values_are_not_a_server_error(
    gateway: Served, path: str, body: bytes
) -> None:
    status = await post(gateway, path, body, "application/json")
    assert status < 500, gateway.log_tail()


async def test_regression_a_store_id_beyond_int64_is_refused_and_quarantined(
    gateway: Served, capture: Capture
) -> None:
    body = example("tracking", storeId=2**63)
    assert await post(gateway, TRACKING, body, "application/json") == 422
    published = await first_of_ours(capture, gateway.token_name)
    assert published == body, gateway.log_tail()


async def test_regression_a_request_with_a_long_content_type_is_quarantined(
    gateway: Served, capture: Capture
) -> None:
    assert await post(gateway, TRACKING, b"{}", "text/" + "a" * 300) == 415
    published = await first_of_ours(capture, gateway.token_name)
    assert published is not None, gateway.log_tail()


async def test_regression_a_non_string_tracking_store_external_id_is_refused_and_quarantined(
    gateway: Served, capture: Capture
) -> None:
    body = example("tracking", storeExternalId=42)
    assert await post(gateway, TRACKING, body, "application/json") == 422
    assert await first_of_ours(capture, gateway.token_name) == body


# What the gateway accepts, the built-in workers apply: a 200 is never an event that the
# entered, exited or tracking worker rejects or dead-letters. Hypothesis posts its examples
# to a gateway process; then a worker process (`aifi-consumer`), on a ledger of this test's
# own, consumes them from the broker; each accepted example's own event id must be marked
# processed and its own row (visit or tracking) be there.

BUILT_IN_PATHS: Final = {"entered": ENTERED, "left": "/webhooks/aifi/left", "tracking": TRACKING}
# The ids the ledger keys its rows by, each of which a body may leave out or get wrong.
ID_PATHS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "entered": (("session", "sessionId"), ("sessionId",), ("sessionToken",)),
    "left": (("session", "sessionId"), ("sessionId",), ("sessionToken",)),
    "tracking": (("uniqueEventId",),),
}
EDGE_IDS: Final = st.none() | st.sampled_from(["", " ", "\t\n", "\u3000", "0"]) | CLEAN_TEXT
# Numbers pydantic-core parses and orjson (the workers' decoder) may not, and plain ones.
EDGE_NUMBERS: Final = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400, "-0", "1E+2", "5e-324"]
)
APPLIES: Final = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Fewer accepted examples than this, and the property would have tested too little.
ACCEPTED_MIN: Final = 25
WORKER_TIMEOUT_S: Final = 60.0


def set_id(document: dict[str, Any], path: tuple[str, ...], value: str | None) -> None:
    *parents, last = path
    node: Any = document
    for key in parents:
        node = node.get(key)
    if isinstance(node, dict):
        node[last] = value


@st.composite
def edge_bodies(draw: st.DrawFn, name: str) -> bytes:
    """A valid body (extras, nulls) with ids, times, store id and a number at the edges."""
    document: dict[str, Any] = json.loads(draw(valid_bodies(name)))
    for path in ID_PATHS[name]:
        if draw(st.booleans()):
            set_id(document, path, draw(EDGE_IDS))
    edges = {"storeId": LAX_INTEGERS, "timeOfOrigin": TIMES, "timeOfIssue": TIMES}
    document |= draw(st.fixed_dictionaries({}, optional=edges))
    raw = dump(document)
    number = draw(st.none() | EDGE_NUMBERS)
    return raw if number is None else b'{"odd": ' + number.encode() + b", " + raw[1:]


CASES: Final = NAMES.flatmap(lambda name: st.tuples(st.just(name), edge_bodies(name)))


def odd_example(name: str, **changes: Any) -> tuple[str, bytes]:
    return name, dump(DOCUMENTS[name] | changes)


@dataclass(frozen=True, slots=True)
class Accepted:
    """An example answered 200: its kind and the event id the gateway answered with."""

    name: str
    event_id: str


def post_examples(served: Served) -> tuple[list[Accepted], Counter[int]]:
    """Hypothesis's examples posted to the gateway process; those answered 200, and how
    many of each status."""
    accepted: list[Accepted] = []
    statuses: Counter[int] = Counter()

    @APPLIES
    @given(case=CASES)
    @hypothesis.example(case=odd_example("tracking", uniqueEventId=""))
    @hypothesis.example(case=odd_example("entered", session=None, sessionId="", sessionToken=""))
    @hypothesis.example(case=odd_example("tracking", confidence=float("nan")))
    def post_one(case: tuple[str, bytes]) -> None:
        name, raw = case
        headers = AUTH | {"Content-Type": "application/json"}
        url = served.url + BUILT_IN_PATHS[name]
        response = requests.post(url, data=raw, headers=headers, timeout=REQUEST_TIMEOUT_S)
        statuses[response.status_code] += 1
        if response.status_code == 200:
            accepted.append(Accepted(name, response.headers["X-Event-Id"]))
        else:
            assert response.status_code in {400, 422}, response.text

    post_one()
    return accepted, statuses


def ledger_row(worker: WorkerProcess, event: dict[str, Any]) -> tuple[Any, ...] | None:
    """The row the event keys: its tracking row, or the visit of its session."""
    if event["type"].endswith("tracking"):
        sql, key = "SELECT * FROM tracking WHERE unique_event_id = ?", "uniqueEventId"
    else:
        sql, key = "SELECT * FROM visits WHERE session_id = ?", "sessionId"
    with contextlib.closing(sqlite3.connect(worker.db)) as db:
        row: tuple[Any, ...] | None = db.execute(sql, (event["data"][key],)).fetchone()
    return row


async def test_what_the_gateway_accepts_a_worker_process_applies(
    gateway: Served,
    channel: AbstractChannel,
    capture: Capture,
    scratch: Scratch,
    launcher: Launcher,
) -> None:
    name, consumer = scratch.consumer("entered.#", "exited.#", "tracking.#")
    await topology.declare(channel, name, consumer)
    accepted, statuses = await asyncio.to_thread(post_examples, gateway)
    assert len(accepted) >= ACCEPTED_MIN, f"too few accepted to test anything: {statuses}"
    worker = launcher({name: consumer})
    worker.start(name)
    wanted = {a.event_id for a in accepted}
    await eventually(
        lambda: wanted <= worker.processed_ids(), WORKER_TIMEOUT_S, "every 200 to be applied"
    )
    events = await captured(capture, wanted)
    for each in accepted:
        assert ledger_row(worker, events[each.event_id]) is not None, each
    assert not await broker.depth(channel, dead_queue_name(name)), "a 200 was dead-lettered"


async def captured(capture: Capture, event_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The published events `event_ids` by id (a tracking call repeated has the same id);
    anything else on the capture is passed over."""
    found: dict[str, dict[str, Any]] = {}
    while found.keys() < event_ids:
        message = await capture.get(WORKER_TIMEOUT_S)
        if message.message_id in event_ids:
            found[message.message_id] = orjson.loads(message.body)
    return found

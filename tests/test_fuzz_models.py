"""Property tests of the parse -> normalize -> publish path, without a network.

Bad input is refused with 400 or 422 and nothing else; a valid body becomes an event that
keeps the contract and that AMQP can carry; a quarantined request keeps its bytes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final, TypeAlias

import pytest
from hypothesis import example, given, settings, strategies as st
from pydantic import BaseModel

from core import contract
from core.contract import Kind, Outbound
from core.http import Rejection
from core.settings import AmqpSettings
from gateway import normalize
from gateway.frames import PublishEncoder
from gateway.handlers import parse
from gateway.models import Customer, Payment, Session, Shopper, Store, Tracking, Transition
from tests.support.gateway import TOKEN_NAME

pytestmark = pytest.mark.slow  # a fault, fuzz or load suite: not in `make test-fast`

Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"
Model: TypeAlias = type[Transition] | type[Tracking]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOCUMENTS: Final[dict[str, dict[str, Json]]] = {
    name: json.loads((EXAMPLES / f"{name}.json").read_bytes())
    for name in ("entered", "left", "tracking")
}
MODELS: Final[dict[str, Model]] = {"entered": Transition, "left": Transition, "tracking": Tracking}
KINDS: Final[dict[str, Kind]] = {"entered": "entered", "left": "exited", "tracking": "tracking"}
NORMALIZERS: Final[dict[str, normalize.Normalizer[Any]]] = {
    "entered": normalize.ENTERED,
    "left": normalize.EXITED,
    "tracking": normalize.TRACKING,
}
# The objects of each document that keep unknown fields, and the model that declares each.
OPEN_OBJECTS: Final[dict[str, dict[tuple[str, ...], type[BaseModel]]]] = {
    "entered": {
        (): Transition,
        ("store",): Store,
        ("customer",): Customer,
        ("session",): Session,
        ("payment",): Payment,
        ("shopper",): Shopper,
    },
    "tracking": {(): Tracking, ("store",): Store},
}
OPEN_OBJECTS["left"] = OPEN_OBJECTS["entered"]
# Documented nullable (docs/contract.md, "The event contract"); the examples carry a top-level
# sessionId, so a null `session` still leaves the session id.
NULLABLE: Final[dict[str, tuple[str, ...]]] = {
    "entered": ("session", "storeExternalId"),
    "left": ("session", "storeExternalId"),
    "tracking": ("shopperId",),
}
INT64: Final = (-(2**63), 2**63 - 1)
RECEIVED_AT: Final = datetime(2026, 11, 29, 19, 20, 0, 123456, tzinfo=UTC)

# Derandomized: CI sees the same examples on every run.
BOUNDED: Final = settings(max_examples=300, deadline=timedelta(seconds=1), derandomize=True)

ANY_TEXT: Final = st.text(max_size=20)
# Text JSON can carry as UTF-8: a lone surrogate is refused (400), which is right, but
# a body holding one is not a valid body.
CLEAN_TEXT: Final = st.text(st.characters(codec="utf-8"), max_size=20)


def json_values(text: st.SearchStrategy[str] = ANY_TEXT) -> st.SearchStrategy[Json]:
    """Any JSON document (integers of any size included), nested a few levels."""
    scalars: st.SearchStrategy[Json] = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | text
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )


def dump(value: Json) -> bytes:
    # The json module, not orjson: it writes integers beyond 64 bits and lone surrogates.
    return json.dumps(value).encode()


def paths(value: Json, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """The path of every member and item below `value`."""
    children: list[tuple[str | int, Json]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    found = []
    for key, child in children:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


def at(document: Json, path: tuple[str | int, ...]) -> Any:
    node: Any = document
    for key in path:
        node = node[key]
    return node


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    """An example document with a few members removed or replaced by any JSON at all."""
    document = copy.deepcopy(DOCUMENTS[name])
    for _ in range(draw(st.integers(1, 3))):
        candidates = paths(document)
        if not candidates:
            break
        *parent, key = draw(st.sampled_from(candidates))
        container = at(document, tuple(parent))
        if draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(json_values())
    return dump(document)


NAMES: Final = st.sampled_from(sorted(DOCUMENTS))


# (a) Whatever arrives, the parse path answers with a model, a 400 or a 422.


def outcome(raw: bytes, model: Model) -> BaseModel | Rejection:
    """What the parse path makes of `raw`; any exception but a Rejection propagates."""
    try:
        return parse(raw, "application/json", model)
    except Rejection as rejection:
        return rejection


def parsed_or_refused(raw: bytes, model: Model) -> BaseModel | None:
    """The model, or None for a refusal with 400 or 422; any other outcome fails."""
    result = outcome(raw, model)
    if not isinstance(result, Rejection):
        assert isinstance(result, model)
        return result
    assert result.status in (400, 422), (result.status, result.detail)
    if result.status == 422:
        # A 422 names each offending field for the sender.
        assert result.extra["errors"]
    return None


@BOUNDED
@given(raw=st.binary(max_size=300), name=NAMES)
def test_arbitrary_bytes_are_parsed_or_refused_with_400_or_422(raw: bytes, name: str) -> None:
    parsed_or_refused(raw, MODELS[name])


@BOUNDED
@given(value=json_values(), name=NAMES)
def test_arbitrary_json_is_parsed_or_refused_with_400_or_422(value: Json, name: str) -> None:
    parsed_or_refused(dump(value), MODELS[name])


@BOUNDED
@given(data=st.data(), name=NAMES)
def test_damaged_examples_are_parsed_or_refused_with_400_or_422(
    data: st.DataObject, name: str
) -> None:
    # Random JSON rarely gets past the first missing field; damaged examples reach every
    # field validator and the session-id rule.
    parsed_or_refused(data.draw(mutated(name)), MODELS[name])


# (b) A valid body becomes an event that keeps the contract and that AMQP can carry.


def normalized(name: str, raw: bytes) -> Outbound:
    """What the gateway publishes for a body it accepted (as handlers.Receiver does)."""
    normalizer = NORMALIZERS[name]
    model = parse(raw, "application/json", normalizer.model)
    return normalizer.build(model, normalize.Receipt(raw, TOKEN_NAME, RECEIVED_AT))


def amqp_frame(outbound: Outbound) -> bytes:
    """The frames the relay sends for `outbound`; the encoder raises ValueError for what
    AMQP cannot carry (a shortstr over 255 bytes, a header integer beyond signed 64 bits),
    which the relay sets aside: a valid body must never come to that.
    """
    limit = AmqpSettings().max_message_bytes
    return PublishEncoder(1, contract.EXCHANGE, 131_064, limit).encode(outbound)


def assert_publishes(name: str, raw: bytes, store_id: int) -> None:
    """`raw`, accepted, becomes one contract event about it, routed by kind and store."""
    outbound = normalized(name, raw)
    event = contract.CloudEvent.model_validate_json(outbound.body)
    assert event.data.payload == json.loads(raw)
    assert event.data.kind == KINDS[name]
    assert event.data.storeId == store_id
    assert event.data.fingerprint == hashlib.sha256(raw).hexdigest()
    assert outbound.routing_key == f"{KINDS[name]}.{store_id}"
    assert amqp_frame(outbound)


def undeclared(model: type[BaseModel]) -> st.SearchStrategy[str]:
    """Member names `model` does not declare: an unknown field it must keep."""
    declared = set(model.model_fields)
    return CLEAN_TEXT.filter(lambda key: key not in declared)


@st.composite
def valid_bodies(draw: st.DrawFn, name: str) -> bytes:
    """An example document with extra fields in every open object and some nulls."""
    document: dict[str, Any] = copy.deepcopy(DOCUMENTS[name])
    document["storeId"] = draw(st.integers(*INT64))
    for path, model in OPEN_OBJECTS[name].items():
        extra = st.dictionaries(undeclared(model), json_values(CLEAN_TEXT), max_size=3)
        at(document, path).update(draw(extra))
    for field in NULLABLE[name]:
        if draw(st.booleans()):
            document[field] = None
    return dump(document)


# Fewer: each body is big (every open object gets extras) and slow to draw.
@settings(BOUNDED, max_examples=150)
@given(data=st.data(), name=NAMES)
def test_valid_bodies_with_extras_and_nulls_become_contract_events(
    data: st.DataObject, name: str
) -> None:
    raw = data.draw(valid_bodies(name))
    assert_publishes(name, raw, json.loads(raw)["storeId"])


# (c) A quarantined request is kept exactly as it was received.


@BOUNDED
@given(
    raw=st.binary(max_size=500),
    kind=st.sampled_from(contract.KINDS),
    reason=st.text(max_size=1200),
    content_type=st.sampled_from(["", "application/json", "text/plain", "application/x+json"]),
)
def test_quarantined_keeps_the_raw_bytes(
    raw: bytes, kind: Kind, reason: str, content_type: str
) -> None:
    receipt = normalize.Receipt(raw, TOKEN_NAME, RECEIVED_AT)
    kept = normalize.quarantined(kind, reason, receipt, content_type)
    assert kept.body == raw
    assert kept.routing_key == f"invalid.{kind}"
    assert kept.content_type == (content_type or "application/octet-stream")
    assert kept.headers[contract.INVALID_REASON_HEADER] == reason[:1000]
    assert kept.headers[contract.TOKEN_NAME_HEADER] == TOKEN_NAME
    assert kept.headers[contract.FINGERPRINT_HEADER] == hashlib.sha256(raw).hexdigest()


# Regressions. The first property, over the whole range of what the models accept,
# finds the integer bugs by itself; the explicit examples pin every bug below.

OFFSETS: Final = st.builds(timezone, st.timedeltas(timedelta(hours=-23), timedelta(hours=23)))
# Times anywhere, and within a day of datetime's limits, where an offset can push past them.
TIMES: Final = st.one_of(
    st.datetimes(timezones=OFFSETS),
    st.datetimes(max_value=datetime(1, 1, 2), timezones=OFFSETS),
    st.datetimes(min_value=datetime(9999, 12, 30), timezones=OFFSETS),
).map(datetime.isoformat)
# Integers anywhere, and next to the widths that encoders care about (JSON doubles,
# 64-bit signed and unsigned), as JSON numbers and as strings the models coerce.
NEAR_WIDTHS: Final = st.builds(
    lambda bits, sign, step: sign * 2**bits + step,
    st.sampled_from([31, 32, 53, 63, 64, 65]),
    st.sampled_from([1, -1]),
    st.integers(-2, 2),
)
LAX_INTEGERS: Final = (st.integers() | NEAR_WIDTHS).flatmap(lambda n: st.sampled_from([n, str(n)]))


def parsed_then_published(name: str, raw: bytes) -> None:
    """Anything the parse path accepts must publish; refusing it is fine too."""
    model = parsed_or_refused(raw, MODELS[name])
    if isinstance(model, Transition | Tracking):
        # The parsed store id: the models also take "42" for 42, by design.
        assert_publishes(name, raw, model.storeId)


@BOUNDED
@given(
    name=NAMES,
    changes=st.fixed_dictionaries(
        {}, optional={"storeId": LAX_INTEGERS, "timeOfOrigin": TIMES, "timeOfIssue": TIMES}
    ),
)
@example(name="tracking", changes={"storeId": 2**63})
@example(name="tracking", changes={"storeId": "100000000000000000000000"})
@example(name="entered", changes={"timeOfOrigin": "0001-01-01T00:00:00+01:00"})
def test_whatever_is_accepted_becomes_a_publishable_event(
    name: str, changes: dict[str, Json]
) -> None:
    parsed_then_published(name, dump(DOCUMENTS[name] | changes))


def with_changes(name: str, **changes: Json) -> bytes:
    return dump(DOCUMENTS[name] | changes)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        pytest.param(
            "tracking",
            with_changes("tracking", storeId="100000000000000000000000"),
            id="storeId-string-beyond-64-bits",
        ),
        pytest.param(
            "entered",
            with_changes("entered", session={"sessionId": "s", "groupSize": str(2**64)}),
            id="groupSize-string-beyond-64-bits",
        ),
        pytest.param(
            "entered",
            with_changes(
                "entered", customer={"id": 8707240281037881222384978967396352, "role": None}
            ),
            id="customer-id-json-number-beyond-64-bits",
        ),
        pytest.param(
            "tracking",
            with_changes("tracking", storeId=2**63),
            id="storeId-int-beyond-int64",
        ),
        pytest.param(
            "entered",
            with_changes("entered", timeOfOrigin="0001-01-01T00:00:00+01:00"),
            id="timeOfOrigin-at-datetime-min-with-offset",
        ),
        pytest.param(
            "tracking",
            with_changes("tracking", timeOfIssue="9999-12-31T23:59:59-01:00"),
            id="timeOfIssue-at-datetime-max-with-offset",
        ),
        pytest.param(
            "tracking",
            with_changes("tracking", storeExternalId=42),
            id="tracking-storeExternalId-not-a-string",
        ),
    ],
)
def test_edge_inputs_are_refused_or_published(name: str, raw: bytes) -> None:
    parsed_then_published(name, raw)


def test_a_quarantined_request_with_a_long_content_type_is_publishable() -> None:
    receipt = normalize.Receipt(b"{}", TOKEN_NAME, RECEIVED_AT)
    kept = normalize.quarantined("tracking", "not JSON", receipt, "text/" + "a" * 300)
    assert amqp_frame(kept)

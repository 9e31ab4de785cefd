"""Unit tests of the AiFi webhook models (gateway.models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.models import MAX_ID_CHARS, Tracking, Transition

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return loaded


def error_locs(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[int | str, ...]]:
    return [tuple(e["loc"]) for e in exc.value.errors()]


@pytest.mark.parametrize("name", ["entered", "left"])
def test_transition_examples_validate(name: str) -> None:
    doc = example(name)
    model = Transition.model_validate(doc)
    assert model.session_id == doc["session"]["sessionId"]
    assert model.storeId == doc["storeId"]
    assert model.customer.role == doc["customer"]["role"]
    assert model.shopper.shopperId == doc["shopper"]["shopperId"]


def test_tracking_example_validates() -> None:
    doc = example("tracking")
    model = Tracking.model_validate(doc)
    assert (model.storeId, model.shopperId, model.uniqueEventId) == (
        doc["storeId"],
        doc["shopperId"],
        doc["uniqueEventId"],
    )


def test_unknown_fields_are_kept_at_every_level() -> None:
    doc = example("entered")
    doc["futureField"] = {"nested": [1, 2]}
    doc["customer"]["loyaltyTier"] = "gold"
    doc["store"]["region"] = "eu-west"
    model = Transition.model_validate(doc)
    assert model.model_extra == {"futureField": {"nested": [1, 2]}}
    assert model.customer.model_extra == {"loyaltyTier": "gold"}
    dumped = model.model_dump()
    assert dumped["futureField"] == {"nested": [1, 2]}
    assert dumped["store"]["region"] == "eu-west"
    # Undeclared session fields of the documented example survive too.
    assert dumped["session"]["code"] == doc["session"]["code"]
    assert dumped["session"]["metadata"] == doc["session"]["metadata"]


def test_unknown_tracking_fields_are_kept() -> None:
    doc = example("tracking") | {"storeExternalId": "shop-9", "confidence": 0.93}
    model = Tracking.model_validate(doc)
    assert model.model_extra == {"confidence": 0.93}
    assert model.storeExternalId == "shop-9"


@pytest.mark.parametrize("field", ["session", "storeExternalId"])
def test_documented_nullable_transition_fields_accept_null(field: str) -> None:
    doc = example("left") | {field: None}
    assert getattr(Transition.model_validate(doc), field) is None


def test_tracking_shopper_id_accepts_null() -> None:
    assert Tracking.model_validate(example("tracking") | {"shopperId": None}).shopperId is None


@pytest.mark.parametrize(
    ("nested", "top", "token", "expected"),
    [
        ("nested", "top", "token", "nested"),
        (None, "top", "token", "top"),
        (None, None, "token", "token"),
        ("nested", None, None, "nested"),
        ("nested", None, "token", "nested"),
    ],
)
def test_session_id_resolution_order(
    nested: str | None, top: str | None, token: str | None, expected: str
) -> None:
    doc = example("entered")
    doc["session"]["sessionId"] = nested
    doc["session"]["sessionToken"] = "session-level-token-is-not-used"
    doc["sessionId"], doc["sessionToken"] = top, token
    assert Transition.model_validate(doc).session_id == expected


def test_session_id_falls_back_when_session_is_null() -> None:
    doc = example("entered") | {"session": None, "sessionId": None, "sessionToken": "old"}
    assert Transition.model_validate(doc).session_id == "old"


@pytest.mark.parametrize("session", [None, {"sessionId": None, "groupSize": 2}])
def test_no_session_id_anywhere_is_a_validation_error(session: dict[str, Any] | None) -> None:
    doc = example("entered") | {"session": session}
    doc.pop("sessionId")
    with pytest.raises(ValidationError, match="sessionId"):
        Transition.model_validate(doc)


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
def test_empty_or_blank_session_ids_count_as_missing(blank: str) -> None:
    doc = example("entered") | {"sessionId": blank, "sessionToken": blank}
    doc["session"]["sessionId"] = blank
    with pytest.raises(ValidationError, match="sessionId"):
        Transition.model_validate(doc)


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_session_id_falls_back_to_the_next_one(blank: str) -> None:
    doc = example("entered") | {"sessionId": blank, "sessionToken": "token"}
    doc["session"]["sessionId"] = blank
    assert Transition.model_validate(doc).session_id == "token"


@pytest.mark.parametrize("blank", ["", " ", "\u3000"])
def test_an_empty_or_blank_unique_event_id_is_refused(blank: str) -> None:
    # Every such event of a store would get the same event id, and the ledger refuses it.
    with pytest.raises(ValidationError) as exc:
        Tracking.model_validate(example("tracking") | {"uniqueEventId": blank})
    assert error_locs(exc) == [("uniqueEventId",)]


def test_unknown_role_is_an_error_on_customer_role() -> None:
    doc = example("entered")
    doc["customer"]["role"] = "manager"
    with pytest.raises(ValidationError) as exc:
        Transition.model_validate(doc)
    assert error_locs(exc) == [("customer", "role")]


@pytest.mark.parametrize(
    "field",
    [
        "session",
        "customer",
        "storeId",
        "store",
        "storeExternalId",
        "timeOfOrigin",
        "timeOfIssue",
        "payment",
        "shopperId",
        "shopper",
    ],
)
def test_missing_required_transition_field_is_named(field: str) -> None:
    doc = example("left")
    del doc[field]
    with pytest.raises(ValidationError) as exc:
        Transition.model_validate(doc)
    assert error_locs(exc) == [(field,)]
    assert exc.value.errors()[0]["type"] == "missing"


@pytest.mark.parametrize(
    "field", ["storeId", "store", "timeOfOrigin", "timeOfIssue", "shopperId", "uniqueEventId"]
)
def test_missing_required_tracking_field_is_named(field: str) -> None:
    doc = example("tracking")
    del doc[field]
    with pytest.raises(ValidationError) as exc:
        Tracking.model_validate(doc)
    assert error_locs(exc) == [(field,)]
    assert exc.value.errors()[0]["type"] == "missing"


def test_several_missing_fields_are_all_named() -> None:
    doc = {k: v for k, v in example("tracking").items() if k not in {"storeId", "uniqueEventId"}}
    with pytest.raises(ValidationError) as exc:
        Tracking.model_validate(doc)
    assert sorted(error_locs(exc)) == [("storeId",), ("uniqueEventId",)]


@pytest.mark.parametrize(
    ("name", "model", "path"),
    [
        ("entered", Transition, ("session", "sessionId")),
        ("entered", Transition, ("sessionId",)),
        ("entered", Transition, ("sessionToken",)),
        ("tracking", Tracking, ("uniqueEventId",)),
    ],
)
def test_ids_that_ride_in_amqp_headers_are_bounded(
    name: str, model: type[Transition] | type[Tracking], path: tuple[str, ...]
) -> None:
    doc = example(name)
    *parents, last = path
    target = doc
    for key in parents:
        target = target[key]
    target[last] = "x" * MAX_ID_CHARS
    model.model_validate(doc)
    target[last] = "x" * (MAX_ID_CHARS + 1)
    with pytest.raises(ValidationError) as exc:
        model.model_validate(doc)
    assert path in error_locs(exc)

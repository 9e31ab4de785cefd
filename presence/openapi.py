"""The OpenAPI 3.1 document of the presence API, generated from its pydantic models."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from core.http import Problem
from presence.models import Readiness, StoreOccupancy, Stores, Tracking, Visit

REF_TEMPLATE: Final = "#/components/schemas/{model}"
MODELS: Final[tuple[type[BaseModel], ...]] = (
    Stores,
    StoreOccupancy,
    Visit,
    Tracking,
    Readiness,
    Problem,
)
UNAUTHORIZED: Final = "bearer token missing or wrong"
UNAVAILABLE: Final = "the ledger cannot be read now (see /readyz); Retry-After"


def ref(model: str) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model)}


def schemas() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(model, "serialization") for model in MODELS], ref_template=REF_TEMPLATE
    )
    return dict(defs.get("$defs", {}))


def content(model: str, media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": ref(model)}}


def problems(codes: dict[int, str]) -> dict[str, Any]:
    return {
        str(code): {"description": text, "content": content("Problem", "application/problem+json")}
        for code, text in codes.items()
    }


def path_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def read(
    operation_id: str,
    summary: str,
    model: str,
    parameters: list[dict[str, Any]] | None = None,
    refusals: dict[int, str] | None = None,
) -> dict[str, Any]:
    """A GET of the ledger: `model` on 200, problems otherwise."""
    answers = {"200": {"description": summary, "content": content(model)}}
    errors = {401: UNAUTHORIZED, **(refusals or {}), 503: UNAVAILABLE}
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "responses": answers | problems(dict(sorted(errors.items()))),
    }
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


def readiness() -> dict[str, Any]:
    ready = {"description": "the ledger is open and answers", "content": content("Readiness")}
    away = {
        "description": "the ledger is not open or does not answer",
        "content": content("Readiness"),
    }
    return {
        "get": {
            "operationId": "readyz",
            "summary": "Whether the ledger's database answers",
            "security": [],
            "responses": {"200": ready, "503": away} | problems({405: "only GET is allowed"}),
        }
    }


def document() -> dict[str, Any]:
    store = path_parameter(
        "storeId", {"type": "integer", "format": "int64"}, "AiFi's storeId (an integer)"
    )
    session = path_parameter("sessionId", {"type": "string"}, "AiFi's sessionId")
    unique = path_parameter("uniqueEventId", {"type": "string"}, "the tracking event's id")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AiFi presence API",
            "version": "1.0.0",
            "description": "Read-only: who is in which store, from the presence ledger.",
        },
        "servers": [{"url": "/", "description": "the presence API serving this document"}],
        "paths": {
            "/stores": read("stores", "Occupancy of every store", "Stores"),
            "/stores/{storeId}": read(
                "store",
                "Occupancy of one store",
                "StoreOccupancy",
                [store],
                {404: "no visit to this store in the ledger", 422: "storeId is not an integer"},
            ),
            "/sessions/{sessionId}": read(
                "session", "One visit", "Visit", [session], {404: "no such session"}
            ),
            "/tracking/{uniqueEventId}": read(
                "tracking", "One association match", "Tracking", [unique], {404: "no such event"}
            ),
            "/readyz": readiness(),
        },
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }

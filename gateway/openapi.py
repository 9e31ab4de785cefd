"""The OpenAPI 3.1 document of the webhook endpoints, generated from the pydantic models."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from core import http
from core.settings import GatewayProcessSettings
from gateway.models import Tracking, Transition

REF_TEMPLATE: Final = "#/components/schemas/{model}"
ERRORS: Final = {
    400: "the body is not JSON (kept under invalid.<kind>)",
    401: "bearer token missing or wrong",
    408: "the body did not arrive in time",
    413: "the body exceeds http.max_body_bytes",
    415: "the media type is not JSON (kept under invalid.<kind>)",
    422: "the body breaks the schema; `errors` names each field (kept under invalid.<kind>)",
    429: "the token's rate limit is exceeded; see Retry-After",
    503: "the event could not be made safe; see Retry-After",
}


class FieldError(BaseModel):
    field: str
    message: str


class Problem(http.Problem):
    """An RFC 9457 problem document; a 422 lists what broke the schema in `errors`."""

    errors: list[FieldError] | None = None


def schemas() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [
        (Transition, "validation"),
        (Tracking, "validation"),
        (Problem, "serialization"),
    ]
    _, defs = models_json_schema(models, ref_template=REF_TEMPLATE)
    return dict(defs.get("$defs", {}))


def responses() -> dict[str, Any]:
    problem = {
        "application/problem+json": {"schema": {"$ref": REF_TEMPLATE.format(model="Problem")}}
    }
    ok = {"application/json": {"schema": {"type": "string", "const": "ok"}}}
    answers: dict[str, Any] = {"200": {"description": "the event is safe", "content": ok}}
    answers.update(
        {str(code): {"description": text, "content": problem} for code, text in ERRORS.items()}
    )
    return answers


def operation(operation_id: str, model: str, summary: str) -> dict[str, Any]:
    body = {"$ref": REF_TEMPLATE.format(model=model)}
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": responses(),
        }
    }


def document(settings: GatewayProcessSettings) -> dict[str, Any]:
    base = settings.http.base_path.rstrip("/")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AiFi webhook gateway",
            "version": "1.0.0",
            "description": "Receives AiFi's push webhooks and publishes them to RabbitMQ.",
        },
        # Relative: the paths are on whichever host and port serve this document.
        "servers": [{"url": "/", "description": "the gateway serving this document"}],
        "paths": {
            f"{base}/entered": operation("entered", "Transition", "A customer entered a store"),
            f"{base}/left": operation("left", "Transition", "A customer left a store"),
            f"{base}/exited": operation("exited", "Transition", "Alias of left"),
            settings.http.tracking_path: operation("tracking", "Tracking", "Association match"),
        },
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }

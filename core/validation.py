"""What a pydantic `ValidationError` says, told without the input it refused: the body
or the settings may hold a token, and pydantic's own text repeats them."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import ValidationError


class Problem(NamedTuple):
    field: str  # the dotted path; "" when the problem is the whole document (or a cross-check)
    message: str


def problems(error: ValidationError) -> list[Problem]:
    """Each problem `error` found, in order; an unknown key is called one."""
    return [
        Problem(
            ".".join(str(part) for part in item["loc"]),
            "unknown key" if item["type"] == "extra_forbidden" else item["msg"],
        )
        for item in error.errors(include_url=False, include_input=False)
    ]


def reasons(error: ValidationError, whole: str = "body") -> str:
    """The problems on one line, `field: message` each; `whole` names the document."""
    return "; ".join(f"{p.field or whole}: {p.message}" for p in problems(error))

"""What a pydantic `ValidationError` says, without the input it refused."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from core.validation import Problem, problems, reasons

SECRET = "tok-abcdef123456"


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int


class Outer(BaseModel):
    inner: Inner
    name: str

    @model_validator(mode="after")
    def _not_both_empty(self) -> Outer:
        if not self.name and not self.inner.count:
            raise ValueError("name or inner.count must be set")
        return self


def refusal(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Outer.model_validate(data)
    return caught.value


def test_each_problem_names_its_dotted_field_and_never_the_input() -> None:
    found = problems(refusal({"inner": {"count": SECRET, "token": SECRET}}))
    assert [p.field for p in found] == ["inner.count", "inner.token", "name"]
    assert found[1] == Problem("inner.token", "unknown key")
    assert all(SECRET not in p.message for p in found)


def test_a_problem_with_the_whole_document_has_no_field() -> None:
    assert [p.field for p in problems(refusal({"inner": {"count": 0}, "name": ""}))] == [""]


def test_reasons_put_the_problems_on_one_line_naming_the_whole_as_told() -> None:
    error = refusal({"inner": {"count": 0}, "name": ""})
    assert reasons(error) == "body: Value error, name or inner.count must be set"
    assert reasons(error, whole="settings").startswith("settings: ")

"""Unit tests of core.mirror: each way a plain form can part from its model is found.

The broken builds are the contract's own plain forms with one thing changed: one field's
type, whether its key may be absent, the order of two keys, a key missing or added.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, NotRequired, Required

import pytest
from pydantic import BaseModel, Field

from core import contract, mirror

Form = tuple[type, type[BaseModel], list[str]]
FORMS: list[Form] = contract.plain_forms()
IDS = [plain.__name__ for plain, _, _ in FORMS]


def typed_dict(like: type, hints: dict[str, Any]) -> type:
    """A TypedDict named as `like`, of `hints`, in their order (each key required unless
    its hint says `NotRequired`)."""
    factory: Any = typing.TypedDict  # called with names only known at run time
    made: type = factory(like.__name__, hints)
    return made


def optional_keys(plain: Any) -> frozenset[str]:
    keys: frozenset[str] = plain.__optional_keys__
    return keys


def hints_of(plain: type) -> dict[str, Any]:
    """`plain`'s hints, each key's optionality spelled in its hint."""
    optional = optional_keys(plain)
    hints = typing.get_type_hints(plain, include_extras=True)
    return {k: NotRequired[h] if k in optional else h for k, h in hints.items()}


def test_the_contract_s_plain_forms_as_rebuilt_here_mirror_their_models() -> None:
    for plain, model, names in FORMS:
        assert mirror.differences(typed_dict(plain, hints_of(plain)), model, names) == []


@pytest.mark.parametrize(("plain", "model", "names"), FORMS, ids=IDS)
def test_a_field_of_another_type_is_found(
    plain: type, model: type[BaseModel], names: list[str]
) -> None:
    for name in names:
        broken = typed_dict(plain, hints_of(plain) | {name: bytes})
        [found] = mirror.differences(broken, model, names)
        assert f": {name} is <class 'bytes'>" in found


@pytest.mark.parametrize(("plain", "model", "names"), FORMS, ids=IDS)
def test_a_key_that_may_be_absent_or_not_is_found(
    plain: type, model: type[BaseModel], names: list[str]
) -> None:
    for name, hint in hints_of(plain).items():
        flipped = Required[mirror.bare(hint)] if name in optional_keys(plain) else NotRequired[hint]
        [found] = mirror.differences(
            typed_dict(plain, hints_of(plain) | {name: flipped}), model, names
        )
        assert f": {name} is " in found


@pytest.mark.parametrize(("plain", "model", "names"), FORMS, ids=IDS)
def test_keys_out_of_order_missing_or_added_are_found(
    plain: type, model: type[BaseModel], names: list[str]
) -> None:
    hints = hints_of(plain)
    first, second, *rest = hints.items()
    for broken in [dict([second, first, *rest]), dict([first]), hints | {"extra": str}]:
        [found] = mirror.differences(typed_dict(plain, broken), model, names)
        assert f"fields {list(broken)}, not {names}" in found


def test_constraints_are_not_types() -> None:
    assert mirror.bare(Annotated[int, Field(ge=0)] | Annotated[str, "x"] | None) == int | str | None
    assert mirror.bare(Annotated[int | None, "x"]) == int | None
    assert mirror.bare(NotRequired[Annotated[str, "x"]]) is str


def test_a_default_other_than_none_has_no_plain_form() -> None:
    class Defaulted(BaseModel):
        count: int = 0

    with pytest.raises(TypeError, match="no plain form"):
        mirror.differences(typed_dict(Defaulted, {"count": int}), Defaulted)

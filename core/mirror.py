"""A TypedDict that mirrors a pydantic model's fields, checked in full against the model.

A model is the definition; a TypedDict of the same fields is what a hot path builds as a
plain dict literal (no model per object) and `mypy` checks. `differences` says where the
two part: names, order, types (the model's constraints aside: a TypedDict has none) and
optionality (a model field that defaults to None is a key that may be absent).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, NotRequired, Required, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo


def bare(hint: Any) -> Any:
    """`hint` without `Annotated` metadata nor `Required`/`NotRequired`, at any depth of unions."""
    origin = typing.get_origin(hint)
    if origin in (Annotated, Required, NotRequired):
        return bare(typing.get_args(hint)[0])
    if origin in (Union, types.UnionType):
        return Union[tuple(bare(arg) for arg in typing.get_args(hint))]  # noqa: UP007
    return hint


def differences(plain: type, model: type[BaseModel], names: Sequence[str] = ()) -> list[str]:
    """Where the TypedDict `plain` differs from `model`'s fields `names` (default: all of
    them, in their order); none if it mirrors them."""
    fields = {name: model.model_fields[name] for name in names or model.model_fields}
    hints = typing.get_type_hints(plain, include_extras=True)
    where = f"{plain.__name__} against {model.__name__}"
    if list(hints) != list(fields):
        return [f"{where}: fields {list(hints)}, not {list(fields)}"]
    optional: frozenset[str] = plain.__optional_keys__  # type: ignore[attr-defined]
    found = {name: (bare(hint), name in optional) for name, hint in hints.items()}
    return [
        f"{where}: {name} is {form(*found[name])}, not {form(*expected(field))}"
        for name, field in fields.items()
        if found[name] != expected(field)
    ]


def expected(field: FieldInfo) -> tuple[Any, bool]:
    """The plain type of a field, and whether its key may be absent (a field defaulting to
    None, which its absence stands for)."""
    if field.is_required():
        return bare(field.annotation), False
    if field.default is not None:
        raise TypeError(f"a default other than None has no plain form: {field!r}")
    kept = [arg for arg in typing.get_args(bare(field.annotation)) if arg is not type(None)]
    return Union[tuple(kept)], True  # noqa: UP007


def form(hint: Any, optional: bool) -> str:
    return f"{hint!r}{' (may be absent)' if optional else ''}"

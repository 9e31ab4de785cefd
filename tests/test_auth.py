"""Unit tests of bearer-token authentication (gateway.auth)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from core.auth import ANONYMOUS, TokenTable, bearer

CURRENT = "tok-current-7Yh2q"
NEXT = "tok-next-Qm93z"
TABLE = TokenTable.from_settings(
    {"current": SecretStr(CURRENT), "next": SecretStr(NEXT)}, allow_anonymous=False
)


@pytest.mark.parametrize(("token", "name"), [(CURRENT, "current"), (NEXT, "next")])
def test_each_rotated_token_identifies_by_its_own_name(token: str, name: str) -> None:
    assert TABLE.identify(f"Bearer {token}") == name


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_scheme_is_case_insensitive(scheme: str) -> None:
    assert TABLE.identify(f"{scheme} {NEXT}") == "next"


def test_surrounding_spaces_around_the_credentials_are_ignored() -> None:
    assert TABLE.identify(f"Bearer   {CURRENT}  ") == "current"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        f"Bearer {CURRENT}x",
        f"Bearer {CURRENT[:-1]}",
        f"Bearer {CURRENT.upper()}",
        f"Bearer {CURRENT} {NEXT}",
        f"Basic {CURRENT}",
        f"Token {CURRENT}",
        CURRENT,
        f"Bearer{CURRENT}",
        "Bearer wrong-token",
    ],
)
def test_wrong_missing_or_non_bearer_credentials_are_refused(authorization: str | None) -> None:
    assert TABLE.identify(authorization) is None


@pytest.mark.parametrize("authorization", [None, "", "Bearer anything", "Basic x"])
def test_anonymous_when_explicitly_allowed_and_no_token_is_configured(
    authorization: str | None,
) -> None:
    assert TokenTable((), allow_anonymous=True).identify(authorization) == ANONYMOUS


@pytest.mark.parametrize("authorization", [None, "", "Bearer anything"])
def test_no_token_and_anonymous_not_allowed_refuses_everything(
    authorization: str | None,
) -> None:
    assert TokenTable((), allow_anonymous=False).identify(authorization) is None


def test_allow_anonymous_does_not_bypass_configured_tokens() -> None:
    table = TokenTable.from_settings({"current": SecretStr(CURRENT)}, allow_anonymous=True)
    assert table.identify(None) is None
    assert table.identify("Bearer wrong") is None
    assert table.identify(f"Bearer {CURRENT}") == "current"


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [("Bearer abc", b"abc"), ("bearer  abc ", b"abc"), ("Basic abc", None), ("Bearer", None)],
)
def test_bearer_extracts_the_credentials(authorization: str, expected: bytes | None) -> None:
    assert bearer(authorization) == expected


def test_repr_of_token_table_does_not_reveal_tokens() -> None:
    shown = repr(TABLE) + str(TABLE)
    assert CURRENT not in shown
    assert NEXT not in shown

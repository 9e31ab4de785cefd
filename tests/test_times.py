"""Times on the wire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from core import times


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05Z"),
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02T03:04:05Z"),
        (
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            "2024-01-02T01:04:05Z",
        ),
        (
            datetime(2024, 1, 1, 23, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
            "2024-01-02T04:30:00Z",
        ),
        (datetime(2024, 1, 2, 3, 4, 5, 7, tzinfo=UTC), "2024-01-02T03:04:05.000007Z"),
    ],
)
def test_iso_is_rfc3339_utc_with_z(moment: datetime, expected: str) -> None:
    assert times.iso(moment) == expected


def test_utc_takes_a_naive_time_as_utc_and_converts_an_aware_one() -> None:
    assert times.utc(datetime(2024, 1, 2, 3)) == datetime(2024, 1, 2, 3, tzinfo=UTC)
    plus_two = datetime(2024, 1, 2, 3, tzinfo=timezone(timedelta(hours=2)))
    assert times.utc(plus_two) == datetime(2024, 1, 2, 1, tzinfo=UTC)

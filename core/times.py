"""Times on the wire: UTC, RFC 3339 with a `Z`; a naive time is taken as UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive time is taken to be UTC already."""
    if moment.tzinfo is UTC:
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`."""
    if moment.tzinfo is not UTC:
        moment = utc(moment)
    # `isoformat` of a time in UTC ends with `+00:00`, and has nothing else of the kind.
    return moment.isoformat()[:-6] + "Z"

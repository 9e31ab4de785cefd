"""Times on the wire: UTC, RFC 3339 with a `Z`; a naive time is taken as UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive time is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`."""
    return utc(moment).isoformat().replace("+00:00", "Z")

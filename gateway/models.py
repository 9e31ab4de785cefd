"""Pydantic models of what AiFi sends, as its reference documents them.

Every model keeps unknown fields (`extra="allow"`): AiFi adds metadata over time
and tells receivers to expect it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from core.times import utc

Role = Literal["customer", "employee", "tester", "untracked", "unknown"]

# What the event and its AMQP headers can carry: a signed 64-bit integer.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


def in_utc(moment: datetime) -> datetime:
    """The time in UTC (a naive one taken as UTC); one that has no UTC equivalent is refused."""
    try:
        return utc(moment)
    except OverflowError:
        raise ValueError("time out of range once converted to UTC") from None


UtcTime = Annotated[datetime, AfterValidator(in_utc)]

# An id that also rides in the event's AMQP headers, whose content header must fit
# in one frame (128 KiB by default): AiFi's ids are far shorter.
MAX_ID_CHARS = 1024
Identifier = Annotated[str, Field(max_length=MAX_ID_CHARS)]


def is_blank(text: str | None) -> bool:
    return text is None or not text.strip()


def not_blank(text: str) -> str:
    # An empty id names nothing: every such event of a store would share one event id,
    # and the consumers refuse it.
    if is_blank(text):
        raise ValueError("must not be empty or only whitespace")
    return text


RequiredIdentifier = Annotated[Identifier, Field(min_length=1), AfterValidator(not_blank)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Store(_Open):
    oasisApiStoreId: Int64 | None = None
    aifiUniqueStoreId: str | None = None


class Customer(_Open):
    id: str | Int64 | None = None
    externalId: str | None = None
    role: Role | None = None
    metadata: dict[str, object] | None = None


class Session(_Open):
    sessionId: Identifier | None = None
    sessionToken: Identifier | None = None
    id: Int64 | None = None
    customerId: Int64 | None = None
    groupSize: Int64 | None = None
    visitors: Int64 | None = None
    status: str | None = None
    referencedSessionId: str | None = None
    metadata: dict[str, object] | None = None


class Payment(_Open):
    paymentProvider: str | None = None


class Shopper(_Open):
    shopperId: str | None = None


class Transition(_Open):
    """Body of `entered` and `left`; `session` and `storeExternalId` may be null."""

    sessionId: Identifier | None = None
    sessionToken: Identifier | None = None
    session: Session | None
    customer: Customer
    storeId: Int64
    store: Store
    storeExternalId: str | None
    timeOfOrigin: UtcTime
    timeOfIssue: UtcTime
    payment: Payment
    shopperId: str
    shopper: Shopper

    @model_validator(mode="after")
    def _has_session_id(self) -> Transition:
        if next(self._session_ids(), None) is None:
            raise ValueError(
                "one of session.sessionId, sessionId or sessionToken is required, not empty"
            )
        return self

    def _session_ids(self) -> Iterator[str]:
        """The given session ids in order of preference; a blank one counts as missing."""
        nested = self.session.sessionId if self.session else None
        for candidate in (nested, self.sessionId, self.sessionToken):
            if candidate is not None and not is_blank(candidate):
                yield candidate

    @property
    def session_id(self) -> str:
        """`session.sessionId`, then `sessionId`, then the deprecated `sessionToken`; the
        model refuses a body without one."""
        return next(self._session_ids())


class Tracking(_Open):
    """Body of the tracking webhook; `shopperId` is null when AiFi matched no shopper."""

    storeId: Int64
    store: Store
    storeExternalId: str | None = None  # not documented for tracking, common to other webhooks
    timeOfOrigin: UtcTime
    timeOfIssue: UtcTime
    shopperId: str | None
    uniqueEventId: RequiredIdentifier

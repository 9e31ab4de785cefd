"""Pydantic models of what AiFi sends, as its reference documents them.

Every model keeps unknown fields (`extra="allow"`): AiFi adds metadata over time
and tells receivers to expect it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

Role = Literal["customer", "employee", "tester", "untracked", "unknown"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Store(_Open):
    oasisApiStoreId: int | None = None
    aifiUniqueStoreId: str | None = None


class Customer(_Open):
    id: str | int | None = None
    externalId: str | None = None
    role: Role | None = None
    metadata: dict[str, object] | None = None


class Session(_Open):
    sessionId: str | None = None
    sessionToken: str | None = None
    id: int | None = None
    customerId: int | None = None
    groupSize: int | None = None
    visitors: int | None = None
    status: str | None = None
    referencedSessionId: str | None = None
    metadata: dict[str, object] | None = None


class Payment(_Open):
    paymentProvider: str | None = None


class Shopper(_Open):
    shopperId: str | None = None


class Transition(_Open):
    """Body of `entered` and `left`; `session` and `storeExternalId` may be null."""

    sessionId: str | None = None
    sessionToken: str | None = None
    session: Session | None
    customer: Customer
    storeId: int
    store: Store
    storeExternalId: str | None
    timeOfOrigin: datetime
    timeOfIssue: datetime
    payment: Payment
    shopperId: str
    shopper: Shopper

    @model_validator(mode="after")
    def _has_session_id(self) -> Transition:
        if self.session_id is None:
            raise ValueError("one of session.sessionId, sessionId or sessionToken is required")
        return self

    @property
    def session_id(self) -> str | None:
        """`session.sessionId`, then `sessionId`, then the deprecated `sessionToken`."""
        nested = self.session.sessionId if self.session else None
        return nested or self.sessionId or self.sessionToken


class Tracking(_Open):
    """Body of the tracking webhook; `shopperId` is null when AiFi matched no shopper."""

    storeId: int
    store: Store
    timeOfOrigin: datetime
    timeOfIssue: datetime
    shopperId: str | None
    uniqueEventId: str

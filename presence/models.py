"""The API's answers as pydantic models: what the handlers send and what OpenAPI documents."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Times are the ledger's fixed-width UTC text, e.g. 2024-05-01T12:00:00.000000Z.
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreOccupancy(_Answer):
    """One store: people inside now, its sessions still open, and all its sessions."""

    storeId: int | None = Field(description="null gathers the sessions without a storeId")
    occupancy: int = Field(ge=0, description="people inside (never below 0 per session)")
    openSessions: int = Field(ge=0, description="sessions with more entries than exits")
    sessions: int = Field(ge=0, description="every session the ledger holds for the store")


class Stores(_Answer):
    """Every store the ledger has seen a visit to, by storeId."""

    occupancy: int = Field(ge=0, description="people inside, all stores together")
    stores: list[StoreOccupancy]


class Visit(_Answer):
    """One session: its facts (the greatest value any of its events carried) and counts."""

    sessionId: str
    storeId: int | None
    oasisApiStoreId: int | None
    aifiUniqueStoreId: str | None
    storeExternalId: str | None
    customerId: str | None
    customerRole: str | None
    shopperId: str | None
    groupSize: int | None
    firstEntered: str | None = Field(pattern=TIME_PATTERN, description="earliest entry, UTC")
    lastExited: str | None = Field(pattern=TIME_PATTERN, description="latest exit, UTC")
    personsEntered: int = Field(ge=0)
    personsExited: int = Field(ge=0)
    occupancy: int = Field(ge=0, description="people of the session inside now")


class Tracking(_Answer):
    """One association match (tracking) event, by its uniqueEventId."""

    uniqueEventId: str
    storeId: int | None
    shopperId: str | None
    timeOfOrigin: str | None = Field(pattern=TIME_PATTERN)
    timeOfIssue: str | None = Field(pattern=TIME_PATTERN)
    receivedAt: str | None = Field(pattern=TIME_PATTERN)
    matched: bool = Field(description="true once a shopper is known")


class Health(_Answer):
    status: str


class Readiness(_Answer):
    ready: bool
    ledger: str = Field(description="where the ledger is (never a password)")
    reason: str | None = Field(None, description="why it is not ready")

"""Bearer tokens of the presence API, compared in constant time; tokens are never shown."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr


@dataclass(frozen=True, slots=True)
class Tokens:
    """Named tokens; several may be valid at once so that a token can be rotated."""

    pairs: tuple[tuple[str, bytes], ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"Tokens(names={[name for name, _ in self.pairs]!r})"

    @classmethod
    def from_settings(cls, tokens: Mapping[str, SecretStr]) -> Tokens:
        return cls(tuple((name, s.get_secret_value().encode()) for name, s in tokens.items()))

    def identify(self, authorization: str | None) -> str | None:
        """The name of the token presented, or None to refuse."""
        presented = bearer(authorization)
        if presented is None:
            return None
        found = None
        # Every token is compared, a match or not, so that timing tells neither which
        # token matched nor how many there are.
        for name, token in self.pairs:
            if hmac.compare_digest(presented, token) and found is None:
                found = name
        return found


def bearer(authorization: str | None) -> bytes | None:
    """The credentials of an `Authorization: Bearer ...` header; None for anything else."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip().encode()

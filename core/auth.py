"""Bearer-token authentication against every configured token, in constant time: the
gateway's webhooks and the presence API's reads alike. Tokens are never shown."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class TokenTable:
    """Named tokens; several may be valid at once so a token can be rotated."""

    tokens: tuple[tuple[str, bytes], ...] = field(repr=False)
    allow_anonymous: bool = False

    def __repr__(self) -> str:
        names = [name for name, _ in self.tokens]
        return f"TokenTable(names={names!r}, allow_anonymous={self.allow_anonymous})"

    @classmethod
    def from_settings(
        cls, tokens: Mapping[str, SecretStr], allow_anonymous: bool = False
    ) -> TokenTable:
        pairs = tuple((name, s.get_secret_value().encode()) for name, s in tokens.items())
        return cls(pairs, allow_anonymous)

    def identify(self, authorization: str | None) -> str | None:
        """The name of the token presented, `anonymous` when allowed, or None to refuse."""
        if not self.tokens and self.allow_anonymous:
            return ANONYMOUS
        presented = bearer(authorization)
        if presented is None:
            return None
        found = None
        # Compare against every token, without stopping at a match, so timing
        # reveals neither which token matched nor how many are configured.
        for name, token in self.tokens:
            if hmac.compare_digest(presented, token) and found is None:
                found = name
        return found


def bearer(authorization: str | None) -> bytes | None:
    """The credentials of an `Authorization: Bearer ...` header; None for anything else."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    token = credentials.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token.encode()

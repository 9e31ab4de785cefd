"""An optional request rate limit per token name: a token bucket each."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Bucket:
    tokens: float
    updated_s: float


@dataclass(slots=True)
class RateLimiter:
    """`rate_per_s` requests a second on average, bursts up to `burst`, per token name."""

    rate_per_s: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, Bucket] = field(default_factory=dict)

    def retry_after_s(self, name: str) -> int:
        """0 if a request of `name` may pass now (and count it), else whole seconds to wait."""
        now = self.clock()
        bucket = self._buckets.setdefault(name, Bucket(float(self.burst), now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated_s) * self.rate_per_s)
        bucket.updated_s = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0
        return max(1, math.ceil((1 - bucket.tokens) / self.rate_per_s))

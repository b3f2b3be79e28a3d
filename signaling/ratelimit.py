"""Token-bucket rate limits for joins and token-bearing API calls (close 4429 / HTTP 429).

Buckets are per key (a client address or a token subject), refill continuously, and are
forgotten once full again, so memory stays bounded by the number of active abusers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rate:
    burst: float  # requests allowed at once
    per_second: float  # refill

    @classmethod
    def parse(cls, text: str) -> Rate:
        """'BURST:PER_SECOND', e.g. '120:2'."""
        burst, _, refill = text.partition(":")
        rate = cls(float(burst), float(refill))
        if rate.burst < 1 or rate.per_second <= 0:
            raise ValueError("burst must be >= 1 and the refill rate positive")
        return rate


@dataclass
class RateLimiter:
    rate: Rate
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, at)
    max_keys: int = 100_000

    def check(self, key: str) -> float:
        """Take one token for `key`; return 0 if allowed, else the seconds to wait."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.rate.burst, now))
        tokens = min(self.rate.burst, tokens + (now - at) * self.rate.per_second)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate.per_second
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > self.max_keys:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate.per_second >= self.rate.burst:
                del self._buckets[key]


@dataclass
class Limits:
    """The node's limiters: joins per client address and per identity, API calls per identity."""

    join_per_ip: RateLimiter
    join_per_identity: RateLimiter
    api_per_identity: RateLimiter

    @classmethod
    def of(cls, join_per_ip: Rate, join_per_identity: Rate, api_per_identity: Rate) -> Limits:
        return cls(RateLimiter(join_per_ip), RateLimiter(join_per_identity), RateLimiter(api_per_identity))

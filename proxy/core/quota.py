"""Per-consumer quota math: a GCRA token bucket, with `now` passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QuotaCheck:
    allowed: bool
    remaining: int
    retry_after: float  # seconds until one more request would be allowed
    reset_after: float  # seconds until the bucket is full again


class QuotaBucket:
    """GCRA: `rate` per second, up to `burst` at once. Unlike PluralKit's, a refused
    request is not charged, and `remaining` is exact."""

    __slots__ = ("_tat", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tat = 0.0

    @property
    def emission(self) -> float:
        return 1.0 / self.rate

    def peek(self, now: float) -> QuotaCheck:
        tat = max(self._tat, now)
        allow_at = tat + self.emission - self.burst * self.emission
        if now < allow_at - 1e-9:
            return QuotaCheck(False, 0, allow_at - now, tat - now)
        remaining = math.floor((now - allow_at) / self.emission + 1e-9) + 1
        return QuotaCheck(True, min(self.burst, remaining), 0.0, tat - now)

    def take(self, now: float) -> QuotaCheck:
        check = self.peek(now)
        if check.allowed:
            self._tat = max(self._tat, now) + self.emission
            after = self.peek(now)
            return QuotaCheck(True, after.remaining, after.retry_after, after.reset_after)
        return check

"""Budget math: scopes, pacing intervals, upstream rate-limit signals, wait estimates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.core.routes import template_matches

# A value below 10^11 cannot be UNIX milliseconds of any date this proxy will see
# (10^11 ms is 1973); PluralKit's docs say milliseconds, its server sends seconds.
_MS_THRESHOLD = 10**11
# Never believe a pause longer than this from upstream (a garbled header must not stall us).
_MAX_PAUSE_MS = 5 * 60 * 1000


@dataclass(frozen=True, slots=True)
class ScopeSpec:
    """One upstream bucket: which requests it covers and how fast it may be spent."""

    name: str
    rate: float  # requests per second
    burst: int = 1
    methods: tuple[str, ...] = ("*",)
    routes: tuple[str, ...] = ("*",)

    def covers(self, method: str, template: str) -> bool:
        method = "GET" if method == "HEAD" else method
        method_ok = "*" in self.methods or method in self.methods
        return method_ok and any(template_matches(p, template) for p in self.routes)

    def interval(self, margin: float) -> float:
        """Seconds between two sends: strict spacing plus the safety margin."""
        return (1.0 / self.rate) * (1.0 + margin)

    @property
    def limit(self) -> int:
        return max(1, math.floor(self.rate))


SEED_PROFILE: tuple[ScopeSpec, ...] = (ScopeSpec("all", 2.0, 1),)
# Today's PluralKit (crates/api/src/middleware/ratelimit.rs): first match wins.
PLURALKIT_PROFILE: tuple[ScopeSpec, ...] = (
    ScopeSpec("message", 10.0, 1, ("GET",), ("/v2/messages/{id}",)),
    ScopeSpec("generic_get", 10.0, 1, ("GET",), ("*",)),
    ScopeSpec("generic_update", 3.0, 1, ("POST", "PATCH", "PUT", "DELETE"), ("*",)),
)
PROFILES = {"seed": SEED_PROFILE, "pluralkit": PLURALKIT_PROFILE}


def scope_for(method: str, template: str, scopes: Sequence[ScopeSpec]) -> ScopeSpec:
    """The first scope that covers a request; the last scope catches the rest."""
    for scope in scopes:
        if scope.covers(method, template):
            return scope
    return scopes[-1]


def reset_to_seconds(value: str) -> float | None:
    """Read an `X-RateLimit-Reset` as UNIX seconds, whether it was sent in s or ms."""
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number / 1000.0 if number >= _MS_THRESHOLD else number


def pause_after_429(retry_after_ms: int | None, interval: float) -> float:
    """Seconds to pause a scope after an upstream 429.

    PluralKit's limiter truncates `remaining`: a retry that lands exactly at `retry_after`
    is rejected again, so one more interval is added. A 429 with `retry_after: 0` is the
    boundary case, rejected *and charged*: the bucket moved one emission further out, so
    the next request must wait up to two intervals or it is charged again, in a cascade.
    """
    retry_after = min(max(0, retry_after_ms or 0), _MAX_PAUSE_MS) / 1000.0
    if retry_after <= 0:
        return 2 * interval
    return retry_after + interval


def estimated_wait(next_slot_in: float, ahead: int, interval: float) -> float:
    """Seconds until a request with `ahead` requests before it would be sent."""
    return max(0.0, next_slot_in) + ahead * interval


def remaining_capacity(wait_for_new: float, max_wait: float, interval: float, limit: int) -> int:
    """How many more requests a consumer could queue now and still be sent within max_wait."""
    if wait_for_new > max_wait:
        return 0
    return min(limit, 1 + math.floor((max_wait - wait_for_new) / interval))


def retry_after_for(wait: float, max_wait: float, next_slot_in: float) -> float:
    """Honest seconds until a refused request would fit within its own max wait."""
    return max(next_slot_in, wait - max_wait, 0.0)

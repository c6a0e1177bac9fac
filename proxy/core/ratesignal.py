"""What an upstream answer says about its rate-limit bucket, read defensively.

PluralKit sends `X-RateLimit-Limit/-Remaining/-Reset/-Scope` on rate-checked answers and,
on a 429, a body with `retry_after` (ms) and `scope`. Reset is documented in milliseconds
and sent in seconds. A value that is not a number, negative or absurd is ignored (and
named, so that the adapter can log it once): a garbled header must never stop pacing nor
speed it up."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.core.invalidation import parse_json

# A value below 10^11 cannot be UNIX milliseconds of any date this proxy will see
# (10^11 ms is 1973); PluralKit's docs say milliseconds, its server sends seconds.
_MS_THRESHOLD = 10**11
# Never believe a pause longer than this from upstream (a garbled value must not stall us).
MAX_RETRY_AFTER_MS = 5 * 60 * 1000
_MAX_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class RateSignal:
    status: int
    limit: int | None = None
    remaining: int | None = None
    scope: str | None = None
    retry_after_ms: int | None = None  # 429 only: from the body, else from Reset
    problems: tuple[str, ...] = ()  # "<header>:<kind>" for every value ignored

    @property
    def throttled(self) -> bool:
        return self.status == 429

    @property
    def own_system(self) -> bool:
        """Keyed by the token's system, not by IP: it says nothing of the shared bucket."""
        return (self.scope or "").startswith("own_system")


def _integer(value: str | None, name: str, ceiling: int, problems: list[str]) -> int | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        problems.append(f"{name}:non_numeric")
        return None
    if not math.isfinite(number) or number > ceiling:
        problems.append(f"{name}:enormous")
        return None
    if number < 0:
        problems.append(f"{name}:negative")
        return None
    return int(number)


def reset_to_seconds(value: str) -> float | None:
    """Read an `X-RateLimit-Reset` as UNIX seconds, whether it was sent in s or ms."""
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number / 1000.0 if number >= _MS_THRESHOLD else number


def _retry_after_ms(
    body: bytes, reset: str | None, now_wall: float, problems: list[str]
) -> int | None:
    data = parse_json(body)
    value = data.get("retry_after") if isinstance(data, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= value <= MAX_RETRY_AFTER_MS:
            return int(value)
        problems.append("retry_after:" + ("negative" if value < 0 else "enormous"))
    elif value is not None:
        problems.append("retry_after:non_numeric")
    # No PluralKit body (an edge in between?): fall back on X-RateLimit-Reset.
    seconds = reset_to_seconds(reset) if reset is not None else None
    if seconds is None:
        return None
    ms = int((seconds - now_wall) * 1000)
    if ms > MAX_RETRY_AFTER_MS:
        problems.append("x-ratelimit-reset:enormous")
        return None
    return max(0, ms)


def read_signal(
    status: int, headers: Iterable[tuple[str, str]], body: bytes, now_wall: float
) -> RateSignal:
    found = {name.lower(): value for name, value in headers}
    problems: list[str] = []
    limit = _integer(found.get("x-ratelimit-limit"), "x-ratelimit-limit", _MAX_LIMIT, problems)
    remaining = _integer(
        found.get("x-ratelimit-remaining"), "x-ratelimit-remaining", _MAX_LIMIT, problems
    )
    if limit == 0:
        problems.append("x-ratelimit-limit:zero")
        limit = None
    data = parse_json(body) if status == 429 else None
    scope = found.get("x-ratelimit-scope")
    if scope is None and isinstance(data, dict) and isinstance(data.get("scope"), str):
        scope = data["scope"]
    retry = None
    if status == 429:
        retry = _retry_after_ms(body, found.get("x-ratelimit-reset"), now_wall, problems)
    return RateSignal(status, limit, remaining, scope, retry, tuple(problems))


def retry_after_header(retry_after_ms: int) -> str:
    """`Retry-After` in whole seconds, rounded up, never 0 (clients would spin)."""
    return str(max(1, math.ceil(retry_after_ms / 1000)))

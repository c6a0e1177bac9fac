"""Time, read in one place: monotonic for pacing and deadlines, wall for ages and headers.

Every component takes a `Clock` at construction; only `SystemClock` reads the system's
clocks, so that tests drive time instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (pacing, deadlines, durations)."""

    def wall(self) -> float:
        """UNIX seconds (cache ages, which outlive the process; X-RateLimit-Reset)."""

    async def sleep(self, seconds: float) -> None:
        """Let `seconds` of this clock pass."""


class SystemClock:
    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def wall_ms_in(clock: Clock, seconds_from_now: float) -> int:
    """UNIX milliseconds `seconds_from_now` from now (X-RateLimit-Reset's unit)."""
    return int((clock.wall() + max(0.0, seconds_from_now)) * 1000)

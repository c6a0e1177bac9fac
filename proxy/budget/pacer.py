"""Pacing: *when* the next request of a scope may leave, behind a small Protocol.

`LocalPacer` paces one process with aiolimiter. A backend shared by several replicas
(a GCRA in Redis keyed by egress IP and scope) would implement the same Protocol."""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiolimiter import AsyncLimiter

from proxy.core.budget import ScopeSpec

# Timers may fire up to the clock's resolution early; below this a wait is already over
# (and a loop waiting for less would spin). The pacing margin is far larger.
_EPSILON = 0.0005


class Pacer(Protocol):
    interval: float

    async def wait_turn(self) -> None:
        """Return when one request may be granted (spaced, and not paused)."""

    def granted(self) -> None:
        """A request was granted its slot."""

    def mark_sent(self) -> None:
        """The granted request is being written to upstream now."""

    def pause(self, seconds: float) -> None:
        """Upstream pushed back: grant nothing for `seconds`."""

    def paused_for(self) -> float: ...

    def next_slot_in(self) -> float: ...


class LocalPacer:
    """Strict spacing of `1/rate * (1 + margin)`, by aiolimiter, anchored on real sends."""

    __slots__ = (
        "_last_grant",
        "_last_sent",
        "_limiter",
        "_loop",
        "_paused_until",
        "burst",
        "interval",
    )

    def __init__(self, spec: ScopeSpec, margin: float) -> None:
        self.interval = spec.interval(margin)
        self.burst = spec.burst
        self._loop = asyncio.get_running_loop()
        # AsyncLimiter(1, interval) spaces strictly; AsyncLimiter(2, 1) would let three
        # through in one second. A burst is only ever configured deliberately.
        self._limiter = AsyncLimiter(spec.burst, spec.burst * self.interval)
        self._paused_until = 0.0
        self._last_grant = -1e9
        self._last_sent = -1e9

    def _now(self) -> float:
        return self._loop.time()

    async def wait_turn(self) -> None:
        while True:
            if self.paused_for() > _EPSILON:
                await asyncio.sleep(self.paused_for())
                continue
            await self._limiter.acquire()
            # Space by when requests were really sent, not granted: a request that left the
            # event loop late must not leave the next one arriving early upstream.
            while (
                self.burst == 1
                and (gap := self._last_sent + self.interval - self._now()) > _EPSILON
            ):
                await asyncio.sleep(gap)
            if self.paused_for() <= _EPSILON:
                return
            # a 429 arrived while waiting: the pause wins

    def granted(self) -> None:
        self._last_grant = self._now()

    def mark_sent(self) -> None:
        self._last_sent = max(self._last_sent, self._now())

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._now() + seconds)

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._now())

    def next_slot_in(self) -> float:
        now = self._now()
        last = max(self._last_grant, self._last_sent)
        return max(last + self.interval, self._paused_until, now) - now

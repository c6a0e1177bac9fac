"""The scheduler adapter on its own (real loop, a fast scope, bounded time)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.budget.pacer import local_pacers
from proxy.budget.scheduler import ScopeScheduler, Ticket
from proxy.clock import SystemClock
from proxy.core.budget import ScopeSpec
from proxy.core.fairqueue import Priority


async def test_utilisation_counts_every_grant_of_the_last_minute() -> None:
    """Utilisation is grants in the last minute times the interval, however many grants."""
    clock = SystemClock()
    spec = ScopeSpec("all", 400.0, burst=200)
    scope = ScopeScheduler(spec, local_pacers(0.0, 0.0, clock)(spec), clock, 10_000)
    scope.start()
    try:
        deadline = scope.now() + 60
        tickets = [Ticket("c", 1.0, Priority.NORMAL, deadline) for _ in range(600)]

        async def send(ticket: Ticket) -> None:
            await scope.acquire(ticket, 60.0)
            scope.mark_sent()  # as the forwarder does when the request's headers are written

        await asyncio.gather(*(send(t) for t in tickets))
        assert scope.sent == 600
        assert scope.utilisation() == pytest.approx(600 * (1 / 400) / 60, rel=1e-6)
    finally:
        await scope.stop()

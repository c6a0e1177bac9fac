"""Coalescing: identical cacheable misses share one upstream call, even while it queues."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from proxy.budget.forward import Place

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Flight(Generic[T]):
    """One shared upstream call and who waits for it."""

    task: asyncio.Task[T] = field(init=False)
    waiters: int = 0
    detached: bool = False  # a background refresh: nobody waits, nothing cancels it
    sent: bool = False  # once sent it runs to the end, so that its answer is stored
    joined: Callable[[Place], None] | None = None  # a later waiter's place may lift the call


Make = Callable[[Flight[T]], Awaitable[T]]


class Coalescer(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def start(self, key: str, make: Make[T], detached: bool = False) -> tuple[Flight[T], bool]:
        """The flight for `key`, started if there is none; True if it already existed."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight, True
        flight = Flight(detached=detached)

        async def run() -> T:
            try:
                return await make(flight)
            finally:
                if self._flights.get(key) is flight:
                    del self._flights[key]

        flight.task = asyncio.create_task(run(), name=f"fetch {key}")
        self._flights[key] = flight
        return flight, False

    async def join(self, key: str, make: Make[T], place: Place, wait: float) -> tuple[T, bool]:
        """Wait for the shared call (starting it if needed); True if another started it.

        A waiter waits at most `wait` seconds for the call to be *sent*; once it is sent,
        it waits for the answer (bounded by the upstream timeout). The shared task is
        shielded from any one waiter's cancellation; when the last waiter leaves before the
        call was sent, it is cancelled so that no slot is spent.
        """
        flight, existing = self.start(key, make)
        if existing and flight.joined is not None:
            flight.joined(place)
        flight.waiters += 1
        try:
            try:
                result = await asyncio.wait_for(asyncio.shield(flight.task), wait)
            except TimeoutError:
                if not flight.sent:
                    raise
                result = await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not (flight.detached or flight.sent or flight.task.done()):
                flight.task.cancel()
        return result, existing

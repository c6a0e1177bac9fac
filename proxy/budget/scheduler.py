"""Scheduler: per scope, *who* goes next (the fair queue) in front of *when* (the pacer)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.budget.pacer import Pacer, PacerFactory
from proxy.clock import Clock, wall_ms_in
from proxy.core import budget
from proxy.core.budget import ScopeSpec
from proxy.core.errors import Throttled, ThrottleReason
from proxy.core.fairqueue import FairQueue, Priority

if TYPE_CHECKING:
    from proxy.budget.forward import Place

_UTILISATION_WINDOW = 60.0
# How long a request may take to be handed a slot that was free when it arrived.
_FREE_SLOT_GRACE = 0.05


@dataclass(eq=False, slots=True)
class Ticket:
    """One request (or one shared flight) waiting for an upstream slot."""

    consumer: str
    weight: float
    priority: Priority
    deadline: float  # monotonic
    queued_at: float = 0.0  # monotonic, set when it joins the queue
    granted: asyncio.Future[float] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(frozen=True, slots=True)
class ScopeView:
    """What a consumer should be told about a scope right now (X-RateLimit-*)."""

    scope: str
    limit: int
    remaining: int
    reset_ms: int


class ScopeScheduler:
    """Grants upstream slots of one scope when its pacer allows, fairly among consumers."""

    def __init__(self, spec: ScopeSpec, pacer: Pacer, clock: Clock, max_queue: int) -> None:
        self.spec = spec
        self.max_queue = max_queue
        self.pacer = pacer
        self._clock = clock
        self._queue: FairQueue[Ticket] = FairQueue()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self._grants: deque[float] = deque()  # grant times within the last minute

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"scheduler-{self.spec.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for ticket in list(self._queue):
            if not ticket.granted.done():
                ticket.granted.cancel()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def fail_all(self, error: BaseException) -> int:
        """Answer every queued request with `error` (the drain window ended)."""
        failed = 0
        for ticket in list(self._queue):
            self._queue.remove(ticket.consumer, ticket.priority, ticket)
            if not ticket.granted.done():
                ticket.granted.set_exception(error)
                failed += 1
        return failed

    # -- estimates -----------------------------------------------------------------
    def now(self) -> float:
        return self._clock.monotonic()

    @property
    def interval(self) -> float:
        return self.pacer.interval

    def next_slot_in(self) -> float:
        return self.pacer.wait_for(0)

    def wait_for_new(self, consumer: str, weight: float) -> float:
        return self.pacer.wait_for(self._queue.ahead_of_new(consumer, weight))

    def depth(self, consumer: str | None = None) -> int:
        return len(self._queue) if consumer is None else self._queue.depth(consumer)

    def depths(self) -> dict[str, int]:
        return self._queue.depths()

    def oldest_waiting(self) -> dict[str, float]:
        """Per consumer, how long its oldest queued request has waited (seconds)."""
        now = self.now()
        oldest: dict[str, float] = {}
        for consumer, ticket in self._queue.heads():
            oldest[consumer] = max(oldest.get(consumer, 0.0), now - ticket.queued_at)
        return oldest

    @property
    def paused_for(self) -> float:
        return self.pacer.paused_for()

    def view(self, consumer: str, weight: float, max_wait: float) -> ScopeView:
        """How many more requests this consumer could queue now and still be sent within
        its max wait (at most the limit), and when that becomes more than 0."""
        ahead = self._queue.ahead_of_new(consumer, weight)
        wait = self.pacer.wait_for(ahead)
        limit = self.spec.limit
        remaining = 0
        if wait <= max_wait:
            later = self.pacer.wait_for(ahead + limit - 1)
            per_slot = max((later - wait) / max(1, limit - 1), 1e-9)
            remaining = min(limit, 1 + math.floor((max_wait - wait) / per_slot + 1e-9))
        until = wait if remaining > 0 else wait - max_wait + self.interval
        return ScopeView(self.spec.name, limit, remaining, wall_ms_in(self._clock, until))

    def throttled(self, wait: float, max_wait: float, reason: ThrottleReason) -> Throttled:
        retry = budget.retry_after_for(wait, max_wait, self.next_slot_in())
        reset = wall_ms_in(self._clock, retry)
        return Throttled(self.spec.name, int(retry * 1000) + 1, self.spec.limit, reset, reason)

    # -- the flow ------------------------------------------------------------------
    def admissible(self, consumer: str, weight: float, deadline: float) -> float:
        """The deadline a new request really has, or Throttled at once if it cannot be met
        (then nothing is queued and no upstream slot is spent for it). A free slot is
        granted on the scheduler's next turn of the loop: a request that may not wait at
        all (max wait 0) still gets it."""
        wait = self.wait_for_new(consumer, weight)
        if wait == 0.0:
            return max(deadline, self.now() + _FREE_SLOT_GRACE)
        if self.now() + wait > deadline:
            raise self.throttled(wait, max(0.0, deadline - self.now()), ThrottleReason.DEADLINE)
        return deadline

    async def acquire(self, ticket: Ticket, max_wait: float, front: bool = False) -> float:
        """Wait for a slot; raise Throttled if the deadline cannot be or was not met."""
        if not front and len(self._queue) >= self.max_queue:
            wait = self.wait_for_new(ticket.consumer, ticket.weight)
            raise self.throttled(wait, max_wait, ThrottleReason.QUEUE_FULL)
        try:
            ticket.deadline = self.admissible(ticket.consumer, ticket.weight, ticket.deadline)
        except Throttled as refused:
            wait = self.wait_for_new(ticket.consumer, ticket.weight)
            raise self.throttled(wait, max_wait, ThrottleReason.DEADLINE) from refused
        ticket.queued_at = self.now()
        self._queue.push(ticket.consumer, ticket.weight, ticket.priority, ticket, front)
        self._wakeup.set()
        try:
            return await self._granted(ticket, max_wait)
        except asyncio.CancelledError:
            if ticket.granted.done() and not ticket.granted.cancelled():
                self.pacer.give_back()  # granted, then cancelled before it could be sent
            self._withdraw(ticket)
            raise

    async def _granted(self, ticket: Ticket, max_wait: float) -> float:
        while True:
            try:
                return await asyncio.wait_for(
                    asyncio.shield(ticket.granted), max(0.0, ticket.deadline - self.now())
                )
            except TimeoutError:
                if ticket.granted.done() and not ticket.granted.cancelled():
                    return ticket.granted.result()  # granted in the same instant: use it
                if ticket.deadline > self.now():
                    continue  # a coalesced waiter lengthened the deadline
                self._withdraw(ticket)
                wait = self.wait_for_new(ticket.consumer, ticket.weight)
                raise self.throttled(wait, max_wait, ThrottleReason.DEADLINE) from None

    def sooner(self, joiner: Place, current: Place) -> bool:
        """Whether a request at `joiner`'s place would be served before one at `current`'s
        (estimated: a queued request is at worst at the end of its consumer's lane)."""
        if joiner.consumer == current.consumer:
            return joiner.priority.rank < current.priority.rank
        mine = self._queue.ahead_of_new(joiner.consumer, joiner.weight)
        theirs = self._queue.ahead_of_new(current.consumer, current.weight)
        return mine < theirs or (mine == theirs and joiner.priority.rank < current.priority.rank)

    def reposition(self, ticket: Ticket, consumer: str, weight: float, priority: Priority) -> None:
        """Move a queued ticket to a better place (a waiter with a better one joined it)."""
        if ticket.granted.done() or not self._queue.remove(
            ticket.consumer, ticket.priority, ticket
        ):
            return
        ticket.consumer, ticket.weight, ticket.priority = consumer, weight, priority
        self._queue.push(consumer, weight, priority, ticket)

    def _withdraw(self, ticket: Ticket) -> None:
        """Take a ticket out of the queue: its slot goes to the next request."""
        self._queue.remove(ticket.consumer, ticket.priority, ticket)
        if not ticket.granted.done():
            ticket.granted.cancel()

    def mark_sent(self) -> None:
        """Called when a granted request is written to upstream (pacing anchors on it)."""
        self.pacer.mark_sent()

    async def _run(self) -> None:
        while True:
            if not len(self._queue):
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait = await self.pacer.reserve()
            if wait > 0.0:
                await self._clock.sleep(wait)
            elif not self._grant_next():
                self.pacer.give_back()

    def _grant_next(self) -> bool:
        while (popped := self._queue.pop()) is not None:
            ticket = popped[1]
            if ticket.granted.done():
                continue
            now = self.now()
            self.sent += 1
            self._grants.append(now)
            while self._grants[0] < now - _UTILISATION_WINDOW:
                self._grants.popleft()
            ticket.granted.set_result(now)
            return True
        return False

    def utilisation(self) -> float:
        """Share of the scope's capacity used over the last minute."""
        since = self.now() - _UTILISATION_WINDOW
        used = sum(1 for t in self._grants if t >= since)
        return min(1.0, used * self.interval / _UTILISATION_WINDOW)


class Scheduler:
    """All scopes, started and stopped together inside the running loop."""

    def __init__(
        self, scopes: tuple[ScopeSpec, ...], pacers: PacerFactory, clock: Clock, max_queue: int
    ) -> None:
        self.specs = scopes
        self.scopes = {s.name: ScopeScheduler(s, pacers(s), clock, max_queue) for s in scopes}
        self._by_route: dict[tuple[str, str], ScopeScheduler] = {}  # a few dozen at most

    def for_request(self, method: str, template: str) -> ScopeScheduler:
        found = self._by_route.get((method, template))
        if found is None:
            found = self.scopes[budget.scope_for(method, template, self.specs).name]
            self._by_route[(method, template)] = found
        return found

    def start(self) -> None:
        for scope in self.scopes.values():
            scope.start()

    async def stop(self) -> None:
        for scope in self.scopes.values():
            await scope.stop()

    @property
    def running(self) -> bool:
        return all(scope.running for scope in self.scopes.values())

    def queued(self) -> int:
        return sum(scope.depth() for scope in self.scopes.values())

    def fail_all(self, error: BaseException) -> int:
        return sum(scope.fail_all(error) for scope in self.scopes.values())

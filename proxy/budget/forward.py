"""Forwarding: wait for a slot, send upstream, teach the pacer from the answer, retry 429s."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.budget.scheduler import ScopeScheduler, Ticket
from proxy.clock import Clock
from proxy.core.errors import UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from proxy.core.fairqueue import Priority
from proxy.core.ratesignal import RateSignal, read_signal
from proxy.ops.logs import get_logger
from proxy.ops.metrics import Metrics
from proxy.upstream.client import Upstream, UpstreamResponse

_log = get_logger()


@dataclass(slots=True)
class Place:
    """Where a request waits for an upstream slot: whose share, which lane, until when."""

    consumer: str
    weight: float
    priority: Priority
    max_wait: float
    deadline: float  # monotonic


@dataclass(slots=True)
class Outbound:
    """One request as it will be sent upstream, and where it waits for its slot."""

    method: str
    path_and_query: str
    headers: list[tuple[str, str]]
    body: bytes
    place: Place
    queue_wait: float = 0.0
    upstream_time: float = 0.0
    attempts: int = 0
    ticket: Ticket | None = field(default=None, repr=False)

    def lift(self, scope: ScopeScheduler, joiner: Place) -> None:
        """Priority inheritance: a coalesced waiter keeps the shared call queued as long as
        it may wait, and moves it to its own place in the queue when that would be served
        sooner (its consumer's share is then the one charged)."""
        place = self.place
        if joiner.deadline > place.deadline:
            place.deadline = joiner.deadline
            if self.ticket is not None:
                self.ticket.deadline = joiner.deadline
        if not scope.sooner(joiner, place):
            return
        place.consumer, place.weight, place.priority = (
            joiner.consumer,
            joiner.weight,
            joiner.priority,
        )
        if self.ticket is not None:
            scope.reposition(self.ticket, joiner.consumer, joiner.weight, joiner.priority)


class Forwarder:
    def __init__(self, upstream: Upstream, metrics: Metrics, clock: Clock) -> None:
        self._upstream = upstream
        self._metrics = metrics
        self._clock = clock
        self.in_flight = 0

    async def send(
        self, scope: ScopeScheduler, out: Outbound, on_sent: Callable[[], None] | None = None
    ) -> UpstreamResponse:
        """Send once a slot is granted; after an upstream 429, retry at the front of the
        queue while the deadline allows (PluralKit refused it before doing anything, so
        even a write is safe to repeat), else pass the 429 back."""
        while True:
            await self._wait_for_slot(scope, out)
            if on_sent is not None:
                on_sent()
            response, signal = await self._send_once(scope, out)
            if not signal.throttled:
                return response
            self._metrics.upstream_429.labels(scope.spec.name).inc()
            _log.warning(
                "upstream.throttled",
                scope=scope.spec.name,
                upstream_scope=signal.scope,
                retry_after_ms=signal.retry_after_ms,
                pause_ms=int(scope.next_slot_in() * 1000),
            )
            if scope.now() + scope.next_slot_in() >= out.place.deadline:
                return response

    async def _wait_for_slot(self, scope: ScopeScheduler, out: Outbound) -> None:
        place = out.place
        out.ticket = Ticket(place.consumer, place.weight, place.priority, place.deadline)
        queued_at = scope.now()
        gauge = self._metrics.queue_depth.labels(scope.spec.name)
        gauge.inc()
        try:
            await scope.acquire(out.ticket, place.max_wait, front=out.attempts > 0)
        finally:
            gauge.dec()
        waited = scope.now() - queued_at
        out.queue_wait += waited
        self._metrics.queue_wait.labels(scope.spec.name).observe(waited)
        out.attempts += 1

    async def _send_once(
        self, scope: ScopeScheduler, out: Outbound
    ) -> tuple[UpstreamResponse, RateSignal]:
        self.in_flight += 1
        sent_at = scope.now()
        marked = False

        def headers_written() -> None:
            # Pacing counts the request sent now, and upstream's clock reads no earlier than
            # this: what its answer proves starts here.
            nonlocal sent_at, marked
            if not marked:
                marked = True
                scope.mark_sent()
                sent_at = scope.now()

        try:
            response = await self._upstream.send(
                out.method, out.path_and_query, out.headers, out.body, headers_written
            )
        except (UpstreamUnavailable, UpstreamTimeout) as error:
            self._metrics.upstream_requests.labels(scope.spec.name, _failure(error)).inc()
            raise
        finally:
            self.in_flight -= 1
            headers_written()  # failed before its headers were written: count it sent now
        out.upstream_time += response.elapsed
        self._metrics.upstream_requests.labels(scope.spec.name, str(response.status)).inc()
        signal = read_signal(response.status, response.headers, response.body, self._clock.wall())
        await scope.pacer.learn(signal, sent_at, scope.now())
        return response, signal


def _failure(error: UpstreamUnavailable | UpstreamTimeout) -> str:
    """The `status` label of an upstream request that got no usable answer."""
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    return "too_large" if isinstance(error, UpstreamTooLarge) else "unreachable"

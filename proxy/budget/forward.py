"""Forwarding: wait for a slot, send upstream, learn from its rate-limit answers, retry 429s."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.budget.scheduler import ScopeScheduler, Ticket
from proxy.core import budget
from proxy.core.errors import UpstreamTimeout, UpstreamUnavailable
from proxy.core.invalidation import parse_json
from proxy.ops.logs import get_logger
from proxy.ops.metrics import Metrics
from proxy.upstream.client import Upstream, UpstreamResponse


@dataclass(slots=True)
class Outbound:
    """One request as it will be sent upstream, and how long it may wait for a slot."""

    method: str
    path_and_query: str
    headers: list[tuple[str, str]]
    body: bytes
    consumer: str
    weight: float
    priority: str
    max_wait: float
    deadline: float
    queue_wait: float = 0.0
    upstream_time: float = 0.0
    attempts: int = 0
    ticket: Ticket | None = field(default=None, repr=False)

    def extend(self, deadline: float) -> None:
        """A coalesced waiter with a later deadline keeps the shared call queued longer."""
        if deadline > self.deadline:
            self.deadline = deadline
            if self.ticket is not None:
                self.ticket.deadline = deadline


class Forwarder:
    def __init__(self, upstream: Upstream, metrics: Metrics) -> None:
        self._upstream = upstream
        self._metrics = metrics
        self._log = get_logger()
        self.in_flight = 0

    async def send(
        self, scope: ScopeScheduler, out: Outbound, on_sent: Callable[[], None] | None = None
    ) -> UpstreamResponse:
        """Send once a slot is granted; after an upstream 429, pause the scope and retry
        at the front of the queue while the deadline allows, else pass the 429 back."""
        while True:
            out.ticket = Ticket(out.consumer, out.weight, out.priority, out.deadline)
            queued_at = scope.now()
            self._metrics.queue_depth.labels(scope.spec.name).inc()
            try:
                await scope.acquire(out.ticket, out.max_wait, front=out.attempts > 0)
            finally:
                self._metrics.queue_depth.labels(scope.spec.name).dec()
            waited = scope.now() - queued_at
            out.queue_wait += waited
            self._metrics.queue_wait.labels(scope.spec.name).observe(waited)
            out.attempts += 1
            if on_sent is not None:
                on_sent()
            self.in_flight += 1
            scope.mark_sent()
            try:
                response = await self._upstream.send(
                    out.method, out.path_and_query, out.headers, out.body, scope.mark_sent
                )
            except (UpstreamUnavailable, UpstreamTimeout) as error:
                failure = "timeout" if isinstance(error, UpstreamTimeout) else "unreachable"
                self._metrics.upstream_requests.labels(scope.spec.name, failure).inc()
                raise
            finally:
                self.in_flight -= 1
            out.upstream_time += response.elapsed
            self._metrics.upstream_requests.labels(scope.spec.name, str(response.status)).inc()
            if response.status != 429:
                self._learn(scope, response)
                return response
            pause = self._on_upstream_429(scope, response)
            if scope.now() + pause >= out.deadline:
                return response

    def _on_upstream_429(self, scope: ScopeScheduler, response: UpstreamResponse) -> float:
        body = parse_json(response.body)
        retry_after = body.get("retry_after") if isinstance(body, dict) else None
        if not isinstance(retry_after, int):
            # No PluralKit body (an edge in between?): fall back on X-RateLimit-Reset,
            # which PluralKit sends in seconds and documents in milliseconds.
            reset = budget.reset_to_seconds(response.header("X-RateLimit-Reset") or "")
            retry_after = None if reset is None else int((reset - time.time()) * 1000)
        pause = budget.pause_after_429(retry_after, scope.interval)
        scope.pause(pause)
        self._metrics.upstream_429.labels(scope.spec.name).inc()
        self._log.warning(
            "upstream.throttled",
            scope=scope.spec.name,
            upstream_scope=response.header("X-RateLimit-Scope"),
            retry_after_ms=retry_after,
            pause_ms=int(pause * 1000),
        )
        return pause

    def _learn(self, scope: ScopeScheduler, response: UpstreamResponse) -> None:
        """`X-RateLimit-Remaining: 0` means the next request must wait for its slot."""
        if response.header("X-RateLimit-Remaining") == "0":
            scope.pause(scope.interval)

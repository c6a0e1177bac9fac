"""Per-consumer quotas: upstream-bound rate and queue bound, answered with its own 429."""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.budget.scheduler import ScopeScheduler, ScopeView, wall_ms_in
from proxy.core.errors import Throttled
from proxy.core.quota import QuotaBucket
from proxy.flow.consumers import Consumer


class Quotas:
    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._buckets: dict[str, QuotaBucket] = {}
        self._clock = clock or time.monotonic

    def _bucket(self, consumer: Consumer) -> QuotaBucket | None:
        spec = consumer.spec
        if spec is None or spec.rate is None:
            return None
        bucket = self._buckets.get(spec.name)
        if bucket is None:
            bucket = self._buckets[spec.name] = QuotaBucket(spec.rate, spec.burst)
        return bucket

    def admit(self, consumer: Consumer, scope: ScopeScheduler) -> None:
        """Charge one upstream-bound request to the consumer's quota, or refuse it."""
        spec = consumer.spec
        if spec is None:
            return
        if spec.max_queued is not None and scope.depth(consumer.name) >= spec.max_queued:
            raise _refusal(spec.name, scope.interval, spec.max_queued, "consumer_queue_full")
        bucket = self._bucket(consumer)
        if bucket is None:
            return
        check = bucket.take(self._clock())
        if not check.allowed:
            raise _refusal(spec.name, check.retry_after, bucket.burst, "consumer_quota")

    def view(self, consumer: Consumer, scope_view: ScopeView) -> ScopeView:
        """The tighter of the scope's and the consumer's own limit."""
        bucket = self._bucket(consumer)
        if bucket is None or consumer.spec is None:
            return scope_view
        check = bucket.peek(self._clock())
        if check.remaining >= scope_view.remaining:
            return scope_view
        reset = check.retry_after if check.remaining == 0 else 0.0
        return ScopeView(
            f"consumer:{consumer.spec.name}", bucket.burst, check.remaining, wall_ms_in(reset)
        )


def _refusal(name: str, retry_after: float, limit: int, reason: str) -> Throttled:
    """The consumer's own 429: its scope is `consumer:<name>`, its limit its quota's."""
    return Throttled(
        f"consumer:{name}", int(retry_after * 1000) + 1, limit, wall_ms_in(retry_after), reason
    )

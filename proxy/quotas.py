"""Per-consumer quotas: upstream-bound rate and queue bound, answered with its own 429."""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.consumers import Consumer
from proxy.core.errors import Throttled
from proxy.core.quota import QuotaBucket
from proxy.scheduler import ScopeScheduler, ScopeView


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
            raise Throttled(
                f"consumer:{spec.name}",
                int(scope.interval * 1000) + 1,
                spec.max_queued,
                _wall_ms(scope.interval),
                "consumer_queue_full",
            )
        bucket = self._bucket(consumer)
        if bucket is None:
            return
        check = bucket.take(self._clock())
        if not check.allowed:
            raise Throttled(
                f"consumer:{spec.name}",
                int(check.retry_after * 1000) + 1,
                bucket.burst,
                _wall_ms(check.retry_after),
                "consumer_quota",
            )

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
            f"consumer:{consumer.spec.name}", bucket.burst, check.remaining, _wall_ms(reset)
        )


def _wall_ms(seconds_from_now: float) -> int:
    return int((time.time() + max(0.0, seconds_from_now)) * 1000)

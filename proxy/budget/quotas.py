"""Per-consumer quotas: upstream-bound rate and queue bound, answered with its own 429.

The counting sits behind `QuotaStore` (in this process here; in Redis when replicas must
share it); `Quotas` is the policy on top."""

from __future__ import annotations

from typing import Protocol

from proxy.budget.scheduler import ScopeScheduler, ScopeView
from proxy.clock import Clock, wall_ms_in
from proxy.core.errors import Throttled, ThrottleReason
from proxy.core.quota import QuotaBucket, QuotaCheck
from proxy.flow.consumers import Consumer


class QuotaStore(Protocol):
    """Counts each consumer's upstream-bound requests; must pass
    tests/contracts/test_quota_store.py."""

    async def take(self, name: str, rate: float, burst: int) -> QuotaCheck:
        """Charge one request to `name`'s bucket if it allows one now."""

    def peek(self, name: str, rate: float, burst: int) -> QuotaCheck:
        """Estimate without charging (for rate headers); may be slightly old."""


class LocalQuotaStore:
    __slots__ = ("_buckets", "_clock")

    def __init__(self, clock: Clock) -> None:
        self._buckets: dict[str, QuotaBucket] = {}
        self._clock = clock

    def _bucket(self, name: str, rate: float, burst: int) -> QuotaBucket:
        bucket = self._buckets.get(name)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._buckets[name] = QuotaBucket(rate, burst)
        return bucket

    async def take(self, name: str, rate: float, burst: int) -> QuotaCheck:
        return self._bucket(name, rate, burst).take(self._clock.monotonic())

    def peek(self, name: str, rate: float, burst: int) -> QuotaCheck:
        bucket = self._buckets.get(name)
        if bucket is None:
            return QuotaCheck(True, burst, 0.0, 0.0)
        return bucket.peek(self._clock.monotonic())

    def __len__(self) -> int:
        return len(self._buckets)


class Quotas:
    def __init__(self, store: QuotaStore, clock: Clock) -> None:
        self.store = store
        self._clock = clock

    async def admit(self, consumer: Consumer, scope: ScopeScheduler) -> None:
        """Charge one upstream-bound request to the consumer's quota, or refuse it."""
        spec = consumer.spec
        if spec is None:
            return
        if spec.max_queued is not None and scope.depth(consumer.name) >= spec.max_queued:
            raise self._refusal(
                spec.name, scope.interval, spec.max_queued, ThrottleReason.CONSUMER_QUEUE_FULL
            )
        if spec.rate is None:
            return
        check = await self.store.take(spec.name, spec.rate, spec.burst)
        if not check.allowed:
            raise self._refusal(
                spec.name, check.retry_after, spec.burst, ThrottleReason.CONSUMER_QUOTA
            )

    def view(self, consumer: Consumer, scope_view: ScopeView) -> ScopeView:
        """The tighter of the scope's and the consumer's own limit."""
        spec = consumer.spec
        if spec is None or spec.rate is None:
            return scope_view
        check = self.store.peek(spec.name, spec.rate, spec.burst)
        if check.remaining >= scope_view.remaining:
            return scope_view
        reset = check.retry_after if check.remaining == 0 else 0.0
        return ScopeView(
            f"consumer:{spec.name}", spec.burst, check.remaining, wall_ms_in(self._clock, reset)
        )

    def _refusal(
        self, name: str, retry_after: float, limit: int, reason: ThrottleReason
    ) -> Throttled:
        """The consumer's own 429: its scope is `consumer:<name>`, its limit its quota's."""
        reset = wall_ms_in(self._clock, retry_after)
        return Throttled(f"consumer:{name}", int(retry_after * 1000) + 1, limit, reset, reason)

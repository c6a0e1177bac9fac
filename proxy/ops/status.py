"""The status snapshot: fed where every request ends, read by /status and /metrics.

It holds counters of its own and reads only the components' public views (scheduler
scopes, the cache's async stats, the number of flights), so that a snapshot costs
O(scopes + consumers) and never runs disk or sqlite work on the event loop."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.budget.scheduler import Scheduler
from proxy.cache.store import CacheStore
from proxy.clock import Clock
from proxy.core.cachepolicy import CacheResult
from proxy.ops.metrics import Metrics

if TYPE_CHECKING:
    from proxy.flow.request import RequestLog

_LOOKUPS = frozenset({CacheResult.HIT, CacheResult.STALE, CacheResult.MISS, CacheResult.COALESCED})
_HITS = frozenset({CacheResult.HIT, CacheResult.STALE})


@dataclass(slots=True)
class Lifecycle:
    ready: bool = False
    draining: bool = False
    started_at: float = 0.0  # wall


class StatusBoard:
    def __init__(
        self,
        clock: Clock,
        scheduler: Scheduler,
        cache: CacheStore | None,
        flights: Callable[[], int],
        upstream: str,
    ) -> None:
        self.lifecycle = Lifecycle(started_at=clock.wall())
        self._clock = clock
        self._scheduler = scheduler
        self._cache = cache
        self._flights = flights
        self._upstream = upstream
        self.lookups = 0
        self.hits = 0
        self.statuses: Counter[int] = Counter()

    def record(self, log: RequestLog, status: int) -> None:
        """One request ended (called for every request, from one place)."""
        self.statuses[status] += 1
        if log.cache in _LOOKUPS:
            self.lookups += 1
            if log.cache in _HITS:
                self.hits += 1

    async def cache_stats(self) -> dict[str, int]:
        return await self._cache.stats() if self._cache is not None else {}

    async def snapshot(self) -> dict[str, Any]:
        stats = await self.cache_stats()
        life = self.lifecycle
        return {
            "upstream": self._upstream,
            "ready": life.ready and not life.draining,
            "draining": life.draining,
            "uptime_s": round(self._clock.wall() - life.started_at, 1),
            "scopes": self._scopes(),
            "cache": {
                **stats,
                "lookups": self.lookups,
                "hits": self.hits,
                "hit_ratio": round(self.hits / self.lookups, 4) if self.lookups else None,
                "in_flight": self._flights(),
            },
        }

    def _scopes(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "rate": scope.spec.rate,
                "burst": scope.spec.burst,
                "interval_ms": round(scope.interval * 1000, 1),
                "queue_depth": scope.depth(),
                "queue_by_consumer": scope.depths(),
                "utilisation_1m": round(scope.utilisation(), 3),
                "paused_ms": int(scope.paused_for * 1000),
                "sent": scope.sent,
            }
            for name, scope in self._scheduler.scopes.items()
        }

    async def refresh_metrics(self, metrics: Metrics) -> None:
        """Gauges that are read rather than counted, brought up to date for a scrape."""
        stats = await self.cache_stats()
        if stats:
            for tier in ("memory", "disk"):
                metrics.cache_entries.labels(tier).set(stats.get(f"{tier}_entries", 0))
                metrics.cache_bytes.labels(tier).set(stats.get(f"{tier}_bytes", 0))
            metrics.observe_evictions(stats.get("memory_evictions", 0))
        for name, scope in self._scheduler.scopes.items():
            metrics.utilisation.labels(name).set(scope.utilisation())
            metrics.upstream_paused.labels(name).set(scope.paused_for)

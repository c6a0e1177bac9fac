"""The status board: fed where every request ends, read by /status, /status/live and /metrics.

It holds counters and a bounded history of its own and reads only the components' public
views (scheduler scopes, the metrics families, the cache's async stats, the number of
flights), so that a snapshot costs O(scopes + consumers), holds fixed memory, and never runs
disk or sqlite work on the event loop: the cache's stats run in a thread, at most once a
second, and every reader in that second shares the result."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from proxy.budget.scheduler import Scheduler
from proxy.cache.store import CacheStore
from proxy.clock import Clock
from proxy.core.cachepolicy import CacheResult
from proxy.core.errors import ThrottleReason
from proxy.ops.history import History, Sample, Samples, ScopeSample, WindowCount
from proxy.ops.metrics import Metrics

if TYPE_CHECKING:
    from prometheus_client import Counter as MetricCounter

    from proxy.budget.quotas import QuotaStore
    from proxy.flow.request import RequestLog
    from proxy.settings import ConsumerSettings, ConsumerSpec

_LOOKUPS = frozenset({CacheResult.HIT, CacheResult.STALE, CacheResult.MISS, CacheResult.COALESCED})
_HITS = frozenset({CacheResult.HIT, CacheResult.STALE})
_LOCAL_429 = frozenset(ThrottleReason)
_STATS_MAX_AGE = 1.0  # seconds a sample of the cache's stats is reused
_RECENT = 60.0  # seconds: slot shares, queue waits and latency percentiles
_CONSUMERS_KEPT = 256  # consumers whose activity is remembered (least recently seen go)
_CONSUMERS_SHOWN_FOR = 900.0  # seconds an unconfigured consumer stays listed after its last
_UNCONFIGURED_SHOWN = 20  # at most this many of them (the most recently seen)


@dataclass(slots=True)
class Lifecycle:
    ready: bool = False
    draining: bool = False
    started_at: float = 0.0  # wall


@dataclass(slots=True)
class Activity:
    """What the board remembers of one consumer."""

    seen: float  # monotonic
    slots: WindowCount = field(default_factory=WindowCount)
    throttled: Counter[str] = field(default_factory=Counter)  # local 429s by reason


class RedisState(Protocol):
    @property
    def state(self) -> str: ...

    @property
    def replicas_seen(self) -> int | None: ...


class StatusBoard:
    def __init__(
        self,
        clock: Clock,
        scheduler: Scheduler,
        cache: CacheStore | None,
        flights: Callable[[], int],
        upstream: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.lifecycle = Lifecycle(started_at=clock.wall())
        # Changes when the process restarts: the page notices and starts its history anew.
        self.start_id = secrets.token_hex(8)
        self._clock = clock
        self._scheduler = scheduler
        self._cache = cache
        self._flights = flights
        self._upstream = upstream
        self._metrics = metrics
        self.lookups = 0
        self.hits = 0
        self.statuses: Counter[int] = Counter()
        self._history = History(list(scheduler.scopes))
        self._waits = {name: Samples() for name in scheduler.scopes}
        self._latency = Samples()
        self._answers = WindowCount()
        self._activity: OrderedDict[str, Activity] = OrderedDict()
        self._stats: dict[str, int] = {}
        self._stats_at = float("-inf")
        self._stats_lock = asyncio.Lock()
        self.redis: RedisState | None = None  # set when replicas share state in Redis

    # -- fed ---------------------------------------------------------------------------
    def record(self, log: RequestLog, status: int) -> None:
        """One request ended (called for every request, from one place)."""
        now = self._clock.monotonic()
        self._tick(now)
        self.statuses[status] += 1
        if log.cache in _LOOKUPS:
            self.lookups += 1
            if log.cache in _HITS:
                self.hits += 1
        if log.slots:
            waits = self._waits.get(log.scope)
            if waits is not None:
                waits.add(now, log.queue_wait)
            if log.upstream_time > 0.0:
                self._latency.add(now, log.upstream_time / log.slots)
                self._answers.add(now)
            self._seen(log.consumer, now).slots.add(now, log.slots)
        if status == 429 and log.reason in _LOCAL_429:
            self._seen(log.consumer, now).throttled[log.reason] += 1

    def _seen(self, consumer: str, now: float) -> Activity:
        activity = self._activity.get(consumer)
        if activity is None:
            activity = self._activity[consumer] = Activity(now)
            if len(self._activity) > _CONSUMERS_KEPT:
                self._activity.popitem(last=False)
        else:
            activity.seen = now
            self._activity.move_to_end(consumer)
        return activity

    def _tick(self, now: float) -> None:
        """Close the history's seconds that have ended (usually: nothing to do)."""
        if self._history.due(now):
            self._history.advance(now, self._clock.wall() - now, self._sample())

    def _sample(self) -> Sample:
        throttled = _totals(self._metrics.upstream_429, "scope") if self._metrics else {}
        scopes = tuple(
            ScopeSample(
                scope.sent, int(throttled.get(name, 0)), scope.depth(), scope.paused_for > 0.0
            )
            for name, scope in self._scheduler.scopes.items()
        )
        return Sample(scopes, self.lookups, self.hits)

    # -- read ----------------------------------------------------------------------------
    async def cache_stats(self) -> dict[str, int]:
        """The cache's stats, sampled at most once a second and shared by every reader."""
        if self._cache is None:
            return {}
        async with self._stats_lock:
            if self._clock.monotonic() - self._stats_at >= _STATS_MAX_AGE:
                self._stats = await self._cache.stats()
                self._stats_at = self._clock.monotonic()
            return self._stats

    async def snapshot(self) -> dict[str, Any]:
        """What /status answers programs (its shape is a contract)."""
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
                "hit_ratio": round(self.hits / self.lookups, 3) if self.lookups else None,
                "in_flight": self._flights(),
            },
            "redis": self.redis_view(),
        }

    def redis_view(self) -> dict[str, Any]:
        """Shared state: "off" (one process), "ok", or "degraded" (serving alone on a safe
        share of the rate until Redis is back), and the replicas last seen."""
        if self.redis is None:
            return {"state": "off", "replicas": None}
        return {"state": self.redis.state, "replicas": self.redis.replicas_seen}

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

    async def live(
        self, since: int, consumers: ConsumerSettings, quotas: QuotaStore
    ) -> dict[str, Any]:
        """What the status page polls: the snapshot, the details it draws, and the history
        points newer than `since`."""
        now = self._clock.monotonic()
        self._tick(now)
        snapshot = await self.snapshot()
        return {
            "start_id": self.start_id,
            "now": round(self._clock.wall(), 3),
            "status": snapshot,
            "scopes": self._scope_details(now),
            "upstream": self._upstream_details(now),
            "cache": self._cache_details(snapshot["cache"]),
            "consumers": self._consumer_rows(now, consumers, quotas),
            "history": self._history.columns(self._history.since(since)),
        }

    def _scope_details(self, now: float) -> dict[str, dict[str, Any]]:
        throttled = _totals(self._metrics.upstream_429, "scope") if self._metrics else {}
        details = {}
        for name, scope in self._scheduler.scopes.items():
            p50, p99 = self._waits[name].percentiles(now, _RECENT, (0.5, 0.99))
            paused = scope.paused_for
            details[name] = {
                "wait_p50_ms": _ms(p50),
                "wait_p99_ms": _ms(p99),
                "waits": self._waits[name].count(now, _RECENT),
                "paused_until": round(self._clock.wall() + paused, 3) if paused > 0 else None,
                "upstream_429": int(throttled.get(name, 0)),
            }
        return details

    def _upstream_details(self, now: float) -> dict[str, Any]:
        p50, p99 = self._latency.percentiles(now, _RECENT, (0.5, 0.99))
        errors = {"429": 0, "5xx": 0, "timeout": 0, "unreachable": 0}
        sent = 0
        if self._metrics is not None:
            for status, count in _totals(self._metrics.upstream_requests, "status").items():
                sent += int(count)
                kind = "5xx" if status.startswith("5") and len(status) == 3 else status
                if kind in errors:
                    errors[kind] += int(count)
        return {
            "latency_p50_ms": _ms(p50),
            "latency_p99_ms": _ms(p99),
            "samples": self._answers.total(now),
            "answers": sent,
            "errors": errors,
        }

    def _cache_details(self, cache: dict[str, Any]) -> dict[str, Any]:
        stored = _totals(self._metrics.cache_stores, "reason") if self._metrics else {}
        return {
            "stores": int(stored.pop("stored", 0)),
            "skips": {reason: int(count) for reason, count in sorted(stored.items())},
            "evictions": {"memory": cache.get("memory_evictions", 0)},
        }

    def _consumer_rows(
        self, now: float, settings: ConsumerSettings, quotas: QuotaStore
    ) -> list[dict[str, Any]]:
        """One row per consumer worth showing: the configured ones, and the others seen in
        the last 15 minutes or queued now. Shares are of the last minute's slots, against
        each one's share of the weights of the consumers active in that minute."""
        queued: Counter[str] = Counter()
        oldest: dict[str, float] = {}
        for scope in self._scheduler.scopes.values():
            queued.update(scope.depths())
            for name, waited in scope.oldest_waiting().items():
                oldest[name] = max(oldest.get(name, 0.0), waited)
        specs = {spec.name: spec for spec in settings.keys}
        recent = [
            name
            for name, seen in self._activity.items()
            if name not in specs and now - seen.seen <= _CONSUMERS_SHOWN_FOR
        ]
        names = _unique([*specs, *recent[-_UNCONFIGURED_SHOWN:], *queued])
        rows = []
        for name in names:
            activity = self._activity.get(name)
            spec = specs.get(name)
            rows.append(
                {
                    "name": name,
                    "configured": spec is not None,
                    "weight": spec.weight if spec is not None else settings.default_weight,
                    "slots_1m": activity.slots.total(now) if activity is not None else 0,
                    "queued": queued.get(name, 0),
                    "oldest_wait_ms": _ms(oldest.get(name)),
                    "local_429": dict(activity.throttled) if activity is not None else {},
                    "quota": _quota(spec, quotas) if spec is not None else None,
                }
            )
        _shares(rows)
        return rows

    async def refresh_metrics(self, metrics: Metrics) -> None:
        """Gauges that are read rather than counted, brought up to date for a scrape."""
        stats = await self._cache.stats() if self._cache is not None else {}
        if stats:
            for tier in ("memory", "disk"):
                metrics.cache_entries.labels(tier).set(stats.get(f"{tier}_entries", 0))
                metrics.cache_bytes.labels(tier).set(stats.get(f"{tier}_bytes", 0))
            metrics.observe_evictions(stats.get("memory_evictions", 0))
        for name, scope in self._scheduler.scopes.items():
            metrics.utilisation.labels(name).set(scope.utilisation())
            metrics.upstream_paused.labels(name).set(scope.paused_for)


def _shares(rows: list[dict[str, Any]]) -> None:
    """Each row's share of the slots, and its fair share: its weight among the active."""
    slots = sum(row["slots_1m"] for row in rows)
    weights = sum(row["weight"] for row in rows if row["slots_1m"] or row["queued"])
    for row in rows:
        row["slot_share"] = round(row["slots_1m"] / slots, 3) if slots else None
        active = (row["slots_1m"] or row["queued"]) and weights > 0
        row["weight_share"] = round(row["weight"] / weights, 3) if active else None


def _quota(spec: ConsumerSpec, quotas: QuotaStore) -> dict[str, Any] | None:
    if spec.rate is None:
        return {"rate": None, "burst": None, "max_queued": spec.max_queued}
    check = quotas.peek(spec.name, spec.rate, spec.burst)
    return {
        "rate": spec.rate,
        "burst": spec.burst,
        "remaining": check.remaining,
        "max_queued": spec.max_queued,
    }


def _totals(counter: MetricCounter, label: str) -> dict[str, float]:
    """A counter family's values summed by one label (public API, O(series))."""
    totals: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "")
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def _unique(names: Iterable[str]) -> list[str]:
    return [name for name in dict.fromkeys(names) if name != "-"]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)

"""Prometheus metrics (prometheus-client), one registry per application."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_WAIT_BUCKETS = (0.005, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every family the proxy exports. Labels are route templates, scopes and consumer
    names: never raw ids, never addresses (address-identified consumers are `peer`)."""

    def __init__(self) -> None:
        # `_created` series double every counter's output and no dashboard here uses them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self._request_families()
        self._upstream_families()
        self._cache_families()
        self._budget_families()
        self._redis_families()
        self._evictions_seen = 0
        self._bound: dict[tuple[str, str, int, str], Any] = {}

    def _request_families(self) -> None:
        """Requests answered, how long they took, and why some were refused."""
        self.requests = Counter(
            "pkproxy_requests",
            "Requests answered, by route template, method, status and cache result.",
            ["route", "method", "status", "cache"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "pkproxy_request_duration_seconds",
            "Time to answer a request, by cache result.",
            ["cache"],
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.request_bodies_held = Gauge(
            "pkproxy_request_bodies_held_bytes",
            "Bytes of request bodies held now, against server.max_buffered_body_bytes.",
            registry=self.registry,
        )
        self.local_429 = Counter(
            "pkproxy_local_throttled",
            "429 answers issued by the proxy, by scope, consumer and reason.",
            ["scope", "consumer", "reason"],
            registry=self.registry,
        )
        self.coalesced = Counter(
            "pkproxy_coalesced_requests",
            "Requests answered by another request's upstream call.",
            registry=self.registry,
        )

    def _upstream_families(self) -> None:
        """What was sent upstream and how upstream answered."""
        self.upstream_requests = Counter(
            "pkproxy_upstream_requests",
            "Requests sent upstream, by scope and status.",
            ["scope", "status"],
            registry=self.registry,
        )
        self.upstream_429 = Counter(
            "pkproxy_upstream_throttled",
            "429 answers received from upstream (should stay 0).",
            ["scope"],
            registry=self.registry,
        )
        self.upstream_paused = Gauge(
            "pkproxy_upstream_paused_seconds",
            "Seconds a scope stays paused after upstream pushed back.",
            ["scope"],
            registry=self.registry,
        )

    def _cache_families(self) -> None:
        """The shared cache."""
        self.cache_lookups = Counter(
            "pkproxy_cache_lookups",
            "Shared-cache lookups by result (hit, stale, miss).",
            ["result"],
            registry=self.registry,
        )
        self.cache_stores = Counter(
            "pkproxy_cache_stores",
            "Upstream answers stored or skipped, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.cache_invalidations = Counter(
            "pkproxy_cache_invalidated_paths",
            "Paths evicted because a write made them wrong.",
            registry=self.registry,
        )
        self.cache_entries = Gauge(
            "pkproxy_cache_entries", "Entries held, by tier.", ["tier"], registry=self.registry
        )
        self.cache_bytes = Gauge(
            "pkproxy_cache_bytes", "Bytes held, by tier.", ["tier"], registry=self.registry
        )
        self.cache_evictions = Counter(
            "pkproxy_cache_evictions",
            "Entries evicted for space, by tier (the disk tier culls silently: not counted).",
            ["tier"],
            registry=self.registry,
        )

    def _budget_families(self) -> None:
        """Queues, and how much of each scope's budget is used."""
        self.queue_depth = Gauge(
            "pkproxy_queue_depth",
            "Requests waiting for an upstream slot.",
            ["scope"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "pkproxy_queue_wait_seconds",
            "Time a request waited for its upstream slot.",
            ["scope"],
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.utilisation = Gauge(
            "pkproxy_budget_utilisation_ratio",
            "Share of each scope's upstream budget used over the last minute.",
            ["scope"],
            registry=self.registry,
        )

    def _redis_families(self) -> None:
        """Shared state: whether Redis is usable and how many replicas share the budget."""
        self.redis_up = Gauge(
            "pkproxy_redis_up",
            "1 while Redis (shared budget, quotas, cache) is usable, 0 while serving alone.",
            registry=self.registry,
        )
        self.redis_replicas = Gauge(
            "pkproxy_redis_replicas",
            "Replicas sharing this egress budget, as last seen through heartbeats.",
            registry=self.registry,
        )
        self.redis_slow = Counter(
            "pkproxy_redis_slow",
            "Redis calls slower than redis.grant_timeout_ms (each served without Redis).",
            registry=self.registry,
        )

    def request_done(self, route: str, method: str, status: int, cache: str) -> Any:
        """The children a finished request moves, bound once per label set (labels() takes
        a lock and builds a key each time: too much for every cache hit)."""
        key = (route, method, status, cache)
        bound = self._bound.get(key)
        if bound is None:
            if len(self._bound) > 10_000:  # routes are templates: this is a safety net only
                self._bound.clear()
            bound = (
                self.requests.labels(route, method, str(status), cache),
                self.request_duration.labels(cache),
            )
            self._bound[key] = bound
        return bound

    def init_scopes(self, scopes: list[str]) -> None:
        """Export every per-scope series from the start, at zero, so that dashboards and
        alerts (on upstream 429s above all) see the series before the first event."""
        for scope in scopes:
            self.queue_depth.labels(scope)
            self.queue_wait.labels(scope)
            self.upstream_429.labels(scope)
            self.utilisation.labels(scope)
            self.upstream_paused.labels(scope)
        for result in ("hit", "stale", "miss", "stale_if_error"):
            self.cache_lookups.labels(result)
        self.cache_evictions.labels("memory")

    def observe_evictions(self, total: int) -> None:
        """The memory tier counts evictions itself; move the counter by what is new."""
        if total > self._evictions_seen:
            self.cache_evictions.labels("memory").inc(total - self._evictions_seen)
            self._evictions_seen = total

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""The cached path: unauthenticated GET/HEAD answered from the shared cache, coalesced
misses, background refresh of stale entries, and storing what upstream answered."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.budget.forward import Outbound, Place
from proxy.budget.scheduler import ScopeScheduler
from proxy.cache.invalidator import Invalidator
from proxy.cache.memory import MemoryFront
from proxy.cache.store import CacheStore, Entry
from proxy.core import cachepolicy
from proxy.core.admission import Target, admit
from proxy.core.cachepolicy import CacheResult, Expired, Fresh, Lookup, Miss, Stale
from proxy.core.errors import (
    NotFound,
    Throttled,
    ThrottleReason,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.core.fairqueue import Priority
from proxy.core.headers import cache_encoding_class, forward_request_headers, response_headers
from proxy.core.routes import UNKNOWN_ROUTE
from proxy.flow.coalesce import Flight, Make
from proxy.flow.consumers import Consumer
from proxy.flow.request import Request, RequestLog
from proxy.flow.responses import EntryBlock, RawAnswer, Responder
from proxy.ops.logs import get_logger
from proxy.upstream.client import UpstreamResponse

if TYPE_CHECKING:
    from proxy.flow.gateway import Parts

REFRESH_CONSUMER = "pkproxy-refresh"
# Set by the proxy on every answer from the cache (Via and rate headers are dropped by
# response_headers already): a stored copy of upstream's would be a duplicate.
_OURS = frozenset({"x-cache", "age"})
_log = get_logger()
_UPSTREAM_FAILURES = (UpstreamUnavailable, UpstreamTimeout, Throttled, TimeoutError)


class CachedPath:
    def __init__(
        self,
        parts: Parts,
        responder: Responder,
        cache: CacheStore,
        origin: str,
        invalidator: Invalidator | None = None,
    ) -> None:
        self._parts, self._responder = parts, responder
        self._cache, self._origin = cache, origin
        self._invalidator = invalidator
        self.coalescer = parts.coalescer
        self._memory = cache.memory if isinstance(cache, MemoryFront) else None
        lookups = parts.metrics.cache_lookups
        self._hit, self._stale, self._miss = (lookups.labels(r) for r in ("hit", "stale", "miss"))

    def _key(self, target: Target, accept_encoding: str | None) -> tuple[str, str]:
        encoding = cache_encoding_class(accept_encoding)
        return cachepolicy.cache_key(self._origin, target.path_and_query, encoding), encoding

    def quick_hit(
        self,
        target: Target,
        consumer: Consumer,
        scope: ScopeScheduler,
        place: Place,
        log: RequestLog,
        request: web.BaseRequest,
    ) -> RawAnswer | None:
        """The answer to the commonest request of all, a fresh entry in the memory tier,
        as bytes, without awaiting anything; None: take the whole path."""
        memory = self._memory
        if memory is None:
            return None
        key = self._key(target, request.headers.get("Accept-Encoding"))[0]
        entry = memory.get(key)
        if entry is None or not isinstance(self._classify(entry), Fresh):
            return None
        block: EntryBlock | None = memory.derived(key)
        if block is None:
            block = self._responder.entry_block(entry)
            if block is None:
                return None
            memory.derive(key, block, len(block.stored) + len(block.tail) + 64)
        self._hit.inc()
        log.cache = CacheResult.HIT
        return self._responder.raw_hit(scope, consumer, place, entry, block, request)

    async def serve(self, req: Request, log: RequestLog) -> web.StreamResponse:
        key, encoding = self._key(req.target, req.accept_encoding)
        state = self._classify(await self._cache.get(key))
        match state:
            case Fresh(entry=entry):
                self._hit.inc()
                log.cache = CacheResult.HIT
                return self._responder.entry(req, entry, CacheResult.HIT)
            case Stale(entry=entry):
                self._stale.inc()
                log.cache = CacheResult.STALE
                self._refresh(req, key, encoding)
                return self._responder.entry(req, entry, CacheResult.STALE)
            case Expired():
                fallback = state.fallback
            case Miss():
                fallback = None
        self._miss.inc()
        return await self._fetch(req, log, key, encoding, fallback)

    async def purge(self, raw_path: str) -> tuple[str, int]:
        """Evict every cached answer for one path (all queries and encodings); the path is
        admitted and its ids folded exactly as request keys are."""
        target = admit("GET", raw_path)
        if target.route.template == UNKNOWN_ROUTE:
            raise NotFound(f"404: not a cacheable PluralKit path: {target.path}")
        return target.path, await self._cache.evict_tag(
            cachepolicy.cache_tag(self._origin, target.path)
        )

    async def clear(self) -> int:
        return await self._cache.clear()

    def _classify(self, entry: Entry | None) -> Lookup[Entry]:
        if entry is None:
            return Miss()
        settings = self._parts.settings.cache
        return cachepolicy.classify_age(
            entry,
            entry.stored_at,
            entry.ttl,
            self._parts.clock.wall(),
            settings.grace_seconds,
            settings.max_stale_seconds,
        )

    async def _fetch(
        self, req: Request, log: RequestLog, key: str, encoding: str, fallback: Entry | None
    ) -> web.StreamResponse:
        log.cache = CacheResult.MISS
        self._responder.forget_rate_headers()  # this request may queue: headers change
        place = req.place
        try:
            if key not in self.coalescer:
                # Refused before a flight starts: a 429 never spends an upstream slot.
                place.deadline = req.scope.admissible(place.consumer, place.weight, place.deadline)
                await self._parts.quotas.admit(req.consumer, req.scope)
            make = self._make_fetch(req, dataclasses.replace(place), key, encoding, log)
            wait = max(0.0, place.deadline - req.scope.now())
            upstream, shared = await self.coalescer.join(key, make, place, wait)
        except _UPSTREAM_FAILURES as error:
            if fallback is not None and cachepolicy.stale_instead(None):
                return self._stale_instead(req, log, fallback)
            if isinstance(error, TimeoutError):
                wait = req.scope.wait_for_new(place.consumer, place.weight)
                raise req.scope.throttled(wait, place.max_wait, ThrottleReason.DEADLINE) from None
            raise
        if shared or upstream.shared:
            log.cache = CacheResult.COALESCED
            self._parts.metrics.coalesced.inc()
        if fallback is not None and cachepolicy.stale_instead(upstream.status):
            return self._stale_instead(req, log, fallback)
        return self._responder.upstream(req, upstream, log.cache)

    def _stale_instead(self, req: Request, log: RequestLog, entry: Entry) -> web.Response:
        log.cache = CacheResult.STALE
        log.reason = "stale_if_error"
        self._parts.metrics.cache_lookups.labels("stale_if_error").inc()
        return self._responder.entry(req, entry, CacheResult.STALE)

    def _make_fetch(
        self, req: Request, place: Place, key: str, encoding: str, log: RequestLog | None
    ) -> Make[UpstreamResponse]:
        upstream_settings = self._parts.settings.upstream
        # Only what cannot change the answer is forwarded: nothing unkeyed reaches upstream.
        agent = [] if req.user_agent is None else [("User-Agent", req.user_agent)]
        headers = forward_request_headers(
            agent, upstream_settings.user_agent, upstream_settings.via, encoding
        )
        out = Outbound("GET", req.target.path_and_query, headers, b"", place)

        async def fetch(flight: Flight[UpstreamResponse]) -> UpstreamResponse:
            flight.joined = functools.partial(out.lift, req.scope)
            since = await self._cache.generation()
            leases = self._parts.leases
            if not await leases.acquire(key):
                # Another replica is fetching it: wait for its answer in the shared tier.
                entry = await leases.wait_entry(key, place.deadline, self._cache.get)
                if entry is not None:
                    return UpstreamResponse(
                        entry.status, list(entry.headers), entry.body, 0.0, True
                    )

            def mark_sent() -> None:
                flight.sent = True

            try:
                try:
                    upstream = await self._parts.forwarder.send(req.scope, out, mark_sent)
                finally:
                    if log is not None:
                        log.timed(out)
                await self._store(req, key, upstream, since)
            finally:
                await leases.release(key)
            return upstream

        return fetch

    def _refresh(self, req: Request, key: str, encoding: str) -> None:
        """One background refresh per stale key, at background priority."""
        if key in self.coalescer:
            return
        ceiling = self._parts.settings.budget.max_wait_ceiling_ms / 1000
        place = Place(
            REFRESH_CONSUMER, 1.0, Priority.BACKGROUND, ceiling, req.scope.now() + ceiling
        )
        make = self._make_fetch(req, place, key, encoding, None)
        flight, _ = self.coalescer.start(key, make, detached=True)
        flight.task.add_done_callback(_swallow)

    async def _store(self, req: Request, key: str, upstream: UpstreamResponse, since: int) -> None:
        if self._invalidator is not None:
            template = req.target.route.template
            self._invalidator.learn(template, upstream.status, upstream.headers, upstream.body)
        decision = cachepolicy.store_decision(
            upstream.status,
            upstream.headers,
            upstream.body,
            self._parts.settings.cache.ttl_for(req.target.route.template),
            self._parts.settings.cache.negative_ttl_seconds,
        )
        if not decision.store:
            self._parts.metrics.cache_stores.labels(decision.reason).inc()
            _log.debug(
                "cache.store_skipped", route=req.target.route.template, reason=decision.reason
            )
            return
        tag = cachepolicy.cache_tag(self._origin, req.target.path)
        headers = tuple(
            (k, v) for k, v in response_headers(upstream.headers, None) if k.lower() not in _OURS
        )
        now = self._parts.clock.wall()
        entry = Entry(upstream.status, headers, upstream.body, now, decision.ttl, tag)
        stored = await self._cache.set(key, entry, since)
        self._parts.metrics.cache_stores.labels(
            "stored" if stored else "invalidated_in_flight"
        ).inc()


def _swallow(task: asyncio.Task[UpstreamResponse]) -> None:
    if not task.cancelled():
        task.exception()

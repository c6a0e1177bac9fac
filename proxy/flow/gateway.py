"""The request flow: admit -> classify -> cache -> coalesce -> schedule -> upstream -> respond."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from proxy.budget.forward import Forwarder, Outbound
from proxy.budget.quotas import Quotas
from proxy.budget.scheduler import Scheduler, ScopeScheduler
from proxy.cache.invalidator import Invalidator
from proxy.cache.store import CacheStore, Entry
from proxy.core import cachepolicy
from proxy.core.admission import Target, admit
from proxy.core.cachepolicy import Expired, Fresh, Lookup, Miss, Stale
from proxy.core.errors import (
    BadRequest,
    Draining,
    HeadersTooLarge,
    Internal,
    PayloadTooLarge,
    ProxyError,
    Throttled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.core.headers import (
    CREDENTIAL_HEADERS,
    cache_encoding_class,
    forward_request_headers,
    has_credential,
    header_bytes,
    parse_control,
    response_headers,
)
from proxy.core.invalidation import parse_json
from proxy.flow.coalesce import Coalescer, Flight, Make
from proxy.flow.consumers import Consumer, Consumers
from proxy.flow.responses import PREFLIGHT, error_response, passthrough, rate_headers
from proxy.ops.logs import get_logger
from proxy.ops.metrics import Metrics
from proxy.settings import Settings
from proxy.upstream.client import UpstreamResponse

WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
REFRESH_CONSUMER = "pkproxy-refresh"


@dataclass(slots=True)
class RequestLog:
    """The fields of the one `request.completed` event every request produces."""

    method: str
    started: float
    consumer: str = "-"
    consumer_label: str = "-"
    route: str = "-"
    scope: str = "-"
    cache: str = "-"
    queue_wait: float = 0.0
    upstream_time: float = 0.0
    reason: str | None = None


@dataclass(slots=True)
class Request:
    """One admitted request, classified."""

    target: Target
    consumer: Consumer
    scope: ScopeScheduler
    priority: str
    max_wait: float
    deadline: float
    headers: list[tuple[str, str]]
    body: bytes
    credentialed: bool


class Gateway:
    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        forwarder: Forwarder,
        cache: CacheStore | None,
        consumers: Consumers,
        quotas: Quotas,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.forwarder = forwarder
        self.cache = cache
        self.consumers = consumers
        self.quotas = quotas
        self.metrics = metrics
        self.draining = False
        self.coalescer: Coalescer[UpstreamResponse] = Coalescer()
        self.origin = str(settings.upstream.url)
        self.invalidator = Invalidator(cache, metrics, self.origin) if cache is not None else None
        self._refreshes: set[asyncio.Task[None]] = set()
        self._log = get_logger()
        self.hits = 0
        self.lookups = 0
        # Wall clock for cache ages (entries outlive the process); tests drive it.
        self.clock: Callable[[], float] = time.time

    # -- entry point ------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        log = RequestLog(request.method, time.perf_counter())
        try:
            response = await self._handle(request, log)
        except ProxyError as error:
            if isinstance(error, Throttled):
                log.reason = error.reason
                self.metrics.local_429.labels(log.scope, log.consumer_label, error.reason).inc()
            response = error_response(error, self.settings.upstream.via)
            if log.cache == "-":
                log.cache = "NONE"
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler): nothing more is sent for
            # it. 499 is nginx's "client closed request", for the log and metrics only.
            log.reason = "client_disconnected"
            self._completed(log, 499)
            raise
        except Exception:
            self._log.exception("request.failed", route=log.route, method=log.method)
            response = error_response(
                Internal("500: internal proxy error"), self.settings.upstream.via
            )
        self._completed(log, response.status)
        return response

    def _completed(self, log: RequestLog, status: int) -> None:
        duration = time.perf_counter() - log.started
        self.metrics.requests.labels(log.route, log.method, str(status), log.cache).inc()
        self.metrics.request_duration.labels(log.cache).observe(duration)
        self._log.info(
            "request.completed",
            consumer=log.consumer,
            method=log.method,
            route=log.route,
            scope=log.scope,
            status=status,
            cache=log.cache,
            queue_wait_ms=round(log.queue_wait * 1000, 1),
            upstream_ms=round(log.upstream_time * 1000, 1),
            duration_ms=round(duration * 1000, 1),
            **({"reason": log.reason} if log.reason else {}),
        )

    async def _handle(self, request: web.Request, log: RequestLog) -> web.StreamResponse:
        if self.draining:
            raise Draining("503: pkproxy is shutting down")
        target = admit(request.method, request.raw_path)
        log.route = target.route.template
        if request.method == "OPTIONS":
            log.cache = "NONE"
            return web.Response(status=200, headers=PREFLIGHT)
        req = await self._classify(request, target, log)
        cacheable = self.cache is not None and cachepolicy.is_cacheable_request(
            target, req.credentialed
        )
        if cacheable:
            return await self._serve_cacheable(req, log)
        log.cache = "BYPASS"
        return await self._serve_direct(req, log)

    async def _classify(self, request: web.Request, target: Target, log: RequestLog) -> Request:
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        if header_bytes(raw_headers) > self.settings.server.max_header_bytes:
            raise HeadersTooLarge("431: request headers too large")
        try:
            control = parse_control(request.headers)
        except ValueError as exc:
            raise BadRequest(f"400: {exc}") from None
        consumer = self.consumers.identify(request.remote, request.headers)
        log.consumer, log.consumer_label = consumer.name, consumer.label
        scope = self.scheduler.for_request(target.method, target.route.template)
        log.scope = scope.spec.name
        budget = self.settings.budget
        wait_ms = min(
            control.max_wait_ms if control.max_wait_ms is not None else budget.default_max_wait_ms,
            budget.max_wait_ceiling_ms,
        )
        body = await _read_body(request, self.settings.server.max_body_bytes)
        max_wait = wait_ms / 1000.0
        return Request(
            target,
            consumer,
            scope,
            control.priority or consumer.priority,
            max_wait,
            scope.now() + max_wait,
            raw_headers,
            body,
            has_credential(raw_headers),
        )

    # -- uncached path --------------------------------------------------------------
    async def _serve_direct(self, req: Request, log: RequestLog) -> web.StreamResponse:
        self.quotas.admit(req.consumer, req.scope)
        headers = forward_request_headers(
            req.headers, self.settings.upstream.user_agent, self.settings.upstream.via
        )
        out = self._outbound(req, req.target.method, headers, req.body)
        try:
            upstream = await self.forwarder.send(req.scope, out)
        finally:
            log.queue_wait, log.upstream_time = out.queue_wait, out.upstream_time
        credentials = [(k, v) for k, v in req.headers if k.lower() in CREDENTIAL_HEADERS]
        if self.invalidator is not None:
            if req.target.method in WRITE_METHODS and 200 <= upstream.status < 300:
                await self.invalidator.after_write(
                    req.target.route, credentials, req.body, upstream.body
                )
            if credentials and req.target.route.param("ref") == "@me":
                self.invalidator.learn_me(
                    req.target.route, credentials, upstream.status, upstream.body
                )
        return self._respond(req, upstream)

    def _outbound(
        self, req: Request, method: str, headers: list[tuple[str, str]], body: bytes
    ) -> Outbound:
        return Outbound(
            method,
            req.target.path_and_query,
            headers,
            body,
            req.consumer.name,
            req.consumer.weight,
            req.priority,
            req.max_wait,
            req.deadline,
        )

    def _respond(
        self, req: Request, upstream: UpstreamResponse, cache: str = "BYPASS"
    ) -> web.Response:
        headers = response_headers(upstream.headers, self.settings.upstream.via)
        extra = {**self._rate_headers(req), "X-Cache": cache}
        if upstream.status == 429:
            # Upstream's own 429 passed back: the proxy's headers must not invite a retry.
            body = parse_json(upstream.body)
            retry = body.get("retry_after") if isinstance(body, dict) else None
            retry_ms = retry if isinstance(retry, int) else int(req.scope.paused_for * 1000)
            extra["Retry-After"] = str(max(1, -(-retry_ms // 1000)))
            extra["X-RateLimit-Remaining"] = "0"
            extra["X-RateLimit-Reset"] = str(int((time.time() + retry_ms / 1000) * 1000))
        head_length = upstream.header("Content-Length") if req.target.method == "HEAD" else None
        return passthrough(upstream.status, headers, upstream.body, extra, head_length)

    def _rate_headers(self, req: Request) -> dict[str, str]:
        view = self.quotas.view(
            req.consumer, req.scope.view(req.consumer.name, req.consumer.weight, req.max_wait)
        )
        return rate_headers(view)

    # -- cached path ----------------------------------------------------------------
    async def _serve_cacheable(self, req: Request, log: RequestLog) -> web.StreamResponse:
        assert self.cache is not None
        accept = next((v for k, v in req.headers if k.lower() == "accept-encoding"), None)
        encoding = cache_encoding_class(accept)
        key = cachepolicy.cache_key(self.origin, req.target.path_and_query, encoding)
        entry = await self.cache.get(key)
        settings = self.settings.cache
        state: Lookup = Miss()
        if entry is not None:
            state = cachepolicy.classify_age(
                entry.stored_at,
                entry.ttl,
                self.clock(),
                settings.grace_seconds,
                settings.max_stale_seconds,
            )
        self.lookups += 1
        match state:
            case Fresh():
                self.hits += 1
                self.metrics.cache_lookups.labels("hit").inc()
                log.cache = "HIT"
                return self._from_entry(req, entry, "HIT")
            case Stale():
                self.hits += 1
                self.metrics.cache_lookups.labels("stale").inc()
                log.cache = "STALE"
                self._refresh(req, key, encoding)
                return self._from_entry(req, entry, "STALE")
            case Expired() | Miss():
                self.metrics.cache_lookups.labels("miss").inc()
        usable = entry if isinstance(state, Expired) and state.usable else None
        return await self._fetch_cacheable(req, log, key, encoding, usable)

    async def _fetch_cacheable(
        self, req: Request, log: RequestLog, key: str, encoding: str, usable: Entry | None
    ) -> web.StreamResponse:
        log.cache = "MISS"
        make = self._make_fetch(req, key, encoding, log)
        try:
            if key not in self.coalescer:
                self.quotas.admit(req.consumer, req.scope)
            upstream, shared = await self.coalescer.join(
                key, make, req.deadline, max(0.0, req.deadline - req.scope.now())
            )
        except (UpstreamUnavailable, UpstreamTimeout, Throttled, TimeoutError) as error:
            if usable is not None:
                log.cache = "STALE"
                log.reason = "stale_if_error"
                self.metrics.cache_lookups.labels("stale_if_error").inc()
                return self._from_entry(req, usable, "STALE")
            if isinstance(error, TimeoutError):
                raise req.scope.throttled(
                    req.scope.wait_for_new(req.consumer.name, req.consumer.weight),
                    req.max_wait,
                    "deadline",
                ) from None
            raise
        if shared:
            log.cache = "COALESCED"
            self.metrics.coalesced.inc()
        if usable is not None and (upstream.status >= 500 or upstream.status == 429):
            log.cache = "STALE"
            return self._from_entry(req, usable, "STALE")
        return self._respond(req, upstream, log.cache)

    def _make_fetch(
        self, req: Request, key: str, encoding: str, log: RequestLog | None
    ) -> Make[UpstreamResponse]:
        headers = self._cacheable_headers(req, encoding)
        out = self._outbound(req, "GET", headers, b"")

        async def fetch(flight: Flight[UpstreamResponse]) -> UpstreamResponse:
            flight.extend = out.extend
            started = self.invalidator.generation if self.invalidator else 0

            def mark_sent() -> None:
                flight.sent = True

            try:
                upstream = await self.forwarder.send(req.scope, out, mark_sent)
            finally:
                if log is not None:
                    log.queue_wait, log.upstream_time = out.queue_wait, out.upstream_time
            await self._store(req, key, upstream, started)
            return upstream

        return fetch

    def _cacheable_headers(self, req: Request, encoding: str) -> list[tuple[str, str]]:
        """Only what cannot change the answer is forwarded: nothing unkeyed reaches upstream."""
        agent = [(k, v) for k, v in req.headers if k.lower() == "user-agent"]
        return forward_request_headers(
            agent, self.settings.upstream.user_agent, self.settings.upstream.via, encoding
        )

    def _refresh(self, req: Request, key: str, encoding: str) -> None:
        """One background refresh per stale key, at background priority."""
        if key in self.coalescer:
            return
        refresh = Request(
            req.target,
            Consumer(REFRESH_CONSUMER, REFRESH_CONSUMER, 1.0, "background"),
            req.scope,
            "background",
            self.settings.budget.max_wait_ceiling_ms / 1000,
            req.scope.now() + self.settings.budget.max_wait_ceiling_ms / 1000,
            req.headers,
            b"",
            False,
        )
        flight, _ = self.coalescer.start(key, self._make_fetch(refresh, key, encoding, None), True)
        flight.task.add_done_callback(_swallow)

    async def _store(
        self, req: Request, key: str, upstream: UpstreamResponse, started: int
    ) -> None:
        assert self.cache is not None
        tag = cachepolicy.cache_tag(self.origin, req.target.path)
        if self.invalidator is not None and self.invalidator.outdated(tag, started):
            self.metrics.cache_stores.labels("invalidated_in_flight").inc()
            return
        decision = cachepolicy.store_decision(
            upstream.status,
            upstream.headers,
            upstream.body,
            self.settings.cache.ttl_for(req.target.route.template),
            self.settings.cache.negative_ttl_seconds,
        )
        self.metrics.cache_stores.labels(decision.reason).inc()
        if not decision.store:
            self._log.debug(
                "cache.store_skipped", route=req.target.route.template, reason=decision.reason
            )
            return
        headers = tuple(response_headers(upstream.headers, "")[:-1])
        entry = Entry(upstream.status, headers, upstream.body, self.clock(), decision.ttl, tag)
        await self.cache.set(key, entry)

    def _from_entry(self, req: Request, entry: Entry | None, cache: str) -> web.Response:
        assert entry is not None
        age = max(0, int(self.clock() - entry.stored_at))
        extra = {
            **self._rate_headers(req),
            "X-Cache": cache,
            "Age": str(age),
            "Via": self.settings.upstream.via,
        }
        return passthrough(entry.status, list(entry.headers), entry.body, extra)

    # -- writes ---------------------------------------------------------------------


def _swallow(task: asyncio.Task[UpstreamResponse]) -> None:
    if not task.cancelled():
        task.exception()


async def _read_body(request: web.Request, limit: int) -> bytes:
    """Read at most `limit` bytes; a larger body is refused without being buffered whole."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"413: request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"413: request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)

"""The request flow's entry: admit -> classify, then the direct or the cached path; every
request ends in `_completed`, which feeds the log, the metrics and the status board."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import Gauge

from proxy.budget.forward import Forwarder, Place
from proxy.budget.quotas import Quotas
from proxy.budget.scheduler import Scheduler, ScopeScheduler
from proxy.cache.invalidator import Invalidator
from proxy.cache.store import CacheStore, FetchLeases
from proxy.clock import Clock
from proxy.core import cachepolicy
from proxy.core.admission import Target, admit
from proxy.core.cachepolicy import CacheResult
from proxy.core.errors import (
    BadRequest,
    Draining,
    HeadersTooLarge,
    Internal,
    Overloaded,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    Throttled,
    Unauthorized,
)
from proxy.core.fairqueue import Priority
from proxy.core.headers import has_credential, header_bytes, parse_control
from proxy.flow.cached import CachedPath
from proxy.flow.coalesce import Coalescer
from proxy.flow.consumers import Consumer, Consumers
from proxy.flow.direct import DirectPath
from proxy.flow.request import Request, RequestLog
from proxy.flow.responses import PREFLIGHT, RawAnswer, Responder, error_response
from proxy.ops.logs import RequestLogPolicy, get_logger
from proxy.ops.metrics import Metrics
from proxy.ops.status import StatusBoard
from proxy.settings import Settings
from proxy.upstream.client import UpstreamResponse


@dataclass(frozen=True, slots=True)
class Parts:
    """The shared components one Gateway routes requests through."""

    settings: Settings
    clock: Clock
    scheduler: Scheduler
    forwarder: Forwarder
    cache: CacheStore | None
    coalescer: Coalescer[UpstreamResponse]
    leases: FetchLeases
    consumers: Consumers
    quotas: Quotas
    metrics: Metrics
    board: StatusBoard


_PRIORITIES = {p.value: p for p in Priority}
# Answered from the cache without spending anything upstream: sampled in the log.
_FROM_CACHE = frozenset({CacheResult.HIT, CacheResult.STALE})


class Gateway:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.settings = parts.settings
        self.scheduler = parts.scheduler
        self.forwarder = parts.forwarder
        self._clock = parts.clock
        self._metrics = parts.metrics
        self._log = get_logger()
        server = parts.settings.server
        self.bodies = BodyBudget(
            server.max_body_bytes, server.max_buffered_body_bytes, parts.metrics.request_bodies_held
        )
        self._log_policy = RequestLogPolicy(
            parts.settings.log.requests, parts.settings.log.sample_every
        )
        origin = str(parts.settings.upstream.url)
        invalidator = (
            Invalidator(parts.cache, parts.metrics, origin) if parts.cache is not None else None
        )
        responder = Responder(parts.settings.upstream.via, parts.quotas, parts.clock)
        self.direct = DirectPath(parts, responder, invalidator)
        self.cached = (
            CachedPath(parts, responder, parts.cache, origin, invalidator)
            if parts.cache is not None
            else None
        )

    @property
    def draining(self) -> bool:
        return self.parts.board.lifecycle.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.parts.board.lifecycle.draining = value

    async def handle(self, request: web.Request) -> web.StreamResponse:
        log = RequestLog(request.method, self._clock.monotonic())
        try:
            response = await self._handle(request, log)
        except ProxyError as error:
            log.reason = error.reason
            if isinstance(error, Throttled):
                self._metrics.local_429.labels(log.scope, log.consumer_label, error.reason).inc()
            elif isinstance(error, Unauthorized):
                log.consumer = request.remote or "-"  # who tried: the peer, never the key
            response = error_response(error, self.settings.upstream.via)
            if isinstance(error, (RequestTimeout, PayloadTooLarge, Overloaded)):
                response.force_close()  # the rest of the body is not read: nothing can follow
            log.cache = log.cache or CacheResult.NONE
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

    def quick(self, request: web.BaseRequest) -> RawAnswer | None:
        """A fresh hit in the memory tier, answered before aiohttp's router and middleware
        and without a response object (ProxyRequestHandler writes the bytes), or None: the
        whole path, which would give the same answer, header for header. Anything unusual
        (a body, an Expect or Upgrade, a refusal to shape, a credential) takes the whole
        path."""
        method = request.method
        cached = self.cached
        if (method != "GET" and method != "HEAD") or cached is None or self.draining:
            return None
        headers = request.headers
        if request.body_exists or "Expect" in headers or "Upgrade" in headers:
            # An upgrade puts aiohttp's parser in a mode that only its own finish_response
            # takes it out of when the upgrade is declined, as the proxy declines them all.
            return None
        log = RequestLog(method, self._clock.monotonic())
        try:
            target = admit(method, request.raw_path)
            consumer, scope, place = self._identify(request, target, log)
        except ProxyError:
            return None  # refused on the whole path, which shapes and logs it
        if not cachepolicy.is_cacheable_request(target, has_credential(request.headers.items())):
            return None
        log.route = target.route.template
        answer = cached.quick_hit(target, consumer, scope, place, log, request)
        if answer is not None:
            self._completed(log, answer.status)
        return answer

    def refused(self, status: int, reason: str) -> None:
        """A request the HTTP server answered itself, before a handler could run (a head
        aiohttp cannot parse, too large or too slow, one connection too many)."""
        log = RequestLog("-", self._clock.monotonic(), reason=reason)
        self._completed(log, status)

    def _completed(self, log: RequestLog, status: int) -> None:
        """Where every request ends: one log event, the metrics, the status board."""
        duration = self._clock.monotonic() - log.started
        cache = log.cache or CacheResult.NONE
        counter, timing = self._metrics.request_done(log.route, log.method, status, cache)
        counter.inc()
        timing.observe(duration)
        self.parts.board.record(log, status)
        if not self._log_policy.wanted(status, cache in _FROM_CACHE):
            return
        self._log.info(
            "request.completed",
            status=status,
            method=log.method,
            route=log.route,
            duration_ms=round(duration * 1000, 1),
            consumer=log.consumer,
            scope=log.scope,
            cache=str(cache),
            queue_wait_ms=round(log.queue_wait * 1000, 1),
            upstream_ms=round(log.upstream_time * 1000, 1),
            **({"reason": log.reason} if log.reason else {}),
        )

    async def _handle(self, request: web.Request, log: RequestLog) -> web.StreamResponse:
        if self.draining:
            raise Draining("503: pkproxy is shutting down")
        target = admit(request.method, request.raw_path)
        log.route = target.route.template
        if request.method == "OPTIONS":
            log.cache = CacheResult.NONE
            return web.Response(status=200, headers=PREFLIGHT)
        consumer, scope, place = self._identify(request, target, log)
        credentialed = has_credential(request.headers.items())
        req = await self._request(request, target, consumer, scope, place, credentialed)
        try:
            cached = self.cached
            if cached is not None and cachepolicy.is_cacheable_request(target, credentialed):
                return await cached.serve(req, log)
            log.cache = CacheResult.BYPASS
            return await self.direct.serve(req, log)
        finally:
            self.bodies.give(len(req.body))  # its answer is made: the body is not needed

    def _identify(
        self, request: web.BaseRequest, target: Target, log: RequestLog
    ) -> tuple[Consumer, ScopeScheduler, Place]:
        """Who asks, which scope it would spend, and where it would wait."""
        if header_bytes(request.raw_headers) > self.settings.server.max_header_bytes:
            raise HeadersTooLarge("431: request headers too large")
        try:
            control = parse_control(request.headers)
        except ValueError as exc:
            raise BadRequest(f"400: {exc}") from None
        consumer = self.parts.consumers.identify(request.remote, request.headers)
        log.consumer, log.consumer_label = consumer.name, consumer.label
        scope = self.scheduler.for_request(target.method, target.route.template)
        log.scope = scope.spec.name
        budget = self.settings.budget
        wait_ms = min(
            control.max_wait_ms if control.max_wait_ms is not None else budget.default_max_wait_ms,
            budget.max_wait_ceiling_ms,
        )
        max_wait = wait_ms / 1000.0
        priority = _PRIORITIES[control.priority or consumer.priority]
        place = Place(consumer.name, consumer.weight, priority, max_wait, scope.now() + max_wait)
        return consumer, scope, place

    async def _request(
        self,
        request: web.Request,
        target: Target,
        consumer: Consumer,
        scope: ScopeScheduler,
        place: Place,
        credentialed: bool,
    ) -> Request:
        """The request as the flow carries it upstream-bound, its body read."""
        server = self.settings.server
        body = b""  # most requests (GETs) have none: nothing to read or wait for
        if request.body_exists or request.content_length:
            body = await _read_body(request, server.body_timeout_seconds, self.bodies)
        headers = request.headers
        return Request(
            target,
            consumer,
            scope,
            place,
            request.raw_headers,
            body,
            credentialed,
            headers.get("Accept-Encoding"),
            headers.get("User-Agent"),
        )


class BodyBudget:
    """Request bodies: each at most `server.max_body_bytes` (413), and the bytes held at
    once, all connections together, taken as they arrive and given back once their request
    is answered. Past `server.max_buffered_body_bytes`, 503: before a body is read when its
    announced length does not fit (nothing is reserved for it, so a client that announces a
    body and never sends it holds nothing), else as soon as the bytes received would not."""

    __slots__ = ("_gauge", "held", "limit", "max_body")

    def __init__(self, max_body: int, limit: int, gauge: Gauge) -> None:
        self.max_body = max_body
        self.limit = limit
        self.held = 0
        self._gauge = gauge

    def admit(self, announced: int | None) -> None:
        """Refuse, before reading it, a body whose announced length is too large or would
        not fit now."""
        if announced is not None and announced > self.max_body:
            raise self.too_large()
        self.check(announced or 0)

    def too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"413: request body larger than {self.max_body} bytes", "body_too_large"
        )

    def check(self, size: int) -> None:
        """Refuse a body of `size` bytes that would not fit now."""
        if self.held + size > self.limit:
            raise Overloaded(
                "503: pkproxy holds too many request bodies; retry shortly", "bodies_full"
            )

    def take(self, size: int) -> None:
        self.check(size)
        self.held += size
        self._gauge.set(self.held)

    def give(self, size: int) -> None:
        self.held -= size
        self._gauge.set(self.held)


async def _read_body(request: web.Request, timeout: float, bodies: BodyBudget) -> bytes:
    """Read the body within `timeout` seconds, as `bodies` allows: a larger body is refused
    without being buffered whole (413), one that does not fit the budget with 503 (before it
    is read when announced), a slower one with 408, a malformed one (bad chunking) with 400."""
    bodies.admit(request.content_length)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(65536):
                if size + len(chunk) > bodies.max_body:
                    raise bodies.too_large()
                bodies.take(len(chunk))
                size += len(chunk)
                chunks.append(chunk)
    except BaseException as exc:
        bodies.give(size)
        if isinstance(exc, TimeoutError):
            raise RequestTimeout(
                f"408: request body not received within {timeout:g} s", "body_timeout"
            ) from None
        if isinstance(exc, RequestPayloadError):
            raise BadRequest("400: malformed request body", f"bad_body: {exc}") from None
        raise
    return b"".join(chunks)

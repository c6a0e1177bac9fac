"""The aiohttp application: the shared parts built inside the running loop, and dispatch
between the proxy's own endpoints and the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import HttpVersion11, web

from proxy.budget.forward import Forwarder
from proxy.budget.pacer import PacerFactory, local_pacers
from proxy.budget.quotas import LocalQuotaStore, Quotas, QuotaStore
from proxy.budget.redis_pacer import redis_pacers
from proxy.budget.redis_quotas import RedisQuotaStore
from proxy.budget.scheduler import Scheduler
from proxy.cache.disk import tiered
from proxy.cache.memory import MemoryFront
from proxy.cache.redis_store import RedisLeases, RedisStore
from proxy.cache.store import CacheStore, FetchLeases, LocalLeases
from proxy.clock import Clock, SystemClock
from proxy.core.errors import ExpectationFailed, Overloaded, PayloadTooLarge
from proxy.flow.coalesce import Coalescer
from proxy.flow.consumers import Consumers
from proxy.flow.gateway import Gateway, Parts
from proxy.flow.responses import error_response
from proxy.ops.endpoints import BOARD, GATEWAY, METRICS, OWN_ENDPOINTS, own_endpoint
from proxy.ops.metrics import Metrics
from proxy.ops.status import StatusBoard
from proxy.settings import Settings
from proxy.shared.link import RedisLink
from proxy.upstream.client import Upstream, UpstreamResponse

__all__ = ["BOARD", "GATEWAY", "METRICS", "create_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)


def _cache(settings: Settings) -> CacheStore | None:
    if not settings.cache.enabled:
        return None
    cache = settings.cache
    return tiered(cache.directory, cache.memory_bytes, cache.disk_bytes)


@dataclass(frozen=True, slots=True)
class Backends:
    """Where the state behind each seam lives: this process, or Redis for all replicas."""

    pacers: PacerFactory
    quotas: QuotaStore
    cache: CacheStore | None
    leases: FetchLeases
    link: RedisLink | None = None


async def _backends(settings: Settings, clock: Clock, metrics: Metrics) -> Backends:
    budget = settings.budget
    if not settings.redis.enabled:
        pacers = local_pacers(budget.reserve, budget.margin, clock)
        return Backends(pacers, LocalQuotaStore(clock), _cache(settings), LocalLeases())
    link = RedisLink(settings.redis, clock, metrics)
    await link.start()  # unreachable is not fatal: the replica serves alone until it is back
    cache = None
    if settings.cache.enabled:
        # Redis is the shared tier; diskcache is off (see README: shared state).
        shared = RedisStore(link, settings.cache.max_stale_seconds, settings.redis.max_entry_bytes)
        front = MemoryFront(settings.cache.memory_bytes, shared)
        link.on_invalidate(front.forget)
        link.on_missed(front.memory.clear)
        cache = front
    return Backends(
        redis_pacers(link, budget.reserve, budget.margin, clock),
        RedisQuotaStore(link, clock),
        cache,
        RedisLeases(link, settings.redis.lease_seconds, clock),
        link,
    )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Everything bound to the event loop is created here, inside the running loop."""
    settings, clock, metrics = app[SETTINGS], app[CLOCK], app[METRICS]
    backends = await _backends(settings, clock, metrics)
    cache = backends.cache
    upstream = Upstream(settings.upstream, clock)
    await upstream.start()
    budget = settings.budget
    scheduler = Scheduler(budget.scopes, backends.pacers, clock, budget.max_queue)
    scheduler.start()
    metrics.init_scopes([scope.name for scope in budget.scopes])
    coalescer: Coalescer[UpstreamResponse] = Coalescer()
    board = StatusBoard(
        clock, scheduler, cache, coalescer.__len__, str(settings.upstream.url), metrics
    )
    parts = Parts(
        settings=settings,
        clock=clock,
        scheduler=scheduler,
        forwarder=Forwarder(upstream, metrics, clock),
        cache=cache,
        coalescer=coalescer,
        consumers=Consumers(settings.consumers),
        quotas=Quotas(backends.quotas, clock),
        leases=backends.leases,
        metrics=metrics,
        board=board,
    )
    board.redis = backends.link
    app[BOARD] = board
    app[GATEWAY] = Gateway(parts)
    board.lifecycle.ready = True
    try:
        yield
    finally:
        board.lifecycle.ready = False
        await scheduler.stop()
        await upstream.close()
        if cache is not None:
            await cache.close()
        if backends.link is not None:
            await backends.link.stop()


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Own endpoints by exact raw path; everything else is the gateway's to admit or refuse."""
    path = request.raw_path.partition("?")[0]
    if path in OWN_ENDPOINTS:
        own = await own_endpoint(request, path)
        if own is not None:
            return own
    return await request.app[GATEWAY].handle(request)


@web.middleware
async def unrouted(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Targets the router cannot match (CONNECT's authority-form) are refused by the gateway
    too, so that every refusal has PluralKit's shape and its request.completed event."""
    if request.match_info.http_exception is not None:
        return await request.app[GATEWAY].handle(request)
    return await handler(request)


async def expect(request: web.Request) -> web.StreamResponse | None:
    """The app's Expect handler: `100-continue` is answered as aiohttp does, unless the body
    announced is too large (413) or would not fit the body budget (503), refused before it
    is sent; any other expectation
    gets a 417 in PluralKit's shape instead of aiohttp's text/plain one."""
    expectation = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return None
    gateway = request.app[GATEWAY]
    if expectation.strip().lower() == "100-continue":
        try:  # a body that would not be taken is refused before the client sends it
            gateway.bodies.admit(request.content_length)
        except (PayloadTooLarge, Overloaded) as refusal:
            gateway.refused(refusal.status, refusal.reason or "body_refused")
            response = error_response(refusal, gateway.settings.upstream.via)
            response.force_close()
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
        return None
    gateway.refused(417, "expectation_failed")
    error = ExpectationFailed(f"417: expectation {expectation[:32]!r} is not supported")
    response = error_response(error, gateway.settings.upstream.via)
    response.force_close()  # whether a body follows is unknown: nothing else can
    return response


def create_app(settings: Settings, clock: Clock | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.server.max_body_bytes, middlewares=[unrouted])
    app[SETTINGS] = settings
    app[CLOCK] = clock or SystemClock()
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_route("*", "/{tail:.*}", dispatch, expect_handler=expect)
    return app

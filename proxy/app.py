"""The aiohttp application: the shared parts built inside the running loop, and dispatch
between the proxy's own endpoints and the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from proxy.budget.forward import Forwarder
from proxy.budget.pacer import local_pacers
from proxy.budget.quotas import LocalQuotaStore, Quotas
from proxy.budget.scheduler import Scheduler
from proxy.cache.disk import tiered
from proxy.cache.store import CacheStore
from proxy.clock import Clock, SystemClock
from proxy.flow.coalesce import Coalescer
from proxy.flow.consumers import Consumers
from proxy.flow.gateway import Gateway, Parts
from proxy.ops.endpoints import BOARD, GATEWAY, METRICS, own_endpoint
from proxy.ops.metrics import Metrics
from proxy.ops.status import StatusBoard
from proxy.server import expect
from proxy.settings import Settings
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


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Everything bound to the event loop is created here, inside the running loop."""
    settings, clock, metrics = app[SETTINGS], app[CLOCK], app[METRICS]
    cache = _cache(settings)
    upstream = Upstream(settings.upstream, clock)
    await upstream.start()
    budget = settings.budget
    pacers = local_pacers(budget.reserve, budget.margin, clock)
    scheduler = Scheduler(budget.scopes, pacers, clock, budget.max_queue)
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
        quotas=Quotas(LocalQuotaStore(clock), clock),
        metrics=metrics,
        board=board,
    )
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


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Own endpoints by exact raw path; everything else is the gateway's to admit or refuse."""
    own = await own_endpoint(request, request.raw_path.partition("?")[0])
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


def create_app(settings: Settings, clock: Clock | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.server.max_body_bytes, middlewares=[unrouted])
    app[SETTINGS] = settings
    app[CLOCK] = clock or SystemClock()
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_route("*", "/{tail:.*}", dispatch, expect_handler=expect)
    return app

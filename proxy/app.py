"""The aiohttp application: lifecycle of the shared parts, own endpoints, dispatch."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from proxy.budget.forward import Forwarder
from proxy.budget.quotas import Quotas
from proxy.budget.scheduler import Scheduler
from proxy.cache.store import TieredCache
from proxy.flow.consumers import Consumers
from proxy.flow.gateway import Gateway
from proxy.ops.metrics import CONTENT_TYPE, Metrics
from proxy.settings import Settings
from proxy.upstream.client import Upstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Lifecycle:
    ready: bool = False
    started_at: float = 0.0


SETTINGS = web.AppKey("settings", Settings)
GATEWAY = web.AppKey("gateway", Gateway)
METRICS = web.AppKey("metrics", Metrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Everything bound to the event loop is created here, inside the running loop."""
    settings = app[SETTINGS]
    cache = None
    if settings.cache.enabled:
        cache = TieredCache(
            settings.cache.directory, settings.cache.memory_bytes, settings.cache.disk_bytes
        )
    upstream = Upstream(settings.upstream)
    await upstream.start()
    scheduler = Scheduler(settings.budget.scopes, settings.budget.margin, settings.budget.max_queue)
    scheduler.start()
    metrics = app[METRICS]
    metrics.init_scopes([scope.name for scope in settings.budget.scopes])
    app[GATEWAY] = Gateway(
        settings,
        scheduler,
        Forwarder(upstream, metrics),
        cache,
        Consumers(settings.consumers),
        Quotas(),
        metrics,
    )
    app[LIFECYCLE].ready = True
    app[LIFECYCLE].started_at = time.time()
    try:
        yield
    finally:
        app[LIFECYCLE].ready = False
        await scheduler.stop()
        await upstream.close()
        if cache is not None:
            await cache.close()


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    gateway = app.get(GATEWAY)
    ready = (
        app[LIFECYCLE].ready
        and gateway is not None
        and not gateway.draining
        and gateway.scheduler.running
    )
    if not ready:
        reason = "draining" if gateway is not None and gateway.draining else "starting"
        return _json({"status": "unavailable", "reason": reason}, 503)
    return _json({"status": "ready"})


def _refresh_gauges(gateway: Gateway, metrics: Metrics) -> dict[str, int]:
    stats = gateway.cache.stats() if gateway.cache is not None else {}
    if stats:
        metrics.cache_entries.labels("memory").set(stats["memory_entries"])
        metrics.cache_entries.labels("disk").set(stats["disk_entries"])
        metrics.cache_bytes.labels("memory").set(stats["memory_bytes"])
        metrics.cache_bytes.labels("disk").set(stats["disk_bytes"])
        metrics.observe_evictions(stats["memory_evictions"])
    for name, scope in gateway.scheduler.scopes.items():
        metrics.utilisation.labels(name).set(scope.utilisation())
        metrics.upstream_paused.labels(name).set(scope.paused_for)
    return stats


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    _refresh_gauges(request.app[GATEWAY], metrics)
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def status_endpoint(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    stats = _refresh_gauges(gateway, request.app[METRICS])
    scopes = {
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
        for name, scope in gateway.scheduler.scopes.items()
    }
    hit_ratio = gateway.hits / gateway.lookups if gateway.lookups else None
    return _json(
        {
            "upstream": str(gateway.settings.upstream.url),
            "ready": request.app[LIFECYCLE].ready and not gateway.draining,
            "draining": gateway.draining,
            "uptime_s": round(time.time() - request.app[LIFECYCLE].started_at, 1),
            "scopes": scopes,
            "cache": {
                **stats,
                "lookups": gateway.lookups,
                "hits": gateway.hits,
                "hit_ratio": hit_ratio,
                "in_flight": len(gateway.coalescer),
            },
        }
    )


_OWN = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": metrics_endpoint,
    "/status": status_endpoint,
}


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Own endpoints by exact raw path; everything else is the gateway's to admit or refuse."""
    own = _OWN.get(request.raw_path.partition("?")[0])
    if own is not None and request.method in {"GET", "HEAD"}:
        return await own(request)
    return await request.app[GATEWAY].handle(request)


@web.middleware
async def unrouted(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Targets the router cannot match (CONNECT's authority-form) are refused by the gateway
    too, so that every refusal has PluralKit's shape and its request.completed event."""
    if request.match_info.http_exception is not None:
        return await request.app[GATEWAY].handle(request)
    return await handler(request)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.server.max_body_bytes, middlewares=[unrouted])
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[LIFECYCLE] = Lifecycle()
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app

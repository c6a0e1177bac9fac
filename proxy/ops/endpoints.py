"""The proxy's own endpoints: probes, Prometheus metrics, and the status snapshot."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.flow.gateway import Gateway
from proxy.ops.metrics import CONTENT_TYPE, Metrics
from proxy.ops.status import StatusBoard

GATEWAY = web.AppKey("gateway", Gateway)
METRICS = web.AppKey("metrics", Metrics)
BOARD = web.AppKey("board", StatusBoard)

Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    board = app.get(BOARD)
    gateway = app.get(GATEWAY)
    life = board.lifecycle if board is not None else None
    if life is None or gateway is None or not life.ready or life.draining:
        reason = "draining" if life is not None and life.draining else "starting"
        return web.json_response({"status": "unavailable", "reason": reason}, status=503)
    if not gateway.scheduler.running:
        return web.json_response({"status": "unavailable", "reason": "scheduler"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await request.app[BOARD].refresh_metrics(metrics)
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def status_endpoint(request: web.Request) -> web.Response:
    return web.json_response(await request.app[BOARD].snapshot())


# The proxy's own paths, matched exactly on the raw path: everything else is the gateway's.
OWN_ENDPOINTS: dict[str, Endpoint] = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": metrics_endpoint,
    "/status": status_endpoint,
}

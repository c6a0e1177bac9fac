"""The proxy's own endpoints: probes, Prometheus metrics, and the status snapshot."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from multidict import CIMultiDict

from proxy.core.errors import MethodNotAllowed, ProxyError, Unauthorized
from proxy.flow.gateway import Gateway
from proxy.flow.responses import error_response
from proxy.ops import page
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
    """The status page to a browser (it asks for text/html), the JSON snapshot to anyone else."""
    if page.wants_html(request.headers.get("Accept")):
        return page.response()
    response = web.json_response(await request.app[BOARD].snapshot())
    response.headers["Vary"] = "Accept"
    return response


async def status_live_endpoint(request: web.Request) -> web.Response:
    """What the status page polls: `?since=<seq>` gives only the history points it lacks."""
    gateway = request.app[GATEWAY]
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        since = 0
    live = await request.app[BOARD].live(
        since, gateway.settings.consumers, gateway.parts.quotas.store
    )
    response = web.json_response(live)
    response.headers["Cache-Control"] = "no-store"
    return response


async def cache_endpoint(request: web.Request) -> web.Response:
    """`DELETE /cache?path=/v2/members/abcde` evicts one path (every query and encoding,
    ids folded as in keys); `DELETE /cache` empties the cache, memory tier included."""
    cached = request.app[GATEWAY].cached
    if cached is None:
        return web.json_response({"cache": "disabled", "evicted": 0})
    path = request.query.get("path")
    if path is None:
        return web.json_response({"removed": await cached.clear()})
    folded, evicted = await cached.purge(path)
    return web.json_response({"path": folded, "evicted": evicted})


# The proxy's own paths, matched exactly on the raw path: everything else is the gateway's.
OWN_ENDPOINTS: dict[str, dict[str, Endpoint]] = {
    "/healthz": {"GET": healthz, "HEAD": healthz},
    "/readyz": {"GET": readyz, "HEAD": readyz},
    "/metrics": {"GET": metrics_endpoint, "HEAD": metrics_endpoint},
    "/status": {"GET": status_endpoint, "HEAD": status_endpoint},
    "/status/live": {"GET": status_live_endpoint},
    "/cache": {"DELETE": cache_endpoint},
}
# Probes stay open; the rest show consumer names or act on the cache (see ops_allowed).
OPEN_ENDPOINTS = frozenset({"/healthz", "/readyz"})
# A browser cannot send X-PKProxy-Key: these ask it for the ops key by HTTP Basic auth.
BROWSER_ENDPOINTS = frozenset({"/status", "/status/live"})


async def own_endpoint(request: web.Request, path: str) -> web.StreamResponse | None:
    """Answer one of the proxy's own endpoints, or None if `path` is not one of them.
    Refusals have PluralKit's error shape."""
    methods = OWN_ENDPOINTS.get(path)
    if methods is None:
        return None
    gateway = request.app[GATEWAY]
    try:
        handler = methods.get(request.method)
        if handler is None:
            allowed = ", ".join(methods)
            raise MethodNotAllowed(f"405: {path} allows {allowed}")
        if path not in OPEN_ENDPOINTS:
            gateway.parts.consumers.ops_allowed(request.remote, ops_headers(request.headers))
        return await handler(request)
    except ProxyError as error:
        response = error_response(error, gateway.settings.upstream.via)
        if isinstance(error, Unauthorized) and path in BROWSER_ENDPOINTS:
            response.headers["WWW-Authenticate"] = 'Basic realm="pkproxy ops", charset="UTF-8"'
        return response


def ops_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The headers the ops check reads: a Basic `Authorization` password stands for
    `X-PKProxy-Key` when that is absent (browsers can send the one, not the other). Own
    endpoints are never forwarded, so this Authorization reaches nothing else."""
    if "X-PKProxy-Key" in headers:
        return headers
    scheme, _, encoded = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return headers
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return headers
    mapped = CIMultiDict(headers)
    mapped["X-PKProxy-Key"] = decoded.partition(":")[2]
    return mapped

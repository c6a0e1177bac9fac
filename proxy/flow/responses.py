"""Building the proxy's answers: PluralKit-shaped errors, rate headers, passthrough."""

from __future__ import annotations

import json
import math

from aiohttp import web
from multidict import CIMultiDict

from proxy.budget.scheduler import ScopeView
from proxy.core.errors import ProxyError, Throttled

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": (
        "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, X-RateLimit-Scope, "
        "Retry-After, X-Cache, Age"
    ),
}
PREFLIGHT = {
    **CORS,
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PATCH, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": (
        "Authorization, Content-Type, X-PluralKit-App, X-PKProxy-Max-Wait, "
        "X-PKProxy-Priority, X-PKProxy-Key"
    ),
    "Access-Control-Max-Age": "86400",
}


def rate_headers(view: ScopeView) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(view.limit),
        "X-RateLimit-Remaining": str(view.remaining),
        "X-RateLimit-Reset": str(view.reset_ms),
        "X-RateLimit-Scope": view.scope,
    }


def error_response(error: ProxyError, via: str) -> web.Response:
    headers: dict[str, str] = {**CORS, "Via": via}
    if isinstance(error, Throttled):
        headers.update(
            {
                "Retry-After": str(max(1, math.ceil(error.retry_after_ms / 1000))),
                "X-RateLimit-Limit": str(error.limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(error.reset_ms),
                "X-RateLimit-Scope": error.scope,
            }
        )
    return web.Response(
        status=error.status,
        body=json.dumps(error.body(), separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


def passthrough(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    extra: dict[str, str],
    head_length: str | None = None,
) -> web.Response:
    """Upstream's answer as the client gets it. For a HEAD forwarded as HEAD, the length
    upstream announced is kept (there is no body to measure)."""
    out = CIMultiDict(headers)
    for name, value in extra.items():
        out[name] = value
    if head_length is not None and not body:
        out["Content-Length"] = head_length
        return web.Response(status=status, headers=out)
    return web.Response(status=status, body=body if status not in {204, 304} else None, headers=out)

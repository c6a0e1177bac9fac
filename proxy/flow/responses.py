"""Building the proxy's answers: PluralKit-shaped errors, rate headers, passthrough."""

from __future__ import annotations

import json

from aiohttp import web
from multidict import CIMultiDict

from proxy.budget.forward import Place
from proxy.budget.quotas import Quotas
from proxy.budget.scheduler import ScopeScheduler, ScopeView
from proxy.cache.store import Entry
from proxy.clock import Clock, wall_ms_in
from proxy.core.cachepolicy import CacheResult
from proxy.core.errors import ProxyError, Throttled
from proxy.core.headers import response_headers
from proxy.core.ratesignal import read_signal, retry_after_header
from proxy.flow.consumers import Consumer
from proxy.flow.request import Request
from proxy.upstream.client import UpstreamResponse

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
                "Retry-After": retry_after_header(error.retry_after_ms),
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
    return web.Response(status=status, body=body if status not in _NO_BODY else None, headers=out)


_NO_BODY = frozenset({204, 304})
_RECENT_SECONDS = 0.005
_RECENT_LIMIT = 10_000


class Responder:
    """Answers built from upstream responses and cache entries, with this consumer's
    rate headers."""

    def __init__(self, via: str, quotas: Quotas, clock: Clock) -> None:
        self._via = via
        self._quotas = quotas
        self._clock = clock
        # Per consumer and scope, the rate headers of the last few milliseconds: cache hits
        # spend nothing, so the many hits of one bot in a burst share one computation.
        self._recent: dict[tuple[str, str, float, float], tuple[float, dict[str, str]]] = {}

    def rate_headers(self, req: Request) -> dict[str, str]:
        return self.rate_headers_for(req.scope, req.consumer, req.place)

    def rate_headers_for(
        self, scope: ScopeScheduler, consumer: Consumer, place: Place
    ) -> dict[str, str]:
        key = (scope.spec.name, place.consumer, place.weight, place.max_wait)
        now = self._clock.monotonic()
        recent = self._recent.get(key)
        if recent is not None and recent[0] > now:
            return recent[1]
        view = scope.view(place.consumer, place.weight, place.max_wait)
        headers = rate_headers(self._quotas.view(consumer, view))
        if len(self._recent) >= _RECENT_LIMIT:
            self._recent.clear()
        self._recent[key] = (now + _RECENT_SECONDS, headers)
        return headers

    def forget_rate_headers(self) -> None:
        """A request was granted or refused a slot: the next answer computes afresh."""
        self._recent.clear()

    def upstream(
        self, req: Request, upstream: UpstreamResponse, cache: CacheResult
    ) -> web.Response:
        headers = response_headers(upstream.headers, self._via)
        self.forget_rate_headers()
        extra = {**self.rate_headers(req), "X-Cache": cache}
        if upstream.status == 429:
            # Upstream's own 429 passed back: the proxy's headers must not invite a retry.
            signal = read_signal(429, upstream.headers, upstream.body, self._clock.wall())
            retry_ms = signal.retry_after_ms
            if retry_ms is None:
                retry_ms = int(req.scope.next_slot_in() * 1000)
            extra["Retry-After"] = retry_after_header(retry_ms)
            extra["X-RateLimit-Remaining"] = "0"
            extra["X-RateLimit-Reset"] = str(wall_ms_in(self._clock, retry_ms / 1000))
        head_length = upstream.header("Content-Length") if req.target.method == "HEAD" else None
        return passthrough(upstream.status, headers, upstream.body, extra, head_length)

    def entry(self, req: Request, entry: Entry, cache: CacheResult) -> web.Response:
        return self.entry_for(req.scope, req.consumer, req.place, entry, cache)

    def entry_for(
        self,
        scope: ScopeScheduler,
        consumer: Consumer,
        place: Place,
        entry: Entry,
        cache: CacheResult,
    ) -> web.Response:
        """An answer from the cache: the stored headers hold none of the proxy's own (they
        are dropped when stored), so the proxy's are added, not replaced."""
        out = CIMultiDict(entry.headers)
        out.extend(self.rate_headers_for(scope, consumer, place))
        out.add("X-Cache", cache)
        out.add("Age", str(max(0, int(self._clock.wall() - entry.stored_at))))
        out.add("Via", self._via)
        body = entry.body if entry.status not in _NO_BODY else None
        return web.Response(status=entry.status, body=body, headers=out)

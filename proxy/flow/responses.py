"""Building the proxy's answers: PluralKit-shaped errors, rate headers, passthrough."""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import HttpVersion, HttpVersion10, HttpVersion11, web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from proxy.budget.forward import Place
from proxy.budget.quotas import Quotas
from proxy.budget.scheduler import ScopeScheduler, ScopeView
from proxy.cache.store import Entry
from proxy.clock import Clock, wall_ms_in
from proxy.core.cachepolicy import CacheResult
from proxy.core.errors import Overloaded, ProxyError, Throttled
from proxy.core.headers import response_headers, writable
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
    if isinstance(error, Overloaded):
        headers["Retry-After"] = "1"
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
# Never among stored headers (dropped when stored); an entry that has one anyway (a shared
# store written by something else) takes the whole path, where aiohttp keeps it.
_WRITTEN_BY_SERVER = frozenset(
    {"content-length", "date", "server", "connection", "transfer-encoding", "keep-alive"}
)
_VERSIONS = {HttpVersion11: b"HTTP/1.1", HttpVersion10: b"HTTP/1.0"}
_CONNECTION = {  # by (keep-alive, HTTP/1.1): what aiohttp adds to an answer
    (True, True): b"",
    (True, False): b"Connection: keep-alive\r\n",
    (False, True): b"Connection: close\r\n",
    (False, False): b"",
}


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """A whole HTTP/1.x answer as bytes, which ProxyRequestHandler writes to the connection
    as they are: the quick path's answer to a fresh hit (see Gateway.quick). It carries what
    aiohttp reads of a response after writing it."""

    status: int
    head: bytes
    body: bytes  # b"" for HEAD
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class EntryBlock:
    """The parts of a cached answer's head that stay the same for as long as its entry is
    in the memory tier, rendered once: the status phrase, the stored headers, Via and
    Content-Length."""

    phrase: bytes
    stored: bytes
    tail: bytes


@dataclass(frozen=True, slots=True)
class _RateSnapshot:
    until: float  # monotonic
    headers: dict[str, str]
    block: bytes


def _header_lines(headers: tuple[tuple[str, str], ...]) -> bytes | None:
    """Stored headers as aiohttp writes them (UTF-8); None if one is not a token name and a
    value free of CR, LF and NUL (it could split the answer: aiohttp refuses to write it),
    or is one that aiohttp writes itself."""
    for name, value in headers:
        if not writable(name, value) or name.lower() in _WRITTEN_BY_SERVER:
            return None
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("utf-8")


class Responder:
    """Answers built from upstream responses and cache entries, with this consumer's
    rate headers."""

    def __init__(self, via: str, quotas: Quotas, clock: Clock) -> None:
        self._via = via
        self._quotas = quotas
        self._clock = clock
        # Per consumer and scope, the rate headers of the last few milliseconds: cache hits
        # spend nothing, so the many hits of one bot in a burst share one computation.
        self._recent: dict[tuple[str, str, float, float], _RateSnapshot] = {}
        self._date: tuple[int, bytes] = (-1, b"")
        self._via_line = f"Via: {via}\r\n"

    def rate_headers(self, req: Request) -> dict[str, str]:
        return self._rate_snapshot(req.scope, req.consumer, req.place).headers

    def _rate_snapshot(
        self, scope: ScopeScheduler, consumer: Consumer, place: Place
    ) -> _RateSnapshot:
        key = (scope.spec.name, place.consumer, place.weight, place.max_wait)
        now = self._clock.monotonic()
        recent = self._recent.get(key)
        if recent is not None and recent.until > now:
            return recent
        view = scope.view(place.consumer, place.weight, place.max_wait)
        headers = rate_headers(self._quotas.view(consumer, view))
        block = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
        if len(self._recent) >= _RECENT_LIMIT:
            self._recent.clear()
        snapshot = self._recent[key] = _RateSnapshot(now + _RECENT_SECONDS, headers, block)
        return snapshot

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
        """An answer from the cache: the stored headers hold none of the proxy's own (they
        are dropped when stored), so the proxy's are added, not replaced."""
        out = CIMultiDict(entry.headers)
        out.extend(self.rate_headers(req))
        out.add("X-Cache", cache)
        out.add("Age", self._age(entry))
        out.add("Via", self._via)
        body = entry.body if entry.status not in _NO_BODY else None
        return web.Response(status=entry.status, body=body, headers=out)

    def _age(self, entry: Entry) -> str:
        return str(max(0, int(self._clock.wall() - entry.stored_at)))

    def entry_block(self, entry: Entry) -> EntryBlock | None:
        """The fixed parts of `entry`'s answer as bytes; None if it must take the whole path
        (no body, by its status or stored; a status without a phrase; no Content-Type, which
        aiohttp would add; a header that cannot be written as it is)."""
        if entry.status in _NO_BODY or entry.status < 200 or not entry.body:
            return None
        if not any(name.lower() == "content-type" for name, _ in entry.headers):
            return None  # aiohttp would add its default type
        try:
            phrase = HTTPStatus(entry.status).phrase
        except ValueError:
            return None
        stored = _header_lines(entry.headers)
        if stored is None:
            return None
        tail = f"{self._via_line}Content-Length: {len(entry.body)}\r\n".encode()
        return EntryBlock(f" {entry.status} {phrase}\r\n".encode(), stored, tail)

    def raw_hit(
        self,
        scope: ScopeScheduler,
        consumer: Consumer,
        place: Place,
        entry: Entry,
        block: EntryBlock,
        request: web.BaseRequest,
    ) -> RawAnswer:
        """The answer `entry` would get from `entry()` as a fresh hit, header for header
        (aiohttp's Date, Server and Connection included), from its pre-rendered block."""
        version: HttpVersion = request.version
        keep_alive = request.keep_alive
        rate = self._rate_snapshot(scope, consumer, place).block
        head = b"".join(
            (
                _VERSIONS.get(version) or f"HTTP/{version[0]}.{version[1]}".encode(),
                block.phrase,
                block.stored,
                rate,
                b"X-Cache: HIT\r\nAge: ",
                self._age(entry).encode(),
                b"\r\n",
                block.tail,
                self._date_lines(),
                _CONNECTION[keep_alive, version == HttpVersion11],
                b"\r\n",
            )
        )
        body = b"" if request.method == "HEAD" else entry.body
        return RawAnswer(entry.status, head, body, keep_alive)

    def _date_lines(self) -> bytes:
        """Date (from the one clock, rendered once a second) and Server, as aiohttp adds."""
        now = int(self._clock.wall())
        if self._date[0] != now:
            date = formatdate(now, usegmt=True)
            self._date = (now, f"Date: {date}\r\nServer: {SERVER_SOFTWARE}\r\n".encode())
        return self._date[1]

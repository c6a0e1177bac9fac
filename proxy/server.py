"""The HTTP server around the app: aiohttp's protocol with PluralKit-shaped answers to what
its parser refuses, a deadline and a size bound on request heads, and a connection limit."""

from __future__ import annotations

import asyncio
import json
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from proxy.core.admission import check_method
from proxy.core.errors import (
    BadRequest,
    HeadersTooLarge,
    Internal,
    MethodNotAllowed,
    Overloaded,
    ProxyError,
    RequestTimeout,
    UpstreamTimeout,
    UriTooLong,
)
from proxy.flow.responses import CORS, RawAnswer, error_response
from proxy.ops.endpoints import GATEWAY
from proxy.ops.logs import get_logger
from proxy.settings import Settings

# Told of every answer the server gives without the app: (status, reason for the log).
Refused = Callable[[int, str], None]

# A request line or one header field may be this long (aiohttp's parser limit, kept).
MAX_LINE_BYTES = 8190
# Around header values, whitespace that the app's header_bytes() does not count.
_HEAD_SLACK = 1024
# A refused connection is answered, then read and discarded this long before it is closed,
# so that the client reads the 503 instead of a reset. Beyond _MAX_LINGERING at once
# (a flood), a connection over the limit is closed without an answer.
_LINGER_SECONDS = 1.0
_MAX_LINGERING = 64
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FDS_BESIDES_CONNECTIONS = 256  # listening socket, upstream pool, cache files, lingering
_log = get_logger()


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float  # from a head's first byte (or the connection's start) to its end
    max_head_bytes: int  # an unfinished head larger than this is refused with 431
    max_connections: int
    via: str

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        server = settings.server
        return cls(
            header_timeout=server.header_timeout_seconds,
            max_head_bytes=MAX_LINE_BYTES + server.max_header_bytes + _HEAD_SLACK,
            max_connections=server.max_connections,
            via=settings.upstream.via,
        )


def raw_answer(error: ProxyError, via: str) -> bytes:
    """An error as HTTP/1.1 bytes, for answers written before aiohttp has a request to
    answer (no head yet, or an unfinished one): the body and headers of error_response."""
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    lines = [
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(["Retry-After: 1"] if isinstance(error, Overloaded) else []),
        *(f"{name}: {value}" for name, value in CORS.items()),
        f"Via: {via}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ProxyServer(web.Server):
    """aiohttp's low-level server, building ProxyRequestHandler connections."""

    def __init__(self, handler: Any, *, limits: Limits, refused: Refused, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.refused = refused
        self.lingering = 0

    @property
    def full(self) -> bool:
        return len(self._connections) >= self.limits.max_connections

    def __call__(self) -> RequestHandler:
        return ProxyRequestHandler(self, loop=self._loop, **self._kwargs)


class ProxyRequestHandler(RequestHandler):
    """One connection. Adds to aiohttp's: a deadline for each request head (aiohttp has
    none; its keep-alive timer closes only idle connections, and only at keepalive_seconds),
    a bound on the bytes of an unfinished head, the connection limit, and PluralKit's error
    shape for everything the parser refuses.

    A head starts when the connection opens and when the first byte of a new request arrives
    on an idle connection; it ends when the parser emits the request. A head that follows a
    pipelined request still being handled is bounded by aiohttp's limits and keep-alive."""

    __slots__ = (
        "_close_after_answer",
        "_deadline",
        "_head_bytes",
        "_head_start",
        "_limits",
        "_refused",
        "_refusing",
        "_request_line",
    )

    def __init__(self, manager: ProxyServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = manager.limits
        self._refused = manager.refused
        self._deadline: asyncio.TimerHandle | None = None  # the head's, or a refusal's linger
        self._head_bytes: int | None = None  # received of the unfinished head; None: no head
        self._head_start = b""  # the last head's first bytes: its method, for a 405
        self._request_line: int | None = None  # the last head's first line length, once seen
        self._refusing = False  # over the connection limit: answered 503, never read
        self._close_after_answer = False

    # -- the connection ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, ProxyServer) and manager.full:
            self._refuse_connection(manager, transport)
            return
        super().connection_made(transport)
        self._begin_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_deadline()
        if self._refusing:
            manager = self._manager
            if isinstance(manager, ProxyServer):
                manager.lingering -= 1
            self._manager = None
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusing or self.transport is None:
            return  # a refused connection's request is read and discarded
        waiter = self._waiter
        if self._head_bytes is None and waiter is not None and not waiter.done():
            self._begin_head()  # the first byte of a new request on an idle connection
        if self._head_bytes is not None:
            self._count_head(data)
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            self._end_head()  # a request (or a parse error) was emitted
            self._fail_unparsable_body()
        elif self._head_bytes is not None and self._head_bytes > self._limits.max_head_bytes:
            self._answer_and_close(
                HeadersTooLarge("431: request headers too large"), "head_too_large"
            )

    def _fail_unparsable_body(self) -> None:
        """aiohttp's parser drops a body it cannot parse (bad chunking) without telling the
        handler reading it, which would wait for body_timeout and then see the parse error
        answered as a second response. The handler is told at once (400) instead, and the
        connection closes after that answer."""
        message, _ = self._messages[-1]
        request = self._current_request
        if isinstance(message, RawRequestMessage) or request is None:
            return
        if not request.content.is_eof():
            request.content.set_exception(RequestPayloadError("malformed request body"))
            self._close_after_answer = True

    # -- request heads ----------------------------------------------------------------
    def _begin_head(self) -> None:
        self._head_bytes = 0
        self._head_start = b""
        self._request_line = None
        self._cancel_deadline()
        self._deadline = self._loop.call_later(self._limits.header_timeout, self._head_timed_out)

    def _count_head(self, data: bytes) -> None:
        received = self._head_bytes or 0
        if self._request_line is None:
            newline = data.find(b"\n")
            if newline >= 0:
                self._request_line = received + newline
        if len(self._head_start) < 24:
            self._head_start += data[: 24 - len(self._head_start)]
        self._head_bytes = received + len(data)

    def _end_head(self) -> None:
        self._head_bytes = None
        self._cancel_deadline()

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self._head_bytes is None or self.transport is None:
            return
        if self._head_bytes == 0:
            # A connection that never sent a byte gets no answer, as it asked nothing.
            self._refused_quietly("header_timeout_idle")
            return
        seconds = self._limits.header_timeout
        error = RequestTimeout(f"408: request head not received within {seconds:g} s")
        self._answer_and_close(error, "header_timeout")

    def _answer_and_close(self, error: ProxyError, reason: str) -> None:
        if self.transport is not None:
            self.transport.write(raw_answer(error, self._limits.via))
        self._head_bytes = None
        self._refused(error.status, reason)
        self.force_close()  # after the buffered answer is written

    def _refused_quietly(self, reason: str) -> None:
        _log.debug("connection.closed", reason=reason)
        self._head_bytes = None
        self.force_close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # -- over the connection limit ----------------------------------------------------
    def _refuse_connection(self, manager: ProxyServer, transport: asyncio.BaseTransport) -> None:
        """Answer 503 at once, without reading a request; existing connections go on."""
        self._refusing = True
        manager.refused(503, "max_connections")
        manager.lingering += 1  # until connection_lost
        assert isinstance(transport, asyncio.Transport)
        if manager.lingering > _MAX_LINGERING:
            transport.abort()
            return
        error = Overloaded("503: too many connections to pkproxy; retry shortly")
        transport.write(raw_answer(error, self._limits.via))
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = self._loop.call_later(_LINGER_SECONDS, transport.close)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """After a 408, a body that could not be parsed, or any answer that closes the
        connection while the body is unread (413, 503, 417), the connection closes once the
        answer is written: aiohttp would otherwise linger reading what is left of the body
        for up to 10 s (and re-raise its parse error while doing so)."""
        if isinstance(resp, RawAnswer):
            return await self._write_raw(resp)
        answered = await super().finish_response(request, resp, start_time)
        unread = not resp.keep_alive and not request.content.is_eof()
        if resp.status == 408 or self._close_after_answer or unread:
            self.force_close()  # a refusal that leaves a body unread: close, do not linger
        return answered

    async def _write_raw(self, answer: RawAnswer) -> tuple[Any, bool]:
        """The quick path's answer, as it was rendered; (answer, True) if the client has
        gone. Like aiohttp's writer, waits while the client reads slower than it is sent.
        What aiohttp's finish_response does besides is not needed for what the quick path
        answers: no body to release (it declines bodies), no declined upgrade to undo (it
        declines upgrades), no access log (the runner has none: request.completed is it)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return answer, True
        if answer.body:
            transport.writelines((answer.head, answer.body))
        else:
            transport.write(answer.head)
        if self.writing_paused:
            await self._drain_helper()
        return answer, False

    # -- errors aiohttp answers itself ------------------------------------------------
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Every answer aiohttp would give in text/plain, in PluralKit's JSON shape: parse
        errors (400, 405, 414, 431), a handler's unexpected exception (500) or timeout (504)."""
        error, reason = self._shape(status, exc)
        if error.status == 500:
            _log.error("request.failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        self._refused(error.status, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has started already; the connection is dropped")
        response = error_response(error, self._limits.via)
        response.force_close()
        return response

    def _shape(self, status: int, exc: BaseException | None) -> tuple[ProxyError, str]:
        if isinstance(exc, LineTooLong):
            line = self._request_line
            if line is None or line > self.max_line_size:
                return UriTooLong("414: request line too long"), "request_line_too_long"
            return HeadersTooLarge("431: request header field too large"), "header_too_long"
        if isinstance(exc, BadHttpMethod):
            return self._method_error(), "bad_method"
        if isinstance(exc, BadHttpMessage) and "too many headers" in exc.message.lower():
            return HeadersTooLarge("431: too many request headers"), "too_many_headers"
        if status == 500:
            return Internal("500: internal proxy error"), f"internal: {type(exc).__name__}"
        if status == 504:
            return UpstreamTimeout("504: timed out"), "handler_timeout"
        kind = type(exc).__name__ if exc is not None else "unknown"
        return BadRequest(f"400: malformed request ({kind})"), f"bad_request: {kind}"

    def _method_error(self) -> ProxyError:
        """405 for a method token aiohttp's parser does not know (the proxy does not forward
        it either); 400 for a request line that is not HTTP at all (TLS, garbage)."""
        method = self._head_start.lstrip(b"\r\n").split(b" ", 1)[0]
        if _TOKEN.fullmatch(method):
            try:
                check_method(method.decode("ascii"))
            except MethodNotAllowed as refusal:
                return refusal
        return BadRequest("400: malformed request line")


class ProxyRunner(web.AppRunner):
    """The one way the app is served (`pkproxy` and the end-to-end tests): aiohttp's runner
    with ProxyServer connections and the server settings."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(
            app,
            handler_cancellation=True,  # a client that disconnects while queued frees its slot
            access_log=None,  # request.completed is the access log
            keepalive_timeout=settings.server.keepalive_seconds,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            shutdown_timeout=settings.upstream.timeout_seconds + 1,
            # A request body is forwarded as it was sent, its Content-Encoding with it (and
            # counted as received): aiohttp would otherwise decompress it on the way in.
            auto_decompress=False,
        )
        self._limits = Limits.of(settings)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup
        gateway = self.app[GATEWAY]
        quick, whole = gateway.quick, plain.request_handler

        async def handler(request: web.BaseRequest) -> Any:
            """A fresh hit is answered here; every other request goes through the app."""
            answer = quick(request)
            return answer if answer is not None else await whole(request)

        return ProxyServer(
            handler,
            request_factory=plain.request_factory,
            limits=self._limits,
            refused=gateway.refused,
            **self._kwargs,
        )


def raise_fd_limit(max_connections: int) -> tuple[int, int]:
    """Raise the soft limit on open files towards what max_connections needs (at most the
    hard limit); returns (limit now, limit needed)."""
    needed = max_connections + _FDS_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, needed

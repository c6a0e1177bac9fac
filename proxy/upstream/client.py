"""The upstream client: one shared ClientSession to the fixed origin, errors mapped once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.clock import Clock
from proxy.core.errors import UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from proxy.settings import UpstreamSettings


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float
    shared: bool = False  # stored by another replica's fetch, read from the shared tier

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


@contextmanager
def _map_errors(timeout: float, host: str) -> Iterator[None]:
    """Translate aiohttp's and asyncio's errors into the proxy's, in one place. The client
    gets a short message; the log's reason names the kind and the host."""
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(
            f"upstream did not answer within {timeout:g} s", f"timeout: {host}"
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        cause = exc.os_error.strerror or str(exc)
        raise UpstreamUnavailable(
            f"cannot connect to upstream: {cause}", f"connect_failed: {host}: {cause}"
        ) from exc
    except aiohttp.ClientError as exc:
        kind = type(exc).__name__
        raise UpstreamUnavailable(
            f"upstream connection failed ({kind})", f"connection_lost: {host}: {kind}"
        ) from exc


@dataclass(frozen=True, slots=True)
class _SentHook:
    callback: Callable[[], None] | None


async def _headers_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    hook = context.trace_request_ctx
    if isinstance(hook, _SentHook) and hook.callback is not None:
        hook.callback()


class Upstream:
    """Sends one request to the fixed upstream origin; never follows redirects."""

    def __init__(self, settings: UpstreamSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._origin = settings.url
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._settings.max_connections, ttl_dns_cache=300)
        tracing = aiohttp.TraceConfig()
        tracing.on_request_headers_sent.append(_headers_sent)
        self._session = aiohttp.ClientSession(
            trace_configs=[tracing],
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=self._settings.timeout_seconds,
                connect=self._settings.connect_timeout_seconds,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # aiohttp resends an idempotent request once when a reused connection fails, even
        # after upstream received (and charged) it: a send the pacer never granted, which
        # PluralKit answers 429. A failed send is the client's 502 instead. No public switch
        # exists; aiohttp's own test client turns it off the same way.
        self._session._retry_connection = False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, path_and_query: str) -> URL:
        # The origin is fixed; the path was validated by admission and is sent as is.
        return URL(str(self._origin) + path_and_query, encoded=True)

    async def send(
        self,
        method: str,
        path_and_query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        on_headers_sent: Callable[[], None] | None = None,
    ) -> UpstreamResponse:
        """Send one request. `on_headers_sent` is called when its headers are written to the
        connection, after any connection setup, which is when pacing must count it sent."""
        assert self._session is not None, "Upstream.start() was not awaited"
        started = self._clock.monotonic()
        with _map_errors(self._settings.timeout_seconds, self._origin.authority):
            async with self._session.request(
                method,
                self.url(path_and_query),
                headers=CIMultiDict(headers),
                data=body if body or method in {"POST", "PATCH", "PUT"} else None,
                allow_redirects=False,
                trace_request_ctx=_SentHook(on_headers_sent),
            ) as response:
                payload = await _read_capped(response, method, self._settings.max_body_bytes)
                raw_headers = [
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers
                ]
                return UpstreamResponse(
                    response.status, raw_headers, payload, self._clock.monotonic() - started
                )


_CHUNK = 65536


async def _read_capped(response: aiohttp.ClientResponse, method: str, limit: int) -> bytes:
    """The body, if it is at most `limit` bytes as sent (still encoded). An announced
    Content-Length over the limit is refused before a byte of the body is read; a body that
    grows past it while read is cut off. Either way the connection is dropped, not reused."""
    announced = response.content_length
    if method != "HEAD" and announced is not None and announced > limit:
        response.close()
        raise _too_large(response, f"Content-Length {announced} > {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            response.close()
            raise _too_large(response, f"body cut off past {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(response: aiohttp.ClientResponse, seen: str) -> UpstreamTooLarge:
    host = response.url.authority
    return UpstreamTooLarge("upstream response too large", f"too_large: {host}: {seen}")

"""Hostile peers: an upstream that answers too much, clients that send what aiohttp's parser
refuses, stall, trickle, or open too many connections. The proxy is served by ProxyRunner,
as `pkproxy` serves it, and spoken to over raw sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.settings import Settings
from tests.conftest import proxy_settings
from tests.fakepk import FakePluralKit
from tests.served import (
    GUARD_SECONDS,
    Answer,
    exchange,
    read_all,
    read_answer,
    request,
    serving,
)

CAP = 4096  # upstream.max_body_bytes in these tests
TOO_LARGE = {"message": "upstream response too large", "code": 0}
Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


def assert_pluralkit_shaped(answer: Answer, status: int) -> None:
    """The proxy's own error: PluralKit's JSON body, CORS and Via like every other answer."""
    assert answer.status == status, answer
    assert answer.headers["content-type"].startswith("application/json"), answer
    body = answer.json()
    assert set(body) == {"message", "code"}, body
    assert body["code"] == 0 and body["message"].startswith(f"{status}: "), body
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "pkproxy" in answer.headers["via"]


# -- an upstream that answers too much ------------------------------------------------


class Oversized:
    """An upstream that answers each path with a behaviour a test sets, counting arrivals."""

    def __init__(self) -> None:
        self.paths: dict[str, list[Behaviour]] = {}
        self.arrivals: list[str] = []

    def answer(self, path: str, *behaviours: Behaviour) -> None:
        """Answer `path` with these behaviours in turn (the last one repeats)."""
        self.paths[path] = list(behaviours)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(request.path)
        queue = self.paths[request.path]
        behaviour = queue.pop(0) if len(queue) > 1 else queue[0]
        return await behaviour(request)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def sized(size: int) -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * size, content_type="application/json")

    return answer


def announced_then_silent(size: int) -> Behaviour:
    """Headers announcing `size` bytes, then nothing: only a client that reads the body
    waits (until its timeout)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = size
        await response.prepare(request)
        await asyncio.sleep(60)  # cancelled when the proxy drops the connection
        return response

    return answer


def chunked(total: int | None) -> Behaviour:
    """A chunked body of `total` bytes, or one that never ends (None)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        while total is None or sent < total:
            chunk = 1024 if total is None else min(1024, total - sent)
            await response.write(b"x" * chunk)
            sent += chunk
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    return answer


@pytest.fixture
def oversized() -> Oversized:
    return Oversized()


@pytest.fixture
async def capped(
    aiohttp_server: Any, oversized: Oversized, tmp_path: Path
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """The proxy in front of the oversized upstream with upstream.max_body_bytes = CAP;
    yields its base URL and a client."""
    upstream: TestServer = await aiohttp_server(oversized.app())
    settings = proxy_settings(
        str(upstream.make_url("/")), tmp_path / "cache", upstream={"max_body_bytes": CAP}
    )
    async with serving(settings) as port, aiohttp.ClientSession() as http:
        yield f"http://127.0.0.1:{port}", http


async def get(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any, str]:
    async with http.get(url, headers=headers) as r:
        body = await r.json() if r.status >= 400 else await r.read()
        return r.status, body, r.headers.get("X-Cache", "")


async def test_announced_length_over_the_cap_is_refused_before_the_body(
    capped: tuple[str, aiohttp.ClientSession], oversized: Oversized
) -> None:
    """An answer announcing more than upstream.max_body_bytes gets a PluralKit-shaped 502 at
    once: its body is never waited for (reading it would end in a 504 at the timeout)."""
    base, http = capped
    oversized.answer("/v2/members/abcde", announced_then_silent(CAP + 1))
    status, body, _ = await get(http, f"{base}/v2/members/abcde")
    assert (status, body) == (502, TOO_LARGE)


async def test_a_body_that_grows_past_the_cap_is_cut_off(
    capped: tuple[str, aiohttp.ClientSession], oversized: Oversized
) -> None:
    """A chunked answer that never ends is cut off at the cap with a 502, on the cached and
    the credentialed path alike (read to its end, it would end in a 504 at the timeout)."""
    base, http = capped
    oversized.answer("/v2/members/abcde", chunked(None))
    assert (await get(http, f"{base}/v2/members/abcde"))[:2] == (502, TOO_LARGE)
    credentialed = await get(http, f"{base}/v2/members/abcde", Authorization="token-exmpl")
    assert credentialed[:2] == (502, TOO_LARGE)


async def test_an_over_cap_answer_is_not_cached(
    capped: tuple[str, aiohttp.ClientSession], oversized: Oversized
) -> None:
    """A finite answer over the cap is refused and not stored: the next request goes
    upstream again and gets the (now small) answer as a MISS."""
    base, http = capped
    oversized.answer("/v2/members/abcde", chunked(CAP * 2), sized(100))
    assert (await get(http, f"{base}/v2/members/abcde"))[:2] == (502, TOO_LARGE)
    status, _, cache = await get(http, f"{base}/v2/members/abcde")
    assert (status, cache) == (200, "MISS")
    assert oversized.arrivals == ["/v2/members/abcde"] * 2


async def test_an_answer_of_exactly_the_cap_passes_and_is_cached(
    capped: tuple[str, aiohttp.ClientSession], oversized: Oversized
) -> None:
    """The cap is inclusive: CAP bytes (announced or chunked) are served and stored."""
    base, http = capped
    oversized.answer("/v2/members/abcde", sized(CAP))
    oversized.answer("/v2/members/fghij", chunked(CAP))
    for path in ("/v2/members/abcde", "/v2/members/fghij"):
        status, body, cache = await get(http, base + path)
        assert (status, len(body), cache) == (200, CAP, "MISS")
        assert (await get(http, base + path))[2] == "HIT"


async def test_a_head_answer_announcing_a_large_body_passes(
    capped: tuple[str, aiohttp.ClientSession], oversized: Oversized
) -> None:
    """A HEAD answer has no body: the length it announces is not held against the cap."""
    base, http = capped
    oversized.answer("/v2/members/abcde", sized(CAP * 4))
    headers = {"Authorization": "token-exmpl"}  # forwarded as HEAD (the cache sends GET)
    async with http.head(f"{base}/v2/members/abcde", headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(CAP * 4)


# -- what aiohttp's parser refuses, and other refusals, in PluralKit's shape ----------


def settings(upstream: TestServer, tmp_path: Path, **server: Any) -> Settings:
    return proxy_settings(str(upstream.make_url("/")), tmp_path / "cache", server=server)


@pytest.fixture
async def port(upstream: TestServer, tmp_path: Path) -> AsyncIterator[int]:
    async with serving(settings(upstream, tmp_path, max_body_bytes=1024)) as port:
        yield port


HEADERS_129 = tuple(f"X-Header-{n}: {n}" for n in range(129))
REFUSALS = [
    pytest.param(request("BREW", "/v2/members/abcde"), 405, id="unknown-method"),
    pytest.param(request("GET", "/v2/members/abcde", "X-Big: " + "a" * 9000), 431, id="field"),
    pytest.param(request("GET", "/v2/" + "a" * 9000), 414, id="request-line"),
    pytest.param(request("GET", "/v2/members/abcde", *HEADERS_129), 431, id="header-count"),
    pytest.param(request("GET", "/v2/members/abcde", "Bad Name: 1"), 400, id="header-token"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, id="tls"),
    pytest.param(b"GET /v2/members/abcde HTTP/9.9\r\n\r\n", 400, id="version"),
    pytest.param(request("GET", "/v2/members/abcde", "Expect: tea"), 417, id="expectation"),
    pytest.param(
        request("POST", "/v2/members", "Content-Type: application/json", body=b"x" * 2048),
        413,
        id="body-length",
    ),
    pytest.param(
        request("POST", "/v2/members", "Transfer-Encoding: chunked")
        + b"800\r\n"
        + b"x" * 2048
        + b"\r\n0\r\n\r\n",
        413,
        id="body-chunked",
    ),
    pytest.param(
        request("POST", "/v2/members", "Transfer-Encoding: chunked") + b"zz\r\n", 400, id="chunk"
    ),
]


@pytest.mark.parametrize(("sent", "status"), REFUSALS)
async def test_every_refusal_has_pluralkit_shape(
    port: int, fake: FakePluralKit, sent: bytes, status: int
) -> None:
    """What aiohttp's parser refuses before any handler runs (unknown method, oversized
    line, field or header count, garbage) and what the proxy refuses while reading the body
    is answered in PluralKit's JSON shape with the fitting status, and never sent upstream."""
    answers = await exchange(port, sent)
    assert len(answers) == 1, answers
    assert_pluralkit_shaped(answers[0], status)
    assert fake.arrivals == []


async def test_a_body_that_breaks_its_chunking_midway_is_refused_at_once(
    port: int, fake: FakePluralKit
) -> None:
    """A chunked body whose framing breaks after the head was handled gets one 400 at once
    (aiohttp's parser drops the body without telling the handler, which would wait for the
    body timeout and then see the parse error answered a second time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request("POST", "/v2/members", "Transfer-Encoding: chunked") + b"5\r\nabcde\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)  # the head is handled, and the body awaited, before the break
    writer.write(b"zz\r\n")
    answers = await _answers_until_closed(reader, writer)
    assert len(answers) == 1, answers
    assert_pluralkit_shaped(answers[0], 400)
    assert fake.arrivals == []


async def _answers_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> list[Answer]:
    from tests.served import parse_answers

    try:
        return parse_answers(await read_all(reader))
    finally:
        writer.close()


async def test_expect_100_continue_is_still_honoured(port: int, fake: FakePluralKit) -> None:
    """A client that waits for `100 Continue` before its body gets it, then the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    fields = ("Authorization: token-exmpl", "Expect: 100-continue", "Content-Length: 2")
    writer.write(request("PATCH", "/v2/members/abcde", *fields))
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD_SECONDS)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"{}")
    assert (await read_answer(reader)).status == 200
    writer.close()
    assert fake.arrivals[-1].body == b"{}"


# -- stalled, trickling and idle connections ------------------------------------------


async def test_a_stalled_request_head_is_answered_408_and_closed(
    upstream: TestServer, tmp_path: Path
) -> None:
    """Half a request line, then silence: after server.header_timeout_seconds the client
    gets a PluralKit-shaped 408 and the connection is closed (aiohttp alone keeps it until
    its keep-alive timer, 75 s by default)."""
    async with serving(settings(upstream, tmp_path, header_timeout_seconds=0.3)) as port:
        answers = await exchange(port, b"GET /v2/memb")
    assert len(answers) == 1
    assert_pluralkit_shaped(answers[0], 408)


async def test_a_trickled_head_is_cut_at_the_header_deadline(
    upstream: TestServer, tmp_path: Path
) -> None:
    """The header timeout bounds the whole head, not the gap between bytes: a client that
    sends one byte every 50 ms never completes a head within the deadline."""
    line = b"GET /v2/members/abcde HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 1000

    async def trickle(writer: asyncio.StreamWriter) -> None:
        for byte in line:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    async with serving(settings(upstream, tmp_path, header_timeout_seconds=0.5)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        trickling = asyncio.create_task(trickle(writer))
        try:
            answers = await _answers_until_closed(reader, writer)
        finally:
            trickling.cancel()
    assert len(answers) == 1
    assert_pluralkit_shaped(answers[0], 408)


async def test_a_connection_that_never_speaks_is_closed_without_an_answer(
    upstream: TestServer, tmp_path: Path
) -> None:
    """A new connection that sends nothing is closed at the header deadline, unanswered
    (it asked nothing)."""
    async with serving(settings(upstream, tmp_path, header_timeout_seconds=0.3)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _answers_until_closed(reader, writer) == []


async def test_an_idle_keep_alive_connection_outlives_the_header_deadline(
    upstream: TestServer, tmp_path: Path
) -> None:
    """Between requests the keep-alive timeout applies, not the header timeout: a connection
    idle for longer than the header deadline still serves its next request."""
    config = settings(upstream, tmp_path, header_timeout_seconds=0.2, keepalive_seconds=30)
    async with serving(config) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(2):
                writer.write(request("GET", "/healthz"))
                assert (await read_answer(reader)).status == 200
                await asyncio.sleep(0.5)  # idle past the header deadline
        finally:
            writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_seconds(
    upstream: TestServer, tmp_path: Path
) -> None:
    """server.keepalive_seconds reaches the server: an idle connection is closed by it."""
    async with serving(settings(upstream, tmp_path, keepalive_seconds=0.3)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("GET", "/healthz"))
        assert (await read_answer(reader)).status == 200
        assert await _answers_until_closed(reader, writer) == []


async def test_an_unfinished_head_larger_than_allowed_is_refused_before_it_ends(
    upstream: TestServer, tmp_path: Path
) -> None:
    """Header lines that keep coming (each within aiohttp's limits, never ending the head)
    are refused with 431 once they exceed what server.max_header_bytes allows, instead of
    being buffered up to aiohttp's 128 fields of 8 KiB."""
    head = request("GET", "/v2/members/abcde").removesuffix(b"\r\n")
    fields = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"p" * 1000) for n in range(60))
    async with serving(settings(upstream, tmp_path, max_header_bytes=16384)) as port:
        answers = await exchange(port, head + fields)
    assert len(answers) == 1
    assert_pluralkit_shaped(answers[0], 431)


async def test_a_slow_body_is_answered_408_and_nothing_is_sent_upstream(
    upstream: TestServer, fake: FakePluralKit, tmp_path: Path
) -> None:
    """A body that does not arrive within server.body_timeout_seconds gets a PluralKit-
    shaped 408, the connection closes at once (no lingering for the rest), and nothing
    reaches upstream."""
    head = request("POST", "/v2/members", "Authorization: token-exmpl", "Content-Length: 100")
    async with serving(settings(upstream, tmp_path, body_timeout_seconds=0.3)) as port:
        answers = await exchange(port, head + b'{"name":')
    assert len(answers) == 1
    assert_pluralkit_shaped(answers[0], 408)
    assert fake.arrivals == []


# -- too many connections -------------------------------------------------------------


async def test_connections_past_the_limit_are_refused_and_the_others_keep_working(
    upstream: TestServer, tmp_path: Path
) -> None:
    """With server.max_connections open, a new connection gets a PluralKit-shaped 503 and is
    closed; the open ones keep being served; once one closes, a new one is served."""
    async with serving(settings(upstream, tmp_path, max_connections=3)) as port:
        open_ = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for reader, writer in open_:
            writer.write(request("GET", "/healthz"))
            assert (await read_answer(reader)).status == 200
        refused = await exchange(port, request("GET", "/healthz"))
        assert len(refused) == 1
        assert_pluralkit_shaped(refused[0], 503)
        for reader, writer in open_:
            writer.write(request("GET", "/healthz"))
            assert (await read_answer(reader)).status == 200
        reader, writer = open_.pop()
        writer.close()
        await writer.wait_closed()
        assert await _served_again(port)
        for _, writer in open_:
            writer.close()


async def _served_again(port: int) -> bool:
    """Whether a new connection is served within the guard (the server counts a closed
    connection out once its handler has finished)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while loop.time() < deadline:
        answers = await exchange(port, request("GET", "/healthz", "Connection: close"))
        if answers and answers[0].status == 200:
            return True
        await asyncio.sleep(0.02)
    return False


# -- an upstream that resets connections ----------------------------------------------


async def test_a_request_upstream_reset_is_not_sent_again(
    fake: FakePluralKit, upstream: TestServer, tmp_path: Path
) -> None:
    """A connection upstream resets after receiving a request (and charging it) is a
    PluralKit-shaped 502, not a silent second send that the pacer never granted (aiohttp
    resends idempotent requests once on a reused connection)."""
    fake.reset_every = 2  # the second request: on the connection the first one left open
    config = proxy_settings(str(upstream.make_url("/")), tmp_path / "cache")
    async with serving(config) as port, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/v2/members/abcde"
        headers = {"Authorization": "token-exmpl"}
        for expected in (200, 502):
            async with http.get(url, headers=headers) as r:
                assert r.status == expected
                if expected == 502:
                    assert (await r.json())["code"] == 0
    assert len(fake.arrivals) == 2

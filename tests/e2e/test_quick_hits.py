"""The quick hit path (issue 13): a fresh entry in the memory tier is answered from bytes
rendered ahead, before aiohttp's router and without a response object. It must give the
answer the whole path gives, header for header, and keep aiohttp's connection semantics
(HEAD, HTTP/1.0, Connection: close, pipelining, a client that does not read)."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, make_mocked_request

from proxy.app import GATEWAY, METRICS, create_app
from proxy.cache.memory import MemoryFront
from proxy.cache.store import Entry
from proxy.core import cachepolicy
from proxy.flow.responses import RawAnswer
from tests.clocks import SteppedWall
from tests.conftest import MakeProxy, ServeProxy, proxy_settings
from tests.fakepk import FakePluralKit
from tests.served import GUARD_SECONDS, ProxyTestServer, exchange, parse_answers, read_all, request

MEMBER = "/v2/members/abcde"
IDENTITY = {"Accept-Encoding": "identity"}  # the class of a request that names none


@dataclass(frozen=True, slots=True)
class RawAnswerSeen:
    status_line: str
    headers: list[tuple[str, str]]  # as sent: names, order and values
    body: bytes
    closed: bool  # the server closed the connection after it

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        return found[-1] if found else None


async def ask(port: int, data: bytes, *, head_only: bool = False) -> RawAnswerSeen:
    """Send one request on a new connection; read one answer, then whether the server
    closes the connection by itself within a short while."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD_SECONDS)
        lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
        body = b"" if head_only else await reader.readexactly(length)
        try:
            rest = await asyncio.wait_for(reader.read(1), 0.3)
            closed = rest == b""
        except TimeoutError:
            closed = False
        return RawAnswerSeen(lines[0], headers, body, closed)
    finally:
        writer.close()


@pytest.fixture
def fake() -> FakePluralKit:
    """Upstream's own limit out of the way: two proxies fill their caches from it."""
    return FakePluralKit({"generic": 50.0})


@pytest.fixture
async def two_proxies(
    fake: FakePluralKit, upstream: TestServer, tmp_path: Path, serve_proxy: ServeProxy
) -> AsyncIterator[tuple[TestServer, TestServer]]:
    """The same settings and wall clock, served twice: as `pkproxy` serves (quick path in
    front) and by aiohttp's own runner (the whole path only)."""
    clock = SteppedWall()
    url = str(upstream.make_url("/"))
    quick = await serve_proxy(proxy_settings(url, tmp_path / "quick"), clock)
    whole = TestServer(create_app(proxy_settings(url, tmp_path / "whole"), clock))
    await whole.start_server()
    assert isinstance(quick, ProxyTestServer) and not isinstance(whole, ProxyTestServer)
    yield quick, whole
    await whole.close()


CASES = [
    pytest.param(request("GET", MEMBER), MEMBER, False, id="get"),
    pytest.param(request("HEAD", MEMBER), MEMBER, True, id="head"),
    pytest.param(request("GET", MEMBER, "Connection: close"), MEMBER, False, id="close"),
    pytest.param(f"GET {MEMBER} HTTP/1.0\r\n\r\n".encode(), MEMBER, False, id="http10"),
    pytest.param(
        f"GET {MEMBER} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode(),
        MEMBER,
        False,
        id="http10-keep-alive",
    ),
    pytest.param(request("GET", MEMBER, "Accept-Encoding: gzip"), MEMBER, False, id="gzip-variant"),
    pytest.param(request("GET", "/v2/members/zzzzz"), "/v2/members/zzzzz", False, id="cached-404"),
    pytest.param(
        request("GET", "/v2/systems/exmpl/fronters"),
        "/v2/systems/exmpl/fronters",
        False,
        id="cached-204-whole-path",
    ),
]


@pytest.mark.parametrize(("data", "path", "head_only"), CASES)
async def test_a_quick_hit_is_the_whole_paths_answer_header_for_header(
    two_proxies: tuple[TestServer, TestServer], data: bytes, path: str, head_only: bool
) -> None:
    quick, whole = two_proxies
    gzip = b"gzip" in data
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        for proxy in (quick, whole):  # fill each cache once
            fill = {"Accept-Encoding": "gzip" if gzip else "identity"}
            async with http.get(proxy.make_url(path), headers=fill) as r:
                assert r.headers["X-Cache"] == "MISS"
    fast, slow = await asyncio.gather(
        ask(quick.port, data, head_only=head_only), ask(whole.port, data, head_only=head_only)
    )
    assert fast.header("X-Cache") == "HIT"
    assert (fast.status_line, fast.body, fast.closed) == (slow.status_line, slow.body, slow.closed)
    assert [k for k, _ in fast.headers] == [k for k, _ in slow.headers]
    for (name, mine), (_, theirs) in zip(fast.headers, slow.headers, strict=True):
        if name == "Date":  # the quick path's is the proxy clock's wall, aiohttp's is time()
            assert email.utils.parsedate_to_datetime(mine).tzname() == "UTC"
        elif name == "X-RateLimit-Reset":  # two proxies' pacers, a few ms apart
            assert abs(int(mine) - int(theirs)) < 1000
        else:
            assert mine == theirs, name


async def test_pipelined_hits_are_answered_in_order(
    make_proxy: MakeProxy, fake: FakePluralKit
) -> None:
    proxy = await make_proxy()
    paths = [MEMBER, "/v2/members/zzzzz", "/v2/systems/exmpl"]
    async with aiohttp.ClientSession() as http:
        for path in paths:
            async with http.get(proxy.make_url(path), headers=IDENTITY) as r:
                await r.read()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    burst = [request("GET", paths[n % 3]) for n in range(30)]
    writer.write(b"".join(burst) + request("GET", MEMBER, "Connection: close"))
    data = await read_all(reader)
    writer.close()
    answers = parse_answers(data)
    assert [a.status for a in answers] == [200, 404, 200] * 10 + [200]
    assert [a.headers["x-cache"] for a in answers] == ["HIT"] * 31
    assert answers[0].body == answers[-1].body and b"abcde" in answers[0].body
    assert len(fake.arrivals) == 3  # the fills: every other answer came from the cache


async def test_the_quick_path_answers_only_fresh_unremarkable_hits(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """What it declines goes the whole way (which shapes refusals and logs them)."""
    proxy = await make_proxy()
    async with http.get(proxy.make_url(MEMBER), headers=IDENTITY) as r:
        await r.read()
    gateway = proxy.app[GATEWAY]

    def quick(method: str = "GET", path: str = MEMBER, **headers: str) -> RawAnswer | None:
        mocked = make_mocked_request(method, path, headers=headers, app=proxy.app)
        return gateway.quick(mocked)

    answer = quick()
    assert isinstance(answer, RawAnswer) and answer.status == 200
    assert answer.body.startswith(b'{"id": "abcde"') and b"X-Cache: HIT\r\n" in answer.head
    assert quick("HEAD") is not None and quick("HEAD").body == b""  # type: ignore[union-attr]
    assert quick(Authorization="token") is None
    assert quick(**{"X-PluralKit-App": "x"}) is None
    assert quick(**{"X-PKProxy-Max-Wait": "soon"}) is None  # a 400 to shape
    assert quick(Expect="100-continue") is None
    assert quick("POST") is None
    assert quick(path="/v2/members/other") is None  # a miss
    assert quick(path="/v2/members/ABCDE") is not None  # ids fold to the same entry
    assert quick(path="/v2/members/abcde/../x") is None  # refused, on the whole path
    gateway.draining = True
    assert quick() is None
    gateway.draining = False
    exported = proxy.app[METRICS].render().decode()
    assert 'pkproxy_cache_lookups_total{result="hit"} 4.0' in exported


async def test_a_client_that_does_not_read_holds_back_the_answers(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Thousands of pipelined hits from a client that reads nothing: the proxy stops
    answering (and reading) once the client's window and its own buffer are full, instead
    of rendering every answer into memory; all arrive, in order, once it reads."""
    proxy = await make_proxy()
    async with http.get(proxy.make_url(MEMBER), headers=IDENTITY) as r:
        one = len(await r.read())
    count = 5000
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    server = proxy.runner.server  # type: ignore[union-attr]
    port = sock.getsockname()[1]

    def ours() -> list[Any]:  # this connection, as the server sees it
        return [h for h in server._connections if h.transport.get_extra_info("peername")[1] == port]

    while not ours():
        await asyncio.sleep(0.01)
    (handler,) = ours()
    # Small kernel buffers on both sides, so that what is held back shows in the proxy.
    handler.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer.write(request("GET", MEMBER) * count)
    buffered = -1
    for _ in range(100):  # until the server is stuck on the client
        await asyncio.sleep(0.02)
        now = handler.transport.get_write_buffer_size()
        if now == buffered:
            break
        buffered = now
    assert handler.writing_paused
    assert buffered < 256 * 1024  # about the transport's high-water mark, not 5000 answers
    answered = 0
    while answered < count:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD_SECONDS)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"X-Cache: HIT" in head
        await reader.readexactly(one)
        answered += 1
    writer.close()


async def test_an_upgrade_request_is_left_to_the_whole_path(make_proxy: MakeProxy) -> None:
    """An `Upgrade` puts aiohttp's parser in a mode that only its own answer takes it out
    of: a hit asked with one is answered the whole way, and the request pipelined behind
    it is still read and answered (it was never parsed, and timed out as a 408, when the
    quick path answered the first)."""
    proxy = await make_proxy()
    first = await exchange(proxy.port, request("GET", MEMBER, "Connection: close"))
    assert first[0].headers["x-cache"] == "MISS"
    answers = await exchange(
        proxy.port,
        request("GET", MEMBER, "Connection: Upgrade", "Upgrade: websocket")
        + request("GET", MEMBER, "Connection: close"),
    )
    assert [(a.status, a.headers["x-cache"]) for a in answers] == [(200, "HIT"), (200, "HIT")]


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param((("Content-Type", "text/plain"), ("Content-Length", "1")), b"x", id="length"),
        pytest.param((("Content-Type", "text/plain"), ("Server", "other")), b"x", id="server"),
        pytest.param((("Content-Type", "text/plain"),), b"", id="empty-body"),
        pytest.param((("Content-Length", "1"),), b"x", id="no-type"),
        pytest.param(
            (("Content-Type", "text/plain"), ("X-A", "x\r\nSet-Cookie: pwned=1")),
            b"x",
            id="split",
        ),
    ],
)
async def test_an_entry_the_quick_path_cannot_render_as_is_takes_the_whole_path(
    make_proxy: MakeProxy, headers: tuple[tuple[str, str], ...], body: bytes
) -> None:
    """Entries `_store` never writes (headers aiohttp writes itself, no body, no type, a
    header that could split the answer), as a shared store written by something else
    could hold: never rendered by the quick path."""
    proxy = await make_proxy()
    gateway = proxy.app[GATEWAY]
    cache = gateway.parts.cache
    assert isinstance(cache, MemoryFront)
    origin = str(gateway.settings.upstream.url)
    key = cachepolicy.cache_key(origin, MEMBER, "identity")
    cache.memory.set(key, Entry(200, headers, body, time.time(), 60.0, origin + MEMBER))
    assert gateway.quick(make_mocked_request("GET", MEMBER, app=proxy.app)) is None
    assert cache.memory.derived(key) is None

"""Forwarding: what reaches upstream, what comes back, and what never leaves the proxy."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.conftest import MakeProxy, ServeProxy
from tests.fakepk import FakePluralKit
from tests.served import read_answer, request
from tests.waits import arrivals_reach


def upstream_headers(fake: FakePluralKit, index: int = -1) -> dict[str, str]:
    return {k.lower(): v for k, v in fake.arrivals[index].headers}


async def test_credentials_reach_upstream_byte_for_byte(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Authorization and X-PluralKit-App arrive unchanged; hop-by-hop, control and PluralKit
    internal headers do not; Via is added; the client's User-Agent is kept."""
    proxy = await make_proxy()
    sent = {
        "Authorization": "token-exmpl",
        "X-PluralKit-App": "app-token-1",
        "User-Agent": "my-bot/1.0",
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "must not pass",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "X-PKProxy-Priority": "interactive",
        "X-PKProxy-Max-Wait": "5000",
        "X-PluralKit-Client-IP": "1.2.3.4",
        "X-PluralKit-InternalAuth": "forged",
        "X-PluralKit-SystemId": "forged",
        "X-Forwarded-For": "6.6.6.6",
        "X-Custom": "kept",
    }
    async with http.get(proxy.make_url("/v2/members/prvmb"), headers=sent) as r:
        assert r.status == 200
        assert (await r.json())["description"] == "secret notes of Piper"
        assert r.headers["X-Cache"] == "BYPASS"
    got = upstream_headers(fake)
    assert got["authorization"] == "token-exmpl"
    assert got["x-pluralkit-app"] == "app-token-1"
    assert got["user-agent"] == "my-bot/1.0"
    assert got["x-custom"] == "kept"
    assert "1.1 pkproxy" in got["via"]
    for dropped in (
        "x-secret-hop",
        "keep-alive",
        "te",
        "x-pkproxy-priority",
        "x-pkproxy-max-wait",
        "x-pluralkit-client-ip",
        "x-pluralkit-internalauth",
        "x-pluralkit-systemid",
        "x-forwarded-for",
    ):
        assert dropped not in got, dropped


async def test_missing_user_agent_is_supplied(fake: FakePluralKit, make_proxy: MakeProxy) -> None:
    """PluralKit answers 400 without a User-Agent: the proxy always sends one."""
    proxy = await make_proxy()
    async with (
        aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as session,
        session.get(proxy.make_url("/v2/members/abcde"), headers={"Authorization": "x"}) as r,
    ):
        assert r.status == 200
    assert upstream_headers(fake)["user-agent"].startswith("pkproxy/")


async def test_bodies_statuses_and_encodings_pass_through(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A PATCH body reaches upstream intact; upstream errors come back unchanged; a gzip
    body keeps its Content-Encoding and bytes."""
    proxy = await make_proxy()
    async with http.patch(
        proxy.make_url("/v2/members/abcde"),
        json={"name": "Alicia"},
        headers={"Authorization": "token-exmpl"},
    ) as r:
        assert r.status == 200 and (await r.json())["name"] == "Alicia"
    assert fake.arrivals[-1].body == b'{"name": "Alicia"}'
    async with http.patch(
        proxy.make_url("/v2/members/abcde"), json={"name": "x"}, headers={"Authorization": "wrong"}
    ) as r:
        assert r.status == 401
        assert await r.json() == {"message": "Unauthorized", "code": 0}
    compressed = gzip.compress(b'{"id": "zipped"}')
    fake.force_status["/v2/messages/1"] = (200, compressed)
    fake.extra_headers["/v2/messages/1"] = {"Content-Encoding": "gzip"}
    async with http.get(proxy.make_url("/v2/messages/1"), headers={"Authorization": "t"}) as r:
        assert r.headers.get("Content-Encoding") == "gzip"
        assert await r.read() == compressed


async def test_redirects_are_passed_back_not_followed(
    aiohttp_server: object, make_proxy: MakeProxy, fake: FakePluralKit, http: aiohttp.ClientSession
) -> None:
    """A 3xx from upstream reaches the client as is."""
    fake.force_status["/v2/messages/2"] = (302, b"")
    fake.extra_headers["/v2/messages/2"] = {"Location": "http://elsewhere.example/"}
    proxy = await make_proxy()
    async with http.get(
        proxy.make_url("/v2/messages/2"), allow_redirects=False, headers={"Authorization": "t"}
    ) as r:
        assert r.status == 302
        assert r.headers["Location"] == "http://elsewhere.example/"
    assert len(fake.arrivals) == 1


async def test_options_is_answered_locally_like_pluralkit(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A CORS preflight is answered 200 with CORS headers and costs no budget."""
    proxy = await make_proxy()
    async with http.options(proxy.make_url("/v2/members/abcde")) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert fake.arrivals == []


RAW_BAD_REQUESTS = [
    ("GET /v2/../x HTTP/1.1", 400),
    ("GET /v2/members/%2e%2e/x HTTP/1.1", 400),
    ("GET /v2/members/%2E%2E%2Fsystems HTTP/1.1", 400),
    ("GET /v2/members/abc%2fde HTTP/1.1", 400),
    ("GET /v2/members/abc%5cde HTTP/1.1", 400),
    ("GET /v2/members/.. HTTP/1.1", 400),
    ("GET /v2//evil.example/x HTTP/1.1", 400),
    ("GET //evil.example/v2/x HTTP/1.1", 400),
    ("GET http://evil.example/v2/members/abcde HTTP/1.1", 400),
    ("GET /v2/members/abcde%00 HTTP/1.1", 400),
    ("TRACE /v2/members/abcde HTTP/1.1", 405),
    ("CONNECT evil.example:443 HTTP/1.1", 405),
    ("GET /admin HTTP/1.1", 404),
    ("GET /v1/systems/exmpl HTTP/1.1", 410),
]


def owner_patch(*headers: str) -> bytes:
    """The head of a PATCH of member abcde by its owner, as raw bytes."""
    return request("PATCH", "/v2/members/abcde", "Authorization: token-exmpl", *headers)


async def raw_request(port: int, request_line: str, extra: str = "") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{request_line}\r\nHost: api.pluralkit.me\r\n{extra}Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(("line", "status"), RAW_BAD_REQUESTS)
async def test_bad_input_is_refused_without_reaching_upstream(
    fake: FakePluralKit, make_proxy: MakeProxy, line: str, status: int
) -> None:
    """Traversal in any spelling, absolute-form, //host, CONNECT/TRACE, paths outside /v2:
    refused with PluralKit's error shape, and upstream sees nothing."""
    import json

    proxy = await make_proxy()
    got, body = await raw_request(proxy.port, line)
    assert got == status
    payload = json.loads(body)
    assert set(payload) == {"message", "code"} and payload["code"] == 0
    assert fake.arrivals == []


async def test_unknown_method_is_refused_by_the_http_parser(
    fake: FakePluralKit, make_proxy: MakeProxy
) -> None:
    """A method aiohttp's parser does not know is refused there, before the proxy's flow,
    with a 405 in PluralKit's shape."""
    import json

    proxy = await make_proxy()
    status, body = await raw_request(proxy.port, "BREW /v2/members/abcde HTTP/1.1")
    assert status == 405
    assert set(json.loads(body)) == {"message", "code"}
    assert fake.arrivals == []


async def test_v1_gets_pluralkits_410(make_proxy: MakeProxy, http: aiohttp.ClientSession) -> None:
    """/v1 answers exactly as PluralKit does."""
    proxy = await make_proxy()
    async with http.get(proxy.make_url("/v1/s/exmpl")) as r:
        assert r.status == 410
        assert await r.json() == {"message": "Unsupported API version", "code": 0}


async def test_oversized_body_is_refused_with_413_unread(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A body over the limit gets 413, declared or streamed, and nothing goes upstream."""
    proxy = await make_proxy(server={"max_body_bytes": 1024})
    async with http.patch(
        proxy.make_url("/v2/members/abcde"),
        data=b"x" * 5000,
        headers={"Authorization": "token-exmpl"},
    ) as r:
        assert r.status == 413
        assert (await r.json())["code"] == 0

    async def stream():  # no Content-Length: chunked
        for _ in range(10):
            yield b"y" * 500

    async with http.post(
        proxy.make_url("/v2/members"), data=stream(), headers={"Authorization": "token-exmpl"}
    ) as r:
        assert r.status == 413
    assert fake.arrivals == []


async def test_bodies_held_at_once_are_bounded(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Past server.max_buffered_body_bytes (all connections together), a write is refused
    with a PluralKit-shaped 503 (Retry-After 1): before its body is read when its announced
    length does not fit, before `100 Continue` when it asked for one, as it arrives when
    streamed. Bodies announced but not sent hold nothing. The bytes come back as requests
    are answered, and nothing refused goes upstream."""
    from proxy.app import GATEWAY, METRICS

    proxy = await make_proxy(
        server={"max_body_bytes": 1024, "max_buffered_body_bytes": 2048},
        budget={"scopes": [{"name": "all", "rate": 50}]},
    )
    fake.scopes = {"generic": 1000.0}
    fake.delay = 0.5  # the first two writes are held while upstream answers
    owner = {"Authorization": "token-exmpl"}
    url = proxy.make_url("/v2/members/abcde")

    async def patch(data: object) -> tuple[int, dict[str, object]]:
        async with http.patch(url, data=data, headers=owner) as r:
            assert r.status != 503 or r.headers["Retry-After"] == "1"
            return r.status, await r.json()

    # Two clients announce a body each and send nothing: they hold none of the budget.
    silent = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(2)]
    for _, writer in silent:
        writer.write(owner_patch("Content-Length: 1000"))
    held = [asyncio.create_task(patch(b'{"name": "' + b"x" * 990 + b'"}')) for _ in range(2)]
    gateway = proxy.app[GATEWAY]
    while gateway.bodies.held < 2000:
        await asyncio.sleep(0.01)
    status, body = await patch(b'{"name": "' + b"y" * 990 + b'"}')
    assert (status, body["code"]) == (503, 0) and "request bodies" in str(body["message"])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(owner_patch("Expect: 100-continue", "Content-Length: 1000"))
    answer = await read_answer(reader)  # the 503 itself, not "100 Continue"
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    writer.close()
    for _, writer in silent:
        writer.close()

    async def stream():  # no Content-Length: taken from the budget as it arrives
        for _ in range(4):
            yield b" " * 200

    status, _ = await patch(stream())
    assert status == 503
    exported = proxy.app[METRICS].render().decode()
    assert f"pkproxy_request_bodies_held_bytes {float(gateway.bodies.held)}" in exported
    assert [s for s, _ in await asyncio.gather(*held)] == [200, 200]
    assert gateway.bodies.held == 0
    assert len(fake.arrivals) == 2
    fake.delay = 0.0
    assert (await patch(b'{"name": "z"}'))[0] == 200
    assert gateway.bodies.held == 0


async def test_a_compressed_request_body_is_forwarded_as_sent(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A body sent with Content-Encoding: gzip reaches upstream as it was sent, with its
    encoding (aiohttp's server would decompress it and the header would lie)."""
    proxy = await make_proxy()
    sent = gzip.compress(b'{"name": "Zipped"}')
    async with http.patch(
        proxy.make_url("/v2/members/abcde"),
        data=sent,
        headers={"Authorization": "token-exmpl", "Content-Encoding": "gzip"},
    ) as r:
        assert r.status == 200 and (await r.json())["name"] == "Zipped"
    (arrival,) = fake.arrivals  # the fake's aiohttp decodes it, as a server may
    assert ("Content-Encoding", "gzip") in arrival.headers
    assert ("Content-Length", str(len(sent))) in arrival.headers
    assert arrival.body == b'{"name": "Zipped"}'


async def test_a_refused_body_closes_its_connection_at_once(
    fake: FakePluralKit, make_proxy: MakeProxy
) -> None:
    """A body refused unread (413 announced, or with Expect before 100 Continue) gets its
    answer and the connection closes at once, instead of aiohttp reading and discarding the
    rest for up to 10 s while the connection holds its slot."""
    proxy = await make_proxy(server={"max_body_bytes": 1024})
    for expect in ([], ["Expect: 100-continue"]):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(owner_patch("Content-Length: 5000", *expect) + b"x" * 100)
        answer = await read_answer(reader)
        assert answer.status == 413 and answer.json()["code"] == 0
        assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed, not lingering
        writer.close()
    assert fake.arrivals == []


async def test_oversized_headers_are_refused(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Headers over the configured total get 431 (one giant field: the server's own 400)."""
    proxy = await make_proxy(server={"max_header_bytes": 2048})
    many = {f"X-Filler-{n}": "z" * 200 for n in range(20)}
    async with http.get(proxy.make_url("/v2/members/abcde"), headers=many) as r:
        assert r.status == 431
        assert (await r.json())["code"] == 0
    status, _ = await raw_request(
        proxy.port, "GET /v2/members/abcde HTTP/1.1", f"X-Huge: {'h' * 20000}\r\n"
    )
    assert status in {400, 431}
    assert fake.arrivals == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_upstream_down_is_a_clear_502(
    serve_proxy: ServeProxy, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Connection refused upstream: 502 in PluralKit's shape, saying what happened."""
    from tests.conftest import proxy_settings

    settings = proxy_settings(f"http://127.0.0.1:{free_port()}", tmp_path)
    proxy = await serve_proxy(settings)
    async with http.get(proxy.make_url("/v2/members/abcde")) as r:
        assert r.status == 502
        body = await r.json()
        assert body["code"] == 0 and "connect" in body["message"]
    from proxy.app import METRICS

    exported = proxy.app[METRICS].render().decode()
    assert 'pkproxy_upstream_requests_total{scope="all",status="unreachable"} 1.0' in exported


async def test_upstream_slow_is_a_504_within_the_timeout(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """No answer within the configured timeout: 504, on time."""
    fake.delay = 3.0
    proxy = await make_proxy(upstream={"timeout_seconds": 0.5})
    started = time.monotonic()
    async with http.get(proxy.make_url("/v2/members/abcde")) as r:
        assert r.status == 504
        assert "0.5" in (await r.json())["message"]
    assert time.monotonic() - started < 1.5


async def test_client_that_disconnects_while_queued_is_never_sent(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A queued request whose client goes away gives its slot back: nothing is sent for it."""
    proxy = await make_proxy()
    first = asyncio.create_task(http.get(proxy.make_url("/v2/members/abcde?first=1")))
    await arrivals_reach(fake, 1)
    async with aiohttp.ClientSession() as impatient:
        with pytest.raises(asyncio.TimeoutError):
            await impatient.get(
                proxy.make_url("/v2/members/abcde?gone=1"), timeout=aiohttp.ClientTimeout(total=0.2)
            )
    (await first).release()
    # Pacing, not a barrier: let time pass beyond the slot the departed request would have
    # had, so that sending it by mistake would show in the arrivals.
    await asyncio.sleep(0.8)
    async with http.get(proxy.make_url("/v2/members/abcde?after=1")) as r:
        assert r.status == 200
    paths = [a.path for a in fake.arrivals]
    assert not any("gone" in p for p in paths)
    assert len(paths) == 2


async def test_request_completed_log_has_template_and_no_credentials(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """One request.completed per request, with the route template and never a credential."""
    proxy = await make_proxy()
    with capture_logs() as logs:
        async with http.get(
            proxy.make_url("/v2/members/ABC-DE"),
            headers={"Authorization": "super-secret-token", "X-PluralKit-App": "app-secret-value"},
        ) as r:
            assert r.status == 200
    events = [e for e in logs if e["event"] == "request.completed"]
    assert len(events) == 1
    event = events[0]
    assert event["route"] == "/v2/members/{ref}" and event["scope"] == "all"
    assert event["status"] == 200 and event["consumer"] == "127.0.0.1"
    assert {"queue_wait_ms", "upstream_ms", "method"} <= set(event)
    assert "super-secret-token" not in repr(logs) and "app-secret-value" not in repr(logs)


async def test_healthz(make_proxy: MakeProxy, http: aiohttp.ClientSession) -> None:
    """/healthz answers 200 and spends nothing."""
    proxy = await make_proxy()
    async with http.get(proxy.make_url("/healthz")) as r:
        assert r.status == 200


_ = web


async def test_credentialed_head_keeps_upstreams_content_length(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A HEAD forwarded as HEAD answers with the length upstream announced, and no body."""
    proxy = await make_proxy()
    async with http.get(proxy.make_url("/v2/members/abcde"), headers={"Authorization": "x"}) as r:
        length = len(await r.read())
    async with http.head(proxy.make_url("/v2/members/abcde"), headers={"Authorization": "x"}) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == length
        assert await r.read() == b""
    assert [a.method for a in fake.arrivals] == ["GET", "HEAD"]

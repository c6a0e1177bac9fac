"""The fake PluralKit behaves like the real server where the proxy depends on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fakepk import FakePluralKit

RATE_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Scope",
)
OWNER = {"Authorization": "token-exmpl"}
SYSTEM_UUID = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def pk() -> FakePluralKit:
    return FakePluralKit()


@pytest.fixture
async def server(aiohttp_server: Any, pk: FakePluralKit) -> TestServer:
    test_server: TestServer = await aiohttp_server(pk.app())
    return test_server


@pytest.fixture
async def client(aiohttp_client: Any, server: TestServer) -> TestClient[Any, Any]:
    test_client: TestClient[Any, Any] = await aiohttp_client(server)
    return test_client


@pytest.fixture
async def second() -> AsyncIterator[aiohttp.ClientSession]:
    """Another real HTTP client, as another program on the proxy's host would be."""
    async with aiohttp.ClientSession() as session:
        yield session


def rate_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {name: response.headers[name] for name in RATE_HEADERS if name in response.headers}


async def status_of(client: TestClient[Any, Any], path: str, **headers: str) -> int:
    async with client.get(path, headers=headers) as r:
        await r.read()
        return r.status


async def test_fresh_bucket_lets_one_through_then_charges_a_boundary_rejection(
    pk: FakePluralKit, client: TestClient[Any, Any]
) -> None:
    """At 2/s a fresh bucket passes one request; the next, at once, is a charged 429 with
    retry_after 0; the one after that is an uncharged 429 about 500 ms out."""
    answers = []
    for _ in range(3):
        async with client.get("/v2/members/abcde") as r:
            answers.append((r.status, rate_headers(r), await r.json()))
    (s1, h1, _), (s2, h2, b2), (s3, _, b3) = answers
    assert (s1, h1["X-RateLimit-Remaining"], h1["X-RateLimit-Scope"]) == (200, "1", "generic")
    assert (s2, h2["X-RateLimit-Remaining"]) == (429, "0")
    assert b2 == {
        "message": "429: too many requests",
        "retry_after": 0,
        "scope": "generic",
        "code": 0,
    }
    assert s3 == 429 and 400 <= b3["retry_after"] <= 500
    assert [(a.status, a.bucket) for a in pk.arrivals] == [
        (200, "127.0.0.1:generic"),
        (429, "127.0.0.1:generic"),
        (429, "127.0.0.1:generic"),
    ]


UNKNOWN_PATHS = [
    "/v2/nothing",
    "/v2/members/abcde/unknown",
    "/v2/members/abcde/groups/join",
    "/v2/messages/1/extra",
    "/v2/systems//members",
    "/v3/systems/exmpl",
    "/",
]


@pytest.mark.parametrize("path", UNKNOWN_PATHS)
async def test_unknown_route_is_404_not_rate_checked(
    pk: FakePluralKit, client: TestClient[Any, Any], path: str
) -> None:
    """A path outside PluralKit's route table answers 404 with an empty body and no rate
    headers, however often, and spends nothing of the bucket."""
    for _ in range(5):
        async with client.get(path) as r:
            assert r.status == 404 and await r.read() == b""
            assert rate_headers(r) == {}
    async with client.get("/v2/members/abcde") as r:
        assert r.status == 200 and r.headers["X-RateLimit-Remaining"] == "1"
    assert [a.scope for a in pk.arrivals] == [""] * 5 + ["generic"]


async def test_known_route_the_fake_does_not_serve_is_still_rate_checked(
    client: TestClient[Any, Any],
) -> None:
    """A route PluralKit knows but the fake does not implement is charged like any other."""
    async with client.get("/v2/systems/exmpl/settings") as r:
        assert r.status == 404 and r.headers["X-RateLimit-Scope"] == "generic"
    assert await status_of(client, "/v2/members/abcde") == 429


async def test_options_is_200_not_rate_checked(
    pk: FakePluralKit, client: TestClient[Any, Any]
) -> None:
    """OPTIONS answers 200 with CORS and no rate headers, and spends nothing."""
    for _ in range(5):
        async with client.options("/v2/members/abcde") as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
            assert rate_headers(r) == {}
    assert await status_of(client, "/v2/members/abcde") == 200
    assert [a.scope for a in pk.arrivals] == [""] * 5 + ["generic"]


async def test_v1_and_missing_user_agent_are_not_rate_checked(
    pk: FakePluralKit, server: TestServer
) -> None:
    """/v1 answers 410 and a request without User-Agent 400, neither spending the bucket."""
    async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as bare:
        for _ in range(3):
            async with bare.get(server.make_url("/v2/members/abcde")) as r:
                assert r.status == 400 and rate_headers(r) == {}
            async with bare.get(server.make_url("/v1/s/exmpl"), headers={"User-Agent": "t"}) as r:
                assert r.status == 410 and rate_headers(r) == {}
                assert await r.json() == {"message": "Unsupported API version", "code": 0}
        async with bare.get(server.make_url("/v2/members/abcde"), headers={"User-Agent": "t"}) as r:
            assert r.status == 200
    assert [a.scope for a in pk.arrivals] == [""] * 6 + ["generic"]


OWN_SYSTEM_REQUESTS = [
    ("GET", "/v2/systems/@me", "own_system_get"),
    ("GET", "/v2/systems/exmpl", "own_system_get"),
    ("GET", "/v2/systems/EX-MPL/members", "own_system_get"),
    ("GET", f"/v2/systems/{SYSTEM_UUID.upper()}/fronters", "own_system_get"),
    ("GET", "/v2/members/abcde", "own_system_get"),
    ("GET", "/v2/members/aaaaaaaa-0000-4000-8000-000000000002", "own_system_get"),
    ("GET", "/v2/groups/grpaa/members", "own_system_get"),
    ("HEAD", "/v2/members/prvmb", "own_system_get"),
    ("PATCH", "/v2/members/abcde", "own_system_update"),
    ("POST", "/v2/systems/@me/switches", "own_system_update"),
]


@pytest.mark.parametrize(("method", "path", "scope"), OWN_SYSTEM_REQUESTS)
async def test_token_on_its_own_system_is_charged_to_the_system(
    pk: FakePluralKit, client: TestClient[Any, Any], method: str, path: str, scope: str
) -> None:
    """A valid token on its own system, member or group is charged to a bucket keyed by
    the system, says so in X-RateLimit-Scope, and leaves the IP's bucket untouched."""
    body = {} if method in {"PATCH", "POST"} else None
    async with client.request(method, path, headers=OWNER, json=body) as r:
        assert r.status in {200, 204}
        assert r.headers["X-RateLimit-Scope"] == scope
    assert pk.arrivals[-1].bucket == f"exmpl:{scope}"
    assert await status_of(client, "/v2/members/zyxwv") == 200  # the IP bucket is fresh


NOT_OWN_SYSTEM_REQUESTS = [
    ({"Authorization": "token-exmpl"}, "/v2/systems/prvsy"),
    ({"Authorization": "token-exmpl"}, "/v2/members/zyxwv"),
    ({"Authorization": "token-exmpl"}, "/v2/messages/123456789012345678"),
    ({"Authorization": "not-a-token"}, "/v2/systems/exmpl"),
    ({}, "/v2/systems/exmpl"),
]


@pytest.mark.parametrize(("headers", "path"), NOT_OWN_SYSTEM_REQUESTS)
async def test_other_requests_are_charged_to_the_ip(
    pk: FakePluralKit, client: TestClient[Any, Any], headers: dict[str, str], path: str
) -> None:
    """Without a valid token, or on someone else's data, a request is charged by IP."""
    async with client.get(path, headers=headers) as r:
        assert r.status == 200 and r.headers["X-RateLimit-Scope"] == "generic"
    assert pk.arrivals[-1].bucket == "127.0.0.1:generic"


async def test_own_system_bucket_is_separate_from_the_ip_bucket(
    pk: FakePluralKit, client: TestClient[Any, Any]
) -> None:
    """An IP blocked by others still serves the owner's own-system requests, and an
    own-system bucket used up answers a 429 naming its own scope."""
    pk.block(5.0)
    assert await status_of(client, "/v2/members/zyxwv") == 429
    assert await status_of(client, "/v2/members/abcde", **OWNER) == 200
    async with client.get("/v2/members/abcde", headers=OWNER) as r:
        assert r.status == 429
        assert (await r.json())["scope"] == "own_system_get"
        assert r.headers["X-RateLimit-Scope"] == "own_system_get"


async def test_own_system_scope_can_have_its_own_rate(
    pk: FakePluralKit, client: TestClient[Any, Any]
) -> None:
    """An own_system scope listed in `scopes` uses that rate instead of the base scope's."""
    pk.scopes["own_system_get"] = 5.0
    statuses = [await status_of(client, "/v2/members/abcde", **OWNER) for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]


async def test_bucket_key_is_the_peer_address_by_default(
    pk: FakePluralKit, server: TestServer, second: aiohttp.ClientSession
) -> None:
    """Without `key_header`, a client's header naming an IP changes nothing: both clients
    of this host share one bucket."""
    async with second.get(server.make_url("/v2/members/abcde")) as r:
        assert r.status == 200
    async with second.get(
        server.make_url("/v2/members/abcde"), headers={"X-Fake-Client-Ip": "10.9.8.7"}
    ) as r:
        assert r.status == 429
    assert {a.bucket for a in pk.arrivals} == {"127.0.0.1:generic"}


async def test_key_header_lets_a_second_client_choose_its_bucket(
    pk: FakePluralKit,
    client: TestClient[Any, Any],
    server: TestServer,
    second: aiohttp.ClientSession,
) -> None:
    """With `key_header` set, a second client naming another IP spends its own bucket, and
    naming the first client's address spends the first client's bucket."""
    pk.key_header = "X-Fake-Client-Ip"
    assert await status_of(client, "/v2/members/abcde") == 200
    url = server.make_url("/v2/members/abcde")
    async with second.get(url, headers={"X-Fake-Client-Ip": "10.9.8.7"}) as r:
        assert r.status == 200
    async with second.get(url, headers={"X-Fake-Client-Ip": "127.0.0.1"}) as r:
        assert r.status == 429
    assert [(a.status, a.bucket) for a in pk.arrivals] == [
        (200, "127.0.0.1:generic"),
        (200, "10.9.8.7:generic"),
        (429, "127.0.0.1:generic"),
    ]

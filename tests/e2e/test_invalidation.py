"""Writes through the proxy evict what they make wrong; the next GET sees the write."""

from __future__ import annotations

import gzip

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import MakeProxy
from tests.fakepk import FakePluralKit

OWNER = {"Authorization": "token-exmpl"}


async def cached(http: aiohttp.ClientSession, proxy: TestServer, path: str) -> str:
    async with http.get(proxy.make_url(path)) as r:
        await r.read()
        return r.headers["X-Cache"]


async def warm(http: aiohttp.ClientSession, proxy: TestServer, paths: list[str]) -> None:
    for path in paths:
        await cached(http, proxy, path)
        assert await cached(http, proxy, path) == "HIT", path


async def write(
    http: aiohttp.ClientSession,
    proxy: TestServer,
    method: str,
    path: str,
    body: object,
    headers: dict[str, str] = OWNER,
) -> int:
    async with http.request(method, proxy.make_url(path), json=body, headers=headers) as r:
        await r.read()
        return r.status


@pytest.fixture
async def proxy(make_proxy: MakeProxy) -> TestServer:
    return await make_proxy(budget={"margin": 0.0, "scopes": [{"name": "all", "rate": 50}]})


@pytest.fixture
def fast_fake(fake: FakePluralKit) -> FakePluralKit:
    fake.scopes = {"generic": 1000.0}
    return fake


async def test_a_member_renamed_is_not_stale_in_a_group_list_the_proxy_cannot_link(
    fast_fake: FakePluralKit, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """Only the group's member list is cached (not the member, nor its groups): the proxy
    cannot tell that the member is in that group, so a write to any member evicts every
    group's member list, and the next GET of the list has the new name. A group written
    does the same to every member's group list."""
    await warm(http, proxy, ["/v2/groups/grpaa/members"])
    assert await write(http, proxy, "PATCH", "/v2/members/abcde", {"name": "Alicia"}) == 200
    async with http.get(proxy.make_url("/v2/groups/grpaa/members")) as r:
        names = {m["id"]: m["name"] for m in await r.json()}
        assert r.headers["X-Cache"] == "MISS" and names["abcde"] == "Alicia"
    await warm(http, proxy, ["/v2/members/abcde/groups"])
    assert await write(http, proxy, "PATCH", "/v2/groups/grpaa", {"name": "Renamed"}) == 200
    async with http.get(proxy.make_url("/v2/members/abcde/groups")) as r:
        assert r.headers["X-Cache"] == "MISS"
        assert [g["name"] for g in await r.json() if g["id"] == "grpaa"] == ["Renamed"]


async def test_a_member_deleted_leaves_no_cached_list_of_its_system(
    fast_fake: FakePluralKit, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """DELETE answers 204 with no body, the member itself was never cached and the token's
    @me is not known: the system's member list the member was seen in is still evicted
    (the proxy remembers which system the members in answers belong to)."""
    await warm(http, proxy, ["/v2/systems/exmpl/members"])
    assert await write(http, proxy, "DELETE", "/v2/members/abcde", None) == 204
    async with http.get(proxy.make_url("/v2/systems/exmpl/members")) as r:
        assert r.headers["X-Cache"] == "MISS"
        assert "abcde" not in {m["id"] for m in await r.json()}


async def test_a_member_written_by_uuid_is_evicted_under_its_short_id(
    fast_fake: FakePluralKit, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """Cached as /members/abcde, deleted as /members/<uuid>: both names are evicted."""
    uuid = fast_fake.members["abcde"]["uuid"]
    await warm(http, proxy, ["/v2/members/abcde"])
    assert await write(http, proxy, "DELETE", f"/v2/members/{uuid.upper()}", None) == 204
    async with http.get(proxy.make_url("/v2/members/abcde")) as r:
        assert (r.status, r.headers["X-Cache"]) == (404, "MISS")


async def test_member_write_evicts_member_its_lists_and_groups(
    fast_fake: FakePluralKit, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """PATCH a member: the member, its groups list, its system's member list and the member
    lists of the groups it is in are evicted; other entries stay; the next GET sees it."""
    paths = [
        "/v2/members/abcde",
        "/v2/members/abcde/groups",
        "/v2/systems/exmpl/members",
        "/v2/groups/grpaa/members",
        "/v2/members/zyxwv",
    ]
    await warm(http, proxy, paths)
    assert await write(http, proxy, "PATCH", "/v2/members/ABC-DE", {"name": "Alicia"}) == 200
    for path in paths[:4]:
        assert await cached(http, proxy, path) == "MISS", path
    assert await cached(http, proxy, "/v2/members/zyxwv") == "HIT"
    async with http.get(proxy.make_url("/v2/members/abcde")) as r:
        assert (await r.json())["name"] == "Alicia"


async def test_member_delete_evicts_without_a_response_body(
    fast_fake: FakePluralKit, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """DELETE answers 204 with no body: the cached member's `system` still finds the list."""
    await warm(http, proxy, ["/v2/members/prvmb", "/v2/systems/exmpl/members"])
    assert await write(http, proxy, "DELETE", "/v2/members/prvmb", None) == 204
    assert await cached(http, proxy, "/v2/systems/exmpl/members") == "MISS"
    async with http.get(proxy.make_url("/v2/members/prvmb")) as r:
        assert r.status == 404


async def test_switch_write_evicts_fronters_and_switches(
    fast_fake: FakePluralKit, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """POST a switch: that system's fronters and switch list are evicted, also via @me
    once the proxy has seen which system the token is."""
    await warm(http, proxy, ["/v2/systems/exmpl/fronters", "/v2/systems/exmpl/switches"])
    assert (
        await write(http, proxy, "POST", "/v2/systems/exmpl/switches", {"members": ["abcde"]})
        == 200
    )
    assert await cached(http, proxy, "/v2/systems/exmpl/fronters") == "MISS"
    assert await cached(http, proxy, "/v2/systems/exmpl/switches") == "MISS"
    async with http.get(proxy.make_url("/v2/systems/@me"), headers=OWNER) as r:
        assert r.status == 200
    await warm(http, proxy, ["/v2/systems/exmpl/fronters"])
    assert await write(http, proxy, "POST", "/v2/systems/@me/switches", {"members": []}) == 200
    assert await cached(http, proxy, "/v2/systems/exmpl/fronters") == "MISS"


async def test_system_write_evicts_system_and_settings(
    fast_fake: FakePluralKit, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """PATCH a system (by @me): the system, by id and by UUID, is evicted."""
    uuid_path = "/v2/systems/11111111-1111-4111-8111-111111111111"
    await warm(http, proxy, ["/v2/systems/exmpl", uuid_path])
    assert await write(http, proxy, "PATCH", "/v2/systems/@me", {"name": "New name"}) == 200
    assert await cached(http, proxy, "/v2/systems/exmpl") == "MISS"
    assert await cached(http, proxy, uuid_path) == "MISS"


async def test_group_write_evicts_group_and_its_member_list(
    fast_fake: FakePluralKit, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """A group member add: the group, its member list and the members' group lists go."""
    fast_fake.force_status["/v2/groups/grpaa/members/add"] = (204, b"")
    await warm(
        http, proxy, ["/v2/groups/grpaa", "/v2/groups/grpaa/members", "/v2/members/zyxwv/groups"]
    )
    status = await write(http, proxy, "POST", "/v2/groups/grpaa/members/add", ["zyxwv"])
    assert status == 204
    for path in ("/v2/groups/grpaa", "/v2/groups/grpaa/members", "/v2/members/zyxwv/groups"):
        assert await cached(http, proxy, path) == "MISS", path


async def test_a_gzipped_write_body_is_read_for_what_it_names(
    fast_fake: FakePluralKit, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """A member added to groups named in a gzipped body (forwarded as sent): the proxy
    reads the body it forwarded to find the groups, and evicts them."""
    fast_fake.force_status["/v2/members/abcde/groups/add"] = (204, b"")
    await warm(http, proxy, ["/v2/groups/grpaa"])
    headers = {**OWNER, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with http.post(
        proxy.make_url("/v2/members/abcde/groups/add"),
        data=gzip.compress(b'["grpaa"]'),
        headers=headers,
    ) as r:
        assert r.status == 204
    assert await cached(http, proxy, "/v2/groups/grpaa") == "MISS"


async def test_failed_write_evicts_nothing(
    fast_fake: FakePluralKit, proxy: TestServer, http: aiohttp.ClientSession
) -> None:
    """A write upstream refused (401) changed nothing, so nothing is evicted."""
    await warm(http, proxy, ["/v2/members/abcde"])
    assert (
        await write(
            http, proxy, "PATCH", "/v2/members/abcde", {"name": "x"}, {"Authorization": "bad"}
        )
        == 401
    )
    assert await cached(http, proxy, "/v2/members/abcde") == "HIT"

"""The shared cache: hits cost nothing, credentials never share, freshness is honoured."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import diskcache
import pytest
from aiohttp.test_utils import TestServer

from tests.clocks import SteppedWall
from tests.conftest import MakeProxy, ServeProxy
from tests.fakepk import FakePluralKit


async def get(
    http: aiohttp.ClientSession, proxy: TestServer, path: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with http.get(proxy.make_url(path), headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def upstream_count(fake: FakePluralKit, fragment: str = "") -> int:
    return sum(1 for a in fake.arrivals if fragment in a.path)


async def expired_entry(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, **cache: float
) -> tuple[TestServer, SteppedWall]:
    """A proxy whose entry for /v2/members/abcde expired 10 minutes ago, past any grace."""
    clock = SteppedWall()
    proxy = await make_proxy(cache={"grace_seconds": 0.0, **cache}, clock=clock)
    await get(http, proxy, "/v2/members/abcde")
    clock.now += 600
    return proxy, clock


async def test_hit_costs_nothing_and_matches_the_miss(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A hit has the miss's status, body and content headers, plus Age, and sends nothing."""
    proxy = await make_proxy()
    s1, h1, b1 = await get(http, proxy, "/v2/members/abcde")
    s2, h2, b2 = await get(http, proxy, "/v2/members/abcde")
    assert (s1, h1["X-Cache"]) == (200, "MISS")
    assert (s2, h2["X-Cache"]) == (200, "HIT")
    assert b1 == b2 and h1["Content-Type"] == h2["Content-Type"]
    assert "Age" in h2 and h2["X-RateLimit-Scope"] == "all"
    assert upstream_count(fake) == 1
    async with http.head(proxy.make_url("/v2/members/abcde")) as r:
        assert r.status == 200 and r.headers["X-Cache"] == "HIT"
        assert await r.read() == b""
    assert upstream_count(fake) == 1


async def test_head_miss_fills_the_get_entry(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """HEAD is fetched as GET upstream so that the entry it fills serves later GETs."""
    proxy = await make_proxy()
    async with http.head(proxy.make_url("/v2/members/abcde")) as r:
        assert r.status == 200
    _, headers, body = await get(http, proxy, "/v2/members/abcde")
    assert headers["X-Cache"] == "HIT" and b'"abcde"' in body
    assert [a.method for a in fake.arrivals] == ["GET"]


CREDENTIALS = [
    {"Authorization": "token-exmpl"},
    {"authorization": "token-exmpl"},
    {"X-PluralKit-App": "app-token-1"},
]


@pytest.mark.parametrize("credential", CREDENTIALS, ids=["auth", "lowercase", "app"])
async def test_credentialed_answer_never_reaches_anonymous_clients(
    fake: FakePluralKit,
    make_proxy: MakeProxy,
    http: aiohttp.ClientSession,
    credential: dict[str, str],
) -> None:
    """Owner first, anonymous second: the anonymous answer hides the private fields."""
    proxy = await make_proxy()
    _, h_owner, b_owner = await get(http, proxy, "/v2/members/prvmb", **credential)
    assert b"secret notes" in b_owner and h_owner["X-Cache"] == "BYPASS"
    for _ in range(2):
        _, h_anon, b_anon = await get(http, proxy, "/v2/members/prvmb")
        assert b"secret notes" not in b_anon
    assert h_anon["X-Cache"] == "HIT"
    assert upstream_count(fake) == 2


@pytest.mark.parametrize(
    "credential", [*CREDENTIALS, {"Authorization": ""}], ids=["auth", "lowercase", "app", "empty"]
)
async def test_anonymous_entry_never_answers_a_credentialed_request(
    fake: FakePluralKit,
    make_proxy: MakeProxy,
    http: aiohttp.ClientSession,
    credential: dict[str, str],
) -> None:
    """Anonymous first, then a credential (even an empty one): it goes upstream itself."""
    proxy = await make_proxy()
    await get(http, proxy, "/v2/members/prvmb")
    _, headers, body = await get(http, proxy, "/v2/members/prvmb", **credential)
    assert headers["X-Cache"] == "BYPASS"
    assert upstream_count(fake) == 2
    if (
        credential.get("Authorization")
        or credential.get("authorization")
        or credential.get("X-PluralKit-App")
    ):
        assert b"secret notes" in body
    sent = {k.lower(): v for k, v in fake.arrivals[-1].headers}
    for name, value in credential.items():
        assert sent[name.lower()] == value


async def test_private_list_403_is_cached_only_for_anonymous(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A privacy 403 (30001) is a short negative entry; the owner still sees the list."""
    proxy = await make_proxy()
    s1, _, b1 = await get(http, proxy, "/v2/systems/prvsy/members")
    s2, h2, _ = await get(http, proxy, "/v2/systems/prvsy/members")
    assert (s1, s2, h2["X-Cache"]) == (403, 403, "HIT") and b'"code": 30001' in b1
    s3, _, b3 = await get(http, proxy, "/v2/systems/prvsy/members", Authorization="token-prvsy")
    assert s3 == 200 and b"Zed" in b3


async def test_concurrent_identical_misses_cost_one_upstream_request(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """100 identical misses, queued behind another request: one upstream call, 100 answers."""
    proxy = await make_proxy()
    blocker = asyncio.create_task(get(http, proxy, "/v2/members/abcde", Authorization="x"))
    await asyncio.sleep(0.05)
    results = await asyncio.gather(*(get(http, proxy, "/v2/systems/exmpl") for _ in range(100)))
    await blocker
    assert all(status == 200 for status, _, _ in results)
    caches = sorted(h["X-Cache"] for _, h, _ in results)
    assert caches.count("MISS") == 1 and caches.count("COALESCED") == 99
    assert upstream_count(fake, "/v2/systems/exmpl") == 1


async def test_coalesced_call_survives_its_initiator_leaving(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """The client whose request is being sent disconnects: others still get the answer and
    the entry is stored."""
    proxy = await make_proxy()
    blocker = asyncio.create_task(get(http, proxy, "/v2/members/abcde", Authorization="x"))
    await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as leaver:
        initiator = asyncio.create_task(leaver.get(proxy.make_url("/v2/groups/grpaa")))
        await asyncio.sleep(0.05)
        others = [asyncio.create_task(get(http, proxy, "/v2/groups/grpaa")) for _ in range(3)]
        await asyncio.sleep(0.05)
        initiator.cancel()
    results = await asyncio.gather(*others)
    await blocker
    assert [r[0] for r in results] == [200, 200, 200]
    _, headers, _ = await get(http, proxy, "/v2/groups/grpaa")
    assert headers["X-Cache"] == "HIT"
    assert upstream_count(fake, "/v2/groups/grpaa") == 1


async def test_id_variants_share_one_entry_other_ids_and_queries_do_not(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """ABCDE, abc-de and abcde are one entry (forwarded as abcde); other keys are not."""
    proxy = await make_proxy()
    for variant in (
        "/v2/members/ABCDE",
        "/v2/members/abc-de",
        "/v2/members/abcde",
        "/v2/members/AAAAAAAA-0000-4000-8000-000000000001",
        "/v2/members/aaaaaaaa-0000-4000-8000-000000000001",
    ):
        await get(http, proxy, variant)
    assert [a.path for a in fake.arrivals] == [
        "/v2/members/abcde",
        "/v2/members/aaaaaaaa-0000-4000-8000-000000000001",
    ]
    await get(http, proxy, "/v2/systems/exmpl/switches?limit=5&before=x")
    _, h, _ = await get(http, proxy, "/v2/systems/exmpl/switches?before=x&limit=5")
    assert h["X-Cache"] == "HIT"
    _, h, _ = await get(http, proxy, "/v2/systems/exmpl/switches?before=x&limit=6")
    assert h["X-Cache"] == "MISS"
    _, h, _ = await get(http, proxy, "/v2/members/prvmb")
    assert h["X-Cache"] == "MISS"


@pytest.mark.parametrize(
    ("headers", "stored"),
    [
        ({"Cache-Control": "no-store"}, False),
        ({"Cache-Control": "private, max-age=60"}, False),
        ({"Cache-Control": "no-cache"}, False),
        ({"Vary": "Authorization"}, False),
        ({"Set-Cookie": "a=b"}, False),
        ({"Vary": "Accept-Encoding"}, True),
        ({"Cache-Control": "public, max-age=300"}, True),
    ],
)
async def test_upstream_cache_headers_are_honoured(
    fake: FakePluralKit,
    make_proxy: MakeProxy,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    stored: bool,
) -> None:
    """no-store/private/no-cache, Vary (other than Accept-Encoding) and Set-Cookie: not stored."""
    fake.extra_headers["/v2/members/abcde"] = headers
    proxy = await make_proxy()
    await get(http, proxy, "/v2/members/abcde")
    _, h, _ = await get(http, proxy, "/v2/members/abcde")
    assert (h["X-Cache"] == "HIT") is stored


async def test_max_age_replaces_the_route_ttl(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Cache-Control: max-age=5 from upstream wins over the configured 120 s."""
    fake.extra_headers["/v2/members/abcde"] = {"Cache-Control": "max-age=5"}
    clock = SteppedWall()
    proxy = await make_proxy(cache={"grace_seconds": 0.0}, clock=clock)
    await get(http, proxy, "/v2/members/abcde")
    clock.now += 4
    assert (await get(http, proxy, "/v2/members/abcde"))[1]["X-Cache"] == "HIT"
    clock.now += 2
    assert (await get(http, proxy, "/v2/members/abcde"))[1]["X-Cache"] == "MISS"


async def test_entries_survive_a_restart_and_corrupt_ones_are_dropped(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    """A restarted proxy serves fresh entries from disk, refetches expired and corrupt ones."""
    first = await make_proxy()
    for path in ("/v2/members/abcde", "/v2/systems/exmpl", "/v2/groups/grpaa"):
        await get(http, first, path)
    await first.close()
    with diskcache.Cache(str(tmp_path / "cache")) as disk:
        keys = [k for k in disk.iterkeys() if k.endswith("/v2/systems/exmpl gzip")]
        assert len(keys) == 1
        raw = bytearray(disk[keys[0]])
        raw[-3] ^= 0xFF  # one flipped byte in the body: the checksum catches it
        disk.set(keys[0], bytes(raw))
    second = await make_proxy()
    assert (await get(http, second, "/v2/members/abcde"))[1]["X-Cache"] == "HIT"
    status, headers, body = await get(http, second, "/v2/systems/exmpl")
    assert (status, headers["X-Cache"]) == (200, "MISS") and b"exmpl" in body
    answered = [a for a in fake.arrivals if a.status != 429]
    assert len(answered) == 4  # 3 before the restart, the corrupt one after
    assert len(fake.arrivals) - len(answered) <= 1  # the new process did not know the bucket
    await second.close()
    clock = SteppedWall()
    third = await make_proxy(clock=clock)
    clock.now = 10**10  # far past ttl + max_stale
    assert (await get(http, third, "/v2/groups/grpaa"))[1]["X-Cache"] == "MISS"


async def test_stale_while_revalidate_serves_at_once_and_refreshes_once(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Within grace: STALE at once, one background refresh, then fresh again."""
    clock = SteppedWall()
    proxy = await make_proxy(cache={"grace_seconds": 60.0}, clock=clock)
    await get(http, proxy, "/v2/members/abcde")
    fake.members["abcde"]["name"] = "Renamed"
    clock.now += 130  # ttl 120 s
    results = await asyncio.gather(*(get(http, proxy, "/v2/members/abcde") for _ in range(5)))
    assert all(h["X-Cache"] == "STALE" and b"Alice" in b for _, h, b in results)
    for _ in range(50):
        await asyncio.sleep(0.02)
        if upstream_count(fake) == 2:
            break
    await asyncio.sleep(0.05)
    _, headers, body = await get(http, proxy, "/v2/members/abcde")
    assert headers["X-Cache"] == "HIT" and b"Renamed" in body
    assert upstream_count(fake) == 2


async def test_stale_if_error_when_upstream_is_down(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Past grace but within max-stale, an upstream 5xx is replaced by the stale entry."""
    proxy, clock = await expired_entry(make_proxy, http, max_stale_seconds=3600.0)
    fake.force_status["/v2/members/abcde"] = (503, b'{"message":"down","code":0}')
    status, headers, body = await get(http, proxy, "/v2/members/abcde")
    assert (status, headers["X-Cache"]) == (200, "STALE") and b"Alice" in body
    clock.now += 4000  # past max-stale: the error is passed back
    status, _, _ = await get(http, proxy, "/v2/members/abcde")
    assert status == 503


async def test_stale_if_throttled_when_the_queue_is_too_long(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A refetch that would wait past the client's deadline is answered from stale."""
    proxy, _ = await expired_entry(make_proxy, http)
    backlog = [
        asyncio.create_task(get(http, proxy, f"/v2/members/abcde?b={n}", Authorization="x"))
        for n in range(4)
    ]
    await asyncio.sleep(0.05)
    status, headers, _ = await get(
        http, proxy, "/v2/members/abcde", **{"X-PKProxy-Max-Wait": "100"}
    )
    assert (status, headers["X-Cache"]) == (200, "STALE")
    await asyncio.gather(*backlog)


async def test_stale_if_throttled_when_upstream_answers_429(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """An upstream 429 that outlasts the deadline is answered from stale, not passed back."""
    proxy, _ = await expired_entry(make_proxy, http)
    await asyncio.sleep(0.6)
    fake.block(5.0)
    status, headers, _ = await get(
        http, proxy, "/v2/members/abcde", **{"X-PKProxy-Max-Wait": "500"}
    )
    assert (status, headers["X-Cache"]) == (200, "STALE")


async def test_a_store_never_answers_for_another_upstream(
    fake: FakePluralKit,
    make_proxy: MakeProxy,
    serve_proxy: ServeProxy,
    http: aiohttp.ClientSession,
    aiohttp_server: Any,
    tmp_path: Any,
) -> None:
    """The same cache directory behind a different upstream origin starts empty for it."""
    from tests.conftest import proxy_settings

    first = await make_proxy()
    await get(http, first, "/v2/members/abcde")
    await first.close()
    other = FakePluralKit()
    other.members["abcde"]["name"] = "Other upstream"
    other_server = await aiohttp_server(other.app())
    settings = proxy_settings(str(other_server.make_url("/")), tmp_path / "cache")
    second = await serve_proxy(settings)
    _, headers, body = await get(http, second, "/v2/members/abcde")
    assert headers["X-Cache"] == "MISS" and b"Other upstream" in body


async def test_coalesced_waiter_keeps_its_own_deadline(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Joining a shared call still queued, a request with a short max wait gets its 429 on
    time; the patient one it joined is still served."""
    proxy = await make_proxy()
    blockers = [
        asyncio.create_task(get(http, proxy, f"/v2/members/abcde?b={n}", Authorization="x"))
        for n in range(3)
    ]
    await asyncio.sleep(0.05)
    patient = asyncio.create_task(get(http, proxy, "/v2/groups/grpaa"))
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    status, _, _ = await get(http, proxy, "/v2/groups/grpaa", **{"X-PKProxy-Max-Wait": "200"})
    assert status == 429 and asyncio.get_running_loop().time() - started < 0.5
    assert (await patient)[0] == 200
    await asyncio.gather(*blockers)
    assert upstream_count(fake, "/v2/groups/grpaa") == 1

"""The shared upstream budget holds under load, is used fully, and waiting is honest."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.conftest import MakeProxy
from tests.fakepk import PLURALKIT_SCOPES, FakePluralKit, pluralkit_scope
from tests.waits import accounted_for, arrivals_reach, wait_until

pytestmark = pytest.mark.slow


def assert_local_429(status: int, headers: object, body: dict[str, object], scope: str) -> None:
    assert status == 429
    assert body["message"] == "429: too many requests"
    assert body["code"] == 0 and body["scope"] == scope
    assert isinstance(body["retry_after"], int) and body["retry_after"] > 0


async def test_burst_of_50_clients_never_exceeds_seed_rate(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """50 concurrent clients: each gets the upstream answer or a well-formed local 429, the
    fake never sees more than 2 requests in any second, never answers 429, and the budget is
    spent at the configured rate while there is a backlog."""
    proxy = await make_proxy()

    async def client(n: int) -> tuple[int, dict[str, object], dict[str, str]]:
        url = proxy.make_url(f"/v2/systems/exmpl?client={n}")
        async with http.get(url, headers={"X-PKProxy-Max-Wait": "3000"}) as r:
            return r.status, await r.json(), dict(r.headers)

    started_ms = time.time() * 1000
    results = await asyncio.gather(*(client(n) for n in range(50)))
    served = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    for status, body, headers in refused:
        assert_local_429(status, headers, body, "all")
        assert int(headers["Retry-After"]) >= 1
        assert headers["X-RateLimit-Scope"] == "all"
        assert int(headers["X-RateLimit-Reset"]) >= started_ms  # UNIX ms, not s
    assert all(r[1]["id"] == "exmpl" for r in served)
    assert 5 <= len(served) <= 8
    assert len(fake.arrivals) == len(served)
    assert fake.upstream_arrivals(429) == []
    assert fake.max_in_window(1.0) <= 2
    times = [a.at for a in fake.arrivals]
    achieved = (len(times) - 1) / (times[-1] - times[0])
    assert achieved >= 2.0 * 0.93


async def test_pluralkit_profile_mixed_traffic_respects_each_scope(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, aiohttp_server: object, fake: FakePluralKit
) -> None:
    """With the 10/10/3 profile, mixed GET/POST/PATCH traffic: every scope stays within its
    rate in every 1-second window and the fake answers no 429."""
    fake.scopes = dict(PLURALKIT_SCOPES)
    fake.scope_of = pluralkit_scope
    proxy = await make_proxy(budget={"profile": "pluralkit"})
    owner = {"Authorization": "token-exmpl", "X-PKProxy-Max-Wait": "1500"}

    async def one(n: int) -> int:
        kind = n % 4
        if kind == 0:
            req = http.get(proxy.make_url(f"/v2/members/abcde?n={n}"), headers=owner)
        elif kind == 1:
            req = http.get(proxy.make_url("/v2/messages/123456789012345678"), headers=owner)
        elif kind == 2:
            req = http.post(
                proxy.make_url("/v2/systems/exmpl/switches"), json={"members": []}, headers=owner
            )
        else:
            req = http.patch(
                proxy.make_url("/v2/members/abcde"), json={"name": f"A{n}"}, headers=owner
            )
        async with req as r:
            await r.read()
            return r.status

    statuses = await asyncio.gather(*(one(n) for n in range(120)))
    assert set(statuses) <= {200, 429}
    assert fake.upstream_arrivals(429) == []
    # PluralKit charges the owner's requests on its own system to own_system_* buckets; the
    # proxy paces by the base scopes, so each base scope is checked with its own_system part.
    # An idle bucket takes its burst (rate - 1) at once, then the rate: at most
    # rate + burst in any second.
    assert fake.max_in_window(1.0, {"generic_get", "own_system_get"}) <= 10 + 9
    assert fake.max_in_window(1.0, "message") <= 10 + 9
    assert fake.max_in_window(1.0, {"generic_update", "own_system_update"}) <= 3 + 2
    assert statuses.count(200) >= 20


async def test_short_max_wait_is_refused_at_once_long_wait_is_served(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """With a backlog, X-PKProxy-Max-Wait: 100 gets an immediate 429 whose retry_after matches
    the backlog; a request willing to wait long enough is served."""
    proxy = await make_proxy()
    backlog = [
        asyncio.create_task(http.get(proxy.make_url(f"/v2/members/abcde?b={n}"))) for n in range(4)
    ]
    await accounted_for(http, proxy, fake, 4)
    started = time.monotonic()
    async with http.get(
        proxy.make_url("/v2/members/abcde?short=1"), headers={"X-PKProxy-Max-Wait": "100"}
    ) as r:
        body = await r.json()
        assert r.status == 429
    assert time.monotonic() - started < 0.1
    # Four queued ahead at 0.525 s each: about 1.5-2.1 s until it would fit in 100 ms.
    assert 1000 <= body["retry_after"] <= 2500
    async with http.get(
        proxy.make_url("/v2/members/abcde?long=1"), headers={"X-PKProxy-Max-Wait": "10000"}
    ) as r:
        assert r.status == 200
    for task in backlog:
        (await task).release()
    assert fake.upstream_arrivals(429) == []


async def test_upstream_429_pauses_then_retries_once_the_block_ends(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Another client of the same IP used the bucket: the proxy sends one request, gets the
    429, sends nothing until retry_after plus one interval, then retries and succeeds."""
    proxy = await make_proxy()
    fake.block(1.0)
    async with http.get(proxy.make_url("/v2/members/abcde")) as r:
        assert r.status == 200
        assert (await r.json())["id"] == "abcde"
    statuses = [a.status for a in fake.arrivals]
    assert statuses == [429, 200]
    gap = fake.arrivals[1].at - fake.arrivals[0].at
    retry_after = 1.0 - 0.5  # the block minus one emission, as PluralKit computes it
    assert gap >= retry_after + 0.5


async def test_upstream_429_past_the_deadline_is_passed_back(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """When the pause would outlast the client's deadline, PluralKit's own 429 is passed
    back (body intact, with Retry-After) after exactly one upstream attempt."""
    proxy = await make_proxy()
    fake.block(5.0)
    async with http.get(
        proxy.make_url("/v2/members/abcde"), headers={"X-PKProxy-Max-Wait": "500"}
    ) as r:
        assert r.status == 429
        body = await r.json()
        assert body["message"] == "429: too many requests" and body["scope"] == "generic"
        assert int(r.headers["Retry-After"]) >= 4
    assert len(fake.arrivals) == 1


async def test_boundary_rejection_does_not_cascade(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Someone else on the IP sent a request just before us: PluralKit's charged boundary
    429 (retry_after 0) costs one retry, not a cascade of charged rejections."""
    proxy = await make_proxy()
    fake.block(0.45)  # the bucket's next free instant is 0.45 s away: a boundary rejection
    async with http.get(proxy.make_url("/v2/members/abcde")) as r:
        assert r.status == 200
    assert [a.status for a in fake.arrivals] == [429, 200]


@pytest.mark.parametrize("unit", ["s", "ms"])
async def test_429_without_body_pauses_until_reset_in_seconds_or_ms(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession, unit: str
) -> None:
    """A 429 without PluralKit's body (an edge in between) is paced by X-RateLimit-Reset,
    read as UNIX seconds or milliseconds, and the request is retried after it."""
    reset = time.time() + 1.0
    fake.force_status["/v2/members/abcde"] = (429, b"")
    fake.extra_headers["/v2/members/abcde"] = {
        "X-RateLimit-Reset": str(int(reset * 1000)) if unit == "ms" else f"{reset:.3f}"
    }
    proxy = await make_proxy()

    async def lift() -> None:  # once the first attempt has had its 429
        await wait_until(lambda: fake.arrivals and fake.arrivals[0].status == 429)
        del fake.force_status["/v2/members/abcde"]

    lifter = asyncio.create_task(lift())
    async with http.get(proxy.make_url("/v2/members/abcde")) as r:
        assert r.status == 200
    await lifter
    assert [a.status for a in fake.arrivals] == [429, 200]
    assert fake.arrivals[1].at - fake.arrivals[0].at >= 0.9


async def test_full_queue_answers_429_at_once(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """With the queue at its configured bound, a further request is refused immediately."""
    proxy = await make_proxy(budget={"max_queue": 2})
    queued = []
    for n in range(3):  # one is sent at once, two wait: the queue is at its bound
        queued.append(
            asyncio.create_task(
                http.get(proxy.make_url(f"/v2/members/abcde?n={n}"), headers={"Authorization": "x"})
            )
        )
        # One at a time, the first one sent before the next comes in.
        await (arrivals_reach(fake, 1) if n == 0 else accounted_for(http, proxy, fake, n + 1))
    started = time.monotonic()
    async with http.get(
        proxy.make_url("/v2/members/abcde?late=1"), headers={"Authorization": "x"}
    ) as r:
        body = await r.json()
        assert r.status == 429 and body["scope"] == "all" and body["retry_after"] > 0
    assert time.monotonic() - started < 0.1
    for task in queued:
        response = await task
        assert response.status == 200
        response.release()
    assert not any("late" in a.path for a in fake.arrivals)


async def test_remaining_zero_holds_the_next_request_until_the_bucket_has_room(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """At 10/s with a burst of 9 the second request would go at once; an answer saying
    X-RateLimit-Remaining: 0 proves the bucket full (someone else spends it), so the next
    one waits until the model has room again: 0.9 s ahead, less the 5.98 emissions of
    headroom, 0.302 s after the first was sent."""
    fake.scopes = {"generic": 10.0}
    fake.extra_headers["/v2/members/abcde"] = {"X-RateLimit-Remaining": "0"}
    proxy = await make_proxy(budget={"scopes": [{"name": "all", "rate": 10, "burst": 9}]})
    for path in ("/v2/members/abcde", "/v2/members/prvmb"):
        async with http.get(proxy.make_url(path), headers={"Authorization": "x"}) as r:
            assert r.status == 200
    gap = fake.arrivals[1].at - fake.arrivals[0].at
    assert gap >= 0.3


async def test_max_wait_zero_is_served_when_a_slot_is_free(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """X-PKProxy-Max-Wait: 0 means "do not queue": served if a slot is free, else 429."""
    proxy = await make_proxy()
    no_wait = {"Authorization": "x", "X-PKProxy-Max-Wait": "0"}
    async with http.get(proxy.make_url("/v2/members/abcde"), headers=no_wait) as r:
        assert r.status == 200
    async with http.get(proxy.make_url("/v2/members/abcde"), headers=no_wait) as r:
        assert r.status == 429
    assert len(fake.arrivals) == 1

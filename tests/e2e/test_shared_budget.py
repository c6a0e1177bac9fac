"""The budget read from PluralKit's own answers (issue 9): bursts into an idle bucket,
another program spending the same IP's bucket, back-off, a tighter upstream limit,
garbage rate headers, and priority inheritance through a coalesced flight."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from tests.conftest import MakeProxy
from tests.fakepk import PLURALKIT_SCOPES, FakePluralKit, pluralkit_scope
from tests.waits import wait_until


def pluralkit(fake: FakePluralKit) -> None:
    fake.scopes, fake.scope_of = dict(PLURALKIT_SCOPES), pluralkit_scope


async def get(http: aiohttp.ClientSession, url: Any, **headers: str) -> int:
    async with http.get(url, headers=headers) as r:
        await r.read()
        return r.status


async def backlog(http: aiohttp.ClientSession, proxy: TestServer, count: int) -> list[int]:
    """`count` distinct credentialed GETs at once (not cacheable, not coalesced)."""
    urls = [proxy.make_url(f"/v2/members/abcde?n={n}") for n in range(count)]
    return list(await asyncio.gather(*(get(http, url, Authorization="x") for url in urls)))


async def beside_another_program(
    http: aiohttp.ClientSession,
    proxy: TestServer,
    upstream: TestServer,
    fake: FakePluralKit,
    rate: float,
    count: int,
) -> tuple[list[int], list[int]]:
    """A backlog of `count` through the proxy while another program on the same IP calls
    PluralKit directly `rate` times a second: the statuses of both."""
    stop = asyncio.Event()
    other = asyncio.create_task(other_program(http, upstream, rate, stop))
    await wait_until(lambda: len(fake.arrivals) >= 2, what="the other program has started")
    statuses = await backlog(http, proxy, count)
    stop.set()
    return statuses, await other


async def other_program(
    http: aiohttp.ClientSession, upstream: TestServer, rate: float, stop: asyncio.Event
) -> list[int]:
    """Another program on the same IP calling PluralKit directly, `rate` times a second."""
    statuses: list[int] = []
    while not stop.is_set():
        statuses.append(await get(http, upstream.make_url("/v2/systems/exmpl")))
        await asyncio.sleep(1.0 / rate)  # its own pace: real time is the point here
    return statuses


async def test_a_burst_into_an_idle_pluralkit_bucket_goes_out_at_once(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Eight GETs into an idle proxy on the pluralkit profile: the bucket takes nine at once,
    so six go at once (two kept in reserve, plus the margin) and none is refused."""
    pluralkit(fake)
    proxy = await make_proxy(budget={"profile": "pluralkit"})
    statuses = await asyncio.gather(
        *(
            get(http, proxy.make_url(f"/v2/members/abcde?n={n}"), Authorization="x")
            for n in range(8)
        )
    )
    assert statuses == [200] * 8
    first = fake.arrivals[0].at
    assert sum(1 for a in fake.arrivals if a.at - first < 0.05) >= 6
    assert fake.upstream_arrivals(429) == []


async def test_another_program_on_the_ip_is_read_from_the_answers(
    fake: FakePluralKit,
    make_proxy: MakeProxy,
    upstream: TestServer,
    http: aiohttp.ClientSession,
) -> None:
    """Another program spends 3/s of the 10/s bucket the proxy works a backlog from: the
    proxy reads the room left from X-RateLimit-Remaining, and neither side sees a 429 storm."""
    pluralkit(fake)
    proxy = await make_proxy(budget={"profile": "pluralkit", "default_max_wait_ms": 30_000})
    statuses, theirs = await beside_another_program(http, proxy, upstream, fake, 3.0, 40)
    assert statuses == [200] * 40
    ours_429 = sum(1 for a in fake.arrivals if a.status == 429 and "?n=" in a.path)
    assert ours_429 <= 3
    assert theirs.count(429) <= 3


async def test_after_upstream_429s_the_proxy_backs_off_and_the_bucket_drains(
    fake: FakePluralKit,
    make_proxy: MakeProxy,
    upstream: TestServer,
    http: aiohttp.ClientSession,
) -> None:
    """Burst 1 (the seed's behaviour, here at 20/s so that the test is short) shared with a
    program at half the rate: charged rejections must not keep the bucket full. The backlog
    is served and the other program keeps most of its calls."""
    fake.scopes = {"generic": 20.0}
    proxy = await make_proxy(
        budget={"scopes": [{"name": "all", "rate": 20}], "default_max_wait_ms": 30_000}
    )
    statuses, theirs = await beside_another_program(http, proxy, upstream, fake, 10.0, 30)
    assert statuses.count(200) == 30
    assert theirs.count(200) >= len(theirs) * 0.4


async def test_a_tighter_upstream_limit_is_followed_and_logged_once(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Configured for 10/s, upstream says 4/s: the proxy follows the tighter one after the
    first answer, logs budget.limit_mismatch once, and is not refused again."""
    fake.scopes = {"generic": 4.0}
    proxy = await make_proxy(budget={"scopes": [{"name": "all", "rate": 10, "burst": 1}]})
    with capture_logs() as logs:
        statuses = [
            await get(http, proxy.make_url(f"/v2/members/abcde?n={n}"), Authorization="x")
            for n in range(8)
        ]
    assert statuses == [200] * 8
    mismatches = [e for e in logs if e["event"] == "budget.limit_mismatch"]
    assert len(mismatches) == 1 and mismatches[0]["upstream"] == 4
    assert len(fake.upstream_arrivals(429)) <= 1


async def test_garbage_rate_headers_neither_stop_nor_speed_up_pacing(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Non-numeric, negative and enormous rate headers are ignored (logged once per kind):
    every request is answered and the seed's spacing holds."""
    garbage = ["abc", "-5", "1e308"]
    proxy = await make_proxy(budget={"scopes": [{"name": "all", "rate": 20}]})
    fake.scopes = {"generic": 20.0}
    with capture_logs() as logs:
        for n in range(6):
            fake.extra_headers["/v2/members/abcde"] = {
                "X-RateLimit-Remaining": garbage[n % 3],
                "X-RateLimit-Limit": garbage[(n + 1) % 3],
            }
            assert await get(http, proxy.make_url("/v2/members/abcde"), Authorization="x") == 200
    kinds = [e["header"] for e in logs if e["event"] == "budget.bad_rate_header"]
    assert sorted(kinds) == sorted(set(kinds))  # once per kind
    assert "x-ratelimit-remaining:non_numeric" in kinds
    assert "x-ratelimit-remaining:negative" in kinds
    assert "x-ratelimit-limit:enormous" in kinds
    gaps = [b.at - a.at for a, b in zip(fake.arrivals, fake.arrivals[1:], strict=False)]
    assert all(gap >= 0.05 for gap in gaps)
    assert fake.upstream_arrivals(429) == []


async def test_an_interactive_request_lifts_a_queued_background_flight(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A background consumer queues 30 GETs; an interactive consumer then asks for the 30th:
    it joins that flight, which moves to the interactive consumer's place and is sent
    within a couple of slots instead of after the whole backlog."""
    fake.scopes = {"generic": 20.0}
    proxy = await make_proxy(
        budget={"scopes": [{"name": "all", "rate": 20}], "default_max_wait_ms": 30_000},
        consumers={
            "keys": [
                {"name": "bulk", "key": "key-bulk-1", "priority": "background"},
                {"name": "bot", "key": "key-bot-12", "priority": "interactive"},
            ]
        },
    )
    paths = [f"/v2/members/abcde?n={n}" for n in range(30)]
    bulk = [
        asyncio.create_task(get(http, proxy.make_url(p), **{"X-PKProxy-Key": "key-bulk-1"}))
        for p in paths
    ]
    await wait_until(lambda: len(fake.arrivals) >= 2, what="the backlog has started")
    joined_at = len(fake.arrivals)
    assert await get(http, proxy.make_url(paths[-1]), **{"X-PKProxy-Key": "key-bot-12"}) == 200
    order = [a.path for a in fake.arrivals]
    assert order.index(paths[-1]) <= joined_at + 2
    assert await asyncio.gather(*bulk) == [200] * 30

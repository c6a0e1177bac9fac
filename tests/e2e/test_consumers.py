"""Many consumers on one budget: identity, fairness, priorities, quotas, bounded state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from proxy.app import GATEWAY, METRICS
from tests.conftest import MakeProxy
from tests.fakepk import FakePluralKit
from tests.waits import accounted_for, arrivals_reach

KEYS = [
    {"name": "bulk", "key": "bulk-key-123456", "weight": 1},
    {"name": "light", "key": "light-key-123456", "weight": 1},
    {"name": "heavy", "key": "heavy-key-123456", "weight": 3},
    {
        "name": "limited",
        "key": "limited-key-123456",
        "weight": 1,
        "rate": 1.0,
        "burst": 2,
        "max_queued": 5,
    },
]
FAST = {"scopes": [{"name": "all", "rate": 10}]}
INTERVAL = 0.105


@pytest.fixture
def fast_fake(fake: FakePluralKit) -> FakePluralKit:
    fake.scopes = {"generic": 1000.0}
    return fake


def keyed(name: str, **extra: str) -> dict[str, str]:
    key = next(k["key"] for k in KEYS if k["name"] == name)
    return {"X-PKProxy-Key": str(key), "Authorization": "x", **extra}


async def timed_get(
    http: aiohttp.ClientSession, proxy: TestServer, path: str, headers: dict[str, str]
) -> tuple[int, float, dict[str, str], Any]:
    started = time.monotonic()
    async with http.get(proxy.make_url(path), headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else None
        return r.status, time.monotonic() - started, dict(r.headers), body


async def test_single_requests_are_not_stuck_behind_a_flood(
    fast_fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """One consumer floods 500 requests, another sends 10 spaced ones: each of those waits
    at most about two slot intervals, and upstream order interleaves the two."""
    proxy = await make_proxy(budget=FAST, consumers={"keys": KEYS})
    # The flood has its own connection pool, so that the client's pool is not the queue.
    bulk = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    flood = [
        asyncio.create_task(
            timed_get(
                bulk,
                proxy,
                f"/v2/members/abcde?bulk={n}",
                keyed("bulk", **{"X-PKProxy-Max-Wait": "60000"}),
            )
        )
        for n in range(500)
    ]
    await accounted_for(http, proxy, fast_fake, 500, consumer="bulk", timeout=15.0)
    waits = []
    for n in range(10):
        status, elapsed, _, _ = await timed_get(
            http, proxy, f"/v2/members/abcde?light={n}", keyed("light")
        )
        assert status == 200
        waits.append(elapsed)
        await asyncio.sleep(0.15)  # the scenario: single requests, spaced, not a backlog
    for task in flood:
        task.cancel()
    await asyncio.gather(*flood, return_exceptions=True)
    await bulk.close()
    assert max(waits) <= 2 * INTERVAL + 0.06, waits
    order = ["light" if "light" in a.path else "bulk" for a in fast_fake.arrivals]
    assert order.count("light") == 10
    first_light = order.index("light")
    assert "bulk" in order[first_light:]  # the flood kept going between the light requests


async def test_weights_split_slots_under_saturation(
    fast_fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Weights 3:1, both saturating: upstream slots split 3:1 within a few percent."""
    proxy = await make_proxy(budget=FAST, consumers={"keys": KEYS})
    wait = {"X-PKProxy-Max-Wait": "60000"}
    tasks = [
        asyncio.create_task(
            timed_get(http, proxy, f"/v2/members/abcde?{who}={n}", keyed(who, **wait))
        )
        for n in range(100)
        for who in ("heavy", "bulk")
    ]
    await arrivals_reach(fast_fake, 41, timeout=15.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    window = fast_fake.arrivals[1:41]  # the first slot went to whoever came first
    heavy = sum(1 for a in window if "heavy" in a.path)
    assert 29 <= heavy <= 31, heavy  # 30 of 40 is 3:1


async def test_interactive_overtakes_background_and_background_still_progresses(
    fast_fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Within one consumer, an interactive request overtakes a background backlog; under a
    sustained interactive load background work still gets slots."""
    proxy = await make_proxy(budget=FAST)
    wait = "60000"
    background = [
        asyncio.create_task(
            timed_get(
                http,
                proxy,
                f"/v2/members/abcde?bg={n}",
                {
                    "Authorization": "x",
                    "X-PKProxy-Priority": "background",
                    "X-PKProxy-Max-Wait": wait,
                },
            )
        )
        for n in range(40)
    ]
    await accounted_for(http, proxy, fast_fake, 40)
    status, elapsed, _, _ = await timed_get(
        http,
        proxy,
        "/v2/members/abcde?urgent=1",
        {"Authorization": "x", "X-PKProxy-Priority": "interactive"},
    )
    assert status == 200 and elapsed <= 2 * INTERVAL + 0.06
    interactive = [
        asyncio.create_task(
            timed_get(
                http,
                proxy,
                f"/v2/members/abcde?int={n}",
                {
                    "Authorization": "x",
                    "X-PKProxy-Priority": "interactive",
                    "X-PKProxy-Max-Wait": wait,
                },
            )
        )
        for n in range(60)
    ]
    start = len(fast_fake.arrivals)
    await arrivals_reach(fast_fake, start + 30, timeout=15.0)
    for task in background + interactive:
        task.cancel()
    await asyncio.gather(*background, *interactive, return_exceptions=True)
    window = fast_fake.arrivals[start : start + 30]
    bg = sum(1 for a in window if "bg=" in a.path)
    assert bg >= 2, [a.path for a in window]  # 1 in 9 under the 8:1 lane weights
    assert sum(1 for a in window if "int=" in a.path) >= 20


async def test_quota_refuses_only_its_consumer_with_its_own_headers(
    fast_fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Past its quota a consumer gets its own 429 with X-RateLimit-* of its quota; others and
    cache hits are unaffected."""
    proxy = await make_proxy(budget=FAST, consumers={"keys": KEYS})
    results = [
        await timed_get(http, proxy, f"/v2/members/abcde?q={n}", keyed("limited")) for n in range(3)
    ]
    assert [r[0] for r in results[:2]] == [200, 200]
    status, elapsed, headers, body = results[2]
    assert status == 429 and elapsed < 0.1
    assert body["scope"] == "consumer:limited" and 0 < body["retry_after"] <= 1000
    assert headers["X-RateLimit-Scope"] == "consumer:limited"
    assert headers["X-RateLimit-Limit"] == "2" and headers["X-RateLimit-Remaining"] == "0"
    assert (await timed_get(http, proxy, "/v2/members/abcde?other=1", keyed("light")))[0] == 200
    anonymous = {"X-PKProxy-Key": "limited-key-123456"}
    await timed_get(http, proxy, "/v2/systems/exmpl", {"X-PKProxy-Key": "light-key-123456"})
    status, _, headers, _ = await timed_get(http, proxy, "/v2/systems/exmpl", anonymous)
    assert status == 200 and headers["X-Cache"] == "HIT"
    assert len(fast_fake.arrivals) == 4


async def test_headers_let_a_polite_client_avoid_429(
    fast_fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A client that waits until X-RateLimit-Reset whenever Remaining is 0 is never refused."""
    proxy = await make_proxy(budget=FAST, consumers={"keys": KEYS})
    for n in range(5):
        status, _, headers, _ = await timed_get(
            http, proxy, f"/v2/members/abcde?p={n}", keyed("limited")
        )
        assert status == 200, n
        if headers["X-RateLimit-Remaining"] == "0":  # pacing: the polite client waits
            await asyncio.sleep(max(0.0, int(headers["X-RateLimit-Reset"]) / 1000 - time.time()))


async def test_required_key(
    fast_fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """With require_key, no key or a wrong key is 401 with zero upstream requests; the right
    key is served; logs name the consumer and never show the key."""
    proxy = await make_proxy(consumers={"keys": KEYS, "require_key": True})
    with capture_logs() as logs:
        for headers in ({}, {"X-PKProxy-Key": "wrong-key-000000"}):
            status, _, _, body = await timed_get(http, proxy, "/v2/members/abcde", headers)
            assert status == 401 and body["code"] == 0
        assert fast_fake.arrivals == []
        status, _, _, _ = await timed_get(
            http, proxy, "/v2/members/abcde", {"X-PKProxy-Key": "light-key-123456"}
        )
        assert status == 200
    assert "light-key-123456" not in repr(logs) and "wrong-key-000000" not in repr(logs)
    assert [e["consumer"] for e in logs if e["event"] == "request.completed"][-1] == "light"


@pytest.mark.parametrize(
    ("trusted", "expected"), [(["10.0.0.0/8"], "127.0.0.1"), (["127.0.0.1"], "203.0.113.9")]
)
async def test_forwarded_for_only_from_trusted_proxies(
    fast_fake: FakePluralKit,
    make_proxy: MakeProxy,
    http: aiohttp.ClientSession,
    trusted: list[str],
    expected: str,
) -> None:
    """X-Forwarded-For changes the identity only when the peer is a trusted proxy."""
    proxy = await make_proxy(consumers={"trusted_proxies": trusted})
    with capture_logs() as logs:
        await timed_get(
            http, proxy, "/v2/members/abcde", {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
        )
    assert [e["consumer"] for e in logs if e["event"] == "request.completed"] == [expected]


async def test_state_and_labels_stay_bounded_with_10000_peers_and_ids(
    fast_fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """10,000 distinct peer addresses, each asking for a distinct member id: no per-address
    state remains, and metric labels carry the route template and `peer`, never an id or an
    address."""
    fast_fake.scopes = {"generic": 1e6}
    proxy = await make_proxy(
        # a burst, so that the pacer's timer granularity does not set this test's pace
        budget={"scopes": [{"name": "all", "rate": 5000, "burst": 200}], "margin": 0.0},
        consumers={"trusted_proxies": ["127.0.0.1"]},
    )
    gateway = proxy.app[GATEWAY]
    semaphore = asyncio.Semaphore(64)

    async def one(n: int) -> None:
        peer = f"10.{n // 65536}.{n // 256 % 256}.{n % 256}"
        async with semaphore:
            status, _, _, _ = await timed_get(
                http, proxy, f"/v2/members/id{n:06d}", {"X-Forwarded-For": peer}
            )
            assert status == 404

    await asyncio.gather(*(one(n) for n in range(10_000)))
    scope = gateway.scheduler.scopes["all"]
    assert scope.depths() == {} and scope.depth() == 0
    assert len(gateway.parts.quotas.store) == 0
    assert len(gateway.parts.coalescer) == 0
    text = proxy.app[METRICS].render().decode()
    assert "id0" not in text and "10.0." not in text
    routes = {
        line.split('route="')[1].split('"')[0] for line in text.splitlines() if 'route="' in line
    }
    assert routes == {"/v2/members/{ref}"}
    consumers = {
        line.split('consumer="')[1].split('"')[0]
        for line in text.splitlines()
        if 'consumer="' in line
    }
    assert consumers <= {"peer"}

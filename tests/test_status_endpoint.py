"""/status and /status/live over a real socket: JSON for programs, the page for browsers,
what the page polls, who may read it, and what a poll costs."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any

import aiohttp
import pytest

from proxy.app import BOARD, GATEWAY
from proxy.flow.request import RequestLog
from proxy.ops import page
from tests.conftest import MakeProxy
from tests.waits import wait_until

# The /status JSON as programs know it: these keys, no more (a `redis` section may join).
TOP_KEYS = {"upstream", "ready", "draining", "uptime_s", "scopes", "cache"}
SCOPE_KEYS = {
    "rate",
    "burst",
    "interval_ms",
    "queue_depth",
    "queue_by_consumer",
    "utilisation_1m",
    "paused_ms",
    "sent",
}
CACHE_KEYS = {"lookups", "hits", "hit_ratio", "in_flight", "memory_entries", "disk_entries"}
OPS_KEY = "ops-key-123456"
BOT_KEY = "bot-key-123456"
KEYS: dict[str, Any] = {
    "require_key": True,
    "keys": [{"name": "ops", "key": OPS_KEY, "ops": True}, {"name": "bot", "key": BOT_KEY}],
}


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()


async def fetch(
    http: aiohttp.ClientSession, url: Any, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("text/html", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # browsers
        ("text/html;q=0", False),
        ("application/*;q=0.9, text/html", True),
        ("TEXT/HTML; q=0.8, application/json; q=0.8", True),
        ("text/html;q=bad", False),
    ],
)
def test_only_a_client_that_names_html_gets_the_page(accept: str | None, html: bool) -> None:
    """Programs (no Accept, */*, JSON) keep the JSON; browsers name text/html."""
    assert page.wants_html(accept) is html


@pytest.mark.parametrize("accept", [None, "application/json", "*/*"])
async def test_programs_keep_the_json_snapshot(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, accept: str | None
) -> None:
    """Any Accept but HTML gets today's JSON: the same keys, ratios rounded, nothing of
    the page's (history, consumers, start id) leaking in."""
    proxy = await make_proxy()
    for _ in range(3):
        await fetch(http, proxy.make_url("/v2/members/abcde"))
    headers = {"Accept": accept} if accept is not None else {}
    status, response_headers, body = await fetch(http, proxy.make_url("/status"), **headers)
    assert status == 200 and response_headers["Content-Type"].startswith("application/json")
    assert response_headers["Vary"] == "Accept"
    snapshot = json.loads(body)
    assert TOP_KEYS <= set(snapshot) <= TOP_KEYS | {"redis"}
    assert set(snapshot["scopes"]["all"]) == SCOPE_KEYS
    assert set(snapshot["cache"]) >= CACHE_KEYS
    assert snapshot["cache"]["hit_ratio"] == 0.667
    assert snapshot["scopes"]["all"]["utilisation_1m"] == round(
        snapshot["scopes"]["all"]["utilisation_1m"], 3
    )


async def test_a_browser_gets_one_self_contained_page(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """The page inlines its style and script, loads nothing from elsewhere, and its
    Content-Security-Policy allows only those two and fetches to the proxy itself."""
    proxy = await make_proxy()
    status, headers, body = await fetch(http, proxy.make_url("/status"), Accept="text/html")
    text = body.decode()
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store" and headers["Vary"] == "Accept"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'", policy)
    assert "/* script */" not in text and "/* style */" not in text
    assert "<script src" not in text and 'rel="stylesheet"' not in text
    assert set(re.findall(r"https?://[^\s\"'`]+", text)) == {"http://www.w3.org/2000/svg"}


async def test_live_sends_the_history_a_poller_lacks(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """/status/live carries the snapshot, the start id, and history points after `since`."""
    proxy = await make_proxy()
    url = proxy.make_url("/status/live")

    async def live(since: str) -> dict[str, Any]:
        async with http.get(url, params={"since": since}) as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "no-store"
            result: dict[str, Any] = await response.json()
            return result

    first = await live("0")
    assert set(first["status"]) >= TOP_KEYS and first["start_id"]
    assert set(first["scopes"]["all"]) >= {"wait_p50_ms", "paused_until", "upstream_429"}

    async def has_points() -> dict[str, Any] | None:
        doc = await live("0")
        return doc if doc["history"]["seq"] >= 2 else None

    full = await wait_until(has_points, timeout=4.0, interval=0.2)
    seq = full["history"]["seq"]
    newer = await live(str(seq - 1))
    assert newer["history"]["first_seq"] == seq and len(newer["history"]["t"]) >= 1
    assert newer["start_id"] == first["start_id"]
    assert (await live("garbage"))["history"]["first_seq"] == 1


async def test_queued_consumers_show_their_oldest_wait(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A consumer with requests waiting for a slot shows how many and for how long."""
    proxy = await make_proxy()
    headers = {"Authorization": "x", "X-PKProxy-Max-Wait": "5000"}
    url = proxy.make_url("/v2/members/abcde")
    sent = [asyncio.create_task(fetch(http, url, **headers)) for _ in range(4)]

    async def waiting() -> dict[str, Any] | None:
        async with http.get(proxy.make_url("/status/live")) as response:
            rows = (await response.json())["consumers"]
        row = next((r for r in rows if r["name"] == "127.0.0.1"), None)
        return row if row and row["queued"] and row["oldest_wait_ms"] else None

    row = await wait_until(waiting, timeout=4.0, interval=0.05)
    assert row["configured"] is False and row["weight"] == 1.0
    assert row["oldest_wait_ms"] > 0
    await asyncio.gather(*sent)


async def test_unconfigured_consumers_listed_are_bounded(make_proxy: MakeProxy) -> None:
    """However many addresses were seen, the page lists a bounded number of them."""
    proxy = await make_proxy()
    board = proxy.app[BOARD]
    for n in range(300):
        board.record(RequestLog("GET", 0.0, consumer=f"10.0.{n // 256}.{n % 256}", slots=1), 200)
    gateway = proxy.app[GATEWAY]
    live = await board.live(0, gateway.settings.consumers, gateway.parts.quotas.store)
    names = [row["name"] for row in live["consumers"]]
    assert len(names) == 20 and names[-1] == "10.0.1.43"  # the most recently seen


async def test_concurrent_polls_share_one_cache_stats_sample(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Twenty pages polling at once run the cache's stats (a thread, sqlite) once."""
    proxy = await make_proxy()
    cache = proxy.app[GATEWAY].parts.cache
    assert cache is not None
    calls = 0
    stats = cache.stats

    async def counted() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return await stats()

    cache.stats = counted  # type: ignore[method-assign]
    url = proxy.make_url("/status/live")
    answers = await asyncio.gather(*(fetch(http, url) for _ in range(20)))
    assert [status for status, _, _ in answers] == [200] * 20
    assert calls == 1


async def test_the_page_and_its_polls_need_the_ops_key_when_keys_are_required(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Same rule as /metrics; a browser may give the ops key as a Basic auth password,
    and is asked for it."""
    proxy = await make_proxy(consumers=KEYS)
    for path in ("/status", "/status/live"):
        url = proxy.make_url(path)
        status, headers, _ = await fetch(http, url, Accept="text/html")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
        assert (await fetch(http, url, Authorization=basic("wrong-key")))[0] == 401
        assert (await fetch(http, url, Authorization=basic(BOT_KEY)))[0] == 403
        assert (await fetch(http, url, Authorization=basic(OPS_KEY)))[0] == 200
        assert (await fetch(http, url, **{"X-PKProxy-Key": OPS_KEY}))[0] == 200
        assert (await fetch(http, url, Authorization="Basic !!!"))[0] == 401
    status, headers, _ = await fetch(http, proxy.make_url("/metrics"))
    assert status == 401 and "WWW-Authenticate" not in headers

"""The status page in a real browser (chromium), against the real proxy on a real socket in
front of the fake PluralKit. The page polls once a second, so each wait here is a few
seconds at most."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from playwright.async_api import expect

from proxy.app import BOARD
from tests.browser.conftest import OpenPage, Watched
from tests.conftest import MakeProxy, ServeProxy, proxy_settings
from tests.fakepk import PLURALKIT_SCOPES, FakePluralKit, pluralkit_scope

PLURALKIT = {"profile": "pluralkit"}
NONE = "\u2013"  # how the page writes a value it does not have yet (an en dash)
OPS_KEY = "ops-key-123456"
KEYS: dict[str, Any] = {
    "require_key": True,
    "keys": [
        {"name": "ops", "key": OPS_KEY, "ops": True},
        {"name": "bot", "key": "bot-key-123456", "weight": 2},
    ],
}


def assert_clean(watched: Watched, origin: str) -> None:
    """No console error, no failed request, nothing fetched from anywhere but the proxy."""
    assert watched.errors == []
    assert watched.failed == []
    assert watched.requests and all(url.startswith(origin) for url in watched.requests)


async def get(http: aiohttp.ClientSession, url: Any, **headers: str) -> int:
    async with http.get(url, headers=headers) as response:
        await response.read()
        return response.status


async def test_page_loads_clean_and_shows_every_scope(
    make_proxy: MakeProxy, fake: FakePluralKit, open_page: OpenPage
) -> None:
    """The page and its polls load with no console error or failed request, from the proxy
    alone, and show each configured scope with its rate."""
    fake.scopes, fake.scope_of = dict(PLURALKIT_SCOPES), pluralkit_scope
    proxy = await make_proxy(budget=PLURALKIT)
    watched = await open_page(str(proxy.make_url("/status")))
    page = watched.page
    await expect(page.locator("[data-scope]")).to_have_count(3)
    for name, rate in (("generic_get", "10"), ("message", "10"), ("generic_update", "3")):
        card = page.locator(f'[data-scope="{name}"]')
        await expect(card.locator('[data-field="rate"]')).to_contain_text(f"{rate} req/s · burst")
        await expect(card.locator("svg.chart")).to_have_count(1)
    await expect(page.locator("#conn")).to_contain_text("live")
    await page.wait_for_timeout(1500)  # a poll or two more
    assert_clean(watched, str(proxy.make_url("/")))
    assert fake.arrivals == []


async def test_numbers_change_without_a_reload(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, open_page: OpenPage
) -> None:
    """Traffic sent after the page loaded shows up in its numbers, chart and consumer rows
    while the same document stays loaded."""
    proxy = await make_proxy()
    watched = await open_page(str(proxy.make_url("/status")))
    page = watched.page
    card = page.locator('[data-scope="all"]')
    await expect(card.locator('[data-field="sent"]')).to_have_text("0 req")
    await expect(page.locator('[data-field="hit-ratio"]')).to_have_text(f"{NONE} since start")
    await page.evaluate("window.__sameDocument = true")
    for _ in range(3):
        assert await get(http, proxy.make_url("/v2/members/abcde")) == 200
    await expect(card.locator('[data-field="sent"]')).to_have_text("1 req")
    await expect(page.locator('[data-field="hit-ratio"]')).to_have_text("67 % since start")
    await expect(page.locator('[data-field="stores"]')).to_have_text("1")
    await expect(page.locator('tr[data-consumer="127.0.0.1"]')).to_have_count(1)
    await expect(page.locator('[data-field="latency"]')).not_to_have_text(f"{NONE} / {NONE}")
    await expect(card.locator("svg.chart path.series")).to_have_count(1)
    assert await page.evaluate("window.__sameDocument") is True
    assert_clean(watched, str(proxy.make_url("/")))


async def test_a_paused_scope_is_shown(
    make_proxy: MakeProxy, fake: FakePluralKit, http: aiohttp.ClientSession, open_page: OpenPage
) -> None:
    """After upstream answers 429, the scope reads paused until a time, and its upstream
    429s are counted and marked on the chart."""
    proxy = await make_proxy()
    watched = await open_page(str(proxy.make_url("/status")))
    page = watched.page
    card = page.locator('[data-scope="all"]')
    await expect(card.locator('[data-field="paused"]')).to_have_text("▶ sending")
    fake.block(20.0)
    headers = {"Authorization": "x", "X-PKProxy-Max-Wait": "0"}
    assert await get(http, proxy.make_url("/v2/members/abcde"), **headers) == 429
    await expect(card.locator('[data-field="paused"]')).to_contain_text("⏸ paused until")
    await expect(card.locator('[data-field="throttled"]')).to_have_text("1")
    await expect(page.locator('[data-field="error-429"]')).to_have_text("⚠ 1")
    await expect(card.locator("svg.chart path.marker")).to_have_count(1)
    await expect(card.locator("svg.chart rect.paused")).not_to_have_count(0)
    assert_clean(watched, str(proxy.make_url("/")))


async def test_a_degraded_redis_is_shown_plainly(
    make_proxy: MakeProxy, open_page: OpenPage
) -> None:
    """A `redis` section in the snapshot is shown with its replicas; `degraded` gets a
    banner, which goes when the state is ok again."""
    proxy = await make_proxy()
    board = proxy.app[BOARD]
    redis = {"state": "degraded", "replicas": 3}
    snapshot = board.snapshot

    async def with_redis() -> dict[str, Any]:
        return {**await snapshot(), "redis": dict(redis)}

    board.snapshot = with_redis  # type: ignore[method-assign]
    watched = await open_page(str(proxy.make_url("/status")))
    page = watched.page
    await expect(page.locator("#redis-state")).to_have_text("⚠ DEGRADED · 3 replicas")
    await expect(page.locator("#banners")).to_contain_text("Redis degraded")
    redis["state"] = "ok"
    await expect(page.locator("#redis-state")).to_have_text("✓ ok · 3 replicas")
    await expect(page.locator("#banners")).not_to_contain_text("Redis")
    assert_clean(watched, str(proxy.make_url("/")))


async def test_with_keys_required_the_browser_gives_the_ops_key_as_a_password(
    make_proxy: MakeProxy, open_page: OpenPage, http: aiohttp.ClientSession
) -> None:
    """When keys are required the page asks for HTTP Basic auth; the ops key as password
    opens it and its polls, and the consumers are listed by name."""
    proxy = await make_proxy(consumers=KEYS)
    url = proxy.make_url("/status")
    async with http.get(url, headers={"Accept": "text/html"}) as refused:
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic ")
    credentials = {"username": "ops", "password": OPS_KEY}
    watched = await open_page(str(url), http_credentials=credentials)
    page = watched.page
    await expect(page.locator('tr[data-consumer="bot"]')).to_have_count(1)
    await expect(page.locator('tr[data-consumer="bot"] td').nth(1)).to_have_text("\u00d72")  # x2
    await page.wait_for_timeout(1500)
    # The 401 challenge before the credentials were sent is the only refusal.
    watched.failed = [f for f in watched.failed if not f.startswith("401 ")]
    assert_clean(watched, str(proxy.make_url("/")))
    basic = base64.b64encode(f"x:{OPS_KEY}".encode()).decode()
    assert await get(http, proxy.make_url("/status/live"), Authorization=f"Basic {basic}") == 200


async def test_a_restart_is_noticed_and_the_page_reconnects(
    serve_proxy: ServeProxy, upstream: TestServer, tmp_path: Any, open_page: OpenPage
) -> None:
    """When the proxy goes away the page says so; when a new process answers on the same
    address, it says that pkproxy restarted and goes on updating."""
    settings = proxy_settings(str(upstream.make_url("/")), tmp_path / "cache")
    first = await serve_proxy(settings)
    port = first.port
    watched = await open_page(str(first.make_url("/status")))
    page = watched.page
    await expect(page.locator("#conn")).to_contain_text("live")
    old_id = first.app[BOARD].start_id
    await first.close()
    await expect(page.locator("#banners")).to_contain_text("Connection to pkproxy lost")
    await expect(page.locator("#conn")).to_contain_text("disconnected")
    second = await serve_proxy(settings, port=port)
    assert second.app[BOARD].start_id != old_id
    await expect(page.locator("#banners")).to_contain_text("pkproxy restarted", timeout=8000)
    await expect(page.locator("#banners")).not_to_contain_text("lost")
    await expect(page.locator("#conn")).to_contain_text("live")
    # The polls that found nobody listening are the only failures.
    assert all("ERR_CONNECTION_REFUSED" in f for f in watched.failed), watched.failed
    assert all("ERR_CONNECTION_REFUSED" in e for e in watched.errors), watched.errors

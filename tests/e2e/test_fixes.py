"""Fixes found by trying pkproxy as a new user would (issue 11): max wait 0 on the cached
path, reasons in the request log, purging while running, own endpoints under keys."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from proxy.ops.logs import configure_logging, get_logger
from tests.conftest import MakeProxy
from tests.fakepk import FakePluralKit
from tests.perf.harness import free_port

OPS_KEY = "ops-key-123"
BOT_KEY = "bot-key-123"
KEYS = {
    "require_key": True,
    "keys": [{"name": "ops", "key": OPS_KEY, "ops": True}, {"name": "bot", "key": BOT_KEY}],
}


async def request(
    http: aiohttp.ClientSession, method: str, url: Any, **headers: str
) -> tuple[int, dict[str, str], Any]:
    async with http.request(method, url, headers=headers) as r:
        body = await r.read()
        is_json = r.content_type == "application/json"
        return r.status, dict(r.headers), json.loads(body) if is_json else body


async def test_max_wait_zero_on_a_cacheable_get_is_served_by_an_idle_proxy(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Max wait 0 means "do not queue": an idle proxy serves it (then from cache), and a
    refused one is never sent upstream."""
    proxy = await make_proxy()
    no_wait = {"X-PKProxy-Max-Wait": "0"}
    status, headers, _ = await request(http, "GET", proxy.make_url("/v2/members/abcde"), **no_wait)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    for _ in range(2):
        status, headers, _ = await request(
            http, "GET", proxy.make_url("/v2/members/abcde"), **no_wait
        )
        assert (status, headers["X-Cache"]) == (200, "HIT")
    # the slot was just spent: another path with max wait 0 is refused, and not sent
    status, _, body = await request(http, "GET", proxy.make_url("/v2/members/prvmb"), **no_wait)
    assert status == 429 and body["retry_after"] > 0
    await asyncio.sleep(0.6)  # let the refused request's would-be slot pass (real pacing)
    assert [a.path for a in fake.arrivals] == ["/v2/members/abcde"]


async def test_an_unreachable_upstream_is_logged_with_its_reason_and_host(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A 502 says in request.completed why: connect failed, to which host."""
    port = free_port()
    proxy = await make_proxy(upstream={"url": f"http://127.0.0.1:{port}"})
    with capture_logs() as logs:
        status, _, body = await request(
            http, "GET", proxy.make_url("/v2/members/abcde"), Authorization="x"
        )
    assert status == 502 and body["code"] == 0
    done = [e for e in logs if e["event"] == "request.completed"]
    assert done[0]["status"] == 502
    assert done[0]["reason"].startswith(f"connect_failed: 127.0.0.1:{port}")


async def test_a_refused_key_is_logged_with_the_peer_and_why_never_the_key(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """A 401 line names the peer and whether the key was missing or wrong."""
    proxy = await make_proxy(consumers=KEYS)
    with capture_logs() as logs:
        missing = await request(http, "GET", proxy.make_url("/v2/members/abcde"))
        wrong = await request(
            http, "GET", proxy.make_url("/v2/members/abcde"), **{"X-PKProxy-Key": "guess-1234"}
        )
    assert missing[0] == wrong[0] == 401
    done = [e for e in logs if e["event"] == "request.completed"]
    assert [(e["consumer"], e["reason"]) for e in done] == [
        ("127.0.0.1", "key_missing"),
        ("127.0.0.1", "key_wrong"),
    ]
    assert "guess-1234" not in repr(logs)


async def test_purging_one_path_while_running_folds_its_ids(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """DELETE /cache?path= evicts that path whatever the id's spelling, and only it."""
    proxy = await make_proxy()
    for path in ("/v2/members/abcde", "/v2/members/abcde?x=1", "/v2/systems/exmpl"):
        await request(http, "GET", proxy.make_url(path))
    status, _, body = await request(
        http, "DELETE", proxy.make_url("/cache?path=/v2/members/ABC-DE")
    )
    assert status == 200 and body == {"path": "/v2/members/abcde", "evicted": 2}
    assert (await request(http, "GET", proxy.make_url("/v2/members/abcde")))[1]["X-Cache"] == "MISS"
    assert (await request(http, "GET", proxy.make_url("/v2/systems/exmpl")))[1]["X-Cache"] == "HIT"
    status, _, body = await request(http, "DELETE", proxy.make_url("/cache?path=/v2/../etc"))
    assert status in {400, 404} and set(body) >= {"message", "code"}


async def test_clearing_reaches_the_running_proxys_memory_tier(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """DELETE /cache empties memory and disk: the next read is a miss."""
    proxy = await make_proxy()
    await request(http, "GET", proxy.make_url("/v2/members/abcde"))
    status, _, body = await request(http, "DELETE", proxy.make_url("/cache"))
    assert status == 200 and body["removed"] >= 1
    assert (await request(http, "GET", proxy.make_url("/v2/members/abcde")))[1]["X-Cache"] == "MISS"


async def test_own_endpoints_need_an_ops_key_when_keys_are_required(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Probes stay open; status, metrics and purge need a consumer key marked ops."""
    proxy = await make_proxy(consumers=KEYS)
    for path in ("/healthz", "/readyz"):
        assert (await request(http, "GET", proxy.make_url(path)))[0] == 200
    for method, path in (("GET", "/status"), ("GET", "/metrics"), ("DELETE", "/cache")):
        url = proxy.make_url(path)
        nobody = await request(http, method, url)
        assert nobody[0] == 401 and nobody[2]["code"] == 0
        assert (await request(http, method, url, **{"X-PKProxy-Key": BOT_KEY}))[0] == 403
        assert (await request(http, method, url, **{"X-PKProxy-Key": OPS_KEY}))[0] == 200


async def test_metrics_have_no_created_series(
    make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """prometheus-client's _created series are off."""
    proxy = await make_proxy()
    await request(http, "GET", proxy.make_url("/v2/members/abcde"))
    async with http.get(proxy.make_url("/metrics")) as r:
        text = await r.text()
    assert "pkproxy_requests_total" in text and "_created" not in text


def test_console_lines_start_with_what_an_operator_scans_for(monkeypatch: Any) -> None:
    """In console format: event, status, method, route and duration_ms come first."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    configure_logging("info", "console")
    try:
        get_logger().info(
            "request.completed",
            status=200,
            method="GET",
            route="/v2/members/{ref}",
            duration_ms=1.0,
            consumer="bot",
        )
        line = out.getvalue()
    finally:
        monkeypatch.undo()
        configure_logging("info", "json")
    positions = [line.index(word) for word in ("request.completed", "status", "method", "route")]
    assert positions == sorted(positions) and line.index("duration_ms") < line.index("consumer")

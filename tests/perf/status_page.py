"""What open status pages cost (`python -m tests.perf status`).

1. Pacing and cache-hit throughput with no page open and with 20 pages polling, in
   alternating rounds on one proxy. A page is emulated by what it sends (the HTML once, then
   `GET /status/live?since=<seq>` every second), from a process of its own so that the load
   generator's event loop is not shared with the pages. Twenty real browsers would spend the
   machine's two cores on rendering and measure that, not the proxy.
2. The proxy's own work per poll, timed in-process on a board with a full 15-minute history,
   3 scopes and 8 consumers: the figure that does not depend on the shared machine's noise.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import statistics
import tempfile
import time
from multiprocessing.synchronize import Event as StopEvent
from typing import Any

import aiohttp
from aiohttp import web

from proxy.app import BOARD, GATEWAY, create_app
from proxy.core.cachepolicy import CacheResult
from proxy.flow.request import RequestLog
from proxy.settings import load_settings
from tests.clocks import ManualClock
from tests.perf.harness import fetch_arrivals, max_in_window, percentile, processes

Row = tuple[str, str]
RATE = 20.0  # a rate high enough that a few seconds hold many gaps to measure
PAGES = 20
PACING_S, HITS_S = 4.0, 3.0


# -- 1. under load ------------------------------------------------------------------------
async def _pages(proxy: str, pages: int, stop: StopEvent) -> list[float]:
    """`pages` open pages until `stop`: the document, then a poll a second each."""

    async def page(session: aiohttp.ClientSession) -> list[float]:
        async with session.get(f"{proxy}/status", headers={"Accept": "text/html"}) as r:
            await r.read()
        latencies, seq = [], 0
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(f"{proxy}/status/live", params={"since": str(seq)}) as r:
                seq = (await r.json())["history"]["seq"]
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(1.0)
        return latencies

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(page(session) for _ in range(pages)))
    return [latency for latencies in results for latency in latencies]


def _pages_process(proxy: str, pages: int, stop: StopEvent, out: Any) -> None:
    out.put(asyncio.run(_pages(proxy, pages, stop)))


async def _pacing(session: aiohttp.ClientSession, proxy: str, fake: str) -> list[float]:
    """Keep the queue full of distinct credentialed requests; the upstream arrival times."""
    async with session.get(f"{fake}/__fake/arrivals?clear=1") as r:
        await r.read()
    stop = time.monotonic() + PACING_S
    headers = {"Authorization": "x", "X-PKProxy-Max-Wait": "3000"}

    async def client(n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            async with session.get(f"{proxy}/v2/members/abcde?c={n}&i={i}", headers=headers) as r:
                await r.read()

    await asyncio.gather(*(client(n) for n in range(24)))
    return sorted(a["at"] for a in await fetch_arrivals(session, fake))


async def _hits(session: aiohttp.ClientSession, proxy: str) -> float:
    """Closed loop on one cached entry: hits per second."""
    stop = time.monotonic() + HITS_S
    count = 0

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < stop:
            async with session.get(f"{proxy}/v2/members/abcde") as r:
                await r.read()
            count += 1

    await asyncio.gather(*(worker() for _ in range(16)))
    return count / HITS_S


async def _round(session: aiohttp.ClientSession, proxy: str, fake: str) -> dict[str, Any]:
    times = await _pacing(session, proxy, fake)
    return {
        "rate": (len(times) - 1) / (times[-1] - times[0]),
        "max": max_in_window(times),
        "gaps": [b - a for a, b in itertools.pairwise(times)],
        "hits": await _hits(session, proxy),
    }


def _under_load(proxy: str, fake: str) -> dict[int, dict[str, list[Any]]]:
    results: dict[int, dict[str, list[Any]]] = {
        n: {"rate": [], "max": [], "gaps": [], "hits": [], "polls": []} for n in (0, PAGES)
    }
    spawn = multiprocessing.get_context("spawn")

    async def prime() -> None:
        async with aiohttp.ClientSession() as session, session.get(f"{proxy}/v2/members/abcde"):
            pass

    async def measure() -> dict[str, Any]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return await _round(session, proxy, fake)

    asyncio.run(prime())  # fill the cached entry
    for pages in (0, PAGES) * 3:
        stop, out = spawn.Event(), spawn.Queue()
        poller = spawn.Process(target=_pages_process, args=(proxy, pages, stop, out))
        if pages:
            poller.start()
            time.sleep(1.5)  # the pages have loaded and poll
        result = asyncio.run(measure())
        if pages:
            stop.set()
            results[pages]["polls"] += out.get(timeout=30)
            poller.join(10)
        for key, value in result.items():
            if isinstance(value, list):
                results[pages][key] += value
            else:
                results[pages][key].append(value)
    return results


# -- 2. per poll, in-process ------------------------------------------------------------------
async def _poll_cost() -> list[Row]:
    clock = ManualClock()
    keys = [{"name": f"bot-{n}", "key": f"bot-key-{n:06d}", "weight": 1 + n % 3} for n in range(8)]
    with tempfile.TemporaryDirectory() as cache_dir:
        overrides = {
            "budget": {"profile": "pluralkit"},
            "cache": {"directory": cache_dir},
            "consumers": {"keys": keys},
        }
        app = create_app(load_settings(env={}, overrides=overrides), clock)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            board, gateway = app[BOARD], app[GATEWAY]
            for _ in range(900):  # 15 minutes of 10 requests a second
                await clock.advance(1.0)
                for n in range(10):
                    log = RequestLog("GET", clock.now, f"bot-{n % 8}", f"bot-{n % 8}")
                    log.scope, log.cache, log.slots = "generic_get", CacheResult.MISS, 1
                    log.queue_wait, log.upstream_time = 0.05, 0.02
                    board.record(log, 200)
            consumers, quotas = gateway.settings.consumers, gateway.parts.quotas.store

            async def poll(since: int, times: int) -> tuple[float, int, int]:
                """Seconds per poll, the answer's size, and the newest history point."""
                started = time.perf_counter()
                for _ in range(times):
                    live = await board.live(since, consumers, quotas)
                    body = json.dumps(live)
                elapsed = (time.perf_counter() - started) / times
                return elapsed, len(body), live["history"]["seq"]

            full, full_bytes, seq = await poll(0, 50)
            step, step_bytes, _ = await poll(seq - 1, 2000)
        finally:
            await runner.cleanup()
    return [
        (
            "status: one poll, proxy's work (in-process): page load / each second",
            f"{full * 1000:.2f} ms ({full_bytes / 1024:.0f} KiB) / "
            f"{step * 1000:.3f} ms ({step_bytes / 1024:.1f} KiB)",
        ),
        (
            f"status: {PAGES} pages polling once a second: share of one core",
            f"{PAGES * step:.2%}",
        ),
    ]


def status_pages() -> list[Row]:
    env = {"PKPROXY_BUDGET_SCOPES": f'[{{"name": "all", "rate": {RATE:g}}}]'}
    with processes("seed", env, fake_profile="unlimited") as (proxy, fake):
        results = _under_load(proxy, fake)
    rows: list[Row] = []
    for pages, r in results.items():
        label = f"status: {pages} pages polling"
        gaps = r["gaps"]
        rows += [
            (
                f"{label}: upstream req/s (rate {RATE:g}, 3 rounds)",
                " / ".join(f"{x:.2f}" for x in r["rate"]),
            ),
            (f"{label}: max requests in any 1 s window", str(max(r["max"]))),
            (
                f"{label}: gap between sends min / p50 / p99 (ms)",
                f"{min(gaps) * 1000:.1f} / {percentile(gaps, 0.5) * 1000:.1f}"
                f" / {percentile(gaps, 0.99) * 1000:.1f}",
            ),
            (
                f"{label}: cache hit req/s (16 clients, 3 rounds)",
                " / ".join(f"{x:,.0f}" for x in r["hits"]),
            ),
        ]
        if r["polls"]:
            polls = r["polls"]
            rows.append(
                (
                    f"{label}: /status/live latency p50 / p99 (ms), under load",
                    f"{percentile(polls, 0.5) * 1000:.1f} / {percentile(polls, 0.99) * 1000:.1f}",
                )
            )
    quiet, busy = results[0]["hits"], results[PAGES]["hits"]
    rows.append(
        (
            f"status: cache hit req/s with {PAGES} pages / with none (medians)",
            f"{statistics.median(busy) / statistics.median(quiet):.2f}",
        )
    )
    rows += asyncio.run(_poll_cost())
    return rows

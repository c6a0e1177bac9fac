"""What open status pages cost (`python -m tests.perf status`): pacing and cache-hit
throughput with no page open and with 20 pages polling, in alternating rounds on one proxy.

A page is emulated by what it sends: the HTML once, then `GET /status/live?since=<seq>`
every second. Twenty real browsers would spend the machine's two cores on rendering and
measure those, not the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from typing import Any

import aiohttp

from tests.perf.harness import fetch_arrivals, max_in_window, percentile, processes

Row = tuple[str, str]
RATE = 20.0  # a rate high enough that a few seconds hold many gaps to measure
PAGES = 20
PACING_S, HITS_S = 4.0, 3.0


async def _page(session: aiohttp.ClientSession, proxy: str, stop: asyncio.Event) -> list[float]:
    """One open page: the document, then a poll a second; returns each poll's latency."""
    async with session.get(f"{proxy}/status", headers={"Accept": "text/html"}) as r:
        await r.read()
    latencies, seq = [], 0
    while not stop.is_set():
        started = time.perf_counter()
        async with session.get(f"{proxy}/status/live", params={"since": str(seq)}) as r:
            seq = (await r.json())["history"]["seq"]
        latencies.append(time.perf_counter() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return latencies


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


async def _rounds(proxy: str, fake: str) -> dict[int, dict[str, list[Any]]]:
    results: dict[int, dict[str, list[Any]]] = {
        n: {"rate": [], "max": [], "gap": [], "hits": [], "polls": []} for n in (0, PAGES)
    }
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{proxy}/v2/members/abcde") as r:  # fill the entry
            await r.read()
        for pages in (0, PAGES) * 3:
            stop = asyncio.Event()
            pollers = [asyncio.create_task(_page(session, proxy, stop)) for _ in range(pages)]
            await asyncio.sleep(1.0 if pages else 0.0)
            times = await _pacing(session, proxy, fake)
            hits = await _hits(session, proxy)
            stop.set()
            polls = [latency for task in pollers for latency in await task]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            result = results[pages]
            result["rate"].append((len(times) - 1) / (times[-1] - times[0]))
            result["max"].append(max_in_window(times))
            result["gap"] += gaps
            result["hits"].append(hits)
            result["polls"] += polls
    return results


def status_pages() -> list[Row]:
    env = {"PKPROXY_BUDGET_SCOPES": f'[{{"name": "all", "rate": {RATE:g}}}]'}
    with processes("seed", env, fake_profile="unlimited") as (proxy, fake):
        results = asyncio.run(_rounds(proxy, fake))
    rows: list[Row] = []
    for pages, r in results.items():
        label = f"status: {pages} pages polling"
        rates = " / ".join(f"{x:.2f}" for x in r["rate"])
        gap = r["gap"]
        rows.append((f"{label}: upstream req/s (rate {RATE:g}, 3 rounds)", rates))
        rows.append((f"{label}: max requests in any 1 s window", str(max(r["max"]))))
        rows.append(
            (
                f"{label}: gap between sends min / p50 / p99 (ms)",
                f"{min(gap) * 1000:.1f} / {percentile(gap, 0.5) * 1000:.1f}"
                f" / {percentile(gap, 0.99) * 1000:.1f}",
            )
        )
        hits = " / ".join(f"{x:,.0f}" for x in r["hits"])
        rows.append((f"{label}: cache hit req/s (16 clients, 3 rounds)", hits))
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
    return rows

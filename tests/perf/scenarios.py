"""The benchmark scenarios. Each is bounded in count and time and stops by itself."""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.perf.harness import fetch_arrivals, max_in_window, percentile, processes

Row = tuple[str, str]
RATES = {"seed": {"all": 2.0}, "pluralkit": {"generic_get": 10.0, "message": 10.0,
                                             "generic_update": 3.0}}
FAKE_SCOPE = {"generic": "all"}


async def _saturate(proxy: str, fake: str, profile: str, seconds: float) -> list[Row]:
    """Many clients keep every scope's queue full of distinct, credentialed requests."""
    stop = time.monotonic() + seconds
    counts = {"ok": 0, "local_429": 0, "other": 0}

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            kind = (n + i) % 4 if profile == "pluralkit" else 0
            url, method, body = f"{proxy}/v2/members/abcde?c={n}&i={i}", "GET", None
            if kind == 1:
                url = f"{proxy}/v2/messages/123456789012345678?c={n}&i={i}"
            elif kind >= 2:
                url, method, body = f"{proxy}/v2/members/abcde", "PATCH", b'{"name":"x"}'
            headers = {"Authorization": "token-exmpl", "X-PKProxy-Max-Wait": "2000"}
            async with session.request(method, url, data=body, headers=headers) as response:
                await response.read()
                key = "ok" if response.status < 400 else (
                    "local_429" if response.status == 429 else "other")
                counts[key] += 1
                if response.status == 429:
                    await asyncio.sleep(0.2)

    async with aiohttp.ClientSession() as session:
        await fetch_arrivals(session, fake)
        async with session.get(f"{fake}/__fake/arrivals?clear=1"):
            pass
        await asyncio.gather(*(client(session, n) for n in range(40)))
        arrivals = await fetch_arrivals(session, fake)
    rows: list[Row] = []
    for scope, rate in RATES[profile].items():
        times = [a["at"] for a in arrivals if FAKE_SCOPE.get(a["scope"], a["scope"]) == scope]
        if len(times) < 2:
            continue
        achieved = (len(times) - 1) / (max(times) - min(times))
        rows.append((f"{profile}/{scope}: upstream req/s under saturation",
                     f"{achieved:.3f} of {rate:g} ({achieved / rate:.1%})"))
        rows.append((f"{profile}/{scope}: max requests in any 1 s window",
                     f"{max_in_window(times)} (rate {rate:g})"))
    upstream_429 = sum(1 for a in arrivals if a["status"] == 429)
    rows.append((f"{profile}: upstream 429s received", str(upstream_429)))
    rows.append((f"{profile}: client answers ok / local 429 / other",
                 f"{counts['ok']} / {counts['local_429']} / {counts['other']}"))
    return rows


def saturation() -> list[Row]:
    rows = []
    for profile, seconds in (("seed", 12.0), ("pluralkit", 8.0)):
        with processes(profile) as (proxy, fake):
            rows += asyncio.run(_saturate(proxy, fake, profile, seconds))
    return rows


async def _latency(proxy: str, fake: str, count: int) -> list[Row]:
    """Sequential credentialed requests (never cached): through the proxy vs direct."""
    headers = {"Authorization": "token-exmpl", "User-Agent": "bench"}
    results: dict[str, list[float]] = {"direct": [], "proxy": []}
    async with aiohttp.ClientSession() as session:
        for n in range(count):
            for name, base in (("direct", fake), ("proxy", proxy)):
                started = time.perf_counter()
                async with session.get(f"{base}/v2/members/abcde?n={n}", headers=headers) as r:
                    await r.read()
                results[name].append(time.perf_counter() - started)
    direct, via = results["direct"], results["proxy"]
    return [
        ("uncontended miss: direct p50 / p99 (ms)",
         f"{percentile(direct, 0.5) * 1000:.2f} / {percentile(direct, 0.99) * 1000:.2f}"),
        ("uncontended miss: via proxy p50 / p99 (ms)",
         f"{percentile(via, 0.5) * 1000:.2f} / {percentile(via, 0.99) * 1000:.2f}"),
        ("uncontended miss: added p50 / p99 (ms)",
         f"{(percentile(via, 0.5) - percentile(direct, 0.5)) * 1000:.2f} / "
         f"{(percentile(via, 0.99) - percentile(direct, 0.99)) * 1000:.2f}"),
    ]


def latency() -> list[Row]:
    # A budget high enough that pacing never delays a sequential request: this measures
    # what the proxy itself adds, not the queue.
    scopes = '[{"name": "all", "rate": 1000}]'
    env = {"PKPROXY_BUDGET_SCOPES": scopes}
    with processes("seed", env, fake_profile="unlimited") as (proxy, fake):
        return asyncio.run(_latency(proxy, fake, 400))


SCENARIOS: dict[str, Callable[[], list[Row]]] = {
    "saturation": saturation,
    "latency": latency,
}


def run_all(only: list[str] | None) -> None:
    print(f"# pkproxy benchmarks on {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    rows: list[Row] = []
    for name, scenario in SCENARIOS.items():
        if only and name not in only:
            continue
        started = time.monotonic()
        rows += scenario()
        rows.append((f"({name} took)", f"{time.monotonic() - started:.1f} s"))
    width = max(len(r[0]) for r in rows)
    print(f"| {'figure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


_ = Any

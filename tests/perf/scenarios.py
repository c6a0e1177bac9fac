"""The benchmark scenarios. Each is bounded in count and time and stops by itself."""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.perf.budget import budget
from tests.perf.harness import fetch_arrivals, max_in_window, percentile, processes
from tests.perf.hits import hit_path
from tests.perf.replicas import replicas
from tests.perf.soak import queue_memory, soak
from tests.perf.status_page import status_pages

Row = tuple[str, str]
RATES = {
    "seed": {"all": 2.0},
    "pluralkit": {"generic_get": 10.0, "message": 10.0, "generic_update": 3.0},
}
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
            # a credential the fake does not know: charged to the IP bucket, never cached
            headers = {"Authorization": "x", "X-PKProxy-Max-Wait": "2000"}
            async with session.request(method, url, data=body, headers=headers) as response:
                await response.read()
                key = (
                    "ok"
                    if response.status < 400
                    else ("local_429" if response.status == 429 else "other")
                )
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
        rows.append(
            (
                f"{profile}/{scope}: upstream req/s under saturation",
                f"{achieved:.3f} of {rate:g} ({achieved / rate:.1%})",
            )
        )
        rows.append(
            (
                f"{profile}/{scope}: max requests in any 1 s window",
                f"{max_in_window(times)} (rate {rate:g})",
            )
        )
    upstream_429 = sum(1 for a in arrivals if a["status"] == 429)
    rows.append((f"{profile}: upstream 429s received", str(upstream_429)))
    rows.append(
        (
            f"{profile}: client answers ok / local 429 / other",
            f"{counts['ok']} / {counts['local_429']} / {counts['other']}",
        )
    )
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
        (
            "uncontended miss: direct p50 / p99 (ms)",
            f"{percentile(direct, 0.5) * 1000:.2f} / {percentile(direct, 0.99) * 1000:.2f}",
        ),
        (
            "uncontended miss: via proxy p50 / p99 (ms)",
            f"{percentile(via, 0.5) * 1000:.2f} / {percentile(via, 0.99) * 1000:.2f}",
        ),
        (
            "uncontended miss: added p50 / p99 (ms)",
            f"{(percentile(via, 0.5) - percentile(direct, 0.5)) * 1000:.2f} / "
            f"{(percentile(via, 0.99) - percentile(direct, 0.99)) * 1000:.2f}",
        ),
    ]


def latency() -> list[Row]:
    # A budget high enough that pacing never delays a sequential request: this measures
    # what the proxy itself adds, not the queue.
    scopes = '[{"name": "all", "rate": 1000}]'
    env = {"PKPROXY_BUDGET_SCOPES": scopes}
    with processes("seed", env, fake_profile="unlimited") as (proxy, fake):
        return asyncio.run(_latency(proxy, fake, 400))


async def _hammer(url: str, seconds: float, workers: int) -> tuple[int, list[float]]:
    """Closed loop: `workers` clients each send the next request when the last is answered."""
    stop = time.monotonic() + seconds
    latencies: list[float] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"unexpected {response.status}")
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    return len(latencies), latencies


def _passthrough_app(upstream: str) -> Any:
    """The reference: a bare aiohttp passthrough, no admission, queue or cache."""
    from aiohttp import web

    async def startup(app: web.Application) -> Any:
        app["session"] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        async with request.app["session"].get(
            upstream + request.path_qs, headers={"User-Agent": "ref"}
        ) as r:
            return web.Response(status=r.status, body=await r.read(), content_type=r.content_type)

    app = web.Application()
    app.cleanup_ctx.append(startup)
    app.router.add_get("/{tail:.*}", forward)
    return app


def _hit_rate(loop: str, seconds: float, workers: int) -> tuple[float, list[float]]:
    with processes("seed", {"PKPROXY_SERVER_EVENT_LOOP": loop}, fake_profile="unlimited") as (
        proxy,
        _,
    ):
        url = f"{proxy}/v2/members/abcde"
        asyncio.run(_hammer(url, 0.5, 1))  # fill the entry
        hits, latencies = asyncio.run(_hammer(url, seconds, workers))
    return hits / seconds, latencies


def cache_hits() -> list[Row]:
    """Cache-hit throughput and latency (uvloop and asyncio alternated, three rounds each),
    and a bare aiohttp passthrough as the reference, in one run."""
    import multiprocessing
    import statistics

    from tests.perf.harness import _wait_for, free_port

    seconds, workers = 4.0, 32
    rates: dict[str, list[float]] = {"uvloop": [], "asyncio": []}
    hit_lat: list[float] = []
    for _ in range(3):
        for loop in ("uvloop", "asyncio"):
            rate, latencies = _hit_rate(loop, seconds, workers)
            rates[loop].append(rate)
            if loop == "uvloop":
                hit_lat += latencies
    with processes("seed", fake_profile="unlimited") as (_, fake):
        port = free_port()
        ctx = multiprocessing.get_context("spawn")
        ref = ctx.Process(target=_serve_passthrough, args=(fake, port), daemon=True)
        ref.start()
        try:
            _wait_for(port)
            passes, pass_lat = asyncio.run(
                _hammer(f"http://127.0.0.1:{port}/v2/members/abcde", seconds, workers)
            )
        finally:
            ref.terminate()
            ref.join(10)
    hit_rps = statistics.median(rates["uvloop"])
    pass_rps = passes / seconds
    rounds = {k: " / ".join(f"{r:,.0f}" for r in v) for k, v in rates.items()}
    return [
        (f"cache hit: req/s, uvloop ({workers} clients, 3 rounds)", rounds["uvloop"]),
        ("cache hit: req/s, asyncio loop (3 rounds)", rounds["asyncio"]),
        (
            "cache hit (uvloop): p50 / p99 (ms)",
            f"{percentile(hit_lat, 0.5) * 1000:.2f} / {percentile(hit_lat, 0.99) * 1000:.2f}",
        ),
        ("bare aiohttp passthrough (reference): req/s", f"{pass_rps:,.0f}"),
        (
            "bare passthrough: p50 / p99 (ms)",
            f"{percentile(pass_lat, 0.5) * 1000:.2f} / {percentile(pass_lat, 0.99) * 1000:.2f}",
        ),
        ("cache hit req/s (median, uvloop) / passthrough req/s", f"{hit_rps / pass_rps:.2f}"),
    ]


def _serve_passthrough(upstream: str, port: int) -> None:
    from aiohttp import web

    web.run_app(
        _passthrough_app(upstream), host="127.0.0.1", port=port, print=None, access_log=None
    )


async def _zipf_workload(proxy: str, fake: str, population: int, seconds: float) -> list[Row]:
    """Several bots poll members and systems with Zipf-like popularity."""
    import random

    rng = random.Random(42)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(population)]
    ids = [f"m{n:05d}"[-6:] for n in range(population)]
    stop = time.monotonic() + seconds
    outcome: dict[str, int] = {}

    async def bot(session: aiohttp.ClientSession, n: int) -> None:
        while time.monotonic() < stop:
            member = rng.choices(ids, weights)[0]
            path = f"/v2/members/{member}" if rng.random() < 0.8 else "/v2/systems/exmpl/fronters"
            headers = {"User-Agent": f"bot-{n}", "X-PKProxy-Max-Wait": "4000"}
            async with session.get(proxy + path, headers=headers) as response:
                await response.read()
                key = response.headers.get("X-Cache", str(response.status))
                if response.status == 429:
                    key = "local 429"
                outcome[key] = outcome.get(key, 0) + 1
            await asyncio.sleep(0.1)  # each bot polls about 10 times a second

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(bot(session, n) for n in range(6)))
        arrivals = await fetch_arrivals(session, fake)
    total = sum(outcome.values())
    answered_locally = sum(outcome.get(k, 0) for k in ("HIT", "STALE", "COALESCED"))
    return [
        ("zipf workload: requests (6 bots, 400 members, 20 s)", str(total)),
        (
            "zipf workload: X-Cache breakdown",
            ", ".join(f"{k} {v}" for k, v in sorted(outcome.items())),
        ),
        ("zipf workload: hit ratio (HIT+STALE+COALESCED)", f"{answered_locally / total:.1%}"),
        ("zipf workload: upstream requests / saved", f"{len(arrivals)} / {total - len(arrivals)}"),
    ]


def zipf() -> list[Row]:
    with processes("pluralkit", population=400) as (proxy, fake):
        return asyncio.run(_zipf_workload(proxy, fake, 400, 20.0))


FAIR_KEYS = [
    {"name": "bulk", "key": "bulk-key-0000", "weight": 1, "priority": "background"},
    {"name": "bot-a", "key": "bot-a-key-000", "weight": 1, "priority": "interactive"},
    {"name": "bot-b", "key": "bot-b-key-000", "weight": 1, "priority": "interactive"},
    {"name": "bot-c", "key": "bot-c-key-000", "weight": 1, "priority": "interactive"},
    {"name": "w3", "key": "w3-key-000000", "weight": 3},
    {"name": "w2", "key": "w2-key-000000", "weight": 2},
    {"name": "w1", "key": "w1-key-000000", "weight": 1},
]


def _jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


async def _fair_mixed(proxy: str, fake: str, seconds: float) -> list[Row]:
    """One bulk consumer keeps the queue full; three bots send Poisson traffic (1/s each)."""
    import random

    rng = random.Random(7)
    stop = time.monotonic() + seconds
    waits: dict[str, list[float]] = {}

    async def request(session: aiohttp.ClientSession, name: str, n: int) -> None:
        key = next(k["key"] for k in FAIR_KEYS if k["name"] == name)
        headers = {"X-PKProxy-Key": str(key), "Authorization": "x", "X-PKProxy-Max-Wait": "60000"}
        started = time.perf_counter()
        async with session.get(f"{proxy}/v2/members/abcde?{name}={n}", headers=headers) as r:
            await r.read()
            if r.status == 200:
                waits.setdefault(name, []).append(time.perf_counter() - started)

    async def bulk(session: aiohttp.ClientSession) -> None:
        n = 0
        pending: set[asyncio.Task[None]] = set()
        while time.monotonic() < stop:
            while len(pending) < 200:
                n += 1
                pending.add(asyncio.create_task(request(session, "bulk", n)))
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    async def bot(session: aiohttp.ClientSession, name: str) -> None:
        n, tasks = 0, []
        while time.monotonic() < stop:
            await asyncio.sleep(rng.expovariate(1.0))
            n += 1
            tasks.append(asyncio.create_task(request(session, name, n)))
        await asyncio.gather(*tasks, return_exceptions=True)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{fake}/__fake/arrivals?clear=1"):
            pass
        await asyncio.gather(bulk(session), *(bot(session, b) for b in ("bot-a", "bot-b", "bot-c")))
        arrivals = await fetch_arrivals(session, fake)
    rows: list[Row] = []
    span = max(a["at"] for a in arrivals) - min(a["at"] for a in arrivals)
    for name in ("bulk", "bot-a", "bot-b", "bot-c"):
        values = waits.get(name, [])
        slots = sum(1 for a in arrivals if f"{name}=" in a["path"])
        rows.append(
            (
                f"mixed: {name} wait p50 / p99 (ms), upstream slots",
                f"{percentile(values, 0.5) * 1000:.0f} / {percentile(values, 0.99) * 1000:.0f}"
                f", {slots} ({slots / len(arrivals):.1%})",
            )
        )
    rows.append(("mixed: upstream utilisation (of 10/s)", f"{(len(arrivals) - 1) / span / 10:.1%}"))
    return rows


async def _fair_weighted(proxy: str, fake: str, seconds: float) -> list[Row]:
    """Three consumers with weights 3:2:1, all saturating."""
    stop = time.monotonic() + seconds

    async def flood(session: aiohttp.ClientSession, name: str) -> None:
        key = next(k["key"] for k in FAIR_KEYS if k["name"] == name)
        headers = {"X-PKProxy-Key": str(key), "Authorization": "x", "X-PKProxy-Max-Wait": "60000"}
        n = 0
        pending: set[asyncio.Task[Any]] = set()

        async def one(i: int) -> None:
            async with session.get(f"{proxy}/v2/members/abcde?{name}={i}", headers=headers) as r:
                await r.read()

        while time.monotonic() < stop:
            while len(pending) < 100:
                n += 1
                pending.add(asyncio.create_task(one(n)))
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{fake}/__fake/arrivals?clear=1"):
            pass
        await asyncio.gather(*(flood(session, n) for n in ("w3", "w2", "w1")))
        arrivals = await fetch_arrivals(session, fake)
    arrivals = arrivals[10:]  # skip the start, while the three queues fill
    weights = {"w3": 3, "w2": 2, "w1": 1}
    shares = {n: sum(1 for a in arrivals if f"{n}=" in a["path"]) / len(arrivals) for n in weights}
    rows: list[Row] = [
        (f"weighted: {n} (weight {w}) share of slots", f"{shares[n]:.1%} (fair {w / 6:.1%})")
        for n, w in weights.items()
    ]
    normalised = [shares[n] / (w / 6) for n, w in weights.items()]
    rows.append(("weighted: Jain's fairness index (share/weight)", f"{_jain(normalised):.4f}"))
    return rows


def fairness() -> list[Row]:
    import json

    env = {"PKPROXY_CONSUMERS_KEYS": json.dumps(FAIR_KEYS), "PKPROXY_BUDGET_MAX_QUEUE": "5000"}
    rows: list[Row] = []
    with processes("pluralkit", env) as (proxy, fake):
        rows += asyncio.run(_fair_mixed(proxy, fake, 15.0))
        rows += asyncio.run(_fair_weighted(proxy, fake, 10.0))
    return rows


SCENARIOS: dict[str, Callable[[], list[Row]]] = {
    "saturation": saturation,
    "latency": latency,
    "cache": cache_hits,
    "hits": hit_path,
    "zipf": zipf,
    "fairness": fairness,
    "status": status_pages,
    "soak": soak,
    "queue_memory": queue_memory,
    "budget": budget,
    "replicas": replicas,
}


def run_all(only: list[str] | None) -> None:
    print(
        f"# pkproxy benchmarks on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )
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

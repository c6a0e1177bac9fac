"""Issue 10's benchmarks: several replicas behind one IP sharing their state in one Redis
(`python -m tests.perf replicas`).

Every case starts its own fake PluralKit, its own `redis-server` on a free port and its own
pkproxy processes, all on loopback, so each begins with idle buckets and an empty Redis.
The replicas' traffic carries `Authorization: x`: the fake charges it to the IP's bucket
(the one all replicas share, since they all connect from 127.0.0.1) and the proxy neither
caches nor coalesces it, so every request spends budget.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.perf.harness import (
    RATES,
    ROOT,
    _wait_for,
    fetch_arrivals,
    free_port,
    max_in_window,
    percentile,
    processes,
    scoped_request,
    stop,
)
from tests.redis_fixtures import RedisServer

Row = tuple[str, str]
LONG_WAIT = "180000"  # X-PKProxy-Max-Wait for backlogs, under the ceiling set below
FAKE = [sys.executable, "-m", "tests.perf", "fake"]
CEILING = {"PKPROXY_BUDGET_MAX_WAIT_CEILING_MS": LONG_WAIT}


@dataclass
class Cluster:
    urls: list[str]
    fake: str
    redis: RedisServer
    logs: list[Path]


def _status(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url + "/status", headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=2) as answer:
        data: dict[str, Any] = json.load(answer)
        return data


def _wait_ready(urls: list[str], count: int, timeout: float = 20.0) -> None:
    """Every replica ready, on Redis, and counting all `count` replicas by heartbeat."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = [_status(url)["redis"] for url in urls]
            if all(s["state"] == "ok" and s["replicas"] == count for s in states):
                return
        except OSError:
            states = []
        if time.monotonic() > deadline:
            raise RuntimeError(f"replicas not ready on Redis: {states}")
        time.sleep(0.1)


@contextmanager
def cluster(count: int, profile: str, env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A fake PluralKit with `profile`'s limits, a private redis-server and `count` pkproxy
    replicas sharing it; stop them all on exit."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PKPROXY_")}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        redis = RedisServer(free_port(), directory)
        fake_port = free_port()
        started: list[subprocess.Popen[bytes]] = []
        urls: list[str] = []
        logs: list[Path] = []
        try:
            redis.start()
            started.append(
                subprocess.Popen(
                    [*FAKE, "--port", str(fake_port), "--profile", profile],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                )
            )
            _wait_for(fake_port)
            for n in range(count):
                port = free_port()
                replica_env = {
                    **clean,
                    "PKPROXY_UPSTREAM": f"http://127.0.0.1:{fake_port}",
                    "PKPROXY_PORT": str(port),
                    "PKPROXY_CACHE_DIRECTORY": str(directory / f"cache{n}"),
                    "PKPROXY_BUDGET_PROFILE": profile,
                    "PKPROXY_REDIS_URL": redis.url,
                    "PKPROXY_LOG_LEVEL": "warning",
                    "PKPROXY_LOG_FORMAT": "json",
                    **(env or {}),
                }
                logs.append(directory / f"replica{n}.log")
                with logs[-1].open("wb") as out:
                    started.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "proxy"],
                            cwd=ROOT,
                            env=replica_env,
                            stdout=out,
                            stderr=out,
                        )
                    )
                urls.append(f"http://127.0.0.1:{port}")
            for url in urls:
                _wait_for(int(url.rsplit(":", 1)[1]), timeout=20)
            _wait_ready(urls, count)
            yield Cluster(urls, f"http://127.0.0.1:{fake_port}", redis, logs)
        finally:
            stop(*started)
            redis.kill()


async def _clear(session: aiohttp.ClientSession, fake: str) -> None:
    async with session.get(f"{fake}/__fake/arrivals?clear=1") as response:
        await response.read()


def _statuses(counts: dict[int, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


# -- 1: a seed-profile backlog spread over three replicas ------------------------------------
async def _seed_backlog(c: Cluster, count: int) -> list[Row]:
    """`count` distinct GETs queued at once, round-robin over the replicas."""
    headers = {"Authorization": "x", "X-PKProxy-Max-Wait": LONG_WAIT}
    label = f"seed, {len(c.urls)} replicas, {count} GETs spread"

    async def one(session: aiohttp.ClientSession, n: int) -> int:
        url = f"{c.urls[n % len(c.urls)]}/v2/members/abcde?n={n}"
        async with session.get(url, headers=headers) as response:
            await response.read()
            return response.status

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _clear(session, c.fake)
        started = time.monotonic()
        statuses = await asyncio.gather(*(one(session, n) for n in range(count)))
        elapsed = time.monotonic() - started
        arrivals = await fetch_arrivals(session, c.fake)
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    times = sorted(a["at"] for a in arrivals)
    rate = RATES["seed"]["generic"]
    achieved = (len(times) - 1) / (times[-1] - times[0])
    upstream_429 = sum(1 for a in arrivals if a["status"] == 429)
    return [
        (f"{label}: upstream 429s / upstream requests", f"{upstream_429} / {len(arrivals)}"),
        (f"{label}: max upstream requests in any 1 s window", f"{max_in_window(times)}"),
        (
            f"{label}: utilisation (upstream req/s, first to last)",
            f"{achieved:.3f} of {rate:g} ({achieved / rate:.1%})",
        ),
        (
            f"{label}: backlog done in (s), client answers",
            f"{elapsed:.1f} ({count / elapsed / rate:.1%} of {count / rate:.0f} s at the rate)"
            f"; {_statuses(counts)}",
        ),
    ]


# -- 2: the pluralkit profile, every scope saturated through three replicas -----------------
async def _saturated(c: Cluster, seconds: float) -> list[Row]:
    stop = time.monotonic() + seconds
    counts: dict[int, int] = {}
    headers = {"Authorization": "x", "X-PKProxy-Max-Wait": LONG_WAIT}
    label = f"pluralkit, {len(c.urls)} replicas saturated"

    async def client(session: aiohttp.ClientSession, base: str, scope: str, n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            method, url, body = scoped_request(base, scope, n, i)
            async with session.request(method, url, data=body, headers=headers) as response:
                await response.read()
                counts[response.status] = counts.get(response.status, 0) + 1

    pools = {"generic_get": 4, "message": 4, "generic_update": 2}  # per replica
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _clear(session, c.fake)
        await asyncio.gather(
            *(
                client(session, base, scope, n)
                for base in c.urls
                for scope, pool in pools.items()
                for n in range(pool)
            )
        )
        arrivals = await fetch_arrivals(session, c.fake)
    rows: list[Row] = []
    for scope, rate in RATES["pluralkit"].items():
        times = sorted(a["at"] for a in arrivals if a["scope"] == scope)
        steady = [t for t in times if times[0] + 1.0 <= t <= stop] if times else []
        if len(steady) < 3:
            rows.append((f"{label}: {scope} steady share of rate", "too few arrivals"))
            continue
        achieved = (len(steady) - 1) / (steady[-1] - steady[0])
        rows.append(
            (
                f"{label}: {scope} steady req/s (after 1st s), share of rate; max in 1 s",
                f"{achieved:.3f} of {rate:g} ({achieved / rate:.1%}); {max_in_window(times)}",
            )
        )
    upstream_429 = sum(1 for a in arrivals if a["status"] == 429)
    rows.append(
        (f"{label}: upstream 429s / upstream requests", f"{upstream_429} / {len(arrivals)}")
    )
    rows.append(
        (
            f"{label}: client answers (PATCH: 401 after the limiter)",
            _statuses(counts),
        )
    )
    return rows


# -- 3: what a grant through Redis costs, in-process -----------------------------------------
async def _grant_latency(url: str, count: int, concurrency: int) -> list[Row]:
    import redis.asyncio as aioredis

    from proxy.budget.pacer import LocalPacer
    from proxy.budget.redis_pacer import redis_pacers
    from proxy.clock import SystemClock
    from proxy.core.budget import ScopeSpec
    from proxy.ops.logs import configure_logging
    from proxy.ops.metrics import Metrics
    from proxy.settings import load_settings
    from proxy.shared.link import RedisLink

    configure_logging("warning")  # not redis.connected in the middle of the table
    clock = SystemClock()
    settings = load_settings(env={}, overrides={"redis": {"url": url, "key_prefix": "bench:"}})
    # One link per scheduler, as in `concurrency` replicas (each scope's scheduler asks for
    # its grants one after the other): all on one key, here in one process.
    links = [RedisLink(settings.redis, clock, Metrics()) for _ in range(concurrency)]
    for link in links:
        await link.start()
    # A rate no grant ever waits for: this measures the call, not the pacing.
    spec = ScopeSpec("bench", rate=1e7, burst=1000)
    shared = [redis_pacers(link, 2.0, 0.02, clock)(spec) for link in links]
    local = LocalPacer(spec, 2.0, 0.02, clock)
    ping = aioredis.Redis.from_url(url)

    async def timed(call: Any, n: int) -> list[float]:
        spent = []
        for _ in range(n):
            started = time.perf_counter()
            await call()
            spent.append((time.perf_counter() - started) * 1000)
        return spent

    def granting(pacer: Any) -> Any:
        """One grant as the forwarder makes it: reserve, then the request is sent (for the
        Redis pacer that is a second script, whose round trip the next reserve waits for)."""

        async def grant() -> None:
            if await pacer.reserve() == 0.0:
                pacer.mark_sent()

        return grant

    try:
        for pacer in shared:
            await timed(granting(pacer), 100)  # warm: script loaded, connection open
        await timed(ping.ping, 100)
        local_ms = await timed(granting(local), count)
        ping_ms = await timed(ping.ping, count)
        redis_ms = await timed(granting(shared[0]), count)
        loaded = await asyncio.gather(*(timed(granting(p), count // concurrency) for p in shared))
        loaded_ms = [v for spent in loaded for v in spent]
        fell_back = not all(link.available for link in links)
    finally:
        await ping.aclose()
        for link in links:
            await link.stop()

    def p(values: list[float]) -> str:
        return f"{percentile(values, 0.5):.3f} / {percentile(values, 0.99):.3f}"

    label = "grant latency (in-process, loopback redis-server)"
    return [
        (
            f"{label}: RedisPacer grant (reserve + sent) p50 / p99 (ms), {count} sequential",
            p(redis_ms),
        ),
        (f"{label}: LocalPacer grant (reserve + sent) p50 / p99 (ms)", p(local_ms)),
        (f"{label}: redis PING p50 / p99 (ms), same client library", p(ping_ms)),
        (
            f"{label}: added by Redis p50 / p99 (ms)",
            f"{percentile(redis_ms, 0.5) - percentile(local_ms, 0.5):.3f} / "
            f"{percentile(redis_ms, 0.99) - percentile(local_ms, 0.99):.3f}",
        ),
        (
            f"{label}: RedisPacer grant p50 / p99 (ms), {concurrency} links at once, one key",
            p(loaded_ms),
        ),
        (
            f"{label}: grants over grant_timeout_ms (100) / link lost",
            f"{sum(1 for v in redis_ms + loaded_ms if v > 100)} / {'yes' if fell_back else 'no'}",
        ),
    ]


def _grant_latency_case() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(free_port(), Path(tmp))
        redis.start()
        try:
            return asyncio.run(_grant_latency(redis.url, 5000, 3))
        finally:
            redis.kill()


# -- 4: Redis killed under traffic -----------------------------------------------------------
async def _redis_killed(c: Cluster, profile: str, phases: tuple[float, float, float]) -> list[Row]:
    """Closed-loop clients on every replica; Redis is killed after phases[0] seconds,
    restarted phases[1] seconds later, and the load goes on for phases[2] more."""
    headers = {"Authorization": "x", "X-PKProxy-Max-Wait": "4000"}
    first = time.monotonic()
    killed_at, restarted_at = first + phases[0], first + phases[0] + phases[1]
    stop = restarted_at + phases[2]
    answers: dict[str, int] = {}
    misshaped: list[str] = []
    label = f"{profile}, {len(c.urls)} replicas, Redis killed {phases[0]:g} s in"

    async def client(session: aiohttp.ClientSession, base: str, n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            try:
                async with session.get(
                    f"{base}/v2/members/abcde?c={n}&i={i}", headers=headers
                ) as response:
                    body = await response.read()
                    status = response.status
            except aiohttp.ClientError as error:
                answers["connection error"] = answers.get("connection error", 0) + 1
                misshaped.append(type(error).__name__)
                continue
            key = str(status)
            if status == 429:
                data = json.loads(body or b"{}")
                if not {"message", "code", "retry_after"} <= set(data):
                    misshaped.append(body[:80].decode("utf-8", "replace"))
                    key = "429 misshaped"
                await asyncio.sleep(0.25)
            answers[key] = answers.get(key, 0) + 1

    async def chaos(session: aiohttp.ClientSession) -> tuple[list[str], float | None]:
        await asyncio.sleep(max(0.0, killed_at - time.monotonic()))
        c.redis.kill()
        await asyncio.sleep(max(0.0, (killed_at + restarted_at) / 2 - time.monotonic()))
        during = [await _state(session, url) for url in c.urls]
        await asyncio.sleep(max(0.0, restarted_at - time.monotonic()))
        await asyncio.to_thread(c.redis.start)
        while time.monotonic() < stop:
            if [await _state(session, url) for url in c.urls] == ["ok"] * len(c.urls):
                return during, time.monotonic() - restarted_at
            await asyncio.sleep(0.1)
        return during, None

    per_replica = 6
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _clear(session, c.fake)
        faults = asyncio.create_task(chaos(session))
        await asyncio.gather(
            *(client(session, base, n) for base in c.urls for n in range(per_replica))
        )
        during, recovered = await faults
        arrivals = await fetch_arrivals(session, c.fake)
    # The fake's clock (time.monotonic) is the same as ours: both are this machine's.
    rate = RATES[profile]["generic" if profile == "seed" else "generic_get"]
    phases_at = (
        ("before", first, killed_at),
        ("without Redis", killed_at, restarted_at),
        ("after restart", restarted_at, stop),
    )
    shares, rejected = [], []
    for name, start, end in phases_at:
        inside = [a for a in arrivals if start <= a["at"] < end or (end == stop <= a["at"])]
        shares.append(
            f"{name} {sum(1 for a in inside if a['at'] < end) / (end - start) / rate:.0%}"
        )
        rejected.append(f"{name} {sum(1 for a in inside if a['status'] == 429)}")
    upstream_429 = sum(1 for a in arrivals if a["status"] == 429)
    logs = [p.read_text(errors="replace") for p in c.logs]
    lost = sum(1 for text in logs if "redis.unavailable" in text)
    back = sum(1 for text in logs if "redis.recovered" in text)
    return [
        (
            f"{label}: upstream 429s / upstream requests",
            f"{upstream_429} / {len(arrivals)} ({', '.join(rejected)})",
        ),
        (
            f"{label}: client answers (429: PluralKit-shaped)",
            ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
            + (f"; misshaped {misshaped[:3]}" if misshaped else ""),
        ),
        (
            f"{label}: max upstream in any 1 s window (rate {rate:g})",
            f"{max_in_window([a['at'] for a in arrivals])}",
        ),
        (
            f"{label}: upstream req/s of rate by phase ({'/'.join(f'{p:g}' for p in phases)} s)",
            ", ".join(shares),
        ),
        (
            f"{label}: /status without Redis; all ok again after restart in; logged lost/back",
            f"{' '.join(during)}; "
            + (f"{recovered:.1f} s" if recovered is not None else "not within the run")
            + f"; {lost}/{back} of {len(c.urls)}",
        ),
    ]


async def _state(session: aiohttp.ClientSession, url: str) -> str:
    headers = {"Accept": "application/json"}
    async with session.get(f"{url}/status", headers=headers) as response:
        return str((await response.json())["redis"]["state"])


# -- 5: cache hits with Redis as the second tier ---------------------------------------------
def _hits(env: dict[str, str], seconds: float, workers: int) -> tuple[float, list[float], int]:
    from tests.perf.scenarios import _hammer

    if "PKPROXY_REDIS_URL" in env:  # an empty shared tier for each run
        env = {**env, "PKPROXY_REDIS_KEY_PREFIX": f"hits-{os.urandom(4).hex()}:"}
    with processes("seed", env, fake_profile="unlimited") as (proxy, fake):
        url = f"{proxy}/v2/members/abcde"
        asyncio.run(_hammer(url, 0.5, 1))  # fill the entry
        hits, latencies = asyncio.run(_hammer(url, seconds, workers))

        async def upstream() -> int:
            async with aiohttp.ClientSession() as session:
                return len(await fetch_arrivals(session, fake))

        fetched = asyncio.run(upstream())
    return hits / seconds, latencies, fetched


def _ms(seconds: list[float], q: float) -> str:
    return f"{percentile(seconds, q) * 1000:.2f}"


def _hits_case() -> list[Row]:
    import statistics

    seconds, workers = 3.0, 32
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(free_port(), Path(tmp))
        redis.start()
        try:
            shared = {"PKPROXY_REDIS_URL": redis.url}
            configs = {
                "memory + disk (default)": {},
                "memory + Redis": shared,
                "disk only (memory_bytes 0)": {"PKPROXY_CACHE_MEMORY_BYTES": "0"},
                "Redis only (memory_bytes 0)": {**shared, "PKPROXY_CACHE_MEMORY_BYTES": "0"},
            }
            rounds = {"memory + disk (default)": 3, "memory + Redis": 3}
            results: dict[str, list[tuple[float, list[float], int]]] = {k: [] for k in configs}
            for round_ in range(3):
                for name, env in configs.items():
                    if round_ < rounds.get(name, 1):
                        results[name].append(_hits(env, seconds, workers))
        finally:
            redis.kill()
    rows: list[Row] = []
    for name, runs in results.items():
        rates = [r[0] for r in runs]
        latencies = [v for r in runs for v in r[1]]
        rows.append(
            (
                f"cache hit, {name}: req/s ({workers} clients, {len(runs)} rounds); "
                "p50 / p99 (ms); upstream fetches",
                f"{' / '.join(f'{r:,.0f}' for r in rates)}; "
                f"{_ms(latencies, 0.5)} / {_ms(latencies, 0.99)}; {max(r[2] for r in runs)}",
            )
        )
    ratio = statistics.median(r[0] for r in results["memory + Redis"]) / statistics.median(
        r[0] for r in results["memory + disk (default)"]
    )
    rows.append(("cache hit req/s, memory + Redis / memory + disk (medians)", f"{ratio:.2f}"))
    return rows


def replicas() -> list[Row]:
    rows: list[Row] = []
    with cluster(3, "seed", CEILING) as c:
        rows += asyncio.run(_seed_backlog(c, 240))
    with cluster(3, "pluralkit", CEILING) as c:
        rows += asyncio.run(_saturated(c, 10.0))
    rows += _grant_latency_case()
    with cluster(3, "pluralkit", {"PKPROXY_LOG_LEVEL": "info"}) as c:
        rows += asyncio.run(_redis_killed(c, "pluralkit", (6.0, 8.0, 10.0)))
    with cluster(3, "seed", {"PKPROXY_LOG_LEVEL": "info"}) as c:
        rows += asyncio.run(_redis_killed(c, "seed", (6.0, 8.0, 10.0)))
    rows += _hits_case()
    return rows

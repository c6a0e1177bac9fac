"""The budget benchmarks of issue 9, side by side in one run (`python -m tests.perf budget`).

Every case starts its own fake PluralKit and proxy (harness.processes) on loopback, so each
begins with idle buckets. "Another program" calls the fake directly: it connects from
127.0.0.1 like the proxy, so the fake charges both to the same bucket. The proxy's own
traffic carries `Authorization: x`, which the fake treats as no token: it is charged to the
IP's bucket (not an own_system one) and the proxy neither caches nor coalesces it.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.perf.harness import (
    RATES,
    fetch_arrivals,
    max_in_window,
    percentile,
    processes,
    scoped_request,
)

Row = tuple[str, str]
LONG_WAIT = "60000"  # X-PKProxy-Max-Wait: the default ceiling, so backlogs are not refused


async def _get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, float, str]:
    """Status, seconds to the whole answer, X-Cache."""
    started = time.perf_counter()
    async with session.get(url, headers=headers) as response:
        await response.read()
        return (
            response.status,
            time.perf_counter() - started,
            response.headers.get("X-Cache", ""),
        )


async def _clear(session: aiohttp.ClientSession, fake: str) -> None:
    async with session.get(f"{fake}/__fake/arrivals?clear=1") as response:
        await response.read()


# -- 1, 2: saturated ------------------------------------------------------------------------
async def _saturate(proxy: str, fake: str, profile: str, seconds: float) -> list[Row]:
    """Closed-loop clients per scope keep each scope's queue full for `seconds`."""
    stop = time.monotonic() + seconds
    counts: dict[int, int] = {}
    headers = {"Authorization": "x", "X-PKProxy-Max-Wait": LONG_WAIT}

    async def client(session: aiohttp.ClientSession, scope: str, n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            method, url, body = scoped_request(proxy, scope, n, i)
            async with session.request(method, url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
            counts[status] = counts.get(status, 0) + 1

    # Enough clients per scope that its queue never runs dry, few enough to drain fast.
    pools = {"generic": 8, "generic_get": 12, "message": 12, "generic_update": 6}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _clear(session, fake)
        await asyncio.gather(
            *(client(session, s, n) for s in RATES[profile] for n in range(pools[s]))
        )
        arrivals = await fetch_arrivals(session, fake)
    rows: list[Row] = []
    for scope, rate in RATES[profile].items():
        times = sorted(a["at"] for a in arrivals if a["scope"] == scope)
        if len(times) < 3:
            rows.append((f"{profile} saturated: {scope} steady share", "no arrivals"))
            continue
        # Steady state: from one second after the scope's first arrival (the initial burst
        # is spent by then) to the moment the clients stopped adding work.
        steady = [t for t in times if times[0] + 1.0 <= t <= stop]
        achieved = (len(steady) - 1) / (steady[-1] - steady[0])
        rows.append(
            (
                f"{profile} saturated: {scope} steady req/s (after 1st s), share of rate",
                f"{achieved:.3f} of {rate:g} ({achieved / rate:.2%}); mean gap "
                f"{1000 / achieved:.1f} ms (1/rate {1000 / rate:.0f} ms)",
            )
        )
        rows.append(
            (
                f"{profile} saturated: {scope} max in any 1 s window (incl. burst)",
                f"{max_in_window(times)}",
            )
        )
    upstream_429 = sum(1 for a in arrivals if a["status"] == 429)
    rows.append(
        (
            f"{profile} saturated: upstream 429s / upstream requests",
            f"{upstream_429} / {len(arrivals)}",
        )
    )
    rows.append(
        (
            f"{profile} saturated: client answers by status (PATCH: 401 after the limiter)",
            ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        )
    )
    return rows


# -- 3: a burst into an idle proxy ----------------------------------------------------------
async def _idle_burst(proxy: str, fake: str, count: int) -> list[Row]:
    async with aiohttp.ClientSession() as session:
        # Answered by the proxy itself (never forwarded): the server is up and serving.
        async with session.options(f"{proxy}/v2/members/abcde") as response:
            await response.read()
        await _clear(session, fake)
        headers = {"Authorization": "x", "X-PKProxy-Max-Wait": LONG_WAIT}
        results = await asyncio.gather(
            *(_get(session, f"{proxy}/v2/members/abcde?n={n}", headers) for n in range(count))
        )
        arrivals = await fetch_arrivals(session, fake)
    latencies = [r[1] * 1000 for r in results]
    times = sorted(a["at"] for a in arrivals)
    at_once = sum(1 for t in times if t - times[0] < 0.05) if times else 0
    statuses = sorted({r[0] for r in results})
    return [
        (
            f"pluralkit idle burst: {count} GETs at once, each (ms, sorted)",
            " ".join(f"{v:.0f}" for v in sorted(latencies)),
        ),
        (
            "pluralkit idle burst: p50 / last (ms)",
            f"{percentile(latencies, 0.5):.0f} / {max(latencies):.0f}",
        ),
        (
            "pluralkit idle burst: sent within 50 ms / statuses / upstream 429s",
            f"{at_once} / {statuses} / {sum(1 for a in arrivals if a['status'] == 429)}",
        ),
    ]


# -- 4, 5: another program on the same IP ---------------------------------------------------
async def _shared_ip(
    proxy: str, fake: str, profile: str, other_rate: float, count: int, cap: float, wait: str
) -> list[Row]:
    """The other program calls the fake directly at `other_rate`/s (on an absolute
    schedule, so slow answers do not slow it down) while the proxy works off `count`
    distinct GETs queued at once; stopped after `cap` seconds if not done."""
    other_statuses: list[int] = []
    done = asyncio.Event()
    label = f"{profile} shared IP (other {other_rate:g}/s, backlog {count})"

    async def other_program(session: aiohttp.ClientSession) -> None:
        start, k = time.monotonic(), 0
        while not done.is_set():
            async with session.get(f"{fake}/v2/systems/exmpl?other={k}") as response:
                await response.read()
                other_statuses.append(response.status)
            k += 1
            await asyncio.sleep(max(0.0, start + k / other_rate - time.monotonic()))

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _clear(session, fake)
        other = asyncio.create_task(other_program(session))
        await asyncio.sleep(1.0)  # the other program is in its stride before the backlog
        headers = {"Authorization": "x", "X-PKProxy-Max-Wait": wait}
        started = time.monotonic()
        tasks = [
            asyncio.create_task(_get(session, f"{proxy}/v2/members/abcde?b={n}", headers))
            for n in range(count)
        ]
        finished, pending = await asyncio.wait(tasks, timeout=cap)
        elapsed = time.monotonic() - started
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        done.set()
        await other
        arrivals = await fetch_arrivals(session, fake)
    results = [t.result() for t in finished]
    served = [r for r in results if r[0] == 200]
    last = max((r[1] for r in served), default=elapsed)
    # The proxy's own 429s carry no X-Cache; an upstream 429 passed back does.
    local_429 = sum(1 for r in results if r[0] == 429 and not r[2])
    passed_429 = sum(1 for r in results if r[0] == 429 and r[2])
    mine = [a for a in arrivals if "?b=" in a["path"]]
    theirs = [a for a in arrivals if "other=" in a["path"]]
    proxy_429 = sum(1 for a in mine if a["status"] == 429)
    other_429 = sum(1 for s in other_statuses if s == 429)
    other_ok = sum(1 for s in other_statuses if s == 200)
    rows: list[Row] = [
        (f"{label}: proxy upstream 429s / calls", f"{proxy_429} / {len(mine)}"),
        (f"{label}: other program 429s / calls", f"{other_429} / {len(theirs)}"),
        (
            f"{label}: other program's calls that succeeded",
            f"{other_ok / max(1, len(other_statuses)):.1%}",
        ),
        (
            f"{label}: backlog served, rate",
            f"{len(served)} of {count} in {last:.1f} s: {len(served) / last:.2f}/s"
            + (f" (stopped at {cap:.0f} s)" if pending else ""),
        ),
        (
            f"{label}: backlog answers 200 / local 429 / passed-back 429 / other / cut at cap",
            f"{len(served)} / {local_429} / {passed_429} / "
            f"{len(results) - len(served) - local_429 - passed_429} / {len(pending)}",
        ),
    ]
    return rows


# -- 6: an interactive request for a flight a background flood has queued -------------------
CONSUMER_KEYS = [
    {"name": "bulk", "key": "bulk-key-0000", "priority": "background"},
    {"name": "bot", "key": "bot-key-00000", "priority": "interactive"},
]


async def _inversion(proxy: str, fake: str, count: int) -> list[Row]:
    interval = 1.0 / RATES["pluralkit"]["generic_get"]
    paths = [f"/v2/members/abcde?q={n}" for n in range(count)]  # one flight per path
    bulk = {"X-PKProxy-Key": "bulk-key-0000", "X-PKProxy-Max-Wait": LONG_WAIT}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _clear(session, fake)
        flood = [asyncio.create_task(_get(session, proxy + p, bulk)) for p in paths]
        deadline = time.monotonic() + 10.0
        while len(await fetch_arrivals(session, fake)) < 15 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # past the initial burst: the queue is working
        joined_at = len(await fetch_arrivals(session, fake))
        bot = {"X-PKProxy-Key": "bot-key-00000", "X-PKProxy-Max-Wait": LONG_WAIT}
        status, waited, cache = await _get(session, proxy + paths[-1], bot)
        arrivals = await fetch_arrivals(session, fake)
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
    order = [a["path"] for a in arrivals]
    position = order.index(paths[-1]) - joined_at + 1 if paths[-1] in order else -1
    return [
        (
            f"interactive vs background ({count} queued): interactive wait (ms)",
            f"{waited * 1000:.0f} = {waited / interval:.2f} slot intervals "
            f"(status {status}, X-Cache {cache})",
        ),
        ("interactive vs background: slot interval (ms)", f"{interval * 1000:.0f}"),
        (
            "interactive vs background: upstream sends until its flight / queued at join",
            f"{position} / {count - joined_at}",
        ),
    ]


def budget() -> list[Row]:
    rows: list[Row] = []
    with processes("pluralkit") as (proxy, fake):
        rows += asyncio.run(_saturate(proxy, fake, "pluralkit", 8.0))
    with processes("seed") as (proxy, fake):
        rows += asyncio.run(_saturate(proxy, fake, "seed", 12.0))
    with processes("pluralkit") as (proxy, fake):
        rows += asyncio.run(_idle_burst(proxy, fake, 8))
    with processes("pluralkit") as (proxy, fake):
        rows += asyncio.run(_shared_ip(proxy, fake, "pluralkit", 3.0, 200, 60.0, LONG_WAIT))
    # At the seed rate a backlog of 40 may take longer than the default ceiling of 60 s.
    env = {"PKPROXY_BUDGET_MAX_WAIT_CEILING_MS": "120000"}
    with processes("seed", env) as (proxy, fake):
        rows += asyncio.run(_shared_ip(proxy, fake, "seed", 1.0, 40, 120.0, "120000"))
    env = {"PKPROXY_CONSUMERS_KEYS": json.dumps(CONSUMER_KEYS)}
    with processes("pluralkit", env) as (proxy, fake):
        rows += asyncio.run(_inversion(proxy, fake, 200))
    return rows

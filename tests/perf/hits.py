"""The cache-hit path against the framework's floor (issue 13): pkproxy's hits and a bare
aiohttp handler returning the same body, measured by wrk in alternated rounds in one run.

Both run uvloop in a process of their own; wrk (Debian package `wrk`) is the load, one
thread and 64 connections, as in the issue. pkproxy runs with its default logging
(`log.requests = sample`) writing to /dev/null."""

from __future__ import annotations

import multiprocessing
import re
import shutil
import statistics
import subprocess
import urllib.request

from tests.perf.harness import _wait_for, free_port, processes

Row = tuple[str, str]
ROUNDS, SECONDS = 3, 5


def _serve_bare(port: int, body: bytes, content_type: str) -> None:
    import uvloop
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _wrk(url: str) -> tuple[float, float]:
    """Requests/s and p99 latency (ms) of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{SECONDS}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=SECONDS + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99


def hit_path() -> list[Row]:
    if shutil.which("wrk") is None:
        return [("hit path", "not measured: wrk is not installed (apt-get install wrk)")]
    env = {"PKPROXY_LOG_LEVEL": "info", "PKPROXY_SERVER_EVENT_LOOP": "uvloop"}
    with processes("seed", env, fake_profile="unlimited") as (proxy, _):
        url = f"{proxy}/v2/members/abcde"
        with urllib.request.urlopen(url) as answer:  # fill the entry
            body, content_type = answer.read(), answer.headers["Content-Type"]
        port = free_port()
        ctx = multiprocessing.get_context("spawn")
        bare = ctx.Process(target=_serve_bare, args=(port, body, content_type), daemon=True)
        bare.start()
        try:
            _wait_for(port)
            hits, floor = [], []
            for _ in range(ROUNDS):
                hits.append(_wrk(url))
                floor.append(_wrk(f"http://127.0.0.1:{port}/v2/members/abcde"))
        finally:
            bare.terminate()
            bare.join(10)
    hit_rps = statistics.median(r for r, _ in hits)
    floor_rps = statistics.median(r for r, _ in floor)
    hit_p99 = statistics.median(p for _, p in hits)
    floor_p99 = statistics.median(p for _, p in floor)

    def rounds(values: list[tuple[float, float]]) -> str:
        return " / ".join(f"{r:,.0f} ({p:.1f} ms)" for r, p in values)

    return [
        (f"pkproxy cache hits: req/s (p99) by round, wrk -t1 -c64 {SECONDS}s", rounds(hits)),
        ("bare aiohttp handler, same body: req/s (p99) by round", rounds(floor)),
        ("hit throughput / bare (medians; target >= 0.6)", f"{hit_rps / floor_rps:.2f}"),
        (
            "hit p99 / bare p99 (medians; target <= 2)",
            f"{hit_p99:.1f} / {floor_p99:.1f} ms = {hit_p99 / floor_p99:.2f}",
        ),
    ]

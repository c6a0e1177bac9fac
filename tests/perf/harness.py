"""Benchmark harness: the fake PluralKit and pkproxy each in their own process, on loopback."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakepk import (
    PLURALKIT_SCOPES,
    SEED_SCOPES,
    FakePluralKit,
    max_in_window,
    pluralkit_scope,
)

__all__ = ["max_in_window"]

ROOT = Path(__file__).resolve().parents[2]

# Upstream's limits by profile, as the fake enforces them (scope name: requests/s).
RATES = {"seed": SEED_SCOPES, "pluralkit": PLURALKIT_SCOPES}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fake_app(profile: str, population: int) -> web.Application:
    fake = FakePluralKit()
    if profile == "pluralkit":
        fake.scopes, fake.scope_of = dict(PLURALKIT_SCOPES), pluralkit_scope
    elif profile == "unlimited":
        fake.scopes = {"generic": 1e6}
    for n in range(population):
        mid = f"m{n:05d}"[-6:]
        fake.members[mid] = {**fake.members["abcde"], "id": mid, "name": f"Member {n}"}

    async def arrivals(request: web.Request) -> web.Response:
        data = [
            {"at": a.at, "status": a.status, "scope": a.scope, "path": a.path}
            for a in fake.arrivals
        ]
        if request.query.get("clear"):
            fake.arrivals.clear()
        return web.json_response(data)

    app = web.Application()
    app.router.add_get("/__fake/arrivals", arrivals)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    return app


def serve_fake() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile", default="seed")
    parser.add_argument("--population", type=int, default=0)
    args = parser.parse_args(sys.argv[2:])
    web.run_app(
        _fake_app(args.profile, args.population),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )


def _wait_for(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@contextmanager
def processes(
    profile: str = "seed",
    env: dict[str, str] | None = None,
    population: int = 0,
    fake_profile: str | None = None,
) -> Iterator[tuple[str, str]]:
    """Start the fake and the proxy; yield (proxy_url, fake_url); stop both."""
    fake_port, proxy_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as cache_dir:
        fake = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.perf",
                "fake",
                "--port",
                str(fake_port),
                "--profile",
                fake_profile or profile,
                "--population",
                str(population),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        proxy_env = {
            **os.environ,
            "PKPROXY_UPSTREAM": f"http://127.0.0.1:{fake_port}",
            "PKPROXY_PORT": str(proxy_port),
            "PKPROXY_CACHE_DIRECTORY": cache_dir,
            "PKPROXY_BUDGET_PROFILE": profile,
            "PKPROXY_LOG_LEVEL": "warning",
            **(env or {}),
        }
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy"], cwd=ROOT, env=proxy_env, stdout=subprocess.DEVNULL
        )
        try:
            _wait_for(fake_port)
            _wait_for(proxy_port)
            yield f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{fake_port}"
        finally:
            stop(proxy, fake)


def stop(*processes: subprocess.Popen[Any]) -> None:
    """Terminate them all, then kill what has not exited within 15 s."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def scoped_request(base: str, scope: str, n: int, i: int) -> tuple[str, str, bytes | None]:
    """The `i`-th request of client `n` that a `pluralkit`-profile scope is charged for:
    distinct each time, so that nothing is cached or coalesced."""
    if scope == "message":
        return "GET", f"{base}/v2/messages/123456789012345678?c={n}&i={i}", None
    if scope == "generic_update":
        return "PATCH", f"{base}/v2/members/abcde", b'{"name":"x"}'
    return "GET", f"{base}/v2/members/abcde?c={n}&i={i}", None


async def fetch_arrivals(session: Any, fake_url: str) -> list[dict[str, Any]]:
    async with session.get(f"{fake_url}/__fake/arrivals") as response:
        return list(await response.json())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(coro: Any) -> Any:
    return asyncio.run(coro)

"""Operations: metrics, readiness, graceful shutdown, configuration checks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, make_mocked_request

from proxy.app import create_app
from proxy.ops.endpoints import readyz
from proxy.settings import load_settings
from tests.conftest import MakeProxy
from tests.fakepk import FakePluralKit
from tests.waits import accounted_for, port_accepts, port_refuses, wait_until

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = [
    "pkproxy_requests_total",
    "pkproxy_upstream_requests_total",
    "pkproxy_upstream_throttled_total",
    "pkproxy_local_throttled_total",
    "pkproxy_queue_depth",
    "pkproxy_queue_wait_seconds_bucket",
    "pkproxy_coalesced_requests_total",
    "pkproxy_cache_entries",
    "pkproxy_cache_bytes",
    "pkproxy_cache_lookups_total",
    "pkproxy_cache_evictions_total",
    "pkproxy_budget_utilisation_ratio",
    "pkproxy_request_duration_seconds_bucket",
]


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def scrape(http: aiohttp.ClientSession, proxy: TestServer) -> str:
    async with http.get(proxy.make_url("/metrics")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


async def test_metrics_expose_every_family_and_move_with_traffic(
    fake: FakePluralKit, make_proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    """Each family is exported; requests, hits, misses, upstream calls and local 429s count."""
    proxy = await make_proxy(cache={"memory_bytes": 600})
    before = await scrape(http, proxy)
    assert "pkproxy_upstream_throttled_total{" in before  # exported at zero from the start
    for path in ("/v2/members/abcde", "/v2/members/abcde", "/v2/members/prvmb"):
        async with http.get(proxy.make_url(path)) as r:
            await r.read()
    async with http.get(
        proxy.make_url("/v2/members/zyxwv?x=1"), headers={"X-PKProxy-Max-Wait": "0"}
    ) as r:
        assert r.status == 429
    after = await scrape(http, proxy)
    for name in FAMILIES:
        assert name in after, name
    route = "/v2/members/{ref}"
    assert sample(after, "pkproxy_requests_total", route=route, cache="HIT", status="200") == 1
    assert sample(after, "pkproxy_requests_total", route=route, cache="MISS", status="200") == 2
    assert sample(after, "pkproxy_cache_lookups_total", result="hit") == 1
    assert sample(after, "pkproxy_upstream_requests_total", scope="all", status="200") == 2
    assert sample(after, "pkproxy_local_throttled_total", scope="all", consumer="peer") == 1
    assert sample(after, "pkproxy_upstream_throttled_total") == 0
    assert sample(after, "pkproxy_cache_entries", tier="disk") == 2
    assert sample(after, "pkproxy_cache_evictions_total", tier="memory") >= 1
    assert sample(after, "pkproxy_budget_utilisation_ratio", scope="all") > 0
    assert fake.upstream_arrivals(429) == []


async def test_status_reports_scopes_cache_and_consumers(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, fake: FakePluralKit
) -> None:
    """/status is JSON with per-scope rate and queue, cache stats; it spends no budget."""
    proxy = await make_proxy()
    async with http.get(proxy.make_url("/status")) as r:
        status = await r.json()
    assert status["scopes"]["all"]["rate"] == 2.0
    assert {"queue_depth", "queue_by_consumer", "utilisation_1m", "paused_ms"} <= set(
        status["scopes"]["all"]
    )
    assert {"disk_entries", "hit_ratio"} <= set(status["cache"])
    async with http.get(proxy.make_url("/readyz")) as r:
        assert r.status == 200
    assert fake.arrivals == []


async def test_readyz_is_503_before_startup(tmp_path: Path) -> None:
    """Before the application's startup has run, readiness is 503 'starting'."""
    app = create_app(load_settings(env={}, overrides={"cache": {"directory": str(tmp_path)}}))
    response = await readyz(make_mocked_request("GET", "/readyz", app=app))
    assert response.status == 503
    assert json.loads(response.body)["reason"] == "starting"  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pkproxy_env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PKPROXY_")}
    return {**clean, "PKPROXY_LOG_LEVEL": "warning", **extra}


async def start_process(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(  # noqa: ASYNC220 - starting a process does not block
        [sys.executable, "-m", "proxy"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )
    try:
        await wait_until(lambda: port_accepts(port), 10.0, 0.05, "pkproxy started")
    except AssertionError:
        process.kill()
        raise
    return process


@pytest.mark.slow
async def test_sigterm_drains_then_exits_0_and_the_cache_persists(
    upstream: TestServer, fake: FakePluralKit, tmp_path: Path
) -> None:
    """SIGTERM with requests queued: readiness goes 503, the in-flight request completes,
    queued ones are served within the drain window and the rest get a PluralKit-shaped 503;
    exit code 0; a restarted process serves the persisted cache."""
    port = free_port()
    env = pkproxy_env(
        PKPROXY_UPSTREAM=str(upstream.make_url("/")),
        PKPROXY_PORT=str(port),
        PKPROXY_CACHE_DIRECTORY=str(tmp_path / "cache"),
        PKPROXY_SERVER_DRAIN_SECONDS="1.2",
    )
    base = f"http://127.0.0.1:{port}"
    process = await start_process(env, port)
    probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    async with probe.get(f"{base}/healthz") as r:  # opens the connection kept alive below
        assert r.status == 200
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v2/members/abcde") as r:
            assert r.status == 200
        # Pacing, not a barrier: the slot frees, so the first queued request goes at once.
        await asyncio.sleep(0.6)
        fake.delay = 0.4
        queued = [
            asyncio.create_task(
                http.get(f"{base}/v2/members/abcde?q={n}", headers={"Authorization": "x"})
            )
            for n in range(8)
        ]
        await accounted_for(http, base, fake, 1 + 8)  # one in flight upstream, seven queued
        process.send_signal(signal.SIGTERM)
        await wait_until(lambda: port_refuses(port), what="the drain stopped accepting")
        async with probe.get(f"{base}/readyz") as r:  # new connections are refused now
            assert r.status == 503
        await probe.close()
        answers: list[Any] = []
        for task in queued:
            response = await task
            answers.append((response.status, await response.json()))
            response.release()
        assert await asyncio.to_thread(process.wait, 30) == 0
    statuses = [status for status, _ in answers]
    assert statuses.count(200) >= 2 and statuses.count(503) >= 3, statuses
    assert all(
        body == {"message": "503: pkproxy is shutting down", "code": 0}
        for status, body in answers
        if status == 503
    )
    served = len(fake.arrivals)
    process = await start_process(env, port)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/v2/members/abcde") as r:
            assert r.status == 200 and r.headers["X-Cache"] == "HIT"
        assert len(fake.arrivals) == served
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        env=pkproxy_env(**env),
        timeout=60,
    )


def test_check_config_valid_file_prints_effective_config_with_keys_masked(tmp_path: Path) -> None:
    """A valid file: exit 0, the effective configuration, keys masked."""
    config = tmp_path / "ok.toml"
    config.write_text(
        '[consumers]\nkeys = [{name = "bot", key = "very-secret-key"}]\n'
        '[budget]\nprofile = "pluralkit"\n'
    )
    result = run_cli(
        "check-config", "--config", str(config), "--port", "9999", PKPROXY_BUDGET_MARGIN="0.1"
    )
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["server"]["port"] == 9999 and effective["budget"]["margin"] == 0.1
    assert [s["name"] for s in effective["budget"]["scopes"]] == [
        "message",
        "generic_get",
        "generic_update",
    ]
    assert (
        "very-secret-key" not in result.stdout
        and effective["consumers"]["keys"][0]["key"] == "********"
    )


def test_check_config_names_every_problem(tmp_path: Path) -> None:
    """Several errors and unknown keys in one file: all named in one message, exit non-zero."""
    config = tmp_path / "bad.toml"
    config.write_text(
        '[server]\nport = "eighty"\nlisten = 1\n[budget]\nmargin = -1\n'
        'scopes = [{name = "x", rate = 0}]\n[cache]\nttl = {"/v2/nope" = 5}\n'
        "[unknown]\na = 1\n"
    )
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    for fragment in (
        "server.port",
        "server.listen",
        "budget.margin",
        "budget.scopes[0]",
        "/v2/nope",
        "[unknown]",
    ):
        assert fragment in result.stderr, fragment


def test_check_config_bad_environment_variable() -> None:
    """A bad or unknown PKPROXY_* variable is an error, not ignored."""
    result = run_cli("check-config", PKPROXY_SERVER_PORT="http", PKPROXY_SERVRE_PORT="1")
    assert result.returncode == 2
    assert "PKPROXY_SERVER_PORT" in result.stderr and "PKPROXY_SERVRE_PORT" in result.stderr


def test_invalid_configuration_stops_before_binding(tmp_path: Path) -> None:
    """`pkproxy` with a bad configuration exits with the same message and binds nothing."""
    port = free_port()
    result = run_cli(PKPROXY_PORT=str(port), PKPROXY_BUDGET_PROFILE="fastest")
    assert result.returncode == 2 and "budget.profile" in result.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # still free

"""The command line: check-config, cache stats and clear, the server's own start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import MakeProxy

ROOT = Path(__file__).resolve().parents[2]


def pkproxy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PKPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        env={**clean, **(env or {})},
        timeout=60,
    )


async def test_cache_stats_reports_the_running_proxys_hit_ratio(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """While the proxy runs, `cache stats` adds its hit ratio since start."""
    proxy = await make_proxy()
    for _ in range(4):
        async with http.get(proxy.make_url("/v2/members/abcde")) as r:
            assert r.status == 200
    env = {"PKPROXY_CACHE_DIRECTORY": str(tmp_path / "cache"), "PKPROXY_PORT": str(proxy.port)}
    import asyncio

    result = await asyncio.to_thread(pkproxy, "cache", "stats", env=env)
    stats = json.loads(result.stdout)
    assert stats["entries"] == 1
    assert stats["running"]["hit_ratio"] == 0.75 and stats["running"]["lookups"] == 4


async def test_cache_stats_and_clear(
    make_proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """`cache stats` counts what the disk holds; `cache clear` empties it."""
    proxy = await make_proxy()
    for path in ("/v2/members/abcde", "/v2/systems/exmpl"):
        async with http.get(proxy.make_url(path)) as r:
            assert r.status == 200
    await proxy.close()
    env = {"PKPROXY_CACHE_DIRECTORY": str(tmp_path / "cache"), "PKPROXY_PORT": "9"}
    stats = json.loads(pkproxy("cache", "stats", env=env).stdout)
    assert stats["entries"] == 2 and stats["bytes"] > 0 and stats["running"] is None
    cleared = pkproxy("cache", "clear", env=env)
    assert cleared.returncode == 0 and json.loads(cleared.stdout)["removed"] == 2
    assert json.loads(pkproxy("cache", "stats", env=env).stdout)["entries"] == 0

"""Shared fixtures: the fake PluralKit on a real socket, and the real proxy in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.clock import Clock
from proxy.ops.logs import configure_logging
from proxy.settings import Settings, load_settings
from tests.fakepk import FakePluralKit
from tests.redis_fixtures import redis_prefix, redis_server
from tests.served import ProxyTestServer

__all__ = ["redis_prefix", "redis_server"]  # fixtures for every test module

configure_logging("info", "json")

MakeProxy = Callable[..., Awaitable[TestServer]]
ServeProxy = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def fake() -> FakePluralKit:
    return FakePluralKit()


@pytest.fixture
async def upstream(aiohttp_server: Any, fake: FakePluralKit) -> TestServer:
    server: TestServer = await aiohttp_server(fake.app())
    return server


def proxy_settings(upstream_url: str, cache_dir: Path, **sections: dict[str, Any]) -> Settings:
    overrides: dict[str, dict[str, Any]] = {
        "upstream": {"url": upstream_url, "timeout_seconds": 5.0},
        "cache": {"directory": str(cache_dir)},
        # Here the fake, the proxy and the clients share one event loop, whose lag under a
        # burst of 50 clients varies by more than the default margin's 7.5 ms at 2/s (a
        # network's jitter is what the default is for; tests/perf measures it between
        # processes). A test that is about the margin sets its own.
        "budget": {"margin": 0.05},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_settings(env={}, overrides=overrides)


@pytest.fixture
async def serve_proxy() -> AsyncIterator[ServeProxy]:
    """Serve the app of `settings` as `pkproxy` does (ProxyRunner on a real port); every
    server started is closed at the end of the test."""
    servers: list[TestServer] = []

    async def serve(
        settings: Settings, clock: Clock | None = None, port: int | None = None
    ) -> TestServer:
        server = ProxyTestServer(create_app(settings, clock), settings, port=port)
        await server.start_server()
        servers.append(server)
        return server

    yield serve
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def make_proxy(serve_proxy: ServeProxy, upstream: TestServer, tmp_path: Path) -> MakeProxy:
    async def make(clock: Clock | None = None, **sections: dict[str, Any]) -> TestServer:
        settings = proxy_settings(str(upstream.make_url("/")), tmp_path / "cache", **sections)
        return await serve_proxy(settings, clock)

    return make


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client, as a bot would use: no base URL magic, a real socket."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session

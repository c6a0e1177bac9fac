"""Real Redis for tests: the machine's server on 127.0.0.1:6379 under a key prefix of the
test's own, or a private `redis-server` on a free port for tests that stop or break it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from proxy.clock import Clock
from proxy.ops.metrics import Metrics
from proxy.settings import load_settings
from proxy.shared.link import RedisLink

SHARED_URL = os.environ.get("PKPROXY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix() -> str:
    return f"pkproxy-test:{os.getpid()}:{os.urandom(4).hex()}:"


def shared_redis_or_skip() -> str:
    try:
        redis.Redis.from_url(SHARED_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as error:  # pragma: no cover - CI always has it
        pytest.fail(f"no Redis at {SHARED_URL}: {error} (.ci/run starts one)")
    return SHARED_URL


async def make_link(clock: Clock, prefix: str, url: str = SHARED_URL) -> RedisLink:
    settings = load_settings(env={}, overrides={"redis": {"url": url, "key_prefix": prefix}})
    link = RedisLink(settings.redis, clock, Metrics())
    await link.start()
    return link


async def drop_prefix(prefix: str, url: str = SHARED_URL) -> None:
    client = aioredis.Redis.from_url(url)
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@dataclass
class RedisServer:
    """A private redis-server that a test may kill and restart."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    shared_redis_or_skip()
    prefix = unique_prefix()
    yield prefix
    await drop_prefix(prefix)

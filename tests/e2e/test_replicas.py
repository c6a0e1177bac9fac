"""Several replicas behind one IP sharing one budget, one cache and invalidation through a
real Redis (issue 10): real pkproxy processes in front of one fake PluralKit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from tests.fakepk import FakePluralKit
from tests.redis_fixtures import (
    SHARED_URL,
    RedisServer,
    drop_prefix,
    free_port,
    shared_redis_or_skip,
    unique_prefix,
)
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Replica:
    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.port, self.process, self.log = port, process, log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def spawn(port: int, env: dict[str, str], log: Path) -> Replica:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    return Replica(port, process, log)


@asynccontextmanager
async def replicas(
    count: int,
    upstream: TestServer,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    rate: float = 5.0,
    **extra: str,
) -> AsyncIterator[list[Replica]]:
    """`count` real pkproxy processes sharing Redis, in front of the fake."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PKPROXY_")}
    started: list[Replica] = []
    try:
        for n in range(count):
            port = free_port()
            env = {
                **clean,
                "PKPROXY_PORT": str(port),
                "PKPROXY_UPSTREAM": str(upstream.make_url("")).rstrip("/"),
                "PKPROXY_REDIS_URL": redis_url,
                "PKPROXY_REDIS_KEY_PREFIX": prefix,
                "PKPROXY_REDIS_HEARTBEAT_SECONDS": "0.2",
                "PKPROXY_CACHE_DIRECTORY": str(tmp_path / f"cache{n}"),
                "PKPROXY_BUDGET_SCOPES": json.dumps([{"name": "all", "rate": rate}]),
                # Three processes, a fake and the tests share two cores here: each replica's
                # grant-to-send delay varies by more than the default margin (2 % of 200 ms).
                "PKPROXY_BUDGET_MARGIN": "0.1",
                "PKPROXY_LOG_FORMAT": "json",
                **extra,
            }
            started.append(spawn(port, env, tmp_path / f"replica{n}.log"))
        async with aiohttp.ClientSession() as http:
            for replica in started:
                await wait_until(
                    lambda r=replica: ready(http, r), timeout=20, what=f"replica :{replica.port}"
                )
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        for replica in started:
            try:
                replica.process.wait(15)
            except subprocess.TimeoutExpired:
                replica.process.kill()


async def ready(http: aiohttp.ClientSession, replica: Replica) -> bool:
    try:
        async with http.get(replica.url("/readyz")) as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def get(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, dict[str, str], Any]:
    async with http.get(url, headers=headers) as r:
        body = await r.read()
        return r.status, dict(r.headers), json.loads(body) if body else None


async def status(http: aiohttp.ClientSession, replica: Replica) -> dict[str, Any]:
    async with http.get(replica.url("/status"), headers={"Accept": "application/json"}) as r:
        data: dict[str, Any] = await r.json()
        return data


async def test_three_replicas_spend_one_budget(
    fake: FakePluralKit, upstream: TestServer, tmp_path: Path
) -> None:
    """30 requests spread over three replicas at 5/s: no 1-second window above the rate,
    no upstream 429, every answer 200 (alone, each replica would pace at 5/s: 15/s)."""
    shared_redis_or_skip()
    prefix = unique_prefix()
    fake.scopes = {"generic": 5.0}
    try:
        async with (
            replicas(3, upstream, SHARED_URL, prefix, tmp_path) as running,
            aiohttp.ClientSession() as http,
        ):
            wait = {"Authorization": "x", "X-PKProxy-Max-Wait": "30000"}
            statuses = await asyncio.gather(
                *(
                    get(http, running[n % 3].url(f"/v2/members/abcde?n={n}"), **wait)
                    for n in range(30)
                )
            )
    finally:
        await drop_prefix(prefix)
    assert [s for s, _, _ in statuses] == [200] * 30
    assert fake.upstream_arrivals(429) == []
    assert fake.max_in_window(1.0) <= 5


async def test_a_write_through_one_replica_is_seen_by_another(
    fake: FakePluralKit, upstream: TestServer, tmp_path: Path
) -> None:
    """B caches a member; a PATCH through A evicts it in Redis and in B's memory tier
    before A answers: B's next read is the new value."""
    shared_redis_or_skip()
    prefix = unique_prefix()
    try:
        async with (
            replicas(2, upstream, SHARED_URL, prefix, tmp_path) as (a, b),
            aiohttp.ClientSession() as http,
        ):
            assert (await get(http, b.url("/v2/members/abcde")))[1]["X-Cache"] == "MISS"
            assert (await get(http, b.url("/v2/members/abcde")))[1]["X-Cache"] == "HIT"
            # a's memory tier is filled from the shared tier: one upstream fetch in all
            assert (await get(http, a.url("/v2/members/abcde")))[1]["X-Cache"] == "HIT"
            async with http.patch(
                a.url("/v2/members/abcde"),
                json={"name": "Renamed"},
                headers={"Authorization": "token-exmpl"},
            ) as r:
                assert r.status == 200
            code, headers, body = await get(http, b.url("/v2/members/abcde"))
            assert (code, headers["X-Cache"], body["name"]) == (200, "MISS", "Renamed")
    finally:
        await drop_prefix(prefix)


async def test_a_lease_holder_killed_with_sigkill_frees_the_key(
    fake: FakePluralKit, upstream: TestServer, tmp_path: Path
) -> None:
    """A fetches a member slowly and dies (kill -9) holding the lease: B, asking for the
    same member, waits for A's answer, then fetches it itself once the lease expires."""
    shared_redis_or_skip()
    prefix = unique_prefix()
    fake.scopes = {"generic": 5.0}
    fake.delay = 30.0  # A's fetch never comes back
    try:
        async with (
            replicas(
                2, upstream, SHARED_URL, prefix, tmp_path, PKPROXY_REDIS_LEASE_SECONDS="1"
            ) as (a, b),
            aiohttp.ClientSession() as http,
        ):
            slow = asyncio.create_task(get(http, a.url("/v2/members/abcde")))
            await wait_until(lambda: len(fake.arrivals) == 1, what="A's fetch reached upstream")
            a.process.send_signal(signal.SIGKILL)
            a.process.wait(10)
            fake.delay = 0.0
            code, _, body = await get(
                http, b.url("/v2/members/abcde"), **{"X-PKProxy-Max-Wait": "10000"}
            )
            assert (code, body["id"]) == (200, "abcde")
            assert len(fake.arrivals) == 2  # B fetched it after the lease expired
            assert fake.arrivals[1].at - fake.arrivals[0].at >= 0.9
            slow.cancel()
    finally:
        await drop_prefix(prefix)


async def test_redis_killed_and_restarted_mid_run(
    fake: FakePluralKit, upstream: TestServer, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Redis dies under traffic: every answer stays 200 or a PluralKit-shaped 429 (never a
    500), upstream sees no 429, /status says degraded; when Redis is back, ok again."""
    fake.scopes = {"generic": 5.0}
    wait = {"Authorization": "x", "X-PKProxy-Max-Wait": "20000"}
    async with (
        replicas(2, upstream, redis_server.url, "pkproxy:", tmp_path) as running,
        aiohttp.ClientSession() as http,
    ):

        async def burst(first: int, count: int) -> list[tuple[int, dict[str, str], Any]]:
            return list(
                await asyncio.gather(
                    *(
                        get(http, running[n % 2].url(f"/v2/members/abcde?n={n}"), **wait)
                        for n in range(first, first + count)
                    )
                )
            )

        before = await burst(0, 10)
        redis_server.kill()
        during = await burst(10, 10)
        degraded: Callable[[], Any] = lambda: all_state(http, running, "degraded")  # noqa: E731
        await wait_until(degraded, timeout=10, what="both replicas degraded")
        redis_server.start()
        await wait_until(lambda: all_state(http, running, "ok"), timeout=15, what="recovered")
        after = await burst(20, 10)
    answers = before + during + after
    assert {code for code, _, _ in answers} <= {200, 429}
    assert all(set(body) >= {"message", "code"} for code, _, body in answers if code == 429)
    assert fake.upstream_arrivals(429) == []
    logs = "".join(r.log.read_text() for r in running)
    assert "redis.unavailable" in logs and "redis.recovered" in logs


async def all_state(http: aiohttp.ClientSession, running: list[Replica], state: str) -> bool:
    states = [(await status(http, r))["redis"]["state"] for r in running]
    return all(s == state for s in states)

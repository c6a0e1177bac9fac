"""Ordering barriers for end-to-end tests: wait until something observable holds.

A fixed `asyncio.sleep` as a barrier is either too short on a loaded machine (flaky) or
longer than needed (slow). These helpers poll what a test can see instead: the fake's
arrivals log, the proxy's `GET /status`, a port.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from aiohttp.test_utils import TestServer

from tests.fakepk import FakePluralKit

T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 5.0,
    interval: float = 0.005,
    what: str = "",
) -> T:
    """Poll `predicate` (plain or async) until it returns something truthy, and return that;
    raise AssertionError naming `what` if it has not within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if loop.time() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"not true within {timeout} s: {name} (last: {result!r})")
        await asyncio.sleep(interval)


async def arrivals_reach(fake: FakePluralKit, count: int, timeout: float = 5.0) -> None:
    """Wait until the fake has received at least `count` requests."""
    await wait_until(
        lambda: len(fake.arrivals) >= count, timeout, what=f"{count} upstream arrivals"
    )


async def proxy_status(http: aiohttp.ClientSession, base: TestServer | str) -> dict[str, Any]:
    """The proxy's `GET /status` JSON (it spends no budget)."""
    url = base.make_url("/status") if isinstance(base, TestServer) else f"{base}/status"
    async with http.get(url) as r:
        assert r.status == 200, r.status
        status: dict[str, Any] = await r.json()
        return status


async def queue_depth(
    http: aiohttp.ClientSession,
    base: TestServer | str,
    scope: str = "all",
    consumer: str | None = None,
) -> int:
    """How many requests wait in `scope`'s queue, all or one consumer's."""
    view = (await proxy_status(http, base))["scopes"][scope]
    if consumer is None:
        return int(view["queue_depth"])
    return int(view["queue_by_consumer"].get(consumer, 0))


async def accounted_for(
    http: aiohttp.ClientSession,
    base: TestServer | str,
    fake: FakePluralKit,
    count: int,
    scope: str = "all",
    consumer: str | None = None,
    timeout: float = 5.0,
) -> None:
    """Wait until `count` requests (earlier arrivals included) have either reached the fake
    or wait in the proxy's queue: all were admitted and none is still on its way in.

    The sum can only be low, never high (a request is in the queue or sent, not both), so
    reading the two at slightly different instants cannot end the wait too early."""

    async def enough() -> bool:
        return len(fake.arrivals) + await queue_depth(http, base, scope, consumer) >= count

    await wait_until(enough, timeout, interval=0.01, what=f"{count} requests queued or sent")


async def port_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port` now."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def port_refuses(port: int) -> bool:
    return not await port_accepts(port)

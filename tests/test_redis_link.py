"""The Redis link's invalidation channel: evictions published while a replica was not
subscribed are lost, so its memory tier stops trusting its copies each time it subscribes."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from proxy.clock import SystemClock
from tests.redis_fixtures import RedisServer, make_link, unique_prefix

GUARD_SECONDS = 10.0


async def until(condition: object, what: str) -> None:
    async with asyncio.timeout(GUARD_SECONDS):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_new_subscription_makes_the_memory_tier_drop_its_copies(
    redis_server: RedisServer,
) -> None:
    link = await make_link(SystemClock(), unique_prefix(), redis_server.url)
    cleared: list[int] = []
    seen: list[str] = []
    link.on_missed(lambda: cleared.append(1))
    link.on_invalidate(seen.append)
    other = aioredis.Redis.from_url(redis_server.url)
    try:

        async def published(tag: str) -> bool:
            await other.publish(link.invalidations, tag)
            await asyncio.sleep(0.02)
            return tag in seen

        async with asyncio.timeout(GUARD_SECONDS):
            while not await published("first"):
                pass
        before = len(cleared)
        # The subscription (and only it) is cut: whatever is published until it is back
        # is lost to this replica.
        await other.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        async with asyncio.timeout(GUARD_SECONDS):
            while not await published("after"):
                pass
        # redis-py subscribes again by itself; what was published meanwhile was lost.
        assert len(cleared) > before
    finally:
        await other.aclose()
        await link.stop()


async def test_a_replica_started_without_redis_drops_its_copies_once_subscribed(
    redis_server: RedisServer,
) -> None:
    """Started while Redis was down, a replica cached alone; evictions published before it
    subscribed never reached it, so subscribing the first time drops its copies too."""
    url = redis_server.url
    redis_server.kill()
    link = await make_link(SystemClock(), unique_prefix(), url)
    cleared: list[int] = []
    link.on_missed(lambda: cleared.append(1))
    try:
        assert not link.available
        redis_server.start()
        await until(lambda: cleared and link.available, "subscribed")
    finally:
        await link.stop()

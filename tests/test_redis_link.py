"""The Redis link's invalidation channel: evictions published while a replica was not
subscribed are lost, so its memory tier stops trusting its copies when it subscribes again."""

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
    link.on_lost(lambda: cleared.append(1))
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
        assert cleared == []
        # The subscription (and only it) is cut: whatever is published until it is back
        # is lost to this replica.
        await other.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        async with asyncio.timeout(GUARD_SECONDS):
            while not await published("after"):
                pass
        # redis-py subscribes again by itself; what was published meanwhile was lost.
        assert len(cleared) >= 1
    finally:
        await other.aclose()
        await link.stop()

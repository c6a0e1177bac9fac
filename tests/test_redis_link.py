"""The Redis link's invalidation channel: evictions published while a replica was not
subscribed are lost, so its memory tier stops trusting its copies each time it subscribes."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from proxy.cache.memory import MemoryFront
from proxy.cache.redis_store import RedisStore
from proxy.cache.store import Entry
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


def entry(tag: str) -> Entry:
    return Entry(200, (("Content-Type", "application/json"),), b"{}", 1_800_000_000.0, 60.0, tag)


async def test_an_older_answer_is_not_stored_across_redis_lost_and_back(
    redis_server: RedisServer,
) -> None:
    """Memory in front of Redis keeps a fetch that began before a write from storing its
    answer: (A) Redis up when it began, lost when this replica wrote; (B) Redis lost when
    it began, back when another replica wrote."""
    prefix = unique_prefix()
    link = await make_link(SystemClock(), prefix, redis_server.url)
    other = await make_link(SystemClock(), prefix, redis_server.url)
    front = MemoryFront(10_000_000, RedisStore(link, 60.0, 1_000_000))
    try:
        since = await front.generation()  # (A)
        redis_server.kill()
        await front.evict_tag("/v2/members/abcde")
        assert not link.available
        assert await front.set("a", entry("/v2/members/abcde"), since) is False
        assert await front.get("a") is None
        since = await front.generation()  # (B), Redis still lost
        redis_server.start()
        await until(lambda: link.available and other.available, "Redis back")
        await RedisStore(other, 60.0, 1_000_000).evict_tag("/v2/groups/grpaa")
        assert await front.set("b", entry("/v2/groups/grpaa"), since) is False
        assert await front.get("b") is None
        assert await front.set("c", entry("/v2/groups/other"), since) is True
    finally:
        await link.stop()
        await other.stop()

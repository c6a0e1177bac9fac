"""The replica's link to Redis: one client, whether Redis is usable now, how many
replicas share the budget, and the invalidation channel.

Every call goes through `call`, bounded by `redis.grant_timeout_ms`: an error or a slow
answer returns None, never an exception, so that no request fails because of Redis. After a
connection error the link is unavailable and is retried with backoff by its own task."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from proxy.clock import Clock
from proxy.ops.logs import get_logger
from proxy.ops.metrics import Metrics
from proxy.settings import RedisSettings

T = TypeVar("T")

# The head of every Lua script of pkproxy's: `now` is Redis's own clock (one clock for every
# replica), unless ARGV[1] gives one (tests drive time through it).
LUA_NOW = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""
_log = get_logger()
# Consecutive slow answers after which the link counts as lost (one is only that grant's).
_SLOW_LIMIT = 3
_BACKOFF = (0.25, 0.5, 1.0, 2.0)


class RedisLink:
    def __init__(self, settings: RedisSettings, clock: Clock, metrics: Metrics) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            settings.url,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            decode_responses=False,
            # After a Redis restart every pooled connection is dead: retry once on a new one
            # instead of counting the first use of each as Redis being lost again.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        self._clock = clock
        self._metrics = metrics
        self._timeout = settings.grant_timeout_ms / 1000
        self.available = False
        self.ever_available = False
        self.replicas_seen: int | None = None
        self.replica_index = 0
        self._recovered_at = float("-inf")
        self._slow = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._on_invalidate: list[Callable[[str], None]] = []
        self._on_missed: list[Callable[[], None]] = []

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def state(self) -> str:
        return "ok" if self.available else "degraded"

    # -- calls ------------------------------------------------------------------------
    async def call(self, make: Callable[[], Awaitable[T]]) -> T | None:
        """Run one Redis command; None if Redis is unavailable, fails, or is too slow."""
        if not self.available:
            return None
        try:
            result = await asyncio.wait_for(make(), self._timeout)
        except TimeoutError:
            self._slow += 1
            self._metrics.redis_slow.inc()
            if self._slow >= _SLOW_LIMIT:
                self._lost("slow")
            return None
        except (RedisError, OSError) as error:
            self._lost(type(error).__name__)
            return None
        self._slow = 0
        return result

    def on_invalidate(self, callback: Callable[[str], None]) -> None:
        """`callback(tag)` runs for every eviction published by any replica."""
        self._on_invalidate.append(callback)

    def on_missed(self, callback: Callable[[], None]) -> None:
        """`callback()` runs whenever invalidations may have been missed: when Redis is
        lost, and each time the invalidation channel is subscribed (at start too). Memory
        tiers stop trusting their copies."""
        self._on_missed.append(callback)

    @property
    def invalidations(self) -> str:
        return self.key("invalidate")

    # -- state ------------------------------------------------------------------------
    def _lost(self, why: str) -> None:
        self._slow = 0
        if self.available:
            self.available = False
            self._metrics.redis_up.set(0)
            _log.warning("redis.unavailable", reason=why, replicas_seen=self.replicas_seen)
            for callback in self._on_missed:
                callback()

    def settling(self) -> bool:
        """Redis came back less than 1.5 heartbeats ago: the other replicas may not have
        noticed yet and still pace alone, so this one does too until they have."""
        since = self._clock.monotonic() - self._recovered_at
        return self.ever_available and since < 1.5 * self.settings.heartbeat_seconds

    def _recovered(self) -> None:
        if not self.available:
            self._recovered_at = self._clock.monotonic()
            self.available = True
            self._metrics.redis_up.set(1)
            event = "redis.recovered" if self.ever_available else "redis.connected"
            self.ever_available = True
            _log.info(event, replicas_seen=self.replicas_seen)

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        self._metrics.redis_up.set(0)
        await self._probe()
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="redis-heartbeats"),
            asyncio.create_task(self._listen(), name="redis-invalidations"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisError, OSError):
            await asyncio.wait_for(self.client.zrem(self._replicas_key, self.replica), 0.5)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.client.aclose(), 1.0)

    @property
    def _replicas_key(self) -> str:
        return self.key("replicas", self.settings.egress)

    async def _probe(self) -> bool:
        """A heartbeat: say this replica is alive, count the live ones. Connects the link."""
        period = self.settings.heartbeat_seconds
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                now = float((await self.client.time())[0])
                pipe.zadd(self._replicas_key, {self.replica: now})
                pipe.zremrangebyscore(self._replicas_key, "-inf", now - 3 * period)
                pipe.zrange(self._replicas_key, 0, -1)
                pipe.expire(self._replicas_key, int(10 * period) + 1)
                replies: list[Any] = await asyncio.wait_for(pipe.execute(), 2.0)
        except (RedisError, OSError, TimeoutError) as error:
            self._lost(type(error).__name__)
            return False
        names = sorted(name.decode("utf-8", "replace") for name in replies[2])
        self.replicas_seen = max(1, len(names))
        # A place among the replicas that stays put while they do (names, not heartbeats):
        # without Redis, replica k of N sends in every N-th slot only (see RedisPacer).
        self.replica_index = names.index(self.replica) if self.replica in names else 0
        self._metrics.redis_replicas.set(self.replicas_seen)
        self._recovered()
        return True

    async def _heartbeats(self) -> None:
        failures = 0
        while True:
            if self.available:
                await self._clock.sleep(self.settings.heartbeat_seconds)
            else:
                await self._clock.sleep(_BACKOFF[min(failures, len(_BACKOFF) - 1)])
            failures = 0 if await self._probe() else failures + 1

    async def _reconnected(self, connection: object) -> None:
        self._invalidations_missed()

    def _invalidations_missed(self) -> None:
        _log.info("redis.invalidations_subscribed")
        for callback in self._on_missed:
            callback()

    async def _listen(self) -> None:
        """Evictions published by any replica reach this replica's memory tier. Those
        published while this replica was not subscribed are lost to it: each time it
        subscribes (at start too, as Redis may have been written while it started without
        it), its memory tier drops what it holds, as when Redis is lost."""
        failures = 0
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.invalidations)
                    self._invalidations_missed()
                    failures = 0
                    # redis-py also reconnects a subscription by itself, without an error.
                    connection = pubsub.connection
                    if connection is not None:
                        connection.register_connect_callback(self._reconnected)
                    try:
                        async for message in pubsub.listen():
                            if message.get("type") == "message":
                                tag = message["data"].decode("utf-8", "replace")
                                for callback in self._on_invalidate:
                                    callback(tag)
                    finally:
                        if connection is not None:
                            connection.deregister_connect_callback(self._reconnected)
            except (RedisError, OSError) as error:
                self._lost(f"pubsub: {type(error).__name__}")
            failures += 1
            await self._clock.sleep(_BACKOFF[min(failures, len(_BACKOFF) - 1)])

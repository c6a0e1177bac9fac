"""The shared cache tier in Redis (each replica keeps its memory tier in front), and the
fetch leases that let one replica fetch a missing entry while the others wait for it.

A write through any replica evicts the path in Redis and publishes it: every replica's
memory tier drops its copies when the message arrives (proxy/shared/link.py), which is
before a client could ask another replica, since the write's answer is sent after it.
Without Redis every call here is a miss or a no-op: the replica serves from memory alone."""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.cache.store import Entry, decode_entry
from proxy.clock import Clock
from proxy.ops.logs import get_logger
from proxy.shared.link import RedisLink

_log = get_logger()
CLEAR_ALL = "*"  # published instead of a tag: every memory tier empties
_MARK_SECONDS = 600  # a write's mark outlives any fetch in flight
_COUNT_CAP = 100_000

# KEYS: entry, tag set, the tag's write mark. ARGV: value, expiry seconds, since.
SET = """
local mark = tonumber(redis.call('GET', KEYS[3]) or '0')
if mark > tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: tag set, the tag's write mark, the generation. ARGV: tag, mark seconds, channel.
EVICT = """
local members = redis.call('SMEMBERS', KEYS[1])
local n = 0
for _, k in ipairs(members) do n = n + redis.call('DEL', k) end
redis.call('DEL', KEYS[1])
local g = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[2], g, 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return n
"""


class RedisStore:
    """A CacheStore in Redis; must pass tests/contracts/test_cache_store.py."""

    def __init__(self, link: RedisLink, keep_stale_seconds: float, max_entry_bytes: int) -> None:
        self._link = link
        self._keep = keep_stale_seconds
        self._max_bytes = max_entry_bytes
        self._set = link.client.register_script(SET)
        self._evict = link.client.register_script(EVICT)
        self.too_large = 0
        self.corrupt_dropped = 0

    def _entry_key(self, key: str) -> str:
        return self._link.key("cache", key)

    async def get(self, key: str) -> Entry | None:
        raw = await self._link.call(lambda: self._link.client.get(self._entry_key(key)))
        entry = None if raw is None else decode_entry(raw, "redis")
        if raw is not None and entry is None:
            self.corrupt_dropped += 1
            await self._link.call(lambda: self._link.client.delete(self._entry_key(key)))
        return entry

    async def set(self, key: str, entry: Entry, since: int) -> bool:
        if since < 0:
            return True  # fetched while Redis was lost: the memory tier alone keeps it
        data = entry.to_bytes()
        if len(data) > self._max_bytes:
            self.too_large += 1
            return True  # not in Redis (operators bound its memory); memory may keep it
        expiry = max(1, math.ceil(entry.ttl + self._keep))
        keys = [self._entry_key(key), self._link.key("tag", entry.tag), self._mark(entry.tag)]
        stored = await self._link.call(lambda: self._set(keys=keys, args=[data, expiry, since]))
        return stored is None or bool(stored)

    def _mark(self, tag: str) -> str:
        return self._link.key("evicted", tag)

    async def evict_tag(self, tag: str) -> int:
        keys = [self._link.key("tag", tag), self._mark(tag), self._link.key("generation")]
        args: list[str | int] = [tag, _MARK_SECONDS, self._link.invalidations]
        evicted = await self._link.call(lambda: self._evict(keys=keys, args=args))
        return int(evicted or 0)

    async def generation(self) -> int:
        """The shared write generation, or -1 while Redis is lost (see `set`)."""
        raw = await self._link.call(lambda: self._link.client.get(self._link.key("generation")))
        if raw is None:
            return 0 if self._link.available else -1
        return int(raw)

    async def clear(self) -> int:
        removed = await self._link.call(self._clear)
        return int(removed or 0)

    async def _clear(self) -> int:
        client, removed = self._link.client, 0
        for pattern in ("cache:*", "tag:*"):
            batch: list[Any] = []
            async for name in client.scan_iter(match=self._link.key(pattern), count=500):
                batch.append(name)
                if len(batch) >= 500:
                    removed += await client.delete(*batch) if pattern == "cache:*" else 0
                    batch = []
            if batch:
                deleted = await client.delete(*batch)
                removed += deleted if pattern == "cache:*" else 0
        await client.publish(self._link.invalidations, CLEAR_ALL)
        return removed

    async def stats(self) -> dict[str, int]:
        info = await self._link.call(lambda: self._link.client.info("memory"))
        entries = await self._link.call(self._count_entries)
        return {
            "redis_entries": int(entries or 0),
            "redis_bytes": int((info or {}).get("used_memory", 0)),
            "redis_too_large": self.too_large,
            "corrupt_dropped": self.corrupt_dropped,
        }

    async def _count_entries(self) -> int:
        """Entries under this prefix (a SCAN, stopped at _COUNT_CAP: stats are sampled)."""
        count = 0
        async for _ in self._link.client.scan_iter(match=self._link.key("cache:*"), count=1000):
            count += 1
            if count >= _COUNT_CAP:
                break
        return count

    async def close(self) -> None:
        return None  # the link is closed by its owner


class RedisLeases:
    """A short per-key lease in Redis: one replica fetches, the others poll for the stored
    entry with backoff. A holder that dies frees the key when its lease expires."""

    def __init__(self, link: RedisLink, seconds: float, clock: Clock) -> None:
        self._link = link
        self._ms = max(1, int(seconds * 1000))
        self._clock = clock
        self._token = os.urandom(8).hex()

    def _key(self, key: str) -> str:
        return self._link.key("lease", key)

    async def acquire(self, key: str) -> bool:
        got = await self._link.call(lambda: self._set_if_free(key))
        # Without Redis every replica fetches for itself (at its safe share of the rate).
        return got is None or got

    async def _set_if_free(self, key: str) -> bool:
        # SET NX answers nil when the key is taken: never let that read as "no Redis".
        return bool(await self._link.client.set(self._key(key), self._token, nx=True, px=self._ms))

    async def release(self, key: str) -> None:
        await self._link.call(lambda: self._link.client.delete(self._key(key)))

    async def wait_entry(
        self, key: str, until: float, get: Callable[[str], Awaitable[Entry | None]]
    ) -> Entry | None:
        """Poll for the entry another replica is fetching, until it is stored (returned),
        its lease is gone without an entry (None: fetch it yourself), or `until`."""
        delay = 0.01
        while self._clock.monotonic() < until:
            entry = await get(key)
            if entry is not None:
                return entry
            held = await self._link.call(lambda: self._link.client.exists(self._key(key)))
            if not held:
                return None
            await self._clock.sleep(min(delay, max(0.0, until - self._clock.monotonic())))
            delay = min(delay * 2, 0.2)
        return None

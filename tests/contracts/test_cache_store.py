"""What every CacheStore must do. A new backend adds a fixture to `store`, not tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.cache.disk import DiskStore, tiered
from proxy.cache.memory import MemoryFront
from proxy.cache.redis_store import RedisStore
from proxy.cache.store import CacheStore, Entry
from proxy.clock import SystemClock
from tests.redis_fixtures import (
    drop_prefix,
    free_port,
    make_link,
    shared_redis_or_skip,
    unique_prefix,
)

# memory+redis-lost: Redis unreachable from the start (each replica serving alone).
BACKENDS = ["memory", "disk", "memory+disk", "redis", "memory+redis", "memory+redis-lost"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CacheStore]:
    made: CacheStore
    link = None
    if request.param == "memory":
        made = MemoryFront(10_000_000)
    elif request.param == "disk":
        made = DiskStore(str(tmp_path / "disk"), 10_000_000)
    elif request.param == "memory+disk":
        made = tiered(str(tmp_path / "tiered"), 10_000_000, 10_000_000)
    elif request.param == "memory+redis-lost":
        prefix = unique_prefix()
        link = await make_link(SystemClock(), prefix, f"redis://127.0.0.1:{free_port()}/0")
        assert not link.available
        made = MemoryFront(10_000_000, RedisStore(link, 60.0, 1_000_000))
    else:
        shared_redis_or_skip()
        prefix = unique_prefix()
        link = await make_link(SystemClock(), prefix)
        made = RedisStore(link, 60.0, 1_000_000)
        if request.param == "memory+redis":
            made = MemoryFront(10_000_000, made)
    yield made
    await made.close()
    if link is not None:
        await link.stop()
        if request.param != "memory+redis-lost":
            await drop_prefix(prefix)


def entry(tag: str, body: bytes = b'{"id":"abcde"}', status: int = 200) -> Entry:
    return Entry(status, (("Content-Type", "application/json"),), body, 1_800_000_000.0, 60.0, tag)


async def test_what_is_set_is_got_back_whole(store: CacheStore) -> None:
    """An entry comes back equal, field for field; an unknown key is a miss."""
    stored = entry("/v2/members/abcde", b"\x00\xff binary \n")
    assert await store.set("k1", stored, await store.generation()) is True
    assert await store.get("k1") == stored
    assert await store.get("k2") is None


async def test_evicting_a_tag_removes_every_query_of_that_path_only(store: CacheStore) -> None:
    """A write evicts each query of its path and nothing else."""
    since = await store.generation()
    await store.set("a?x=1", entry("/a"), since)
    await store.set("a?x=2", entry("/a"), since)
    await store.set("b", entry("/b"), since)
    assert await store.evict_tag("/a") >= 2
    assert await store.get("a?x=1") is None and await store.get("a?x=2") is None
    assert await store.get("b") is not None


async def test_an_answer_fetched_before_a_write_is_not_stored(store: CacheStore) -> None:
    """A fetch that started before a write of its path must not store its older answer;
    other paths, and fetches started after the write, store as usual."""
    before = await store.generation()
    await store.evict_tag("/v2/members/abcde")
    assert await store.set("k", entry("/v2/members/abcde"), before) is False
    assert await store.get("k") is None
    assert await store.set("other", entry("/v2/members/fghij"), before) is True
    after = await store.generation()
    assert await store.set("k", entry("/v2/members/abcde"), after) is True


async def test_clear_empties_and_stats_count(store: CacheStore) -> None:
    """Stats count what is held; clear removes everything and says how much."""
    since = await store.generation()
    for n in range(3):
        await store.set(f"k{n}", entry(f"/t{n}"), since)
    stats = await store.stats()
    held = max(v for k, v in stats.items() if k.endswith("_entries"))
    assert held == 3
    assert await store.clear() >= 3
    assert await store.get("k0") is None
    stats = await store.stats()
    assert all(v == 0 for k, v in stats.items() if k.endswith("_entries"))

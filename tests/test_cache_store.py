"""The cache tiers on a real diskcache directory: bounds hold, corruption is dropped.
(What every CacheStore must do is in tests/contracts/test_cache_store.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cache.disk import DiskStore, tiered
from proxy.cache.memory import MemoryTier
from proxy.cache.store import CorruptEntry, Entry


def entry(n: int, size: int, tag: str = "/v2/members/x") -> Entry:
    return Entry(
        200,
        (("Content-Type", "application/json"),),
        bytes([n % 256]) * size,
        1_800_000_000.0,
        60.0,
        tag,
    )


def test_memory_tier_evicts_least_recently_used_within_its_byte_bound() -> None:
    """The memory tier never holds more bytes than its bound; the oldest entry goes first."""
    tier = MemoryTier(10_000)
    for n in range(50):
        tier.set(f"k{n}", entry(n, 1000))
        assert tier.bytes <= 10_000
    assert tier.get("k49") is not None and tier.get("k0") is None
    assert tier.evictions > 0


def test_memory_tier_tag_eviction() -> None:
    """Evicting a tag removes every query of that path and nothing else."""
    tier = MemoryTier(1_000_000)
    tier.set("a?x=1", entry(1, 10, "/a"))
    tier.set("a?x=2", entry(2, 10, "/a"))
    tier.set("b", entry(3, 10, "/b"))
    assert tier.evict_tag("/a") == 2
    assert len(tier) == 1 and tier.get("b") is not None


def test_an_entry_that_could_split_an_answer_is_corrupt() -> None:
    """Read back from disk or a shared Redis written by something else, an entry whose
    header could split the answer (or whose status cannot be answered) is never served."""
    for headers, status in (
        ((("X-A", "x\r\nSet-Cookie: pwned=1"),), 200),
        ((("Bad Name", "x"),), 200),
        ((("Content-Type", "application/json"),), 1200),
    ):
        raw = Entry(status, headers, b"{}", 1_800_000_000.0, 60.0, "/t").to_bytes()
        with pytest.raises(CorruptEntry):
            Entry.from_bytes(raw)


def test_what_is_derived_from_an_entry_goes_with_it_and_is_counted() -> None:
    """The rendered head kept beside an entry: dropped when the entry is replaced, evicted
    by tag or by the bound, or cleared; never kept for a key with no entry; its bytes count."""
    tier = MemoryTier(10_000)
    tier.derive("none", "block", 100)
    assert tier.derived("none") is None and tier.bytes == 0
    tier.set("a", entry(1, 1000, "/a"))
    before = tier.bytes
    tier.derive("a", "block-a", 300)
    assert tier.derived("a") == "block-a" and tier.bytes == before + 300
    tier.set("a", entry(2, 1000, "/a"))  # a new answer: the old rendering must not serve it
    assert tier.derived("a") is None and tier.bytes == before
    tier.derive("a", "block-a2", 300)
    assert tier.evict_tag("/a") == 1
    assert tier.derived("a") is None and tier.bytes == 0
    for n in range(20):  # the bound evicts the oldest, its rendering with it
        tier.set(f"k{n}", entry(n, 1000))
        tier.derive(f"k{n}", n, 200)
        assert tier.bytes <= 10_000
    assert tier.derived("k0") is None and tier.derived("k19") == 19
    tier.clear()
    assert tier.derived("k19") is None and tier.bytes == 0
    for n in range(8):
        tier.set(f"s{n}", entry(n, 1000))
    before = tier.evictions
    for n in range(8):  # renderings alone (a run of hits) stay within the bound too
        tier.derive(f"s{n}", n, 500)
        assert tier.bytes <= 10_000
    assert tier.evictions > before and tier.derived("s7") == 7
    big = MemoryTier(2000)
    big.set("b", entry(1, 1500))
    big.derive("b", "too big to keep beside it", 1000)
    assert big.derived("b") is None and big.get("b") is not None


def test_entry_round_trip_and_corruption() -> None:
    """An entry survives serialisation; any flipped byte is detected."""
    original = entry(7, 100)
    raw = original.to_bytes()
    assert Entry.from_bytes(raw) == original
    for index in (0, 5, len(raw) // 2, len(raw) - 1):
        damaged = bytearray(raw)
        damaged[index] ^= 0x01
        try:
            Entry.from_bytes(bytes(damaged))
        except CorruptEntry:
            continue
        raise AssertionError(f"flip at {index} not detected")


async def test_disk_tier_stays_within_its_size_limit(tmp_path: Path) -> None:
    """Under a stream of distinct entries the disk tier evicts instead of growing."""
    cache = tiered(str(tmp_path), memory_bytes=100_000, disk_bytes=2_000_000)
    try:
        for n in range(200):
            key = f"GET /v2/members/m{n} identity"
            await cache.set(key, entry(n, 50_000, f"/v2/members/m{n}"), 0)
        stats = await cache.stats()
        assert stats["memory_bytes"] <= 100_000
        assert stats["disk_bytes"] <= 2_000_000 * 1.3
        assert stats["disk_entries"] < 200
    finally:
        await cache.close()


async def test_corrupt_disk_entry_is_dropped(tmp_path: Path) -> None:
    """Garbage under a key is dropped on read, counted, and reads as a miss."""
    cache = tiered(str(tmp_path), memory_bytes=100_000, disk_bytes=10_000_000)
    disk = DiskStore(str(tmp_path), 10_000_000)
    try:
        disk._disk.set("k", b"not an entry at all")
        assert await cache.get("k") is None
        assert (await cache.stats())["corrupt_dropped"] == 1
        assert disk._disk.get("k") is None
    finally:
        await cache.close()
        await disk.close()


async def test_a_failing_disk_degrades_to_misses(tmp_path: Path) -> None:
    """A damaged database file makes reads misses and stores no-ops, never an error."""
    cache = DiskStore(str(tmp_path), 10_000_000)
    try:
        cache._disk.close()
        (tmp_path / "cache.db").write_bytes(b"this is not sqlite" * 100)
        assert await cache.get("k") is None
        await cache.set("k", entry(1, 10), 0)
        assert await cache.evict_tag("/v2/members/x") == 0
        assert (await cache.stats())["disk_errors"] >= 3
    finally:
        await cache.close()

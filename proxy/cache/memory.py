"""The memory tier: a byte-bounded LRU, alone or in front of another CacheStore."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from proxy.cache.store import CacheStore, Entry, WriteGenerations

# In front of another store, a generation carries both: inner * _SPLIT + this process's.
_SPLIT = 1 << 40


class MemoryTier:
    """An LRU bounded by bytes, with a tag index so that a path evicts all its queries.
    Something derived from an entry (its answer's rendered head) may be kept beside it: it
    is dropped with the entry, so it can never outlive or mismatch it."""

    __slots__ = ("_bytes", "_derived", "_derived_sizes", "_entries", "_limit", "_tags", "evictions")

    def __init__(self, limit_bytes: int) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._derived: dict[str, Any] = {}
        self._derived_sizes: dict[str, int] = {}
        self._tags: dict[str, set[str]] = {}
        self._limit = limit_bytes
        self._bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def derived(self, key: str) -> Any:
        return self._derived.get(key)

    def derive(self, key: str, value: Any, size: int) -> None:
        """Keep `value` (`size` bytes, counted in the bound) beside the entry at `key`, which
        must be there, until the entry goes; older entries make room for it."""
        entry = self._entries.get(key)
        if entry is None or key in self._derived or entry.size + size > self._limit:
            return
        self._entries.move_to_end(key)
        self._derived[key] = value
        self._derived_sizes[key] = size
        self._bytes += size
        self._evict_beyond_bound(keep=key)

    def set(self, key: str, entry: Entry) -> None:
        self.delete(key)
        if entry.size > self._limit:
            return
        self._entries[key] = entry
        self._tags.setdefault(entry.tag, set()).add(key)
        self._bytes += entry.size
        self._evict_beyond_bound(keep=key)

    def _evict_beyond_bound(self, keep: str) -> None:
        while self._bytes > self._limit:
            oldest = next(iter(self._entries))
            if oldest == keep:  # alone, and within the bound by itself
                return
            self.delete(oldest)
            self.evictions += 1

    def delete(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= self._derived_sizes.pop(key, 0)
        self._derived.pop(key, None)
        self._bytes -= entry.size
        keys = self._tags.get(entry.tag)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._tags[entry.tag]

    def evict_tag(self, tag: str) -> int:
        keys = list(self._tags.get(tag, ()))
        for key in keys:
            self.delete(key)
        return len(keys)

    def clear(self) -> None:
        self._entries.clear()
        self._derived.clear()
        self._derived_sizes.clear()
        self._tags.clear()
        self._bytes = 0


class MemoryFront:
    """A CacheStore whose reads are answered from memory first. In front of another store
    (disk, Redis) it fills from it and forwards every write; alone it is the whole cache."""

    def __init__(self, limit_bytes: int, inner: CacheStore | None = None) -> None:
        self.memory = MemoryTier(limit_bytes)
        self._inner = inner
        self._generations = WriteGenerations()

    def forget(self, tag: str) -> None:
        """Another replica evicted `tag` (or everything: "*"): drop the memory copies."""
        if tag == "*":
            self.memory.clear()
        else:
            self.memory.evict_tag(tag)

    async def get(self, key: str) -> Entry | None:
        entry = self.memory.get(key)
        if entry is not None or self._inner is None:
            return entry
        entry = await self._inner.get(key)
        if entry is not None:
            self.memory.set(key, entry)
        return entry

    async def set(self, key: str, entry: Entry, since: int) -> bool:
        if self._inner is None:
            stored = not self._generations.outdated(entry.tag, since)
        else:
            inner, own = divmod(since, _SPLIT)
            # This process's writes count whether or not the inner store is up; a fetch that
            # began while it was lost (-1) is held to every write mark there (0) if it is back.
            stored = not self._generations.outdated(entry.tag, own)
            stored = stored and await self._inner.set(key, entry, max(inner, 0))
        if stored:
            self.memory.set(key, entry)
        return stored

    async def evict_tag(self, tag: str) -> int:
        count = self.memory.evict_tag(tag)
        self._generations.evicted(tag)  # also kept in front of a shared store, for when it is lost
        if self._inner is not None:
            return max(count, await self._inner.evict_tag(tag))  # it holds all, when it is up
        return count

    async def generation(self) -> int:
        """This process's write generation and, in front of another store, that store's
        (-1 from a shared store that is lost), both in one number (see `set`): a write
        through this process while a shared store is lost, or one through another replica
        once it is back, each stop an older fetch from being stored."""
        if self._inner is None:
            return self._generations.current
        inner = max(await self._inner.generation(), -1)
        return inner * _SPLIT + self._generations.current

    async def clear(self) -> int:
        count = len(self.memory)
        self.memory.clear()
        if self._inner is not None:
            return max(count, await self._inner.clear())  # it holds all, when it is up
        return count

    async def stats(self) -> dict[str, int]:
        inner = await self._inner.stats() if self._inner is not None else {}
        return {
            "memory_entries": len(self.memory),
            "memory_bytes": self.memory.bytes,
            "memory_evictions": self.memory.evictions,
            **inner,
        }

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()

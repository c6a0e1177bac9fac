"""The disk tier: a bounded diskcache directory (sqlite), off the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import diskcache

from proxy.cache.memory import MemoryFront
from proxy.cache.store import Entry, WriteGenerations, decode_entry
from proxy.ops.logs import get_logger


def open_disk(directory: str, size_limit: int) -> diskcache.Cache:
    # Least-recently-stored eviction keeps reads free of writes; tags index every path.
    return diskcache.Cache(
        directory,
        size_limit=size_limit,
        eviction_policy="least-recently-stored",
        tag_index=True,
        statistics=False,
    )


class DiskStore:
    """A bounded diskcache directory that survives restarts; its I/O runs in a thread."""

    def __init__(self, directory: str, disk_bytes: int) -> None:
        self._generations = WriteGenerations()
        self._disk = open_disk(directory, disk_bytes)
        self.corrupt_dropped = 0
        self.disk_errors = 0
        self._log = get_logger()

    async def _on_disk(self, operation: str, *args: Any) -> Any:
        """Run one diskcache call in a thread. A failing disk (full, damaged database)
        degrades to a miss or a skipped store: it never fails the request."""
        try:
            return await asyncio.to_thread(getattr(self._disk, operation), *args)
        except (OSError, sqlite3.Error) as error:
            self.disk_errors += 1
            self._log.error("cache.disk_error", operation=operation, error=str(error))
            return None

    async def get(self, key: str) -> Entry | None:
        raw = await self._on_disk("get", key)
        entry = None if raw is None else decode_entry(raw, "disk")
        if raw is not None and entry is None:
            self.corrupt_dropped += 1
            await self._on_disk("delete", key)
        return entry

    async def set(self, key: str, entry: Entry, since: int) -> bool:
        if self._generations.outdated(entry.tag, since):
            return False
        await self._on_disk("set", key, entry.to_bytes(), None, False, entry.tag)
        return True

    async def evict_tag(self, tag: str) -> int:
        self._generations.evicted(tag)
        evicted = await self._on_disk("evict", tag)
        return int(evicted or 0)

    async def generation(self) -> int:
        return self._generations.current

    async def stats(self) -> dict[str, int]:
        entries, volume = await asyncio.to_thread(self._disk_stats)
        return {
            "disk_entries": entries,
            "disk_bytes": volume,
            "corrupt_dropped": self.corrupt_dropped,
            "disk_errors": self.disk_errors,
        }

    def _disk_stats(self) -> tuple[int, int]:
        try:
            return len(self._disk), int(self._disk.volume())
        except (OSError, sqlite3.Error):
            return 0, 0

    async def clear(self) -> int:
        removed = await self._on_disk("clear")
        return int(removed or 0)

    async def close(self) -> None:
        await asyncio.to_thread(self._disk.close)


def tiered(directory: str, memory_bytes: int, disk_bytes: int) -> MemoryFront:
    """The default cache: the memory tier in front of the disk tier."""
    return MemoryFront(memory_bytes, DiskStore(directory, disk_bytes))

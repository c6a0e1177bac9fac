"""Cache stores: a bounded in-memory LRU tier in front of a bounded diskcache directory."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import diskcache

from proxy.ops.logs import get_logger

_MAGIC = b"PKC1"
_HEAD = struct.Struct(">4sII")  # magic, crc32 of the rest, length of the JSON meta


class CorruptEntry(ValueError):
    """A stored entry that cannot be trusted: dropped and refetched, never served."""


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float  # UNIX seconds (wall clock: entries outlive the process)
    ttl: float
    tag: str  # the path, so that a write can evict every query of it

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 128

    def to_bytes(self) -> bytes:
        meta = json.dumps(
            {"s": self.status, "h": self.headers, "t": self.stored_at, "l": self.ttl, "g": self.tag}
        ).encode()
        rest = meta + self.body
        return _HEAD.pack(_MAGIC, zlib.crc32(rest), len(meta)) + rest

    @classmethod
    def from_bytes(cls, data: Any) -> Entry:
        if not isinstance(data, bytes) or len(data) < _HEAD.size:
            raise CorruptEntry("not an entry")
        magic, crc, meta_len = _HEAD.unpack_from(data)
        rest = data[_HEAD.size :]
        if magic != _MAGIC or zlib.crc32(rest) != crc or meta_len > len(rest):
            raise CorruptEntry("checksum mismatch")
        try:
            meta = json.loads(rest[:meta_len])
            headers = tuple((str(k), str(v)) for k, v in meta["h"])
            return cls(
                int(meta["s"]),
                headers,
                rest[meta_len:],
                float(meta["t"]),
                float(meta["l"]),
                str(meta["g"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptEntry("bad metadata") from exc


class CacheStore(Protocol):
    """What the flow needs of a cache backend (memory+disk here; Redis could follow)."""

    async def get(self, key: str) -> Entry | None: ...
    async def set(self, key: str, entry: Entry) -> None: ...
    async def evict_tag(self, tag: str) -> int: ...
    def stats(self) -> dict[str, int]: ...
    async def close(self) -> None: ...


class MemoryTier:
    """An LRU bounded by bytes, with a tag index so that a path evicts all its queries."""

    __slots__ = ("_bytes", "_entries", "_limit", "_tags", "evictions")

    def __init__(self, limit_bytes: int) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
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

    def set(self, key: str, entry: Entry) -> None:
        self.delete(key)
        if entry.size > self._limit:
            return
        self._entries[key] = entry
        self._tags.setdefault(entry.tag, set()).add(key)
        self._bytes += entry.size
        while self._bytes > self._limit:
            oldest = next(iter(self._entries))
            self.delete(oldest)
            self.evictions += 1

    def delete(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
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
        self._tags.clear()
        self._bytes = 0


def open_disk(directory: str, size_limit: int) -> diskcache.Cache:
    # Least-recently-stored eviction keeps reads free of writes; tags index every path.
    return diskcache.Cache(
        directory,
        size_limit=size_limit,
        eviction_policy="least-recently-stored",
        tag_index=True,
        statistics=False,
    )


class TieredCache:
    """Memory tier first, disk behind it; disk I/O runs in a worker thread."""

    def __init__(self, directory: str, memory_bytes: int, disk_bytes: int) -> None:
        self.memory = MemoryTier(memory_bytes)
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
        entry = self.memory.get(key)
        if entry is not None:
            return entry
        raw = await self._on_disk("get", key)
        if raw is None:
            return None
        try:
            entry = Entry.from_bytes(raw)
        except CorruptEntry:
            self.corrupt_dropped += 1
            self._log.warning("cache.corrupt_entry_dropped")
            await self._on_disk("delete", key)
            return None
        self.memory.set(key, entry)
        return entry

    async def set(self, key: str, entry: Entry) -> None:
        self.memory.set(key, entry)
        await self._on_disk("set", key, entry.to_bytes(), None, False, entry.tag)

    async def evict_tag(self, tag: str) -> int:
        count = self.memory.evict_tag(tag)
        evicted = await self._on_disk("evict", tag)
        return count + (evicted or 0)

    def stats(self) -> dict[str, int]:
        return {
            "memory_entries": len(self.memory),
            "memory_bytes": self.memory.bytes,
            "memory_evictions": self.memory.evictions,
            **self._disk_stats(),
            "corrupt_dropped": self.corrupt_dropped,
            "disk_errors": self.disk_errors,
        }

    def _disk_stats(self) -> dict[str, int]:
        try:
            return {"disk_entries": len(self._disk), "disk_bytes": int(self._disk.volume())}
        except (OSError, sqlite3.Error):
            return {"disk_entries": 0, "disk_bytes": 0}

    async def clear(self) -> int:
        self.memory.clear()
        removed: int = await asyncio.to_thread(self._disk.clear)
        return removed

    async def close(self) -> None:
        await asyncio.to_thread(self._disk.close)

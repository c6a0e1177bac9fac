"""The cache seam: Entry, the CacheStore protocol, and the write generations behind it."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.core.headers import writable
from proxy.ops.logs import get_logger

_log = get_logger()
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
            if not all(writable(k, v) for k, v in headers) or not 100 <= int(meta["s"]) <= 599:
                raise CorruptEntry("a header or status that cannot be answered")
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


def decode_entry(raw: Any, tier: str) -> Entry | None:
    """A stored entry, or None if it cannot be trusted (counted and logged by the caller's
    tier, which then deletes it: a corrupt entry is refetched, never served)."""
    try:
        return Entry.from_bytes(raw)
    except CorruptEntry:
        _log.warning("cache.corrupt_entry_dropped", tier=tier)
        return None


class CacheStore(Protocol):
    """What the flow needs of a cache backend. Implementations: `MemoryFront` (an LRU,
    alone or in front of another store) and `DiskStore`; each must pass
    tests/contracts/test_cache_store.py."""

    async def get(self, key: str) -> Entry | None:
        """The entry, or None (absent, or corrupt: then it is dropped)."""

    async def set(self, key: str, entry: Entry, since: int) -> bool:
        """Store unless a write evicted `entry.tag` after generation `since` (the answer
        was fetched before the write and is already wrong). Return whether it was stored."""

    async def evict_tag(self, tag: str) -> int:
        """Evict every entry of a path (a write made them wrong); return how many."""

    async def generation(self) -> int:
        """The current write generation, taken before a fetch starts."""

    async def clear(self) -> int:
        """Remove every entry; return how many."""

    async def stats(self) -> dict[str, int]:
        """Counters for /status and /metrics; never blocks the event loop."""

    async def close(self) -> None: ...


# Fetches in flight are never older than this many writes; older ones are refused a store.
_GENERATIONS_KEPT = 10_000


class WriteGenerations:
    """Which write last evicted each path, so that a fetch that started before a write
    does not store what the write made wrong (bounded: old marks are forgotten)."""

    __slots__ = ("_evicted", "current")

    def __init__(self) -> None:
        self.current = 0
        self._evicted: dict[str, int] = {}

    def evicted(self, tag: str) -> None:
        self.current += 1
        self._evicted[tag] = self.current
        if len(self._evicted) > _GENERATIONS_KEPT:
            floor = self.current - _GENERATIONS_KEPT // 2
            self._evicted = {k: v for k, v in self._evicted.items() if v > floor}

    def outdated(self, tag: str, since: int) -> bool:
        too_old = since < self.current - _GENERATIONS_KEPT // 2
        return too_old or self._evicted.get(tag, 0) > since


class FetchLeases(Protocol):
    """Who fetches a missing entry when several replicas miss it at once."""

    async def acquire(self, key: str) -> bool:
        """True: fetch it (and `release` after storing); False: another replica is."""

    async def release(self, key: str) -> None: ...

    async def wait_entry(
        self, key: str, until: float, get: Callable[[str], Awaitable[Entry | None]]
    ) -> Entry | None:
        """The entry once another replica stored it; None: fetch it yourself."""


class LocalLeases:
    """One process: the coalescer already lets one request fetch; every lease is granted."""

    async def acquire(self, key: str) -> bool:
        return True

    async def release(self, key: str) -> None:
        return None

    async def wait_entry(
        self, key: str, until: float, get: Callable[[str], Awaitable[Entry | None]]
    ) -> Entry | None:
        return None

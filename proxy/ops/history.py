"""Bounded in-memory history for the status page: one point per second for 15 minutes, and
small windows for rates and percentiles. Memory is fixed whatever the traffic.

Nothing here reads a clock: the board passes `now` (monotonic seconds) in."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

RESOLUTION = 1.0  # seconds per point
WINDOW_POINTS = 900  # 15 minutes


@dataclass(frozen=True, slots=True)
class ScopeSample:
    """One scope as the board reads it at a tick: running totals and gauges."""

    sent: int  # slots granted since start
    throttled: int  # upstream 429s since start
    depth: int  # requests queued now
    paused: bool


@dataclass(frozen=True, slots=True)
class Sample:
    """Everything one point is made of, read at a tick (totals are since start)."""

    scopes: tuple[ScopeSample, ...]  # in the order of `History.scopes`
    lookups: int
    hits: int


@dataclass(frozen=True, slots=True)
class Point:
    """One second: what happened in it (deltas) and the gauges at its end."""

    seq: int
    at: float  # wall seconds at the start of the second
    sent: tuple[int, ...]
    throttled: tuple[int, ...]
    depth: tuple[int, ...]
    paused: tuple[bool, ...]
    lookups: int
    hits: int


class History:
    """The ring of points. `advance` is called often (every request, every poll); it adds
    points only when a second has ended, so its usual cost is one comparison."""

    __slots__ = ("_last", "_points", "_second", "_seq", "scopes")

    def __init__(self, scopes: Sequence[str], size: int = WINDOW_POINTS) -> None:
        self.scopes = tuple(scopes)
        self._points: deque[Point] = deque(maxlen=size)
        self._seq = 0
        self._second: int | None = None  # the open second, in monotonic seconds
        self._last: Sample | None = None  # totals at the start of the open second

    @property
    def seq(self) -> int:
        """The sequence number of the newest point (0: none yet)."""
        return self._seq

    def due(self, now: float) -> bool:
        """Whether `advance` would close a second (the caller then reads a Sample)."""
        return self._second is None or int(now // RESOLUTION) > self._second

    def advance(self, now: float, wall_offset: float, sample: Sample) -> None:
        """Close every second that ended before `now`. What changed since the last call
        goes to the newest closed second; the seconds before it in a gap (nobody asked,
        nothing happened) get zeros and the same gauges."""
        second = int(now // RESOLUTION)
        if self._second is None or self._last is None:
            self._second, self._last = second, sample
            return
        if second <= self._second:
            return
        gap = min(second - self._second, self._points.maxlen or WINDOW_POINTS)
        idle = tuple(0 for _ in self.scopes)
        gauges = ([s.depth for s in sample.scopes], [s.paused for s in sample.scopes])
        for n in range(gap, 0, -1):
            start = (second - n) * RESOLUTION + wall_offset
            if n > 1:
                self._append(start, idle, idle, gauges, 0, 0)
            else:
                self._append_delta(start, self._last, sample, gauges)
        self._second, self._last = second, sample

    def _append_delta(
        self, start: float, before: Sample, after: Sample, gauges: tuple[list[int], list[bool]]
    ) -> None:
        pairs = list(zip(after.scopes, before.scopes, strict=True))
        sent = tuple(max(0, a.sent - b.sent) for a, b in pairs)
        throttled = tuple(max(0, a.throttled - b.throttled) for a, b in pairs)
        lookups = max(0, after.lookups - before.lookups)
        hits = max(0, after.hits - before.hits)
        self._append(start, sent, throttled, gauges, lookups, hits)

    def _append(
        self,
        start: float,
        sent: tuple[int, ...],
        throttled: tuple[int, ...],
        gauges: tuple[list[int], list[bool]],
        lookups: int,
        hits: int,
    ) -> None:
        self._seq += 1
        depth, paused = gauges
        point = Point(self._seq, start, sent, throttled, tuple(depth), tuple(paused), lookups, hits)
        self._points.append(point)

    def since(self, seq: int) -> list[Point]:
        """The points newer than `seq` (all of them for 0, or for a seq from another run)."""
        newer = self._seq - seq
        if seq <= 0 or newer < 0 or newer > len(self._points):
            return list(self._points)
        return list(islice(self._points, len(self._points) - newer, None))

    def columns(self, points: Iterable[Point]) -> dict[str, Any]:
        """Points as columns: compact JSON, and what a chart wants."""
        rows = list(points)
        scopes = {
            name: {
                "sent": [p.sent[i] for p in rows],
                "throttled": [p.throttled[i] for p in rows],
                "depth": [p.depth[i] for p in rows],
                "paused": [int(p.paused[i]) for p in rows],
            }
            for i, name in enumerate(self.scopes)
        }
        return {
            "seq": self._seq,
            "first_seq": rows[0].seq if rows else self._seq + 1,
            "resolution_s": RESOLUTION,
            "window_s": (self._points.maxlen or WINDOW_POINTS) * RESOLUTION,
            "t": [round(p.at, 3) for p in rows],
            "lookups": [p.lookups for p in rows],
            "hits": [p.hits for p in rows],
            "scopes": scopes,
        }


class WindowCount:
    """Events in the last `span` seconds, in one-second buckets: fixed memory."""

    __slots__ = ("_counts", "_seconds")

    def __init__(self, span: int = 60) -> None:
        self._counts = [0] * span
        self._seconds = [-1] * span

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        i = second % len(self._counts)
        if self._seconds[i] != second:
            self._seconds[i], self._counts[i] = second, 0
        self._counts[i] += n

    def total(self, now: float) -> int:
        floor = int(now) - len(self._counts)
        return sum(c for c, s in zip(self._counts, self._seconds, strict=True) if s > floor)


class Samples:
    """The most recent `size` observations, for percentiles over a recent window."""

    __slots__ = ("_values",)

    def __init__(self, size: int = 512) -> None:
        self._values: deque[tuple[float, float]] = deque(maxlen=size)

    def add(self, now: float, value: float) -> None:
        self._values.append((now, value))

    def percentiles(self, now: float, window: float, qs: Sequence[float]) -> list[float | None]:
        """Nearest-rank percentiles of what was observed in the last `window` seconds."""
        recent = sorted(v for t, v in self._values if t >= now - window)
        if not recent:
            return [None for _ in qs]
        last = len(recent) - 1
        return [recent[min(last, int(q * len(recent)))] for q in qs]

    def count(self, now: float, window: float) -> int:
        return sum(1 for t, _ in self._values if t >= now - window)

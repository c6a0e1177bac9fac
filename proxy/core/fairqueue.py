"""Weighted fair queue: consumers by virtual time, priority lanes by stride within one."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class Priority(StrEnum):
    """A request's lane within its consumer (`X-PKProxy-Priority`), best first."""

    INTERACTIVE = "interactive"
    NORMAL = "normal"
    BACKGROUND = "background"

    @property
    def rank(self) -> int:
        return PRIORITIES.index(self)


PRIORITIES = tuple(Priority)
# Stride weights of the lanes within one consumer: interactive work overtakes a backlog,
# and background work still gets one slot in thirteen under sustained load.
DEFAULT_LANE_WEIGHTS = {"interactive": 8.0, "normal": 4.0, "background": 1.0}


@dataclass(slots=True)
class _Consumer(Generic[T]):
    weight: float
    tag: float
    order: int
    lanes: dict[str, deque[T]] = field(default_factory=dict)
    lane_pass: dict[str, float] = field(default_factory=dict)
    lane_vtime: float = 0.0
    size: int = 0


class FairQueue(Generic[T]):
    """Items queued per consumer; `pop` picks the consumer with the smallest virtual tag.

    Start-time fair queueing: an active consumer's tag grows by 1/weight per item served,
    a newly active consumer starts at the current virtual time, so a consumer with one
    request waits at most about one slot per other active consumer, whatever the backlog.
    """

    __slots__ = ("_consumers", "_lane_weights", "_order", "_size", "_vtime")

    def __init__(self, lane_weights: dict[str, float] | None = None) -> None:
        self._consumers: dict[str, _Consumer[T]] = {}
        self._vtime = 0.0
        self._order = 0
        self._lane_weights = lane_weights or DEFAULT_LANE_WEIGHTS
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def depth(self, consumer: str) -> int:
        state = self._consumers.get(consumer)
        return state.size if state else 0

    def depths(self) -> dict[str, int]:
        return {name: state.size for name, state in self._consumers.items()}

    def push(
        self, consumer: str, weight: float, priority: str, item: T, front: bool = False
    ) -> None:
        state = self._consumers.get(consumer)
        if state is None:
            self._order += 1
            state = _Consumer(weight, self._vtime, self._order)
            self._consumers[consumer] = state
        lane = state.lanes.get(priority)
        if lane is None:
            lane = state.lanes[priority] = deque()
            state.lane_pass[priority] = max(state.lane_pass.get(priority, 0.0), state.lane_vtime)
        if front:
            lane.appendleft(item)
        else:
            lane.append(item)
        state.size += 1
        self._size += 1

    def pop(self) -> tuple[str, T] | None:
        if not self._consumers:
            return None
        name, state = min(self._consumers.items(), key=lambda kv: (kv[1].tag, kv[1].order))
        priority = min(state.lanes, key=lambda p: (state.lane_pass[p], PRIORITIES.index(p)))
        item = state.lanes[priority].popleft()
        state.lane_vtime = state.lane_pass[priority]
        state.lane_pass[priority] += 1.0 / self._lane_weights.get(priority, 1.0)
        self._vtime = state.tag
        state.tag += 1.0 / state.weight
        self._after_removal(name, state, priority)
        return name, item

    def remove(self, consumer: str, priority: str, item: T) -> bool:
        state = self._consumers.get(consumer)
        lane = state.lanes.get(priority) if state else None
        if state is None or lane is None:
            return False
        try:
            lane.remove(item)
        except ValueError:
            return False
        self._after_removal(consumer, state, priority)
        return True

    def _after_removal(self, name: str, state: _Consumer[T], priority: str) -> None:
        state.size -= 1
        self._size -= 1
        if not state.lanes[priority]:
            del state.lanes[priority]
        if state.size == 0:
            # Forgetting an idle consumer bounds memory; it rejoins at the virtual time.
            del self._consumers[name]

    def ahead_of_new(self, consumer: str, weight: float) -> int:
        """Estimate how many queued items would be served before a new one from `consumer`."""
        own = self._consumers.get(consumer)
        if own is None:
            new_tag = self._vtime
            ahead = 0
        else:
            new_tag = own.tag + own.size / own.weight
            ahead = own.size
        for name, state in self._consumers.items():
            if name == consumer:
                continue
            share = math.floor((new_tag - state.tag) * state.weight) + 1
            if state.tag <= new_tag:
                ahead += min(state.size, max(0, share))
        return ahead

    def heads(self) -> Iterator[tuple[str, T]]:
        """The first item of every lane, with its consumer (each lane is in arrival order,
        but for retries put back in front)."""
        for name, state in self._consumers.items():
            for lane in state.lanes.values():
                yield name, lane[0]

    def __iter__(self) -> Iterator[T]:
        for state in self._consumers.values():
            for lane in state.lanes.values():
                yield from lane

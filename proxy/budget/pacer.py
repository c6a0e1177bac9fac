"""Pacing: *when* the next request of a scope may leave, behind a small Protocol.

`LocalPacer` keeps the model of the upstream bucket (core.bucket) in this process. A
backend shared by several replicas keeps the same model's state elsewhere (Redis): that
is why `reserve` and `learn` are async, while the estimates for rate headers stay
synchronous and may be a few milliseconds old."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from proxy.clock import Clock
from proxy.core.bucket import BucketModel
from proxy.core.budget import ScopeSpec
from proxy.core.ratesignal import RateSignal
from proxy.ops.logs import get_logger


class Pacer(Protocol):
    @property
    def interval(self) -> float:
        """Seconds per request at the scope's (possibly upstream-corrected) rate."""

    async def reserve(self) -> float:
        """Claim a slot if one may be sent now and return 0.0; else claim nothing and
        return how many seconds to wait before asking again."""

    def give_back(self) -> None:
        """A claimed slot was not used."""

    def mark_sent(self) -> None:
        """The claimed request is being written to upstream now."""

    async def learn(self, signal: RateSignal, sent_at: float, received_at: float) -> None:
        """Sync the model with what an upstream answer says of the bucket."""

    def wait_for(self, ahead: int) -> float:
        """Estimate: seconds until a request with `ahead` others before it may be sent."""

    def paused_for(self) -> float:
        """Estimate: seconds during which nothing will be sent (after upstream pushed back)."""


PacerFactory = Callable[[ScopeSpec], Pacer]


class LocalPacer:
    """The bucket model in this process: one instance per scope."""

    __slots__ = ("_clock", "_log", "_model", "_random", "_warned", "spec")

    def __init__(
        self,
        spec: ScopeSpec,
        reserve: float,
        margin: float,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self._model = BucketModel(spec.rate, spec.burst, reserve, margin)
        self._clock = clock
        self._random = rng or random.Random()
        self._log = get_logger()
        self._warned: set[str] = set()

    @property
    def interval(self) -> float:
        return self._model.emission

    async def reserve(self) -> float:
        now = self._clock.monotonic()
        wait = self._model.wait_for(0, now)
        if wait > 0.0:
            return wait
        self._model.take(now, self._random.random())
        return 0.0

    def give_back(self) -> None:
        self._model.give_back(self._clock.monotonic())

    def mark_sent(self) -> None:
        self._model.sent(self._clock.monotonic())

    async def learn(self, signal: RateSignal, sent_at: float, received_at: float) -> None:
        for problem in signal.problems:
            self._warn_once(problem, "budget.bad_rate_header", header=problem)
        if signal.own_system:
            return  # counted in the token's own bucket, not this IP's
        model = self._model
        if signal.limit is not None and model.follow_limit(signal.limit):
            self._warn_once(
                "limit", "budget.limit_mismatch", configured=self.spec.rate, upstream=signal.limit
            )
        if signal.throttled:
            retry = (signal.retry_after_ms or 0) / 1000.0
            model.learn_rejection(retry, received_at, self._random.random())
        elif signal.remaining is not None and model.learn_remaining(signal.remaining, sent_at):
            self._log.debug("budget.synced", scope=self.spec.name, remaining=signal.remaining)

    def wait_for(self, ahead: int) -> float:
        return self._model.wait_for(ahead, self._clock.monotonic())

    def adopt(self, tat: float, share: float, phase: float = 0.0) -> None:
        """Pace alone at `share` of the rate, strictly spaced, starting no earlier than the
        shared bucket last allowed, `phase` (0..1) of one of its own slots later (Redis was
        lost: the other replicas do the same, each at its own phase)."""
        self._model.rate = self.spec.rate * share
        self._model.burst = 1
        self._model.tat = max(self._model.tat, tat + phase * self._model.emission)

    def paused_for(self) -> float:
        return max(0.0, self._model.paused_until - self._clock.monotonic())

    def _warn_once(self, kind: str, event: str, **fields: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            self._log.warning(event, scope=self.spec.name, **fields)


def local_pacers(reserve: float, margin: float, clock: Clock) -> PacerFactory:
    def make(spec: ScopeSpec) -> Pacer:
        return LocalPacer(spec, reserve, margin, clock)

    return make

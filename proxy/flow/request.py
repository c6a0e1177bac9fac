"""The values one request carries through the flow: what it is, and the fields of its
one `request.completed` event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy.budget.forward import Outbound, Place
from proxy.budget.scheduler import ScopeScheduler
from proxy.core.admission import Target
from proxy.core.cachepolicy import CacheResult
from proxy.flow.consumers import Consumer


@dataclass(slots=True)
class Request:
    """One admitted request, classified."""

    target: Target
    consumer: Consumer
    scope: ScopeScheduler
    place: Place
    raw_headers: Sequence[tuple[bytes, bytes]]  # as received, in order
    body: bytes
    credentialed: bool
    accept_encoding: str | None = None
    user_agent: str | None = None
    _decoded: list[tuple[str, str]] | None = None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The request's headers as text, decoded once and only when needed (a cache hit
        never needs them)."""
        if self._decoded is None:
            self._decoded = [
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers
            ]
        return self._decoded


@dataclass(slots=True)
class RequestLog:
    """The fields of the one `request.completed` event every request produces."""

    method: str
    started: float
    consumer: str = "-"
    consumer_label: str = "-"
    route: str = "-"
    scope: str = "-"
    cache: CacheResult | None = None
    queue_wait: float = 0.0
    upstream_time: float = 0.0
    slots: int = 0  # upstream slots this request was granted (retries after a 429 count)
    reason: str | None = None

    def timed(self, out: Outbound) -> None:
        self.queue_wait, self.upstream_time = out.queue_wait, out.upstream_time
        self.slots = out.attempts

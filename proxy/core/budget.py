"""Upstream budget: scopes (which bucket a request spends), profiles, retry estimates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.core.routes import template_matches


@dataclass(frozen=True, slots=True)
class ScopeSpec:
    """One upstream bucket: which requests it covers and how fast it may be spent."""

    name: str
    rate: float  # requests per second
    burst: int = 1  # requests an idle bucket takes at once (PluralKit's burst - 1)
    methods: tuple[str, ...] = ("*",)
    routes: tuple[str, ...] = ("*",)

    def covers(self, method: str, template: str) -> bool:
        method = "GET" if method == "HEAD" else method
        method_ok = "*" in self.methods or method in self.methods
        return method_ok and any(template_matches(p, template) for p in self.routes)

    @property
    def limit(self) -> int:
        return max(1, math.floor(self.rate))


SEED_PROFILE: tuple[ScopeSpec, ...] = (ScopeSpec("all", 2.0, 1),)
# Today's PluralKit (crates/api/src/middleware/ratelimit.rs): first match wins. Its GCRA
# has burst = rate, of which an idle bucket takes rate - 1 at once (the truncation).
PLURALKIT_PROFILE: tuple[ScopeSpec, ...] = (
    ScopeSpec("message", 10.0, 9, ("GET",), ("/v2/messages/{id}",)),
    ScopeSpec("generic_get", 10.0, 9, ("GET",), ("*",)),
    ScopeSpec("generic_update", 3.0, 2, ("POST", "PATCH", "PUT", "DELETE"), ("*",)),
)
PROFILES = {"seed": SEED_PROFILE, "pluralkit": PLURALKIT_PROFILE}


def scope_for(method: str, template: str, scopes: Sequence[ScopeSpec]) -> ScopeSpec:
    """The first scope that covers a request; the last scope catches the rest."""
    for scope in scopes:
        if scope.covers(method, template):
            return scope
    return scopes[-1]


def retry_after_for(wait: float, max_wait: float, next_slot_in: float) -> float:
    """Honest seconds until a refused request would fit within its own max wait."""
    return max(next_slot_in, wait - max_wait, 0.0)

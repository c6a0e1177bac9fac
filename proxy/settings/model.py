"""The settings model: embedded defaults and the frozen dataclasses built from them."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from proxy.core.budget import ScopeSpec
from proxy.core.routes import template_matches


def default_cache_dir(port: int) -> str:
    """One directory per port: instances of one user on one machine do not share a disk tier,
    and `pkproxy --port N cache clear` empties that instance's only."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "pkproxy" / str(port))


DEFAULT_TTLS: dict[str, float] = {
    "/v2/systems/{ref}/fronters": 10,
    "/v2/systems/{ref}/switches": 15,
    "/v2/systems/{ref}/switches/{switch}": 300,
    "/v2/messages/{id}": 3600,
    "/v2/systems/{ref}": 120,
    "/v2/systems/{ref}/settings": 120,
    "/v2/members/{ref}": 120,
    "/v2/groups/{ref}": 120,
    "/v2/systems/{ref}/members": 60,
    "/v2/systems/{ref}/groups": 60,
    "/v2/members/{ref}/groups": 60,
    "/v2/groups/{ref}/members": 60,
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {
        "host": "127.0.0.1",
        "port": 8080,
        "max_body_bytes": 1_048_576,
        # Request bodies held at once, all connections together (README: Limits).
        "max_buffered_body_bytes": 64 * 1_048_576,
        "max_header_bytes": 16_384,
        "keepalive_seconds": 75.0,
        "header_timeout_seconds": 30.0,
        "body_timeout_seconds": 60.0,
        "max_connections": 1024,
        "drain_seconds": 10.0,
        "event_loop": "auto",
    },
    "upstream": {
        "url": "https://api.pluralkit.me",
        "timeout_seconds": 10.0,
        "connect_timeout_seconds": 5.0,
        "user_agent": "pkproxy/0.1 (+https://github.com/pkproxy/pkproxy)",
        "max_connections": 16,
        "via": "1.1 pkproxy",
        # PluralKit's largest answers are member and group lists: 1,000 members (its default
        # limit) at up to ~6 KiB each, or 250 groups listing their members, stay under ~12 MiB
        # even with every text field full; 32 MiB leaves ample room (README: Limits).
        "max_body_bytes": 32 * 1024 * 1024,
    },
    "budget": {
        "profile": "seed",
        "margin": 0.015,
        "reserve": 2.0,
        "default_max_wait_ms": 10_000,
        "max_wait_ceiling_ms": 60_000,
        "max_queue": 1000,
        "scopes": [],
    },
    "cache": {
        "enabled": True,
        "directory": "",
        "memory_bytes": 32 * 1024 * 1024,
        "disk_bytes": 512 * 1024 * 1024,
        "default_ttl_seconds": 60.0,
        "negative_ttl_seconds": 30.0,
        "grace_seconds": 30.0,
        "max_stale_seconds": 3600.0,
        "ttl": {},
    },
    "consumers": {
        "require_key": False,
        "trusted_proxies": [],
        "default_weight": 1.0,
        "default_priority": "normal",
        "keys": [],
    },
    "log": {"level": "info", "format": "auto", "requests": "sample", "sample_every": 100},
    "redis": {
        "url": "",
        "key_prefix": "pkproxy:",
        "egress": "default",
        "fallback_share": 1 / 3,
        "grant_timeout_ms": 100,
        "heartbeat_seconds": 2.0,
        "lease_seconds": 5.0,
        "max_entry_bytes": 4 * 1024 * 1024,
    },
}


class ConfigError(Exception):
    """Every problem found in a configuration, named in one message."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    max_body_bytes: int
    max_buffered_body_bytes: int  # of all the request bodies held at once
    max_header_bytes: int
    keepalive_seconds: float
    header_timeout_seconds: float  # from a request's first byte to the end of its head
    body_timeout_seconds: float  # from the end of the head to the end of the body
    max_connections: int
    drain_seconds: float
    event_loop: str


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: URL
    timeout_seconds: float
    connect_timeout_seconds: float
    user_agent: str
    max_connections: int
    via: str
    max_body_bytes: int


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    profile: str
    margin: float  # timing safety, as a fraction of one interval
    reserve: float  # tokens of a burst left for other programs on the IP
    default_max_wait_ms: int
    max_wait_ceiling_ms: int
    max_queue: int
    scopes: tuple[ScopeSpec, ...]


@dataclass(frozen=True, slots=True)
class CacheSettings:
    enabled: bool
    directory: str
    memory_bytes: int
    disk_bytes: int
    default_ttl_seconds: float
    negative_ttl_seconds: float
    grace_seconds: float
    max_stale_seconds: float
    ttl: Mapping[str, float]

    def ttl_for(self, template: str) -> float:
        for pattern, seconds in self.ttl.items():
            if template_matches(pattern, template):
                return seconds
        return self.default_ttl_seconds


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    name: str
    key: str = field(repr=False)
    weight: float = 1.0
    priority: str = "normal"
    rate: float | None = None
    burst: int = 1
    max_queued: int | None = None
    ops: bool = False  # may read /status and /metrics and purge the cache when keys are required


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    require_key: bool
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    default_weight: float
    default_priority: str
    keys: tuple[ConsumerSpec, ...]


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str
    format: str
    requests: str  # all | sample | errors: which request.completed events are written
    sample_every: int  # with "sample": one cache hit in this many is logged


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Shared state for several replicas behind one IP. `url` empty: one process alone."""

    url: str = field(repr=False)  # may hold a password
    key_prefix: str
    egress: str  # replicas with the same value share one budget
    fallback_share: float  # of each rate, while Redis is lost and no replica count is known
    grant_timeout_ms: int  # a grant slower than this counts as Redis unavailable
    heartbeat_seconds: float
    lease_seconds: float  # how long one replica may hold a fetch before others take over
    max_entry_bytes: int  # larger answers are not stored in Redis

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings
    upstream: UpstreamSettings
    budget: BudgetSettings
    cache: CacheSettings
    consumers: ConsumerSettings
    log: LogSettings
    redis: RedisSettings
    source: str = "defaults"
    # Kubernetes service-link variables found and ignored: the caller warns about them.
    ignored_env: tuple[str, ...] = ()

"""Validation: raw merged values -> frozen Settings, naming every problem found."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from yarl import URL

from proxy.core.budget import PROFILES, ScopeSpec
from proxy.core.fairqueue import PRIORITIES
from proxy.core.routes import known_templates, template_matches
from proxy.settings.model import (
    DEFAULT_TTLS,
    DEFAULTS,
    BudgetSettings,
    CacheSettings,
    ConsumerSettings,
    ConsumerSpec,
    LogSettings,
    RedisSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
    default_cache_dir,
)


def build(raw: dict[str, dict[str, Any]], problems: list[str]) -> Settings | None:
    check = _Checker(problems)
    server = _section(_build_server, raw, "server", check)
    port = server.port if server is not None else DEFAULTS["server"]["port"]
    sections = {
        "server": server,
        "upstream": _section(_build_upstream, raw, "upstream", check),
        "budget": _section(_build_budget, raw, "budget", check),
        "cache": _section(partial(_build_cache, port=port), raw, "cache", check),
        "consumers": _section(_build_consumers, raw, "consumers", check),
        "log": _section(_build_log, raw, "log", check),
        "redis": _section(_build_redis, raw, "redis", check),
    }
    if any(value is None for value in sections.values()):
        return None
    return Settings(**sections)


def _section(
    builder: Callable[[Mapping[str, Any], _Checker], Any],
    raw: Mapping[str, Mapping[str, Any]],
    name: str,
    check: _Checker,
) -> Any:
    """Build one section; a shape so wrong that it cannot be built is named, and the other
    sections are still checked, so that every problem is reported at once."""
    try:
        return builder(raw[name], check)
    except (TypeError, ValueError) as exc:
        check.problems.append(f"[{name}]: {exc}")
        return None


def _duplicates(items: Any, field: str, where: str, secret: bool = False) -> list[str]:
    """`where[i]: <field> ... is already used by where[j]`, from the raw entries, so that a
    duplicate is reported together with the entries' other problems, not after they are fixed."""
    if not isinstance(items, list):
        return []
    first: dict[Any, int] = {}
    found = []
    for index, item in enumerate(items):
        value = item.get(field) if isinstance(item, Mapping) else None
        if not isinstance(value, str) or not value:
            continue
        if value in first:
            shown = field if secret else f"{field} {value!r}"  # a key is never printed
            found.append(f"{where}[{index}]: {shown} is already used by {where}[{first[value]}]")
        else:
            first[value] = index
    return found


class _Checker:
    """Typed reads of raw values that record a problem instead of stopping at the first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def number(
        self,
        raw: Mapping[str, Any],
        section: str,
        key: str,
        low: float = 0.0,
        integer: bool = False,
        strict: bool = False,
    ) -> Any:
        value = raw[key]
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            self.problems.append(f"{section}.{key} must be a {'whole ' if integer else ''}number")
            return DEFAULTS.get(section, {}).get(key, low if not integer else int(low))
        if value < low or (strict and value == low):
            self.problems.append(f"{section}.{key} must be {'>' if strict else '>='} {low}")
        return value

    def text(
        self, raw: Mapping[str, Any], section: str, key: str, choices: tuple[str, ...] | None = None
    ) -> str:
        value = raw[key]
        if not isinstance(value, str):
            self.problems.append(f"{section}.{key} must be a string")
            return str(DEFAULTS[section][key])
        if choices is not None and value not in choices:
            self.problems.append(f"{section}.{key} must be one of {', '.join(choices)}")
        return value

    def flag(self, raw: Mapping[str, Any], section: str, key: str) -> bool:
        value = raw[key]
        if not isinstance(value, bool):
            self.problems.append(f"{section}.{key} must be true or false")
            return bool(DEFAULTS[section][key])
        return value


def _build_server(raw: Mapping[str, Any], c: _Checker) -> ServerSettings:
    port = c.number(raw, "server", "port", 0, integer=True)
    if isinstance(port, int) and port > 65535:
        c.problems.append("server.port must be <= 65535")
    max_body = c.number(raw, "server", "max_body_bytes", 0, integer=True)
    max_buffered = c.number(raw, "server", "max_buffered_body_bytes", 0, integer=True)
    if isinstance(max_body, int) and isinstance(max_buffered, int) and max_buffered < max_body:
        c.problems.append("server.max_buffered_body_bytes must be >= server.max_body_bytes")
    return ServerSettings(
        host=c.text(raw, "server", "host"),
        port=port,
        max_body_bytes=max_body,
        max_buffered_body_bytes=max_buffered,
        max_header_bytes=c.number(raw, "server", "max_header_bytes", 1024, integer=True),
        keepalive_seconds=c.number(raw, "server", "keepalive_seconds", 0),
        header_timeout_seconds=c.number(raw, "server", "header_timeout_seconds", 0, strict=True),
        body_timeout_seconds=c.number(raw, "server", "body_timeout_seconds", 0, strict=True),
        max_connections=c.number(raw, "server", "max_connections", 1, integer=True),
        drain_seconds=c.number(raw, "server", "drain_seconds", 0),
        event_loop=c.text(raw, "server", "event_loop", ("auto", "uvloop", "asyncio")),
    )


def _build_upstream(raw: Mapping[str, Any], c: _Checker) -> UpstreamSettings:
    text = c.text(raw, "upstream", "url")
    try:
        url = URL(text)
        origin = url.scheme in {"http", "https"} and bool(url.host) and url.path in {"", "/"}
    except ValueError:  # yarl refuses some malformed URLs outright ("http://[bad")
        origin = False
    if not origin:
        c.problems.append(f"upstream.url must be an http(s) origin, got {text!r}")
        url = URL(DEFAULTS["upstream"]["url"])
    agent = c.text(raw, "upstream", "user_agent")
    if not agent.strip():
        c.problems.append("upstream.user_agent must not be empty (PluralKit requires one)")
    return UpstreamSettings(
        url=url.origin(),
        timeout_seconds=c.number(raw, "upstream", "timeout_seconds", 0, strict=True),
        connect_timeout_seconds=c.number(
            raw, "upstream", "connect_timeout_seconds", 0, strict=True
        ),
        user_agent=agent,
        max_connections=c.number(raw, "upstream", "max_connections", 1, integer=True),
        via=c.text(raw, "upstream", "via"),
        max_body_bytes=c.number(raw, "upstream", "max_body_bytes", 1, integer=True),
    )


def _build_scope(item: Any, index: int, c: _Checker) -> ScopeSpec | None:
    where = f"budget.scopes[{index}]"
    if not isinstance(item, Mapping):
        c.problems.append(f"{where} must be a table")
        return None
    unknown = set(item) - {"name", "rate", "burst", "methods", "routes"}
    if unknown:
        c.problems.append(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    name, rate, burst = item.get("name"), item.get("rate"), item.get("burst", 1)
    methods, routes = item.get("methods", ["*"]), item.get("routes", ["*"])
    bad = []
    if not isinstance(name, str) or not name:
        bad.append("name must be a non-empty string")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
        bad.append("rate must be a number > 0")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        bad.append("burst must be a whole number >= 1")
    elif isinstance(rate, (int, float)) and burst > 1 and burst > rate - 1:
        bad.append("burst must be <= rate - 1 (PluralKit rejects and charges at the boundary)")
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        bad.append("methods must be a list of strings")
    if not isinstance(routes, list) or not all(_known_route(r) for r in routes):
        bad.append("routes must be a list of known route templates or '*'")
    c.problems.extend(f"{where}: {problem}" for problem in bad)
    if bad:
        return None
    assert isinstance(name, str) and isinstance(rate, (int, float))
    return ScopeSpec(name, float(rate), burst, tuple(m.upper() for m in methods), tuple(routes))


def _known_route(route: Any) -> bool:
    return isinstance(route, str) and (
        route == "*" or any(template_matches(route, t) for t in known_templates())
    )


def _build_budget(raw: Mapping[str, Any], c: _Checker) -> BudgetSettings:
    profile = c.text(raw, "budget", "profile", tuple(PROFILES))
    scopes_raw = raw["scopes"]
    scopes: tuple[ScopeSpec, ...] = PROFILES.get(profile, PROFILES["seed"])
    if not isinstance(scopes_raw, list):
        c.problems.append("budget.scopes must be a list of tables")
    elif scopes_raw:
        built = [_build_scope(item, i, c) for i, item in enumerate(scopes_raw)]
        scopes = tuple(s for s in built if s is not None) or scopes
        c.problems.extend(_duplicates(scopes_raw, "name", "budget.scopes"))
    default_wait = c.number(raw, "budget", "default_max_wait_ms", 0, integer=True)
    ceiling = c.number(raw, "budget", "max_wait_ceiling_ms", 0, integer=True)
    if isinstance(default_wait, int) and isinstance(ceiling, int) and default_wait > ceiling:
        c.problems.append("budget.default_max_wait_ms must be <= budget.max_wait_ceiling_ms")
    margin = c.number(raw, "budget", "margin", 0)
    if isinstance(margin, (int, float)) and margin > 1:
        c.problems.append("budget.margin must be <= 1 (a fraction of the interval)")
    return BudgetSettings(
        profile=profile,
        margin=float(margin),
        reserve=float(c.number(raw, "budget", "reserve", 0)),
        default_max_wait_ms=default_wait,
        max_wait_ceiling_ms=ceiling,
        max_queue=c.number(raw, "budget", "max_queue", 1, integer=True),
        scopes=scopes,
    )


def _build_cache(raw: Mapping[str, Any], c: _Checker, port: int) -> CacheSettings:
    ttl_raw = raw["ttl"]
    ttl: dict[str, float] = dict(DEFAULT_TTLS)
    if not isinstance(ttl_raw, Mapping):
        c.problems.append("cache.ttl must be a table of route template = seconds")
    else:
        for route, seconds in ttl_raw.items():
            if not _known_route(route):
                c.problems.append(f"cache.ttl: unknown route template {route!r}")
            elif isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                c.problems.append(f"cache.ttl.{route!r} must be a number of seconds >= 0")
            else:
                ttl = {route: float(seconds), **{k: v for k, v in ttl.items() if k != route}}
    directory = c.text(raw, "cache", "directory") or default_cache_dir(port)
    return CacheSettings(
        enabled=c.flag(raw, "cache", "enabled"),
        directory=directory,
        memory_bytes=c.number(raw, "cache", "memory_bytes", 0, integer=True),
        disk_bytes=c.number(raw, "cache", "disk_bytes", 0, integer=True),
        default_ttl_seconds=c.number(raw, "cache", "default_ttl_seconds", 0),
        negative_ttl_seconds=c.number(raw, "cache", "negative_ttl_seconds", 0),
        grace_seconds=c.number(raw, "cache", "grace_seconds", 0),
        max_stale_seconds=c.number(raw, "cache", "max_stale_seconds", 0),
        ttl=ttl,
    )


def _build_consumer(
    item: Any, index: int, c: _Checker, default_priority: str
) -> ConsumerSpec | None:
    where = f"consumers.keys[{index}]"
    if not isinstance(item, Mapping):
        c.problems.append(f"{where} must be a table")
        return None
    allowed = {"name", "key", "weight", "priority", "rate", "burst", "max_queued", "ops"}
    unknown = set(item) - allowed
    bad = [f"unknown keys {', '.join(sorted(unknown))}"] if unknown else []
    name, key = item.get("name"), item.get("key")
    weight, priority = item.get("weight", 1.0), item.get("priority", default_priority)
    rate, burst, max_queued = item.get("rate"), item.get("burst", 1), item.get("max_queued")
    ops = item.get("ops", False)
    if not isinstance(ops, bool):
        bad.append("ops must be true or false")
    if not isinstance(name, str) or not name:
        bad.append("name must be a non-empty string")
    if not isinstance(key, str) or len(key) < 8:
        bad.append("key must be a string of at least 8 characters")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        bad.append("weight must be a number > 0")
    if priority not in PRIORITIES:
        bad.append(f"priority must be one of {', '.join(PRIORITIES)}")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0
    ):
        bad.append("rate must be a number > 0")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        bad.append("burst must be a whole number >= 1")
    if max_queued is not None and (not isinstance(max_queued, int) or max_queued < 0):
        bad.append("max_queued must be a whole number >= 0")
    c.problems.extend(f"{where}: {problem}" for problem in bad)
    if bad:
        return None
    assert isinstance(name, str) and isinstance(key, str)
    return ConsumerSpec(
        name,
        key,
        float(weight),
        priority,
        float(rate) if rate is not None else None,
        burst,
        max_queued,
        ops is True,
    )


def _build_consumers(raw: Mapping[str, Any], c: _Checker) -> ConsumerSettings:
    priority = c.text(raw, "consumers", "default_priority", PRIORITIES)
    # An invalid default is reported once, here, not again against every key that uses it.
    key_default = priority if priority in PRIORITIES else DEFAULTS["consumers"]["default_priority"]
    networks = []
    proxies = raw["trusted_proxies"]
    for entry in proxies if isinstance(proxies, list) else [proxies]:
        try:
            networks.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            c.problems.append(f"consumers.trusted_proxies: {entry!r} is not an address or network")
    keys_raw = raw["keys"]
    specs: list[ConsumerSpec] = []
    if not isinstance(keys_raw, list):
        c.problems.append("consumers.keys must be a list of tables")
    else:
        built = [_build_consumer(item, i, c, key_default) for i, item in enumerate(keys_raw)]
        specs = [s for s in built if s is not None]
        c.problems.extend(_duplicates(keys_raw, "name", "consumers.keys"))
        c.problems.extend(_duplicates(keys_raw, "key", "consumers.keys", secret=True))
    require = c.flag(raw, "consumers", "require_key")
    if require and not specs and isinstance(keys_raw, list) and not keys_raw:
        c.problems.append("consumers.require_key is true but no consumers.keys are configured")
    return ConsumerSettings(
        require_key=require,
        trusted_proxies=tuple(networks),
        default_weight=c.number(raw, "consumers", "default_weight", 0, strict=True),
        default_priority=priority,
        keys=tuple(specs),
    )


def _build_redis(raw: Mapping[str, Any], c: _Checker) -> RedisSettings:
    url = c.text(raw, "redis", "url")
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        c.problems.append("redis.url must start with redis://, rediss:// or unix://")
    share = c.number(raw, "redis", "fallback_share", 0, strict=True)
    if isinstance(share, (int, float)) and share > 1:
        c.problems.append("redis.fallback_share must be <= 1 (a share of each rate)")
    return RedisSettings(
        url=url,
        key_prefix=c.text(raw, "redis", "key_prefix"),
        egress=c.text(raw, "redis", "egress") or "default",
        fallback_share=float(share),
        grant_timeout_ms=c.number(raw, "redis", "grant_timeout_ms", 1, integer=True),
        heartbeat_seconds=float(c.number(raw, "redis", "heartbeat_seconds", 0.1)),
        lease_seconds=float(c.number(raw, "redis", "lease_seconds", 0.1)),
        max_entry_bytes=c.number(raw, "redis", "max_entry_bytes", 0, integer=True),
    )


def _build_log(raw: Mapping[str, Any], c: _Checker) -> LogSettings:
    return LogSettings(
        level=c.text(raw, "log", "level", ("debug", "info", "warning", "error")),
        format=c.text(raw, "log", "format", ("auto", "json", "console")),
        requests=c.text(raw, "log", "requests", ("all", "sample", "errors")),
        sample_every=c.number(raw, "log", "sample_every", 1, integer=True),
    )

"""Cache decisions: what is cacheable, its key, whether to store, and how fresh it is."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from proxy.core.admission import Target
from proxy.core.routes import UNKNOWN_ROUTE

E = TypeVar("E")


class CacheResult(StrEnum):
    """How a request was answered (`X-Cache`, logs, metrics); NONE: not a proxied answer."""

    HIT = "HIT"
    STALE = "STALE"
    MISS = "MISS"
    COALESCED = "COALESCED"
    BYPASS = "BYPASS"
    NONE = "NONE"


PRIVACY_CODES = frozenset(range(30001, 30006))
_NEVER_STORE_DIRECTIVES = frozenset({"no-store", "private", "no-cache"})


def is_cacheable_request(target: Target, credentialed: bool) -> bool:
    """Only GET/HEAD without any credential, on a known route, may touch the shared cache."""
    return (
        not credentialed
        and target.method in {"GET", "HEAD"}
        and target.route.template != UNKNOWN_ROUTE
    )


def cache_key(origin: str, path_and_query: str, encoding: str) -> str:
    """GET and HEAD share an entry; the key is exactly what is forwarded, to which origin
    (a store kept across restarts must not answer for another upstream)."""
    return f"GET {origin}{path_and_query} {encoding}"


# The lists that link members and groups. A member written (renamed, deleted) is wrong in
# every group's member list it is in, and which groups those are is known only from bodies
# that may not be cached; the same goes for a group in members' group lists. So all the
# lists of each of these two routes share one tag, which any write to the other kind
# evicts: more misses after such a write, never a stale list.
GROUP_MEMBER_LISTS = "/v2/groups/*/members"
MEMBER_GROUP_LISTS = "/v2/members/*/groups"
_LINK_LISTS = re.compile(r"/v2/(?:groups/[^/]+/members|members/[^/]+/groups)")


def cache_tag(origin: str, path: str) -> str:
    """Every query of one path shares a tag, so that a write evicts them all; every list of
    members of a group, and every list of groups of a member, shares one (above)."""
    if _LINK_LISTS.fullmatch(path):
        path = GROUP_MEMBER_LISTS if path.startswith("/v2/groups/") else MEMBER_GROUP_LISTS
    return f"{origin}{path}"


@dataclass(frozen=True, slots=True)
class StoreDecision:
    store: bool
    ttl: float
    reason: str


def _directives(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            out[name.strip().lower()] = arg.strip().strip('"')
    return out


def _error_code(body: bytes) -> int | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, int) else None


def store_decision(
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    route_ttl: float,
    negative_ttl: float,
) -> StoreDecision:
    """Whether to store an upstream answer, and for how long."""
    lowered = [(name.lower(), value) for name, value in headers]
    if status in {200, 204}:
        ttl = route_ttl
    elif status == 404 or (status == 403 and _error_code(body) in PRIVACY_CODES):
        ttl = min(route_ttl, negative_ttl)
    else:
        return StoreDecision(False, 0.0, "status")
    if any(name == "set-cookie" for name, _ in lowered):
        return StoreDecision(False, 0.0, "set_cookie")
    for name, value in lowered:
        if name == "vary":
            fields = {f.strip().lower() for f in value.split(",") if f.strip()}
            if fields - {"accept-encoding"}:
                return StoreDecision(False, 0.0, "vary")
    # RFC 9111 section 5.2.2: the origin's Cache-Control, when sent, wins over our TTLs.
    for name, value in lowered:
        if name != "cache-control":
            continue
        directives = _directives(value)
        if _NEVER_STORE_DIRECTIVES & directives.keys():
            return StoreDecision(False, 0.0, "cache_control")
        for directive in ("s-maxage", "max-age"):
            if directive in directives:
                try:
                    ttl = float(int(directives[directive]))
                except ValueError:
                    return StoreDecision(False, 0.0, "cache_control")
                break
    if ttl <= 0:
        return StoreDecision(False, 0.0, "ttl_zero")
    return StoreDecision(True, ttl, "stored")


@dataclass(frozen=True, slots=True)
class Fresh(Generic[E]):
    entry: E
    age: float


@dataclass(frozen=True, slots=True)
class Stale(Generic[E]):
    """Expired but within grace: serve now, refresh in the background."""

    entry: E
    age: float


@dataclass(frozen=True, slots=True)
class Expired(Generic[E]):
    """Past grace: refetch; the entry may stand in for an error while `usable`."""

    entry: E
    age: float
    usable: bool

    @property
    def fallback(self) -> E | None:
        return self.entry if self.usable else None


@dataclass(frozen=True, slots=True)
class Miss:
    pass


Lookup = Fresh[E] | Stale[E] | Expired[E] | Miss


def classify_age(
    entry: E, stored_at: float, ttl: float, now: float, grace: float, max_stale: float
) -> Fresh[E] | Stale[E] | Expired[E]:
    age = max(0.0, now - stored_at)
    if age < ttl:
        return Fresh(entry, age)
    if age < ttl + grace:
        return Stale(entry, age)
    return Expired(entry, age, age < ttl + max_stale)


def stale_instead(status: int | None) -> bool:
    """RFC 5861 stale-if-error, extended to throttling: a usable stale entry answers
    instead of an upstream error (`None`: unreachable or timed out), an upstream 429, or a
    queue wait longer than the client's deadline (also `None`)."""
    return status is None or status >= 500 or status == 429

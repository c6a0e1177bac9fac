"""A fake PluralKit API v2: a real aiohttp server that behaves like the real one.

Its limiter is PluralKit's GCRA (ratelimit.lua) including the quirk that matters most to a
proxy: `remaining` is truncated to an integer and a request is let through only when it is
> 0, so a request that lands at the boundary is rejected with 429 *and still charged*.
Like PluralKit, it answers OPTIONS, /v1, paths outside its route table and requests
without a User-Agent before the limiter runs: those are not charged and carry no rate
headers. A request whose `Authorization` token targets the token's own system is charged
to an `own_system_get`/`own_system_update` bucket keyed by that system instead of the IP.
Every request's arrival time, method, path, headers and bucket are recorded.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import socket
import struct
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SEED_SCOPES = {"generic": 2.0}
PLURALKIT_SCOPES = {"generic_get": 10.0, "message": 10.0, "generic_update": 3.0}


def seed_scope(method: str, path: str) -> str:
    return "generic"


def pluralkit_scope(method: str, path: str) -> str:
    if method in {"GET", "HEAD"}:
        return "message" if path.startswith("/v2/messages/") else "generic_get"
    return "generic_update"


# PluralKit's route table (crates/api/src/main.rs), paths only: anything else is answered
# 404 with an empty body by `ignore_invalid_routes`, which runs before the rate limiter.
_ROUTE_TEMPLATES = (
    "/v2/systems/{}",
    "/v2/systems/{}/settings",
    "/v2/systems/{}/members",
    "/v2/systems/{}/groups",
    "/v2/systems/{}/switches",
    "/v2/systems/{}/fronters",
    "/v2/systems/{}/switches/{}",
    "/v2/systems/{}/switches/{}/members",
    "/v2/systems/{}/guilds/{}",
    "/v2/systems/{}/autoproxy",
    "/v2/systems/{}/oembed.json",
    "/v2/members",
    "/v2/members/{}",
    "/v2/members/{}/groups",
    "/v2/members/{}/groups/add",
    "/v2/members/{}/groups/remove",
    "/v2/members/{}/groups/overwrite",
    "/v2/members/{}/guilds/{}",
    "/v2/members/{}/oembed.json",
    "/v2/groups",
    "/v2/groups/{}",
    "/v2/groups/{}/members",
    "/v2/groups/{}/members/add",
    "/v2/groups/{}/members/remove",
    "/v2/groups/{}/members/overwrite",
    "/v2/groups/{}/oembed.json",
    "/v2/messages/{}",
)
_ROUTES = tuple(
    re.compile("[^/]+".join(re.escape(part) for part in t.split("{}"))) for t in _ROUTE_TEMPLATES
)


def is_known_route(path: str) -> bool:
    """Whether PluralKit's router knows `path` (else: 404, not rate-checked)."""
    return any(route.fullmatch(path) for route in _ROUTES)


@dataclass
class Arrival:
    at: float  # time.monotonic()
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    status: int = 0
    scope: str = ""  # the bucket's scope; "" when the request was not rate-checked
    bucket: str = ""  # the key charged: "<ip>:<scope>" or "<system id>:own_system_*"


@dataclass
class Gcra:
    """PluralKit's ratelimit.lua, period 1 s, burst = rate, state per key."""

    tat: dict[str, float] = field(default_factory=dict)

    def check(self, key: str, rate: float, now: float) -> tuple[bool, int, float, float]:
        emission = 1.0 / rate
        burst = rate
        tat = max(self.tat.get(key, now), now)
        new_tat = tat + emission
        allow_at = new_tat - burst * emission
        diff = now - allow_at
        remaining = diff / emission
        if remaining < 0:
            return False, 0, -diff, tat - now  # rejected, nothing stored
        self.tat[key] = new_tat  # counted, even if the server rejects it below
        # PluralKit documents that an idle bucket of rate R takes R-1 at once: at rate 2 an
        # idle request lands at exactly remaining 1.0, which float rounding must not lose.
        truncated = int(remaining + 1e-9)
        return truncated > 0, truncated, 0.0, new_tat - now


def _system(sid: str, uuid: str, name: str, private: bool) -> dict[str, Any]:
    return {
        "id": sid,
        "uuid": uuid,
        "name": name,
        "description": f"{name} description",
        "tag": None,
        "pronouns": "they/them",
        "privacy": {"member_list_privacy": "private" if private else "public"},
    }


def _member(mid: str, uuid: str, system: str, name: str, private: bool) -> dict[str, Any]:
    return {
        "id": mid,
        "uuid": uuid,
        "system": system,
        "name": name,
        "description": f"secret notes of {name}" if private else f"{name} is public",
        "pronouns": "she/her",
        "birthday": "2000-01-01" if private else None,
        "privacy": {"description_privacy": "private" if private else "public"},
    }


class FakePluralKit:
    """State and behaviour; `app()` gives the aiohttp application."""

    TOKENS = {"token-exmpl": "exmpl", "token-prvsy": "prvsy"}
    APP_TOKENS = {"app-token-1": "exmpl"}

    def __init__(
        self,
        scopes: dict[str, float] | None = None,
        scope_of: Callable[[str, str], str] = seed_scope,
    ) -> None:
        self.scopes = scopes or dict(SEED_SCOPES)
        self.scope_of = scope_of
        self.gcra = Gcra()
        self.arrivals: list[Arrival] = []
        self.delay = 0.0
        self.extra_headers: dict[str, dict[str, str]] = {}
        self.force_status: dict[str, tuple[int, bytes]] = {}
        self.reset_in_ms = False
        # Opt-in: every Nth request is charged and answered by resetting its connection
        # (recorded with status 0), as a flaky upstream or network would.
        self.reset_every = 0
        # Opt-in: a request carrying this header is charged to the bucket of the IP its value
        # names, so that a second client can share the proxy's bucket or use another one.
        self.key_header: str | None = None
        self.systems = {
            "exmpl": _system("exmpl", "11111111-1111-4111-8111-111111111111", "Example", False),
            "prvsy": _system("prvsy", "22222222-2222-4222-8222-222222222222", "Private", True),
        }
        self.members = {
            "abcde": _member(
                "abcde", "aaaaaaaa-0000-4000-8000-000000000001", "exmpl", "Alice", False
            ),
            "prvmb": _member(
                "prvmb", "aaaaaaaa-0000-4000-8000-000000000002", "exmpl", "Piper", True
            ),
            "zyxwv": _member("zyxwv", "aaaaaaaa-0000-4000-8000-000000000003", "prvsy", "Zed", True),
        }
        self.groups = {
            "grpaa": {
                "id": "grpaa",
                "uuid": "bbbbbbbb-0000-4000-8000-000000000001",
                "system": "exmpl",
                "name": "Group A",
                "members": ["abcde", "prvmb"],
            },
        }
        self.switches: dict[str, list[dict[str, Any]]] = {"exmpl": [], "prvsy": []}
        self.messages = {
            "123456789012345678": {
                "id": "123456789012345678",
                "system": "exmpl",
                "member": "abcde",
                "timestamp": "2024-01-01T00:00:00Z",
            }
        }

    # -- test controls ----------------------------------------------------------------
    def block(self, seconds: float, ip: str = "127.0.0.1") -> None:
        """Other traffic from this IP used the bucket up: every scope rejects until then."""
        now = time.monotonic()
        for scope in self.scopes:
            self.gcra.tat[f"{ip}:{scope}"] = now + seconds

    def upstream_arrivals(self, status: int | None = None) -> list[Arrival]:
        return [a for a in self.arrivals if status is None or a.status == status]

    def max_in_window(self, window: float = 1.0, scope: str | Collection[str] | None = None) -> int:
        """The largest number of arrivals in any window of `window` seconds (half-open),
        counting only those charged to `scope` (one name or several) when it is given."""
        scopes = {scope} if isinstance(scope, str) else scope
        return max_in_window(
            [a.at for a in self.arrivals if scopes is None or a.scope in scopes], window
        )

    # -- the server -------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def _rate_headers(
        self, limit: float, remaining: int, reset_after: float, scope: str
    ) -> dict[str, str]:
        reset = time.time() + reset_after
        return {
            "X-RateLimit-Limit": str(int(limit)),
            "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": str(int(reset * 1000) if self.reset_in_ms else math.ceil(reset)),
            "X-RateLimit-Scope": scope,
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        arrival = Arrival(
            time.monotonic(),
            request.method,
            request.raw_path,
            [(k, v) for k, v in request.headers.items()],
            body,
        )
        self.arrivals.append(arrival)
        response = await self._respond(request, arrival, body)
        if self.reset_every and len(self.arrivals) % self.reset_every == 0:
            _reset(request)
            return response  # written to nothing: the connection is gone
        arrival.status = response.status
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _respond(
        self, request: web.Request, arrival: Arrival, body: bytes
    ) -> web.StreamResponse:
        path = request.path
        # In PluralKit's order: CORS, then ignore_invalid_routes, then the rate limiter.
        if request.method == "OPTIONS":
            return web.Response(status=200)
        if path.startswith("/v1/"):
            return _error(410, "Unsupported API version", 0)
        if not is_known_route(path):
            return web.Response(status=404)
        if "User-Agent" not in request.headers:
            return web.Response(status=400)
        scope, bucket, rate = self._bucket(request)
        arrival.scope, arrival.bucket = scope, bucket
        allowed, remaining, retry_after, reset_after = self.gcra.check(
            bucket, rate, time.monotonic()
        )
        headers = self._rate_headers(rate, remaining, reset_after, scope)
        if not allowed:
            payload = {
                "message": "429: too many requests",
                "retry_after": int(retry_after * 1000),
                "scope": scope,
                "code": 0,
            }
            return web.Response(
                status=429,
                text=json.dumps(payload),
                content_type="application/json",
                headers=headers,
            )
        if self.delay:
            await asyncio.sleep(self.delay)
        if path in self.force_status:
            status, payload_bytes = self.force_status[path]
            forced = web.Response(
                status=status, body=payload_bytes, content_type="application/json", headers=headers
            )
            forced.headers.update(self.extra_headers.get(path, {}))
            return forced
        response = self._route(request.method, path, request, body)
        response.headers.update(headers)
        response.headers.update(self.extra_headers.get(path, {}))
        return response

    def _bucket(self, request: web.Request) -> tuple[str, str, float]:
        """The scope, bucket key and rate a rate-checked request is charged to."""
        base = self.scope_of(request.method, request.path)
        system = self.TOKENS.get(request.headers.get("Authorization", ""))
        if system is not None and self._owns(system, request.path):
            scope = "own_system_get" if request.method in {"GET", "HEAD"} else "own_system_update"
            # Its rate is the base scope's unless `scopes` names the own_system scope itself.
            return scope, f"{system}:{scope}", self.scopes.get(scope, self.scopes[base])
        ip = request.remote or "?"
        if self.key_header is not None:
            ip = request.headers.get(self.key_header, ip)
        return base, f"{ip}:{base}", self.scopes[base]

    def _owns(self, system: str, path: str) -> bool:
        """Whether `path` names `system` itself, or one of its members or groups."""
        parts = path.split("/")[2:]
        if len(parts) < 2:
            return False
        kind, ref = parts[0], _fold(parts[1])
        if kind == "systems":
            return ref == "@me" or ref in {system, self.systems[system]["uuid"]}
        entities = {"members": self.members, "groups": self.groups}.get(kind, {})
        owner = next((e["system"] for e in entities.values() if ref in {e["id"], e["uuid"]}), None)
        return owner == system

    def _owner(self, request: web.Request) -> str | None:
        token = request.headers.get("Authorization")
        if token in self.TOKENS:
            return self.TOKENS[token]
        return self.APP_TOKENS.get(request.headers.get("X-PluralKit-App", ""))

    def _route(self, method: str, path: str, request: web.Request, body: bytes) -> web.Response:
        parts = path.split("/")[2:]
        owner = self._owner(request)
        if parts[:1] == ["systems"] and len(parts) >= 2:
            return self._systems(method, parts, owner, body)
        if parts[:1] == ["members"] and len(parts) >= 2:
            return self._members(method, parts, owner, body)
        if parts[:1] == ["groups"] and len(parts) >= 2:
            return self._groups(method, parts, owner, body)
        if parts[:1] == ["messages"] and len(parts) == 2:
            message = self.messages.get(parts[1])
            return _json(message) if message else _error(404, "Message not found.", 20006)
        return _error(404, "Not found.", 0)

    def _systems(
        self, method: str, parts: list[str], owner: str | None, body: bytes
    ) -> web.Response:
        ref = owner if parts[1] == "@me" else _fold(parts[1])
        system = next((s for s in self.systems.values() if ref in {s["id"], s["uuid"]}), None)
        if system is None:
            return _error(404, "System not found.", 20001)
        sid = system["id"]
        is_owner = owner == sid
        rest = parts[2:]
        if not rest:
            if method == "PATCH":
                if not is_owner:
                    return _error(401, "Unauthorized to edit system", 0)
                system.update(json.loads(body or b"{}"))
            return _json(
                system
                if is_owner
                else {**system, "description": None}
                if system["privacy"]["member_list_privacy"] == "private"
                else system
            )
        if rest == ["members"]:
            if system["privacy"]["member_list_privacy"] == "private" and not is_owner:
                return _error(403, "Unauthorized to view member list.", 30001)
            return _json(
                [self._member_view(m, owner) for m in self.members.values() if m["system"] == sid]
            )
        if rest == ["fronters"]:
            switches = self.switches[sid]
            if not switches:
                return web.Response(status=204)
            return _json(switches[-1])
        if rest == ["switches"]:
            if method == "POST":
                if not is_owner:
                    return _error(403, "Unauthorized", 0)
                data = json.loads(body or b"{}")
                switch = {
                    "id": f"cccccccc-0000-4000-8000-{len(self.switches[sid]):012d}",
                    "timestamp": "2024-01-01T00:00:00Z",
                    "members": data.get("members", []),
                }
                self.switches[sid].append(switch)
                return _json(switch)
            return _json(list(reversed(self.switches[sid])))
        return _error(404, "Not found.", 0)

    def _member_view(self, member: dict[str, Any], owner: str | None) -> dict[str, Any]:
        if owner == member["system"] or member["privacy"]["description_privacy"] == "public":
            return copy.deepcopy(member)
        return {**copy.deepcopy(member), "description": None, "birthday": None, "privacy": None}

    def _members(
        self, method: str, parts: list[str], owner: str | None, body: bytes
    ) -> web.Response:
        ref = _fold(parts[1])
        member = next((m for m in self.members.values() if ref in {m["id"], m["uuid"]}), None)
        if member is None:
            return _error(404, "Member not found.", 20002)
        rest = parts[2:]
        if not rest:
            if method in {"PATCH", "DELETE"}:
                if owner != member["system"]:
                    return _error(401, "Unauthorized", 0)
                if method == "DELETE":
                    del self.members[member["id"]]
                    return web.Response(status=204)
                member.update(json.loads(body or b"{}"))
            return _json(self._member_view(member, owner))
        if rest == ["groups"]:
            return _json([g for g in self.groups.values() if member["id"] in g["members"]])
        return _error(404, "Not found.", 0)

    def _groups(
        self, method: str, parts: list[str], owner: str | None, body: bytes
    ) -> web.Response:
        group = self.groups.get(_fold(parts[1]))
        if group is None:
            return _error(404, "Group not found.", 20003)
        if not parts[2:] and method == "PATCH":
            if owner != group["system"]:
                return _error(401, "Unauthorized", 0)
            group.update(json.loads(body or b"{}"))
        if parts[2:] == ["members"]:
            return _json(
                [
                    self._member_view(self.members[m], owner)
                    for m in group["members"]
                    if m in self.members
                ]
            )
        return _json({k: v for k, v in group.items() if k != "members"})


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The largest number of instants in any half-open window of `window` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP reset (SO_LINGER 0), not an orderly close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _fold(ref: str) -> str:
    return ref.lower().replace("-", "") if len(ref) <= 7 else ref.lower()


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data), content_type="application/json")


def _error(status: int, message: str, code: int) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"message": message, "code": code}),
        content_type="application/json",
    )

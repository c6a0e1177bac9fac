"""PluralKit API v2 route table: path -> route template, reference folding."""

from __future__ import annotations

import re
from dataclasses import dataclass

UNKNOWN_ROUTE = "/v2/{unknown}"

# Each template segment is a literal or a placeholder. `{ref}` is the primary entity
# reference of the route; other placeholders name what they hold.
_TEMPLATES: tuple[str, ...] = (
    "/v2/systems/{ref}",
    "/v2/systems/{ref}/settings",
    "/v2/systems/{ref}/autoproxy",
    "/v2/systems/{ref}/guilds/{guild}",
    "/v2/systems/{ref}/members",
    "/v2/systems/{ref}/groups",
    "/v2/systems/{ref}/switches",
    "/v2/systems/{ref}/fronters",
    "/v2/systems/{ref}/switches/{switch}",
    "/v2/systems/{ref}/switches/{switch}/members",
    "/v2/members",
    "/v2/members/{ref}",
    "/v2/members/{ref}/groups",
    "/v2/members/{ref}/groups/{action}",
    "/v2/members/{ref}/guilds/{guild}",
    "/v2/groups",
    "/v2/groups/{ref}",
    "/v2/groups/{ref}/members",
    "/v2/groups/{ref}/members/{action}",
    "/v2/messages/{id}",
)

_ACTIONS = frozenset({"add", "remove", "overwrite"})
_SHORT_ID = re.compile(r"^[a-z]{5,6}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class Route:
    """A matched route: its template, the resource kind and the folded parameters."""

    template: str
    kind: str  # "systems" | "members" | "groups" | "messages" | "unknown"
    params: tuple[tuple[str, str], ...]
    path: str  # the canonical path, with references folded

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


def fold_ref(value: str) -> str:
    """Fold a PluralKit reference to its canonical form.

    PluralKit lower-cases short ids and strips dashes before looking them up, and compares
    UUIDs case-insensitively, so `ABC-DE`, `abcde` and `AbCdE` name the same member.
    Ids are ASCII: anything else is kept as sent, since Unicode lower-casing would fold a
    lookalike (the Kelvin sign) into the id it resembles and serve that id's answer for it.
    """
    if not value.isascii():
        return value
    lowered = value.lower()
    if _UUID.match(lowered):
        return lowered
    undashed = lowered.replace("-", "")
    if _SHORT_ID.match(undashed):
        return undashed
    return value


def _match(template: str, segments: list[str]) -> list[tuple[str, str]] | None:
    parts = template.split("/")[1:]
    if len(parts) != len(segments):
        return None
    params: list[tuple[str, str]] = []
    for part, segment in zip(parts, segments, strict=True):
        if part.startswith("{"):
            name = part[1:-1]
            if name == "action" and segment not in _ACTIONS:
                return None
            params.append((name, segment))
        elif part != segment:
            return None
    return params


def _fill(template: str, params: list[tuple[str, str]]) -> str:
    path = template
    for name, value in params:
        path = path.replace("{" + name + "}", value, 1)
    return path


def match_route(path: str) -> Route:
    """Match a validated path (already split-safe) against the route table."""
    segments = path.split("/")[1:]
    for template in _TEMPLATES:
        raw = _match(template, segments)
        if raw is None:
            continue
        params = [(name, value if name == "action" else fold_ref(value)) for name, value in raw]
        return Route(template, segments[1], tuple(params), _fill(template, params))
    return Route(UNKNOWN_ROUTE, "unknown", (), path)


def template_matches(pattern: str, template: str) -> bool:
    """Whether a configured route pattern names a template (`*` = any, names ignored)."""
    if pattern == "*":
        return True
    return _shape(pattern) == _shape(template)


def _shape(template: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", template.rstrip("/"))


def known_templates() -> tuple[str, ...]:
    return _TEMPLATES

"""Which cached paths a successful write makes wrong (every query of each is evicted)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from proxy.core.cachepolicy import GROUP_MEMBER_LISTS, MEMBER_GROUP_LISTS
from proxy.core.routes import Route, fold_ref

# Reads an anonymous cached JSON body by path, or None: the ids in cached bodies are
# how a write to a member finds its system and groups.
KnownBody = Callable[[str], Any]


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _ids(obj: Any) -> set[str]:
    if not isinstance(obj, dict):
        return set()
    return {fold_ref(str(obj[k])) for k in ("id", "uuid") if isinstance(obj.get(k), str)}


def _refs(values: Any) -> set[str]:
    if not isinstance(values, list):
        return set()
    out: set[str] = set()
    for value in values:
        if isinstance(value, str):
            out.add(fold_ref(value))
        else:
            out |= _ids(value)
    return out


def _system_aliases(refs: Iterable[str], known: KnownBody) -> set[str]:
    aliases = {r for r in refs if r and r != "@me"}
    for ref in list(aliases):
        aliases |= _ids(known(f"/v2/systems/{ref}"))
    return aliases


def system_paths(systems: set[str]) -> set[str]:
    suffixes = ("", "/settings", "/members", "/groups", "/fronters", "/switches")
    return {f"/v2/systems/{s}{suffix}" for s in systems for suffix in suffixes}


# A member's groups and a group's members are the two lists that link the kinds: writing
# one side makes the other side's list wrong too.
_LINKS = {"members": ("groups", "groups", "members"), "groups": ("members", "members", "groups")}


def _linked_paths(kind: str, refs: set[str], known: KnownBody) -> tuple[set[str], set[str]]:
    """Paths a write to members or groups `refs` makes wrong (under each id the known body
    gives, short id and UUID), and the systems they belong to."""
    own_list, other_kind, other_list = _LINKS[kind]
    paths: set[str] = set()
    systems: set[str] = set()
    for ref in refs:
        cached = known(f"/v2/{kind}/{ref}")
        if isinstance(cached, dict) and isinstance(cached.get("system"), str):
            systems.add(fold_ref(cached["system"]))
        for alias in {ref} | _ids(cached):
            paths |= {f"/v2/{kind}/{alias}", f"/v2/{kind}/{alias}/{own_list}"}
            for other in _refs(known(f"/v2/{kind}/{alias}/{own_list}")):
                paths.add(f"/v2/{other_kind}/{other}/{other_list}")
    return paths, systems


# What the objects in an answer are, by route: a member's or group's ids and system, a
# system's ids. A write whose answer has no body (a DELETE) finds them here even when no
# body of that member is cached.
_OBJECTS: dict[str, tuple[str, str | None]] = {  # template: (kind, key of a nested list)
    "/v2/systems/{ref}": ("systems", None),
    "/v2/members/{ref}": ("members", None),
    "/v2/groups/{ref}": ("groups", None),
    "/v2/systems/{ref}/members": ("members", None),
    "/v2/groups/{ref}/members": ("members", None),
    "/v2/systems/{ref}/groups": ("groups", None),
    "/v2/members/{ref}/groups": ("groups", None),
    "/v2/systems/{ref}/fronters": ("members", "members"),
}


@dataclass(frozen=True, slots=True)
class Owned:
    """One object seen in an answer: its kind, every id it answers to, its system."""

    kind: str
    ids: frozenset[str]
    system: str | None


def learns_from(template: str) -> bool:
    return template in _OBJECTS


def objects_in(template: str, body: Any) -> list[Owned]:
    """The members, groups or systems an answer on `template` describes."""
    shape = _OBJECTS.get(template)
    if shape is None:
        return []
    kind, nested = shape
    if nested is not None:
        body = body.get(nested) if isinstance(body, dict) else None
    items = body if isinstance(body, list) else [body]
    out = []
    for item in items:
        ids = _ids(item)
        if not ids:
            continue
        system = item.get("system")
        if kind == "systems":
            system = None
        elif not isinstance(system, str):
            continue
        out.append(Owned(kind, frozenset(ids), fold_ref(system) if system else None))
    return out


def paths_to_evict(
    route: Route,
    request_json: Any,
    response_json: Any,
    known: KnownBody,
    me_system: str | None = None,
) -> set[str]:
    """Every path whose cached answers a successful write through the proxy makes wrong."""
    ref = route.param("ref")
    systems: set[str] = set()
    paths: set[str] = set()
    body_system = response_json.get("system") if isinstance(response_json, dict) else None
    if isinstance(body_system, str):
        systems.add(fold_ref(body_system))
    if route.kind == "systems":
        # @me is known to be one system: the switch paths below are built under its id.
        systems.add(me_system if ref == "@me" and me_system else ref or "")
        if route.param("switch") is None and not route.template.endswith("/switches"):
            systems |= _ids(response_json)
        switch = route.param("switch")
        if switch:
            systems_for_switch = _system_aliases(systems, known)
            paths |= {f"/v2/systems/{s}/switches/{switch}" for s in systems_for_switch}
        members = _refs(response_json.get("members")) if isinstance(response_json, dict) else set()
        systems |= _linked_paths("members", members, known)[1]
    elif route.kind == "members":
        members = ({ref} if ref else set()) | _ids(response_json)
        member_paths, member_systems = _linked_paths("members", members, known)
        paths |= member_paths
        if ref:  # an existing member: which groups list it is not always known
            paths.add(GROUP_MEMBER_LISTS)
        systems |= member_systems
        if route.param("action"):
            groups = _refs(request_json)
            paths |= {p for g in groups for p in (f"/v2/groups/{g}", f"/v2/groups/{g}/members")}
    elif route.kind == "groups":
        groups = ({ref} if ref else set()) | _ids(response_json)
        group_paths, group_systems = _linked_paths("groups", groups, known)
        paths |= group_paths
        if ref:  # an existing group: which members list it is not always known
            paths.add(MEMBER_GROUP_LISTS)
        systems |= group_systems
        if route.param("action"):
            paths |= {f"/v2/members/{m}/groups" for m in _refs(request_json)}
    systems.discard("")
    if me_system:
        systems.discard("@me")
        systems.add(me_system)
    return paths | system_paths(_system_aliases(systems, known))

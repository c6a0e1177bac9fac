"""Which cached paths a successful write evicts: table-driven, no event loop."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.cachepolicy import GROUP_MEMBER_LISTS, MEMBER_GROUP_LISTS, cache_tag
from proxy.core.invalidation import Owned, objects_in, paths_to_evict, system_paths
from proxy.core.routes import match_route

SYS_UUID = "11111111-1111-4111-8111-111111111111"
MEMBER_UUID = "aaaaaaaa-0000-4000-8000-000000000001"
GROUP_UUID = "bbbbbbbb-0000-4000-8000-000000000001"
SWITCH = "cccccccc-0000-4000-8000-000000000000"

# What an anonymous cache may hold, by path: the bodies that let a write find more paths.
CACHED: dict[str, Any] = {
    "/v2/systems/exmpl": {"id": "exmpl", "uuid": SYS_UUID, "name": "Example"},
    "/v2/members/abcde": {"id": "abcde", "uuid": MEMBER_UUID, "system": "exmpl"},
    "/v2/members/prvmb": {"id": "prvmb", "system": "exmpl"},
    "/v2/members/abcde/groups": [{"id": "grpaa", "uuid": GROUP_UUID, "system": "exmpl"}],
    "/v2/groups/grpaa": {"id": "grpaa", "uuid": GROUP_UUID, "system": "exmpl"},
    "/v2/groups/grpaa/members": [{"id": "abcde", "system": "exmpl"}, {"id": "prvmb"}],
}


def nothing_known(path: str) -> Any:
    return None


def every_path_of(*systems: str) -> set[str]:
    """The six cached paths that hang off each of `systems`, spelled out."""
    return {
        path
        for s in systems
        for path in (
            f"/v2/systems/{s}",
            f"/v2/systems/{s}/settings",
            f"/v2/systems/{s}/members",
            f"/v2/systems/{s}/groups",
            f"/v2/systems/{s}/fronters",
            f"/v2/systems/{s}/switches",
        )
    }


def evict(
    path: str,
    request_json: Any = None,
    response_json: Any = None,
    known: dict[str, Any] | None = None,
    me_system: str | None = None,
) -> set[str]:
    lookup = nothing_known if known is None else known.get
    return paths_to_evict(match_route(path), request_json, response_json, lookup, me_system)


def test_system_paths_are_the_system_and_its_five_lists() -> None:
    """A system's evictable paths are itself, its settings and its five lists."""
    assert system_paths({"exmpl"}) == every_path_of("exmpl")
    assert len(system_paths({"exmpl", "other"})) == 12


SYSTEM_WRITES = [
    pytest.param(
        "/v2/systems/exmpl",
        {"id": "exmpl", "uuid": SYS_UUID},
        None,
        None,
        every_path_of("exmpl", SYS_UUID),
        id="patch-by-id-answer-names-uuid",
    ),
    pytest.param(
        f"/v2/systems/{SYS_UUID.upper()}",
        None,
        {f"/v2/systems/{SYS_UUID}": {"id": "exmpl", "uuid": SYS_UUID}},
        None,
        every_path_of("exmpl", SYS_UUID),
        id="patch-by-upper-uuid-cached-system-names-id",
    ),
    pytest.param(
        "/v2/systems/EXMPL",
        None,
        None,
        None,
        every_path_of("exmpl"),
        id="patch-folded-id-nothing-known",
    ),
    pytest.param(
        "/v2/systems/@me",
        {"id": "exmpl", "uuid": SYS_UUID},
        None,
        None,
        every_path_of("exmpl", SYS_UUID),
        id="patch-me-answer-names-system",
    ),
    pytest.param(
        "/v2/systems/@me",
        None,
        CACHED,
        "exmpl",
        every_path_of("exmpl", SYS_UUID),
        id="patch-me-resolved-by-me-system",
    ),
    pytest.param("/v2/systems/@me", None, CACHED, None, set(), id="patch-me-unresolved"),
    pytest.param(
        "/v2/systems/exmpl/settings",
        {"latch_timeout": 5},
        CACHED,
        None,
        every_path_of("exmpl", SYS_UUID),
        id="settings",
    ),
    pytest.param(
        "/v2/systems/@me/autoproxy",
        {"autoproxy_mode": "off"},
        None,
        "exmpl",
        every_path_of("exmpl"),
        id="autoproxy-me",
    ),
]


@pytest.mark.parametrize(("path", "response", "known", "me", "expected"), SYSTEM_WRITES)
def test_system_write_evicts_every_path_of_each_name_of_the_system(
    path: str, response: Any, known: dict[str, Any] | None, me: str | None, expected: set[str]
) -> None:
    """A system write evicts the system's paths under its id and its UUID, whichever the
    write, its answer, the cache or the credential's known @me names."""
    assert evict(path, {"name": "x"}, response, known, me) == expected


def test_new_switch_evicts_its_system_and_the_systems_of_its_members() -> None:
    """A new switch evicts its system's lists, and through a cached member the member's
    system; the switch's own id is not taken for a system."""
    response = {"id": SWITCH, "members": ["ABC-DE", {"id": "zyxwv"}, 7]}
    known = {**CACHED, "/v2/members/zyxwv": {"id": "zyxwv", "system": "prvsy"}}
    assert evict("/v2/systems/exmpl/switches", None, response, known) == every_path_of(
        "exmpl", SYS_UUID, "prvsy"
    )


def test_new_switch_through_me_evicts_the_resolved_system() -> None:
    """POST /systems/@me/switches evicts the system the credential's @me is known to be."""
    assert evict(
        "/v2/systems/@me/switches", {"members": []}, {"id": SWITCH, "members": []}, None, "exmpl"
    ) == every_path_of("exmpl")


def test_new_switch_through_unresolved_me_evicts_only_via_its_members() -> None:
    """With @me unknown, a new switch still finds its system through a cached member."""
    response = {"id": SWITCH, "members": ["abcde"]}
    assert evict("/v2/systems/@me/switches", None, response, CACHED) == every_path_of(
        "exmpl", SYS_UUID
    )


@pytest.mark.parametrize(
    ("path", "response"),
    [
        (f"/v2/systems/exmpl/switches/{SWITCH.upper()}", {"id": SWITCH, "members": []}),
        (f"/v2/systems/exmpl/switches/{SWITCH}", None),
        (f"/v2/systems/exmpl/switches/{SWITCH}/members", {"id": SWITCH, "members": []}),
    ],
    ids=["patch", "delete", "patch-members"],
)
def test_switch_write_evicts_that_switch_under_each_system_name(path: str, response: Any) -> None:
    """A write to one switch evicts that switch under its system's id and UUID, and the
    system's lists; the switch's id is not taken for a system."""
    switch_paths = {
        f"/v2/systems/exmpl/switches/{SWITCH}",
        f"/v2/systems/{SYS_UUID}/switches/{SWITCH}",
    }
    assert evict(path, None, response, CACHED) == switch_paths | every_path_of("exmpl", SYS_UUID)


def test_switch_write_through_me_evicts_that_switch_of_the_resolved_system() -> None:
    """PATCH /systems/@me/switches/{id} evicts that switch under the system @me is known to be."""
    evicted = evict(f"/v2/systems/@me/switches/{SWITCH}", None, None, CACHED, "exmpl")
    assert f"/v2/systems/exmpl/switches/{SWITCH}" in evicted


# An existing member's write evicts every group's member list (one tag: see cache_tag).
MEMBER_OWN = {"/v2/members/abcde", "/v2/members/abcde/groups", GROUP_MEMBER_LISTS}
MEMBER_UUID_OWN = {f"/v2/members/{MEMBER_UUID}", f"/v2/members/{MEMBER_UUID}/groups"}


@pytest.mark.parametrize(
    ("path", "response", "known", "expected"),
    [
        pytest.param(
            "/v2/members/ABC-DE",
            None,
            None,
            MEMBER_OWN,
            id="nothing-known",
        ),
        pytest.param(
            "/v2/members/abcde",
            {"id": "abcde", "uuid": MEMBER_UUID, "system": "EXMPL"},
            None,
            MEMBER_OWN | MEMBER_UUID_OWN | every_path_of("exmpl"),
            id="answer-names-uuid-and-system",
        ),
        pytest.param(
            "/v2/members/abcde",
            None,
            CACHED,
            MEMBER_OWN
            | MEMBER_UUID_OWN  # the cached member gives its UUID
            | {f"/v2/groups/{GROUP_UUID}/members", "/v2/groups/grpaa/members"}
            # the cached member names its system, the cached group list its groups
            | every_path_of("exmpl", SYS_UUID),
            id="cached-member-and-groups",
        ),
        pytest.param(
            "/v2/members/prvmb",
            None,
            CACHED,
            {"/v2/members/prvmb", "/v2/members/prvmb/groups", GROUP_MEMBER_LISTS}
            | every_path_of("exmpl", SYS_UUID),
            id="delete-found-through-cached-member",
        ),
        pytest.param(
            "/v2/members",
            {"id": "newmb", "system": "exmpl"},
            None,
            {"/v2/members/newmb", "/v2/members/newmb/groups"} | every_path_of("exmpl"),
            id="create",
        ),
        pytest.param("/v2/members", None, CACHED, set(), id="create-without-answer"),
    ],
)
def test_member_write_evicts_member_its_lists_and_linked_group_lists(
    path: str, response: Any, known: dict[str, Any] | None, expected: set[str]
) -> None:
    """A member write evicts the member and its group list under every id, its system's
    paths, and the member list of each group the cache says it is in, never the group."""
    assert evict(path, {"name": "x"}, response, known) == expected


@pytest.mark.parametrize("action", ["add", "remove", "overwrite"])
def test_member_group_action_evicts_the_named_groups(action: str) -> None:
    """A member's group add, remove or overwrite also evicts each named group and its
    member list."""
    request = ["GRP-AA", {"id": "grpbb", "uuid": GROUP_UUID}, 3]
    expected = MEMBER_OWN | {
        "/v2/groups/grpaa",
        "/v2/groups/grpaa/members",
        "/v2/groups/grpbb",
        "/v2/groups/grpbb/members",
        f"/v2/groups/{GROUP_UUID}",
        f"/v2/groups/{GROUP_UUID}/members",
    }
    assert evict(f"/v2/members/abcde/groups/{action}", request) == expected


def test_member_group_action_with_garbled_body_evicts_only_the_member() -> None:
    """A group action whose body is not a list evicts only what the member alone reaches."""
    assert evict("/v2/members/abcde/groups/add", {"groups": ["grpaa"]}) == MEMBER_OWN


GROUP_OWN = {"/v2/groups/grpaa", "/v2/groups/grpaa/members", MEMBER_GROUP_LISTS}


@pytest.mark.parametrize(
    ("path", "request_json", "response", "known", "expected"),
    [
        pytest.param("/v2/groups/GRP-AA", {"name": "x"}, None, None, GROUP_OWN, id="nothing-known"),
        pytest.param(
            "/v2/groups/grpaa",
            {"name": "x"},
            {"id": "grpaa", "uuid": GROUP_UUID, "system": "exmpl"},
            None,
            GROUP_OWN
            | {f"/v2/groups/{GROUP_UUID}", f"/v2/groups/{GROUP_UUID}/members"}
            | every_path_of("exmpl"),
            id="answer-names-uuid-and-system",
        ),
        pytest.param(
            "/v2/groups/grpaa",
            None,
            None,
            CACHED,
            GROUP_OWN
            | {f"/v2/groups/{GROUP_UUID}", f"/v2/groups/{GROUP_UUID}/members"}
            | {"/v2/members/abcde/groups", "/v2/members/prvmb/groups"}
            | every_path_of("exmpl", SYS_UUID),
            id="cached-group-and-member-list",
        ),
        pytest.param(
            "/v2/groups/grpaa/members/add",
            ["ZYX-WV", {"uuid": MEMBER_UUID}],
            None,
            None,
            GROUP_OWN | {"/v2/members/zyxwv/groups", f"/v2/members/{MEMBER_UUID}/groups"},
            id="add-members",
        ),
        pytest.param(
            "/v2/groups/grpaa/members/overwrite",
            ["zyxwv"],
            None,
            CACHED,
            GROUP_OWN
            | {f"/v2/groups/{GROUP_UUID}", f"/v2/groups/{GROUP_UUID}/members"}
            | {
                "/v2/members/zyxwv/groups",  # named in the write
                "/v2/members/abcde/groups",  # members before the write, from the cache
                "/v2/members/prvmb/groups",
            }
            | every_path_of("exmpl", SYS_UUID),
            id="overwrite-members",
        ),
        pytest.param(
            "/v2/groups",
            {"name": "New"},
            {"id": "grpnw", "system": "exmpl"},
            None,
            {"/v2/groups/grpnw", "/v2/groups/grpnw/members"} | every_path_of("exmpl"),
            id="create",
        ),
    ],
)
def test_group_write_evicts_group_its_list_and_linked_member_lists(
    path: str, request_json: Any, response: Any, known: dict[str, Any] | None, expected: set[str]
) -> None:
    """A group write evicts the group and its member list under every id, its system's
    paths, and the group list of each member it names or the cache says it holds."""
    assert evict(path, request_json, response, known) == expected


def test_write_to_a_route_of_no_kind_evicts_only_the_system_its_answer_names() -> None:
    """A write outside systems, members and groups evicts only a system its answer names."""
    assert evict("/v2/messages/123", None, {"system": "exmpl"}) == every_path_of("exmpl")
    assert evict("/v2/messages/123", None, {"id": "x"}) == set()


@pytest.mark.parametrize(
    ("path", "tagged_as"),
    [
        ("/v2/groups/grpaa/members", GROUP_MEMBER_LISTS),
        ("/v2/groups/grpbb/members", GROUP_MEMBER_LISTS),
        (GROUP_MEMBER_LISTS, GROUP_MEMBER_LISTS),
        ("/v2/members/abcde/groups", MEMBER_GROUP_LISTS),
        ("/v2/groups/grpaa", "/v2/groups/grpaa"),
        ("/v2/members/abcde", "/v2/members/abcde"),
        ("/v2/systems/exmpl/members", "/v2/systems/exmpl/members"),
        ("/v2/groups/grpaa/members/add", "/v2/groups/grpaa/members/add"),
    ],
)
def test_the_lists_linking_members_and_groups_share_one_tag_per_route(
    path: str, tagged_as: str
) -> None:
    """Every group's member list is evicted by one tag, every member's group list by one:
    a write to the other kind evicts them all, whichever are cached."""
    assert cache_tag("https://api.pluralkit.me", path) == f"https://api.pluralkit.me{tagged_as}"


def test_a_member_known_only_by_uuid_is_evicted_under_its_short_id_too() -> None:
    """DELETE by UUID (no answer body): the known body (cached, or learned from a list the
    member was in) gives the short id, under which it may be cached."""
    known = {f"/v2/members/{MEMBER_UUID}": {"id": "abcde", "uuid": MEMBER_UUID, "system": "exmpl"}}
    evicted = evict(f"/v2/members/{MEMBER_UUID}", None, None, known)
    assert {"/v2/members/abcde", "/v2/members/abcde/groups"} <= evicted
    assert every_path_of("exmpl") <= evicted


@pytest.mark.parametrize(
    ("template", "body", "expected"),
    [
        (
            "/v2/systems/{ref}/members",
            [
                {"id": "ABCDE", "uuid": MEMBER_UUID.upper(), "system": "exmpl"},
                {"id": "nosys"},
                "garbage",
            ],
            [Owned("members", frozenset({"abcde", MEMBER_UUID}), "exmpl")],
        ),
        (
            "/v2/systems/{ref}/fronters",
            {"members": [{"id": "abcde", "system": "EXMPL"}]},
            [Owned("members", frozenset({"abcde"}), "exmpl")],
        ),
        (
            "/v2/systems/{ref}",
            {"id": "exmpl", "uuid": SYS_UUID},
            [Owned("systems", frozenset({"exmpl", SYS_UUID}), None)],
        ),
        (
            "/v2/members/{ref}/groups",
            [{"id": "grpaa", "uuid": GROUP_UUID, "system": "exmpl"}],
            [Owned("groups", frozenset({"grpaa", GROUP_UUID}), "exmpl")],
        ),
        ("/v2/messages/{id}", {"id": "1", "system": {"id": "exmpl"}}, []),
        ("/v2/members/{ref}", None, []),
    ],
)
def test_objects_in_an_answer(template: str, body: Any, expected: list[Owned]) -> None:
    """The members, groups and systems an answer describes, ids folded."""
    assert objects_in(template, body) == expected

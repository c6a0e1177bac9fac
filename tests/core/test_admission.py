"""Admission and routing rules, table-driven, no event loop."""

from __future__ import annotations

import pytest

from proxy.core.admission import admit
from proxy.core.errors import BadRequest, Gone, MethodNotAllowed, NotFound
from proxy.core.routes import fold_ref, match_route


@pytest.mark.parametrize(
    ("target", "path_and_query", "template"),
    [
        ("/v2/members/ABC-DE", "/v2/members/abcde", "/v2/members/{ref}"),
        ("/v2/members/abcde", "/v2/members/abcde", "/v2/members/{ref}"),
        ("/v2/systems/%40me", "/v2/systems/@me", "/v2/systems/{ref}"),
        (
            "/v2/systems/EXMPL/switches?limit=5&before=x",
            "/v2/systems/exmpl/switches?before=x&limit=5",
            "/v2/systems/{ref}/switches",
        ),
        (
            "/v2/groups/AAAAAAAA-0000-4000-8000-000000000001/members",
            "/v2/groups/aaaaaaaa-0000-4000-8000-000000000001/members",
            "/v2/groups/{ref}/members",
        ),
        ("/v2/messages/123456789012345678", "/v2/messages/123456789012345678", "/v2/messages/{id}"),
        (
            "/v2/members/abcde/groups/add",
            "/v2/members/abcde/groups/add",
            "/v2/members/{ref}/groups/{action}",
        ),
        ("/v2/systems/123456789012345678", "/v2/systems/123456789012345678", "/v2/systems/{ref}"),
        ("/v2/whatever/else", "/v2/whatever/else", "/v2/{unknown}"),
    ],
)
def test_admitted_targets_are_canonical(target: str, path_and_query: str, template: str) -> None:
    """Admitted paths fold ids and sort queries; that canonical form is what is forwarded."""
    admitted = admit("GET", target)
    assert admitted.path_and_query == path_and_query
    assert admitted.route.template == template


@pytest.mark.parametrize(
    ("method", "target", "error"),
    [
        ("GET", "/v2/../x", BadRequest),
        ("GET", "/v2/%2e%2e/x", BadRequest),
        ("GET", "/v2/%2E./x", BadRequest),
        ("GET", "/v2/members/a%2fb", BadRequest),
        ("GET", "/v2/members/a%5Cb", BadRequest),
        ("GET", "/v2/members/a\\b", BadRequest),
        ("GET", "/v2/members/a%zz", BadRequest),
        ("GET", "/v2//x", BadRequest),
        ("GET", "//evil/v2/x", BadRequest),
        ("GET", "http://evil/v2/x", BadRequest),
        ("GET", "/v2/x#frag", BadRequest),
        ("GET", "/v2/x?a=%00", BadRequest),
        ("GET", "/v2/x?a=<script>", BadRequest),
        ("TRACE", "/v2/x", MethodNotAllowed),
        ("CONNECT", "evil:443", MethodNotAllowed),
        ("GET", "/", NotFound),
        ("GET", "/v3/x", NotFound),
        ("GET", "/v1/s/x", Gone),
    ],
)
def test_refused_targets(method: str, target: str, error: type[Exception]) -> None:
    """Every unsafe or foreign target is refused with its own error."""
    with pytest.raises(error):
        admit(method, target)


@pytest.mark.parametrize(
    ("ref", "folded"),
    [
        ("ABCDE", "abcde"),
        ("abc-de", "abcde"),
        ("AbC-dEf", "abcdef"),
        ("@me", "@me"),
        ("123456789", "123456789"),
        ("ABCDEFGH", "ABCDEFGH"),
        ("AAAAAAAA-0000-4000-8000-000000000001", "aaaaaaaa-0000-4000-8000-000000000001"),
    ],
)
def test_fold_ref(ref: str, folded: str) -> None:
    """Short ids fold case and dashes, UUIDs fold case, anything else is left alone."""
    assert fold_ref(ref) == folded


def test_unknown_action_is_not_a_template() -> None:
    """Only add/remove/overwrite are actions; anything else is an unknown route."""
    assert match_route("/v2/members/abcde/groups/steal").template == "/v2/{unknown}"

"""Whether an upstream answer is stored, for how long, and why not: table-driven, no loop."""

from __future__ import annotations

import json

import pytest

from proxy.core.cachepolicy import StoreDecision, store_decision

ROUTE_TTL = 30.0
NEGATIVE_TTL = 10.0
Headers = list[tuple[str, str]]


def error_body(code: object) -> bytes:
    return json.dumps({"message": "Unauthorized to view member list.", "code": code}).encode()


def decide(
    status: int,
    headers: Headers | None = None,
    body: bytes = b"",
    route_ttl: float = ROUTE_TTL,
    negative_ttl: float = NEGATIVE_TTL,
) -> StoreDecision:
    return store_decision(status, headers or [], body, route_ttl, negative_ttl)


def stored(ttl: float) -> StoreDecision:
    return StoreDecision(True, ttl, "stored")


def skipped(reason: str) -> StoreDecision:
    return StoreDecision(False, 0.0, reason)


@pytest.mark.parametrize("status", [200, 204])
def test_success_is_stored_for_the_route_ttl(status: int) -> None:
    """A 200 or 204 with no caching headers is stored for the route's TTL."""
    assert decide(status, body=b'{"id": "abcde"}') == stored(ROUTE_TTL)


def test_not_found_is_stored_for_the_negative_ttl() -> None:
    """A 404 is stored, but only for the shorter negative TTL."""
    assert decide(404, body=error_body(20002)) == stored(NEGATIVE_TTL)


@pytest.mark.parametrize("code", [30001, 30002, 30003, 30004, 30005])
def test_privacy_403_is_stored_for_the_negative_ttl(code: int) -> None:
    """A 403 with one of PluralKit's privacy codes 30001-30005 is stored like a 404."""
    assert decide(403, body=error_body(code)) == stored(NEGATIVE_TTL)


@pytest.mark.parametrize(
    "body",
    [
        error_body(0),
        error_body(30000),
        error_body(30006),
        error_body(20001),
        error_body("30001"),
        error_body(None),
        b'[{"code": 30001}]',
        b"not json",
        b"\xff\xfe",
        b"",
    ],
    ids=[
        "code-0",
        "code-30000",
        "code-30006",
        "code-20001",
        "code-as-string",
        "code-null",
        "json-list",
        "garbled",
        "not-utf8",
        "empty",
    ],
)
def test_other_403_is_not_stored(body: bytes) -> None:
    """A 403 whose body is not a privacy code from 30001 to 30005 is never stored."""
    assert decide(403, body=body) == skipped("status")


@pytest.mark.parametrize("status", [201, 206, 301, 302, 304, 400, 401, 410, 429, 500, 502, 503])
def test_other_statuses_are_not_stored(status: int) -> None:
    """Any status other than 200, 204, 404 and a privacy 403 is never stored."""
    assert decide(status, body=error_body(30001)) == skipped("status")


@pytest.mark.parametrize(
    ("route_ttl", "negative_ttl", "status", "expected"),
    [
        (5.0, 10.0, 404, stored(5.0)),
        (5.0, 10.0, 403, stored(5.0)),
        (60.0, 10.0, 404, stored(10.0)),
    ],
)
def test_negative_ttl_never_exceeds_the_route_ttl(
    route_ttl: float, negative_ttl: float, status: int, expected: StoreDecision
) -> None:
    """A negative answer is kept for the shorter of the route TTL and the negative TTL."""
    body = error_body(30001 if status == 403 else 20002)
    assert decide(status, body=body, route_ttl=route_ttl, negative_ttl=negative_ttl) == expected


@pytest.mark.parametrize(
    ("status", "route_ttl", "negative_ttl"),
    [(200, 0.0, 10.0), (204, 0.0, 10.0), (404, 30.0, 0.0), (404, 0.0, 10.0), (200, -1.0, 10.0)],
)
def test_zero_ttl_is_not_stored(status: int, route_ttl: float, negative_ttl: float) -> None:
    """A TTL of zero (or less) for the answer's kind means it is not stored."""
    assert decide(status, route_ttl=route_ttl, negative_ttl=negative_ttl) == skipped("ttl_zero")


@pytest.mark.parametrize(
    "headers",
    [
        [("Set-Cookie", "session=1")],
        [("set-cookie", "")],
        [("SET-COOKIE", "a=b"), ("Content-Type", "application/json")],
    ],
)
def test_set_cookie_is_never_stored(headers: Headers) -> None:
    """An answer that sets a cookie is never stored, whatever the header's case or value."""
    assert decide(200, headers) == skipped("set_cookie")


def test_set_cookie_on_a_negative_answer_is_not_stored() -> None:
    """Set-Cookie stops a 404 from being stored too."""
    assert decide(404, [("Set-Cookie", "a=b")]) == skipped("set_cookie")


@pytest.mark.parametrize(
    "vary",
    [
        "Accept-Encoding",
        "accept-encoding",
        " Accept-Encoding ,",
        "Accept-Encoding, accept-encoding",
    ],
)
def test_vary_on_accept_encoding_only_is_stored(vary: str) -> None:
    """Vary naming only Accept-Encoding is stored: encodings are already part of the key."""
    assert decide(200, [("Vary", vary)]) == stored(ROUTE_TTL)


@pytest.mark.parametrize(
    "headers",
    [
        [("Vary", "Authorization")],
        [("Vary", "*")],
        [("vary", "Accept-Encoding, Origin")],
        [("Vary", "Accept-Encoding"), ("Vary", "Cookie")],
    ],
)
def test_vary_on_anything_else_is_not_stored(headers: Headers) -> None:
    """Vary naming any field besides Accept-Encoding, in any Vary header, is not stored."""
    assert decide(200, headers) == skipped("vary")


def test_empty_vary_is_stored() -> None:
    """An empty Vary names no field and does not stop storing."""
    assert decide(200, [("Vary", "")]) == stored(ROUTE_TTL)


@pytest.mark.parametrize(
    "value",
    [
        "no-store",
        "private",
        "no-cache",
        "No-Store",
        "PRIVATE",
        'private="Set-Cookie"',
        "max-age=60, no-cache",
        'no-cache="Authorization", max-age=60',
        "public, no-store",
    ],
)
def test_cache_control_forbidding_storage_wins(value: str) -> None:
    """no-store, private or no-cache in Cache-Control, in any case or form, means no store."""
    assert decide(200, [("Cache-Control", value)]) == skipped("cache_control")


@pytest.mark.parametrize(
    ("value", "ttl"),
    [
        ("max-age=60", 60.0),
        ("MAX-AGE=60", 60.0),
        ('max-age="60"', 60.0),
        ("max-age = 7", 7.0),
        ("public, max-age=120", 120.0),
        ("s-maxage=5", 5.0),
        ("max-age=60, s-maxage=5", 5.0),
        ("s-maxage=5, max-age=60", 5.0),
        ("public", ROUTE_TTL),
        ("must-revalidate", ROUTE_TTL),
        (",,", ROUTE_TTL),
        ("=5", ROUTE_TTL),
    ],
)
def test_cache_control_age_replaces_the_route_ttl(value: str, ttl: float) -> None:
    """s-maxage, else max-age, replaces the configured TTL; other directives change nothing."""
    assert decide(200, [("cache-control", value)]) == stored(ttl)


def test_cache_control_age_replaces_the_negative_ttl() -> None:
    """On a 404 the origin's max-age wins over the negative TTL too, longer or not."""
    assert decide(404, [("Cache-Control", "max-age=120")]) == stored(120.0)


@pytest.mark.parametrize("value", ["max-age=0", "s-maxage=0, max-age=60", "max-age=-5"])
def test_cache_control_age_of_zero_is_not_stored(value: str) -> None:
    """A max-age or s-maxage of zero or below means the answer is not stored."""
    assert decide(200, [("Cache-Control", value)]) == skipped("ttl_zero")


@pytest.mark.parametrize(
    "value",
    ["max-age=soon", "max-age=1.5", "max-age", "max-age=", "s-maxage=x, max-age=60"],
)
def test_garbled_cache_control_age_is_not_stored(value: str) -> None:
    """A max-age or s-maxage that is not an integer is not trusted: the answer is not stored."""
    assert decide(200, [("Cache-Control", value)]) == skipped("cache_control")


def test_later_cache_control_header_sets_the_age() -> None:
    """With two Cache-Control headers, each is read in order and the last age given counts."""
    headers = [("Cache-Control", "max-age=10"), ("Cache-Control", "max-age=20")]
    assert decide(200, headers) == stored(20.0)


def test_status_is_judged_before_headers() -> None:
    """A status that is never stored reports `status`, whatever its headers say."""
    headers = [("Set-Cookie", "a=b"), ("Vary", "*"), ("Cache-Control", "no-store")]
    assert decide(500, headers) == skipped("status")


def test_set_cookie_is_judged_before_vary_and_cache_control() -> None:
    """With Set-Cookie, Vary and no-store all present the reason given is `set_cookie`."""
    headers = [("Cache-Control", "no-store"), ("Vary", "*"), ("Set-Cookie", "a=b")]
    assert decide(200, headers) == skipped("set_cookie")


def test_vary_is_judged_before_cache_control() -> None:
    """With a disqualifying Vary and no-store both present the reason given is `vary`."""
    headers = [("Cache-Control", "no-store"), ("Vary", "Cookie")]
    assert decide(200, headers) == skipped("vary")

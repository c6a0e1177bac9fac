"""Header rules: credential detection, forwarding filter, control header parsing."""

from __future__ import annotations

import pytest

from proxy.core.headers import (
    cache_encoding_class,
    forward_request_headers,
    has_credential,
    parse_control,
    response_headers,
    writable,
)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("Authorization", "x")], True),
        ([("authorization", "")], True),
        ([("X-PLURALKIT-APP", "y")], True),
        ([("x-pluralkit-app", "")], True),
        ([("User-Agent", "a"), ("Accept", "*/*")], False),
    ],
)
def test_has_credential_any_case_any_value(headers: list[tuple[str, str]], expected: bool) -> None:
    """A credential header counts in any case and with any value, even empty."""
    assert has_credential(headers) is expected


def test_forward_drops_hop_by_hop_and_connection_named() -> None:
    """Hop-by-hop, Connection-named, control and internal headers never go upstream."""
    out = forward_request_headers(
        [
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("X-PKProxy-Key", "k"),
            ("X-PluralKit-SystemId", "s"),
            ("Authorization", " Tok "),
            ("Via", "1.0 edge"),
        ],
        "ua/1",
        "1.1 pkproxy",
    )
    assert out == [
        ("Authorization", " Tok "),
        ("User-Agent", "ua/1"),
        ("Via", "1.0 edge, 1.1 pkproxy"),
    ]


def test_response_headers_replace_rate_headers() -> None:
    """Upstream's X-RateLimit-* are dropped (the proxy sends its own), others pass."""
    out = response_headers(
        [
            ("X-RateLimit-Limit", "10"),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        "1.1 pkproxy",
    )
    assert out == [("Content-Type", "application/json"), ("Via", "1.1 pkproxy")]


@pytest.mark.parametrize(
    ("value", "klass"),
    [
        (None, "identity"),
        ("gzip, deflate", "gzip"),
        ("br", "identity"),
        ("gzip;q=0", "identity"),
        ("*", "gzip"),
        ("deflate, GZIP;q=0.5", "gzip"),
    ],
)
def test_cache_encoding_class(value: str | None, klass: str) -> None:
    """Accept-Encoding folds to gzip or identity for cacheable requests."""
    assert cache_encoding_class(value) == klass


def test_parse_control_rejects_garbage() -> None:
    """Malformed control headers are a clear 400, not silently ignored."""
    assert parse_control({"X-PKProxy-Max-Wait": "250"}).max_wait_ms == 250
    with pytest.raises(ValueError):
        parse_control({"X-PKProxy-Max-Wait": "-1"})
    with pytest.raises(ValueError):
        parse_control({"X-PKProxy-Priority": "urgent"})


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("Content-Type", "application/json; charset=utf-8", True),
        ("X-Odd", "caf\u00e9 \t tabs", True),
        ("X-A", "x\r\nSet-Cookie: pwned=1", False),
        ("X-A", "x\nSet-Cookie: pwned=1", False),
        ("X-A", "x\rY", False),
        ("X-A", "nul\x00", False),
        ("Bad Name", "x", False),
        ("X-A:", "x", False),
        ("", "x", False),
        ("X-A\r\nSet-Cookie", "x", False),
    ],
)
def test_writable_headers_cannot_split_an_answer(name: str, value: str, expected: bool) -> None:
    """A stored header is written as it is only with a token name and no CR, LF or NUL."""
    assert writable(name, value) is expected

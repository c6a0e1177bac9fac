"""Header rules: credentials, what is forwarded upstream, what is passed back."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CREDENTIAL_HEADERS = frozenset({"authorization", "x-pluralkit-app"})
CONTROL_PREFIX = "x-pkproxy-"
# RFC 9110 section 7.6.1 hop-by-hop fields, plus the legacy ones proxies also drop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# PluralKit's edge sets these; a client must never be able to.
PLURALKIT_INTERNAL = frozenset(
    {"x-pluralkit-client-ip", "x-pluralkit-internalauth", "x-pluralkit-systemid"}
)
# Recomputed or owned by the proxy; identifying headers of the client are not sent on.
_REQUEST_DROP = frozenset(
    {
        "host",
        "content-length",
        "expect",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    }
)
_RESPONSE_DROP = frozenset({"content-length", "date", "server"})
RATE_HEADERS = frozenset(
    {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-ratelimit-scope"}
)

Headers = Iterable[tuple[str, str]]
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_IN_VALUE = re.compile(r"[\r\n\x00]")


def writable(name: str, value: str) -> bool:
    """Whether a header can be written as it is: a token name (RFC 9110 section 5.1) and a
    value without CR, LF or NUL, which could split the answer."""
    return _TOKEN.fullmatch(name) is not None and _UNSAFE_IN_VALUE.search(value) is None


@dataclass(frozen=True, slots=True)
class Control:
    """The proxy's own request control headers, parsed."""

    max_wait_ms: int | None
    priority: str | None


def has_credential(headers: Headers) -> bool:
    """Whether any credential header is present, in any case, with any value, even empty."""
    return any(name.lower() in CREDENTIAL_HEADERS for name, _ in headers)


def _connection_tokens(headers: Headers) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(","))
    return tokens


def _dropped_request_header(lowered: str, named: set[str]) -> bool:
    return (
        lowered in HOP_BY_HOP
        or lowered in named
        or lowered in _REQUEST_DROP
        or lowered in PLURALKIT_INTERNAL
        or lowered.startswith(CONTROL_PREFIX)
    )


def forward_request_headers(
    headers: Headers, user_agent: str, via: str, accept_encoding: str | None = None
) -> list[tuple[str, str]]:
    """The headers sent upstream: credentials byte for byte, the rest filtered."""
    items = list(headers)
    named = _connection_tokens(items)
    out: list[tuple[str, str]] = []
    has_agent = False
    vias: list[str] = []
    for name, value in items:
        lowered = name.lower()
        if _dropped_request_header(lowered, named):
            continue
        if lowered == "via":
            vias.append(value)
            continue
        if lowered == "accept-encoding" and accept_encoding is not None:
            continue
        if lowered == "user-agent":
            if not value.strip():
                continue
            has_agent = True
        out.append((name, value))
    if not has_agent:
        out.append(("User-Agent", user_agent))
    if accept_encoding is not None:
        out.append(("Accept-Encoding", accept_encoding))
    if via is not None:
        out.append(("Via", ", ".join([*vias, via])))
    return out


def response_headers(headers: Headers, via: str | None) -> list[tuple[str, str]]:
    """The upstream response headers passed back: hop-by-hop and upstream rate headers go.
    `via` is appended to upstream's Via; None drops Via (a stored entry gets its own at
    every answer)."""
    items = list(headers)
    named = _connection_tokens(items)
    out: list[tuple[str, str]] = []
    vias: list[str] = []
    for name, value in items:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in named or lowered in _RESPONSE_DROP:
            continue
        if lowered in RATE_HEADERS:
            continue
        if lowered == "via":
            vias.append(value)
            continue
        out.append((name, value))
    if via is not None:
        out.append(("Via", ", ".join([*vias, via])))
    return out


def cache_encoding_class(accept_encoding: str | None) -> str:
    """The one Accept-Encoding sent for a cacheable request: `gzip` or `identity`.

    Folding every client's header to two values keeps entries shared between clients while
    never serving a compressed body to a client that did not ask for one.
    """
    if accept_encoding is None:
        return "identity"
    for token in accept_encoding.split(","):
        coding, _, params = token.strip().lower().partition(";")
        if coding.strip() in {"gzip", "*"} and params.replace(" ", "") not in {"q=0", "q=0.0"}:
            return "gzip"
    return "identity"


def parse_control(headers: Mapping[str, str]) -> Control:
    """Parse the X-PKProxy-* control headers; raises ValueError with a message if malformed."""
    raw_wait = headers.get("X-PKProxy-Max-Wait")
    max_wait: int | None = None
    if raw_wait is not None:
        if not raw_wait.strip().isdigit():
            raise ValueError("X-PKProxy-Max-Wait must be a whole number of milliseconds")
        max_wait = int(raw_wait.strip())
    priority = headers.get("X-PKProxy-Priority")
    if priority is not None:
        priority = priority.strip().lower()
        if priority not in {"interactive", "normal", "background"}:
            raise ValueError("X-PKProxy-Priority must be interactive, normal or background")
    return Control(max_wait, priority)


def header_bytes(headers: Iterable[tuple[str, str]] | Iterable[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + len(value) + 4 for name, value in headers)

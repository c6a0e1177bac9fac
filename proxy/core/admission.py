"""Admission: which requests may be forwarded, and the exact path and query that will be."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote

from proxy.core.errors import (
    BadRequest,
    Gone,
    MethodNotAllowed,
    NotFound,
)
from proxy.core.routes import Route, match_route

FORWARDED_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "PUT", "DELETE"})

# Characters that may appear in a path segment after decoding: PluralKit ids are letters,
# digits, dashes, `@me`; nothing else is ever needed, and nothing else is forwarded.
_SEGMENT = re.compile(r"^[A-Za-z0-9@_~.-]+$")
# Percent-escapes that decode to a safe segment character; any other escape (`%2f`, `%5c`,
# `%00`, `%25` ...) in the path is refused rather than guessed at.
_SAFE_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_SAFE_DECODED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@_~-")
_QUERY_CHARS = re.compile(r"^[A-Za-z0-9@_~.,:=&%+*!$'()-]*$")


@dataclass(frozen=True, slots=True)
class Target:
    """A request target that passed admission: the route and what will be sent upstream."""

    method: str
    route: Route
    query: str  # canonical: pairs sorted, re-encoded

    @property
    def path(self) -> str:
        return self.route.path

    @property
    def path_and_query(self) -> str:
        return self.path + ("?" + self.query if self.query else "")


def check_method(method: str) -> None:
    if method in {"CONNECT", "TRACE"} or method not in FORWARDED_METHODS | {"OPTIONS"}:
        raise MethodNotAllowed(f"405: method {method[:16]} is not allowed")


def split_target(raw_target: str) -> tuple[str, str]:
    """Split an origin-form request target into raw path and raw query, refusing the rest."""
    if not raw_target.startswith("/"):
        raise BadRequest("400: absolute-form or malformed request target")
    if raw_target.startswith("//"):
        raise BadRequest("400: request target must not start with //")
    if "#" in raw_target or any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in raw_target):
        raise BadRequest("400: request target contains forbidden characters")
    path, _, query = raw_target.partition("?")
    return path, query


def _decode_segment(segment: str) -> str:
    def replace(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        if char not in _SAFE_DECODED:
            raise BadRequest("400: encoded character not allowed in path")
        return char

    if "%" in _SAFE_ESCAPE.sub("", segment):
        raise BadRequest("400: malformed percent-encoding in path")
    return _SAFE_ESCAPE.sub(replace, segment)


def normalise_path(raw_path: str) -> str:
    """Decode and validate a raw path; refuse traversal in any spelling."""
    segments = raw_path.split("/")[1:]
    decoded: list[str] = []
    for index, segment in enumerate(segments):
        if segment == "" and index == len(segments) - 1 and index > 0:
            decoded.append("")  # one trailing slash is kept as sent
            continue
        value = _decode_segment(segment)
        if value in {"", ".", ".."} or not _SEGMENT.match(value) or ".." in value:
            raise BadRequest("400: path traversal or empty segment refused")
        decoded.append(value)
    return "/" + "/".join(decoded)


def canonical_query(raw_query: str) -> str:
    """Sort the query pairs and re-encode them, so that the key is what is forwarded."""
    if not raw_query:
        return ""
    if not _QUERY_CHARS.match(raw_query):
        raise BadRequest("400: query string contains forbidden characters")
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise BadRequest("400: malformed query string") from exc
    if any("\x00" in k or "\x00" in v for k, v in pairs):
        raise BadRequest("400: query string contains forbidden characters")
    pairs.sort()
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


@functools.lru_cache(maxsize=4096)
def admit(method: str, raw_target: str) -> Target:
    """Admit one request to be forwarded, or raise the ProxyError that refuses it.
    Pure, so the answers for the targets seen most are kept (bots ask for the same ids
    again and again; a refusal is not kept, it raises)."""
    check_method(method)
    raw_path, raw_query = split_target(raw_target)
    lowered = unquote(raw_path).lower()
    if lowered == "/v1" or lowered.startswith("/v1/"):
        raise Gone("Unsupported API version")
    if not (raw_path == "/v2" or raw_path.startswith("/v2/")):
        if ".." in lowered or "//" in raw_path:
            raise BadRequest("400: path traversal refused")
        raise NotFound("404: not found")
    path = normalise_path(raw_path)
    return Target(method, match_route(path), canonical_query(raw_query))

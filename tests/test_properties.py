"""Properties over arbitrary requests (methods, targets, header sets, bodies) sent as raw
bytes to the real app, served as `pkproxy` serves it in front of the fake PluralKit; and
the id folding that cache keys rely on.

Examples are bounded so that CI stays fast: the default profile ("ci") runs a few dozen
per property. `HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties.py` runs
thousands (README: Development)."""

from __future__ import annotations

import asyncio
import os
import re
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.app import METRICS, create_app
from proxy.core.routes import fold_ref
from tests.conftest import proxy_settings
from tests.fakepk import FakePluralKit
from tests.served import GUARD_SECONDS, Answer, parse_answers, serving

# One proxy serves every example of a test (starting one per example would dominate the
# run time): the properties must hold whatever state earlier examples left behind.
_SHARED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=_SHARED)
settings.register_profile("long", max_examples=3000, deadline=None, suppress_health_check=_SHARED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The oracles below are written from RFC 9110 and PLURALKIT.md, not taken from the code.
HOP_BY_HOP = {
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
PLURALKIT_INTERNAL = {"x-pluralkit-client-ip", "x-pluralkit-internalauth", "x-pluralkit-systemid"}
CREDENTIALS = {"authorization", "x-pluralkit-app"}
# Headers the proxy or its HTTP client set themselves, whatever the client named.
SET_BY_PROXY = {"user-agent", "via", "accept-encoding", "host", "content-length"}


# -- the requests -----------------------------------------------------------------------

TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
SEGMENTS = [
    "v2", "v1", "systems", "members", "groups", "switches", "messages", "fronters",
    "settings", "guilds", "autoproxy", "add", "remove", "@me", "abcde", "ABC-DE", "prvmb",
    "exmpl", "prvsy", "grpaa", "11111111-1111-4111-8111-111111111111", "123456789012345678",
    "..", ".", "%2e%2e", "%2E%2e", "%2f", "%2F", "%5c", "%00", "%25", "%41", "", "~",
    "evil.example", "http:", "healthz", "metrics", "status", "cache", "\\",
]  # fmt: skip
ODD_TARGETS = [
    "*",
    "http://evil.example/v2/members/abcde",
    "//evil.example/v2/members/abcde",
    "evil.example:443",
    "/v2/members/abcde#frag",
    "/v2/../v2/members/abcde",
    "/v2/members/abcde?x=%zz",
]
HEADER_NAMES = sorted(
    HOP_BY_HOP - {"transfer-encoding"}  # framing: the writer sets Content-Length
    | PLURALKIT_INTERNAL
    | CREDENTIALS
    | {"x-pkproxy-priority", "x-pkproxy-max-wait", "x-pkproxy-key", "x-pkproxy-other"}
    | {"cookie", "forwarded", "x-forwarded-for", "via", "user-agent", "accept-encoding"}
    | {"expect", "content-type", "x-custom"}
)

COMMON_METHODS = ["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS", "TRACE"]
# Four in five requests use a method PluralKit knows; the rest any token at all.
methods = st.integers(0, 4).flatmap(
    lambda n: st.sampled_from(COMMON_METHODS) if n else st.text(TOKEN, min_size=1, max_size=8)
)
segments = st.one_of(st.sampled_from(SEGMENTS), st.text(VISIBLE, max_size=8))
queries = st.one_of(st.just(""), st.text(VISIBLE.replace("#", ""), max_size=16).map("?{}".format))
ROUTES = [
    "/v2/systems/{}", "/v2/systems/{}/members", "/v2/systems/{}/fronters",
    "/v2/systems/{}/switches", "/v2/members/{}", "/v2/members/{}/groups", "/v2/groups/{}",
    "/v2/groups/{}/members", "/v2/messages/{}", "/v2/members", "/v2/systems/{}/guilds/{}",
]  # fmt: skip
REFS = ["abcde", "ABC-DE", "aBcDe", "exmpl", "EXMPL", "@me", "prvsy", "prvmb", "grpaa", "zzzzz"]
REFS += ["11111111-1111-4111-8111-111111111111", "AAAAAAAA-0000-4000-8000-000000000001"]
REFS += ["123456789012345678"]
known_paths = st.builds(
    lambda route, refs, q: route.format(*refs) + q,
    st.sampled_from(ROUTES),
    st.lists(st.sampled_from(REFS), min_size=2, max_size=2),
    queries,
)
targets = st.one_of(
    known_paths,
    st.builds(lambda segs, q: "/" + "/".join(segs) + q, st.lists(segments, max_size=5), queries),
    st.builds(lambda segs, q: "/v2/" + "/".join(segs) + q, st.lists(segments, max_size=4), queries),
    st.sampled_from(ODD_TARGETS),
)


def any_case(name: str) -> st.SearchStrategy[str]:
    def spell(upper: list[bool]) -> str:
        return "".join(ch.upper() if up else ch for ch, up in zip(name, upper, strict=True))

    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(spell)


header_names = st.one_of(
    st.sampled_from(HEADER_NAMES).flatmap(any_case), st.text(TOKEN, min_size=1, max_size=12)
)
header_values = st.text(VISIBLE + " ", max_size=24).map(str.strip)


@dataclass(frozen=True)
class Sent:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def credentialed(self) -> bool:
        return any(name.lower() in CREDENTIALS for name, _ in self.headers)

    def named_hop_by_hop(self) -> set[str]:
        """The header names the client's Connection headers declare hop-by-hop."""
        named: set[str] = set()
        for name, value in self.headers:
            if name.lower() == "connection":
                named |= {token.strip().lower() for token in value.split(",")}
        return named

    def raw(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", "Host: pkproxy.test"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines += [f"Content-Length: {len(self.body)}", "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@st.composite
def requests(draw: st.DrawFn) -> Sent:
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=8))
    if draw(st.booleans()):  # name some of them in Connection, as hop-by-hop
        named = draw(st.lists(st.sampled_from([n for n, _ in headers] or ["x-custom"])))
        headers.append((draw(st.sampled_from(["Connection", "connection"])), ", ".join(named)))
    if draw(st.booleans()):  # a credential, in any case, with any value (even empty)
        name = draw(st.sampled_from(sorted(CREDENTIALS)).flatmap(any_case))
        headers.append((name, draw(st.sampled_from(["token-exmpl", "app-token-1", "", "x"]))))
    return Sent(draw(methods), draw(targets), headers, draw(st.binary(max_size=64)))


# -- the proxy under test ---------------------------------------------------------------


@dataclass
class Proxy:
    port: int
    app: web.Application
    fake: FakePluralKit
    upstream: TestServer
    seen: int = 0  # fake arrivals already checked

    async def send(self, sent: Sent) -> Answer:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(sent.raw())
            answers = parse_answers(await asyncio.wait_for(reader.read(), GUARD_SECONDS))
        finally:
            writer.close()
        assert len(answers) == 1, answers
        return answers[0]

    def cache_counts(self) -> tuple[float, float]:
        """Cache lookups and store decisions so far (every outcome counted)."""
        metrics = self.app[METRICS]
        return _total(metrics.cache_lookups), _total(metrics.cache_stores)

    def new_arrivals(self) -> list[Any]:
        arrivals = self.fake.arrivals[self.seen :]
        self.seen = len(self.fake.arrivals)
        return arrivals


def _total(counter: Any) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.fixture
async def proxy(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Proxy]:
    """The proxy with a budget fast enough for many examples, in front of a fake with the
    same rate; cached answers stay fresh for the whole run (no background refresh)."""
    fake = FakePluralKit(scopes={"generic": 1000.0})
    upstream: TestServer = await aiohttp_server(fake.app())
    config = proxy_settings(
        str(upstream.make_url("/")),
        tmp_path / "cache",
        budget={"scopes": [{"name": "all", "rate": 500, "burst": 1}], "reserve": 0},
        cache={"ttl": {"*": 3600}, "negative_ttl_seconds": 3600},
        server={"body_timeout_seconds": 2.0},
    )
    app = create_app(config)
    async with serving(config, app) as port:
        yield Proxy(port, app, fake, upstream)


# -- the properties ---------------------------------------------------------------------


@given(sent=requests())
async def test_upstream_only_ever_sees_the_origin_and_a_v2_path(proxy: Proxy, sent: Sent) -> None:
    """Whatever the method, target, headers and body, what reaches upstream went to the
    configured origin, on a normalised /v2 path, and carries no hop-by-hop header, no
    header the client named hop-by-hop, no X-PKProxy-* and no PluralKit-internal header."""
    await proxy.send(sent)
    origin = f"{proxy.upstream.host}:{proxy.upstream.port}"
    named = sent.named_hop_by_hop() - SET_BY_PROXY
    for arrival in proxy.new_arrivals():
        path = arrival.path.partition("?")[0]
        assert path == "/v2" or path.startswith("/v2/"), arrival.path
        assert not re.search(r"//|/\.\.?(/|$)|%2f|%5c|\\", path, re.IGNORECASE), arrival.path
        names = {name.lower() for name, _ in arrival.headers}
        assert dict((k.lower(), v) for k, v in arrival.headers)["host"] == origin
        assert not names & HOP_BY_HOP, names
        assert not names & PLURALKIT_INTERNAL, names
        assert not {n for n in names if n.startswith("x-pkproxy-")}, names
        assert not names & named, (names, named)


@given(sent=requests())
async def test_no_answer_is_a_500(proxy: Proxy, sent: Sent) -> None:
    """No request, however malformed, makes the proxy answer 500: every answer is either
    upstream's or one of the proxy's deliberate refusals."""
    answer = await proxy.send(sent)
    assert answer.status != 500, (answer, sent)
    assert answer.status < 500 or answer.status in {502, 503, 504}, (answer, sent)


@given(sent=requests())
async def test_every_refusal_of_the_proxy_has_pluralkit_shape(proxy: Proxy, sent: Sent) -> None:
    """Every error the proxy answers itself (no X-Cache: not upstream's answer), including
    what aiohttp's parser refuses, is PluralKit's JSON error shape."""
    answer = await proxy.send(sent)
    if answer.status < 400 or "x-cache" in answer.headers:
        return
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    if sent.method == "HEAD" and not answer.body:
        return  # an answer to HEAD has no body
    body = answer.json()
    assert isinstance(body.get("message"), str) and body.get("code") == 0, answer
    assert set(body) <= {"message", "code", "retry_after", "scope"}, answer


@given(sent=requests().filter(lambda sent: sent.credentialed))
async def test_a_credentialed_request_never_touches_the_shared_cache(
    proxy: Proxy, sent: Sent
) -> None:
    """A request with Authorization or X-PluralKit-App (any case, any value) is neither
    looked up in nor stored into the shared cache, and is never answered from it."""
    before = proxy.cache_counts()
    answer = await proxy.send(sent)
    assert answer.headers.get("x-cache") in {None, "BYPASS"}, answer
    assert proxy.cache_counts() == before


# -- id folding -------------------------------------------------------------------------

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Characters outside ASCII whose lower case is an ASCII letter (the Kelvin sign): a
# lookalike must never fold into the id it resembles.
LOOKALIKES = {ch.lower(): ch for ch in map(chr, range(0x80, 0x30000)) if ch.lower().isascii()}


def pluralkit_identity(ref: str) -> tuple[str, str]:
    """Which entity PluralKit resolves `ref` to (PLURALKIT.md: short ids are 5-6 letters,
    case-insensitive, dashes ignored; UUIDs case-insensitive; anything else as sent)."""
    if ref.isascii() and UUID.fullmatch(ref.lower()):
        return "uuid", ref.lower()
    undashed = ref.replace("-", "")
    if ref.isascii() and re.fullmatch(r"[A-Za-z]{5,6}", undashed):
        return "short", undashed.lower()
    return "as-sent", ref


# Letters that have a lookalike are drawn as often as all the others together.
letters = st.one_of(st.sampled_from(sorted(LOOKALIKES)), st.sampled_from(string.ascii_lowercase))
short_ids = st.text(letters, min_size=5, max_size=6)
uuids = st.uuids().map(str)
references = st.one_of(short_ids, uuids, st.text(string.digits, min_size=17, max_size=19))


@st.composite
def spellings(draw: st.DrawFn, ref: str) -> str:
    """Another spelling of `ref`: letters in any case, dashes inserted into short ids, and
    now and then a lookalike character."""
    out = []
    for ch in ref:
        choice = draw(st.integers(0, 9))
        if choice < 2 and ch in LOOKALIKES:
            out.append(LOOKALIKES[ch])
        else:
            out.append(ch.upper() if choice < 5 else ch)
        if len(ref) <= 6 and draw(st.integers(0, 5)) == 0:
            out.append("-")
    return "".join(out)


# Pure and fast: ten times the profile's examples.
pure = settings(max_examples=settings.default.max_examples * 10)


@pure
@given(st.text(max_size=40))
def test_folding_is_idempotent(ref: str) -> None:
    """Folding a folded reference changes nothing."""
    assert fold_ref(fold_ref(ref)) == fold_ref(ref)


@pure
@given(st.one_of(st.text(max_size=40), references.flatmap(spellings)))
@example("\u212aBC-DE")  # KELVIN SIGN: lower-cases to an ASCII "k"
def test_folding_keeps_what_pluralkit_resolves(ref: str) -> None:
    """A folded reference names the entity the original does."""
    assert pluralkit_identity(fold_ref(ref)) == pluralkit_identity(ref)


@pure
@given(st.data())
def test_folding_never_merges_two_entities(data: st.DataObject) -> None:
    """Two spellings fold to one key exactly when PluralKit resolves them to one entity:
    different ids (or a lookalike of an id) never share a cache key."""
    first = data.draw(references)
    second = data.draw(st.one_of(st.just(first), references))
    a, b = data.draw(spellings(first)), data.draw(spellings(second))
    same_entity = pluralkit_identity(a) == pluralkit_identity(b)
    assert (fold_ref(a) == fold_ref(b)) == same_entity, (a, b)

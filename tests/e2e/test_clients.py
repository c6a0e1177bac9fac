"""A real community client (PluralKit.py) works unchanged with its base URL on the proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pluralkit
import pytest
from aiohttp.test_utils import TestServer
from pluralkit.v2 import client as pk_client
from pluralkit.v2.errors import HTTPError

from tests.conftest import MakeProxy
from tests.fakepk import FakePluralKit

pytestmark = pytest.mark.slow


@pytest.fixture
def server_constant() -> Iterator[None]:
    """PluralKit.py reads its base URL from a module constant: restore it afterwards."""
    original = pk_client.SERVER
    yield
    pk_client.SERVER = original


def point_at(proxy: TestServer) -> None:
    pk_client.SERVER = str(proxy.make_url("/v2"))


async def test_pluralkit_py_reads_through_the_cache(
    fake: FakePluralKit, make_proxy: MakeProxy, server_constant: None
) -> None:
    """Anonymous lookups come back as models; the second costs no upstream request; the
    owner's token still sees private fields."""
    point_at(await make_proxy())
    anonymous = pluralkit.Client(user_agent="pkproxy-tests")
    first = await anonymous.get_member("ABC-DE")
    second = await anonymous.get_member("abcde")
    assert first.name == second.name == "Alice"
    assert len(fake.arrivals) == 1
    owner = pluralkit.Client("token-exmpl", user_agent="pkproxy-tests")
    private = await owner.get_member("prvmb")
    assert private.description == "secret notes of Piper"
    public = await anonymous.get_member("prvmb")
    assert public.description is None


async def test_pluralkit_py_paced_by_the_proxys_headers_is_never_refused(
    fake: FakePluralKit, make_proxy: MakeProxy, server_constant: None
) -> None:
    """One PluralKit.py client making sequential uncached calls, pacing itself by the
    proxy's X-RateLimit-* headers (Reset read as ms), is never answered 429."""
    point_at(await make_proxy())
    owner = pluralkit.Client("token-exmpl", user_agent="pkproxy-tests")
    for _ in range(6):
        member = await owner.get_member("abcde")  # credentialed: never cached
        assert member.name == "Alice"
    assert [a.status for a in fake.arrivals] == [200] * 6
    assert fake.max_in_window(1.0) <= 2


async def test_pluralkit_py_burst_gets_429s_not_timeouts(
    fake: FakePluralKit, make_proxy: MakeProxy, server_constant: None
) -> None:
    """Many concurrent PluralKit.py calls, max wait under httpx's 5 s timeout as the README
    advises: each call returns or raises PluralKit's 429 at once, none times out."""
    point_at(await make_proxy(budget={"default_max_wait_ms": 2000}))
    owner = pluralkit.Client("token-exmpl", user_agent="pkproxy-tests")
    results = await asyncio.gather(
        *(owner.get_member("abcde") for _ in range(12)), return_exceptions=True
    )
    served = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert not any(isinstance(r, httpx.TimeoutException) for r in refused)
    assert all(isinstance(r, HTTPError) and "429" in str(r) for r in refused)
    assert 3 <= len(served) <= 6
    assert fake.upstream_arrivals(429) == []

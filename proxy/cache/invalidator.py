"""After a successful write: evict what it made wrong (the store's write generations keep
in-flight reads from storing answers older than the write)."""

from __future__ import annotations

import hashlib
import hmac
import os
import zlib
from collections import OrderedDict
from collections.abc import Iterable

from proxy.cache.store import CacheStore
from proxy.core.cachepolicy import cache_key, cache_tag
from proxy.core.invalidation import Owned, learns_from, objects_in, parse_json, paths_to_evict
from proxy.core.routes import Route
from proxy.ops.logs import get_logger
from proxy.ops.metrics import Metrics

_ME_MEMORY = 10_000
_ROUNDS = 3
# Objects remembered from answers (a few hundred bytes each), and the largest answer read
# for them: parsing a bigger one would stall the event loop for every other request.
_OBJECTS_KEPT = 20_000  # about 10 MiB
_LEARN_MAX_BYTES = 2 * 1024 * 1024
_DECODED_MAX_BYTES = 16 * 1024 * 1024  # a gzipped body is not inflated past this


class Invalidator:
    def __init__(self, cache: CacheStore, metrics: Metrics, origin: str) -> None:
        self._cache = cache
        self._origin = origin
        self._metrics = metrics
        self._log = get_logger()
        # Which system a credential's @me is, keyed by a keyed hash (never the credential).
        self._me: OrderedDict[bytes, str] = OrderedDict()
        self._me_secret = os.urandom(32)
        # Members, groups and systems seen in answers, by kind and each of their ids: how a
        # write whose own body says nothing (a DELETE) finds the lists it makes wrong when
        # no body of that very member is cached. Never served; only steers evictions.
        self._seen: OrderedDict[tuple[str, str], Owned] = OrderedDict()

    def learn(
        self, template: str, status: int, headers: Iterable[tuple[str, str]], body: bytes
    ) -> None:
        """Remember the objects an upstream answer describes (see `_seen`)."""
        if status != 200 or not learns_from(template) or len(body) > _LEARN_MAX_BYTES:
            return
        data = parse_json(decoded(headers, body, _LEARN_MAX_BYTES))
        for owned in objects_in(template, data):
            for ref in owned.ids:
                self._seen[(owned.kind, ref)] = owned
                self._seen.move_to_end((owned.kind, ref))
        while len(self._seen) > _OBJECTS_KEPT:
            self._seen.popitem(last=False)

    def _seen_body(self, path: str) -> object:
        """A member's, group's or system's ids and system as remembered, in the shape of its
        own answer, or None."""
        parts = path.split("/")
        if len(parts) != 4:
            return None
        owned = self._seen.get((parts[2], parts[3]))
        if owned is None:
            return None
        body: dict[str, str] = {} if owned.system is None else {"system": owned.system}
        for ref in owned.ids:
            body["uuid" if len(ref) == 36 else "id"] = ref
        return body

    async def after_write(
        self,
        route: Route,
        credentials: list[tuple[str, str]],
        request_body: bytes,
        response_body: bytes,
    ) -> int:
        """Evict every path the write makes wrong; return how many paths were evicted."""
        me = self._me.get(self._digest(credentials)) if credentials else None
        request_json, response_json = parse_json(request_body), parse_json(response_body)
        bodies: dict[str, object] = {}
        paths: set[str] = set()
        # Cached bodies carry the ids (a member's system, a list's groups) that lead to
        # further paths; a few rounds follow them as far as the cache knows.
        for _ in range(_ROUNDS):
            paths = paths_to_evict(route, request_json, response_json, bodies.get, me)
            wanted = (paths | {p.rsplit("/", 1)[0] for p in paths}) - bodies.keys()
            found = await self._load(wanted)
            if not found:
                break
            bodies.update(found)
        # Each eviction also marks the path's write generation in the store, so that a
        # fetch that started before this write does not store its older answer.
        for path in paths:
            await self._cache.evict_tag(cache_tag(self._origin, path))
        self._metrics.cache_invalidations.inc(len(paths))
        self._log.debug("cache.invalidated", route=route.template, paths=len(paths))
        return len(paths)

    async def _load(self, paths: Iterable[str]) -> dict[str, object]:
        found: dict[str, object] = {}
        for path in sorted(paths):
            for encoding in ("identity", "gzip"):
                body = await self._cached_json(cache_key(self._origin, path, encoding))
                if body is not None:
                    found[path] = body
                    break
            else:
                seen = self._seen_body(path)
                if seen is not None:
                    found[path] = seen
        return found

    async def _cached_json(self, key: str) -> object:
        entry = await self._cache.get(key)
        if entry is None or entry.status != 200:
            return None
        return parse_json(decoded(entry.headers, entry.body))

    def _digest(self, credentials: list[tuple[str, str]]) -> bytes:
        material = repr(sorted((k.lower(), v) for k, v in credentials)).encode()
        return hmac.new(self._me_secret, material, hashlib.sha256).digest()

    def learn_me(
        self, route: Route, credentials: list[tuple[str, str]], status: int, body: bytes
    ) -> None:
        """A credentialed `GET/PATCH /v2/systems/@me` tells which system its @me is."""
        data = parse_json(body)
        if status != 200 or route.template != "/v2/systems/{ref}" or not isinstance(data, dict):
            return
        system = data.get("id")
        if isinstance(system, str):
            digest = self._digest(credentials)
            self._me[digest] = system.lower()
            self._me.move_to_end(digest)
            while len(self._me) > _ME_MEMORY:
                self._me.popitem(last=False)


def decoded(
    headers: Iterable[tuple[str, str]], body: bytes, limit: int = _DECODED_MAX_BYTES
) -> bytes:
    """A body as JSON text, pkproxy passing bodies on as they were sent: inflated if it was
    sent gzip or deflate encoded; b"" for another coding (br, zstd: not read), if inflating
    fails, or if the text would exceed `limit` (a gzip bomb is not inflated)."""
    codings = [v.strip().lower() for k, v in headers if k.lower() == "content-encoding"]
    if not codings or codings == ["identity"]:
        return body if len(body) <= limit else b""
    if codings not in (["gzip"], ["x-gzip"], ["deflate"]):
        return b""
    # gzip framing, or deflate as zlib data (RFC 9110) or, as some servers send it, raw.
    for wbits in (31,) if "gzip" in codings[0] else (15, -15):
        inflate = zlib.decompressobj(wbits=wbits)
        try:
            text = inflate.decompress(body, limit)
        except zlib.error:
            continue
        return b"" if inflate.unconsumed_tail or not inflate.eof else text
    return b""

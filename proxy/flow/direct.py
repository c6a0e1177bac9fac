"""The direct path: requests the shared cache must not answer (credentials, writes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from proxy.budget.forward import Outbound
from proxy.cache.invalidator import Invalidator, decoded
from proxy.core.cachepolicy import CacheResult
from proxy.core.headers import CREDENTIAL_HEADERS, forward_request_headers
from proxy.flow.request import Request, RequestLog
from proxy.flow.responses import Responder
from proxy.upstream.client import UpstreamResponse

if TYPE_CHECKING:
    from proxy.flow.gateway import Parts

WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


class DirectPath:
    def __init__(self, parts: Parts, responder: Responder, invalidator: Invalidator | None) -> None:
        self._parts = parts
        self._responder = responder
        self._invalidator = invalidator

    async def serve(self, req: Request, log: RequestLog) -> web.StreamResponse:
        self._responder.forget_rate_headers()  # this request may queue: headers change
        await self._parts.quotas.admit(req.consumer, req.scope)
        upstream_settings = self._parts.settings.upstream
        headers = forward_request_headers(
            req.headers, upstream_settings.user_agent, upstream_settings.via
        )
        out = Outbound(req.target.method, req.target.path_and_query, headers, req.body, req.place)
        try:
            upstream = await self._parts.forwarder.send(req.scope, out)
        finally:
            log.timed(out)
        await self._after(req, upstream)
        return self._responder.upstream(req, upstream, CacheResult.BYPASS)

    async def _after(self, req: Request, upstream: UpstreamResponse) -> None:
        """A successful write evicts what it made wrong before its answer is sent; an
        answer about @me teaches which system that credential's @me is."""
        if self._invalidator is None:
            return
        credentials = [(k, v) for k, v in req.headers if k.lower() in CREDENTIAL_HEADERS]
        route = req.target.route
        if req.target.method == "GET":  # a credentialed read: its objects' ids and systems
            self._invalidator.learn(
                route.template, upstream.status, upstream.headers, upstream.body
            )
        wrote = req.target.method in WRITE_METHODS and 200 <= upstream.status < 300
        about_me = bool(credentials) and route.param("ref") == "@me"
        if not wrote and not about_me:
            return
        # Bodies go both ways as they were sent: compressed, perhaps.
        answer = decoded(upstream.headers, upstream.body)
        if wrote:
            sent = decoded(req.headers, req.body)
            await self._invalidator.after_write(route, credentials, sent, answer)
        if about_me:
            self._invalidator.learn_me(route, credentials, upstream.status, answer)

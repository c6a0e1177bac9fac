"""Graceful shutdown: refuse new work, serve what is queued within a window, then 503."""

from __future__ import annotations

from aiohttp import web

from proxy.core.errors import Draining
from proxy.flow.gateway import Gateway
from proxy.ops.logs import get_logger


async def drain(gateway: Gateway, site: web.TCPSite, window: float) -> None:
    """Refuse new work, serve what is queued while the window lasts, then answer 503."""
    log = get_logger()
    gateway.draining = True
    await site.stop()  # no new connections
    log.info("server.draining", queued=gateway.scheduler.queued(), window_s=window)
    clock = gateway.parts.clock
    deadline = clock.monotonic() + window
    while clock.monotonic() < deadline and (
        gateway.scheduler.queued() or gateway.forwarder.in_flight
    ):
        await clock.sleep(0.05)
    failed = gateway.scheduler.fail_all(Draining("503: pkproxy is shutting down"))
    while gateway.forwarder.in_flight:  # requests already sent upstream finish
        await clock.sleep(0.05)
    log.info("server.drained", refused=failed)

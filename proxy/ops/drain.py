"""Graceful shutdown: refuse new work, serve what is queued within a window, then 503."""

from __future__ import annotations

import asyncio

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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    while loop.time() < deadline and (gateway.scheduler.queued() or gateway.forwarder.in_flight):
        await asyncio.sleep(0.05)
    failed = gateway.scheduler.fail_all(Draining("503: pkproxy is shutting down"))
    while gateway.forwarder.in_flight:  # requests already sent upstream finish
        await asyncio.sleep(0.05)
    log.info("server.drained", refused=failed)

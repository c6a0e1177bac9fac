"""Command line: `pkproxy` serves; `check-config` and `cache stats|clear` operate."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from aiohttp import web

from proxy.app import GATEWAY, create_app
from proxy.cache.store import open_disk
from proxy.ops.drain import drain
from proxy.ops.logs import configure_logging, get_logger
from proxy.settings import ConfigError, Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML configuration file")
    common.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    common.add_argument("--port", type=int, help="port to listen on (default 8080)")
    common.add_argument(
        "--upstream", metavar="URL", help="upstream origin (default https://api.pluralkit.me)"
    )
    parser = argparse.ArgumentParser(
        prog="pkproxy",
        parents=[common],
        description="Caching, rate-limit-aware reverse proxy for the PluralKit API v2.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", parents=[common], help="run the proxy (the default)")
    sub.add_parser("check-config", parents=[common], help="validate and print the configuration")
    cache = sub.add_parser("cache", parents=[common], help="inspect or clear the disk cache")
    cache.add_argument("action", choices=["stats", "clear"])
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, Any]] = {
        "server": {"host": args.host, "port": args.port},
        "upstream": {"url": args.upstream},
    }
    return load_settings(args.config, overrides=overrides)


def _masked(settings: Settings) -> dict[str, Any]:
    data = asdict(settings)
    for consumer in data["consumers"]["keys"]:
        consumer["key"] = "********"
    data["consumers"]["trusted_proxies"] = [str(n) for n in settings.consumers.trusted_proxies]
    data["upstream"]["url"] = str(settings.upstream.url)
    data["cache"]["ttl"] = dict(settings.cache.ttl)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as error:
        print(f"pkproxy: {error}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(json.dumps(_masked(settings), indent=2, default=str))
        print("configuration OK", file=sys.stderr)
        return 0
    if args.command == "cache":
        return _cache_command(settings, args.action)
    configure_logging(settings.log.level, settings.log.format)
    return _run(serve(settings), settings.server.event_loop)


def _run(coro: Any, event_loop: str) -> int:
    """uvloop where available (measured faster: see the README's benchmarks)."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return int(runner.run(coro))
    return int(asyncio.run(coro))


def _cache_command(settings: Settings, action: str) -> int:
    disk = open_disk(settings.cache.directory, settings.cache.disk_bytes)
    try:
        if action == "clear":
            removed = disk.clear()
            print(json.dumps({"directory": settings.cache.directory, "removed": removed}))
            return 0
        stats: dict[str, Any] = {
            "directory": settings.cache.directory,
            "entries": len(disk),
            "bytes": int(disk.volume()),
        }
    finally:
        disk.close()
    stats["running"] = _running_stats(settings)
    print(json.dumps(stats, indent=2))
    return 0


def _running_stats(settings: Settings) -> Any:
    """The hit ratio since start, if a proxy is running at the configured address."""
    url = f"http://{settings.server.host}:{settings.server.port}/status"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as answer:
            return json.load(answer).get("cache")
    except (OSError, ValueError):
        return None


async def serve(settings: Settings) -> int:
    log = get_logger()
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that disconnects while queued frees its slot
        access_log=None,  # request.completed is the access log
        keepalive_timeout=settings.server.keepalive_seconds,
        shutdown_timeout=settings.upstream.timeout_seconds + 1,
    )
    try:
        await runner.setup()  # opens the cache store, starts the scheduler
    except Exception as error:
        log.error("server.startup_failed", error=f"{type(error).__name__}: {error}")
        await runner.cleanup()
        return 1
    site = web.TCPSite(runner, settings.server.host, settings.server.port, reuse_address=True)
    try:
        await site.start()
    except OSError as error:
        log.error(
            "server.bind_failed",
            host=settings.server.host,
            port=settings.server.port,
            error=str(error),
        )
        await runner.cleanup()
        return 1
    log.info(
        "server.started",
        host=settings.server.host,
        port=settings.server.port,
        upstream=str(settings.upstream.url),
        scopes=[f"{s.name}:{s.rate:g}/s" for s in settings.budget.scopes],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(app[GATEWAY], site, settings.server.drain_seconds)
    await runner.cleanup()
    log.info("server.stopped")
    return 0

"""Command line: `pkproxy` serves; `check-config` and `cache stats|clear` operate."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from aiohttp import web
from yarl import URL

from proxy import __version__
from proxy.app import GATEWAY, create_app
from proxy.cache.disk import open_disk
from proxy.core.admission import admit
from proxy.core.cachepolicy import cache_tag
from proxy.core.errors import ProxyError
from proxy.ops.drain import drain
from proxy.ops.logs import configure_logging, get_logger
from proxy.server import ProxyRunner, raise_fd_limit
from proxy.settings import ConfigError, Settings, load_settings
from proxy.settings.load import ENV_ALIASES
from proxy.settings.model import DEFAULTS

# The flags every sub-command shares. argparse's usage line shows them before the sub-command
# and the sub-command's --help after it: both places count, and a flag may be given once.
_GLOBAL_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--config", {"metavar": "FILE", "help": "TOML configuration file"}),
    ("--host", {"metavar": "HOST", "help": "address to listen on (default 127.0.0.1)"}),
    ("--port", {"metavar": "PORT", "type": int, "help": "port to listen on (default 8080)"}),
    (
        "--upstream",
        {"metavar": "URL", "help": "upstream origin (default https://api.pluralkit.me)"},
    ),
)
# A sub-parser writes into its own namespace, which argparse then copies over the main one:
# given after the sub-command, a flag is stored under this suffix so that neither place
# overwrites the other, and `parse_args` merges the two.
_AFTER = "_after_command"


class _Once(argparse.Action):
    """Store a flag's value; the same flag given twice is an error, not a silent overwrite."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is not None:
            raise argparse.ArgumentError(self, "given more than once")
        setattr(namespace, self.dest, values)


def _add_global_flags(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    group = parser.add_argument_group("global options (before or after the sub-command)")
    for flag, options in _GLOBAL_FLAGS:
        group.add_argument(
            flag,
            dest=flag[2:] + (_AFTER if after_command else ""),
            action=_Once,
            default=argparse.SUPPRESS if after_command else None,
            **options,
        )


def _epilog() -> str:
    """Where the other inputs are: the environment variables and the control headers."""
    settings = "\n".join(
        textwrap.fill(
            " ".join(keys),
            width=92,
            initial_indent=f"    {section:<10}",
            subsequent_indent=" " * 14,
        )
        for section, keys in DEFAULTS.items()
    )
    short = [f"{name} ({section}.{key})" for name, (section, key) in ENV_ALIASES.items()]
    short_names = textwrap.fill(
        ", ".join(["PKPROXY_CONFIG (--config)", *short]),
        width=92,
        initial_indent="  Short names: ",
        subsequent_indent="    ",
    )
    return f"""\
environment:
  Every setting is also PKPROXY_<SECTION>_<KEY> (lists and tables as JSON), for example
  PKPROXY_BUDGET_PROFILE=pluralkit. Precedence: defaults < --config FILE < environment < flags.
{short_names}.
  Unknown PKPROXY_* names are errors, except the service-link variables Kubernetes injects
  for a Service named pkproxy (PKPROXY_SERVICE_*, PKPROXY_PORT=tcp://..., PKPROXY_PORT_*_TCP*):
  those are ignored with a warning.
  Sections and keys:
{settings}
  config/pkproxy.toml and the README ("Configuration") document each one.

control headers (per request, stripped before forwarding; README "Control headers"):
  X-PKProxy-Max-Wait: <ms>    how long it may queue (at most budget.max_wait_ceiling_ms)
  X-PKProxy-Priority: interactive|normal|background    lane within the consumer's share
  X-PKProxy-Key: <key>        identifies a configured consumer ([consumers] keys)
"""


_CACHE_HELP = """\
Acts on the cache.directory of the configuration given here (--config, --port, PKPROXY_*):
give the same flags and variables as the instance you mean. Unset, the directory is
$XDG_CACHE_HOME/pkproxy/<port> (~/.cache/pkproxy/<port>): one per port, so that
`pkproxy --port 9000 cache clear` empties that instance's disk tier only. Instances
configured with the same cache.directory share it, and `clear` empties it for all of them.
A running proxy keeps its memory tier until it restarts."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pkproxy",
        description="Caching, rate-limit-aware reverse proxy for the PluralKit API v2.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_flags(parser, after_command=False)
    sub = parser.add_subparsers(dest="command")
    commands = [
        sub.add_parser("serve", help="run the proxy (the default)"),
        sub.add_parser("check-config", help="validate and print the configuration"),
        cache := sub.add_parser(
            "cache",
            help="inspect or clear the disk cache",
            description=_CACHE_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        ),
    ]
    cache.add_argument(
        "action",
        choices=["stats", "clear", "purge"],
        help="stats: entries and bytes on disk, plus the hit ratio of a proxy running at the "
        "configured address; clear: empty the cache (through the running proxy, memory tier "
        "included, else the disk directly); purge PATH: evict one path, e.g. /v2/members/abcde",
    )
    cache.add_argument("path", nargs="?", help="the path to purge (purge only)")
    for command in commands:
        _add_global_flags(command, after_command=True)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; global flags count before or after the sub-command, once."""
    parser = _parser()
    args = parser.parse_args(argv)
    for flag, _ in _GLOBAL_FLAGS:
        after = args.__dict__.pop(flag[2:] + _AFTER, None)
        if after is None:
            continue
        if getattr(args, flag[2:]) is not None:
            parser.error(f"argument {flag}: given both before and after the sub-command")
        setattr(args, flag[2:], after)
    return args


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
    if settings.redis.url:
        url = URL(settings.redis.url)
        data["redis"]["url"] = str(url.with_password("********") if url.password else url)
    del data["ignored_env"]  # not a setting; check-config says it on stderr
    return data


_LINKS_HINT = (
    "Kubernetes service-link variables of a Service named pkproxy, not settings: "
    "set enableServiceLinks: false in the pod spec"
)


def warn_ignored_env(settings: Settings) -> None:
    """One warning naming the service-link variables load_settings ignored, if any."""
    if settings.ignored_env:
        get_logger().warning(
            "config.service_links_ignored", variables=list(settings.ignored_env), hint=_LINKS_HINT
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as error:
        print(f"pkproxy: {error}", file=sys.stderr)
        return 2
    if args.command in {"check-config", "cache"} and settings.ignored_env:  # no log on stdout
        print(f"pkproxy: ignored {', '.join(settings.ignored_env)}: {_LINKS_HINT}", file=sys.stderr)
    if args.command == "check-config":
        print(json.dumps(_masked(settings), indent=2, default=str))
        print("configuration OK", file=sys.stderr)
        return 0
    if args.command == "cache":
        return _cache_command(settings, args.action, args.path)
    configure_logging(settings.log.level, settings.log.format)
    warn_ignored_env(settings)
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


def _cache_command(settings: Settings, action: str, path: str | None) -> int:
    if (action == "purge") != (path is not None):
        print("pkproxy: cache purge takes one PATH; stats and clear take none", file=sys.stderr)
        return 2
    if action == "stats":
        return _cache_stats(settings)
    query = "" if path is None else "?" + urllib.parse.urlencode({"path": path})
    running = _admin(settings, "DELETE", "/cache" + query)
    if running is not None:
        print(json.dumps({"running": True, **running}))
        return 0 if "message" not in running else 1
    # No proxy answers at the configured address: act on the disk directory itself.
    disk = open_disk(settings.cache.directory, settings.cache.disk_bytes)
    try:
        if path is None:
            outcome: dict[str, Any] = {"removed": disk.clear()}
        else:
            target = admit("GET", path)
            tag = cache_tag(str(settings.upstream.url), target.path)
            outcome = {"path": target.path, "evicted": disk.evict(tag)}
    except ProxyError as error:
        print(f"pkproxy: {error.message}", file=sys.stderr)
        return 2
    finally:
        disk.close()
    print(json.dumps({"running": False, "directory": settings.cache.directory, **outcome}))
    return 0


def _cache_stats(settings: Settings) -> int:
    disk = open_disk(settings.cache.directory, settings.cache.disk_bytes)
    try:
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


def _admin(settings: Settings, method: str, path: str) -> dict[str, Any] | None:
    """Ask the proxy running at the configured address (with an ops key from the same
    configuration, when there is one); None if nothing answers there."""
    host = settings.server.host
    host = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host
    if ":" in host:
        host = f"[{host}]"
    request = urllib.request.Request(f"http://{host}:{settings.server.port}{path}", method=method)
    ops = next((spec.key for spec in settings.consumers.keys if spec.ops), None)
    if ops is not None:
        request.add_header("X-PKProxy-Key", ops)
    try:
        with urllib.request.urlopen(request, timeout=2.0) as answer:
            data: dict[str, Any] = json.load(answer)
            return data
    except urllib.error.HTTPError as error:
        try:
            refused: dict[str, Any] = json.load(error)
        except ValueError:
            refused = {"message": f"HTTP {error.code}"}
        return refused
    except (OSError, ValueError):
        return None


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
    runner = ProxyRunner(app, settings)
    files, needed = raise_fd_limit(settings.server.max_connections)
    if files < needed:
        log.warning("server.fd_limit_low", limit=files, needed=needed)
    try:
        await runner.setup()  # opens the cache store, starts the scheduler
    except Exception as error:
        log.error("server.startup_failed", error=f"{type(error).__name__}: {error}")
        await runner.cleanup()
        return 1
    # Everything made so far (modules, settings, the app) lives as long as the process:
    # kept out of the collector's sight, a full collection no longer walks the hundreds of
    # thousands of objects of the imports, which stalled every answer for tens of ms.
    gc.freeze()
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

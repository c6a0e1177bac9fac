"""structlog, configured once: one JSON line per event when stdout is not a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from proxy.core.headers import CREDENTIAL_HEADERS

_SECRET_KEYS = CREDENTIAL_HEADERS | {"x-pkproxy-key", "key", "token", "headers"}


def drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Defence in depth: no event may carry a credential, even if a caller slips."""
    for name in list(event):
        if name.lower().replace("_", "-") in _SECRET_KEYS or name.lower() in _SECRET_KEYS:
            del event[name]
    return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    json_output = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty(), sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger() -> Any:
    return structlog.get_logger("pkproxy")


class RequestLogPolicy:
    """Which `request.completed` events are written (`log.requests`). Every request is
    counted in the metrics whatever this says; the event keeps its name and fields.

    - all: every request;
    - sample (default): every request that went upstream, was refused or failed (status
      >= 400, local 429s included), and one cache hit in `log.sample_every`;
    - errors: only answers with status >= 400.
    """

    __slots__ = ("_every", "_hits", "_mode")

    def __init__(self, mode: str, sample_every: int) -> None:
        self._mode = mode
        self._every = max(1, sample_every)
        self._hits = 0

    def wanted(self, status: int, served_from_cache: bool) -> bool:
        if self._mode == "all" or status >= 400:
            return True
        if self._mode == "errors":
            return False
        if not served_from_cache:
            return True
        self._hits += 1
        return self._hits % self._every == 1 or self._every == 1

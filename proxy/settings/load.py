"""One frozen Settings object: embedded defaults <- TOML file <- PKPROXY_* env <- flags."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from proxy.settings.model import DEFAULTS, ConfigError, Settings
from proxy.settings.validate import build

ENV_PREFIX = "PKPROXY_"
# Short environment names that mirror the command-line flags.
ENV_ALIASES = {
    "PKPROXY_HOST": ("server", "host"),
    "PKPROXY_PORT": ("server", "port"),
    "PKPROXY_UPSTREAM": ("upstream", "url"),
    "PKPROXY_CACHE_DIR": ("cache", "directory"),
}
_ENV_IGNORED = frozenset({"PKPROXY_CONFIG"})
# What Kubernetes injects into every pod of a namespace that has a Service named "pkproxy"
# (service links, unless the pod sets enableServiceLinks: false). Only these exact shapes
# are ignored: PKPROXY_PORT=9000 stays the port, and any other unknown name is an error.
# A Service named "pkproxy-redis" (next to a pkproxy) injects the same shapes with its name.
_SERVICE_LINK_NAME = re.compile(
    r"PKPROXY(?:_[A-Z0-9]+)*_SERVICE_(?:HOST|PORT(?:_[A-Z0-9_]+)?)"  # _PORT_<NAME>: named
    r"|PKPROXY(?:_[A-Z0-9]+)*_PORT_\d+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?"
)
_SERVICE_LINK_PORT = re.compile(r"PKPROXY(?:_[A-Z0-9]+)*_PORT")
_SERVICE_LINK_URL = re.compile(r"(?:tcp|udp|sctp)://\S+:\d+")  # PKPROXY_PORT=tcp://10.0.0.1:80


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Load, merge and validate; raise ConfigError naming every problem."""
    problems: list[str] = []
    raw = copy.deepcopy(DEFAULTS)
    env = os.environ if env is None else env
    config_file = config_file or env.get("PKPROXY_CONFIG") or None
    if config_file:
        _merge(raw, _read_toml(config_file, problems), problems, config_file)
    links = sorted(name for name, value in env.items() if is_service_link(name, value))
    ours = {name: value for name, value in env.items() if name not in links}
    _merge(raw, _from_env(ours, problems), problems, "environment")
    for section, values in (overrides or {}).items():
        raw[section].update({k: v for k, v in values.items() if v is not None})
    settings = build(raw, problems)
    if problems or settings is None:
        raise ConfigError(problems)
    return dataclasses.replace(settings, ignored_env=tuple(links))


def is_service_link(name: str, value: str) -> bool:
    """A variable Kubernetes injects for a Service named pkproxy (or pkproxy-<something>),
    not a setting. A name that is a setting is never a link (PKPROXY_PORT=9000 is the port)."""
    is_setting = name in ENV_ALIASES or _env_target(name) is not None
    if not is_setting and _SERVICE_LINK_NAME.fullmatch(name):
        return True
    return bool(_SERVICE_LINK_PORT.fullmatch(name) and _SERVICE_LINK_URL.fullmatch(value))


def _read_toml(path: str, problems: list[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        problems.append(f"{path}: cannot read ({exc.strerror})")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML ({exc})")
    return {}


def _merge(
    raw: dict[str, dict[str, Any]], data: Mapping[str, Any], problems: list[str], where: str
) -> None:
    for section, values in data.items():
        if section not in raw:
            problems.append(f"{where}: unknown section [{section}]")
            continue
        if not isinstance(values, Mapping):
            problems.append(f"{where}: [{section}] must be a table")
            continue
        for key, value in values.items():
            if key not in raw[section]:
                problems.append(f"{where}: unknown key {section}.{key}")
                continue
            raw[section][key] = value


def _from_env(env: Mapping[str, str], problems: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_IGNORED:
            continue
        target = ENV_ALIASES.get(name) or _env_target(name)
        if target is None:
            problems.append(f"environment: unknown variable {name}")
            continue
        section, key = target
        parsed = _parse_env_value(DEFAULTS[section][key], value)
        if parsed is _INVALID:
            problems.append(f"environment: {name}={value[:40]!r} is not a valid value")
            continue
        out.setdefault(section, {})[key] = parsed
    return out


def _env_target(name: str) -> tuple[str, str] | None:
    rest = name[len(ENV_PREFIX) :].lower()
    for section, values in DEFAULTS.items():
        if rest.startswith(section + "_") and rest[len(section) + 1 :] in values:
            return section, rest[len(section) + 1 :]
    return None


_INVALID = object()


def _parse_env_value(default: Any, value: str) -> Any:
    try:
        if isinstance(default, bool):
            lowered = value.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                return _INVALID
            return lowered in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (list, dict)):
            parsed = json.loads(value)
            return parsed if isinstance(parsed, type(default)) else _INVALID
    except ValueError:
        return _INVALID
    return value

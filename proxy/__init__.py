"""pkproxy: a caching, rate-limit-aware reverse proxy for the PluralKit API v2."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pkproxy")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

"""pkproxy: a caching, rate-limit-aware reverse proxy for the PluralKit API v2."""

__version__ = "0.1.0"

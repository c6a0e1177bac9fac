"""Settings: the model, its validation, and loading (defaults <- TOML <- env <- flags)."""

from proxy.settings.load import load_settings
from proxy.settings.model import (
    BudgetSettings,
    CacheSettings,
    ConfigError,
    ConsumerSettings,
    ConsumerSpec,
    LogSettings,
    RedisSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
)

__all__ = [
    "BudgetSettings",
    "CacheSettings",
    "ConfigError",
    "ConsumerSettings",
    "ConsumerSpec",
    "LogSettings",
    "RedisSettings",
    "ServerSettings",
    "Settings",
    "UpstreamSettings",
    "load_settings",
]

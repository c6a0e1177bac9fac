"""The core stays pure: no I/O library and no clock is imported by it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "proxy" / "core"
FORBIDDEN = {"asyncio", "aiohttp", "diskcache", "structlog", "time", "datetime", "aiolimiter"}


@pytest.mark.parametrize("module", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_nothing_impure(module: Path) -> None:
    """Each core module imports no asyncio, aiohttp, diskcache, structlog or clock."""
    tree = ast.parse(module.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{module.name} imports {name}"

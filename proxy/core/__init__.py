"""Pure core of pkproxy: no asyncio, aiohttp, diskcache, structlog or clock imports."""

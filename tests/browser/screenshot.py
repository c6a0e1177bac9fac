"""Take the README's screenshot of the status page under traffic:
`python -m tests.browser.screenshot docs/status-page.png [seconds]`.

The fake PluralKit (the pluralkit profile, 400 members) and pkproxy run as processes
(tests/perf/harness.py); a few keyed bots poll members with Zipf-like popularity, a bulk
consumer keeps a queue, one bot runs into its quota, and another program on the same IP
spends the update bucket directly so that upstream answers 429 and that scope pauses."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import aiohttp
from playwright.async_api import async_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, VIEWPORT
from tests.perf.harness import processes

KEYS = [
    {"name": "helper-bot", "key": "helper-key-0001", "weight": 2, "priority": "interactive"},
    {"name": "logger-bot", "key": "logger-key-0001", "weight": 1},
    {"name": "exporter", "key": "export-key-0001", "weight": 1, "priority": "background"},
    {"name": "tiny-bot", "key": "tiny-key-00001", "weight": 1, "rate": 0.5, "burst": 2},
]
POPULATION = 400


async def traffic(proxy: str, fake: str, seconds: float) -> None:
    rng = random.Random(3)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(POPULATION)]
    ids = [f"m{n:05d}"[-6:] for n in range(POPULATION)]
    stop = time.monotonic() + seconds

    async def bot(session: aiohttp.ClientSession, key: str, pause: float) -> None:
        headers = {"X-PKProxy-Key": key, "User-Agent": "bot", "X-PKProxy-Max-Wait": "3000"}
        while time.monotonic() < stop:
            member = rng.choices(ids, weights)[0]
            async with session.get(f"{proxy}/v2/members/{member}", headers=headers) as r:
                await r.read()
            await asyncio.sleep(pause)

    async def exporter(session: aiohttp.ClientSession) -> None:
        headers = {"X-PKProxy-Key": "export-key-0001", "Authorization": "x"}
        n = 0
        while time.monotonic() < stop:
            n += 1
            url = f"{proxy}/v2/messages/123456789012345678?n={n}"
            async with session.get(url, headers=headers) as r:
                await r.read()

    async def writer(session: aiohttp.ClientSession) -> None:
        headers = {"X-PKProxy-Key": "logger-key-0001", "Authorization": "x"}
        while time.monotonic() < stop:
            async with session.patch(
                f"{proxy}/v2/members/abcde", data=b'{"name":"x"}', headers=headers
            ) as r:
                await r.read()
            await asyncio.sleep(0.5)

    async def other_program(session: aiohttp.ClientSession) -> None:
        """Another program on the IP spends the update bucket now and then."""
        while time.monotonic() < stop - 20:
            await asyncio.sleep(25)
            for _ in range(4):
                async with session.patch(
                    f"{fake}/v2/members/abcde", data=b"{}", headers={"User-Agent": "other"}
                ) as r:
                    await r.read()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [bot(session, "helper-key-0001", 0.15), bot(session, "logger-key-0001", 0.3)]
        tasks += [bot(session, "tiny-key-00001", 0.4), writer(session), other_program(session)]
        tasks += [exporter(session) for _ in range(12)]
        await asyncio.gather(*tasks)


async def shoot(path: str, seconds: float) -> None:
    env = {
        "PKPROXY_CONSUMERS_KEYS": json.dumps(KEYS),
        "PKPROXY_BUDGET_MAX_QUEUE": "5000",
        "PKPROXY_CACHE_DEFAULT_TTL_SECONDS": "20",
    }
    with processes("pluralkit", env, population=POPULATION) as (proxy, fake):
        load = asyncio.create_task(traffic(proxy, fake, seconds + 5))
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            await page.goto(f"{proxy}/status")
            await asyncio.sleep(seconds)
            await page.screenshot(path=path)
            await browser.close()
        await load


if __name__ == "__main__":
    asyncio.run(shoot(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 240.0))

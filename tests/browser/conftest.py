"""A real browser for the status page: Debian's chromium, driven by Playwright's async API
(the sync API cannot run inside the test's event loop). Nothing is downloaded: Playwright
launches the system's browser. Without it the tests are skipped, except in CI (CI=true),
where .ci/run installs it and a missing browser is a failure."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Request, Response, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
HAVE_CHROMIUM = Path(CHROMIUM).exists()


@dataclass
class Watched:
    """A page, and everything that went wrong in it: console errors, uncaught exceptions,
    requests that failed or were answered with an error status."""

    page: Page
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def on_response(self, response: Response) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")

    def on_failed(self, request: Request) -> None:
        self.failed.append(f"{request.failure} {request.url}")


OpenPage = Callable[..., Awaitable[Watched]]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def open_page(browser: Browser) -> OpenPage:
    """Open `url` at 1280x800 with its troubles recorded; `context` goes to new_context."""

    async def open_(url: str, **context: Any) -> Watched:
        ctx = await browser.new_context(viewport=VIEWPORT, **context)
        page = await ctx.new_page()
        watched = Watched(page)
        page.on("console", lambda m: m.type == "error" and watched.errors.append(m.text))
        page.on("pageerror", lambda e: watched.errors.append(str(e)))
        page.on("requestfailed", watched.on_failed)
        page.on("response", watched.on_response)
        page.on("request", lambda r: watched.requests.append(r.url))
        await page.goto(url)
        return watched

    return open_

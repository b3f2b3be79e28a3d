"""How the browser tests and benches run Chromium: Debian's build, fake devices, loopback WebRTC; and the
watched pages they open in it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from tests.harness.system import ARTIFACTS, CHROMIUM

CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",
]
DESKTOP = {"width": 1280, "height": 800}

# Collects CSP violations from the first moment of each page; Playwright's init
# scripts are injected by the browser, so the page's own CSP does not stop them.
RECORD_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


class Watched:
    """A page plus everything it complained about (console errors, page errors, CSP)."""

    def __init__(self, page: Page) -> None:
        self.context, self.page = page.context, page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    async def problems(self, allow: str | None = None) -> list[str]:
        csp = await self.page.evaluate("window.__cspViolations || []")
        found = self.errors + [f"csp: {v}" for v in csp]
        return [p for p in found if not (allow and re.search(allow, p))]

    # The calls tests/harness/callpage.py drives a page with, the same as Firefox's.
    async def open(self, url: str) -> None:
        await self.page.goto(url)

    async def evaluate(self, function: str, *args: Any) -> Any:
        """Call the function expression `function` in the page with `args`."""
        return await self.page.evaluate(f"(args) => ({function})(...args)", list(args))

    async def click(self, selector: str) -> None:
        await self.page.click(selector)

    async def screenshot(self, name: str) -> Path:
        """The page as tests/artifacts/`name`.png."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.page.screenshot(path=str(path))
        return path


async def watched_page(
    browser: Browser,
    viewport: dict[str, int] = DESKTOP,
    *,
    init_scripts: Iterable[str] = (),
    timeout: float | None = None,
    **options: Any,
) -> Watched:
    """A blank watched page in a context of its own that records CSP violations; then
    `init_scripts` run in each document, `timeout` (ms) replaces Playwright's default."""
    context = await browser.new_context(viewport=viewport, **options)
    if timeout is not None:
        context.set_default_timeout(timeout)
    await context.add_init_script(RECORD_CSP)
    for script in init_scripts:
        await context.add_init_script(script)
    return Watched(await context.new_page())


async def call_page(browser: Browser, **options: Any) -> Watched:
    """`watched_page` for a call page: besides errors it records call.js's warnings ("parlor:
    signaling step failed" is how a refused server offer shows), as Firefox's does."""
    watched = await watched_page(browser, **options)

    def warning(message: ConsoleMessage) -> None:
        if message.type == "warning" and message.text.startswith("parlor:"):
            watched.errors.append(f"console warning: {message.text}")

    watched.page.on("console", warning)
    return watched


async def open_page(
    browser: Browser, url: str, viewport: dict[str, int] = DESKTOP, **options: Any
) -> Watched:
    """`watched_page` (same options), gone to `url`."""
    watched = await watched_page(browser, viewport, **options)
    await watched.page.goto(url)
    return watched

"""How the browser tests run Chromium: Debian's build, fake devices, loopback WebRTC; and the
watched pages they open in it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
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


async def open_page(
    browser: Browser, url: str, viewport: dict[str, int] = DESKTOP, **options: Any
) -> Watched:
    """`watched_page` (same options), gone to `url`."""
    watched = await watched_page(browser, viewport, **options)
    await watched.page.goto(url)
    return watched


# --- the call pages (/join/{visit}, /kiosk) ---------------------------------------------------

# The tile's <video>, its MediaStream's video track, that track's receiver on
# the page's peer connection, and the receiver's inbound-rtp statistics.
REMOTE_VIDEO = """async (selector) => {
  const video = document.querySelector(selector);
  const track = video?.srcObject?.getVideoTracks?.()[0];
  if (!track) return null;
  const receiver = window.__parlorPc?.getReceivers().find((r) => r.track === track);
  let inbound = null;
  let stats = null;
  if (receiver) {
    stats = await receiver.getStats();
    stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") inbound = r; });
  }
  return {
    width: video.videoWidth,
    height: video.videoHeight,
    time: video.currentTime,
    paused: video.paused,
    framesDecoded: inbound?.framesDecoded ?? 0,
    codec: inbound && stats.get(inbound.codecId)?.mimeType || null,
  };
}"""


async def state(page: Page, value: str, timeout: float = 15_000) -> None:
    """Wait until the page's `#app` is in `value` (`preview`, `in-call`, `ended`, ...)."""
    await page.wait_for_selector(f'#app[data-state="{value}"]', timeout=timeout)


async def join_call(page: Page) -> None:
    """On a family page: through the device check, press "Join call", wait to be in the call."""
    await state(page, "preview")
    await page.wait_for_selector("#join-button:enabled", timeout=15_000)
    await page.click("#join-button")
    await state(page, "in-call")


async def remote_video(page: Page, selector: str) -> dict[str, Any] | None:
    return await page.evaluate(REMOTE_VIDEO, selector)


async def assert_plays(page: Page, selector: str, timeout: float = 15.0) -> dict[str, Any]:
    """The remote <video> shows a picture that moves: size, clock and decoded frames advance."""
    deadline = time.monotonic() + timeout
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = await remote_video(page, selector)
        if last and last["width"] > 0 and last["framesDecoded"] > 0:
            if first is None:
                first = last
            elif (
                last["time"] > first["time"] + 0.3
                and last["framesDecoded"] >= first["framesDecoded"] + 5
            ):
                assert not last["paused"]
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{selector} does not play on {page.url}: first {first}, last {last}")


async def sole_remote(page: Page) -> str:
    """The selector of the one remote participant's <video> on a call page."""
    await page.wait_for_selector(
        "figure.tile[data-participant] video.remote-video", state="attached"
    )
    ids = await page.eval_on_selector_all(
        "figure.tile[data-participant]", "els => els.map(e => e.dataset.participant)"
    )
    assert len(ids) == 1, ids
    return f'figure.tile[data-participant="{ids[0]}"] video.remote-video'

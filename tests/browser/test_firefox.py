"""The family page in Firefox ESR, through the real server and its relay.

Firefox (tests/harness/firefox.py: Debian's firefox-esr, headless, over Marionette, fake
camera and microphone) is a WebRTC stack nobody on the project wrote, and it answers the
server's re-offers in its own way: per m-line DTLS roles (`passive, passive, active,
active`), and an answer that may land before or after the DTLS handshake. So a call is
tried many times in a row, always with the kiosk already there, so that the server's
re-offer (adding the kiosk's media) follows its answer to Firefox at once: a role that
flipped in a few calls out of ten would fail here with near certainty.

What is checked is what a person would see: the remote picture plays in Firefox (size,
clock, decoded frames from `getStats`), the kiosk decodes Firefox's video, and a directive
brings the end screen with its reason. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser

from policy.rfc3339 import format_time
from signaling.kiosk import ParlorClient
from tests.browser.conftest import media_faults
from tests.conftest import Server, free_port, make_visit
from tests.harness import callpage
from tests.harness.chromium import call_page
from tests.harness.firefox import Firefox, launch_firefox
from tests.harness.system import require

pytestmark = [
    pytest.mark.browser,
    require("firefox"),
    pytest.mark.asyncio(loop_scope="module"),  # one Firefox for the module
]
LIGHT = {"size": (160, 120), "fps": 10}  # the aiortc kiosk: enough video, little CPU
JOINS = 10


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def firefox_esr() -> AsyncIterator[Firefox]:
    async with launch_firefox() as launched:
        yield launched


@pytest_asyncio.fixture(loop_scope="module")
async def firefox(firefox_esr: Firefox) -> AsyncIterator[Firefox]:
    """The module's Firefox; the test's page is left afterwards (its call ends)."""
    yield firefox_esr
    await firefox_esr.open("about:blank")


async def aiortc_kiosk(srv: Server, visit: dict) -> ParlorClient:
    kiosk = srv.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    joined = await kiosk.connect()
    assert joined["type"] == "joined", joined
    return kiosk


async def kiosk_decodes(kiosk: ParlorClient, frames: int = 10, timeout: float = 10.0) -> None:
    """The kiosk decodes `frames` more video frames from the family than it had so far."""
    await kiosk.wait_frames("video", kiosk.received.frames["video"] + frames, timeout=timeout)


async def test_every_firefox_join_to_an_aiortc_kiosk_gets_media_both_ways(
    live: Server, firefox: Firefox, caplog: pytest.LogCaptureFixture
) -> None:
    for join in range(1, JOINS + 1):
        # a kiosk of its own for each visit: a kiosk has one visit at a time
        status, _ = await live.api(
            "POST", "/api/v1/devices", {"id": f"K-FF{join}", "facility": "F1"}
        )
        assert status == 201
        visit = await make_visit(live, ["C1"], device=f"K-FF{join}")
        kiosk = await aiortc_kiosk(live, visit)
        try:
            await callpage.join_as_family(firefox, callpage.links(live.url, visit).family)
            remote = await callpage.sole_remote(firefox)
            try:
                seen = await callpage.plays(firefox, remote)
                await kiosk_decodes(kiosk)
            except (AssertionError, TimeoutError) as failure:
                await firefox.screenshot(f"firefox-join-{join}-no-media")
                raise AssertionError(f"join {join} of {JOINS}: no media both ways") from failure
            assert (seen["width"], seen["height"]) == LIGHT["size"], seen
            assert seen["codec"] == "video/VP8", seen
            assert await firefox.problems() == [], f"join {join}"
            if join == 1:
                await firefox.screenshot("firefox-family-with-aiortc-kiosk")
        finally:
            await kiosk.close()
    assert media_faults(caplog) == []


@require("chromium")
async def test_firefox_family_calls_the_kiosk_page_in_chromium(
    live: Server, firefox: Firefox, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    visit = await make_visit(live, ["C1"])
    kiosk = await call_page(browser)
    await callpage.open_kiosk(kiosk, callpage.links(live.url, visit).kiosk)
    await callpage.join_as_family(firefox, callpage.links(live.url, visit).family)
    for page in (firefox, kiosk):
        seen = await callpage.plays(page, await callpage.sole_remote(page))
        assert seen["codec"] == "video/VP8", seen
    await firefox.screenshot("firefox-family-with-chromium-kiosk")
    await kiosk.screenshot("chromium-kiosk-with-firefox-family")
    assert await firefox.problems() == []
    assert await kiosk.problems() == []
    assert media_faults(caplog) == []


async def test_suspending_the_contact_shows_the_firefox_family_why(
    live: Server, firefox: Firefox, caplog: pytest.LogCaptureFixture
) -> None:
    visit = await make_visit(live, ["C1"])
    kiosk = await aiortc_kiosk(live, visit)
    try:
        await callpage.join_as_family(firefox, callpage.links(live.url, visit).family)
        await callpage.plays(firefox, await callpage.sole_remote(firefox))
        await kiosk_decodes(kiosk)

        reason, basis = "Contraband passed on camera", "Rule 51(4) Prison Rules"
        status, directive = await live.api(
            "POST", "/api/v1/directives",
            {"scope": "contact:C1", "action": "suspend", "reason": reason, "legal_basis": basis,
             "expires_at": format_time(time.time() + 3600)},
        )  # fmt: skip
        assert status == 201, directive
        await callpage.state(firefox, "ended", timeout=2.0)
        end = await firefox.evaluate(
            """() => ({
                reason: document.querySelector("#end-reason")?.textContent ?? "",
                basis: document.querySelector("#end-legal-basis")?.textContent ?? "",
                appeal: document.querySelector("#appeal-link")?.href ?? "",
            })"""
        )
        assert reason in end["reason"], end
        assert basis in end["basis"], end
        assert end["appeal"].startswith(live.url) and directive["id"] in end["appeal"], end
        await firefox.screenshot("firefox-family-suspended")

        # contact:C1 cuts only the family: the kiosk stays in its call.
        assert kiosk.terminated is None and not kiosk.closed.is_set()
        assert await firefox.problems() == []
        assert media_faults(caplog) == []
    finally:
        await kiosk.close()


async def test_the_driver_reports_what_the_page_opened_last_complained_about(
    firefox: Firefox,
) -> None:
    """tests/harness/firefox.py's `problems()`: console errors, uncaught errors and CSP
    violations of the page opened last, and nothing from the page before it."""
    scripts = {
        "/noisy.js": 'console.error("noisy page"); setTimeout(() => { throw new Error("uncaught in page"); });',
        "/quiet.js": 'console.log("all fine"); console.warn("an ordinary warning");',
    }

    async def page(request: web.Request) -> web.Response:
        script = request.match_info["name"]
        body = f'<!doctype html><script src="/{script}.js"></script><script>inline()</script>'
        return web.Response(text=body, content_type="text/html", headers={"Content-Security-Policy": "script-src 'self'"})  # fmt: skip

    async def script(request: web.Request) -> web.Response:
        return web.Response(text=scripts[request.path], content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/page/{name}", page)
    app.router.add_get("/{name}.js", script)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await firefox.open(f"http://127.0.0.1:{port}/page/noisy")
        found = await wait_problems(firefox, count=3)
        assert any("noisy page" in p for p in found), found
        assert any("uncaught in page" in p for p in found), found
        assert any("inline script" in p and "script-src" in p for p in found), found

        await firefox.open(f"http://127.0.0.1:{port}/page/quiet")
        found = await wait_problems(firefox, count=1)
        assert len(found) == 1 and "inline script" in found[0], found  # only the CSP one
        assert await firefox.problems(allow="Content-Security-Policy") == []
    finally:
        await runner.cleanup()


async def wait_problems(firefox: Firefox, count: int, timeout: float = 5.0) -> list[str]:
    """The page's problems once there are at least `count` (Firefox reports them a little
    after the fact), and a moment longer, so that none is still on its way."""
    deadline = time.monotonic() + timeout
    while len(await firefox.problems()) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    return await firefox.problems()

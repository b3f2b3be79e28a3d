"""Real calls in real Chromium, through the real server and its relay.

The family page (`/join/{visit}`) and the kiosk page (`/kiosk`) run in one
Chromium (fake camera and microphone) against the app of tests/conftest.py,
media through the relay on 127.0.0.1. Every call here goes through the
server's re-offers: each page is sent one to add the other's media, and a late
joiner makes the relay re-offer to everybody. What is checked is what a person
would see: a remote picture that plays (size, clock, decoded frames from
`getStats`), and the end screen a directive brings.

Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser

from policy.rfc3339 import format_time
from tests.browser.conftest import media_faults, seeded_server
from tests.conftest import (
    Server,
    make_visit,
    stop_server,
)
from tests.harness import callpage
from tests.harness.chromium import Watched, call_page
from tests.harness.system import require

pytestmark = [
    pytest.mark.browser,
    require("chromium"),
    pytest.mark.asyncio(loop_scope="module"),  # one Chromium for the module
]
LIGHT = {"size": (160, 120), "fps": 10}  # the aiortc participant: enough video, little CPU


@pytest_asyncio.fixture(loop_scope="module")
async def live_h264(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await seeded_server(tmp_path, codec="H264")
    try:
        yield srv
    finally:
        await stop_server(srv)


async def start_call(
    browser: Browser, srv: Server, visit: dict[str, Any]
) -> tuple[Watched, Watched]:
    """The family joins through the device check while the kiosk joins by itself."""

    async def family() -> Watched:
        watched = await call_page(browser)
        await callpage.join_as_family(watched, callpage.links(srv.url, visit).family)
        return watched

    async def kiosk() -> Watched:
        watched = await call_page(browser)
        await callpage.open_kiosk(watched, callpage.links(srv.url, visit).kiosk)
        return watched

    return await asyncio.gather(family(), kiosk())


async def self_view_covers(page: Any) -> list[str]:
    """The remote tiles the self-view overlaps on screen (by their participant id)."""
    return await page.evaluate(
        """() => {
          const own = document.querySelector(".self-view").getBoundingClientRect();
          return [...document.querySelectorAll("figure.tile")].filter((tile) => {
            const r = tile.getBoundingClientRect();
            return own.left < r.right && r.left < own.right && own.top < r.bottom && r.top < own.bottom;
          }).map((tile) => tile.dataset.participant);
        }"""
    )


async def both_play(pages: list[Watched], selectors: list[str]) -> list[dict[str, Any]]:
    return await asyncio.gather(
        *(callpage.plays(w, sel) for w, sel in zip(pages, selectors, strict=True))
    )


async def test_family_and_kiosk_see_each_other(
    live: Server, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    visit = await make_visit(live, ["C1"])
    family, kiosk = await start_call(browser, live, visit)
    pages = [family, kiosk]
    seen = await both_play(pages, [await callpage.sole_remote(w) for w in pages])
    assert [s["codec"] for s in seen] == ["video/VP8", "video/VP8"], seen
    await family.screenshot("call-pages-family-vp8")
    await kiosk.screenshot("call-pages-kiosk-vp8")
    for watched in pages:
        assert await watched.problems() == []
    assert media_faults(caplog) == []


async def test_late_joiner_reaches_both_pages_and_old_streams_keep_playing(
    live: Server, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    visit = await make_visit(live, ["C1", "C2"])
    family, kiosk = await start_call(browser, live, visit)
    pages = [family, kiosk]
    before = [await callpage.sole_remote(w) for w in pages]
    await both_play(pages, before)

    # A third participant (aiortc, light media) joins: the relay re-offers to both pages.
    late = live.client(visit["join"]["C2"]["token"], visit["id"], **LIGHT)
    joined = await late.connect()
    try:
        assert joined["type"] == "joined", joined
        tile = f'figure.tile[data-participant="{joined["session"]}"] video.remote-video'
        seen = await both_play(pages, [tile, tile])
        assert all((s["width"], s["height"]) == LIGHT["size"] for s in seen), seen
        # What was negotiated before the re-offer still plays, both ways.
        await both_play(pages, before)
        for watched in pages:  # with two people on screen, your own picture covers neither
            assert await self_view_covers(watched.page) == [], await self_view_covers(watched.page)
        await family.screenshot("call-pages-family-three")
        await kiosk.screenshot("call-pages-kiosk-three")
        await late.wait_frames("video", count=20, timeout=10)  # it sees the pages, too
        for watched in pages:
            assert await watched.problems() == []
        assert media_faults(caplog) == []
    finally:
        await late.close()


async def test_h264_call_plays_on_both_pages(
    live_h264: Server, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    visit = await make_visit(live_h264, ["C1"])
    family, kiosk = await start_call(browser, live_h264, visit)
    pages = [family, kiosk]
    seen = await both_play(pages, [await callpage.sole_remote(w) for w in pages])
    assert [s["codec"] for s in seen] == ["video/H264", "video/H264"], seen
    await family.screenshot("call-pages-family-h264")
    await kiosk.screenshot("call-pages-kiosk-h264")
    for watched in pages:
        assert await watched.problems() == []
    assert media_faults(caplog) == []


async def test_suspending_the_contact_ends_the_family_call_only(
    live: Server, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    visit = await make_visit(live, ["C1"])
    family, kiosk = await start_call(browser, live, visit)
    await both_play([family, kiosk], [await callpage.sole_remote(w) for w in (family, kiosk)])

    reason, basis = "Contraband passed on camera", "Rule 51(4) Prison Rules"
    status, directive = await live.api(
        "POST",
        "/api/v1/directives",
        {"scope": "contact:C1", "action": "suspend", "reason": reason, "legal_basis": basis,
         "expires_at": format_time(time.time() + 3600)},
    )  # fmt: skip
    assert status == 201, directive
    issued = time.monotonic()
    await callpage.state(family, "ended", timeout=2.0)
    page = family.page
    assert time.monotonic() - issued < 2.0
    assert reason in (await page.text_content("#end-reason") or "")
    assert basis in (await page.text_content("#end-legal-basis") or "")
    assert await page.is_visible("#appeal-link")
    appeal = await page.get_attribute("#appeal-link", "href") or ""
    assert appeal.startswith(live.url) and directive["id"] in appeal, appeal
    await family.screenshot("call-pages-family-suspended")

    # The kiosk keeps its call: it takes the server's offer that retires the family's media
    # and stays in the call and connected. (Had the family joined first, the kiosk's answer
    # carried it on the kiosk's own two m-lines, which stay as they are: no offer comes.)
    await kiosk.page.wait_for_function(
        """() => { const pc = window.__parlorPc, all = pc?.getTransceivers() ?? [];
                   return pc?.signalingState === "stable" && (all.length === 2 ||
                     all.filter((t) => t.currentDirection === "inactive").length === 2); }""",
        timeout=5_000,
    )
    await asyncio.sleep(0.5)
    assert await kiosk.page.get_attribute("#app", "data-state") == "in-call"
    assert await kiosk.page.evaluate("window.__parlorPc?.connectionState") == "connected"
    await kiosk.screenshot("call-pages-kiosk-after-suspend")
    assert await kiosk.problems() == []
    assert media_faults(caplog) == []

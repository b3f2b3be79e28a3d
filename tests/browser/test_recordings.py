"""Recordings in real Chromium (SPEC §10): the family page says "This call is recorded"
before joining and during the call, and the console's player plays every side of a
recorded call, after a reason that the audit chain keeps.

The call: the family in Chromium (fake camera), the kiosk an aiortc participant.
Screenshots go to tests/artifacts/recordings-*.png.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from playwright.async_api import Browser

from tests.conftest import Server, make_visit
from tests.harness import callpage
from tests.harness.chromium import call_page
from tests.harness.chromium import open_page as open_watched
from tests.harness.system import require

pytestmark = [
    pytest.mark.browser,
    require("chromium"),
    pytest.mark.asyncio(loop_scope="module"),  # one Chromium for the module
]
LIGHT = {"size": (160, 120), "fps": 10}


async def finalized(server: Server, visit: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        status, found = await server.api(
            "GET", f"/api/v1/recordings?visit={visit}", token="auditor"
        )
        assert status == 200, found
        if found and found[0]["status"] == "finalized":
            return found[0]
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.25)


async def test_the_family_is_told_and_the_console_plays_both_sides(live: Server, browser: Browser):
    visit = await make_visit(live, ["C1"])
    kiosk = live.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    family = await call_page(browser)
    try:
        assert (await kiosk.connect())["recorded"] is True
        await family.open(callpage.links(live.url, visit).family)
        await callpage.state(family, "preview")
        notice = family.page.locator("#recorded-notice")
        assert await notice.is_visible() and await notice.inner_text() == "This call is recorded."
        await callpage.join_as_family(family, callpage.links(live.url, visit).family)
        assert await family.page.locator("#recorded-notice-call").is_visible()
        await callpage.plays(family, await callpage.sole_remote(family))
        await family.screenshot("recordings-family-in-call")
        await asyncio.sleep(3)
    finally:
        await family.context.close()
        await kiosk.leave()
    recording = await finalized(live, visit["id"])

    token = live.token("operator:sue", "supervisor")
    console = await open_watched(browser, f"{live.url}/console#token={token}", timeout=10_000)
    page = console.page
    await page.wait_for_selector('#app[data-loaded="true"]', timeout=10_000)
    await page.click("#tab-recordings")
    await page.click(f'button[data-recording="{recording["id"]}"]')
    await page.click("#recording-play")
    assert await page.locator("#recording-reason-error").is_visible()  # a reason first
    await page.fill("#recording-reason", "review of incident 7")
    await page.click("#recording-play")
    await page.wait_for_selector("#recording-video-2", timeout=10_000)
    deadline = time.monotonic() + 20
    while True:
        sides = await page.evaluate(
            """() => [...document.querySelectorAll("video.recording-video")].map((v) => ({
                 participant: v.dataset.participant, width: v.videoWidth, time: v.currentTime,
                 decoded: v.getVideoPlaybackQuality().totalVideoFrames }))"""
        )
        if all(s["width"] > 0 and s["decoded"] > 5 for s in sides):
            break
        assert time.monotonic() < deadline, sides
        await asyncio.sleep(0.2)
    assert sorted(s["participant"] for s in sides) == ["contact:C1", "device:K1"]
    assert await page.locator("#recording-timeline li").count() >= 4  # joins and leaves
    await console.screenshot("recordings-console-player")
    assert await console.problems() == []

    status, events = await live.api("GET", "/api/v1/audit?limit=5000", token="auditor")
    played = [e for e in events if e["action"] == "recording.played"]
    assert [(e["actor"], e["data"]["reason"]) for e in played] == [
        ("operator:sue", "review of incident 7")
    ]
    await console.context.close()

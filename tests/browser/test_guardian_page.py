"""A minor on the family page in real Chromium (SPEC §4 "Minors", issue #17 item 5): what
they read while they wait for their guardian, the call once the guardian (an aiortc
participant) is in it, and the countdown when the guardian leaves."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Browser

from tests.browser.conftest import media_faults
from tests.browser.test_console import card, open_console, tab, unlabelled
from tests.conftest import Server, add_minor, make_visit
from tests.harness import callpage
from tests.harness.chromium import call_page
from tests.harness.page import wait_for
from tests.harness.system import require

pytestmark = [pytest.mark.browser, require("chromium"), pytest.mark.asyncio(loop_scope="module")]

BANNER = """() => { const b = document.querySelector("#guardian-banner");
  return b && !b.hidden ? b.textContent : null; }"""
LIGHT = {"size": (160, 120), "fps": 10}  # the aiortc guardian: enough video, little CPU
MINOR_NOTICE = """() => { const n = document.querySelector("#minor-notice");
  return n && !n.hidden ? n.textContent : null; }"""
NO_BANNER = """() => document.querySelector("#guardian-banner")?.hidden === true"""


async def test_the_minor_reads_that_they_wait_for_their_guardian(
    live: Server, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    await add_minor(live, "M1", "Mia", guardians=["C1"])
    visit = await make_visit(live, ["C1", "M1"])
    page = await call_page(browser)
    await callpage.join_as_family(page, callpage.links(live.url, visit, "M1").family)
    waiting = await wait_for(page, BANNER)
    assert "Waiting for Contact 1 to join." in waiting, waiting
    assert "No video or sound is shared until then." in waiting
    await page.screenshot("guardian-waiting")

    guardian = live.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    try:
        assert (await guardian.connect())["type"] == "joined"
        await wait_for(page, NO_BANNER)
        await callpage.plays(page, await callpage.sole_remote(page))  # the guardian, on screen
        await guardian.leave()
        paused = await wait_for(page, BANNER)
        assert paused.startswith("Paused: your guardian left; the call ends in "), paused
        assert "unless Contact 1 comes back." in paused
        await asyncio.sleep(1.5)
        later = await page.evaluate(BANNER)
        seconds = [int(text.split("ends in ")[1].split(" s")[0]) for text in (paused, later)]
        assert seconds[1] < seconds[0] <= 60, (paused, later)  # it counts down
        await page.screenshot("guardian-paused")
    finally:
        await guardian.close()
    assert await page.problems() == []
    assert media_faults(caplog) == []


async def test_the_console_sets_guardians_and_flags_a_call_with_a_minor(
    live: Server, browser: Browser
) -> None:
    """Staff set a minor's guardians in the contacts view; the live calls show the visit
    with a minor."""
    await add_minor(live, "M2", "Max", guardians=[])
    watched = await open_console(browser, live, live.token("operator:alice", "operator"))
    console = watched.page
    await tab(console, "contacts")
    row = console.locator('#contact-rows tr[data-contact="M2"]')
    assert "No guardian set" in (await row.text_content() or "")
    await row.locator('[data-action="edit"]').click()
    dialog = console.locator("dialog[open]")
    await dialog.locator("#guardian-C2").check()
    assert await dialog.locator("#guardian-M1").count() == 0  # a minor is no guardian
    await dialog.locator('button[type="submit"]').click()
    await dialog.wait_for(state="detached")
    await console.wait_for_function(
        """() => document.querySelector('#contact-rows tr[data-contact="M2"] [data-guardians]')
                 ?.textContent === 'Guardians: Contact 2'"""
    )
    status, contact = await live.api("GET", "/api/v1/contacts/M2")
    assert status == 200 and contact["guardians"] == ["C2"], contact

    visit = await make_visit(live, ["C2", "M2"])
    guardian = live.client(visit["join"]["C2"]["token"], visit["id"], video=None, audio=False)
    try:
        assert (await guardian.connect(offer=False))["type"] == "joined"
        await tab(console, "calls")
        flag = console.locator(f'{card(visit)} [data-flag="minor"]')
        await flag.wait_for()
        assert await flag.text_content() == "With a minor"
        assert await unlabelled(console) == []
    finally:
        await guardian.close()


async def test_the_kiosk_is_told_a_minor_waits_for_their_guardian(
    live: Server, browser: Browser
) -> None:
    await add_minor(live, "M3", "Moe", guardians=["C3"])
    visit = await make_visit(live, ["C3", "M3"], device="K3")
    kiosk = await call_page(browser)
    await callpage.open_kiosk(kiosk, callpage.links(live.url, visit, "M3").kiosk)
    minor = live.client(visit["join"]["M3"]["token"], visit["id"], **LIGHT)
    guardian = live.client(visit["join"]["C3"]["token"], visit["id"], **LIGHT)
    try:
        assert (await minor.connect())["hold"]["state"] == "waiting"
        notice = await wait_for(kiosk, MINOR_NOTICE)
        assert notice.startswith("Moe is waiting for their guardian"), notice
        tile = "figure.tile .tile-placeholder"
        assert await kiosk.evaluate(f"() => document.querySelector({tile!r}).textContent") == (
            "Waiting for a guardian"
        )
        await kiosk.screenshot("guardian-kiosk-waiting")
        assert (await guardian.connect())["type"] == "joined"
        await wait_for(kiosk, "() => document.querySelector('#minor-notice')?.hidden === true")
    finally:
        await asyncio.gather(minor.close(), guardian.close())
    assert await kiosk.problems() == []

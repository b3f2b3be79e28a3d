"""Running a day of visitation from the console (issue #16), in real Chromium against a real
server: a day's schedule built in the console (booked, a double booking refused with the
server's message, moved, cancelled with a reason) and the family's link showing each state;
the approvals queue; a kiosk page closing turns its row offline within 30 s; a kiosk taken
out of service from its row, and the visits it affects moved or cancelled from there.

The browser runs in New York time and the server in UTC: the pages show local times.
Screenshots go to tests/artifacts/ops-*.png.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, Page

from tests.browser.test_console import open_console, open_page, tab, unlabelled
from tests.conftest import Server, make_visit
from tests.harness.system import ARTIFACTS, require

pytestmark = [pytest.mark.browser, require("chromium"), pytest.mark.asyncio(loop_scope="module")]

ZONE = "America/New_York"
LOCAL = {"timezone_id": ZONE, "locale": "en-GB"}  # en-GB: 24-hour times, day before month
QUIET = {"video": None, "audio": False}


async def shoot(page: Page, name: str, **options: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"ops-{name}.png"), **options)


def tomorrow_at(hour: int) -> datetime:
    """Tomorrow at `hour`, in the browser's time zone: the day's visits, moved by hours, stay
    on one day whatever the time of the run."""
    local = datetime.now(ZoneInfo(ZONE)) + timedelta(days=1)
    return local.replace(hour=hour, minute=0, second=0, microsecond=0)


async def visits_tab(console: Page, day: datetime) -> None:
    await tab(console, "visits")
    await console.fill("#schedule-day", day.strftime("%Y-%m-%d"))
    await console.dispatch_event("#schedule-day", "change")


async def book(console: Page, *, inmate: str, contact: str, at: datetime, minutes: int = 30,
               kiosk: str = "K1") -> Any:  # fmt: skip
    """Fill and send the Book a visit dialog; returns the dialog (open on its result or error)."""
    await console.click("#new-visit")
    dialog = console.locator("dialog[open]")
    await dialog.locator('select[name="device"]').select_option(kiosk)
    await dialog.locator('select[name="inmate"]').select_option(inmate)
    await dialog.locator(f'input[name="contacts"][value="{contact}"]').check()
    await dialog.locator('input[name="day"]').fill(at.strftime("%Y-%m-%d"))
    await dialog.locator('input[name="start"]').fill(at.strftime("%H:%M"))
    await dialog.locator('select[name="length"]').select_option(str(minutes))
    await dialog.locator('button[type="submit"]').click()
    return dialog


async def family_state(browser: Browser, url: str) -> tuple[Page, str]:
    page = (await open_page(browser, url, **LOCAL)).page
    await page.wait_for_function(
        "() => ['upcoming', 'preview', 'ended'].includes(document.getElementById('app').dataset.state)"
    )
    return page, await page.evaluate("document.getElementById('app').dataset.state")


async def test_a_days_schedule_built_in_the_console_and_what_the_family_sees(
    live: Server, browser: Browser
) -> None:
    console = (
        await open_console(browser, live, live.token("operator:alice", "operator"), **LOCAL)
    ).page
    first = tomorrow_at(9)
    await visits_tab(console, first)
    assert "North" in (await console.text_content("#schedule-title") or "")

    # Book Sam with Contact 1 at K1; the dialog answers with the visitor's link.
    dialog = await book(console, inmate="I1", contact="C1", at=first)
    link = dialog.locator('input.link-input[data-contact="C1"]')
    await link.wait_for()
    family_url = await link.input_value()
    assert re.fullmatch(rf"{re.escape(live.url)}/join/V-\w+#token=[\w.-]+", family_url)
    visit_id = family_url.split("/join/")[1].split("#")[0]
    await shoot(console, "visit-booked")
    await dialog.locator("button", has_text="Done").click()
    block = console.locator(f'.visit-block[data-visit="{visit_id}"]')
    await block.wait_for()
    assert await block.get_attribute("data-state") == "booked"
    assert first.strftime("%H:%M") in (await block.text_content() or "")  # local time, 24 h

    # A second visit at K1 ten minutes later: refused, with the server's words, in local time.
    dialog = await book(console, inmate="I1", contact="C2", at=first + timedelta(minutes=10))
    problem = dialog.locator(".form-problems")
    await problem.wait_for()
    message = await problem.text_content() or ""
    assert "Refused: kiosk K1 is booked from" in message and visit_id in message, message
    assert "5 minutes free between visits" in message
    assert first.strftime("%H:%M") in message  # the clash, in the browser's time
    assert await unlabelled(console) == []
    await shoot(console, "double-booking-refused")
    await dialog.locator("button", has_text="Cancel").click()

    # The family's link, before anything changes: upcoming, with its time.
    family, state = await family_state(browser, family_url)
    assert state == "upcoming"
    when = await family.text_content("#visit-when") or ""
    assert when.startswith(f"Tomorrow {first.strftime('%H:%M')}"), when
    assert re.fullmatch(
        r"Starts in (1 day( \d+ h)?|\d+ h( \d+ min)?|\d+ min)\.",
        await family.text_content("#visit-countdown") or "",
    )
    assert (
        await family.text_content("#visit-notice")
        == "This visit may be monitored by facility staff."
    )
    await shoot(family, "family-upcoming")

    # Move it an hour later from the list; the timeline and the list follow the event stream.
    moved_to = first + timedelta(hours=1)
    await console.click(f'#schedule-rows tr[data-visit="{visit_id}"] [data-action="move"]')
    move = console.locator("dialog[open]")
    await move.locator('input[name="start"]').fill(moved_to.strftime("%H:%M"))
    await move.locator('button[type="submit"]').click()
    await move.wait_for(state="detached")
    row = console.locator(f'#schedule-rows tr[data-visit="{visit_id}"]')
    await console.wait_for_function(
        "([id, t]) => document.querySelector(`#schedule-rows tr[data-visit='${id}']`)?.textContent.includes(t)",
        arg=[visit_id, moved_to.strftime("%H:%M")],
    )
    assert "Moved from" in (await row.text_content() or "")
    await family.reload()
    await family.wait_for_selector("#visit-moved:not([hidden])")
    assert (await family.text_content("#visit-when") or "").startswith(
        f"Tomorrow {moved_to.strftime('%H:%M')}"
    )
    assert "This visit was moved." in (await family.text_content("#visit-moved") or "")
    await shoot(family, "family-moved")

    # Cancel it with a structured reason and a note.
    await console.click(f'#schedule-rows tr[data-visit="{visit_id}"] [data-action="cancel"]')
    cancel = console.locator("dialog[open]")
    await cancel.locator('button[type="submit"]').click()  # no reason yet: the form says so
    assert "Choose why the visit is cancelled." in (
        await cancel.locator(".form-problems").text_content() or ""
    )
    await cancel.locator('input[name="reason"][value="kiosk-maintenance"]').check()
    await cancel.locator('textarea[name="note"]').fill("The screen is being replaced.")
    await shoot(console, "cancel-dialog")
    await cancel.locator('button[type="submit"]').click()
    await cancel.wait_for(state="detached")
    await console.wait_for_selector(
        f'.visit-block[data-visit="{visit_id}"][data-state="cancelled"]'
    )
    assert "Kiosk maintenance" in (await row.text_content() or "")
    await family.reload()
    await family.wait_for_selector('#app[data-state="ended"]')
    assert await family.text_content("#end-title") == "This visit was cancelled."
    assert (
        await family.text_content("#end-reason")
        == "The visiting kiosk is out of order. The screen is being replaced."
    )
    assert (await family.text_content("#end-when") or "").startswith("It was cancelled on ")

    # Two more visits make the day.
    await visits_tab(console, first)
    for contact, at in (("C2", first + timedelta(hours=2)), ("C3", first + timedelta(hours=4))):
        dialog = await book(console, inmate="I1", contact=contact, at=at)
        await dialog.locator("button", has_text="Done").click()
    await console.wait_for_function(
        "() => document.querySelectorAll('#schedule-rows tr').length === 3"
    )
    assert await console.locator(".visit-block").count() == 3
    assert await unlabelled(console) == []
    await shoot(console, "schedule-day", full_page=True)
    await shoot(family, "family-cancelled")

    # A visit whose window has passed: its link says it ended.
    ended = await make_visit(live, ["C4"], device="K3", starts_in=-60, length=61.5)
    await asyncio.sleep(max(0.0, 2.0))
    page, state = await family_state(browser, ended["join"]["C4"]["url"])
    assert state == "ended" and await page.text_content("#end-title") == "This visit has ended."
    await shoot(page, "family-ended")
    assert await console.evaluate("window.__cspViolations") == []


async def test_the_approvals_queue_and_a_withdrawal_that_ends_a_live_call(
    live: Server, browser: Browser
) -> None:
    for contact in ("C4", "C2"):
        status, body = await live.api(
            "POST", f"/api/v1/contacts/{contact}/approvals", {"inmate": "I3", "status": "pending"}
        )
        assert status == 200, body
    status, _ = await live.api("PATCH", "/api/v1/contacts/C4", {"minor": True})
    assert status == 200
    visit = await make_visit(live, ["C1"])
    family = live.client(visit["join"]["C1"]["token"], visit["id"], **QUIET)
    assert (await family.connect(offer=False))["type"] == "joined"
    try:
        watched = await open_console(
            browser, live, live.token("operator:alice", "operator"), **LOCAL
        )
        console = watched.page
        await tab(console, "contacts")
        assert await console.text_content("#count-contacts") == "(2 waiting)"
        rows = console.locator("#approval-rows tr")
        assert await rows.count() == 2
        first = rows.nth(0)  # oldest first
        assert await first.get_attribute("data-contact") == "C4"
        text = await first.text_content() or ""
        assert (
            "Contact 4" in text
            and "Minor" in text
            and "Lee" in text
            and "ago" in text
            or "now" in text
        )
        await shoot(console, "approvals-queue", full_page=True)

        await first.locator('[data-action="approve"]').click()
        dialog = console.locator("dialog[open]")
        await dialog.locator('button[type="submit"]').click()
        await dialog.wait_for(state="detached")
        await console.wait_for_function(
            "() => document.querySelectorAll('#approval-rows tr').length === 1"
        )
        await console.locator('#approval-rows tr[data-contact="C2"] [data-action="deny"]').click()
        dialog = console.locator("dialog[open]")
        await dialog.locator('button[type="submit"]').click()  # a denial needs a reason
        assert "Enter the reason." in (await dialog.locator(".form-problems").text_content() or "")
        await dialog.locator("textarea").fill("Not on the prisoner's visiting list")
        await dialog.locator('button[type="submit"]').click()
        await dialog.wait_for(state="detached")
        await console.wait_for_selector("#approvals-empty:not([hidden])")
        await console.wait_for_function(
            "() => document.querySelector('#contact-rows tr[data-contact=\"C4\"]')?.textContent.includes('Lee: Approved')"
        )

        # Contact 1's page; withdrawing the approval for Sam ends the call they are in now.
        await console.click('#contact-rows tr[data-contact="C1"] [data-action="open"]')
        page = console.locator("#contact-page")
        await page.wait_for()
        assert "Live" in (
            await page.locator(f'tr[data-visit="{visit["id"]}"]').text_content() or ""
        )
        await shoot(console, "contact-page")
        await page.locator('tr[data-inmate="I1"] [data-action="withdraw"]').click()
        decision = console.locator("dialog[open] #decision-form")
        await decision.locator("textarea").fill("Letter with threats intercepted")
        await decision.locator('button[type="submit"]').click()
        await asyncio.wait_for(family.closed.wait(), 5)
        assert (family.close_code, family.terminated["reason"]) == (4403, "approval-withdrawn")
        # The flash said the denial before: wait for the withdrawal's own answer.
        await console.wait_for_function(
            "() => document.getElementById('contacts-flash').textContent.includes('Sam')"
        )
        assert "1 call connection(s) ended" in (await console.text_content("#contacts-flash") or "")
        assert await watched.problems() == []
    finally:
        await family.close()


async def test_a_kiosk_page_closing_turns_its_row_offline_within_30_seconds(
    live: Server, browser: Browser
) -> None:
    """The default heartbeat (10 s): a clean close shows one beat later, a silent kiosk at
    2.5 beats; both within 30 s."""
    console = (
        await open_console(browser, live, live.token("operator:alice", "operator"), **LOCAL)
    ).page
    await tab(console, "kiosks")
    row = '#kiosk-rows tr[data-device="K3"]'
    assert await console.get_attribute(row, "data-presence") == "unknown"
    kiosk = await open_page(
        browser, f"{live.url}/kiosk#token={live.token('device:K3', 'kiosk')}", **LOCAL
    )
    await kiosk.page.wait_for_selector('#app[data-presence="online"]')
    await console.wait_for_selector(f'{row}[data-presence="online"]', timeout=5_000)
    assert "Online" in (await console.text_content(row) or "")
    await shoot(console, "kiosk-online")

    await kiosk.context.close()
    closed = time.monotonic()
    await console.wait_for_selector(f'{row}[data-presence="offline"]', timeout=30_000)
    took = time.monotonic() - closed
    print(f"kiosk offline in the console {took:.1f} s after its page closed")
    assert took < 30
    text = await console.text_content(row) or ""
    assert "Offline" in text and "ago" in text or "now" in text
    assert "offline" in (await console.text_content("#count-kiosks") or "")
    await shoot(console, "kiosk-offline")


async def test_taking_a_kiosk_out_of_service_from_its_row(live: Server, browser: Browser) -> None:
    soon = await make_visit(live, ["C1"], starts_in=3600, length=1800)
    later = await make_visit(live, ["C2"], starts_in=3 * 3600, length=1800)
    elsewhere = await make_visit(live, ["C3"], device="K3", starts_in=3600, length=1800)
    watched = await open_console(browser, live, live.token("operator:alice", "operator"), **LOCAL)
    console = watched.page
    await tab(console, "kiosks")
    await console.click('#kiosk-rows tr[data-device="K1"] [data-action="out-of-service"]')
    dialog = console.locator("dialog[open]")
    assert await dialog.locator('input[name="scope"][value="device:K1"]').is_checked()
    assert await dialog.locator('input[name="action"][value="suspend"]').is_checked()
    await dialog.locator('textarea[name="reason"]').fill("Screen cracked; awaiting repair")
    await dialog.locator('input[name="legal_basis"]').fill("Facility equipment policy 4.2")
    await dialog.locator('select[name="duration"]').select_option("86400")
    await shoot(console, "out-of-service-dialog")
    await dialog.locator('button[type="submit"]').click()

    affected = console.locator("dialog[open] #affected-table")
    await affected.wait_for()
    listed = await affected.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.visit)"
    )
    assert listed == [soon["id"], later["id"]]  # K3's visit is not affected
    await shoot(console, "out-of-service-affected")

    # Move the first to K3 at the same time? K3 is booked then: the refusal says so.
    await affected.locator(f'tr[data-visit="{soon["id"]}"] [data-action="move"]').click()
    move = console.locator("dialog[open]").last
    await move.locator('select[name="device"]').select_option("K3")
    await move.locator('button[type="submit"]').click()
    problem = move.locator(".form-problems")
    await problem.wait_for()
    assert elsewhere["id"] in (await problem.text_content() or "")
    # An hour later at K3 instead.
    start = datetime.fromisoformat(soon["starts_at"].replace("Z", "+00:00")).astimezone(
        ZoneInfo(ZONE)
    )
    moved = start + timedelta(hours=1)  # may be past midnight in the facility's zone
    await move.locator('input[name="day"]').fill(moved.strftime("%Y-%m-%d"))
    await move.locator('input[name="start"]').fill(moved.strftime("%H:%M"))
    await move.locator('button[type="submit"]').click()
    await console.wait_for_function("() => document.querySelectorAll('dialog[open]').length === 1")
    await console.wait_for_function(
        "id => !document.querySelector(`#affected-table tr[data-visit='${id}']`)", arg=soon["id"]
    )
    # Cancel the other (kiosk maintenance).
    await console.locator(
        f'#affected-table tr[data-visit="{later["id"]}"] [data-action="cancel"]'
    ).click()
    cancel = console.locator("dialog[open]").last
    await cancel.locator('input[name="reason"][value="kiosk-maintenance"]').check()
    await cancel.locator('button[type="submit"]').click()
    await console.wait_for_selector("#affected-empty")
    await console.locator("dialog[open] button", has_text="Done").click()

    row = console.locator('#kiosk-rows tr[data-device="K1"]')
    await console.wait_for_function(
        "() => document.querySelector('#kiosk-rows tr[data-device=\"K1\"]')?.textContent.includes('Out of service')"
    )
    assert "Booked visits" in (await row.text_content() or "")
    await shoot(console, "kiosks-out-of-service")
    _, moved = await live.api("GET", f"/api/v1/visits/{soon['id']}")
    _, cancelled = await live.api("GET", f"/api/v1/visits/{later['id']}")
    assert (moved["device"], cancelled["status"]) == ("K3", "cancelled")
    assert cancelled["cancellation"]["reason"] == "kiosk-maintenance"
    assert await watched.problems(allow="status of 409") == []  # the refused move, and only it

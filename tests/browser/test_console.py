"""The operator console, the family's appeal page and silent monitoring, in real Chromium
against a real Parlor server, with real aiortc participants (signaling.kiosk.ParlorClient).

What is checked is what staff and families see, and what it does on the server: a call
appears on the grid within 2 s, a suspension issued from the grid ends exactly the
contact's sessions (close 4403) and the family page shows why, the appeal reaches the
console's queue live, a facility stop counts down to its lapse until a second supervisor
confirms it, and a monitor receives a social call's video.

Screenshots go to tests/artifacts/console-*.png.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from tests.conftest import (
    Server,
    make_visit,
)
from tests.harness.chromium import Watched
from tests.harness.chromium import open_page as open_watched
from tests.harness.system import require

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
LIGHT = {"size": (160, 120), "fps": 10}  # aiortc participants: enough video, little CPU

pytestmark = [
    pytest.mark.browser,
    require("chromium"),
    pytest.mark.asyncio(loop_scope="module"),  # one Chromium for the module
]


async def open_page(browser: Browser, url: str, **options: Any) -> Watched:
    """A watched page (tests/browser/chromium.py) whose waits give up after 10 s."""
    return await open_watched(browser, url, timeout=10_000, **options)


async def open_console(browser: Browser, srv: Server, token: str, **options: Any) -> Watched:
    watched = await open_page(browser, f"{srv.url}/console#token={token}", **options)
    await watched.page.wait_for_selector('#app[data-loaded="true"]', timeout=5_000)
    await watched.page.wait_for_selector('#live-status[data-phase="live"]', timeout=5_000)
    return watched


async def shoot(page: Page, name: str, **options: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), **options)


def card(visit: dict[str, Any]) -> str:
    return f'article.call-card[data-visit="{visit["id"]}"]'


async def tab(page: Page, name: str) -> None:
    await page.click(f"#tab-{name}")
    await page.wait_for_selector(f"#panel-{name}:not([hidden])")


async def unlabelled(page: Page) -> list[str]:
    """Visible controls without an accessible name (label, text, aria-label)."""
    return await page.evaluate(
        """[...document.querySelectorAll('button, select, input, textarea')]
             .filter(el => el.getClientRects().length)
             .filter(el => !el.labels?.length && !el.textContent.trim() && !el.getAttribute('aria-label')
                           && !el.getAttribute('aria-labelledby'))
             .map(el => el.outerHTML.slice(0, 100))"""
    )


async def no_horizontal_scroll(page: Page) -> bool:
    return await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


# --- the grid, a targeted suspension, the family's notice and appeal -------------------------------


async def test_grid_suspend_contact_family_notice_and_appeal(
    live: Server, browser: Browser
) -> None:
    # V1: Sam (I1) at kiosk K1 with Contact 1 and Contact 2; V2: Lee (I3) at K3 with Contact 1.
    v1 = await make_visit(live, ["C1", "C2"])
    v2 = await make_visit(live, ["C1"], inmate="I3", device="K3")
    alice = live.token("operator:alice", "operator")
    console = await open_console(browser, live, alice)
    page = console.page
    assert page.url == f"{live.url}/console"  # the token left the address bar
    assert await page.evaluate("sessionStorage.getItem('parlor.token.console')") == alice
    assert "operator:alice" in (await page.text_content("#who") or "")
    await page.wait_for_selector("#calls-empty:not([hidden])")

    kiosk = live.client(v1["join"]["device"]["token"], v1["id"], **LIGHT)
    contact = live.client(v1["join"]["C1"]["token"], v1["id"], **LIGHT)
    clients = [kiosk, contact]
    family = None
    try:
        assert (await kiosk.connect())["type"] == "joined"
        assert (await contact.connect())["type"] == "joined"
        joined_at = time.monotonic()
        await page.wait_for_selector(f'{card(v1)} li[data-contact="C1"]', timeout=2_000)
        assert time.monotonic() - joined_at < 2.0
        text = await page.text_content(card(v1)) or ""
        for expected in (
            "Sam",
            "North (F1)",
            "Kiosk K1",
            "Contact 1",
            "Social",
            "Time left",
            "Contact 2",
        ):
            assert expected in text, (expected, text)
        countdown = await page.text_content(f"{card(v1)} [data-ends-at]")
        assert re.fullmatch(r"\d+:\d\d(:\d\d)?", countdown or ""), countdown

        # Contact 1 also joins V2 from a browser: the family's call page.
        family = await open_page(browser, v2["join"]["C1"]["url"])
        await family.page.wait_for_selector('#app[data-state="preview"]', timeout=10_000)
        await family.page.wait_for_selector("#join-button:not([disabled])", timeout=10_000)
        await family.page.click("#join-button")
        await family.page.wait_for_selector('#app[data-state="in-call"]', timeout=10_000)
        await page.wait_for_selector(f'{card(v2)} li[data-contact="C1"]', timeout=2_000)
        assert await page.text_content("#count-calls") == "(2)"

        # The facility filter.
        await page.select_option("#facility-filter", "F2")
        await page.wait_for_selector("#calls-empty:not([hidden])")
        assert await page.locator("article.call-card").count() == 0
        await page.select_option("#facility-filter", index=0)
        await page.wait_for_selector(card(v1))
        await shoot(page, "grid")
        assert await unlabelled(page) == []

        # The Suspend dialog offers exactly this call's scopes and refuses missing fields.
        await page.click(f'{card(v1)} [data-action="suspend"]')
        dialog = page.locator("dialog[open]")
        offered = await dialog.locator('input[name="scope"]').evaluate_all(
            "els => els.map(e => e.value)"
        )
        assert offered == [
            "contact:C1", "pair:I1:C1", "contact:C2", "pair:I1:C2",
            f"visit:{v1['id']}", "inmate:I1", "device:K1",
        ]  # fmt: skip
        assert await unlabelled(page) == []
        assert "null" not in (await dialog.text_content() or "")  # no absent part written as text
        await dialog.locator('button[type="submit"]').click()
        problems = dialog.locator(".form-problems")
        await problems.wait_for()
        for message in ("Choose who it applies to.", "Choose what happens.", "Enter the reason.",
                        "Enter the legal basis.", "Choose how long it lasts."):  # fmt: skip
            assert message in (await problems.text_content() or "")
        # Focus moved to the first problem.
        assert await page.evaluate("document.activeElement.value") == "contact:C1"

        await dialog.locator('input[value="contact:C1"]').check()
        await dialog.locator('input[name="action"][value="suspend"]').check()
        await dialog.locator('textarea[name="reason"]').fill("Threats made during the call")
        await dialog.locator('input[name="legal_basis"]').fill("Rule 34(2)")
        await dialog.locator('select[name="duration"]').select_option("7200")
        assert "2 hours" in (await dialog.locator(".until").text_content() or "")
        await shoot(page, "suspend-dialog")
        await dialog.locator('button[type="submit"]').click()
        issued_at = time.monotonic()

        # Contact 1's aiortc session in V1 ends with 4403; the kiosk's goes on.
        await asyncio.wait_for(contact.closed.wait(), 2.0)
        assert contact.close_code == 4403
        assert contact.terminated and contact.terminated["directive"]["legal_basis"] == "Rule 34(2)"
        assert not kiosk.closed.is_set()

        # The family page (Contact 1 in V2) says why, with the legal basis and an appeal link.
        fp = family.page
        await fp.wait_for_selector(
            "#end-legal-basis", timeout=max(0.1, 2.0 - (time.monotonic() - issued_at)) * 1000
        )
        assert await fp.text_content("#end-title") == "This call was stopped by facility staff."
        assert await fp.text_content("#end-reason") == "Threats made during the call"
        assert await fp.text_content("#end-legal-basis") == "Rule 34(2)"
        assert await fp.text_content("#end-expires")
        href = await fp.get_attribute("#appeal-link", "href")
        # the link carries the family's own appeal token in its fragment (it outlives the visit)
        link = re.fullmatch(rf"{re.escape(live.url)}/appeal/(D-[\w-]+)#token=[\w.-]+", href or "")
        assert link, href
        directive_id = link.group(1)
        await shoot(fp, "family-stopped")

        # The console: the dialog closed, the result is reported, the grid follows.
        await page.wait_for_selector("dialog[open]", state="detached")
        flash = await page.text_content("#calls-flash")
        assert directive_id in (flash or "") and "2 sessions ended" in (flash or ""), flash
        await page.wait_for_selector(
            f'{card(v1)} li[data-contact="C1"]', state="detached", timeout=2_000
        )
        await page.wait_for_selector(card(v2), state="detached", timeout=2_000)
        assert "Sam (kiosk K1)" in (await page.text_content(card(v1)) or "")

        # The family appeals from the end screen's link, in the same tab (the token is in sessionStorage).
        await fp.click("#appeal-link")
        await fp.wait_for_selector('#app[data-state="ready"]')
        assert directive_id in (await fp.text_content("#directive-ref") or "")
        await fp.click("#appeal-submit")
        assert "Please write why" in (await fp.text_content("#appeal-text-error") or "")
        words = "I did not threaten anyone. My brother can confirm what was said."
        await fp.fill("#appeal-text", words)
        assert (await fp.text_content("#appeal-count") or "").startswith(f"{len(words)} of 2,000")
        await shoot(fp, "appeal-form")
        assert await unlabelled(fp) == []
        await fp.click("#appeal-submit")
        await fp.wait_for_selector('#app[data-state="sent"]', timeout=5_000)
        done = await fp.text_content("#appeal-done") or ""
        received = re.search(r"Your appeal was received \(reference (A-[\w-]+)\)", done)
        assert received, done
        appeal_id = received.group(1)
        await shoot(fp, "appeal-sent")
        assert await family.problems() == []

        # ... and it reaches the console's queue live, through the event stream.
        await page.wait_for_function(
            "() => document.getElementById('count-appeals').textContent === '(1)'", timeout=2_000
        )
        await tab(page, "appeals")
        appeal_card = page.locator(f'article[data-appeal="{appeal_id}"]')
        await appeal_card.wait_for(timeout=2_000)
        assert "My brother can confirm" in (await appeal_card.text_content() or "")
        assert "Rule 34(2)" in (await appeal_card.text_content() or "")
        # Alice issued the directive, so the server refuses her decision: its message is shown.
        await appeal_card.locator('input[value="uphold"]').check()
        await appeal_card.locator('textarea[data-role="note"]').fill("Recording reviewed")
        await appeal_card.locator('button[type="submit"]').click()
        await appeal_card.locator(".form-problems:not([hidden])").wait_for()
        assert "someone other than the directive's issuer" in (
            await appeal_card.locator(".form-problems").text_content() or ""
        )
        await shoot(page, "appeals")
        assert await unlabelled(page) == []
        # Another operator decides it (here through the API): the card leaves the queue live.
        status, _ = await live.api(
            "POST", f"/api/v1/appeals/{appeal_id}/decide", {"decision": "uphold", "note": "Recording reviewed"},
            token=live.token("operator:bob", "operator"),
        )  # fmt: skip
        assert status == 200
        await appeal_card.wait_for(state="detached", timeout=2_000)
        await page.wait_for_selector("#appeals-empty:not([hidden])")

        # Contact 2's link was not affected: the appeal page says so in plain words.
        # A new tab (its own sessionStorage) with Contact 2's V1 link.
        other = Watched(await family.context.new_page())
        await other.page.goto(f"{live.url}/appeal/{directive_id}#token={v1['join']['C2']['token']}")
        await other.page.wait_for_selector('#app[data-state="ready"]')
        await other.page.fill("#appeal-text", "Please let my brother call again.")
        await other.page.click("#appeal-submit")
        await other.page.wait_for_selector('#app[data-state="refused"]')
        assert (
            await other.page.text_content("#appeal-problem")
            == "This decision did not apply to your link."
        )
        assert await other.page.is_hidden("#appeal-form")  # trying again cannot help
        assert directive_id in (await other.page.text_content("#appeal-next") or "")
        await shoot(other.page, "appeal-not-affected")

        # The directive list and the audit log show what happened.
        await tab(page, "directives")
        row = page.locator(f'tr[data-directive="{directive_id}"]')
        assert "contact:C1" in (await row.text_content() or "")
        assert "2 session(s) ended" in (await row.text_content() or "")
        await tab(page, "audit")
        await page.wait_for_selector('#audit-rows tr[data-action="appeal.decided"]', timeout=2_000)
        first = await page.locator("#audit-rows tr").first.get_attribute("data-action")
        assert first == "appeal.decided"  # newest first
        # Allowed: the refused decision, the refused appeal.
        assert await console.problems(allow="status of 403") == []
        assert await other.problems(allow="status of 403") == []
    finally:
        for client in clients:
            await client.close()


# --- the facility stop and the second supervisor --------------------------------------------------


async def test_facility_stop_counts_down_until_a_second_supervisor_confirms(
    live: Server, browser: Browser
) -> None:
    sue = live.token("operator:sue", "supervisor")
    tom = live.token("operator:tom", "supervisor")
    first = await open_console(browser, live, sue)
    page = first.page

    await page.click("#kill-switch")
    dialog = page.locator("dialog[open]")
    assert await dialog.locator('input[name="scope"]').evaluate_all("els => els.map(e => e.value)") == [
        "facility:F1", "facility:F2", "system",
    ]  # fmt: skip
    await dialog.locator('input[value="facility:F2"]').check()
    await dialog.locator('input[name="action"][value="suspend"]').check()
    await dialog.locator('textarea[name="reason"]').fill("Disturbance in the South visiting hall")
    await dialog.locator('input[name="legal_basis"]').fill("Emergency order 7")
    await dialog.locator('select[name="duration"]').select_option("custom")
    await dialog.locator('input[name="custom_amount"]').fill("3")
    await dialog.locator('select[name="custom_unit"]').select_option("3600")
    assert "Type the facility id (F2) to confirm" in (
        await dialog.locator("label", has_text="Type").text_content() or ""
    )
    await dialog.locator('input[name="confirm"]').fill("F1")
    await shoot(page, "facility-stop-dialog")
    await dialog.locator('button[type="submit"]').click()
    assert "Type F2 exactly to confirm." in (
        await dialog.locator(".form-problems").text_content() or ""
    )
    status, directives = await live.api("GET", "/api/v1/directives")
    assert directives == []  # nothing was issued

    await dialog.locator('input[name="confirm"]').fill("F2")
    await dialog.locator('button[type="submit"]').click()
    warning = dialog.locator("#lapse-warning")
    await warning.wait_for(timeout=5_000)
    assert (
        await warning.text_content()
        == "This will lapse in 15 minutes unless a second supervisor confirms it."
    )
    await shoot(page, "facility-stop-issued")
    await dialog.locator("button", has_text="Close").click()

    status, directives = await live.api("GET", "/api/v1/directives")
    (directive,) = directives
    assert directive["scope"] == "facility:F2" and directive["confirmed_by"] is None

    await tab(page, "directives")
    row = page.locator(f'tr[data-directive="{directive["id"]}"]')
    await row.locator(".lapse-countdown").wait_for()
    before = await row.locator(".lapse-countdown").text_content()
    await page.wait_for_function(
        "before => document.querySelector('.lapse-countdown').textContent !== before",
        arg=before,
        timeout=3_000,
    )  # it counts down
    after = await row.locator(".lapse-countdown").text_content()
    assert re.fullmatch(r"1[45]:\d\d", after or ""), after
    assert "(1 · 1 to confirm)" == await page.text_content("#count-directives")

    # The issuer cannot confirm her own broad directive: the API's refusal is shown.
    await row.locator('button[data-action="confirm"]').click()
    await row.locator(".row-error").wait_for()
    assert "second, different supervisor" in (await row.locator(".row-error").text_content() or "")
    await shoot(page, "directives-unconfirmed")

    # The event stream drops (network loss); an event happens meanwhile; the console catches up.
    await page.evaluate("window.__parlorConsole.events.drop()")
    await page.wait_for_selector('#live-status[data-phase="reconnecting"]', timeout=2_000)
    status, _ = await live.api(
        "POST", "/api/v1/inmates", {"id": "I9", "facility": "F1", "name": "Kim"}
    )
    assert status == 201
    await page.wait_for_selector('#live-status[data-phase="live"]', timeout=5_000)

    # A second supervisor confirms it from another console.
    second = await open_console(browser, live, tom)
    await tab(second.page, "directives")
    other_row = second.page.locator(f'tr[data-directive="{directive["id"]}"]')
    await other_row.locator('button[data-action="confirm"]').click()
    await other_row.locator("text=Confirmed by operator:tom").wait_for(timeout=2_000)
    # ... and the first console follows live: no countdown, no Confirm button.
    await row.locator("text=Confirmed by operator:tom").wait_for(timeout=2_000)
    assert await row.locator(".lapse-countdown").count() == 0
    assert await row.locator('button[data-action="confirm"]').count() == 0
    assert "(1)" == await page.text_content("#count-directives")
    await shoot(page, "directives-confirmed")

    # The missed event arrived too, in order: the audit log has no gap.
    await tab(page, "audit")
    await page.wait_for_selector('#audit-rows tr[data-action="directive.confirmed"]', timeout=2_000)
    seqs = [
        int(s)
        for s in await page.locator("#audit-rows tr").evaluate_all(
            "rows => rows.map(r => r.dataset.seq)"
        )
    ]
    assert seqs == list(range(seqs[0], seqs[0] - len(seqs), -1)), seqs
    assert (
        await page.locator('#audit-rows tr[data-action="inmate.created"]', has_text="I9").count()
        == 1
    )
    await page.click("#verify-chain")
    await page.wait_for_selector('#verify-result[data-ok="true"]', timeout=5_000)
    assert "Chain intact" in (await page.text_content("#verify-result") or "")
    await shoot(page, "audit")

    # The second supervisor lifts it, with a reason; the first console shows it lifted.
    await other_row.locator('button[data-action="lift"]').click()
    lift = second.page.locator("dialog[open]")
    await lift.locator('button[type="submit"]').click()
    assert "Enter why" in (await lift.locator(".form-problems").text_content() or "")
    await lift.locator("textarea").fill("Hall cleared and calm")
    await lift.locator('button[type="submit"]').click()
    await lift.wait_for(state="detached")
    await tab(page, "directives")
    await page.wait_for_selector(f'tr[data-directive="{directive["id"]}"][data-status="lifted"]')
    assert "Hall cleared and calm" in (await row.text_content() or "")
    assert "(0)" == await page.text_content("#count-directives")
    # Allowed: the dropped socket, and the refused confirmation.
    assert await first.problems(allow="WebSocket|status of 403") == []
    assert await second.problems() == []


# --- silent monitoring, the auditor, 200% zoom ------------------------------------------------------


async def test_monitor_plays_a_social_call_and_privileged_calls_cannot_be_monitored(
    live: Server, browser: Browser
) -> None:
    social = await make_visit(live, ["C1"])
    privileged = await make_visit(live, ["D1"], inmate="I2", device="K2", kind="privileged")
    clients = [
        live.client(social["join"]["device"]["token"], social["id"], **LIGHT),
        live.client(social["join"]["C1"]["token"], social["id"], **LIGHT),
        live.client(privileged["join"]["device"]["token"], privileged["id"], **LIGHT),
    ]
    try:
        for client in clients:
            assert (await client.connect())["type"] == "joined"
        console = await open_console(browser, live, live.token("operator:alice", "operator"))
        page = console.page
        await page.wait_for_selector(card(social))
        await page.wait_for_selector(card(privileged))
        assert "Privileged" in (await page.text_content(card(privileged)) or "")
        assert "Never monitored" in (await page.text_content(card(privileged)) or "")
        assert await page.locator(f'{card(privileged)} [data-action="monitor"]').count() == 0

        await page.click(f'{card(social)} [data-action="monitor"]')
        await page.wait_for_selector("#monitor:not([hidden])")
        await page.wait_for_function(
            "() => [...document.querySelectorAll('#monitor video')].some(v => v.videoWidth > 0)",
            timeout=10_000,
        )
        times = []
        for _ in range(2):
            times.append(
                await page.evaluate(
                    "Math.max(...[...document.querySelectorAll('#monitor video')].map(v => v.videoWidth > 0 ? v.currentTime : 0))"
                )
            )
            await page.wait_for_timeout(700)
        assert times[1] > times[0] > 0, times
        assert await page.locator("#monitor video").count() == 2  # Sam and Contact 1
        # The monitor is on the grid for staff, and silent for the participants.
        await page.wait_for_selector(f"{card(social)} .badge--monitored", timeout=2_000)
        assert not any(m.get("type") == "participant-joined" for m in clients[1].messages)
        await shoot(page, "monitor")

        await page.click("#monitor-stop")
        await page.wait_for_selector("#monitor", state="hidden")
        await page.wait_for_selector(
            f"{card(social)} .badge--monitored", state="detached", timeout=2_000
        )
        assert await console.problems() == []

        # 200% zoom of a 1280x800 window lays out like a 640x400 one: nothing cut off sideways.
        await page.set_viewport_size({"width": 640, "height": 400})
        assert await no_horizontal_scroll(page)
        await shoot(page, "zoom200-grid")
        await page.click(f'{card(social)} [data-action="suspend"]')
        assert await no_horizontal_scroll(page)
        await shoot(page, "zoom200-suspend-dialog")
        await page.keyboard.press("Escape")  # the dialog closes from the keyboard
        await page.wait_for_selector("dialog", state="detached")
        await tab(page, "directives")
        assert await no_horizontal_scroll(page)

        # An auditor sees everything and can change nothing.
        auditor = await open_console(browser, live, live.token("auditor:ann", "auditor"))
        ap = auditor.page
        await ap.wait_for_selector(card(social))
        assert "Auditor (read-only)" in (await ap.text_content("#who") or "")
        for selector in (
            '[data-action="monitor"]',
            '[data-action="end"]',
            '[data-action="suspend"]',
            "#kill-switch",
        ):
            assert await ap.locator(selector).count() == 0, selector
        await tab(ap, "audit")
        await ap.wait_for_selector('#audit-rows tr[data-action="session.started"]')
        await tab(ap, "report")
        await ap.wait_for_selector("#report-totals")
        await shoot(ap, "auditor-report")
        assert await auditor.problems() == []
    finally:
        for client in clients:
            await client.close()


# --- sign-in and End call ----------------------------------------------------------------------------


async def test_sign_in_form_and_end_call(live: Server, browser: Browser) -> None:
    visit = await make_visit(live, ["C2"])
    watched = await open_page(browser, f"{live.url}/console")
    page = watched.page
    await page.wait_for_selector('#app[data-state="signed-out"]')
    assert await page.evaluate("document.activeElement.id") == "token-input"
    await page.fill("#token-input", live.token("contact:C1", "family", visit=visit["id"]))
    await page.click("#sign-in-button")
    assert "not for staff" in (await page.text_content("#sign-in-problem") or "")
    await shoot(page, "sign-in")

    # A token the server rejects (wrong signature) sends the console back to the form.
    forged = live.token("operator:mallory", "operator")[:-4] + "AAAA"
    await page.fill("#token-input", forged)
    await page.click("#sign-in-button")
    await page.wait_for_selector(
        '#app[data-state="signed-out"] #sign-in-problem:not([hidden])', timeout=5_000
    )
    assert "not accepted" in (await page.text_content("#sign-in-problem") or "")

    await page.fill("#token-input", live.token("operator:olga", "operator"))
    await page.keyboard.press("Enter")
    await page.wait_for_selector('#app[data-loaded="true"]')

    kiosk = live.client(visit["join"]["device"]["token"], visit["id"], video=None)
    try:
        assert (await kiosk.connect())["type"] == "joined"
        await page.wait_for_selector(card(visit), timeout=2_000)
        await page.click(f'{card(visit)} [data-action="end"]')
        await page.click("#end-confirm")
        await asyncio.wait_for(kiosk.closed.wait(), 2.0)
        assert kiosk.close_code == 4403
        await page.wait_for_selector(card(visit), state="detached", timeout=2_000)
    finally:
        await kiosk.close()
    # Keyboard: the tabs follow the arrow keys.
    await page.focus("#tab-calls")
    await page.keyboard.press("ArrowRight")
    assert await page.evaluate("document.activeElement.id") == "tab-visits"
    assert await page.is_visible("#panel-visits")
    assert await watched.problems(allow="401") == []


# --- one operator cannot keep a broad scope stopped; appeals stay one per person ---------------


async def send_broad_stop(dialog: Any, facility: str, reason: str) -> None:
    """Fill the facility stop dialog, its scope chosen already, for a 2-hour suspension of
    `facility`, and send it."""
    await dialog.locator('input[name="action"][value="suspend"]').check()
    await dialog.locator('textarea[name="reason"]').fill(reason)
    await dialog.locator('input[name="legal_basis"]').fill("Emergency order 7")
    await dialog.locator('select[name="duration"]').select_option("7200")
    await dialog.locator('input[name="confirm"]').fill(facility)
    await dialog.locator('button[type="submit"]').click()


async def test_a_broad_stop_past_the_scopes_unconfirmed_time_is_refused_in_plain_words(
    tmp_path: Path, browser: Browser
) -> None:
    """Issue #15, item 2: the dialog says how much unconfirmed time a scope has left today
    before sending, and shows the server's refusal (422 `confirmation-required`) as it is."""
    from dataclasses import replace

    from policy.service import Rules
    from tests.browser.conftest import seeded_server
    from tests.cluster.conftest import directive_body
    from tests.conftest import stop_server

    # A 30 s window: a stop lifted at once has spent part of F2's, and what is left is too
    # short for a second supervisor to act (the minimum is the window itself here).
    srv = await seeded_server(tmp_path, rules=replace(Rules(), confirm_window_seconds=30.0))
    try:
        sue = srv.token("operator:sue", "supervisor")
        status, first = await srv.api(
            "POST", "/api/v1/directives", directive_body("facility:F2"), token=sue
        )
        assert status == 201, first
        status, _ = await srv.api(
            "POST", f"/api/v1/directives/{first['id']}/lift", {"reason": "wrong hall"}, token=sue
        )
        assert status == 200

        console = await open_console(browser, srv, sue)
        page = console.page
        await page.click("#kill-switch")
        dialog = page.locator("dialog[open]")
        await dialog.locator('input[value="facility:F1"]').check()
        left = dialog.locator("#coverage-left")
        await left.wait_for()
        assert "facility:F1 can be restricted for 30 seconds more today" in (
            await left.text_content() or ""
        )

        await dialog.locator('input[value="facility:F2"]').check()
        refused = dialog.locator("#coverage-refused")
        await refused.wait_for()
        words = await refused.text_content() or ""
        assert "facility:F2 has been restricted" in words and "needs a confirmation first" in words
        await shoot(page, "broad-stop-coverage-refused")
        assert "null" not in (await dialog.text_content() or "")

        # Sent anyway: the server refuses it, and its message is shown as it is.
        await send_broad_stop(dialog, "F2", "Disturbance again")
        problems = dialog.locator(".form-problems:not([hidden])")
        await problems.wait_for()
        shown = await problems.text_content() or ""
        assert await problems.evaluate(
            "el => { const r = el.getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight; }"
        ), "the refusal is out of sight"
        status, body = await srv.api(
            "POST", "/api/v1/directives", directive_body("facility:F2"), token=sue
        )
        assert (status, body["error"]["code"]) == (422, "confirmation-required")
        assert body["error"]["message"].split(" Without one")[0] in shown
        assert [d["id"] for d in (await srv.api("GET", "/api/v1/directives"))[1]] == [first["id"]]
        await shoot(page, "broad-stop-refused")
        assert await console.problems(allow="status of 422") == []
    finally:
        await stop_server(srv)


async def test_past_the_scopes_time_a_second_supervisor_starts_the_stop_and_the_call_ends(
    tmp_path: Path, browser: Browser
) -> None:
    """The way out of a refusal: the dialog offers to ask a second supervisor; the request
    stops nothing, is listed as waiting, and when another supervisor confirms it from their
    console the call in that facility ends (4403) and both consoles show it in force."""
    from dataclasses import replace

    from policy.service import Rules
    from tests.browser.conftest import seeded_server
    from tests.conftest import stop_server, use_up_unconfirmed_time

    rules = replace(Rules(), confirm_window_seconds=30.0, await_confirmation_seconds=600.0)
    srv = await seeded_server(tmp_path, rules=rules)
    clients = []
    try:
        sue = srv.token("operator:sue", "supervisor")
        await use_up_unconfirmed_time(srv, "facility:F1", token=sue)
        visit = await make_visit(srv, ["C1"])
        clients = [
            srv.client(visit["join"][w]["token"], visit["id"], **LIGHT) for w in ("device", "C1")
        ]
        for c in clients:
            assert (await c.connect())["type"] == "joined"
        for c in clients:
            await c.wait_frames("video", 5, timeout=15)

        console = await open_console(browser, srv, sue)
        page = console.page
        await page.click("#kill-switch")
        dialog = page.locator("dialog[open]")
        await dialog.locator('input[value="facility:F1"]').check()
        await send_broad_stop(dialog, "F1", "Disturbance in the North hall")
        await dialog.locator(".form-problems:not([hidden])").wait_for()
        ask = dialog.locator("#ask-confirmation")
        await ask.wait_for()
        assert (await ask.text_content()) == (
            "Ask a second supervisor to confirm — the stop starts when they do"
        )
        assert "Nothing stops until another supervisor confirms" in (
            await dialog.locator("#request-offer").text_content() or ""
        )
        await shoot(page, "request-offered")
        await ask.click()
        waiting = dialog.locator("#request-waiting")
        await waiting.wait_for(timeout=5_000)
        assert "It starts when a second supervisor confirms it" in (
            await waiting.text_content() or ""
        )
        assert "in 10 minutes" in (await waiting.text_content() or "")
        await shoot(page, "request-waiting")
        await dialog.locator("button", has_text="Close").click()

        status, directives = await srv.api("GET", "/api/v1/directives?status=pending")
        (request,) = directives
        assert request["scope"] == "facility:F1" and request["issued_by"] == "operator:sue"
        for c in clients:  # nothing has stopped
            before = c.received.frames["video"]
            await c.wait_frames("video", before + 5, timeout=5)
            assert not c.closed.is_set()

        await tab(page, "directives")
        row = page.locator(f'tr[data-directive="{request["id"]}"][data-status="pending"]')
        await row.wait_for()
        text = await row.text_content() or ""
        assert "Waiting to start" in text and "Not in force: nothing has stopped yet." in text
        assert "You asked for it: a different supervisor must confirm it." in text
        assert await row.locator('button[data-action="confirm"]').count() == 0
        assert await row.locator(".lapse-countdown").text_content() != "—"  # it counts down
        assert "(0 · 1 to confirm)" == await page.text_content("#count-directives")
        await shoot(page, "directives-request")

        second = await open_console(browser, srv, srv.token("operator:tom", "supervisor"))
        await tab(second.page, "directives")
        other_row = second.page.locator(f'tr[data-directive="{request["id"]}"]')
        await other_row.locator('button[data-action="confirm"]').click()
        for c in clients:  # the call ends: the stop started when Tom confirmed
            await asyncio.wait_for(c.closed.wait(), 5)
            assert c.close_code == 4403 and c.terminated["directive"]["id"] == request["id"]
        await other_row.locator("text=Confirmed by operator:tom").wait_for(timeout=2_000)
        # ... and the first console follows live: in force, confirmed, no countdown.
        active = page.locator(f'tr[data-directive="{request["id"]}"][data-status="active"]')
        await active.locator("text=Confirmed by operator:tom").wait_for(timeout=2_000)
        assert await active.locator(".lapse-countdown").count() == 0
        assert "(1)" == await page.text_content("#count-directives")
        await shoot(page, "directives-request-confirmed")
        await tab(page, "report")
        outcomes = page.locator("table.count-table", has_text="asked of a second supervisor")
        await outcomes.locator("tr", has_text="Confirmed (started)").wait_for()
        assert (await outcomes.locator("tr", has_text="Confirmed (started)").text_content()) == (
            "Confirmed (started)1"
        )

        status, verified = await srv.api("GET", "/api/v1/audit/verify", token="auditor")
        assert status == 200 and verified["ok"] and verified["state"]["ok"], verified
        assert await console.problems(allow="status of 422") == []
        assert await second.problems() == []
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        await stop_server(srv)


async def test_the_appeals_queue_lists_one_open_appeal_per_person_after_25_attempts(
    live: Server, browser: Browser
) -> None:
    """Issue #15, item 7: 25 attempts from each of two people leave two cards in the queue."""
    from tests.cluster.conftest import directive_body

    visit = await make_visit(live, ["C1", "C2"])
    status, directive = await live.api(
        "POST", "/api/v1/directives", directive_body("inmate:I1", action="end"),
        token=live.token("operator:alice", "operator"),
    )  # fmt: skip
    assert status == 201
    for who in ("C1", "C2"):
        answers = [
            (await live.api("POST", f"/api/v1/directives/{directive['id']}/appeals",
                            {"text": f"Attempt {i}: please review."}, token=visit["join"][who]["token"]))[0]
            for i in range(25)
        ]  # fmt: skip
        assert answers == [201] + [409] * 24, (who, answers)

    console = await open_console(browser, live, live.token("operator:bob", "operator"))
    page = console.page
    await page.wait_for_function(
        "() => document.getElementById('count-appeals').textContent === '(2)'", timeout=5_000
    )
    await tab(page, "appeals")
    cards = page.locator("article.appeal-card")
    await cards.nth(1).wait_for()
    assert await cards.count() == 2
    texts = [await cards.nth(i).text_content() or "" for i in range(2)]
    for who in ("contact:C1", "contact:C2"):
        assert sum(who in text for text in texts) == 1, (who, texts)
    assert all("Attempt 0:" in text and "null" not in text for text in texts), texts
    assert await page.text_content("#appeals-summary") == "2 open appeals."
    await shoot(page, "appeals-one-per-person")
    assert await console.problems() == []


async def test_verify_lists_records_that_disagree_with_the_audit_chain(
    live: Server, browser: Browser
) -> None:
    """Issue #15, item 3: a visit row changed in the database, without an audit event, is
    named by the console's "Verify chain"."""
    import sqlite3

    from signaling import keys as K

    visit = await make_visit(live, ["C1"])
    with sqlite3.connect(live.app[K.CONFIG].db) as conn:
        conn.execute("UPDATE visits SET kind = 'privileged' WHERE id = ?", (visit["id"],))
    console = await open_console(browser, live, live.token("auditor:ann", "auditor"))
    page = console.page
    await tab(page, "audit")
    await page.click("#verify-chain")
    await page.wait_for_selector('#verify-result[data-ok="false"]', timeout=5_000)
    text = await page.text_content("#verify-result") or ""
    assert "1 record disagrees with the audit chain" in text, text
    assert f'visits {visit["id"]} kind: stored "privileged", the chain says "social"' in text
    assert "Chain broken" not in text and "null" not in text
    await shoot(page, "audit-disagreement")
    assert await console.problems() == []

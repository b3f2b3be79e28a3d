"""A browser that cannot call is told so, once, and never joins (issue 11, item 4).

A WebKit build without WebRTC (Debian's WebKitGTK has no `RTCPeerConnection`) used to be
let into the call, swallow the `ReferenceError`, and retry until it told the family to check
their internet. Here Chromium plays such browsers: an init script deletes what they lack
before the page's own scripts run, or makes getUserMedia refuse as a person's "Block" does.
The page must say what to do, never enable "Join call", never open the signaling socket
(Playwright sees every WebSocket a page opens) and never retry; the real server behind it
must see no join at all: no session, no session audit event, no join counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import Browser, WebSocket

from tests.conftest import Server, make_visit
from tests.harness import callpage
from tests.harness.chromium import Watched, call_page
from tests.harness.system import require

pytestmark = [
    pytest.mark.browser,
    require("chromium"),
    pytest.mark.asyncio(loop_scope="module"),  # one Chromium for the module
]

NO_WEBRTC = """
delete window.RTCPeerConnection;
delete window.webkitRTCPeerConnection;
"""
NO_GET_USER_MEDIA = "delete MediaDevices.prototype.getUserMedia;"
REFUSE_DEVICES = """
MediaDevices.prototype.getUserMedia = () =>
  Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
"""
WATCH_FOR = 3.0  # seconds the page is given to (wrongly) join or retry: the first retry is at 1 s


async def family_page(browser: Browser, srv: Server, init: str) -> tuple[Watched, list[str]]:
    """The family page of a fresh visit, with `init` run before its scripts; and the list
    that collects the URL of every WebSocket it opens."""
    visit = await make_visit(srv, ["C1"])
    watched = await call_page(browser, init_scripts=[init])
    sockets: list[str] = []

    def opened(ws: WebSocket) -> None:
        sockets.append(ws.url)

    watched.page.on("websocket", opened)
    await watched.open(callpage.links(srv.url, visit).family)
    return watched, sockets


async def page_text(watched: Watched) -> dict[str, Any]:
    return await watched.evaluate(
        """() => ({
            title: document.querySelector("#end-title")?.textContent ?? "",
            reason: document.querySelector("#end-reason")?.textContent ?? "",
            problem: document.querySelector("#media-problem:not([hidden])")?.textContent ?? "",
            joinEnabled: !document.querySelector("#join-button").disabled,
            retryShown: !document.querySelector("#retry-media").hidden,
            body: document.body.innerText,
        })"""
    )


async def server_saw_no_join(srv: Server) -> None:
    status, sessions = await srv.api("GET", "/api/v1/sessions?live=false")
    assert status == 200 and sessions == [], sessions
    status, events = await srv.api("GET", "/api/v1/audit", token="auditor")
    assert status == 200, events
    assert [e for e in events if "session" in str(e.get("action", ""))] == [], events
    async with srv.http.get(srv.url + "/metrics") as response:
        metrics = await response.text()
    joins = [line for line in metrics.splitlines() if line.startswith(("parlor_joins_total{", "parlor_refusals_total{"))]  # fmt: skip
    assert joins == [], joins


def blames_the_network(text: str) -> bool:
    return any(word in text.lower() for word in ("internet", "network", "connection", "reconnect"))


@pytest.mark.parametrize(
    ("init", "lacks"),
    [
        (NO_WEBRTC, "no support for video calls"),
        (NO_GET_USER_MEDIA, "cannot use a camera or microphone"),
    ],
    ids=["no-RTCPeerConnection", "no-getUserMedia"],
)
async def test_a_browser_without_webrtc_is_told_which_browsers_work_and_never_joins(
    live: Server, browser: Browser, init: str, lacks: str
) -> None:
    watched, sockets = await family_page(browser, live, init)
    await callpage.state(watched, "unsupported")
    await asyncio.sleep(WATCH_FOR)
    await callpage.state(watched, "unsupported", timeout=0.1)  # still: nothing came after
    text = await page_text(watched)
    assert text["title"] == "This browser cannot make the video call.", text
    assert lacks in text["reason"], text
    assert "Chrome, Edge or Firefox" in text["reason"], text
    assert "Safari has not been tested" in text["reason"], text
    assert not text["joinEnabled"], text
    assert not blames_the_network(text["body"]), text
    assert sockets == []
    await server_saw_no_join(live)
    assert await watched.problems() == []
    await watched.screenshot(f"join-unsupported-{'no-webrtc' if init == NO_WEBRTC else 'no-gum'}")


async def test_refused_camera_and_microphone_say_how_to_allow_them_and_never_join(
    live: Server, browser: Browser
) -> None:
    watched, sockets = await family_page(browser, live, REFUSE_DEVICES)
    await callpage.state(watched, "preview")
    await watched.page.wait_for_selector("#media-problem:visible")
    await asyncio.sleep(WATCH_FOR)
    text = await page_text(watched)
    assert "not letting this page use your camera and microphone" in text["problem"], text
    assert "choose Allow" in text["problem"] and "Try again" in text["problem"], text
    assert not text["joinEnabled"] and text["retryShown"], text
    assert not blames_the_network(text["problem"]), text

    # "Try again" asks the browser again (still refused): it never joins on its own.
    await watched.click("#retry-media")
    await watched.page.wait_for_selector("#media-problem:visible")
    await asyncio.sleep(0.5)
    assert not (await page_text(watched))["joinEnabled"]
    assert sockets == []
    await server_saw_no_join(live)
    assert await watched.problems() == []

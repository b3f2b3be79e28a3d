"""GStreamer's `webrtcbin` as the kiosk (SPEC §9: supported clients, each proven here).

The kiosk is tests/harness/gst_kiosk.py, run by Debian's system Python through
tests/harness/gstreamer.py: GStreamer's own DTLS (an RSA certificate), SRTP and libnice ICE,
on 127.0.0.1. It calls an aiortc family (`ParlorClient`) and the family page in Chromium
through the real server and relay, and a `device:` directive ends its session.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from playwright.async_api import Browser

from policy.rfc3339 import format_time
from signaling.kiosk import ParlorClient
from tests.browser.conftest import media_faults
from tests.conftest import Server, make_visit
from tests.harness import callpage
from tests.harness.chromium import call_page
from tests.harness.gstreamer import GstKiosk, decoded_frames_grow
from tests.harness.system import require

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),  # one Chromium for the module
    require("gstreamer"),
]
LIGHT = {"size": (160, 120), "fps": 10}  # the aiortc family: enough video, little CPU
GROWTH = 15  # decoded frames a side must gain after its first ones: media keeps flowing


def gst_kiosk(srv: Server, visit: dict[str, Any]) -> GstKiosk:
    """The visit's kiosk, not started yet (`stop()` is safe either way)."""
    return GstKiosk(srv.url, visit["join"]["device"]["token"], visit["id"], seconds=60)


async def connect(kiosk: GstKiosk) -> None:
    """Start the kiosk; it joins, offers, and its ICE and DTLS connect."""
    await kiosk.start()
    joined = await kiosk.wait_for("joined")
    assert joined["role"] == "kiosk" and joined["visit"] == kiosk.visit, joined
    await kiosk.wait_for("connected", timeout=15)


async def family(srv: Server, visit: dict[str, Any], contact: str = "C1") -> ParlorClient:
    """An aiortc family member, joined and negotiated."""
    client = srv.client(visit["join"][contact]["token"], visit["id"], **LIGHT)
    joined = await client.connect()
    assert joined["type"] == "joined", joined
    return client


async def kiosk_frames_grow(kiosk: GstKiosk, timeout: float = 20.0) -> None:
    await decoded_frames_grow(kiosk.frames, kiosk.wait_frames, GROWTH, time.monotonic() + timeout)


async def family_frames_grow(client: ParlorClient, timeout: float = 20.0) -> None:
    counts = lambda: dict(client.received.frames)  # noqa: E731
    await decoded_frames_grow(counts, client.wait_frames, GROWTH, time.monotonic() + timeout)


def negotiation_clean(kiosk: GstKiosk) -> None:
    """webrtcbin accepted every description, and its DTLS came up without a role flip."""
    assert kiosk.all("negotiation-failed") == [], kiosk.describe()
    assert kiosk.all("pipeline-error") == [], kiosk.describe()
    dtls = kiosk.all("dtls-state")
    assert any(e["state"] == "connected" for e in dtls), kiosk.describe()
    assert len({e["client"] for e in dtls}) == 1, dtls


@pytest.mark.parametrize("first", ["kiosk", "family"])
async def test_gstreamer_kiosk_and_aiortc_family_send_media_both_ways(
    live: Server, caplog: pytest.LogCaptureFixture, first: str
) -> None:
    """`kiosk` first, as a kiosk waits for the family: its ICE and DTLS finish alone, then
    the family's join brings a server re-offer. `family` first: the kiosk's answer carries the
    family on its own m-lines (no re-offer; relay/peer.py), and a second family member joining
    right after it brings the re-offer while the kiosk's DTLS handshake is still going."""
    visit = await make_visit(live, ["C1", "C2"])
    kiosk = gst_kiosk(live, visit)
    clients: list[ParlorClient] = []
    try:
        if first == "family":
            clients.append(await family(live, visit))
            await kiosk.start()
            await kiosk.wait_for("answer-received")
            assert kiosk.find("offer-received") is None, kiosk.describe()
            clients.append(await family(live, visit, "C2"))
            await kiosk.wait_for("connected", timeout=15)
            await kiosk.wait_for("remote-stream", kind="video", number=2)
        else:
            await connect(kiosk)
            clients.append(await family(live, visit))
        await asyncio.gather(kiosk_frames_grow(kiosk), *map(family_frames_grow, clients))
        video = kiosk.find("first-frame", kind="video")
        assert video is not None and (video["width"], video["height"]) == LIGHT["size"], video
        for client in clients:
            assert kiosk.size in client.received.video_sizes, client.received.video_sizes
        # One server re-offer reached the kiosk (the join after its own), and it answered it.
        assert len(kiosk.all("offer-received")) == 1, kiosk.describe()
        assert len(kiosk.all("answer-sent")) == 1, kiosk.describe()
        negotiation_clean(kiosk)
        for leaving in reversed(clients):  # the last in first: the kiosk's own m-lines carry C1
            await leaving.leave()
            assert leaving.joined is not None
            await kiosk.wait_for("participant-left", participant=leaving.joined["session"])
        assert await kiosk.stop() == 0, kiosk.describe()  # SIGTERM: the kiosk says `leave`
        assert kiosk.close_code == 1000, kiosk.describe()
    finally:
        for client in clients:
            await client.close()
        await kiosk.stop()
    assert media_faults(caplog) == []


async def test_gstreamer_kiosk_answers_every_re_offer_as_families_come_and_go(
    live: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Each join adds m-lines to the kiosk's connection, each leave retires them (inactive):
    webrtcbin answers every such server offer and the media of those still there goes on."""
    visit = await make_visit(live, ["C1", "C2"])
    kiosk = gst_kiosk(live, visit)
    clients: list[ParlorClient] = []
    try:
        await connect(kiosk)
        clients.append(await family(live, visit, "C1"))
        await kiosk_frames_grow(kiosk)
        clients.append(await family(live, visit, "C2"))
        await family_frames_grow(clients[1])  # C2 gets the kiosk's media (and C1's)
        await kiosk.wait_for("remote-stream", kind="video", number=2)
        await clients.pop(0).leave()
        await kiosk.wait_for("participant-left")
        await kiosk_frames_grow(kiosk)  # C2's media still reaches the kiosk...
        await family_frames_grow(clients[0])  # ...and the kiosk's reaches C2
        offers, answers = kiosk.all("offer-received"), kiosk.all("answer-sent")
        assert len(answers) == len(offers) >= 3, kiosk.describe()  # C1, C2 join; C1 leaves
        negotiation_clean(kiosk)
    finally:
        for client in clients:
            await client.close()
        await kiosk.stop()
    assert media_faults(caplog) == []


@pytest.mark.browser
@require("chromium")
async def test_family_page_in_chromium_and_gstreamer_kiosk_see_each_other(
    live: Server, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    visit = await make_visit(live, ["C1"])
    kiosk = gst_kiosk(live, visit)
    try:
        await connect(kiosk)
        page = await call_page(browser)
        await callpage.join_as_family(page, callpage.links(live.url, visit).family)
        seen, _ = await asyncio.gather(
            callpage.plays(page, await callpage.sole_remote(page)), kiosk_frames_grow(kiosk)
        )
        assert (seen["width"], seen["height"]) == kiosk.size, seen
        assert seen["codec"] == "video/VP8", seen
        video = kiosk.find("first-frame", kind="video")
        assert video is not None and video["width"] > 0 and video["height"] > 0, video
        negotiation_clean(kiosk)
        assert await page.problems() == []
    finally:
        await kiosk.stop()
    assert media_faults(caplog) == []


async def test_device_directive_ends_the_gstreamer_kiosk_with_4403(live: Server) -> None:
    visit = await make_visit(live, ["C1"])
    kiosk = gst_kiosk(live, visit)
    client: ParlorClient | None = None
    try:
        await connect(kiosk)
        client = await family(live, visit)
        await kiosk_frames_grow(kiosk)
        body = {
            "scope": "device:K1", "action": "suspend", "reason": "Kiosk tampered with",
            "legal_basis": "Rule 51(4) Prison Rules", "expires_at": format_time(time.time() + 3600),
        }  # fmt: skip
        status, directive = await live.api("POST", "/api/v1/directives", body)
        assert status == 201, directive
        terminated = await kiosk.wait_for("terminated", timeout=5)
        closed = await kiosk.wait_for("closed", timeout=5)
        assert terminated["reason"] == f"directive:{directive['id']}", terminated
        notice = terminated["directive"]
        assert notice["id"] == directive["id"] and notice["action"] == "suspend", notice
        assert notice["reason"] == body["reason"] and notice["legal_basis"] == body["legal_basis"]
        assert notice["expires_at"] == directive["expires_at"] and notice["appeal_url"], notice
        assert closed["code"] == 4403, kiosk.describe()
        await kiosk.wait_for("process-ended", timeout=10)  # the socket's end is the kiosk's end
        await asyncio.wait_for(client.closed.wait(), 5)  # device:K1 cuts the whole visit
        assert client.close_code == 4403
    finally:
        if client is not None:
            await client.close()
        await kiosk.stop()

"""The browser pages in real Chromium, against a small stand-in server.

The stand-in serves `static/` with the production Content-Security-Policy,
answers the kiosk's visit look-up, and plays the server's side of `/ws` from a
script (for the in-call test, a real aiortc peer echoes the page's own media
back as participant "kiosk-1"). What is checked is what a person would see and
what crosses the wire: the offer's codecs, the messages sent, the end screens.

Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web
from playwright.async_api import Browser, Page

from tests.harness.chromium import DESKTOP, Watched, launch_chromium, open_page
from tests.harness.system import require

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "static"
ARTIFACTS = ROOT / "tests" / "artifacts"
CSP = "default-src 'self'; media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:"
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.browser,
    require("chromium"),
]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- the stand-in server -------------------------------------------------------------

OnJoin = Callable[["FakeSignaling", web.WebSocketResponse, dict[str, Any]], Awaitable[None]]


class FakeSignaling:
    """Plays the server's side of /ws: records every message, answers per `on_join`."""

    def __init__(self, on_join: OnJoin, echo_media: bool = False) -> None:
        self.on_join = on_join
        self.echo_media = echo_media
        self.connections = 0
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.sockets: list[web.WebSocketResponse] = []
        self.requests: list[web.Request] = []
        self.offers: list[str] = []
        self.peers: list[Any] = []
        self.offered = asyncio.Event()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        number = 0
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if number == 0 and message["type"] == "presence":
                return await hold_presence(ws)  # the kiosk page's presence, not a call's socket
            if number == 0:
                self.connections += 1
                number = self.connections
                self.sockets.append(ws)
                self.requests.append(request)
            self.received.append((number, message))
            if message["type"] == "join":
                await self.on_join(self, ws, message)
            elif message["type"] == "offer":
                self.offers.append(message["sdp"])
                self.offered.set()
                if self.echo_media:
                    await ws.send_json({"type": "answer", "sdp": await self.echo(message["sdp"])})
            elif message["type"] == "leave":
                await ws.close(code=1000)
        return ws

    async def echo(self, offer_sdp: str) -> str:
        """Answer with an aiortc peer that sends the page's media back as 'kiosk-1'."""
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.peers.append(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            sender = pc.addTrack(track)
            sender._stream_id = "kiosk-1"  # the relay names streams after the publisher

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def close(self) -> None:
        for pc in self.peers:
            await pc.close()


async def hold_presence(ws: web.WebSocketResponse) -> web.WebSocketResponse:
    """The server's side of a kiosk's presence connection (signaling/presence.py)."""
    await ws.send_json(
        {"type": "present", "device": "K1", "heartbeat_seconds": 10, "timeout_seconds": 25}
    )
    async for frame in ws:
        if frame.type == WSMsgType.TEXT and json.loads(frame.data).get("type") == "heartbeat":
            await ws.send_json({"type": "heartbeat"})
    return ws


class StubServer:
    def __init__(self) -> None:
        self.signaling: FakeSignaling | None = None
        self.kiosk_visit: dict[str, Any] | None = None
        self.kiosk_auth: list[str] = []
        self.base = ""
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        @web.middleware
        async def csp(request: web.Request, handler: Any) -> web.StreamResponse:
            response = await handler(request)
            response.headers["Content-Security-Policy"] = CSP
            return response

        def page(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            async def serve(request: web.Request) -> web.StreamResponse:
                return web.FileResponse(STATIC / name)

            return serve

        async def kiosk_visit(request: web.Request) -> web.Response:
            self.kiosk_auth.append(request.headers.get("Authorization", ""))
            if self.kiosk_visit is not None:
                return web.json_response({"visit": self.kiosk_visit})
            start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(
                hours=2
            )
            return web.json_response(
                {
                    "error": {"code": "no-visit", "message": "No visit is scheduled now."},
                    "next": {
                        "id": "V2",
                        "starts_at": iso(start),
                        "ends_at": iso(start + timedelta(minutes=30)),
                        "contacts": [{"id": "C1", "name": "Jane Doe"}],
                    },
                },
                status=404,
            )

        async def ws(request: web.Request) -> web.StreamResponse:
            if self.signaling is None:  # a presence connection (the kiosk page holds one)
                ws = web.WebSocketResponse()
                await ws.prepare(request)
                return await hold_presence(ws)
            return await self.signaling.handle(request)

        async def visit_state(request: web.Request) -> web.Response:
            """The family page reads its visit's state before the camera check: open now."""
            now = datetime.now(UTC)
            return web.json_response({
                "visit": request.match_info["visit"], "state": "open", "kind": "social",
                "starts_at": iso(now - timedelta(minutes=1)), "ends_at": iso(now + timedelta(minutes=30)),
                "opens_at": iso(now - timedelta(minutes=6)), "now": iso(now), "monitored": True,
                "notice": "This visit may be monitored by facility staff.",
                "inmate": {"name": "Sam"}, "facility": {"name": "North"}, "cancelled": None,
                "moved": None, "not_approved": None,
            })  # fmt: skip

        app = web.Application(middlewares=[csp])
        app.router.add_get("/", page("index.html"))
        app.router.add_get("/join/{visit}", page("join.html"))
        app.router.add_get("/kiosk", page("kiosk.html"))
        app.router.add_get("/console", page("console.html"))
        app.router.add_get("/api/v1/kiosk/visit", kiosk_visit)
        app.router.add_get("/api/v1/visits/{visit}/state", visit_state)
        app.router.add_get("/ws", ws)
        app.router.add_static("/static/", STATIC)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self.signaling:
            await self.signaling.close()
        if self._runner:
            await self._runner.cleanup()


@pytest_asyncio.fixture
async def stub() -> AsyncIterator[StubServer]:
    stub = StubServer()
    await stub.start()
    yield stub
    await stub.stop()


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as chromium:
        yield chromium


async def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


async def state(page: Page, value: str, timeout: float = 15_000) -> None:
    await page.wait_for_selector(f'#app[data-state="{value}"]', timeout=timeout)


async def no_horizontal_scroll(page: Page) -> bool:
    return await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


async def in_view(page: Page, selector: str) -> bool:
    """Entirely inside the window without scrolling."""
    return await page.eval_on_selector(
        selector,
        """el => { const r = el.getBoundingClientRect();
                   return r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth; }""",
    )


# --- step 1: the family's device check -----------------------------------------------------------


@pytest.mark.asyncio
async def test_join_preview_shows_live_camera_moving_meter_and_devices(
    stub: StubServer, browser: Browser
) -> None:
    watched = await open_page(browser, f"{stub.base}/join/V1#token=family-token-1")
    page = watched.page
    await state(page, "preview")

    # The token left the address bar but survives a reload of this tab.
    assert page.url == f"{stub.base}/join/V1"
    assert (
        await page.evaluate("sessionStorage.getItem('parlor.token.visit.V1')") == "family-token-1"
    )

    await page.wait_for_function(
        "() => document.getElementById('preview-video').videoWidth > 0", timeout=15_000
    )
    await page.wait_for_selector("#camera-check.is-ok", timeout=15_000)

    levels = []
    for _ in range(40):
        levels.append(int(await page.get_attribute("#mic-meter", "aria-valuenow") or 0))
        await page.wait_for_timeout(100)
    assert max(levels) > 20, levels
    assert len(set(levels)) > 3, f"the meter does not move: {levels}"
    await page.wait_for_selector("#mic-check.is-ok", timeout=5_000)

    for select in ("#camera-select", "#microphone-select"):
        values = await page.eval_on_selector_all(
            f"{select} option", "options => options.map(o => o.value)"
        )
        assert values and all(values), f"{select} has no devices: {values}"
        assert await page.is_enabled(select)
    assert await page.is_enabled("#join-button")
    assert await page.text_content("#join-button") == "Join call"

    # Every control has an accessible name.
    unlabelled = await page.evaluate(
        """[...document.querySelectorAll('#preview button, #preview select')]
             .filter(el => !el.labels?.length && !el.textContent.trim() && !el.getAttribute('aria-label'))
             .map(el => el.id)"""
    )
    assert unlabelled == []

    await shoot(page, "join-preview-desktop")
    assert await no_horizontal_scroll(page)
    assert await watched.problems() == []


@pytest.mark.asyncio
async def test_join_preview_switching_camera_keeps_preview_live(
    stub: StubServer, browser: Browser
) -> None:
    watched = await open_page(browser, f"{stub.base}/join/V1#token=t")
    page = watched.page
    await state(page, "preview")
    await page.wait_for_selector("#camera-check.is-ok", timeout=15_000)
    values = await page.eval_on_selector_all(
        "#camera-select option", "options => options.map(o => o.value)"
    )
    tracks = "() => document.getElementById('preview-video').srcObject.getVideoTracks()"
    before = await page.evaluate(f"({tracks})().map(t => t.id)")
    await page.select_option("#camera-select", values[-1])
    # A new camera track replaces the old one, and its frames reach the preview.
    await page.wait_for_function(
        f"""() => {{ const now = ({tracks})();
                    return now.length === 1 && now[0].readyState === 'live'
                           && now[0].id !== {json.dumps(before[0])}; }}""",
        timeout=15_000,
    )
    await page.wait_for_selector("#camera-check.is-ok", timeout=15_000)
    assert await watched.problems() == []


@pytest.mark.asyncio
async def test_join_page_fits_a_phone_and_200_percent_zoom(
    stub: StubServer, browser: Browser
) -> None:
    phone = await open_page(
        browser,
        f"{stub.base}/join/V1#token=t",
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    await state(phone.page, "preview")
    await phone.page.wait_for_selector("#camera-check.is-ok", timeout=15_000)
    assert await no_horizontal_scroll(phone.page)
    await shoot(phone.page, "join-preview-phone")
    await phone.page.screenshot(path=str(ARTIFACTS / "join-preview-phone-full.png"), full_page=True)
    assert await phone.problems() == []

    # 200% zoom of a 1280x800 window lays out like a 640x400 window.
    zoomed = await open_page(
        browser,
        f"{stub.base}/join/V1#token=t",
        viewport={"width": 640, "height": 400},
        device_scale_factor=2,
    )
    await state(zoomed.page, "preview")
    assert await no_horizontal_scroll(zoomed.page)
    await shoot(zoomed.page, "join-preview-zoom200")


def refuse_media(kinds: str, error: str) -> str:
    """An init script making getUserMedia fail, as a browser does when devices are refused or missing."""
    return f"""
    const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    navigator.mediaDevices.getUserMedia = (constraints) => {{
      const asks = Object.keys(constraints).filter((k) => constraints[k]);
      if (asks.some((k) => "{kinds}".includes(k))) {{
        return Promise.reject(new DOMException("refused by test", "{error}"));
      }}
      return real(constraints);
    }};
    """


@pytest.mark.asyncio
async def test_missing_camera_offers_sound_only_and_offers_no_video(
    stub: StubServer, browser: Browser
) -> None:
    async def on_join(
        signaling: FakeSignaling, ws: web.WebSocketResponse, _: dict[str, Any]
    ) -> None:
        await ws.send_json(joined())

    stub.signaling = FakeSignaling(on_join)
    watched = await open_page(
        browser,
        f"{stub.base}/join/V1#token=t",
        init_scripts=[refuse_media("video", "NotFoundError")],
    )
    page = watched.page
    await state(page, "preview")
    await page.wait_for_selector("#media-problem:visible")
    assert "could not find a camera" in (await page.text_content("#media-problem") or "")
    assert await page.text_content("#join-button") == "Join with sound only"
    assert await page.is_enabled("#join-button")
    await page.wait_for_selector("#mic-check.is-ok", timeout=5_000)
    await shoot(page, "join-preview-no-camera")

    await page.click("#join-button")
    await state(page, "in-call")
    await asyncio.wait_for(stub.signaling.offered.wait(), 10)
    offer = stub.signaling.offers[0]
    audio, video = offer.split("m=audio", 1)[1].split("m=video", 1)
    assert "a=sendrecv" in audio
    assert "a=recvonly" in video  # still receives the other side's picture
    assert "Sound only" in (await page.text_content("#self-state") or "")
    assert await page.get_attribute("#camera-toggle", "aria-disabled") == "true"
    assert await watched.problems() == []


@pytest.mark.asyncio
async def test_refused_devices_explain_what_to_do(stub: StubServer, browser: Browser) -> None:
    watched = await open_page(
        browser,
        f"{stub.base}/join/V1#token=t",
        viewport=PHONE,
        init_scripts=[refuse_media("audio video", "NotAllowedError")],
        is_mobile=True,
        has_touch=True,
    )
    page = watched.page
    await state(page, "preview")
    await page.wait_for_selector("#media-problem:visible")
    text = await page.text_content("#media-problem") or ""
    assert "not letting this page use your camera and microphone" in text
    assert "choose Allow" in text
    assert await page.is_visible("#retry-media")
    assert not await page.is_enabled("#join-button")
    assert await no_horizontal_scroll(page)
    await shoot(page, "join-preview-refused-phone")
    assert await watched.problems() == []


@pytest.mark.asyncio
async def test_join_without_token_explains_the_link(stub: StubServer, browser: Browser) -> None:
    watched = await open_page(browser, f"{stub.base}/join/V9")
    await state(watched.page, "ended")
    assert await watched.page.text_content("#end-title") == "This link is not complete."
    assert await watched.problems() == []


# --- step 2: in the call -----------------------------------------------------------------------------


def joined(codec: str = "VP8", minutes: float = 4, **extra: Any) -> dict[str, Any]:
    return {
        "type": "joined",
        "session": "S-family",
        "visit": "V1",
        "role": "family",
        "ends_at": iso(datetime.now(UTC) + timedelta(minutes=minutes)),
        "ice_servers": [],
        "participants": [
            {"id": "S-family", "role": "family", "name": "Jane Doe"},
            {"id": "kiosk-1", "role": "kiosk", "name": "John Doe"},
        ],
        "monitored": True,
        "codec": codec,
        "audio_only": False,
        **extra,
    }


def video_codecs(sdp: str) -> set[str]:
    """The codec names offered in the video m-section."""
    video = sdp.split("m=video", 1)[1].split("\r\nm=", 1)[0]
    return {name.upper() for name in re.findall(r"a=rtpmap:\d+ ([\w-]+)/", video)}


@pytest.mark.asyncio
@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_call_plays_remote_media_and_follows_the_server(
    stub: StubServer, browser: Browser, codec: str
) -> None:
    async def on_join(
        signaling: FakeSignaling, ws: web.WebSocketResponse, message: dict[str, Any]
    ) -> None:
        assert message == {"type": "join", "token": "family-token-1", "visit": "V1"}
        await ws.send_json(joined(codec))

    stub.signaling = FakeSignaling(on_join, echo_media=True)
    watched = await open_page(browser, f"{stub.base}/join/V1#token=family-token-1")
    page = watched.page
    await state(page, "preview")
    await page.click("#join-button")
    await state(page, "in-call")

    # One codec for the whole visit, no simulcast.
    await asyncio.wait_for(stub.signaling.offered.wait(), 10)
    offer = stub.signaling.offers[0]
    assert video_codecs(offer) == {codec, "RTX"}
    assert "a=simulcast" not in offer and "a=rid:" not in offer
    if codec == "H264":
        assert "profile-level-id=42e01f" in offer and "packetization-mode=1" in offer

    # The echoed media arrives as participant kiosk-1, in one labelled tile.
    tile = '[data-participant="kiosk-1"]'
    await page.wait_for_function(
        f"() => document.querySelector('{tile} .remote-video')?.videoWidth > 0", timeout=15_000
    )
    assert await page.locator(".tile").count() == 1
    assert await page.text_content(f"{tile} .tile-name") == "John Doe"
    assert "John Doe" in (await page.text_content("#participants") or "")
    assert await page.is_visible("#monitored-notice")
    assert re.fullmatch(r"0[34]:\d\d", await page.text_content("#countdown-value") or "")
    assert "is-warning" in (await page.get_attribute("#countdown", "class") or "")

    stats = await page.evaluate(
        """async () => {
             const report = await window.__parlorPc.getStats();
             const all = [...report.values()];
             const codecOf = (s) => report.get(s.codecId)?.mimeType;
             const out = all.filter(s => s.type === 'outbound-rtp' && s.kind === 'video');
             const inbound = all.filter(s => s.type === 'inbound-rtp' && s.kind === 'video');
             return {out: out.map(codecOf), outRids: out.map(s => s.rid ?? null),
                     inCodecs: inbound.map(codecOf), decoded: inbound.map(s => s.framesDecoded)};
           }"""
    )
    assert stats["out"] == [f"video/{codec}"], stats
    assert stats["outRids"] == [None], stats
    assert stats["inCodecs"] == [f"video/{codec}"] and stats["decoded"][0] > 0, stats
    await page.wait_for_timeout(500)
    await shoot(page, f"call-in-progress-{codec.lower()}")
    assert await in_view(page, "#leave-button") and await in_view(page, "#mic-toggle")
    if codec == "VP8":
        await page.set_viewport_size(PHONE)
        await page.wait_for_timeout(300)
        assert await no_horizontal_scroll(page)
        assert await in_view(page, "#leave-button")
        await shoot(page, "call-in-progress-phone")
        await page.set_viewport_size(DESKTOP)

    # Mute toggles say what they do.
    await page.click("#mic-toggle")
    assert await page.get_attribute("#mic-toggle", "aria-pressed") == "true"
    assert (
        await page.evaluate(
            "document.getElementById('self-video').srcObject.getAudioTracks()[0].enabled"
        )
        is False
    )

    ws = stub.signaling.sockets[0]
    await ws.send_json({"type": "time-remaining", "seconds": 90})
    await page.wait_for_function(
        "() => /^01:(2\\d|30)$/.test(document.getElementById('countdown-value').textContent)"
    )

    # Facility staff restrict the call to audio: video stops going out.
    directive = {
        "id": "D7",
        "action": "audio-only",
        "reason": "Showing a document on camera",
        "legal_basis": "Rule 34(2)",
        "expires_at": iso(datetime.now(UTC) + timedelta(days=2)),
        "appeal_url": "/appeal/D7",
    }
    await ws.send_json({"type": "restricted", "action": "audio-only", "directive": directive})
    await page.wait_for_selector("#audio-only-banner:visible")
    banner = await page.text_content("#audio-only-banner") or ""
    assert "Video has been turned off for this call by facility staff" in banner
    assert "Showing a document on camera" in banner
    await page.wait_for_function(
        "() => window.__parlorPc.getSenders().every(s => !s.track || s.track.kind !== 'video')"
    )
    if codec == "VP8":
        await shoot(page, "call-audio-only")

    # The restriction is lifted: the camera comes back on the same line, without a new offer.
    await ws.send_json({"type": "restricted", "action": "none", "directive": directive})
    await page.wait_for_selector("#audio-only-banner", state="hidden")
    await page.wait_for_function(
        """() => window.__parlorPc.getSenders()
                   .some(s => s.track && s.track.kind === 'video' && s.track.readyState === 'live')"""
    )
    assert await page.get_attribute("#camera-toggle", "aria-disabled") is None
    assert len(stub.signaling.offers) == 1

    await ws.send_json({"type": "participant-left", "participant": "kiosk-1"})
    await page.wait_for_function("() => document.querySelectorAll('.tile').length === 0")

    # Staff stop the call under a directive: the family sees why and how to appeal.
    ended = {**directive, "id": "D8", "action": "suspend", "reason": "Threats made during the call"}
    await ws.send_json(
        {
            "type": "terminated",
            "reason": "directive:D8",
            "message": "Call stopped",
            "directive": ended,
        }
    )
    await state(page, "ended")
    assert await page.text_content("#end-title") == "This call was stopped by facility staff."
    assert await page.text_content("#end-reason") == "Threats made during the call"
    assert await page.text_content("#end-legal-basis") == "Rule 34(2)"
    assert (await page.text_content("#end-expires") or "").strip()
    assert await page.get_attribute("#appeal-link", "href") == "/appeal/D7"
    assert await page.text_content("#appeal-link") == "Appeal this decision"
    assert await page.evaluate("window.__parlorPc") is None
    if codec == "VP8":
        await shoot(page, "call-ended-directive")
    assert await watched.problems() == []


async def start_call(stub: StubServer, browser: Browser, on_join: OnJoin) -> Watched:
    stub.signaling = FakeSignaling(on_join)
    watched = await open_page(browser, f"{stub.base}/join/V1#token=family-token-1")
    await state(watched.page, "preview")
    await watched.page.click("#join-button")
    return watched


def closes_with(code: int, error: str | None = None) -> OnJoin:
    async def on_join(
        signaling: FakeSignaling, ws: web.WebSocketResponse, message: dict[str, Any]
    ) -> None:
        if error:
            await ws.send_json({"type": "error", "code": "refused", "message": error})
        await ws.close(code=code, message=b"closing")

    return on_join


def terminates_with(reason: str, message: str = "") -> OnJoin:
    async def on_join(
        signaling: FakeSignaling, ws: web.WebSocketResponse, _: dict[str, Any]
    ) -> None:
        await ws.send_json(joined())
        await ws.send_json({"type": "terminated", "reason": reason, "message": message})
        await ws.close(code=1000)

    return on_join


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("on_join", "title", "reason"),
    [
        (
            closes_with(4401),
            "Your link has expired or is not valid. Ask the facility for a new link.",
            None,
        ),
        (closes_with(4409), "You joined this call from another window or device.", None),
        (closes_with(4410), "Your visit time is over.", None),
        (
            closes_with(4403, "Visits with this contact are paused."),
            "You cannot join this call right now.",
            "Visits with this contact are paused.",
        ),
        (terminates_with("visit-ended"), "Your visit time is over.", None),
        (
            terminates_with("operator:alice", "Ended by staff."),
            "Facility staff ended this call.",
            "Ended by staff.",
        ),
        (terminates_with("replaced"), "You joined this call from another window or device.", None),
    ],
    ids=["4401", "4409", "4410", "4403", "visit-ended", "operator", "replaced"],
)
async def test_end_screens_and_no_reconnect(
    stub: StubServer, browser: Browser, on_join: OnJoin, title: str, reason: str | None
) -> None:
    watched = await start_call(stub, browser, on_join)
    page = watched.page
    await state(page, "ended")
    assert await page.text_content("#end-title") == title
    if reason:
        assert await page.text_content("#end-reason") == reason
    await page.wait_for_timeout(1_500)  # longer than the first back-off step
    assert stub.signaling and stub.signaling.connections == 1
    assert await page.locator("#appeal-link").count() == 0
    assert await watched.problems(allow="WebSocket connection") == []


@pytest.mark.asyncio
async def test_refusal_by_a_directive_shows_it(stub: StubServer, browser: Browser) -> None:
    notice = {
        "id": "D3",
        "action": "suspend",
        "reason": "Contact under investigation",
        "legal_basis": "Rule 12",
        "expires_at": iso(datetime.now(UTC) + timedelta(days=7)),
        "appeal_url": "http://parlor.example/appeal/D3",
    }

    async def on_join(
        signaling: FakeSignaling, ws: web.WebSocketResponse, _: dict[str, Any]
    ) -> None:
        await ws.send_json(
            {"type": "error", "code": "suspended", "message": notice["reason"], "directive": notice}
        )
        await ws.close(code=4403, message=b"suspended")

    watched = await start_call(stub, browser, on_join)
    page = watched.page
    await state(page, "ended")
    assert await page.text_content("#end-title") == "This call was stopped by facility staff."
    assert await page.text_content("#end-reason") == "Contact under investigation"
    assert await page.text_content("#end-legal-basis") == "Rule 12"
    assert await page.get_attribute("#appeal-link", "href") == notice["appeal_url"]
    assert await page.locator("#rejoin-button").count() == 0
    await page.wait_for_timeout(1_500)
    assert stub.signaling and stub.signaling.connections == 1
    assert await watched.problems(allow="WebSocket connection") == []


@pytest.mark.asyncio
async def test_not_open_yet_says_when(stub: StubServer, browser: Browser) -> None:
    opens = iso(datetime.now(UTC) + timedelta(hours=3))

    async def on_join(
        signaling: FakeSignaling, ws: web.WebSocketResponse, _: dict[str, Any]
    ) -> None:
        await ws.send_json(
            {"type": "error", "code": "not-open-yet", "message": f"this visit opens at {opens}"}
        )
        await ws.close(code=4403, message=b"not-open-yet")

    watched = await start_call(stub, browser, on_join)
    page = watched.page
    await state(page, "ended")
    assert await page.text_content("#end-title") == "Your visit has not started yet."
    reason = await page.text_content("#end-reason") or ""
    assert reason.startswith("This visit opens at ") and opens not in reason  # local time, not UTC
    assert await page.is_visible("#rejoin-button")


@pytest.mark.asyncio
async def test_redirect_joins_the_node_that_holds_the_visit(
    stub: StubServer, browser: Browser
) -> None:
    async def on_join(
        signaling: FakeSignaling, ws: web.WebSocketResponse, _: dict[str, Any]
    ) -> None:
        if signaling.connections == 1:
            await ws.send_json(
                {"type": "redirect", "url": f"{stub.base.replace('http', 'ws')}/ws?node=2"}
            )
            await ws.close(code=4307, message=b"redirect")
        else:
            await ws.send_json(joined())

    watched = await start_call(stub, browser, on_join)
    page = watched.page
    await state(page, "in-call")
    assert stub.signaling
    assert [r.query_string for r in stub.signaling.requests] == ["", "node=2"]
    await asyncio.wait_for(stub.signaling.offered.wait(), 10)
    assert [m["type"] for n, m in stub.signaling.received if n == 2][:2] == ["join", "offer"]
    assert await watched.problems(allow="WebSocket connection") == []


@pytest.mark.asyncio
async def test_leave_sends_leave_and_says_so(stub: StubServer, browser: Browser) -> None:
    async def on_join(
        signaling: FakeSignaling, ws: web.WebSocketResponse, _: dict[str, Any]
    ) -> None:
        await ws.send_json(joined())

    watched = await start_call(stub, browser, on_join)
    page = watched.page
    await state(page, "in-call")
    await page.click("#leave-button")
    await page.wait_for_selector("#leave-dialog[open]")
    await page.click("#leave-confirm")
    await state(page, "ended")
    assert await page.text_content("#end-title") == "You left the call."
    assert stub.signaling and [m["type"] for _, m in stub.signaling.received][-1] == "leave"
    assert await page.is_visible("#rejoin-button")
    assert await watched.problems() == []


@pytest.mark.asyncio
async def test_network_loss_reconnects_with_a_fresh_join(
    stub: StubServer, browser: Browser
) -> None:
    async def on_join(
        signaling: FakeSignaling, ws: web.WebSocketResponse, _: dict[str, Any]
    ) -> None:
        if signaling.connections == 1:
            await ws.send_json(joined(minutes=30))
            await asyncio.sleep(0.5)
            transport = signaling.requests[0].transport  # drop the TCP connection: close code 1006
            assert transport is not None
            transport.abort()
        else:
            await ws.close(code=4410)

    watched = await start_call(stub, browser, on_join)
    page = watched.page
    await page.wait_for_selector('#call[data-connection="reconnecting"]', timeout=15_000)
    assert "Reconnecting" in (await page.text_content("#connection-banner") or "")
    await state(page, "ended", timeout=15_000)
    assert await page.text_content("#end-title") == "Your visit time is over."
    assert stub.signaling
    joins = [(n, m) for n, m in stub.signaling.received if m["type"] == "join"]
    assert [n for n, _ in joins] == [1, 2]
    assert joins[1][1]["token"] == "family-token-1"
    await page.wait_for_timeout(1_500)
    assert stub.signaling.connections == 2
    assert await watched.problems(allow="WebSocket connection") == []


# --- the kiosk ---------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_kiosk_waits_for_a_visit(stub: StubServer, browser: Browser) -> None:
    watched = await open_page(browser, f"{stub.base}/kiosk#token=device-token-K1")
    page = watched.page
    await state(page, "waiting")
    assert page.url == f"{stub.base}/kiosk"
    assert await page.evaluate("sessionStorage.getItem('parlor.token.kiosk')") == "device-token-K1"
    assert await page.text_content("#waiting-title") == "No visit right now"
    await page.wait_for_selector("#next-visit:visible")
    assert "Jane Doe" in (await page.text_content("#next-visit") or "")
    assert stub.kiosk_auth == ["Bearer device-token-K1"]
    await shoot(page, "kiosk-waiting")
    assert await no_horizontal_scroll(page)
    # Chromium logs the (expected) 404 "no visit" answer as a failed resource load.
    assert await watched.problems(allow="status of 404") == []


@pytest.mark.asyncio
async def test_kiosk_joins_shows_directive_and_never_rejoins(
    stub: StubServer, browser: Browser
) -> None:
    now = datetime.now(UTC)
    stub.kiosk_visit = {
        "id": "V1",
        "inmate": {"id": "I1", "name": "John Doe"},
        "contacts": [{"id": "C1", "name": "Jane Doe"}],
        "starts_at": iso(now - timedelta(minutes=5)),
        "ends_at": iso(now + timedelta(minutes=25)),
        "kind": "social",
    }

    async def on_join(
        signaling: FakeSignaling, ws: web.WebSocketResponse, message: dict[str, Any]
    ) -> None:
        assert message == {"type": "join", "token": "device-token-K1", "visit": "V1"}
        await ws.send_json(
            {
                **joined(minutes=25),
                "session": "kiosk-1",
                "role": "kiosk",
                "participants": [{"id": "C1", "role": "family", "name": "Jane Doe"}],
            }
        )

    stub.signaling = FakeSignaling(on_join)
    watched = await open_page(browser, f"{stub.base}/kiosk#token=device-token-K1")
    page = watched.page
    await state(page, "in-call")
    assert await page.is_visible("#monitored-notice")
    await asyncio.wait_for(stub.signaling.offered.wait(), 10)
    await shoot(page, "kiosk-in-call-waiting-for-video")

    await stub.signaling.sockets[0].send_json(
        {
            "type": "terminated",
            "reason": "directive:D9",
            "message": "Call stopped",
            "directive": {
                "id": "D9",
                "action": "suspend",
                "reason": "Security incident on the wing",
                "legal_basis": "Order 2025/14",
                "expires_at": iso(now + timedelta(hours=6)),
                "appeal_url": "/appeal/D9",
            },
        }
    )
    await state(page, "ended")
    assert await page.text_content("#end-title") == "This call was stopped by facility staff."
    assert await page.text_content("#end-reason") == "Security incident on the wing"
    assert await page.text_content("#end-legal-basis") == "Order 2025/14"
    assert "D9" in (await page.text_content("#end") or "")
    assert await page.locator("#appeal-link").count() == 0  # no browsing away from the kiosk
    await shoot(page, "kiosk-ended-directive")

    # Back on the waiting screen the visit is still "current", but it is not joined again.
    await page.click("#back-button")
    await state(page, "waiting")
    await page.wait_for_timeout(1_000)
    assert await page.text_content("#waiting-title") == "No visit right now"
    assert stub.signaling.connections == 1
    assert await watched.problems() == []


# --- landing page and console placeholder ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_landing_and_console(stub: StubServer, browser: Browser) -> None:
    landing = await open_page(browser, f"{stub.base}/")
    assert await landing.page.get_attribute('a[href="/console"]', "href") == "/console"
    assert "link you were sent" in (await landing.page.text_content("main") or "")
    await shoot(landing.page, "landing")
    assert await landing.problems() == []

    # Only the token hand-over is checked here: the console's own API is not stubbed.
    console = await open_page(browser, f"{stub.base}/console#token=operator-token")
    await console.page.wait_for_function("() => location.hash === ''")
    assert console.page.url == f"{stub.base}/console"
    assert (
        await console.page.evaluate("sessionStorage.getItem('parlor.token.console')")
        == "operator-token"
    )
    assert "Operator console" in (await console.page.text_content("h1") or "")

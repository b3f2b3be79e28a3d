"""The family page (`/join/{visit}#token=...`) and the kiosk page (`/kiosk#token=...`) as a
person uses them, in any browser of tests/harness/page.py: join through the device check,
wait for the call, and check that a remote picture plays.

"Plays" is what a person would see: the remote `<video>` has a size, its clock advances, and
the browser's inbound-rtp statistics for that track count more and more decoded frames.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

from tests.harness.page import Page, wait_for

# The tile's <video>, its MediaStream's video track, that track's receiver on the page's
# peer connection (call.js exposes it as window.__parlorPc), and its inbound-rtp statistics.
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
REMOTE_TILES = """() => [...document.querySelectorAll("figure.tile[data-participant]")]
  .filter((tile) => tile.querySelector("video.remote-video"))
  .map((tile) => tile.dataset.participant)"""
APP_STATE = """() => document.querySelector("#app")?.dataset.state ?? null"""
JOIN_ENABLED = """() => { const b = document.querySelector("#join-button");
  return Boolean(b && !b.disabled && !b.closest("[hidden]")); }"""

# Installed before the family clicks "Join call": the click's instant and the first remote
# video frame's, both on the page's clock (performance.now(), ms). The first frame is the
# earliest of requestVideoFrameCallback (a frame presented) and `resize` with a width (a
# frame decoded) on any remote <video>.
MARK_FIRST_FRAME = """() => {
  const marks = { join: null, frame: null };
  window.__parlorMarks = marks;
  document.querySelector("#join-button").addEventListener(
    "click", () => { marks.join ??= performance.now(); }, { capture: true, once: true });
  const seen = (video) => {
    if (marks.frame === null && video.videoWidth > 0) marks.frame = performance.now();
  };
  const watch = (video) => {
    if (video.__parlorWatched) return;
    video.__parlorWatched = true;
    video.addEventListener("resize", () => seen(video));
    video.requestVideoFrameCallback?.(() => seen(video));
  };
  new MutationObserver(() => document.querySelectorAll("video.remote-video").forEach(watch))
    .observe(document.body, { childList: true, subtree: true });
  return true;
}"""
MARKS = "() => window.__parlorMarks ?? null"


def family_url(server_url: str, visit: str, token: str) -> str:
    """The family page of `visit`; the token travels in the fragment, as the join link has it."""
    return f"{server_url}/join/{visit}#token={token}"


def kiosk_url(server_url: str, token: str) -> str:
    return f"{server_url}/kiosk#token={token}"


class Links(NamedTuple):
    family: str
    kiosk: str


def links(server_url: str, visit: dict[str, Any], contact: str = "C1") -> Links:
    """The family page of `contact` and the kiosk page, of a visit as `POST /visits` answers."""
    join = visit["join"]
    return Links(
        family_url(server_url, visit["id"], join[contact]["token"]),
        kiosk_url(server_url, join["device"]["token"]),
    )


def tile_video(participant: str) -> str:
    """The selector of a remote participant's <video>."""
    return f'figure.tile[data-participant="{participant}"] video.remote-video'


async def state(page: Page, value: str, timeout: float = 15.0) -> None:
    """Wait until the page's `#app[data-state]` is `value`."""
    try:
        await wait_for(page, f"() => ({APP_STATE})() === {value!r}", timeout=timeout)
    except TimeoutError:
        raise AssertionError(
            f"the page is {await page.evaluate(APP_STATE)!r}, not {value!r}, after {timeout} s"
        ) from None


async def join_as_family(
    page: Page, url: str, *, timeout: float = 15.0, before_join: str | None = None
) -> None:
    """Open the family page, wait for the device check to allow joining, click "Join call",
    and wait for the call screen. `before_join` (a function expression) runs just before
    the click."""
    await page.open(url)
    await state(page, "preview", timeout)
    await wait_for(page, JOIN_ENABLED, timeout=timeout)
    if before_join is not None:
        await page.evaluate(before_join)
    await page.click("#join-button")
    await state(page, "in-call", timeout)


async def open_kiosk(page: Page, url: str, *, timeout: float = 15.0) -> None:
    """Open the kiosk page, which joins today's visit by itself."""
    await page.open(url)
    await state(page, "in-call", timeout)


async def sole_remote(page: Page, timeout: float = 15.0) -> str:
    """The selector of the one remote participant's <video> (there must be exactly one)."""
    ids = await wait_for(page, REMOTE_TILES, timeout=timeout)
    assert len(ids) == 1, ids
    return tile_video(ids[0])


async def plays(
    page: Page, selector: str, timeout: float = 15.0, frames: int = 5
) -> dict[str, Any]:
    """Wait until the remote <video> `selector` shows a picture that moves: a size, and
    then its clock 0.3 s further and `frames` more frames decoded. Returns the last probe;
    AssertionError (with the first and last probes) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = await page.evaluate(REMOTE_VIDEO, selector)
        if last and last["width"] > 0 and last["framesDecoded"] > 0:
            if first is None:
                first = last
            elif (
                last["time"] > first["time"] + 0.3
                and last["framesDecoded"] >= first["framesDecoded"] + frames
            ):
                assert not last["paused"], last
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{selector} does not play: first {first}, last {last}")

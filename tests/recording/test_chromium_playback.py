"""The console's player is a browser: Chromium plays the remuxed files, video and Opus.

A ``<video>`` plays the first video and the first audio track of a file;
``webkitAudioDecodedByteCount`` says the Opus track was decoded, which
needs its OpusHead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.remux import remux
from tests.harness.chromium import launch_chromium
from tests.harness.encoded_media import SentTrack
from tests.harness.system import require
from tests.recording.conftest import record

pytestmark = [pytest.mark.browser, require("chromium")]

PLAYER = """<!doctype html><video id="v" muted></video><script>
const video = document.getElementById("v");
window.played = new Promise((resolve) => {
  video.onerror = () => resolve({error: video.error.code, message: video.error.message});
  video.onloadedmetadata = () => { video.playbackRate = 4; video.play(); };
  video.onended = () => resolve({
    duration: video.duration,
    width: video.videoWidth,
    height: video.videoHeight,
    frames: video.getVideoPlaybackQuality().totalVideoFrames,
    audioBytes: video.webkitAudioDecodedByteCount,
  });
});
video.src = decodeURIComponent(location.hash.slice(1));
</script>"""


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_chromium_plays_the_recording(
    codec: str, vp8_call: list[SentTrack], h264_call: list[SentTrack], tmp_path: Path
) -> None:
    status = await record(tmp_path, vp8_call if codec == "VP8" else h264_call)
    result = remux(status.path)
    page_path = tmp_path / "player.html"
    page_path.write_text(PLAYER)

    async with launch_chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{page_path.as_uri()}#{Path(result.path).name}")
        played = await asyncio.wait_for(page.evaluate("window.played"), 60)

    assert "error" not in played, played
    assert played["duration"] == pytest.approx(4.0, abs=0.05)
    assert (played["width"], played["height"]) == (320, 240)
    assert played["frames"] > 60  # A's 120 at 4x speed, some dropped on a busy machine
    assert played["audioBytes"] > 0

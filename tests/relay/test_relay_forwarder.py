"""The fan-out's rules: bounded queues, keyframe starts, rate-limited requests."""

from __future__ import annotations

import asyncio
import fractions

import av
import pytest
from aiortc import MediaStreamError

from relay.codec import VisitCodec
from relay.forwarder import (
    AUDIO_QUEUE_FRAMES,
    VIDEO_QUEUE_FRAMES,
    ForwardedTrack,
    Forwarder,
    KeyframeRequester,
)
from relay.stats import RelayStats

pytestmark = pytest.mark.asyncio


def encode(codec_name: str, frames: int, **options: str) -> list[av.Packet]:
    """Real encoded frames: the first a keyframe, the rest deltas."""
    context = av.CodecContext.create(codec_name, "w")
    context.width, context.height, context.pix_fmt = 64, 48, "yuv420p"
    context.time_base = fractions.Fraction(1, 30)
    context.options = options
    packets: list[av.Packet] = []
    for index in range(frames):
        frame = av.VideoFrame(64, 48, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(index * 7) & 0xFF]) * plane.buffer_size)
        frame.pts = index
        packets += context.encode(frame)
    packets += context.encode(None)
    return packets


class Upstream:
    """Records keyframe requests a Forwarder sends to its publisher."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self) -> None:
        self.requests += 1


def packet(size: int = 10) -> av.Packet:
    return av.Packet(bytes(size))


async def test_vp8_and_h264_keyframes_are_recognised() -> None:
    vp8 = encode("libvpx", 5)
    assert [VisitCodec("VP8").is_keyframe(bytes(p)) for p in vp8] == [True] + [False] * 4
    h264 = encode("libx264", 5, tune="zerolatency", profile="baseline")
    assert [VisitCodec("H264").is_keyframe(bytes(p)) for p in h264] == [True] + [False] * 4
    assert not VisitCodec("VP8").is_keyframe(b"")


async def test_new_subscriber_starts_at_a_keyframe_and_asks_for_one() -> None:
    upstream = Upstream()
    stats = RelayStats()
    forwarder = Forwarder("video", "A", upstream, (RelayStats(),))
    track = ForwardedTrack(forwarder, accepting=True, stats=(stats,))
    forwarder.subscribe(track)
    assert upstream.requests == 1

    forwarder.push(packet(), False, 10)
    forwarder.push(packet(), False, 10)
    key = packet(20)
    forwarder.push(key, True, 20)
    after = packet(30)
    forwarder.push(after, False, 30)

    assert await track.recv() is key
    assert await track.recv() is after
    assert (
        stats.frames_dropped == 2 and stats.packets_forwarded == 2 and stats.bytes_forwarded == 50
    )


async def test_a_subscriber_that_falls_behind_resyncs_at_the_next_keyframe() -> None:
    upstream = Upstream()
    stats = RelayStats()
    forwarder = Forwarder("video", "A", upstream, (RelayStats(),))
    track = ForwardedTrack(forwarder, accepting=True, stats=(stats,))
    forwarder.subscribe(track)
    await asyncio.sleep(0.55)  # let the rate limiter allow the next request
    forwarder.push(packet(), True, 10)
    for _ in range(VIDEO_QUEUE_FRAMES * 3):
        forwarder.push(packet(), False, 10)

    assert track.queued == 0  # overflow discarded the lot
    assert stats.frames_dropped == VIDEO_QUEUE_FRAMES * 3 + 1
    assert upstream.requests == 2
    key = packet(5)
    forwarder.push(key, True, 5)
    assert await track.recv() is key


async def test_audio_queue_is_bounded_and_drops_the_oldest() -> None:
    stats = RelayStats()
    forwarder = Forwarder("audio", "A", Upstream(), (RelayStats(),))
    track = ForwardedTrack(forwarder, accepting=True, stats=(stats,))
    forwarder.subscribe(track)
    items = [packet() for _ in range(AUDIO_QUEUE_FRAMES + 5)]
    for item in items:
        forwarder.push(item, False, 10)
    assert stats.frames_dropped == 5
    assert await track.recv() is items[5]


async def test_keyframe_requests_are_rate_limited_but_never_lost() -> None:
    upstream = Upstream()
    requester = KeyframeRequester(upstream, interval=0.2)
    for _ in range(10):
        requester.request()
    assert upstream.requests == 1
    await asyncio.sleep(0.1)
    requester.request()
    assert upstream.requests == 1
    await asyncio.sleep(0.15)
    assert upstream.requests == 2  # the deferred one, merged
    await asyncio.sleep(0.3)
    assert upstream.requests == 2
    requester.request()
    assert upstream.requests == 3


async def test_a_deferred_request_is_dropped_once_a_keyframe_came() -> None:
    upstream = Upstream()
    forwarder = Forwarder("video", "A", upstream, (RelayStats(),))
    first = ForwardedTrack(forwarder, accepting=True, stats=(RelayStats(),))
    forwarder.subscribe(first)
    second = ForwardedTrack(forwarder, accepting=True, stats=(RelayStats(),))
    forwarder.subscribe(second)  # inside the window: deferred
    assert upstream.requests == 1
    forwarder.push(packet(), True, 10)  # the keyframe the first request brought
    await asyncio.sleep(0.6)
    assert upstream.requests == 1, "the deferred request was no longer needed"

    second.on_keyframe_request()  # a subscriber's PLI: only a keyframe satisfies it
    assert upstream.requests == 2
    second.on_keyframe_request()
    await asyncio.sleep(0.6)
    assert upstream.requests == 3
    second.on_keyframe_request()
    forwarder.push(packet(), True, 10)
    await asyncio.sleep(0.6)
    assert upstream.requests == 3


async def test_gates_pause_resume_and_stop() -> None:
    upstream = Upstream()
    forwarder = Forwarder("video", "A", upstream, (RelayStats(),))
    track = ForwardedTrack(forwarder, accepting=True, stats=(RelayStats(),))
    forwarder.subscribe(track)
    forwarder.push(packet(), True, 10)
    track.pause()
    assert track.queued == 0
    forwarder.push(packet(), True, 10)
    assert track.queued == 0
    track.resume()
    forwarder.push(packet(), False, 10)
    assert track.queued == 0  # waits for a keyframe after resuming
    forwarder.push(packet(), True, 10)
    assert track.queued == 1

    forwarder.set_active(False)
    assert track.queued == 0
    forwarder.push(packet(), True, 10)
    assert track.queued == 0
    forwarder.set_active(True)
    forwarder.push(packet(), True, 10)
    assert track.queued == 1

    await track.recv()
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    track.stop()
    with pytest.raises(MediaStreamError):
        await waiting
    with pytest.raises(MediaStreamError):
        await track.recv()

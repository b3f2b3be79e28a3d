"""What the recording tests share: a two-party call as real media, and the output decoded.

Participant A (``contact:C1``) sends 4 s of video and Opus from t = 10 s on
the arrival clock; B (``device:K1``) 3 s from t = 11 s, with another
sender clock. Encoded once per codec and test module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest

from relay.recorder import Recorder, RecordingStatus
from tests.harness.encoded_media import SentTrack, audio_track, record_call, video_track

A_START_US = 10_000_000
B_START_US = 11_000_000
CALL_CLOCK_US = 9_000_000
"""The arrival clock when the recorder starts, a second before A's first packet."""


def two_party_call(codec: str, **video: object) -> list[SentTrack]:
    """A's and B's video and audio; ``video`` overrides A's video options."""
    return [
        video_track("contact:C1", codec, start_us=A_START_US, seconds=4, seed=1, **video),  # type: ignore[arg-type]
        audio_track("contact:C1", start_us=A_START_US, seconds=4, seed=2),
        video_track(
            "device:K1",
            codec,
            start_us=B_START_US,
            seconds=3,
            seed=3,
            sender_clock_offset_us=-5_000_000,
        ),
        audio_track(
            "device:K1", start_us=B_START_US, seconds=3, seed=4, sender_clock_offset_us=-5_000_000
        ),
    ]


async def record(
    directory: Path,
    tracks: list[SentTrack],
    on_incomplete: Callable[[RecordingStatus], None] | None = None,
    **options: object,
) -> RecordingStatus:
    """Record ``tracks`` as one social visit and close the recording."""
    recorder = Recorder(
        directory,
        "V-1",
        "social",
        on_incomplete=on_incomplete,
        clock_us=lambda: CALL_CLOCK_US,
        **options,  # type: ignore[arg-type]
    )
    record_call(recorder, tracks)
    await asyncio.sleep(0)
    return await recorder.close()


def recorded(directory: Path, tracks: list[SentTrack], **options: object) -> RecordingStatus:
    """:func:`record` from synchronous code (a test without a loop of its own)."""
    return asyncio.run(record(directory, tracks, **options))  # type: ignore[arg-type]


@dataclass
class DecodedStream:
    title: str
    kind: str
    frames: int = 0
    samples: int = 0
    pts: list[float] = field(default_factory=list)
    """Seconds, of each decoded frame."""


def decode(path: str) -> dict[str, DecodedStream]:
    """Every stream of a file decoded with PyAV, by title (``participant kind``)."""
    streams: dict[int, DecodedStream] = {}
    with av.open(path) as container:
        for stream in container.streams:
            streams[stream.index] = DecodedStream(stream.metadata.get("title", ""), stream.type)
        for packet in container.demux():
            for frame in packet.decode():
                decoded = streams[packet.stream.index]
                decoded.frames += 1
                assert frame.pts is not None
                decoded.pts.append(float(frame.pts * packet.stream.time_base))
                if isinstance(frame, av.AudioFrame):
                    decoded.samples += frame.samples
    return {stream.title: stream for stream in streams.values()}


@pytest.fixture(scope="module")
def vp8_call() -> list[SentTrack]:
    return two_party_call("VP8")


@pytest.fixture(scope="module")
def h264_call() -> list[SentTrack]:
    return two_party_call("H264")

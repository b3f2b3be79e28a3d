"""Pre-packetized media for the load generator: VP8 and Opus RTP payloads, made once.

A simulated participant (``signaling.loadpeer``) must cost a small fraction of what the node
spends on it, so it never encodes nor packetizes while it runs: it replays the payloads made
here, in a loop, at their frame rate. :func:`load_media` encodes a few seconds of a panning
texture (what a camera pointed at a wall sees when it drifts) with libvpx at the bitrate asked
for, a keyframe every :data:`KEYFRAME_SECONDS`, and packetizes each frame as RFC 7741 says
(one VP8 payload descriptor with a 15-bit picture id per packet, payloads of at most
:data:`MAX_PAYLOAD` bytes, split evenly); and a second of a quiet tone with libopus at the
packet time asked for (20, 40 or 60 ms; longer packets mean fewer of them, which the JSON of a
run says). The result is kept in a file (:meth:`LoadMedia.save`), so that a fleet's worker
processes read what their coordinator encoded instead of encoding it again.
"""

from __future__ import annotations

import base64
import fractions
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

KEYFRAME_SECONDS = 2
"""A keyframe this often in the loop (a receiver that lost one waits at most this long)."""
LOOP_SECONDS = 4
MAX_PAYLOAD = 1100
"""Bytes of VP8 data per packet at most (descriptor excluded): under a 1200-byte MTU budget."""
PTIMES = (20, 40, 60)
OPUS_BITRATE = 32_000
BITRATES = {(160, 120, 10): 150_000, (640, 480, 30): 1_500_000}
"""Video bitrates of the two sizes the benches measure; other sizes scale by pixel rate."""
VIDEO_PATTERN = re.compile(r"^(\d{2,4})x(\d{2,4})@(\d{1,2})$")
VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000


@dataclass(frozen=True)
class VideoSpec:
    """A video size and frame rate, as ``--video 160x120@10`` writes it."""

    width: int
    height: int
    fps: int

    @classmethod
    def parse(cls, text: str) -> VideoSpec:
        """``WxH@FPS`` (ValueError otherwise): even sizes 32..1920 wide, 1..30 fps."""
        match = VIDEO_PATTERN.match(text.strip())
        if match is None:
            raise ValueError(f"video must look like 160x120@10, not {text!r}")
        width, height, fps = (int(group) for group in match.groups())
        if not (32 <= width <= 1920 and 32 <= height <= 1080 and width % 2 == 0 == height % 2):
            raise ValueError(f"video size {width}x{height}: even, 32x32 to 1920x1080")
        if not 1 <= fps <= 30:
            raise ValueError(f"video frame rate {fps}: 1 to 30 per second")
        return cls(width, height, fps)

    @property
    def bitrate(self) -> int:
        known = BITRATES.get((self.width, self.height, self.fps))
        if known is not None:
            return known
        return max(50_000, round(150_000 * self.width * self.height * self.fps / (160 * 120 * 10)))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}@{self.fps}"


@dataclass(frozen=True)
class VideoFrame:
    """One frame of the loop: its RTP payloads (descriptor included) and whether it is a key."""

    payloads: tuple[bytes, ...]
    keyframe: bool


@dataclass(frozen=True)
class LoadMedia:
    """A loop of VP8 frames and Opus packets, ready to be put behind RTP headers."""

    video: VideoSpec
    frames: tuple[VideoFrame, ...]
    opus: tuple[bytes, ...]
    ptime: int
    """Milliseconds of audio per Opus packet."""

    @property
    def keyframes(self) -> tuple[int, ...]:
        """Indexes of the loop's keyframes (the first frame is one)."""
        return tuple(index for index, frame in enumerate(self.frames) if frame.keyframe)

    def next_keyframe(self, index: int) -> int:
        """The first keyframe at or after loop position ``index`` (wrapping)."""
        count = len(self.frames)
        for step in range(count):
            position = (index + step) % count
            if self.frames[position].keyframe:
                return position
        return 0

    @property
    def video_kbps(self) -> float:
        octets = sum(len(p) for frame in self.frames for p in frame.payloads)
        return round(octets * 8 * self.video.fps / len(self.frames) / 1000, 1)

    @property
    def packets_per_second(self) -> dict[str, float]:
        video = (
            sum(len(frame.payloads) for frame in self.frames) * self.video.fps / len(self.frames)
        )
        return {"audio": round(1000 / self.ptime, 1), "video": round(video, 1)}

    def describe(self) -> dict[str, object]:
        """What a run's JSON says about the media it sent."""
        return {
            "video": f"VP8 {self.video}, {self.video_kbps} kbit/s, keyframe every {KEYFRAME_SECONDS} s "
            "and on PLI (the next keyframe of the loop)",
            "audio": f"Opus {self.ptime} ms packets"
            + (
                ""
                if self.ptime == 20
                else " (a browser sends 20 ms: fewer packets than a browser's)"
            ),
            "packets_per_second_per_participant": self.packets_per_second,
            "loop_seconds": LOOP_SECONDS,
        }

    def save(self, path: Path) -> None:
        data = {
            "video": str(self.video),
            "ptime": self.ptime,
            "frames": [
                {"key": frame.keyframe, "payloads": [_b64(p) for p in frame.payloads]}
                for frame in self.frames
            ],
            "opus": [_b64(p) for p in self.opus],
        }
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        temporary.replace(path)

    @classmethod
    def read(cls, path: Path) -> LoadMedia:
        data = json.loads(path.read_text())
        return cls(
            video=VideoSpec.parse(data["video"]),
            frames=tuple(
                VideoFrame(tuple(base64.b64decode(p) for p in f["payloads"]), bool(f["key"]))
                for f in data["frames"]
            ),
            opus=tuple(base64.b64decode(p) for p in data["opus"]),
            ptime=int(data["ptime"]),
        )


def load_media(video: VideoSpec, ptime: int = 20, *, cache: Path | None = None) -> LoadMedia:
    """The media for ``video`` and ``ptime``: read from ``cache`` (a directory) if made before,
    else encoded now (about a second of CPU at 640x480) and kept there."""
    if ptime not in PTIMES:
        raise ValueError(f"audio packet time must be one of {PTIMES} ms, not {ptime}")
    path = None if cache is None else cache / f"parlor-load-{video}-{ptime}ms-v1.json"
    if path is not None and path.exists():
        try:
            return LoadMedia.read(path)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # made by another version or cut short: make it again
    media = LoadMedia(video, _encode_video(video), _encode_opus(ptime), ptime)
    if path is not None:
        media.save(path)
    return media


def vp8_payloads(frame: bytes, picture_id: int) -> tuple[bytes, ...]:
    """RFC 7741 payloads of one encoded VP8 frame: a descriptor with the extension bit, a
    15-bit picture id and S set on the first packet, then at most :data:`MAX_PAYLOAD` bytes
    of the frame, the frame split into packets of (nearly) equal size."""
    count = max(1, math.ceil(len(frame) / MAX_PAYLOAD))
    size, extra = divmod(len(frame), count)
    picture = bytes([0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF])
    payloads = []
    position = 0
    for index in range(count):
        length = size + (1 if index < extra else 0)
        first = 0x90 if index == 0 else 0x80  # X, and S on the partition's first packet
        payloads.append(bytes([first, 0x80]) + picture + frame[position : position + length])
        position += length
    return tuple(payloads)


def _encode_video(video: VideoSpec) -> tuple[VideoFrame, ...]:
    import av

    count = video.fps * LOOP_SECONDS
    context = av.CodecContext.create("libvpx", "w")
    context.width, context.height, context.pix_fmt = video.width, video.height, "yuv420p"
    context.time_base = fractions.Fraction(1, video.fps)
    context.framerate = fractions.Fraction(video.fps, 1)
    context.bit_rate = video.bitrate
    context.gop_size = video.fps * KEYFRAME_SECONDS
    context.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(video.bitrate),
        "maxrate": str(video.bitrate),
        "bufsize": str(video.bitrate),
        "keyint_min": str(video.fps * KEYFRAME_SECONDS),
    }
    encoded: list[tuple[bytes, bool]] = []
    for index, luma in enumerate(_panning_texture(video.width, video.height, count)):
        frame = av.VideoFrame(video.width, video.height, "yuv420p")
        frame.planes[0].update(_rows(luma, frame.planes[0].line_size, video.width))
        for plane in frame.planes[1:]:
            plane.update(bytes([128]) * plane.buffer_size)
        frame.pts = index
        encoded += [(bytes(p), bool(p.is_keyframe)) for p in context.encode(frame)]
    encoded += [(bytes(p), bool(p.is_keyframe)) for p in context.encode(None)]
    return tuple(
        VideoFrame(vp8_payloads(data, index & 0x7FFF), keyframe)
        for index, (data, keyframe) in enumerate(encoded[:count])
    )


def _panning_texture(width: int, height: int, count: int) -> list[bytes]:
    """``count`` luma planes of a field of soft random blocks, drifting right and down."""
    rng = random.Random(14)
    block = 2
    columns = (width + 2 * count) // block + 2
    lines = height // block + count // 4 + 2
    field = [bytes(rng.randrange(48, 208) for _ in range(columns)) for _ in range(lines)]
    wide = [b"".join(bytes([value]) * block for value in line) for line in field]
    pictures = []
    for index in range(count):
        dx, dy = 2 * index, index // 2
        pictures.append(b"".join(wide[(y + dy) // block][dx : dx + width] for y in range(height)))
    return pictures


def _rows(luma: bytes, stride: int, width: int) -> bytes:
    if stride == width:
        return luma
    pad = bytes(stride - width)
    return b"".join(luma[y : y + width] + pad for y in range(0, len(luma), width))


def _encode_opus(ptime: int) -> tuple[bytes, ...]:
    import av

    samples = AUDIO_CLOCK * ptime // 1000
    context = av.CodecContext.create("libopus", "w")
    context.sample_rate, context.layout, context.format = AUDIO_CLOCK, "stereo", "s16"
    context.bit_rate = OPUS_BITRATE
    context.options = {"frame_duration": str(ptime), "application": "voip"}
    packets: list[bytes] = []
    for index in range(1000 // ptime):
        tone = b"".join(
            int(900 * math.sin(2 * math.pi * 330 * (index * samples + i) / AUDIO_CLOCK)).to_bytes(
                2, "little", signed=True
            )
            * 2
            for i in range(samples)
        )
        frame = av.AudioFrame(format="s16", layout="stereo", samples=samples)
        frame.planes[0].update(tone)
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = index * samples
        frame.time_base = fractions.Fraction(1, AUDIO_CLOCK)
        packets += [bytes(p) for p in context.encode(frame)]
    return tuple(packets) or (b"\xf8\xff\xfe",)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()

"""Pre-encoded, pre-packetized media for clients that must cost (almost) nothing to run.

A light client (``tests.harness.rtpclient``) sends RTP packets straight from these lists:
no encoder, no packetizer at run time. :func:`footage` encodes a panning field of soft
random blocks (like a slowly moving camera) once per machine and keeps it in the temp
directory: each frame twice, as a delta frame and as a keyframe (sent when a keyframe is
asked for), packetized the way aiortc's senders packetize (``aiortc.codecs`` ``pack``:
VP8 payload descriptors with a picture id, H264 STAP-A/FU-A), plus 20 ms Opus frames.
"""

from __future__ import annotations

import base64
import contextlib
import fractions
import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = 2


@dataclass(frozen=True)
class Footage:
    """Frames as lists of RTP payloads; the loop repeats after ``len(deltas)`` frames."""

    codec: str
    width: int
    height: int
    fps: int
    bitrate: int
    deltas: list[list[bytes]]
    """Per frame: the payloads of its delta-frame version (frame 0 is a keyframe anyway)."""
    keyframes: list[list[bytes]]
    """Per frame: the payloads of its keyframe version."""
    opus: list[bytes]
    """20 ms Opus frames (one payload each)."""

    @property
    def video_kbps(self) -> float:
        octets = sum(len(p) for frame in self.deltas for p in frame)
        return octets * 8 * self.fps / len(self.deltas) / 1000

    @property
    def packets_per_second(self) -> float:
        """RTP packets per second of video and audio together."""
        return sum(len(frame) for frame in self.deltas) * self.fps / len(self.deltas) + 50


def footage(
    codec: str = "VP8",
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    bitrate: int = 1_500_000,
    frames: int = 90,
) -> Footage:
    """The footage for these settings: from the cache, or encoded now (once per machine)."""
    name = f"parlor-footage-v{VERSION}-{codec}-{width}x{height}-{fps}-{bitrate}-{frames}.json"
    cache = Path(tempfile.gettempdir()) / name
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(cache.read_text())
        return Footage(
            codec=codec,
            width=width,
            height=height,
            fps=fps,
            bitrate=bitrate,
            deltas=[[base64.b64decode(p) for p in f] for f in data["deltas"]],
            keyframes=[[base64.b64decode(p) for p in f] for f in data["keyframes"]],
            opus=[base64.b64decode(p) for p in data["opus"]],
        )
    made = _encode(codec, width, height, fps, bitrate, frames)
    encoded = {
        "deltas": [[base64.b64encode(p).decode() for p in f] for f in made.deltas],
        "keyframes": [[base64.b64encode(p).decode() for p in f] for f in made.keyframes],
        "opus": [base64.b64encode(p).decode() for p in made.opus],
    }
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps(encoded))
    return made


def _encode(codec: str, width: int, height: int, fps: int, bitrate: int, count: int) -> Footage:
    import av
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    rng = random.Random(7)
    block = 4
    field_width = width + 3 * count
    coarse = [
        bytes(rng.randrange(40, 216) for _ in range(field_width // block + 1))
        for _ in range(height // block + 8)
    ]
    rows = [b"".join(bytes([v]) * block for v in row)[:field_width] for row in coarse]
    pictures = [
        b"".join(
            rows[(y + index) // block % len(rows)][3 * index : 3 * index + width]
            for y in range(height)
        )
        for index in range(count)
    ]
    if codec == "VP8":
        parameters = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    else:
        parameters = RTCRtpCodecParameters(
            mimeType="video/H264",
            clockRate=90000,
            payloadType=102,
            parameters={"packetization-mode": "1", "profile-level-id": "42e01f"},
        )
    packer = get_encoder(parameters)

    def encode(gop: int) -> list[list[bytes]]:
        if codec == "VP8":
            context = av.CodecContext.create("libvpx", "w")
            context.options = {
                "deadline": "realtime",
                "cpu-used": "8",
                "lag-in-frames": "0",
                "minrate": str(bitrate),
                "maxrate": str(bitrate),
                "bufsize": str(bitrate),
                "keyint_min": str(gop),
                "qmax": "56",
            }
        else:
            context = av.CodecContext.create("libx264", "w")
            context.options = {
                "tune": "zerolatency",
                "preset": "veryfast",
                "profile": "baseline",
                "level": "31",
            }
        context.width, context.height, context.pix_fmt = width, height, "yuv420p"
        context.time_base = fractions.Fraction(1, fps)
        context.bit_rate = bitrate
        context.gop_size = gop
        out: list[bytes] = []
        for index, luma in enumerate(pictures):
            frame = av.VideoFrame(width, height, "yuv420p")
            frame.planes[0].update(_fit(luma, frame.planes[0], width, height))
            for plane in frame.planes[1:]:
                plane.update(bytes([128]) * plane.buffer_size)
            frame.pts = index
            if gop == 1:
                frame.pict_type = av.video.frame.PictureType.I
            out += [bytes(p) for p in context.encode(frame)]
        out += [bytes(p) for p in context.encode(None)]
        payloads = []
        for index, data in enumerate(out[:count]):
            packet = av.Packet(data)
            packet.pts, packet.time_base = index * (90000 // fps), fractions.Fraction(1, 90000)
            payloads.append(list(packer.pack(packet)[0]))
        return payloads

    opus = av.CodecContext.create("libopus", "w")
    opus.sample_rate, opus.layout, opus.format = 48000, "stereo", "s16"
    opus.bit_rate = 32000
    audio: list[bytes] = []
    for index in range(50):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        frame.planes[0].update(bytes((((i // 2) * 7 + index) % 64) for i in range(960 * 4)))
        frame.sample_rate = 48000
        frame.pts = index * 960
        audio += [bytes(p) for p in opus.encode(frame)]
    return Footage(
        codec=codec,
        width=width,
        height=height,
        fps=fps,
        bitrate=bitrate,
        deltas=encode(10_000),
        keyframes=encode(1),
        opus=audio or [b"\xf8\xff\xfe"],
    )


def _fit(luma: bytes, plane: Any, width: int, height: int) -> bytes:
    if plane.line_size == width:
        return luma
    pad = bytes(plane.line_size - width)
    return b"".join(luma[y * width : (y + 1) * width] + pad for y in range(height))

"""Real encoded media as timed RTP packets, for the recording tests and benches.

Video is a moving test pattern with a noisy patch (so frames have real
sizes and span several packets) encoded by aiortc's own VP8 or H264
encoder and packetizer; audio is a tone encoded by aiortc's Opus encoder.
Packets are built byte by byte (:func:`tests.harness.rtp_packets.rtp_packet`),
with the header extensions Chromium sends (abs-send-time, transport-wide
sequence number; audio level on audio), and given the arrival times a relay would see: capture time + network
delay + jitter (seeded), packets of one frame a little apart. Sender
reports carry the sender's own NTP clock, offset from the arrival clock by
``sender_clock_offset_us`` (senders' clocks are never the relay's).

Nothing here uses the product's packet code; :func:`record_call` feeds a
call into a :class:`relay.recorder.Recorder`.
"""

from __future__ import annotations

import fractions
import math
import random
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc.codecs import get_encoder
from aiortc.codecs.h264 import h264_depayload
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from tests.harness.rtp_packets import rtp_packet

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
PAYLOAD_TYPES = {"VP8": 96, "H264": 102, "opus": 111}
_NTP_UNIX_OFFSET = 2_208_988_800
_TIME_BASE_VIDEO = fractions.Fraction(1, VIDEO_CLOCK)


def is_padding_only(packet: bytes) -> bool:
    """True for a packet whose padding is all there is after its header (RFC 3550 §5.1)."""
    if not packet[0] & 0x20:
        return False
    header = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        header += 4 + 4 * int.from_bytes(packet[header + 2 : header + 4], "big")
    return len(packet) - header == packet[-1]


@dataclass
class SentTrack:
    """One publisher track as sent: its packets, reports and what they carry."""

    participant: str
    kind: str
    codec: str
    clock_rate: int
    payload_type: int
    ssrc: int
    packets: list[tuple[int, bytes]] = field(default_factory=list)
    """``(arrival_us, RTP packet)``, in sending order."""
    sender_reports: list[tuple[int, int, int]] = field(default_factory=list)
    """``(arrival_us, ntp, rtp_timestamp)``."""
    frames: int = 0
    """Video frames (audio packets) encoded and sent, dropped ones included."""
    keyframes: list[int] = field(default_factory=list)
    """Indexes of the video frames that are keyframes."""
    samples: int = 0
    """Audio samples (48 kHz) sent."""
    start_us: int = 0
    """Capture time of the first frame, on the arrival clock."""


def _ntp(unix_us: int) -> int:
    seconds, micros = divmod(unix_us, 1_000_000)
    return ((seconds + _NTP_UNIX_OFFSET) << 32) | ((micros << 32) // 1_000_000)


def _browser_extensions(send_us: int, sequence: int) -> list[tuple[int, bytes]]:
    """abs-send-time (id 2, 6.18 fixed-point s) and transport-wide sequence (id 3), as Chromium."""
    abs_send_time = ((send_us << 18) // 1_000_000) & 0xFFFFFF
    return [(2, abs_send_time.to_bytes(3, "big")), (3, (sequence & 0xFFFF).to_bytes(2, "big"))]


def _pattern(width: int, height: int, index: int, rng: random.Random) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    luma = frame.planes[0]
    line = luma.line_size
    shift = (index * 4) % line
    row = bytes((x * 3) & 0xFF for x in range(line))
    row = row[shift:] + row[:shift]
    plane = bytearray(row * luma.height)
    patch = min(64, width // 2, height // 2)
    top = (index * 2) % (height - patch)
    for y in range(top, top + patch):
        plane[y * line + 16 : y * line + 16 + patch] = rng.randbytes(patch)
    luma.update(bytes(plane))
    for chroma in frame.planes[1:]:
        chroma.update(bytes([128 + (index % 32)]) * chroma.buffer_size)
    return frame


def _video_keyframe(codec: str, payloads: list[bytes]) -> bool:
    if codec == "VP8":
        _, data = VpxPayloadDescriptor.parse(payloads[0])
        return bool(data) and data[0] & 0x01 == 0
    annex_b = b"".join(h264_depayload(payload) for payload in payloads)
    return any(unit and unit[0] & 0x1F == 5 for unit in annex_b.split(b"\x00\x00\x01"))


def _sender_reports(
    track: SentTrack, seconds: float, rtp_start: int, delay_us: int, offset_us: int, every_us: int
) -> None:
    sent_us = track.start_us + every_us // 2
    while sent_us < track.start_us + seconds * 1_000_000:
        rtp_timestamp = rtp_start + (sent_us - track.start_us) * track.clock_rate // 1_000_000
        track.sender_reports.append(
            (sent_us + delay_us, _ntp(sent_us + offset_us), rtp_timestamp & 0xFFFFFFFF)
        )
        sent_us += every_us


def video_track(
    participant: str,
    codec: str,
    *,
    start_us: int,
    seconds: float,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    bitrate: int = 600_000,
    keyframe_at: tuple[int, ...] = (),
    drop: frozenset[tuple[int, int]] = frozenset(),
    padding_after: frozenset[int] = frozenset(),
    delay_us: int = 20_000,
    jitter_us: int = 2_000,
    sender_clock_offset_us: int = 1_700_000_000_000_000,
    sender_report_every_us: int | None = 1_000_000,
    seed: int = 1,
) -> SentTrack:
    """``seconds`` of ``codec`` video captured from ``start_us``.

    ``keyframe_at``: frame indexes encoded as keyframes besides the first
    (what a PLI would get). ``drop``: ``(frame index, packet index)`` pairs
    left out, as if lost on the way. ``padding_after``: frame indexes
    followed by a padding-only packet (a bandwidth probe on the media SSRC,
    as senders without RTX send), which takes the next sequence number.
    """
    rng = random.Random(seed)
    payload_type = PAYLOAD_TYPES[codec]
    parameters = (
        {"packetization-mode": "1", "profile-level-id": "42e01f"} if codec == "H264" else {}
    )
    encoder = get_encoder(
        RTCRtpCodecParameters(
            mimeType=f"video/{codec}",
            clockRate=VIDEO_CLOCK,
            payloadType=payload_type,
            parameters=parameters,
        )
    )
    encoder.target_bitrate = bitrate
    track = SentTrack(
        participant,
        "video",
        codec,
        VIDEO_CLOCK,
        payload_type,
        rng.getrandbits(32),
        start_us=start_us,
    )
    sequence = rng.randrange(1 << 15)
    rtp_start = rng.getrandbits(32)
    step = VIDEO_CLOCK // fps
    for index in range(int(seconds * fps)):
        frame = _pattern(width, height, index, rng)
        frame.pts = index * step
        frame.time_base = _TIME_BASE_VIDEO
        payloads, _ = encoder.encode(frame, force_keyframe=index in keyframe_at)
        if not payloads:
            continue
        track.frames += 1
        if _video_keyframe(codec, payloads):
            track.keyframes.append(index)
        capture_us = start_us + index * 1_000_000 // fps
        arrival_us = capture_us + delay_us + rng.randrange(jitter_us + 1)
        timestamp = rtp_start + index * step
        for number, payload in enumerate(payloads):
            if (index, number) not in drop:
                packet = rtp_packet(
                    payload_type=payload_type,
                    sequence_number=sequence,
                    timestamp=timestamp,
                    ssrc=track.ssrc,
                    marker=number == len(payloads) - 1,
                    extensions=_browser_extensions(arrival_us, sequence),
                    payload=payload,
                )
                track.packets.append((arrival_us + number * 100, packet))
            sequence += 1
        if index in padding_after:
            probe = rtp_packet(
                payload_type=payload_type,
                sequence_number=sequence,
                timestamp=timestamp,
                ssrc=track.ssrc,
                extensions=_browser_extensions(arrival_us, sequence),
                payload=b"",
                padding=224,
            )
            track.packets.append((arrival_us + len(payloads) * 100, probe))
            sequence += 1
    if sender_report_every_us:
        _sender_reports(
            track, seconds, rtp_start, delay_us, sender_clock_offset_us, sender_report_every_us
        )
    return track


def audio_track(
    participant: str,
    *,
    start_us: int,
    seconds: float,
    drop: frozenset[int] = frozenset(),
    delay_us: int = 20_000,
    jitter_us: int = 2_000,
    sender_clock_offset_us: int = 1_700_000_000_000_000,
    sender_report_every_us: int | None = 1_000_000,
    seed: int = 2,
) -> SentTrack:
    """``seconds`` of a 440 Hz tone in 20 ms Opus packets; ``drop``: packet indexes lost."""
    rng = random.Random(seed)
    encoder = get_encoder(
        RTCRtpCodecParameters(
            mimeType="audio/opus", clockRate=AUDIO_CLOCK, channels=2, payloadType=111
        )
    )
    track = SentTrack(
        participant, "audio", "opus", AUDIO_CLOCK, 111, rng.getrandbits(32), start_us=start_us
    )
    sequence = rng.randrange(1 << 15)
    rtp_start = rng.getrandbits(32)
    samples = 960
    tone = b"".join(
        int(8000 * math.sin(2 * math.pi * 440 * n / AUDIO_CLOCK)).to_bytes(2, "little", signed=True)
        * 2
        for n in range(samples)
    )
    sent = 0
    for index in range(int(seconds * 50)):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=samples)
        frame.planes[0].update(tone)
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = index * samples
        frame.time_base = fractions.Fraction(1, AUDIO_CLOCK)
        payloads, timestamp = encoder.encode(frame)
        for payload in payloads:
            capture_us = start_us + sent * 20_000
            if sent not in drop:
                arrival_us = capture_us + delay_us + rng.randrange(jitter_us + 1)
                packet = rtp_packet(
                    payload_type=111,
                    sequence_number=sequence,
                    timestamp=rtp_start + timestamp,
                    ssrc=track.ssrc,
                    extensions=[*_browser_extensions(arrival_us, sequence), (1, b"\x9e")],
                    payload=payload,
                )
                track.packets.append((arrival_us, packet))
            sequence += 1
            sent += 1
    track.frames = sent
    track.samples = sent * samples
    if sender_report_every_us:
        _sender_reports(
            track, seconds, rtp_start, delay_us, sender_clock_offset_us, sender_report_every_us
        )
    return track


def repeated(track: SentTrack, seconds: float, period_us: int) -> SentTrack:
    """``track`` (``period_us`` long, starting with a keyframe) sent again and again.

    Each repetition continues the sequence numbers and RTP timestamps, so the
    result is one valid stream ``seconds`` long, a keyframe at every
    repetition: long calls without encoding them. Sender reports are
    extended at the same rate.
    """
    repetitions = max(1, int(seconds * 1_000_000 // period_us))
    last_sequence = int.from_bytes(track.packets[-1][1][2:4], "big")
    first_sequence = int.from_bytes(track.packets[0][1][2:4], "big")
    sequence_step = (last_sequence - first_sequence + 1) & 0xFFFF
    timestamp_step = period_us * track.clock_rate // 1_000_000
    out = SentTrack(
        track.participant,
        track.kind,
        track.codec,
        track.clock_rate,
        track.payload_type,
        track.ssrc,
        start_us=track.start_us,
        frames=track.frames * repetitions,
        samples=track.samples * repetitions,
    )
    for repetition in range(repetitions):
        shift_us = repetition * period_us
        for arrival, packet in track.packets:
            sequence = (int.from_bytes(packet[2:4], "big") + repetition * sequence_step) & 0xFFFF
            timestamp = int.from_bytes(packet[4:8], "big") + repetition * timestamp_step
            header = packet[:2] + sequence.to_bytes(2, "big")
            header += (timestamp & 0xFFFFFFFF).to_bytes(4, "big")
            out.packets.append((arrival + shift_us, header + packet[8:]))
        out.keyframes += [k + repetition * (track.frames) for k in track.keyframes]
        for arrival, ntp, rtp in track.sender_reports:
            ntp_shift = (shift_us << 32) // 1_000_000
            out.sender_reports.append(
                (
                    arrival + shift_us,
                    ntp + ntp_shift,
                    (rtp + repetition * timestamp_step) & 0xFFFFFFFF,
                )
            )
    return out


class CallFeed:
    """Feeds ``tracks`` into a ``relay.recorder.Recorder`` in arrival order, as the SFU would.

    Each track is declared (``recorder.track``) just before its first
    packet or report; :meth:`feed` taps everything that arrived before a
    time, so a test can act between two parts of a call.
    """

    def __init__(self, recorder: Any, tracks: list[SentTrack]) -> None:
        self._recorder = recorder
        self._tracks = tracks
        events: list[tuple[int, int, int, Any]] = []
        for number, track in enumerate(tracks):
            events += [(arrival, number, 1, packet) for arrival, packet in track.packets]
            events += [
                (arrival, number, 0, (ntp, rtp)) for arrival, ntp, rtp in track.sender_reports
            ]
        events.sort(key=lambda event: (event[0], event[1], event[2]))
        self._events = events
        self._next = 0
        self._taps: dict[int, Any] = {}
        self.packets = 0

    def feed(self, until_us: int | None = None) -> None:
        """Tap every packet and report that arrived before ``until_us`` (None: all)."""
        events = self._events
        while self._next < len(events) and (until_us is None or events[self._next][0] < until_us):
            arrival, number, is_packet, item = events[self._next]
            self._next += 1
            tap = self._taps.get(number)
            if tap is None:
                track = self._tracks[number]
                tap = self._taps[number] = self._recorder.track(
                    track.participant, track.kind, track.codec, track.clock_rate, track.payload_type
                )
            if is_packet:
                tap(item, arrival)
                self.packets += 1
            else:
                ntp, rtp = item
                tap.sender_report(self._tracks[number].ssrc, ntp, rtp, arrival)


def record_call(recorder: Any, tracks: list[SentTrack]) -> None:
    """Feed a whole call into ``recorder`` (see :class:`CallFeed`)."""
    CallFeed(recorder, tracks).feed()

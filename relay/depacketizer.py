"""Encoded frames from recorded RTP packets, dropping what cannot be decoded.

After a call, :mod:`relay.remux` turns each recorded track back into the
frames its publisher encoded. Packets come in sequence order from a
:class:`ReorderBuffer` (which also drops duplicates and waits a while for
late or retransmitted ones), with gaps where packets were lost:

* **VP8** (RFC 7741): a frame is the packets sharing one RTP timestamp; it
  starts at the packet with S=1 and partition index 0 and ends with the
  marker bit. The payload descriptors are stripped and the rest joined.
* **H264** (RFC 6184, packetization mode 1): an access unit is the packets
  sharing one timestamp, ending with the marker bit; single NAL unit
  packets, STAP-A aggregates and FU-A fragments become one Annex B access
  unit (4-byte start codes). Nothing in a packet says it starts an access
  unit, so the frame's start is known when the packet before it arrived
  (and ended the previous one), or when it begins with an SPS, as every
  keyframe does.
* **Opus** (RFC 7587): one packet is one frame.

A video frame with a missing packet is dropped, and so is every frame after
it (or after a lost whole frame) until the next keyframe: a decoder given
frames whose references are missing shows garbage. A frame is complete when
its packets run without a gap from a known start to the marker bit (or to
the next frame's first packet, if a sender forgets the marker).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Generic, TypeVar

from relay.payload import H264_FU_A, H264_IDR, H264_SPS, H264_STAP_A, vp8_descriptor_length
from relay.rtp import MalformedPacket

START_CODE = b"\x00\x00\x00\x01"
DEFAULT_REORDER_WINDOW_US = 1_000_000
"""How long a packet waits for the ones before it: relay.retransmission's NACK age."""

T = TypeVar("T")


class Unwrapper:
    """Extends wrapping counters (16-bit sequence numbers, 32-bit timestamps).

    Each value is placed nearest to the previous one, so reordering within
    half the range keeps its order.
    """

    __slots__ = ("_mask", "_half", "_last")

    def __init__(self, bits: int) -> None:
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._last: int | None = None

    def nearest(self, value: int) -> int:
        """The extended value nearest to the last one, without moving on."""
        last = self._last
        if last is None:
            return value
        return last + ((value - last + self._half) & self._mask) - self._half

    def extend(self, value: int) -> int:
        last = self._last
        if last is None:
            self._last = value
            return value
        delta = ((value - last + self._half) & self._mask) - self._half
        self._last = last + delta
        return last + delta


class ReorderBuffer(Generic[T]):
    """Releases one stream's packets in sequence order, each at most once.

    A packet is released as soon as every earlier one was, or once it has
    waited ``window_us`` (on the arrival clock) for the missing ones, which
    are then given up. Duplicates and packets older than what was released
    are dropped (counted in ``late``).
    """

    def __init__(self, window_us: int = DEFAULT_REORDER_WINDOW_US) -> None:
        self._window_us = window_us
        self._heap: list[tuple[int, int, T]] = []
        self._pending: set[int] = set()
        self._next: int | None = None
        self.late = 0

    def push(self, sequence: int, arrival_us: int, item: T) -> list[tuple[int, T]]:
        """Add ``item`` with extended ``sequence``; what can be released now, in order."""
        if (self._next is not None and sequence < self._next) or sequence in self._pending:
            self.late += 1
            return []
        heapq.heappush(self._heap, (sequence, arrival_us, item))
        self._pending.add(sequence)
        return self._release(arrival_us)

    def flush(self) -> list[tuple[int, T]]:
        """Everything still held, in order (the stream ended)."""
        return self._release(None)

    def _release(self, now_us: int | None) -> list[tuple[int, T]]:
        out: list[tuple[int, T]] = []
        heap = self._heap
        while heap:
            sequence, arrival_us, item = heap[0]
            if not (
                sequence == self._next or now_us is None or arrival_us + self._window_us <= now_us
            ):
                break
            heapq.heappop(heap)
            self._pending.discard(sequence)
            self._next = sequence + 1
            out.append((sequence, item))
        return out


@dataclass(slots=True)
class EncodedFrame:
    """One frame as the publisher encoded it."""

    timestamp: int
    """Extended RTP timestamp."""
    data: bytes
    """VP8 frame, H264 access unit in Annex B, or Opus packet."""
    keyframe: bool
    arrival_us: int
    """When its first packet arrived."""
    duration: int = 0
    """In RTP clock ticks when the payload says (Opus), else 0."""


class Depacketizer:
    """Frames from one stream's packets, given in sequence order.

    :meth:`push` takes each packet released by a :class:`ReorderBuffer`
    (extended sequence number and timestamp) and returns the frames it
    completed; :meth:`flush` ends the stream. ``frames``, ``dropped`` and
    ``skipped`` count frames returned, incomplete (or malformed) and
    complete but unusable until the next keyframe.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.dropped = 0
        self.skipped = 0

    def push(
        self, sequence: int, timestamp: int, marker: bool, payload: bytes, arrival_us: int
    ) -> list[EncodedFrame]:
        raise NotImplementedError

    def flush(self) -> list[EncodedFrame]:
        return []


class OpusDepacketizer(Depacketizer):
    """Opus: each non-empty payload is a frame (RFC 7587 §4.2)."""

    def push(
        self, sequence: int, timestamp: int, marker: bool, payload: bytes, arrival_us: int
    ) -> list[EncodedFrame]:
        if not payload:
            return []
        try:
            duration = opus_packet_samples(payload)
        except MalformedPacket:
            self.dropped += 1
            return []
        self.frames += 1
        return [EncodedFrame(timestamp, payload, True, arrival_us, duration)]


class _VideoDepacketizer(Depacketizer):
    """Groups packets by timestamp into frames; the codec joins payloads."""

    def __init__(self) -> None:
        super().__init__()
        self._payloads: list[bytes] = []
        self._timestamp = 0
        self._first = 0
        self._last = 0
        self._marker = False
        self._started = False
        self._broken = False
        self._arrival_us = 0
        self._expected: int | None = None
        """The sequence number after the last packet seen."""
        self._gap_before = False
        """Packets are missing between the previous frame and this one."""
        self._need_keyframe = True

    def push(
        self, sequence: int, timestamp: int, marker: bool, payload: bytes, arrival_us: int
    ) -> list[EncodedFrame]:
        out: list[EncodedFrame] = []
        gap = self._expected is not None and sequence != self._expected
        if self._payloads and timestamp == self._timestamp:
            self._broken |= gap
        else:
            if self._payloads:
                self._finish(out, ended=not gap)
            self._gap_before = gap  # a whole frame may be lost: _finish decides
            if payload:
                predecessor = self._expected is not None and not gap
                self._started = self._starts_frame(payload, predecessor)
                self._timestamp = timestamp
                self._first = sequence
                self._broken = False
                self._arrival_us = arrival_us
        self._expected = sequence + 1
        if not payload:  # padding: takes a sequence number, carries nothing
            return out
        self._payloads.append(payload)
        self._last = sequence
        self._marker = marker
        if marker:
            self._finish(out, ended=True)
        return out

    def flush(self) -> list[EncodedFrame]:
        out: list[EncodedFrame] = []
        if self._payloads:
            self._finish(out, ended=False)
        return out

    def _finish(self, out: list[EncodedFrame], ended: bool) -> None:
        """Close the current frame; ``ended``: the packet after its last one arrived."""
        payloads, self._payloads = self._payloads, []
        frame = None
        if self._started and not self._broken and (self._marker or ended):
            try:
                frame = self._assemble(payloads)
            except MalformedPacket:
                frame = None
        if frame is None:
            self.dropped += 1
            self._need_keyframe = True
            return
        data, keyframe = frame
        if self._gap_before and not self._follows(payloads[0]):
            self._need_keyframe = True  # a whole frame was lost, not only padding
        if self._need_keyframe and not keyframe:
            self.skipped += 1
            return
        self._need_keyframe = False
        self._decoded(payloads[0])
        self.frames += 1
        out.append(EncodedFrame(self._timestamp, data, keyframe, self._arrival_us))

    def _starts_frame(self, payload: bytes, predecessor: bool) -> bool:
        raise NotImplementedError

    def _follows(self, first_payload: bytes) -> bool:
        """True when the payload proves this frame directly follows the last one returned."""
        return False

    def _decoded(self, first_payload: bytes) -> None:
        """Remember what :meth:`_follows` needs of a frame that was returned."""

    def _assemble(self, payloads: list[bytes]) -> tuple[bytes, bool] | None:
        raise NotImplementedError


class Vp8Depacketizer(_VideoDepacketizer):
    """VP8 (RFC 7741).

    A gap in sequence numbers between two frames is not always a loss: a
    relay may not pass on padding-only packets, which take sequence numbers
    too. Browsers number VP8 frames (PictureID, RFC 7741 §4.2), so a frame
    whose PictureID follows the last one returned loses nothing, as in
    libwebrtc's own VP8 receiver.
    """

    def __init__(self) -> None:
        super().__init__()
        self._picture_id: tuple[int, int] | None = None
        """(PictureID, its modulus) of the last frame returned."""

    def _starts_frame(self, payload: bytes, predecessor: bool) -> bool:
        return payload[0] & 0x1F == 0x10  # S=1, PID=0

    def _follows(self, first_payload: bytes) -> bool:
        current = vp8_picture_id(first_payload)
        last = self._picture_id
        return (
            current is not None
            and last is not None
            and current[1] == last[1]
            and current[0] == (last[0] + 1) % last[1]
        )

    def _decoded(self, first_payload: bytes) -> None:
        self._picture_id = vp8_picture_id(first_payload)

    def _assemble(self, payloads: list[bytes]) -> tuple[bytes, bool] | None:
        data = b"".join(p[vp8_descriptor_length(p, 0, len(p)) :] for p in payloads)
        if not data:
            return None
        return data, data[0] & 0x01 == 0  # RFC 6386 §9.1: P=0 is a keyframe


class H264Depacketizer(_VideoDepacketizer):
    """H264 (RFC 6184, packetization mode 1) to Annex B access units."""

    def _starts_frame(self, payload: bytes, predecessor: bool) -> bool:
        nal_type = payload[0] & 0x1F
        if nal_type == H264_FU_A:
            if len(payload) < 2 or not payload[1] & 0x80:
                return False
            first_type = payload[1] & 0x1F
        elif nal_type == H264_STAP_A:
            first_type = payload[3] & 0x1F if len(payload) > 3 else 0
        else:
            first_type = nal_type
        return predecessor or first_type == H264_SPS

    def _assemble(self, payloads: list[bytes]) -> tuple[bytes, bool] | None:
        units: list[bytes] = []
        fragment: bytearray | None = None
        for payload in payloads:
            nal_type = payload[0] & 0x1F
            if nal_type == H264_FU_A:
                if len(payload) < 3:
                    raise MalformedPacket("H264 FU-A fragment is empty")
                header = payload[1]
                if header & 0x80:  # S: first fragment
                    if fragment is not None:
                        raise MalformedPacket("H264 FU-A starts inside another")
                    fragment = bytearray(((payload[0] & 0xE0) | (header & 0x1F),))
                elif fragment is None:
                    raise MalformedPacket("H264 FU-A continues a unit that did not start")
                fragment += payload[2:]
                if header & 0x40:  # E: last fragment
                    units.append(bytes(fragment))
                    fragment = None
                continue
            if fragment is not None:
                raise MalformedPacket("H264 FU-A unit did not end")
            if nal_type == H264_STAP_A:
                position = 1
                while position < len(payload):
                    if position + 2 > len(payload):
                        raise MalformedPacket("H264 STAP-A unit size is truncated")
                    size = (payload[position] << 8) | payload[position + 1]
                    position += 2
                    if size == 0 or position + size > len(payload):
                        raise MalformedPacket("H264 STAP-A unit overruns the payload")
                    units.append(payload[position : position + size])
                    position += size
            elif 1 <= nal_type <= 23:
                units.append(payload)
            else:
                raise MalformedPacket(f"H264 packet type {nal_type} is not in packetization mode 1")
        if fragment is not None:
            raise MalformedPacket("H264 FU-A unit did not end")
        if not units:
            return None
        keyframe = any(unit[0] & 0x1F == H264_IDR for unit in units)
        return b"".join(START_CODE + unit for unit in units), keyframe


def vp8_picture_id(payload: bytes) -> tuple[int, int] | None:
    """``(PictureID, 128 or 32768)`` from a VP8 payload descriptor, None if absent."""
    if len(payload) < 3 or not payload[0] & 0x80 or not payload[1] & 0x80:
        return None
    if payload[2] & 0x80:
        if len(payload) < 4:
            return None
        return ((payload[2] & 0x7F) << 8) | payload[3], 1 << 15
    return payload[2] & 0x7F, 1 << 7


_OPUS_FRAME_SAMPLES = (
    [480, 960, 1920, 2880] * 3  # SILK: 10, 20, 40, 60 ms (configs 0-11)
    + [480, 960] * 2  # hybrid: 10, 20 ms (12-15)
    + [120, 240, 480, 960] * 4  # CELT: 2.5, 5, 10, 20 ms (16-31)
)


def opus_packet_samples(packet: bytes) -> int:
    """Samples at 48 kHz in one Opus packet, from its TOC byte (RFC 6716 §3.1)."""
    if not packet:
        raise MalformedPacket("Opus packet is empty")
    toc = packet[0]
    per_frame = _OPUS_FRAME_SAMPLES[toc >> 3]
    code = toc & 0x03
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        if len(packet) < 2:
            raise MalformedPacket("Opus code 3 packet lacks its frame count")
        count = packet[1] & 0x3F
        if count == 0:
            raise MalformedPacket("Opus code 3 packet has no frames")
    samples = per_frame * count
    if samples > 5760:  # 120 ms, the most a packet may hold
        raise MalformedPacket("Opus packet is longer than 120 ms")
    return samples

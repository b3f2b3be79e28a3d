"""Keyframes and frame starts, read from one RTP packet's VP8 or H264 payload.

A subscriber that starts (or resumes) on a frame that references earlier
ones decodes nothing until the next keyframe, so the packet forwarder opens
a leg's video gate only at the first packet of a keyframe. That packet must
be recognised alone, from its payload, without reassembling the frame:

* **VP8** (RFC 7741): the payload descriptor's S bit and partition index
  (PID) say whether the packet starts partition 0, i.e. the frame; the
  first byte of the VP8 payload header (RFC 6386 §9.1) follows the
  descriptor there, and its bit 0 (P, "inverse key frame") is 0 for a
  keyframe.
* **H264** (RFC 6184, packetization-mode 1): a keyframe's access unit
  starts with SPS (type 7) and PPS before the IDR slices (type 5), sent as
  single NAL unit packets, in a STAP-A (24) or, for a large slice, in FU-A
  (28) fragments. A packet is a keyframe start when it holds an SPS or the
  start of the IDR picture's first slice.

Functions take the whole packet and the payload bounds (from
:func:`relay.rtp.parse_header`) so that nothing is copied. A payload too
short for its own descriptor raises :class:`relay.rtp.MalformedPacket`.
"""

from __future__ import annotations

from relay.rtp import MalformedPacket, sequence_delta

H264_IDR = 5
H264_SPS = 7
H264_STAP_A = 24
H264_FU_A = 28


def vp8_descriptor_length(data: bytes | bytearray | memoryview, start: int, end: int) -> int:
    """Bytes of the VP8 payload descriptor at ``data[start:end]`` (RFC 7741 §4.2).

    First byte ``X R N S R PID``; with X, a byte ``I L T K`` announcing the
    optional PictureID (7 bits, or 15 when its first bit M is set),
    TL0PICIDX, and one TID/Y/KEYIDX byte for T or K.
    """
    if end <= start:
        raise MalformedPacket("VP8 payload is empty")
    length = 1
    if data[start] & 0x80:
        if end - start < 2:
            raise MalformedPacket("VP8 payload descriptor is truncated")
        extension = data[start + 1]
        length = 2
        if extension & 0x80:  # I: PictureID
            if end - start < 3:
                raise MalformedPacket("VP8 payload descriptor is truncated")
            length += 2 if data[start + 2] & 0x80 else 1
        if extension & 0x40:  # L: TL0PICIDX
            length += 1
        if extension & 0x30:  # T or K: TID/Y/KEYIDX
            length += 1
    if start + length > end:
        raise MalformedPacket("VP8 payload descriptor is truncated")
    return length


def vp8_starts_frame(data: bytes | bytearray | memoryview, start: int, end: int) -> bool:
    """True when the packet holds the start of a VP8 frame (S=1, PID=0)."""
    if end <= start:
        raise MalformedPacket("VP8 payload is empty")
    return data[start] & 0x1F == 0x10


def vp8_is_keyframe(data: bytes | bytearray | memoryview, start: int, end: int) -> bool:
    """True when the packet is the first packet of a VP8 keyframe.

    S=1 and PID=0 (the frame's first packet), and the VP8 payload header's
    P bit is 0. Other packets of the keyframe return False: the gate opens
    at the first one.
    """
    if not vp8_starts_frame(data, start, end):
        return False
    header = start + vp8_descriptor_length(data, start, end)
    if header >= end:
        raise MalformedPacket("VP8 frame start carries no payload header")
    return data[header] & 0x01 == 0


def h264_is_keyframe(data: bytes | bytearray | memoryview, start: int, end: int) -> bool:
    """True when the packet holds an SPS or starts an IDR picture.

    Read from a single NAL unit packet (types 1–23), from each unit of a
    STAP-A, or from an FU-A's first fragment (S bit). An IDR picture may be
    cut into several slices, each its own NAL unit: only the one starting
    at macroblock 0 starts the picture (``first_mb_in_slice``, the first
    Exp-Golomb field of the slice header, is 0 exactly when the first bit
    after the NAL header is 1). A keyframe therefore answers True at the
    packet carrying its SPS (sent before the IDR slices, with the PPS, by
    browsers and aiortc) and at its first IDR slice. Other types (STAP-B,
    MTAP, FU-B: not allowed in packetization-mode 1) are not keyframes.
    """
    if end <= start:
        raise MalformedPacket("H264 payload is empty")
    nal_type = data[start] & 0x1F
    if nal_type == H264_SPS:
        return True
    if nal_type == H264_IDR:
        return end - start > 1 and bool(data[start + 1] & 0x80)
    if nal_type == H264_STAP_A:
        position = start + 1
        if position >= end:
            raise MalformedPacket("H264 STAP-A holds no NAL unit")
        while position < end:
            if position + 2 > end:
                raise MalformedPacket("H264 STAP-A unit size is truncated")
            size = (data[position] << 8) | data[position + 1]
            unit = position + 2
            if size == 0 or unit + size > end:
                raise MalformedPacket("H264 STAP-A unit overruns the payload")
            unit_type = data[unit] & 0x1F
            if unit_type == H264_SPS or (
                unit_type == H264_IDR and size > 1 and data[unit + 1] & 0x80
            ):
                return True
            position = unit + size
        return False
    if nal_type == H264_FU_A:
        if end - start < 2:
            raise MalformedPacket("H264 FU-A header is truncated")
        fu_header = data[start + 1]
        if not fu_header & 0x80:
            return False
        fragment_type = fu_header & 0x1F
        if fragment_type == H264_SPS:
            return True
        return fragment_type == H264_IDR and end - start > 2 and bool(data[start + 2] & 0x80)
    return False


class FrameStarts:
    """Tells which packets of one stream start a frame, from RTP headers alone.

    An H264 payload does not say where an access unit starts (WebRTC
    senders send no access unit delimiter), so this reads what RFC 6184
    gives instead: the marker bit is set on the last packet of an access
    unit, and all packets of one access unit share a timestamp. A packet
    starts a frame when the packet just before it in sequence order ended
    one (marker) or carried another timestamp. Works for any codec.

    Conservative by design: after a gap (the previous packet missing) or
    for the very first packet of the stream the answer is False, since the
    frame's real first packet may be the one that is missing; the next
    frame is then recognised. A packet older than the last one seen
    (reordered, retransmitted) is answered False and changes nothing.
    """

    __slots__ = ("_sequence", "_timestamp", "_marker")

    def __init__(self) -> None:
        self._sequence = -1
        self._timestamp = 0
        self._marker = False

    def starts_frame(self, sequence_number: int, timestamp: int, marker: bool) -> bool:
        """Record one packet's header fields; True if it starts a frame.

        ``sequence_number`` is 16-bit (wraps), ``timestamp`` 32-bit.
        """
        previous = self._sequence
        if previous >= 0:
            delta = sequence_delta(sequence_number, previous)
            if delta <= 0:
                return False
            starts = delta == 1 and (self._marker or timestamp != self._timestamp)
        else:
            starts = False
        self._sequence = sequence_number
        self._timestamp = timestamp
        self._marker = marker
        return starts

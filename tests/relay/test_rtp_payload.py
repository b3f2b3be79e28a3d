"""relay.payload: keyframes and frame starts in VP8 and H264 RTP payloads.

Real packets come from aiortc's encoders and packetizers (a noisy picture,
so frames span several packets); descriptors with every optional field come
from aiortc's VP8 descriptor serializer and from hand-written bytes.
"""

from __future__ import annotations

import fractions
import os
import struct

import av
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor
from hypothesis import given
from hypothesis import strategies as st

from relay import payload
from relay.payload import FrameStarts
from relay.rtp import MalformedPacket

VIDEO_CLOCK = fractions.Fraction(1, 90000)


def noisy_frames(count: int) -> list[av.VideoFrame]:
    frames = []
    for index in range(count):
        frame = av.VideoFrame(320, 240, "yuv420p")
        for plane in frame.planes:
            plane.update(os.urandom(plane.buffer_size))
        frame.pts = index * 3000
        frame.time_base = VIDEO_CLOCK
        frames.append(frame)
    return frames


def encoded(encoder: Vp8Encoder | H264Encoder, keyframes: set[int]) -> list[list[bytes]]:
    """The RTP payloads of each of 4 frames, keyframes at the given indices."""
    return [
        encoder.encode(frame, force_keyframe=index in keyframes)[0]
        for index, frame in enumerate(noisy_frames(4))
    ]


def whole(data: bytes) -> tuple[bytes, int, int]:
    return data, 0, len(data)


# --- VP8 ---------------------------------------------------------------------------------


def test_vp8_keyframe_is_recognised_at_its_first_packet_only() -> None:
    frames = encoded(Vp8Encoder(), keyframes={0, 2})
    assert all(len(packets) > 1 for packets in frames)
    for index, packets in enumerate(frames):
        assert payload.vp8_starts_frame(*whole(packets[0]))
        assert payload.vp8_is_keyframe(*whole(packets[0])) == (index in (0, 2))
        for later in packets[1:]:
            assert not payload.vp8_starts_frame(*whole(later))
            assert not payload.vp8_is_keyframe(*whole(later))


@given(
    picture_id=st.none() | st.integers(0, 0x7FFF),
    tl0picidx=st.none() | st.integers(0, 255),
    tid=st.none() | st.tuples(st.integers(0, 3), st.integers(0, 1)),
    keyidx=st.none() | st.integers(0, 31),
    start=st.booleans(),
    pid=st.integers(0, 7),
)
def test_vp8_descriptor_length_covers_every_optional_field(
    picture_id: int | None,
    tl0picidx: int | None,
    tid: tuple[int, int] | None,
    keyidx: int | None,
    start: bool,
    pid: int,
) -> None:
    descriptor = bytes(
        VpxPayloadDescriptor(
            partition_start=int(start),
            partition_id=pid,
            picture_id=picture_id,
            tl0picidx=tl0picidx,
            tid=tid,
            keyidx=keyidx,
        )
    )
    data = b"\x00\x00" + descriptor + b"\x00vp8"  # at an offset, as in a packet
    assert payload.vp8_descriptor_length(data, 2, len(data)) == len(descriptor)
    assert payload.vp8_starts_frame(data, 2, len(data)) == (start and pid == 0)
    assert payload.vp8_is_keyframe(data, 2, len(data)) == (start and pid == 0)


def test_vp8_seven_bit_picture_id_and_inter_frame() -> None:
    # X=1 S=1 PID=0; I=1; PictureID 7-bit (M=0); VP8 header with P=1 (inter frame).
    inter = bytes((0x90, 0x80, 0x05, 0x01, 0xAA))
    assert payload.vp8_descriptor_length(*whole(inter)) == 3
    assert payload.vp8_starts_frame(*whole(inter))
    assert not payload.vp8_is_keyframe(*whole(inter))
    key = bytes((0x10, 0x00, 0x9D))  # no extension, S=1 PID=0, P=0
    assert payload.vp8_is_keyframe(*whole(key))
    not_partition_zero = bytes((0x11, 0x00))
    assert not payload.vp8_is_keyframe(*whole(not_partition_zero))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x90", b"\x90\x80", b"\x90\x80\x80", b"\x90\xc0\x01", b"\x10"],
)
def test_truncated_vp8_payloads_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        payload.vp8_is_keyframe(*whole(data))


# --- H264 --------------------------------------------------------------------------------


def test_h264_keyframe_is_recognised_at_its_parameter_sets_and_first_slice_only() -> None:
    frames = encoded(H264Encoder(), keyframes={0, 2})
    assert all(len(packets) > 1 for packets in frames)
    for index, packets in enumerate(frames):
        flagged = [i for i, p in enumerate(packets) if payload.h264_is_keyframe(*whole(p))]
        if index in (0, 2):
            # aiortc sends SPS and PPS in a STAP-A, then the IDR picture's
            # slices, several of them: only the first starts the picture.
            assert packets[0][0] & 0x1F == payload.H264_STAP_A
            idr_starts = [
                i
                for i, p in enumerate(packets)
                if p[0] & 0x1F == payload.H264_FU_A and p[1] & 0x80 and p[1] & 0x1F == 5
            ]
            assert len(idr_starts) > 1
            assert flagged == [0, idr_starts[0]]
        else:
            assert flagged == []


def stap_a(*units: bytes) -> bytes:
    return b"\x78" + b"".join(struct.pack("!H", len(u)) + u for u in units)


@pytest.mark.parametrize(
    ("data", "keyframe"),
    [
        (b"\x65\x88\x84", True),  # single NAL unit: IDR slice from macroblock 0
        (b"\x65\x48\x84", False),  # IDR slice from a later macroblock
        (b"\x67\x42\xe0\x1f", True),  # SPS
        (b"\x68\xce\x38", False),  # PPS alone
        (b"\x41\x9a\x02", False),  # non-IDR slice
        (stap_a(b"\x67\x42", b"\x68\xce"), True),  # SPS + PPS
        (stap_a(b"\x68\xce", b"\x65\x88"), True),  # PPS + IDR
        (stap_a(b"\x06\x05", b"\x41\x9a"), False),  # SEI + non-IDR
        (b"\x7c\x85\x88", True),  # FU-A start of an IDR picture's first slice
        (b"\x7c\x85\x48", False),  # FU-A start of a later IDR slice
        (b"\x7c\x05\x88", False),  # FU-A middle fragment of an IDR slice
        (b"\x7c\x45\x88", False),  # FU-A end fragment
        (b"\x5c\x81\x9a", False),  # FU-A start of a non-IDR slice
        (b"\x79\x00", False),  # STAP-B: not in packetization-mode 1
    ],
)
def test_h264_keyframe_vectors(data: bytes, keyframe: bool) -> None:
    assert payload.h264_is_keyframe(*whole(data)) == keyframe


@pytest.mark.parametrize(
    "data", [b"", b"\x7c", b"\x78", b"\x78\x00\x05\x67\x42", b"\x78\x00\x00", b"\x78\x00"]
)
def test_truncated_h264_payloads_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        payload.h264_is_keyframe(*whole(data))


@given(st.binary(max_size=40))
def test_payload_garbage_raises_only_malformed_packet(data: bytes) -> None:
    for check in (payload.vp8_is_keyframe, payload.h264_is_keyframe):
        try:
            check(*whole(data))
        except MalformedPacket:
            pass


# --- Frame starts from marker bits and timestamps ---------------------------------------


def test_frame_starts_follow_marker_bits_and_timestamp_changes() -> None:
    starts = FrameStarts()
    # (seq, timestamp, marker) of two 3-packet frames, then a frame whose
    # predecessor carried no marker (its last packet was lost before the relay
    # saw it, so only the timestamp change tells).
    packets = [
        (65534, 100, False),
        (65535, 100, False),
        (0, 100, True),
        (1, 200, False),
        (2, 200, True),
        (3, 300, False),
        (4, 300, False),
        (5, 400, False),
    ]
    seen = [starts.starts_frame(*p) for p in packets]
    assert seen == [False, False, False, True, False, True, False, True]


def test_frame_starts_are_not_claimed_after_a_gap_or_for_old_packets() -> None:
    starts = FrameStarts()
    assert not starts.starts_frame(10, 100, True)  # first packet seen: unknown
    assert not starts.starts_frame(12, 200, False)  # 11 missing: 12 may not be first
    assert not starts.starts_frame(11, 200, False)  # late packet: answered False
    assert not starts.starts_frame(13, 200, True)
    assert starts.starts_frame(14, 300, False)

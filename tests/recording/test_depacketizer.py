"""Depacketizing recorded RTP, on payloads built byte by byte (RFC 7741, RFC 6184, RFC 6716)."""

from __future__ import annotations

import pytest

from relay.depacketizer import (
    H264Depacketizer,
    OpusDepacketizer,
    ReorderBuffer,
    Unwrapper,
    Vp8Depacketizer,
    opus_packet_samples,
)
from relay.rtp import MalformedPacket

SPS = bytes([0x67, 0x42, 0xC0, 0x1F, 0xD9])
PPS = bytes([0x68, 0xCB, 0x8C, 0xB2])
IDR = bytes([0x65, 0x88, 0x84]) + bytes(range(40))
SLICE = bytes([0x41, 0x9A, 0x02]) + bytes(range(20))


def stap_a(*units: bytes) -> bytes:
    return b"\x78" + b"".join(len(u).to_bytes(2, "big") + u for u in units)


def fu_a(unit: bytes, pieces: int) -> list[bytes]:
    body = unit[1:]
    size = -(-len(body) // pieces)
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    indicator = (unit[0] & 0xE0) | 28
    return [
        bytes(
            [
                indicator,
                (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0) | (unit[0] & 0x1F),
            ]
        )
        + chunk
        for i, chunk in enumerate(chunks)
    ]


def annex_b(*units: bytes) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + u for u in units)


def feed(depacketizer, packets):  # type: ignore[no-untyped-def]
    """``packets``: ``(sequence, timestamp, marker, payload)``; all frames out."""
    frames = []
    for sequence, timestamp, marker, payload in packets:
        frames += depacketizer.push(sequence, timestamp, marker, payload, sequence * 10)
    return frames + depacketizer.flush()


def h264_call(lose: set[int] = frozenset()) -> list[tuple[int, int, bool, bytes]]:  # type: ignore[assignment]
    """Keyframe (STAP-A SPS+PPS, IDR in 3 FU-A), P-frame, P-frame, keyframe, P-frame."""
    packets = [(stap_a(SPS, PPS), 0, False)]
    packets += [(piece, 0, i == 2) for i, piece in enumerate(fu_a(IDR, 3))]
    packets += [(SLICE, 3000, True), (SLICE, 6000, True), (stap_a(SPS, PPS, IDR), 9000, True)]
    packets += [(SLICE, 12000, True)]
    return [
        (100 + n, timestamp, marker, payload)
        for n, (payload, timestamp, marker) in enumerate(packets)
        if 100 + n not in lose
    ]


def test_h264_access_units_become_annex_b() -> None:
    depacketizer = H264Depacketizer()
    frames = feed(depacketizer, h264_call())
    assert [(f.timestamp, f.keyframe) for f in frames] == [
        (0, True),
        (3000, False),
        (6000, False),
        (9000, True),
        (12000, False),
    ]
    assert frames[0].data == annex_b(SPS, PPS, IDR)
    assert frames[1].data == annex_b(SLICE)
    assert frames[3].data == annex_b(SPS, PPS, IDR)
    assert frames[0].arrival_us == 1000
    assert (depacketizer.frames, depacketizer.dropped, depacketizer.skipped) == (5, 0, 0)


@pytest.mark.parametrize(
    ("lost", "kept", "dropped", "skipped"),
    [
        # A middle FU-A fragment: the keyframe goes, the P-frames wait for the next one.
        (102, [9000, 12000], 1, 2),
        # The FU-A end (with the marker): the keyframe cannot end, and the next
        # P-frame has no known start (its predecessor is lost).
        (103, [9000, 12000], 2, 1),
        # A whole P-frame: the next one has no known start either.
        (104, [0, 9000, 12000], 1, 0),
        # SPS and PPS: the IDR fragments after them do not start an access unit.
        (100, [9000, 12000], 1, 2),
    ],
)
def test_h264_loss_drops_up_to_the_next_keyframe(
    lost: int, kept: list[int], dropped: int, skipped: int
) -> None:
    depacketizer = H264Depacketizer()
    frames = feed(depacketizer, h264_call({lost}))
    assert [f.timestamp for f in frames] == kept
    assert (depacketizer.dropped, depacketizer.skipped) == (dropped, skipped)


def test_h264_malformed_fragments_drop_the_frame() -> None:
    depacketizer = H264Depacketizer()
    pieces = fu_a(IDR, 3)
    broken = [(1, 0, False, stap_a(SPS, PPS)), (2, 0, False, pieces[0]), (3, 0, True, pieces[0])]
    assert feed(depacketizer, broken) == []
    assert depacketizer.dropped == 1
    truncated = H264Depacketizer()
    assert feed(truncated, [(1, 0, True, b"\x78\x00\x09\x67")]) == []
    assert truncated.dropped == 1


def vp8_payload(start: bool, data: bytes, picture_id: int = 0x1234) -> bytes:
    descriptor = bytes([0x90 if start else 0x80, 0x80, 0x80 | picture_id >> 8, picture_id & 0xFF])
    return descriptor + data


KEY = bytes([0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00]) + bytes(30)
INTER = bytes([0x51, 0x01, 0x00]) + bytes(30)


def test_vp8_frames_start_at_s_and_partition_0() -> None:
    packets = [
        (10, 0, False, vp8_payload(True, KEY[:20], 1)),
        (11, 0, True, vp8_payload(False, KEY[20:], 1)),
        (12, 3000, True, vp8_payload(True, INTER, 2)),
        (14, 6000, True, vp8_payload(True, INTER, 4)),  # 13 (frame 3) is lost: skipped
        (15, 9000, False, vp8_payload(False, INTER[:5], 5)),  # no start: dropped
        (16, 9000, True, vp8_payload(False, INTER[5:], 5)),
        (17, 12000, True, vp8_payload(True, KEY, 6)),
    ]
    depacketizer = Vp8Depacketizer()
    frames = feed(depacketizer, packets)
    assert [(f.timestamp, f.keyframe) for f in frames] == [(0, True), (3000, False), (12000, True)]
    assert frames[0].data == KEY
    assert (depacketizer.dropped, depacketizer.skipped) == (1, 1)


@pytest.mark.parametrize(
    ("second_picture_id", "kept"),
    [(0x7FFF, [0, 3000]), (0x0001, [0])],  # 0x7FFE + 1 follows; a jump means a lost frame
)
def test_vp8_picture_ids_tell_a_hole_left_by_padding_from_a_lost_frame(
    second_picture_id: int, kept: list[int]
) -> None:
    packets = [
        (1, 0, True, vp8_payload(True, KEY, 0x7FFE)),
        (3, 3000, True, vp8_payload(True, INTER, second_picture_id)),  # 2 was padding, untapped
    ]
    assert [f.timestamp for f in feed(Vp8Depacketizer(), packets)] == kept


def test_a_missing_marker_ends_the_frame_when_the_next_packet_follows() -> None:
    packets = [(1, 0, False, vp8_payload(True, KEY)), (2, 3000, True, vp8_payload(True, INTER))]
    assert [f.timestamp for f in feed(Vp8Depacketizer(), packets)] == [0, 3000]


def test_padding_takes_a_sequence_number_without_breaking_the_stream() -> None:
    packets = [
        (1, 0, True, vp8_payload(True, KEY)),
        (2, 0, False, b""),
        (3, 3000, True, vp8_payload(True, INTER)),
    ]
    depacketizer = Vp8Depacketizer()
    assert [f.timestamp for f in feed(depacketizer, packets)] == [0, 3000]
    assert depacketizer.skipped == 0


@pytest.mark.parametrize(
    ("toc", "samples"),
    [
        (bytes([0xFC]), 960),  # CELT 20 ms, one frame (what browsers send)
        (bytes([0x78]), 960),  # hybrid 20 ms
        (bytes([0x08]), 960),  # SILK 20 ms
        (bytes([0x18]), 2880),  # SILK 60 ms
        (bytes([0xFD]), 1920),  # two 20 ms CELT frames
        (bytes([0xE3, 0x03]), 360),  # code 3, three 2.5 ms frames
    ],
)
def test_opus_durations_come_from_the_toc(toc: bytes, samples: int) -> None:
    assert opus_packet_samples(toc + bytes(10)) == samples


def test_opus_packets_are_frames_and_bad_ones_are_dropped() -> None:
    depacketizer = OpusDepacketizer()
    frames = feed(
        depacketizer,
        [(1, 0, False, b"\xfc\x01"), (2, 960, False, b""), (3, 1920, False, b"\xe3\x00")],
    )
    assert [(f.timestamp, f.duration) for f in frames] == [(0, 960)]
    assert depacketizer.dropped == 1
    with pytest.raises(MalformedPacket):
        opus_packet_samples(b"\x1b" + bytes([0x3F]))  # 60 ms x 63 frames: over 120 ms


def test_reorder_buffer_releases_in_order_and_gives_up_on_the_lost() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(window_us=100)
    assert buffer.push(11, 0, "b") == []  # the first packet waits: an earlier one may come
    assert buffer.push(10, 5, "a") == []
    assert buffer.push(12, 50, "c") == []
    assert buffer.push(14, 120, "e") == [(10, "a"), (11, "b"), (12, "c")]  # waited 100 µs
    assert buffer.push(12, 121, "c") == []  # a duplicate of what was released
    assert buffer.push(15, 130, "f") == []  # 13 is still awaited
    assert buffer.push(13, 140, "d") == [(13, "d"), (14, "e"), (15, "f")]
    assert buffer.push(16, 141, "g") == [(16, "g")]
    assert buffer.push(18, 142, "i") == []
    assert buffer.flush() == [(18, "i")]
    assert buffer.late == 1


def test_unwrapper_extends_across_the_wrap_and_keeps_reordering() -> None:
    sequences = Unwrapper(16)
    assert [sequences.extend(v) for v in (65534, 65535, 1, 0, 2)] == [
        65534,
        65535,
        65537,
        65536,
        65538,
    ]
    timestamps = Unwrapper(32)
    assert timestamps.extend(0xFFFFFF00) == 0xFFFFFF00
    assert timestamps.nearest(0x100) == 0x1_0000_0100
    assert timestamps.extend(0xFFFFFE00) == 0xFFFFFE00

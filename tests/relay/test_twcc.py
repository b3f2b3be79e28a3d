"""relay.twcc: transport-cc feedback built from arrivals, checked byte by byte and by round trip.

aiortc has no transport-cc parser, so feedback is decoded with relay.twcc's
parser (written from the draft's packet layout, separately from the
encoder's chunk choice) and a few small cases are compared with bytes
computed by hand.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import rtcp, twcc
from relay.rtp import MalformedPacket
from relay.twcc import LARGE_DELTA, NOT_RECEIVED, SMALL_DELTA, TransportFeedback, TwccTracker

SENDER, MEDIA = 1, 2


def decode(packets: list[bytes]) -> list[TransportFeedback]:
    out = []
    for data in packets:
        [part] = rtcp.parse_compound(data)
        assert isinstance(part, TransportFeedback)
        out.append(part)
    return out


def feedback_of(arrivals: list[tuple[int, int]], now_us: int = 10**7) -> list[bytes]:
    tracker = TwccTracker()
    for sequence, arrival in arrivals:
        tracker.record(sequence, arrival)
    return tracker.feedback(now_us, SENDER, MEDIA)


def chunks_of(data: bytes) -> list[int]:
    feedback = decode([data])[0]
    received = sum(1 for s in feedback.statuses if s)
    large = sum(1 for s in feedback.statuses if s == LARGE_DELTA)
    delta_bytes = received + large
    padding = data[-1] if data[0] & 0x20 else 0
    body = data[20 : len(data) - padding - delta_bytes]
    return [int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body), 2)]


# --- Bytes computed by hand --------------------------------------------------------------


def test_three_packets_in_a_row_make_one_run_length_chunk() -> None:
    [data] = feedback_of([(10, 64_000), (11, 64_250), (12, 64_500)])
    assert data == bytes.fromhex(
        "afcd0006"  # V=2 P=1 FMT=15, PT=205, length 6 words
        "00000001"  # sender SSRC
        "00000002"  # media SSRC
        "000a0003"  # base sequence 10, 3 statuses
        "00000100"  # reference time 1 (x 64 ms), feedback count 0
        "2003"  # run length: status 1 (small delta) x 3
        "000101"  # deltas 0, 1, 1 (x 250 us)
        "000003"  # padding, its count last
    )


def test_a_loss_and_a_large_delta_make_a_two_bit_vector() -> None:
    [data] = feedback_of([(0, 0), (2, 100_000)])
    assert data == bytes.fromhex(
        "afcd0006 00000001 00000002 00000003 00000000"  # header, SSRCs, base/count, reference/count
        "d200"  # 2-bit vector: received small, not received, received large
        "00 0190"  # 0 ticks, then 400 ticks (100 ms) in 2 bytes
        "000003"
    )


def test_a_reordered_packet_gets_a_negative_delta() -> None:
    [data] = feedback_of([(1, 1_000), (0, 2_000)])
    assert data == bytes.fromhex(
        "afcd0006 00000001 00000002 00000002 00000000"  # header, SSRCs, base/count, reference/count
        "d800"  # 2-bit vector: small, large
        "08 fffc"  # seq 0 at +2 ms, seq 1 arrived 1 ms before it: -4 ticks
        "000003"
    )


def test_alternating_losses_make_a_one_bit_vector() -> None:
    received = [0, 2, 4, 6, 8, 10, 12, 13]
    [data] = feedback_of([(s, s * 1000) for s in received])
    assert data == bytes.fromhex(
        "afcd0007 00000001 00000002 0000000e 00000000"  # header, SSRCs, base/count, reference/count
        "aaab"  # 1-bit vector 10101010101011
        "0008080808080804"  # 0 ticks, then 2 ms six times, then 1 ms
        "0002"  # two bytes of padding
    )


# --- Round trips ---------------------------------------------------------------------------


def check_covers(
    packets: list[bytes], arrivals: dict[int, int], first: int, last: int
) -> list[TransportFeedback]:
    """Feedback reports every number from ``first`` to ``last`` (extended), truthfully."""
    decoded = decode(packets)
    sequence = first
    for index, feedback in enumerate(decoded):
        assert feedback.base_sequence == sequence & 0xFFFF
        assert (feedback.sender_ssrc, feedback.media_ssrc) == (SENDER, MEDIA)
        assert feedback.statuses[-1] != NOT_RECEIVED  # a packet ends at a received one
        for offset, (number, arrival) in enumerate(feedback.arrivals()):
            assert number == (sequence + offset) & 0xFFFF
            true_arrival = arrivals.get(sequence + offset)
            if true_arrival is None:
                assert arrival is None
            else:
                assert arrival is not None
                assert abs(arrival - true_arrival) <= twcc.DELTA_TICK_US // 2
        sequence += len(feedback.statuses)
        assert (
            index == 0 or feedback.feedback_count == (decoded[index - 1].feedback_count + 1) % 256
        )
    assert sequence == last + 1
    return decoded


STEPS_US = (0, 250, 1_000, 5_000, 63_750, 70_000, -3_000, 900_000, 9_000_000)


@st.composite
def arrival_runs(draw: st.DrawFn) -> tuple[int, dict[int, int]]:
    """Arrivals after steps that cover each delta size, losses, reordering and overflow."""
    first = draw(st.integers(0, 0xFFFF))
    count = draw(st.sampled_from((1, 2, 7, 8, 14, 15, 100, 600)))
    generator = random.Random(draw(st.integers(0, 2**32)))
    loss = draw(st.sampled_from([0.0, 0.2, 0.8]))
    time_us = draw(st.integers(0, 10**9))
    arrivals: dict[int, int] = {}
    for offset in range(count):
        time_us = max(time_us + generator.choice(STEPS_US) + generator.randrange(250), 0)
        if offset in (0, count - 1) or generator.random() >= loss:
            arrivals[first + offset] = time_us
    return first, arrivals


@settings(max_examples=200, deadline=None)
@given(arrival_runs(), st.sampled_from([64, 100, 1200]))
def test_feedback_round_trips_every_arrival(
    run: tuple[int, dict[int, int]], max_bytes: int
) -> None:
    first, arrivals = run
    tracker = TwccTracker(max_packet_bytes=max_bytes)
    for sequence, arrival in arrivals.items():
        tracker.record(sequence & 0xFFFF, arrival)
    packets = tracker.feedback(max(arrivals.values()), SENDER, MEDIA)
    assert all(len(p) <= max_bytes and len(p) % 4 == 0 for p in packets)
    check_covers(packets, arrivals, first, max(arrivals))


def test_one_tracker_per_transport_sees_bundled_streams_as_one_sequence() -> None:
    # Under BUNDLE the browser numbers audio and video packets with one
    # counter: one tracker fed by both reports nothing lost, where a tracker
    # fed only the video packets would report every audio packet lost.
    transport = TwccTracker()
    video_only = TwccTracker()
    arrivals = {}
    for sequence in range(60):
        arrivals[sequence] = 2_000 * sequence
        transport.record(sequence, arrivals[sequence])
        if sequence % 3:  # every third packet is audio
            video_only.record(sequence, arrivals[sequence])
    [feedback] = check_covers(transport.feedback(200_000, SENDER, MEDIA), arrivals, 0, 59)
    assert NOT_RECEIVED not in feedback.statuses
    [per_stream] = decode(video_only.feedback(200_000, SENDER, MEDIA))
    assert per_stream.statuses.count(NOT_RECEIVED) == 19


def test_sequence_numbers_unwrap_across_65535() -> None:
    arrivals = {65530 + i: 1_000_000 + 1_000 * i for i in range(12) if i != 7}
    tracker = TwccTracker()
    for sequence, arrival in arrivals.items():
        tracker.record(sequence & 0xFFFF, arrival)
    [feedback] = check_covers(tracker.feedback(2_000_000, SENDER, MEDIA), arrivals, 65530, 65541)
    assert feedback.base_sequence == 65530 and len(feedback.statuses) == 12
    assert feedback.arrivals()[7] == (1, None)


def test_successive_feedbacks_continue_where_the_last_stopped() -> None:
    tracker = TwccTracker()
    arrivals = {}
    for sequence in range(0, 50):
        arrivals[sequence] = 5_000 * sequence
        tracker.record(sequence, arrivals[sequence])
    first = decode(tracker.feedback(250_000, SENDER, MEDIA))
    assert tracker.feedback(260_000, SENDER, MEDIA) == []  # nothing new
    for sequence in range(52, 60):  # 50 and 51 lost
        arrivals[sequence] = 5_000 * sequence
        tracker.record(sequence, arrivals[sequence])
    second = check_covers(tracker.feedback(300_000, SENDER, MEDIA), arrivals, 50, 59)
    assert first[0].feedback_count == 0 and second[0].feedback_count == 1
    assert second[0].statuses[:2] == [NOT_RECEIVED, NOT_RECEIVED]


def test_a_packet_reported_lost_is_reported_again_when_it_arrives_late() -> None:
    tracker = TwccTracker()
    arrivals = {s: 1_000 * s for s in range(10) if s != 4}
    for sequence, arrival in arrivals.items():
        tracker.record(sequence, arrival)
    [early] = decode(tracker.feedback(10_000, SENDER, MEDIA))
    assert early.statuses[4] == NOT_RECEIVED
    arrivals[4] = 12_000
    tracker.record(4, 12_000)
    arrivals[10] = 13_000
    tracker.record(10, 13_000)
    # Like libwebrtc: the next feedback starts back at the late packet.
    check_covers(tracker.feedback(20_000, SENDER, MEDIA), arrivals, 4, 10)


def test_duplicates_keep_the_first_arrival() -> None:
    tracker = TwccTracker()
    tracker.record(7, 1_000)
    tracker.record(7, 9_000)
    tracker.record(8, 2_000)
    check_covers(tracker.feedback(10_000, SENDER, MEDIA), {7: 1_000, 8: 2_000}, 7, 8)


def test_a_long_loss_run_takes_a_few_run_length_chunks() -> None:
    arrivals = {0: 0, 10_000: 500_000}
    [data] = feedback_of(list(arrivals.items()))
    check_covers([data], arrivals, 0, 10_000)
    # One 1-bit vector (the received packet and 13 lost), runs of 8191 and
    # 1795 lost, and a run of one received with a large delta (500 ms).
    assert chunks_of(data) == [0x8000 | (1 << 13), 0x1FFF, 1795, (LARGE_DELTA << 13) | 1]
    assert len(data) <= 40


def test_a_delta_over_16_bits_starts_a_new_packet_with_its_own_reference_time() -> None:
    arrivals = {0: 1_000_000, 1: 1_000_000 + 10_000_000, 2: 1_000_000 + 10_000_500}
    packets = feedback_of(list(arrivals.items()))
    first, second = check_covers(packets, arrivals, 0, 2)
    assert len(first.statuses) == 1
    assert first.reference_time == 1_000_000 // 64_000
    assert second.reference_time == 11_000_000 // 64_000
    backwards = {0: 20_000_000, 1: 1_000_000}  # seq 1 arrived 19 s earlier
    check_covers(feedback_of(list(backwards.items())), backwards, 0, 1)


def test_a_large_window_is_split_into_packets_within_the_size_bound() -> None:
    generator = random.Random(13)
    arrivals = {}
    time_us = 0
    for sequence in range(5_000):
        time_us += generator.choice((100, 20_000, 70_000))
        if generator.random() < 0.9 or sequence == 4_999:
            arrivals[sequence] = time_us - generator.choice((0, 30_000))
    packets = feedback_of(list(arrivals.items()), now_us=time_us)
    assert len(packets) > 5
    assert all(len(p) <= 1200 for p in packets)
    check_covers(packets, arrivals, 0, 4_999)


def test_feedback_count_wraps_at_256() -> None:
    tracker = TwccTracker()
    counts = []
    for sequence in range(300):
        tracker.record(sequence, sequence * 1_000)
        [feedback] = decode(tracker.feedback(sequence * 1_000, SENDER, MEDIA))
        counts.append(feedback.feedback_count)
    assert counts == [n % 256 for n in range(300)]


def test_packets_older_than_the_history_are_ignored() -> None:
    tracker = TwccTracker(history_us=100_000)
    for sequence in range(20):
        if sequence != 3:
            tracker.record(sequence, sequence * 10_000)
    tracker.feedback(200_000, SENDER, MEDIA)
    tracker.feedback(1_000_000, SENDER, MEDIA)
    tracker.record(3, 1_000_000)  # far too late: its neighbours are forgotten
    assert tracker.feedback(1_100_000, SENDER, MEDIA) == []


def test_a_jump_past_the_window_reports_only_the_window() -> None:
    arrivals = {0: 0, 20_000: 1_000}
    packets = feedback_of(list(arrivals.items()))
    start = 20_000 - twcc.MAX_WINDOW
    check_covers(packets, {20_000: 1_000}, start, 20_000)


def test_a_sender_restarting_its_counter_is_followed() -> None:
    tracker = TwccTracker()
    for sequence in range(40_000, 40_100):
        tracker.record(sequence, sequence)
    tracker.feedback(50_000, SENDER, MEDIA)
    # 10_000 is 30_099 behind the highest: older than anything kept, not a wrap.
    restarted = {10_000 + i: 60_000 + 1_000 * i for i in range(twcc.RESTART_AFTER + 2)}
    for sequence, arrival in restarted.items():
        tracker.record(sequence, arrival)
    last = max(restarted)
    kept = {s: a for s, a in restarted.items() if s >= 10_000 + twcc.RESTART_AFTER - 1}
    check_covers(tracker.feedback(100_000, SENDER, MEDIA), kept, min(kept), last)


# --- Parser ------------------------------------------------------------------------------


def test_parser_refuses_what_libwebrtc_refuses() -> None:
    [good] = feedback_of([(0, 0), (1, 250)])
    empty = bytearray(good)
    empty[14:16] = b"\x00\x00"  # status count 0
    with pytest.raises(MalformedPacket, match="no packet"):
        rtcp.parse_compound(bytes(empty))
    reserved = bytearray(good)
    reserved[20:22] = (0x6000 | 2).to_bytes(2, "big")  # run of status 3
    with pytest.raises(MalformedPacket, match="reserved"):
        rtcp.parse_compound(bytes(reserved))
    short = bytearray(good)
    short[14:16] = (40).to_bytes(2, "big")  # more statuses than chunks carry
    with pytest.raises(MalformedPacket, match="overrun"):
        rtcp.parse_compound(bytes(short))


def test_status_symbols_are_the_drafts() -> None:
    assert (NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA) == (0, 1, 2)
    with pytest.raises(ValueError):
        TwccTracker(max_packet_bytes=32)

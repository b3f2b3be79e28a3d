"""relay.rtpstats and relay.ntp: what receiver and sender reports carry.

Report blocks and sender reports are checked through aiortc's RTCP parser;
the expected figures are worked out from RFC 3550's definitions.
"""

from __future__ import annotations

import time

import pytest
from aiortc.rtp import RtcpPacket, RtcpRrPacket, RtcpSrPacket
from hypothesis import given
from hypothesis import strategies as st

from relay import ntp, rtcp
from relay.rtpstats import MAX_DROPOUT, ReceiveStats, SendStats

VIDEO = 90_000


def feed(stats: ReceiveStats, sequences: list[int], spacing_us: int = 10_000) -> None:
    """Packets sent every ``spacing_us`` and arriving with a constant delay."""
    for index, sequence in enumerate(sequences):
        stats.on_packet(
            sequence & 0xFFFF, (index * spacing_us * VIDEO) // 1_000_000, index * spacing_us
        )


# --- Receive statistics ----------------------------------------------------------------


def test_extended_highest_sequence_counts_wraps() -> None:
    stats = ReceiveStats(5, VIDEO)
    feed(stats, list(range(65530, 65540)))
    assert stats.extended_highest == 65536 + 3
    assert (stats.expected, stats.received, stats.cumulative_lost) == (10, 10, 0)
    block = stats.report_block(0)
    assert block.highest_sequence == 0x0001_0003


def test_losses_give_cumulative_and_fraction_lost_per_interval() -> None:
    stats = ReceiveStats(5, VIDEO)
    feed(stats, [s for s in range(100, 110) if s not in (103, 107)])
    first = stats.report_block(0)
    assert (first.packets_lost, first.fraction_lost) == (2, (2 << 8) // 10)
    feed(stats, list(range(110, 120)))  # no loss in the next interval
    second = stats.report_block(0)
    assert (second.packets_lost, second.fraction_lost) == (2, 0)
    stats.on_packet(103, 0, 0)  # a late arrival (within the misorder window)
    assert stats.cumulative_lost == 1


def test_duplicates_make_cumulative_lost_negative_and_fraction_zero() -> None:
    stats = ReceiveStats(5, VIDEO)
    feed(stats, [1, 2, 2, 3, 3])
    block = stats.report_block(0)
    assert (block.packets_lost, block.fraction_lost) == (-2, 0)


def test_a_jump_is_ignored_until_the_next_packet_confirms_a_restart() -> None:
    stats = ReceiveStats(5, VIDEO)
    feed(stats, list(range(10)))
    stats.on_packet(9 + MAX_DROPOUT + 50, 0, 0)  # a stray: ignored
    stats.on_packet(10, 0, 0)
    assert (stats.expected, stats.received) == (11, 11)
    stats.on_packet(40_000, 0, 0)
    stats.on_packet(40_001, 0, 0)  # follows it: the source restarted, counting anew from it
    assert (stats.extended_highest, stats.expected, stats.received) == (40_001, 1, 1)


def test_jitter_is_zero_for_a_constant_delay_and_follows_rfc3550_otherwise() -> None:
    steady = ReceiveStats(5, VIDEO)
    feed(steady, list(range(50)))
    assert steady.jitter == 0
    # Every other packet 2 ms late: |D| = 180 ticks each time. The estimate
    # converges to it as J += (|D| - J) / 16 (RFC 3550 A.8).
    jittery = ReceiveStats(5, VIDEO)
    expected = 0.0
    for index in range(200):
        delay_us = 2_000 if index % 2 else 0
        jittery.on_packet(index, index * 900, index * 10_000 + delay_us)
        if index:
            expected += (180 - expected) / 16
    assert abs(jittery.jitter - expected) <= 1
    assert jittery.jitter in (179, 180)


def test_jitter_ignores_retransmissions_and_the_32_bit_timestamp_wrap() -> None:
    stats = ReceiveStats(5, VIDEO)
    for index in range(20):
        stats.on_packet(index, (0xFFFFFF00 + index * 900) & 0xFFFFFFFF, index * 10_000)
    assert stats.jitter == 0
    stats.on_packet(20, 0, 10**9, retransmission=True)  # wildly late, but a retransmission
    assert stats.jitter == 0 and stats.received == 21


def test_lsr_and_dlsr_come_from_the_last_sender_report() -> None:
    stats = ReceiveStats(5, VIDEO)
    feed(stats, [1, 2, 3])
    assert (stats.report_block(0).lsr, stats.report_block(0).dlsr) == (0, 0)
    sr_ntp = 0x1122_3344_5566_7788
    stats.on_sender_report(sr_ntp, 1_000_000)
    block = stats.report_block(1_500_000)
    assert block.lsr == 0x3344_5566
    assert block.dlsr == 32768  # 0.5 s in 1/65536 s


def test_report_block_is_read_by_aiortc() -> None:
    stats = ReceiveStats(0xABCD, VIDEO)
    feed(stats, [s for s in range(1000) if s % 10])  # 1..999: 10, 20, ... 990 lost
    stats.on_sender_report(ntp.ntp_from_unix(time.time()), 0)
    data = rtcp.build_receiver_report(1, [stats.report_block(250_000)])
    [theirs] = RtcpPacket.parse(data)
    assert isinstance(theirs, RtcpRrPacket)
    report = theirs.reports[0]
    assert (report.ssrc, report.packets_lost, report.highest_sequence) == (0xABCD, 99, 999)
    assert report.fraction_lost == (99 << 8) // 999
    assert report.dlsr == 16384


def test_no_report_before_the_first_packet() -> None:
    stats = ReceiveStats(5, VIDEO)
    assert not stats.started
    with pytest.raises(RuntimeError):
        stats.report_block(0)


# --- Send statistics ---------------------------------------------------------------------


def test_send_stats_count_payload_octets_and_make_a_sender_report() -> None:
    stats = SendStats()
    assert stats.rtp_timestamp_at(0, VIDEO) is None
    for index in range(10):
        stats.on_packet(1000 + index, 0xFFFFFF00 + 3000 * index, index * 33_000)
    assert (stats.packets, stats.octets) == (10, 10_045)
    # Extrapolated 100 ms past the last packet, wrapping at 32 bits.
    assert stats.rtp_timestamp_at(9 * 33_000 + 100_000, VIDEO) == (0xFFFFFF00 + 27_000 + 9_000) & (
        0xFFFFFFFF
    )
    wall = ntp.ntp_from_unix(1_700_000_000.25)
    [theirs] = RtcpPacket.parse(stats.sender_report(77, wall, 1234))
    assert isinstance(theirs, RtcpSrPacket)
    info = theirs.sender_info
    assert (theirs.ssrc, info.ntp_timestamp, info.rtp_timestamp) == (77, wall, 1234)
    assert (info.packet_count, info.octet_count) == (10, 10_045)


# --- NTP ---------------------------------------------------------------------------------


def test_ntp_timestamps_of_unix_times() -> None:
    assert ntp.ntp_from_unix_ns(0) == ntp.NTP_UNIX_OFFSET << 32
    assert ntp.ntp_from_unix_ns(1_500_000_000) == ((ntp.NTP_UNIX_OFFSET + 1) << 32) | 0x8000_0000
    assert ntp.ntp_from_unix(0.5) == (ntp.NTP_UNIX_OFFSET << 32) | 0x8000_0000
    now = time.time()
    assert abs(ntp.unix_from_ntp(ntp.ntp_from_unix(now)) - now) < 1e-6
    assert ntp.ntp_middle(0x1122_3344_5566_7788) == 0x3344_5566
    assert ntp.ntp_add_us(ntp.ntp_from_unix_ns(0), 250_000) == ntp.ntp_from_unix_ns(250_000_000)


@given(
    st.integers(0, (1 << 64) - 1),
    st.integers(0, 0xFFFFFFFF),
    st.sampled_from([8_000, 48_000, 90_000]),
    st.integers(-10_000_000, 10_000_000),
)
def test_rtp_timestamp_at_moves_with_the_clock_rate(
    sr_ntp: int, sr_rtp: int, rate: int, offset_us: int
) -> None:
    at = ntp.ntp_add_us(sr_ntp, offset_us)
    expected = sr_rtp + offset_us * rate / 1_000_000
    got = ntp.rtp_timestamp_at(sr_ntp, sr_rtp, rate, at)
    assert ((got - round(expected)) + 1) % (1 << 32) <= 2  # within a tick, across the wrap


def test_rtp_timestamp_at_by_hand() -> None:
    sr_ntp = ntp.ntp_from_unix_ns(1_000 * 10**9)
    after = ntp.ntp_add_us(sr_ntp, 1_000_000)
    assert ntp.rtp_timestamp_at(sr_ntp, 0xFFFF0000, VIDEO, after) == (0xFFFF0000 + 90_000) % 2**32
    before = ntp.ntp_add_us(sr_ntp, -20_000)
    assert ntp.rtp_timestamp_at(sr_ntp, 1_000, 48_000, before) == 40


def test_round_trip_time_from_lsr_and_dlsr() -> None:
    sent = ntp.ntp_from_unix(1_700_000_000.0)
    lsr = ntp.ntp_middle(sent)
    now = ntp.ntp_add_us(sent, 130_000)  # the RR arrives 130 ms after the SR left
    dlsr = ntp.dlsr_from_us(100_000)  # the receiver held it 100 ms
    rtt = ntp.round_trip_us(now, lsr, dlsr)
    assert rtt is not None and abs(rtt - 30_000) <= 32  # 1/65536 s resolution
    assert ntp.round_trip_us(now, 0, 0) is None
    assert ntp.round_trip_us(sent, lsr, ntp.dlsr_from_us(5_000)) == 0  # clocks disagree
    assert ntp.dlsr_from_us(-5) == 0

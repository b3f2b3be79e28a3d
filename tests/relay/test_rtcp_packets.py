"""relay.rtcp: compound RTCP parsed, and every packet the relay sends built.

Each builder's output is parsed by aiortc's own RTCP parser (which knows SR,
RR, SDES, BYE, generic NACK and PSFB with raw FCI, REMB through its FCI
helper) as well as by relay.rtcp; aiortc-built packets are parsed by
relay.rtcp.
"""

from __future__ import annotations

import struct

import pytest
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)
from hypothesis import given
from hypothesis import strategies as st

from relay import rtcp
from relay.rtcp import (
    FirSequence,
    FullIntraRequest,
    Goodbye,
    Nack,
    OtherRtcp,
    PictureLoss,
    ReceiverReport,
    Remb,
    ReportBlock,
    SenderReport,
    SourceDescription,
)
from relay.rtp import MalformedPacket

u32 = st.integers(0, 0xFFFFFFFF)
report_blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    packets_lost=st.integers(rtcp.PACKETS_LOST_MIN, rtcp.PACKETS_LOST_MAX),
    highest_sequence=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)


def same_block(mine: ReportBlock, theirs: RtcpReceiverInfo) -> bool:
    return (
        mine.ssrc,
        mine.fraction_lost,
        mine.packets_lost,
        mine.highest_sequence,
        mine.jitter,
        mine.lsr,
        mine.dlsr,
    ) == (
        theirs.ssrc,
        theirs.fraction_lost,
        theirs.packets_lost,
        theirs.highest_sequence,
        theirs.jitter,
        theirs.lsr,
        theirs.dlsr,
    )


# --- Reports ----------------------------------------------------------------------------


@given(u32, st.integers(0, (1 << 64) - 1), u32, u32, u32, st.lists(report_blocks, max_size=31))
def test_sender_report_round_trips_and_aiortc_reads_it(
    ssrc: int, ntp: int, rtp_ts: int, packets: int, octets: int, blocks: list[ReportBlock]
) -> None:
    data = rtcp.build_sender_report(ssrc, ntp, rtp_ts, packets, octets, blocks)
    assert rtcp.parse_compound(data) == [SenderReport(ssrc, ntp, rtp_ts, packets, octets, blocks)]
    [theirs] = RtcpPacket.parse(data)
    assert isinstance(theirs, RtcpSrPacket)
    assert theirs.ssrc == ssrc
    info = theirs.sender_info
    assert (info.ntp_timestamp, info.rtp_timestamp, info.packet_count, info.octet_count) == (
        ntp,
        rtp_ts,
        packets,
        octets,
    )
    assert all(same_block(m, t) for m, t in zip(blocks, theirs.reports, strict=True))


@given(u32, st.lists(report_blocks, max_size=31))
def test_receiver_report_round_trips_and_aiortc_reads_it(
    ssrc: int, blocks: list[ReportBlock]
) -> None:
    data = rtcp.build_receiver_report(ssrc, blocks)
    assert rtcp.parse_compound(data) == [ReceiverReport(ssrc, blocks)]
    [theirs] = RtcpPacket.parse(data)
    assert isinstance(theirs, RtcpRrPacket) and theirs.ssrc == ssrc
    assert all(same_block(m, t) for m, t in zip(blocks, theirs.reports, strict=True))


def test_report_block_clamps_what_24_and_8_bits_cannot_hold() -> None:
    block = ReportBlock(1, 300, -(1 << 30), 0x1_0000_0005, 7)
    [parsed] = rtcp.parse_compound(rtcp.build_receiver_report(9, [block]))
    assert isinstance(parsed, ReceiverReport)
    assert parsed.reports[0].fraction_lost == 255
    assert parsed.reports[0].packets_lost == rtcp.PACKETS_LOST_MIN
    assert parsed.reports[0].highest_sequence == 5
    with pytest.raises(ValueError):
        rtcp.build_receiver_report(9, [block] * 32)


def test_report_block_bytes_by_hand() -> None:
    block = ReportBlock(
        ssrc=0x01020304,
        fraction_lost=0x40,
        packets_lost=-2,
        highest_sequence=0x0001_0010,
        jitter=12,
        lsr=0xAABBCCDD,
        dlsr=0x00010000,
    )
    data = rtcp.build_receiver_report(0x0A0B0C0D, [block])
    assert data == bytes.fromhex(
        "81c90007 0a0b0c0d 01020304 40fffffe 00010010 0000000c aabbccdd 00010000"
    )


def test_sdes_cname_and_bye_are_read_by_aiortc() -> None:
    for cname in ("a", "abc", "four", "parlor-relay-{visit}"):
        data = rtcp.build_sdes_cname(0x1234, cname)
        assert len(data) % 4 == 0
        [theirs] = RtcpPacket.parse(data)
        assert isinstance(theirs, RtcpSdesPacket)
        assert theirs.chunks[0].ssrc == 0x1234
        assert theirs.chunks[0].items == [(1, cname.encode())]
        assert rtcp.parse_compound(data) == [SourceDescription({0x1234: cname})]
    bye = rtcp.build_bye([1, 2], "kill")
    [theirs_bye] = RtcpPacket.parse(bye)
    assert isinstance(theirs_bye, RtcpByePacket) and theirs_bye.sources == [1, 2]
    assert rtcp.parse_compound(bye) == [Goodbye([1, 2], "kill")]
    assert rtcp.parse_compound(rtcp.build_bye([3])) == [Goodbye([3])]


def test_aiortc_compound_packets_parse() -> None:
    sr = RtcpSrPacket(
        ssrc=5,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=1 << 40, rtp_timestamp=90000, packet_count=10, octet_count=1000
        ),
        reports=[
            RtcpReceiverInfo(
                ssrc=6,
                fraction_lost=3,
                packets_lost=-1,
                highest_sequence=70000,
                jitter=4,
                lsr=5,
                dlsr=6,
            )
        ],
    )
    sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=5, items=[(1, b"cname"), (2, b"name")])])
    nack = RtcpRtpfbPacket(fmt=1, ssrc=5, media_ssrc=6, lost=[10, 12, 40])
    pli = RtcpPsfbPacket(fmt=1, ssrc=5, media_ssrc=6)
    bye = RtcpByePacket(sources=[5])
    compound = b"".join(bytes(p) for p in (sr, sdes, nack, pli, bye))
    assert rtcp.parse_compound(compound) == [
        SenderReport(5, 1 << 40, 90000, 10, 1000, [ReportBlock(6, 3, -1, 70000, 4, 5, 6)]),
        SourceDescription({5: "cname"}),
        Nack(5, 6, [10, 12, 40]),
        PictureLoss(5, 6),
        Goodbye([5]),
    ]


# --- Feedback ---------------------------------------------------------------------------


def test_nack_pairs_by_hand_across_the_wrap() -> None:
    assert rtcp.nack_pairs([1, 2, 3, 17, 18]) == [(1, 0x8003), (18, 0)]
    assert rtcp.nack_pairs([65534, 65535, 0, 1]) == [(65534, 0b111)]
    assert rtcp.nack_pairs([65535 + 1 + 5]) == [(5, 0)]  # extended numbers are masked
    assert rtcp.nack_pairs([]) == []
    data = rtcp.build_nack(0xA, 0xB, [65534, 65535, 0, 1])
    assert data == bytes.fromhex("81cd0003 0000000a 0000000b fffe0007")


@given(
    st.integers(0, 0xFFFF),
    st.sets(st.integers(0, 2000), min_size=1, max_size=300),
    u32,
    u32,
)
def test_nack_round_trips_and_aiortc_reads_it(
    first: int, offsets: set[int], sender: int, media: int
) -> None:
    extended = [first + offset for offset in sorted(offsets)]
    data = rtcp.build_nack(sender, media, extended)
    expected = [number & 0xFFFF for number in extended]
    assert rtcp.parse_compound(data) == [Nack(sender, media, expected)]
    [theirs] = RtcpPacket.parse(data)
    assert isinstance(theirs, RtcpRtpfbPacket) and theirs.fmt == 1
    assert [number & 0xFFFF for number in theirs.lost] == expected


def test_nack_must_name_a_packet() -> None:
    with pytest.raises(ValueError):
        rtcp.build_nack(1, 2, [])


def test_pli_is_read_by_aiortc() -> None:
    data = rtcp.build_pli(7, 8)
    assert data == bytes.fromhex("81ce0002 00000007 00000008")
    [theirs] = RtcpPacket.parse(data)
    assert isinstance(theirs, RtcpPsfbPacket)
    assert (theirs.fmt, theirs.ssrc, theirs.media_ssrc, theirs.fci) == (1, 7, 8, b"")
    assert rtcp.parse_compound(data) == [PictureLoss(7, 8)]


def test_fir_numbers_each_target_and_aiortc_reads_it() -> None:
    requests = FirSequence()
    first = requests.request(1, 0xAAAA)
    second = requests.request(1, 0xAAAA)
    other = requests.request(1, 0xBBBB)
    assert rtcp.parse_compound(first) == [FullIntraRequest(1, [(0xAAAA, 0)])]
    assert rtcp.parse_compound(second) == [FullIntraRequest(1, [(0xAAAA, 1)])]
    assert rtcp.parse_compound(other) == [FullIntraRequest(1, [(0xBBBB, 0)])]
    [theirs] = RtcpPacket.parse(second)
    assert isinstance(theirs, RtcpPsfbPacket)
    assert (theirs.fmt, theirs.ssrc, theirs.media_ssrc) == (4, 1, 0)
    assert theirs.fci == struct.pack("!IB3x", 0xAAAA, 1)
    for _ in range(254):
        requests.request(1, 0xAAAA)
    assert rtcp.parse_compound(requests.request(1, 0xAAAA)) == [FullIntraRequest(1, [(0xAAAA, 0)])]
    both = rtcp.build_fir(1, [(2, 3), (4, 5)])
    assert rtcp.parse_compound(both) == [FullIntraRequest(1, [(2, 3), (4, 5)])]


@given(st.integers(0, (1 << 60)), st.lists(u32, max_size=10), u32)
def test_remb_round_trips_rounded_down_and_aiortc_reads_it(
    bitrate: int, ssrcs: list[int], sender: int
) -> None:
    data = rtcp.build_remb(sender, bitrate, ssrcs)
    [parsed] = rtcp.parse_compound(data)
    assert isinstance(parsed, Remb)
    assert parsed.sender_ssrc == sender and parsed.ssrcs == ssrcs
    assert parsed.bitrate <= bitrate
    assert bitrate - parsed.bitrate < max(1, bitrate >> 17)
    if bitrate < 1 << 18:
        assert parsed.bitrate == bitrate
    [theirs] = RtcpPacket.parse(data)
    assert isinstance(theirs, RtcpPsfbPacket) and theirs.fmt == 15
    assert unpack_remb_fci(theirs.fci) == (parsed.bitrate, ssrcs)


def test_remb_bytes_by_hand() -> None:
    # 1,000,000 bit/s = 250000 * 2^2: mantissa 0x3D090 (18 bits), exponent 2.
    data = rtcp.build_remb(1, 1_000_000, [0x1234])
    assert data == bytes.fromhex("8fce0005 00000001 00000000 52454d42 010bd090 00001234")
    assert rtcp.parse_compound(data) == [Remb(1, 1_000_000, [0x1234])]


# --- Compound parsing --------------------------------------------------------------------


def test_iter_packets_locates_payloads_without_copying_and_strips_padding() -> None:
    padded = bytearray(rtcp.build_pli(1, 2) + bytes(4))
    padded[0] |= 0x20
    padded[2:4] = (3).to_bytes(2, "big")
    padded[-1] = 4
    compound = rtcp.build_receiver_report(9) + bytes(padded)
    assert list(rtcp.iter_packets(compound)) == [(201, 0, 4, 8), (206, 1, 12, 20)]
    assert rtcp.parse_compound(compound) == [ReceiverReport(9), PictureLoss(1, 2)]


def test_unknown_packets_are_kept_raw() -> None:
    app = struct.pack("!BBH", 0x80, 204, 2) + b"\x00\x00\x00\x01NAME"
    xr = struct.pack("!BBH", 0x80, 207, 1) + b"\x00\x00\x00\x01"
    afb = rtcp._packet(rtcp.PSFB, 15, struct.pack("!II", 1, 0) + b"XXXX")
    assert rtcp.parse_compound(app + xr + afb) == [
        OtherRtcp(204, 0, b"\x00\x00\x00\x01NAME"),
        OtherRtcp(207, 0, b"\x00\x00\x00\x01"),
        OtherRtcp(206, 15, struct.pack("!II", 1, 0) + b"XXXX"),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\xc9\x00", "shorter than its header"),
        (b"\x40\xc9\x00\x01" + bytes(4), "version 1"),
        (b"\x80\xc9\x00\x02" + bytes(4), "truncated"),
        (b"\xa0\xc9\x00\x01" + bytes(3) + b"\x09", "padding length 9"),
        (b"\x81\xc9\x00\x01" + bytes(4), "1 blocks is truncated"),
        (b"\x81\xcd\x00\x02" + bytes(7) + b"\x01", "NACK length"),  # 8 bytes, no FCI
        (b"\x81\xca\x00\x01" + bytes(4), "SDES chunk"),
        (b"\x81\xce\x00\x01" + bytes(4), "PLI is truncated"),
        (b"\x84\xce\x00\x03" + bytes(12), "FIR length"),
    ],
)
def test_malformed_rtcp_raises_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message):
        rtcp.parse_compound(data)


@given(st.binary(max_size=120))
def test_rtcp_garbage_raises_only_malformed_packet(data: bytes) -> None:
    for prefix in (b"", b"\x80\xc9", b"\x81\xcd", b"\x8f\xcd", b"\x8f\xce", b"\x81\xca"):
        blob = prefix + data
        if len(blob) >= 4:
            blob = blob[:2] + ((len(blob) - 4) // 4).to_bytes(2, "big") + blob[4:]
        try:
            rtcp.parse_compound(blob)
        except MalformedPacket:
            pass

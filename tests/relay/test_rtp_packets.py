"""relay.rtp: RTP headers, header extensions and RTX, read and rewritten as bytes.

Packets come from an independent byte-level builder (tests/harness) and from
aiortc's own serializer; results are checked against aiortc's parser.
"""

from __future__ import annotations

import struct

import pytest
from aiortc import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unpack_header_extensions
from aiortc.rtp import wrap_rtx as aiortc_wrap_rtx
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import rtp
from relay.rtp import ExtensionIdMap, MalformedPacket
from tests.harness.rtp_packets import rtp_packet

TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


def aiortc_map(ids: dict[str, int]) -> HeaderExtensionsMap:
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in ids.items()]
        )
    )
    return extensions


one_byte_elements = st.lists(
    st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=6
)
two_byte_elements = st.lists(
    st.tuples(st.integers(1, 255), st.binary(min_size=0, max_size=40)), max_size=6
)


@st.composite
def packets(draw: st.DrawFn) -> dict:
    two_byte = draw(st.booleans())
    fields = {
        "payload_type": draw(st.integers(0, 127)),
        "sequence_number": draw(st.integers(0, 0xFFFF)),
        "timestamp": draw(st.integers(0, 0xFFFFFFFF)),
        "ssrc": draw(st.integers(0, 0xFFFFFFFF)),
        "marker": draw(st.booleans()),
        "csrcs": draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=15)),
        "extensions": draw(two_byte_elements if two_byte else one_byte_elements),
        "two_byte": two_byte,
        "gap": draw(st.integers(0, 3)),
        "payload": draw(st.binary(max_size=64)),
        "padding": draw(st.integers(0, 40)),
    }
    return fields


# --- Fixed header ----------------------------------------------------------------------


@given(packets())
def test_parse_header_agrees_with_aiortc(fields: dict) -> None:
    data = rtp_packet(**fields)
    header = rtp.parse_header(data)
    theirs = RtpPacket.parse(data)
    assert header.marker == bool(theirs.marker)
    assert header.payload_type == theirs.payload_type
    assert header.sequence_number == theirs.sequence_number
    assert header.timestamp == theirs.timestamp
    assert header.ssrc == theirs.ssrc
    assert data[header.payload_start : header.payload_end] == theirs.payload == fields["payload"]
    assert header.padding_length == theirs.padding_size == fields["padding"]
    assert header.csrc_end == 12 + 4 * len(fields["csrcs"])
    elements = [(i, data[s:e]) for i, s, e in rtp.extension_elements(data)]
    assert elements == [(i, bytes(v)) for i, v in fields["extensions"]]


def test_header_without_extension_locates_payload_after_csrcs() -> None:
    data = rtp_packet(csrcs=[1, 2], payload=b"abc")
    header = rtp.parse_header(data)
    assert header.extension_profile == 0
    assert header.extension_start == header.extension_end == header.csrc_end == 20
    assert (header.payload_start, header.payload_end) == (20, 23)
    assert rtp.payload_bounds(data) == (20, 23)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x60\x00", "shorter than its fixed header"),
        (b"\x40" + bytes(11), "version 1"),
        (b"\x82" + bytes(11) + bytes(4), "truncated"),  # 2 CSRCs announced, 1 present
        (b"\x90" + bytes(11) + b"\xbe\xde", "extension is truncated"),
        (b"\x90" + bytes(11) + b"\xbe\xde\x00\x02" + bytes(4), "truncated"),
        (b"\xa0" + bytes(11) + b"ab\x00", "padding length 0"),
        (b"\xa0" + bytes(11) + b"ab\x04", "padding length 4"),
    ],
)
def test_malformed_headers_raise_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message) as raised:
        rtp.parse_header(data)
    assert raised.value.code == "malformed-packet"


@given(st.binary(max_size=80))
def test_garbage_raises_only_malformed_packet(data: bytes) -> None:
    calls = (
        lambda: rtp.parse_header(data),
        lambda: rtp.extension_elements(data),
        lambda: rtp.is_padding_only(data),
        lambda: rtp.find_extension(data, 3),
        lambda: rtp.remap_extensions(bytearray(data), ExtensionIdMap({1: 2})),
        lambda: rtp.set_extension(bytearray(data), 2, b"ab"),
        lambda: rtp.unwrap_rtx(data, 96, 1),
        lambda: rtp.wrap_rtx(data, 97, 1, 1),
    )
    for call in calls:
        try:
            call()
        except MalformedPacket:
            pass


def test_is_rtcp_tells_rtcp_from_rtp_on_a_muxed_port() -> None:
    assert rtp.is_rtcp(b"\x80\xc8\x00\x06" + bytes(24))  # SR
    assert rtp.is_rtcp(b"\x81\xcd\x00\x02" + bytes(8))  # RTPFB
    assert not rtp.is_rtcp(rtp_packet(payload_type=96, marker=True))
    assert not rtp.is_rtcp(rtp_packet(payload_type=111))
    assert not rtp.is_rtcp(b"\x00\x01\x00\x00")  # STUN binding request


def test_sequence_delta_crosses_the_wrap() -> None:
    assert rtp.sequence_delta(1, 65535) == 2
    assert rtp.sequence_delta(65535, 1) == -2
    assert rtp.sequence_delta(5, 5) == 0
    assert rtp.sequence_delta(32767, 0) == 32767
    assert rtp.sequence_delta(32768, 0) == -32768


def test_rewrite_header_changes_only_its_fields() -> None:
    original = rtp_packet(
        payload_type=96, sequence_number=7, timestamp=5, ssrc=1, marker=True, csrcs=[9]
    )
    packet = bytearray(original)
    rtp.rewrite_header(packet, 0xCAFEBABE, 102, 0x1_0003, 0x1_0000_0007)
    parsed = RtpPacket.parse(bytes(packet))
    assert (parsed.ssrc, parsed.payload_type, parsed.sequence_number, parsed.timestamp) == (
        0xCAFEBABE,
        102,
        3,
        7,
    )
    assert parsed.marker == 1  # kept
    assert parsed.csrc == [9]
    assert packet[12:] == original[12:]
    rtp.rewrite_header(packet, 1, 96, 1, 1, marker=False)
    assert RtpPacket.parse(bytes(packet)).marker == 0


def test_padding_only_packets_are_recognised() -> None:
    probe = RtpPacket(payload_type=96, sequence_number=1, ssrc=5)
    probe.padding_size = 224  # what Chromium's probes carry
    assert rtp.is_padding_only(probe.serialize())
    assert not rtp.is_padding_only(rtp_packet(payload=b"x", padding=4))
    assert rtp.is_padding_only(rtp_packet(payload=b""))


# --- Header extensions -------------------------------------------------------------------


def test_find_extension_in_the_one_byte_form_skips_padding_and_stops_at_id_15() -> None:
    data = rtp_packet(extensions=[(1, b"a"), (3, b"\x01\x02"), (5, b"xyz")], gap=2)
    start, end = rtp.find_extension(data, 3)
    assert data[start:end] == b"\x01\x02"
    assert rtp.find_extension(data, 4) is None
    # An element with id 15 ends parsing: what follows it is not an extension.
    block = bytes((0x10,)) + b"a" + bytes((0xF0,)) + bytes((0x20,)) + b"b" + bytes(3)
    stopped = bytearray(rtp_packet(extensions=[(1, b"a")]))
    stopped[12:] = struct.pack("!HH", 0xBEDE, len(block) // 4) + block + b"payload"
    assert rtp.find_extension(stopped, 1) is not None
    assert rtp.find_extension(stopped, 2) is None
    assert [i for i, _s, _e in rtp.extension_elements(stopped)] == [1]


def test_two_byte_form_allows_large_ids_and_empty_values() -> None:
    data = rtp_packet(extensions=[(200, b""), (3, b"v" * 20)], two_byte=True, gap=1)
    assert rtp.find_extension(data, 200) is not None
    start, end = rtp.find_extension(data, 3)
    assert data[start:end] == b"v" * 20
    header = rtp.parse_header(data)
    block = data[header.extension_start : header.extension_end]
    parsed = unpack_header_extensions(header.extension_profile, block)
    assert parsed == [(200, b""), (3, b"v" * 20)]


def test_elements_overrunning_their_block_are_malformed() -> None:
    block = bytes((0x1F,)) + b"abc"  # announces 16 bytes
    data = rtp_packet()[:12] + struct.pack("!HH", 0xBEDE, 1) + block
    data = bytes([data[0] | 0x10]) + data[1:]
    with pytest.raises(MalformedPacket, match="overruns"):
        rtp.extension_elements(data)
    with pytest.raises(MalformedPacket, match="overruns"):
        rtp.find_extension(data, 2)


def test_remap_returns_the_packet_untouched_when_ids_map_to_themselves() -> None:
    packet = bytearray(rtp_packet(extensions=[(1, b"a"), (3, b"bb")]))
    before = bytes(packet)
    assert rtp.remap_extensions(packet, ExtensionIdMap({1: 1, 3: 3, 4: 4})) is packet
    assert packet == before
    bare = bytearray(rtp_packet())
    assert rtp.remap_extensions(bare, ExtensionIdMap({1: 2})) is bare


def test_remap_renames_in_place_when_every_element_is_kept() -> None:
    packet = bytearray(rtp_packet(extensions=[(1, b"a"), (3, b"bb")]))
    size = len(packet)
    result = rtp.remap_extensions(packet, ExtensionIdMap({1: 4, 3: 1}))
    assert result is packet and len(packet) == size
    assert [(i, bytes(packet[s:e])) for i, s, e in rtp.extension_elements(packet)] == [
        (4, b"a"),
        (1, b"bb"),
    ]


def test_remap_rebuilds_the_block_when_an_element_is_dropped() -> None:
    original = rtp_packet(
        extensions=[(1, b"0"), (3, b"\x00\x07"), (5, b"x" * 9)], payload=b"media", padding=3
    )
    result = rtp.remap_extensions(bytearray(original), ExtensionIdMap({3: 2}))
    assert [(i, bytes(result[s:e])) for i, s, e in rtp.extension_elements(result)] == [
        (2, b"\x00\x07")
    ]
    header = rtp.parse_header(result)
    assert result[header.payload_start : header.payload_end] == b"media"
    assert header.padding_length == 3
    parsed = RtpPacket.parse(bytes(result), aiortc_map({TWCC_URI: 2}))
    assert parsed.extensions.transport_sequence_number == 7


def test_remap_drops_the_whole_block_when_nothing_is_kept() -> None:
    original = rtp_packet(extensions=[(1, b"0")], csrcs=[42], payload=b"media")
    result = rtp.remap_extensions(bytearray(original), ExtensionIdMap({2: 2}))
    header = rtp.parse_header(result)
    assert not result[0] & 0x10
    assert header.extension_profile == 0
    assert result[header.payload_start :] == b"media"
    assert RtpPacket.parse(bytes(result)).csrc == [42]


def test_remap_to_an_id_above_14_switches_to_the_two_byte_form() -> None:
    original = rtp_packet(extensions=[(1, b"a"), (2, b"bc")])
    result = rtp.remap_extensions(bytearray(original), ExtensionIdMap({1: 1, 2: 20}))
    assert rtp.parse_header(result).extension_profile == 0x1000
    assert [(i, bytes(result[s:e])) for i, s, e in rtp.extension_elements(result)] == [
        (1, b"a"),
        (20, b"bc"),
    ]


def test_extension_id_map_refuses_ids_outside_1_to_255() -> None:
    with pytest.raises(ValueError):
        ExtensionIdMap({0: 1})
    with pytest.raises(ValueError):
        ExtensionIdMap({1: 256})


@settings(max_examples=300)
@given(packets(), st.dictionaries(st.integers(1, 255), st.integers(1, 255)))
def test_remap_keeps_exactly_the_mapped_elements_and_the_rest_of_the_packet(
    fields: dict, mapping: dict[int, int]
) -> None:
    # Ids of one packet are distinct, as a sender negotiates one id per extension.
    fields["extensions"] = list(dict(fields["extensions"]).items())
    original = rtp_packet(**fields)
    if not fields["two_byte"]:  # a one-byte block can only be renamed in place within 1-14
        mapping = {k: (v % 14) + 1 for k, v in mapping.items()} if mapping else mapping
    result = rtp.remap_extensions(bytearray(original), ExtensionIdMap(mapping))
    expected = [(mapping[i], bytes(v)) for i, v in fields["extensions"] if i in mapping]
    assert [(i, bytes(result[s:e])) for i, s, e in rtp.extension_elements(result)] == expected
    mine, theirs = rtp.parse_header(result), rtp.parse_header(original)
    assert mine[:5] == theirs[:5]
    assert result[mine.payload_start :] == original[theirs.payload_start :]
    assert RtpPacket.parse(bytes(result)).payload == fields["payload"]


def test_set_extension_adds_replaces_and_overwrites() -> None:
    bare = bytearray(rtp_packet(payload=b"media"))
    added = rtp.set_extension(bare, 3, b"\x12\x34")
    assert rtp.read_transport_sequence(added, 3) == 0x1234
    assert rtp.parse_header(added).payload_start == 20
    assert added[20:] == b"media"
    same = rtp.set_extension(added, 3, b"\x00\x05")
    assert same is added and rtp.read_transport_sequence(added, 3) == 5
    grown = rtp.set_extension(added, 3, b"\x01\x02\x03")
    assert [(i, bytes(grown[s:e])) for i, s, e in rtp.extension_elements(grown)] == [
        (3, b"\x01\x02\x03")
    ]
    with pytest.raises(ValueError):
        rtp.set_extension(bare, 0, b"x")


def test_transport_sequence_number_read_and_written_in_place() -> None:
    packet = RtpPacket(payload_type=96, sequence_number=1, ssrc=5, payload=b"x")
    packet.extensions.transport_sequence_number = 65535
    ids = aiortc_map({MID_URI: 1, TWCC_URI: 5})
    packet.extensions.mid = "video"
    data = bytearray(packet.serialize(ids))
    assert rtp.read_transport_sequence(data, 5) == 65535
    assert rtp.write_transport_sequence(data, 5, 0x1_0002)
    assert RtpPacket.parse(bytes(data), ids).extensions.transport_sequence_number == 2
    assert rtp.read_transport_sequence(data, 4) is None
    assert not rtp.write_transport_sequence(data, 4, 1)


def test_abs_send_time_is_6_18_fixed_point_seconds() -> None:
    assert rtp.abs_send_time(1_000_000) == 1 << 18
    assert rtp.abs_send_time(500_000) == 1 << 17
    assert rtp.abs_send_time(64_000_000) == 0  # wraps every 64 s
    packet = RtpPacket(payload_type=96, sequence_number=1, ssrc=5, payload=b"x")
    packet.extensions.abs_send_time = 0x123456
    ids = aiortc_map({ABS_SEND_TIME_URI: 2})
    data = bytearray(packet.serialize(ids))
    assert rtp.read_abs_send_time(data, 2) == 0x123456
    assert rtp.write_abs_send_time(data, 2, rtp.abs_send_time(2_500_000))
    assert RtpPacket.parse(bytes(data), ids).extensions.abs_send_time == (5 << 17)


def test_audio_level_reads_the_voice_bit_and_level() -> None:
    ids = aiortc_map({AUDIO_LEVEL_URI: 1})
    for voice, level in ((True, 0), (False, 127), (True, 42)):
        packet = RtpPacket(payload_type=111, sequence_number=1, ssrc=5, payload=b"x")
        packet.extensions.audio_level = (voice, level)
        assert rtp.read_audio_level(packet.serialize(ids), 1) == (voice, level)
    assert rtp.read_audio_level(rtp_packet(), 1) is None


# --- RTX --------------------------------------------------------------------------------


def test_wrap_rtx_matches_aiortc() -> None:
    original = RtpPacket(
        payload_type=96, marker=1, sequence_number=4321, timestamp=777, ssrc=1, payload=b"vp8"
    )
    mine = rtp.wrap_rtx(original.serialize(), 97, 2, 0x1_0009)
    theirs = aiortc_wrap_rtx(original, payload_type=97, sequence_number=9, ssrc=2).serialize()
    assert bytes(mine) == theirs


@given(packets(), st.integers(0, 127), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF))
def test_unwrap_rtx_restores_the_original_without_its_padding(
    fields: dict, rtx_pt: int, rtx_ssrc: int, rtx_seq: int
) -> None:
    fields["payload"] = fields["payload"] or b"x"
    original = rtp_packet(**fields)
    rtx = rtp.wrap_rtx(original, rtx_pt, rtx_ssrc, rtx_seq)
    header = rtp.parse_header(rtx)
    assert (header.payload_type, header.ssrc, header.sequence_number) == (
        rtx_pt,
        rtx_ssrc,
        rtx_seq,
    )
    restored = rtp.unwrap_rtx(rtx, fields["payload_type"], fields["ssrc"])
    assert restored is not None
    without_padding = bytearray(rtp_packet(**{**fields, "padding": 0}))
    assert restored == without_padding


def test_unwrap_rtx_of_a_padding_probe_is_none() -> None:
    probe = rtp_packet(payload_type=97, payload=b"", padding=200)
    assert rtp.unwrap_rtx(probe, 96, 1) is None
    assert rtp.unwrap_rtx(rtp_packet(payload=b"\x01"), 96, 1) is None

"""RTCP packets as bytes: parse a compound packet, build the ones an SFU sends.

Wire formats: RFC 3550 (SR, RR, SDES, BYE), RFC 4585 (generic NACK, PLI),
RFC 5104 (FIR), draft-alvestrand-rmcat-remb-03 (REMB) and
draft-holmer-rmcat-transport-wide-cc-extensions-01 (transport-cc, in
:mod:`relay.twcc`).

Compound packets: RFC 3550 §6.1 wants every RTCP datagram to be a compound
packet that starts with an SR or RR and carries an SDES CNAME. RFC 5506
("reduced-size RTCP", negotiated as ``a=rtcp-rsize``, which browsers always
offer) lets a datagram carry feedback (NACK, PLI, FIR, REMB, transport-cc)
alone. Each builder here returns **one** RTCP packet; concatenating packets
(``b"".join``) makes a compound packet. What the relay sends:

* sender reports: ``build_sender_report(...) + build_sdes_cname(...)``, a
  full RFC 3550 compound packet, once per outgoing stream and interval;
* receiver reports: ``build_receiver_report(...) + build_sdes_cname(...)``;
* feedback: alone (reduced-size) when the peer negotiated ``rtcp-rsize``,
  otherwise appended to a receiver report compound.

Parsing (:func:`iter_packets`, :func:`parse_compound`) accepts either, and
does not insist on the first packet being SR/RR. Nothing here pads
packets except transport-cc, which pads as libwebrtc does.

Units: NTP timestamps are 64-bit (32.32 fixed-point seconds since 1900,
see :mod:`relay.ntp`); RTP timestamps are 32-bit in the stream's clock;
``lsr`` is the middle 32 bits of an NTP timestamp and ``dlsr`` is in
1/65536 s; REMB bitrates are in bit/s.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from relay.rtp import RTP_VERSION, MalformedPacket
from relay.twcc import TransportFeedback, parse_transport_feedback

SR = 200
RR = 201
SDES = 202
BYE = 203
APP = 204
RTPFB = 205
PSFB = 206

RTPFB_NACK = 1
RTPFB_TRANSPORT_CC = 15
PSFB_PLI = 1
PSFB_FIR = 4
PSFB_APPLICATION = 15
"""Application-layer feedback; REMB is the one carrying the ``REMB`` identifier."""

SDES_CNAME = 1
MAX_REPORT_BLOCKS = 31
PACKETS_LOST_MIN = -0x800000
PACKETS_LOST_MAX = 0x7FFFFF

_HEADER = struct.Struct("!BBH")
_REPORT_BLOCK = struct.Struct("!IIIIII")
_SENDER_INFO = struct.Struct("!IQIII")
_FEEDBACK = struct.Struct("!BBHII")


@dataclass(slots=True)
class ReportBlock:
    """One reception report (RFC 3550 §6.4.1) about the stream ``ssrc``."""

    ssrc: int
    fraction_lost: int
    """Lost since the previous report, in 1/256 (0–255)."""
    packets_lost: int
    """Cumulative, signed 24-bit (duplicates can make it negative)."""
    highest_sequence: int
    """Extended highest sequence number received: cycles << 16 | seq (32-bit)."""
    jitter: int
    """Interarrival jitter, in RTP timestamp units."""
    lsr: int = 0
    """Middle 32 bits of the NTP timestamp of the last SR received, 0 if none."""
    dlsr: int = 0
    """Delay since that SR, in 1/65536 s; 0 if none."""


@dataclass(slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int
    """64-bit NTP time the report was sent at."""
    rtp_timestamp: int
    """The same instant in the stream's RTP clock (32-bit)."""
    packet_count: int
    octet_count: int
    """Payload octets sent (headers and padding excluded), 32-bit."""
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class ReceiverReport:
    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class SourceDescription:
    """SDES: the CNAME of each chunk's SSRC (None when a chunk has none)."""

    cnames: dict[int, str | None] = field(default_factory=dict)


@dataclass(slots=True)
class Goodbye:
    """BYE: these sources leave; ``reason`` is the optional text."""

    ssrcs: list[int]
    reason: str | None = None


@dataclass(slots=True)
class Nack:
    """Generic NACK (RFC 4585 §6.2.1): the media packets ``lost`` (16-bit, in order)."""

    sender_ssrc: int
    media_ssrc: int
    lost: list[int]


@dataclass(slots=True)
class PictureLoss:
    """PLI (RFC 4585 §6.3.1): the decoder of ``media_ssrc`` needs a keyframe."""

    sender_ssrc: int
    media_ssrc: int


@dataclass(slots=True)
class FullIntraRequest:
    """FIR (RFC 5104 §4.3.1): ``(media ssrc, command sequence number)`` per target."""

    sender_ssrc: int
    entries: list[tuple[int, int]]


@dataclass(slots=True)
class Remb:
    """REMB: the receiver's estimate of the bitrate (bit/s) ``ssrcs`` may use together."""

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int]


@dataclass(slots=True)
class OtherRtcp:
    """A packet this module does not decode (APP, XR, other feedback types)."""

    packet_type: int
    count: int
    """The 5-bit count/FMT field."""
    payload: bytes


RtcpPart = (
    SenderReport
    | ReceiverReport
    | SourceDescription
    | Goodbye
    | Nack
    | PictureLoss
    | FullIntraRequest
    | Remb
    | TransportFeedback
    | OtherRtcp
)


def iter_packets(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int, int]]:
    """``(packet_type, count, payload_start, payload_end)`` for each packet of a compound.

    ``count`` is the 5-bit count (SR/RR/SDES/BYE) or FMT (feedback) field.
    Offsets index ``data`` and exclude the 4-byte header and any padding, so
    nothing is copied. Checks version, lengths and padding; raises
    :class:`relay.rtp.MalformedPacket`.
    """
    position = 0
    size = len(data)
    while position < size:
        if size - position < 4:
            raise MalformedPacket("RTCP packet is shorter than its header")
        first, packet_type, length = _HEADER.unpack_from(data, position)
        if first >> 6 != RTP_VERSION:
            raise MalformedPacket(f"RTCP version {first >> 6} is not 2")
        end = position + 4 + 4 * length
        if end > size:
            raise MalformedPacket("RTCP packet is truncated")
        payload_end = end
        if first & 0x20:
            padding = data[end - 1]
            if padding == 0 or padding > end - position - 4:
                raise MalformedPacket(f"RTCP padding length {padding} is invalid")
            payload_end -= padding
        yield packet_type, first & 0x1F, position + 4, payload_end
        position = end


def parse_compound(data: bytes | bytearray | memoryview) -> list[RtcpPart]:
    """Every packet of a compound RTCP packet, decoded. Raises MalformedPacket."""
    parts: list[RtcpPart] = []
    for packet_type, count, start, end in iter_packets(data):
        parts.append(parse_packet(data, packet_type, count, start, end))
    return parts


def parse_packet(
    data: bytes | bytearray | memoryview, packet_type: int, count: int, start: int, end: int
) -> RtcpPart:
    """Decode one packet located by :func:`iter_packets`. Raises MalformedPacket."""
    if packet_type == SR:
        return _parse_sender_report(data, count, start, end)
    if packet_type == RR:
        return _parse_receiver_report(data, count, start, end)
    if packet_type == SDES:
        return _parse_sdes(data, count, start, end)
    if packet_type == BYE:
        return _parse_bye(data, count, start, end)
    if packet_type == RTPFB:
        if count == RTPFB_NACK:
            return _parse_nack(data, start, end)
        if count == RTPFB_TRANSPORT_CC:
            return parse_transport_feedback(data, start, end)
    elif packet_type == PSFB:
        if count == PSFB_PLI:
            if end - start < 8:
                raise MalformedPacket("RTCP PLI is truncated")
            sender, media = struct.unpack_from("!II", data, start)
            return PictureLoss(sender, media)
        if count == PSFB_FIR:
            return _parse_fir(data, start, end)
        if (
            count == PSFB_APPLICATION
            and end - start >= 12
            and data[start + 8 : start + 12] == b"REMB"
        ):
            return _parse_remb(data, start, end)
    return OtherRtcp(packet_type, count, bytes(data[start:end]))


def _parse_report_blocks(
    data: bytes | bytearray | memoryview, count: int, start: int, end: int
) -> list[ReportBlock]:
    if start + 24 * count > end:
        raise MalformedPacket(f"RTCP report with {count} blocks is truncated")
    blocks = []
    for position in range(start, start + 24 * count, 24):
        ssrc, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, position)
        packets_lost = lost & 0xFFFFFF
        if packets_lost & 0x800000:
            packets_lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost >> 24, packets_lost, highest, jitter, lsr, dlsr))
    return blocks


def _parse_sender_report(
    data: bytes | bytearray | memoryview, count: int, start: int, end: int
) -> SenderReport:
    if end - start < 24:
        raise MalformedPacket("RTCP sender report is truncated")
    ssrc, ntp, rtp_timestamp, packets, octets = _SENDER_INFO.unpack_from(data, start)
    reports = _parse_report_blocks(data, count, start + 24, end)
    return SenderReport(ssrc, ntp, rtp_timestamp, packets, octets, reports)


def _parse_receiver_report(
    data: bytes | bytearray | memoryview, count: int, start: int, end: int
) -> ReceiverReport:
    if end - start < 4:
        raise MalformedPacket("RTCP receiver report is truncated")
    ssrc = int.from_bytes(data[start : start + 4], "big")
    return ReceiverReport(ssrc, _parse_report_blocks(data, count, start + 4, end))


def _parse_sdes(
    data: bytes | bytearray | memoryview, count: int, start: int, end: int
) -> SourceDescription:
    cnames: dict[int, str | None] = {}
    position = start
    for _ in range(count):
        if position + 4 > end:
            raise MalformedPacket("RTCP SDES chunk is truncated")
        ssrc = int.from_bytes(data[position : position + 4], "big")
        position += 4
        cname = None
        while True:
            if position >= end:
                raise MalformedPacket("RTCP SDES chunk is not terminated")
            item = data[position]
            if item == 0:
                position = start + ((position - start + 4) & ~3)  # null item, 32-bit padding
                break
            if position + 2 > end or position + 2 + data[position + 1] > end:
                raise MalformedPacket("RTCP SDES item is truncated")
            value = bytes(data[position + 2 : position + 2 + data[position + 1]])
            if item == SDES_CNAME:
                cname = value.decode("utf-8", "replace")
            position += 2 + len(value)
        cnames[ssrc] = cname
    return SourceDescription(cnames)


def _parse_bye(data: bytes | bytearray | memoryview, count: int, start: int, end: int) -> Goodbye:
    if start + 4 * count > end:
        raise MalformedPacket("RTCP BYE is truncated")
    ssrcs = list(struct.unpack_from(f"!{count}I", data, start))
    reason = None
    position = start + 4 * count
    if position < end:
        length = data[position]
        if position + 1 + length > end:
            raise MalformedPacket("RTCP BYE reason is truncated")
        reason = bytes(data[position + 1 : position + 1 + length]).decode("utf-8", "replace")
    return Goodbye(ssrcs, reason)


def _parse_nack(data: bytes | bytearray | memoryview, start: int, end: int) -> Nack:
    if end - start < 12 or (end - start) % 4:  # at least one FCI entry (RFC 4585 §6.1)
        raise MalformedPacket("RTCP NACK length is invalid")
    sender, media = struct.unpack_from("!II", data, start)
    lost = []
    for position in range(start + 8, end, 4):
        pid = (data[position] << 8) | data[position + 1]
        blp = (data[position + 2] << 8) | data[position + 3]
        lost.append(pid)
        bit = 0
        while blp:
            if blp & 1:
                lost.append((pid + bit + 1) & 0xFFFF)
            blp >>= 1
            bit += 1
    return Nack(sender, media, lost)


def _parse_fir(data: bytes | bytearray | memoryview, start: int, end: int) -> FullIntraRequest:
    if end - start < 8 or (end - start - 8) % 8:
        raise MalformedPacket("RTCP FIR length is invalid")
    sender = int.from_bytes(data[start : start + 4], "big")
    entries = []
    for position in range(start + 8, end, 8):
        ssrc = int.from_bytes(data[position : position + 4], "big")
        entries.append((ssrc, data[position + 4]))
    return FullIntraRequest(sender, entries)


def _parse_remb(data: bytes | bytearray | memoryview, start: int, end: int) -> Remb:
    sender = int.from_bytes(data[start : start + 4], "big")
    if end - start < 16:
        raise MalformedPacket("RTCP REMB is truncated")
    count = data[start + 12]
    exponent = data[start + 13] >> 2
    mantissa = ((data[start + 13] & 0x03) << 16) | (data[start + 14] << 8) | data[start + 15]
    if start + 16 + 4 * count > end:
        raise MalformedPacket("RTCP REMB SSRC list is truncated")
    ssrcs = list(struct.unpack_from(f"!{count}I", data, start + 16))
    return Remb(sender, mantissa << exponent, ssrcs)


# --- Builders ------------------------------------------------------------------------


def _packet(packet_type: int, count: int, payload: bytes | bytearray) -> bytes:
    """Header + payload; ``payload`` must be a multiple of 4 bytes."""
    return _HEADER.pack(0x80 | count, packet_type, len(payload) // 4) + payload


def _report_blocks(reports: Sequence[ReportBlock]) -> bytes:
    if len(reports) > MAX_REPORT_BLOCKS:
        raise ValueError(f"an RTCP report carries at most 31 blocks, not {len(reports)}")
    out = bytearray()
    for block in reports:
        lost = min(max(block.packets_lost, PACKETS_LOST_MIN), PACKETS_LOST_MAX) & 0xFFFFFF
        out += _REPORT_BLOCK.pack(
            block.ssrc,
            (min(max(block.fraction_lost, 0), 255) << 24) | lost,
            block.highest_sequence & 0xFFFFFFFF,
            block.jitter & 0xFFFFFFFF,
            block.lsr & 0xFFFFFFFF,
            block.dlsr & 0xFFFFFFFF,
        )
    return bytes(out)


def build_sender_report(
    ssrc: int,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Sequence[ReportBlock] = (),
) -> bytes:
    """An SR (RFC 3550 §6.4.1). Counts and the RTP timestamp wrap at 32 bits.

    ``ntp_timestamp`` (64-bit) and ``rtp_timestamp`` must name the same
    instant: receivers use the pair for lip sync and RTT (see
    :mod:`relay.ntp`). Send it followed by :func:`build_sdes_cname`.
    """
    payload = _SENDER_INFO.pack(
        ssrc,
        ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
        rtp_timestamp & 0xFFFFFFFF,
        packet_count & 0xFFFFFFFF,
        octet_count & 0xFFFFFFFF,
    )
    return _packet(SR, len(reports), payload + _report_blocks(reports))


def build_receiver_report(ssrc: int, reports: Sequence[ReportBlock] = ()) -> bytes:
    """An RR (RFC 3550 §6.4.2); ``packets_lost`` is clamped to 24 bits signed."""
    return _packet(RR, len(reports), ssrc.to_bytes(4, "big") + _report_blocks(reports))


def build_sdes_cname(ssrc: int, cname: str) -> bytes:
    """An SDES with one chunk holding the CNAME of ``ssrc`` (RFC 3550 §6.5.1)."""
    value = cname.encode("utf-8")
    if len(value) > 255:
        raise ValueError("an SDES CNAME holds at most 255 bytes")
    chunk = ssrc.to_bytes(4, "big") + bytes((SDES_CNAME, len(value))) + value
    chunk += bytes(4 - len(chunk) % 4)  # the null item, then padding to 32 bits
    return _packet(SDES, 1, chunk)


def build_bye(ssrcs: Sequence[int], reason: str | None = None) -> bytes:
    """A BYE for ``ssrcs`` (at most 31), with an optional reason text."""
    if len(ssrcs) > MAX_REPORT_BLOCKS:
        raise ValueError("an RTCP BYE names at most 31 sources")
    payload = b"".join(ssrc.to_bytes(4, "big") for ssrc in ssrcs)
    if reason is not None:
        text = reason.encode("utf-8")[:255]
        payload += bytes((len(text),)) + text
        payload += bytes(-len(payload) % 4)
    return _packet(BYE, len(ssrcs), payload)


def nack_pairs(sequence_numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Compress lost sequence numbers into generic-NACK ``(PID, BLP)`` pairs.

    ``sequence_numbers`` must be in ascending order *modulo 2^16*, without
    repeats, spanning less than 32768 (e.g. extended sequence numbers, or
    16-bit ones such as ``65534, 65535, 0, 1``): each is masked to 16 bits
    and its distance from the current PID is taken across the wrap. A
    number within 16 after the PID sets bit ``distance - 1`` of the BLP;
    otherwise it starts a new pair.
    """
    pairs: list[tuple[int, int]] = []
    pid = -1
    blp = 0
    for number in sequence_numbers:
        number &= 0xFFFF
        if pid >= 0:
            distance = (number - pid - 1) & 0xFFFF
            if distance < 16:
                blp |= 1 << distance
                continue
            pairs.append((pid, blp))
        pid = number
        blp = 0
    if pid >= 0:
        pairs.append((pid, blp))
    return pairs


def build_nack(sender_ssrc: int, media_ssrc: int, sequence_numbers: Iterable[int]) -> bytes:
    """A generic NACK asking ``media_ssrc`` to resend ``sequence_numbers``.

    See :func:`nack_pairs` for the order the numbers must come in. An empty
    list is an error: a NACK must name at least one packet.
    """
    pairs = nack_pairs(sequence_numbers)
    if not pairs:
        raise ValueError("a NACK names at least one sequence number")
    payload = bytearray(struct.pack("!II", sender_ssrc, media_ssrc))
    for pid, blp in pairs:
        payload += struct.pack("!HH", pid, blp)
    return _packet(RTPFB, RTPFB_NACK, payload)


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """A PLI: ask the sender of ``media_ssrc`` for a keyframe (RFC 4585 §6.3.1)."""
    return _FEEDBACK.pack(0x80 | PSFB_PLI, PSFB, 2, sender_ssrc, media_ssrc)


def build_fir(sender_ssrc: int, entries: Sequence[tuple[int, int]]) -> bytes:
    """A FIR (RFC 5104 §4.3.1) with one ``(media ssrc, command sequence number)`` per target.

    The media SSRC field of the common header is 0, as RFC 5104 requires.
    The command sequence number is 8-bit (masked); a receiver treats a
    repeated number as a retransmission of the same request, so use
    :class:`FirSequence` to number them.
    """
    payload = bytearray(struct.pack("!II", sender_ssrc, 0))
    for ssrc, sequence in entries:
        payload += struct.pack("!IB3x", ssrc, sequence & 0xFF)
    return _packet(PSFB, PSFB_FIR, payload)


class FirSequence:
    """The FIR command sequence numbers of one sender, one counter per target SSRC."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next: dict[int, int] = {}

    def request(self, sender_ssrc: int, media_ssrc: int) -> bytes:
        """A FIR for ``media_ssrc`` with the target's next number (0, 1, ... wrapping at 256)."""
        sequence = self._next.get(media_ssrc, 0)
        self._next[media_ssrc] = (sequence + 1) & 0xFF
        return build_fir(sender_ssrc, [(media_ssrc, sequence)])


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    """A REMB: ``bitrate`` (bit/s) is what the streams ``ssrcs`` may use together.

    The bitrate is sent as an 18-bit mantissa and 6-bit exponent, rounded
    down (never above the estimate); at most 255 SSRCs.
    """
    if bitrate < 0 or len(ssrcs) > 255:
        raise ValueError("REMB needs a bitrate >= 0 and at most 255 SSRCs")
    exponent = max(bitrate.bit_length() - 18, 0)
    if exponent > 63:
        raise ValueError(f"REMB cannot carry a bitrate of {bitrate}")
    mantissa = bitrate >> exponent
    payload = bytearray(struct.pack("!II", sender_ssrc, 0))
    payload += b"REMB"
    payload += bytes((len(ssrcs), (exponent << 2) | (mantissa >> 16)))
    payload += (mantissa & 0xFFFF).to_bytes(2, "big")
    for ssrc in ssrcs:
        payload += ssrc.to_bytes(4, "big")
    return _packet(PSFB, PSFB_APPLICATION, payload)

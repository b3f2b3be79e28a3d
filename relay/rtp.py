"""RTP packets as bytes: read and rewrite headers without building objects.

The packet forwarder handles every RTP packet of every publisher once per
subscriber leg, so this module never builds a packet object: aiortc's
``RtpPacket.parse`` costs ~37 µs a packet, reading the fields here costs
about one. Functions take the decrypted packet (``bytes``, ``bytearray`` or
``memoryview``) and return plain ints; the ones that change a packet take a
``bytearray`` and change it in place when the size stays the same. A
function that may have to change the size (extension remapping, adding an
extension, RTX) returns the packet to use, which is the argument itself
whenever that was possible: always use the return value.

Wire formats: RFC 3550 (fixed header), RFC 8285 (one-byte ``0xBEDE`` and
two-byte ``0x100X`` header extensions), RFC 4588 (RTX),
draft-holmer-rmcat-transport-wide-cc-extensions-01 (transport-wide sequence
number), abs-send-time (webrtc.org) and RFC 6464 (client-to-mixer audio
level). Payload formats (keyframes) are in :mod:`relay.payload`.

Wrap-around: sequence numbers are 16-bit and timestamps 32-bit on the wire;
writers mask their argument (``& 0xFFFF``, ``& 0xFFFFFFFF``), so callers may
pass extended (unwrapped) values. :func:`sequence_delta` compares two
16-bit sequence numbers across the wrap.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import NamedTuple

RTP_VERSION = 2
FIXED_HEADER_LENGTH = 12
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE = 0x1000
"""RFC 8285 two-byte profile ``0x100X``: the low 4 bits ("appbits") are free."""
ONE_BYTE_MAX_ID = 14
"""Id 15 is reserved in the one-byte form (it stops parsing); 0 is padding."""
ONE_BYTE_MAX_LENGTH = 16

_SEQ_TS_SSRC = struct.Struct("!HII")
_FIXED = struct.Struct("!BBHII")


class MalformedPacket(ValueError):
    """An RTP or RTCP packet (or a payload in it) that does not parse.

    Raised on bad input from the network; the forwarder drops the packet.
    ``message`` says what is wrong and is safe to log (it holds no payload).
    """

    code = "malformed-packet"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RtpHeader(NamedTuple):
    """The fixed header of one RTP packet and where its parts are.

    Offsets index the packet given to :func:`parse_header`. When the packet
    has no header extension, ``extension_profile`` is 0 and
    ``extension_start == extension_end == csrc_end``.
    """

    marker: bool
    payload_type: int
    sequence_number: int
    """16-bit, as on the wire."""
    timestamp: int
    """32-bit, in the payload format's clock (e.g. 90 kHz video, 48 kHz Opus)."""
    ssrc: int
    csrc_end: int
    """Offset just past the CSRC list: where the extension block (if any) starts."""
    extension_profile: int
    extension_start: int
    """Offset of the first extension element (past the 4-byte profile and length)."""
    extension_end: int
    payload_start: int
    payload_end: int
    """Offset just past the payload: padding (if any) follows."""
    padding_length: int
    """Padding bytes at the end, the count byte included; 0 without padding."""


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """True when a datagram on a muxed RTP/RTCP port is RTCP (RFC 5761 §4).

    RTCP packet types 192–223 fall where an RTP packet would carry marker
    bit + payload types 64–95, which RFC 5761 keeps unused for that reason.
    """
    return len(data) >= 4 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


def parse_header(data: bytes | bytearray | memoryview) -> RtpHeader:
    """Read and check the header of an RTP packet.

    Checks the version, that the CSRC list, the extension block and the
    padding fit in the packet, and that the padding count is not zero.
    Raises :class:`MalformedPacket`.
    """
    size = len(data)
    if size < FIXED_HEADER_LENGTH:
        raise MalformedPacket(f"RTP packet of {size} bytes is shorter than its fixed header")
    first, second, seq, timestamp, ssrc = _FIXED.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise MalformedPacket(f"RTP version {first >> 6} is not 2")
    position = FIXED_HEADER_LENGTH + 4 * (first & 0x0F)
    csrc_end = position
    profile = 0
    ext_start = ext_end = position
    if first & 0x10:
        if size < position + 4:
            raise MalformedPacket("RTP header extension is truncated")
        profile = (data[position] << 8) | data[position + 1]
        ext_start = position + 4
        ext_end = ext_start + 4 * ((data[position + 2] << 8) | data[position + 3])
        position = ext_end
    if size < position:
        raise MalformedPacket("RTP header (CSRC list or extension) is truncated")
    padding = 0
    if first & 0x20:
        padding = data[size - 1]
        if padding == 0 or padding > size - position:
            raise MalformedPacket(f"RTP padding length {padding} is invalid")
    return RtpHeader(
        bool(second & 0x80),
        second & 0x7F,
        seq,
        timestamp,
        ssrc,
        csrc_end,
        profile,
        ext_start,
        ext_end,
        position,
        size - padding,
        padding,
    )


def payload_bounds(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(start, end)`` of the payload, without padding; raises MalformedPacket."""
    header = parse_header(data)
    return header.payload_start, header.payload_end


def is_padding_only(data: bytes | bytearray | memoryview) -> bool:
    """True when nothing is left of the payload once the padding is removed.

    Browsers send such packets to probe bandwidth (on the media SSRC or, as
    RTX, on the repair SSRC). They carry no media: the forwarder drops them
    (after recording their transport-wide sequence number, which the
    sender's estimator expects feedback for). Raises MalformedPacket.
    """
    header = parse_header(data)
    return header.payload_start == header.payload_end


def sequence_delta(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, in [-32768, 32767].

    Positive when ``a`` is newer than ``b`` across the wrap
    (``sequence_delta(1, 65535) == 2``).
    """
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def rewrite_header(
    packet: bytearray,
    ssrc: int,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    marker: bool | None = None,
) -> None:
    """Overwrite SSRC, payload type, sequence number and timestamp in place.

    ``sequence_number`` and ``timestamp`` may be extended values: they are
    masked to 16 and 32 bits. ``marker`` None keeps the packet's marker bit.
    The packet must have a 12-byte fixed header (checked by
    :func:`parse_header` beforehand).
    """
    second = packet[1]
    if marker is None:
        packet[1] = (second & 0x80) | (payload_type & 0x7F)
    else:
        packet[1] = (0x80 if marker else 0) | (payload_type & 0x7F)
    _SEQ_TS_SSRC.pack_into(
        packet, 2, sequence_number & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF
    )


# --- Header extensions (RFC 8285) ---------------------------------------------------


def _extension_block(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """``(profile, start, end)`` of the extension elements, or ``(0, 0, 0)``.

    Checks only what locating the block needs; raises MalformedPacket when
    it does not fit in the packet.
    """
    size = len(data)
    if size < FIXED_HEADER_LENGTH or not data[0] & 0x10:
        return 0, 0, 0
    position = FIXED_HEADER_LENGTH + 4 * (data[0] & 0x0F)
    if size < position + 4:
        raise MalformedPacket("RTP header extension is truncated")
    start = position + 4
    end = start + 4 * ((data[position + 2] << 8) | data[position + 3])
    if size < end:
        raise MalformedPacket("RTP header extension is truncated")
    return (data[position] << 8) | data[position + 1], start, end


def extension_elements(data: bytes | bytearray | memoryview) -> list[tuple[int, int, int]]:
    """Every header extension element as ``(id, value_start, value_end)``.

    Offsets index ``data``. One-byte form: padding bytes (0) are skipped and
    id 15 stops parsing (RFC 8285 §4.2). Two-byte form: a zero id byte is
    padding; values may be empty. Other profiles (not RFC 8285) yield no
    elements. Raises MalformedPacket when an element overruns the block.
    """
    return _walk_elements(data, 0)


def find_extension(data: bytes | bytearray | memoryview, ext_id: int) -> tuple[int, int] | None:
    """``(value_start, value_end)`` of the first element with ``ext_id``, or None.

    Stops at the element it looks for. Raises MalformedPacket.
    """
    elements = _walk_elements(data, ext_id)
    if elements and elements[-1][0] == ext_id:
        return elements[-1][1], elements[-1][2]
    return None


def _walk_elements(
    data: bytes | bytearray | memoryview, stop_at: int
) -> list[tuple[int, int, int]]:
    """The elements up to and including the first with id ``stop_at`` (0: all of them)."""
    profile, position, end = _extension_block(data)
    elements: list[tuple[int, int, int]] = []
    one_byte = profile == ONE_BYTE_PROFILE
    if not one_byte and profile & 0xFFF0 != TWO_BYTE_PROFILE:
        return elements
    while position < end:
        byte = data[position]
        if byte == 0:
            position += 1
            continue
        if one_byte:
            ext_id = byte >> 4
            if ext_id == 15:
                break
            start = position + 1
            value_end = start + 1 + (byte & 0x0F)
        else:
            ext_id = byte
            start = position + 2
            value_end = start + (data[position + 1] if start <= end else 0)
        if value_end > end:
            raise MalformedPacket(f"RTP header extension {ext_id} overruns its block")
        elements.append((ext_id, start, value_end))
        if ext_id == stop_at:
            break
        position = value_end
    return elements


class ExtensionIdMap:
    """Header-extension ids from one publisher's negotiation to one leg's.

    ``mapping`` is ``{publisher id: leg id}`` for the extensions the leg
    negotiated; any other id in a publisher's packet is dropped on the way
    to the leg. Built once per (publisher, leg) pair, used per packet by
    :func:`remap_extensions`.
    """

    __slots__ = ("table", "identity")

    def __init__(self, mapping: Mapping[int, int]) -> None:
        table = bytearray(256)  # 0: drop
        for source, target in mapping.items():
            if not (1 <= source <= 255 and 1 <= target <= 255):
                raise ValueError(f"header extension ids must be 1-255, got {source} -> {target}")
            table[source] = target
        self.table = bytes(table)
        """``table[publisher id]`` is the leg's id, 0 to drop the element."""
        self.identity = all(source == target for source, target in mapping.items())
        """Every kept id keeps its value (only dropping may be needed)."""


def remap_extensions(packet: bytearray, id_map: ExtensionIdMap) -> bytearray:
    """Rewrite the header-extension ids of ``packet`` for a leg.

    An element cannot be removed by zeroing its id (0 is padding, and 15 in
    the one-byte form stops parsing), so:

    * every id present maps to itself: ``packet`` is returned untouched;
    * every id present is kept and the new ids fit the block's form: the
      ids are rewritten in place and ``packet`` is returned;
    * otherwise (an element dropped, or a one-byte block needing an id above
      14) a new packet is built with a rebuilt block: one-byte form when
      every element fits it, else two-byte (which needs the leg to have
      negotiated ``extmap-allow-mixed``). With no element left the block and
      the X bit are removed.

    Raises MalformedPacket.
    """
    profile, position, end = _extension_block(packet)
    table = id_map.table
    id_positions = []
    rename = False
    if profile == ONE_BYTE_PROFILE:
        while position < end:
            byte = packet[position]
            if byte == 0:
                position += 1
                continue
            ext_id = byte >> 4
            if ext_id == 15:
                break
            target = table[ext_id]
            if target != ext_id:
                if target == 0 or target > ONE_BYTE_MAX_ID:
                    return _remapped_copy(packet, table)
                rename = True
            id_positions.append(position)
            position += 2 + (byte & 0x0F)
        if position > end:
            raise MalformedPacket("RTP header extension overruns its block")
        if rename:
            for position in id_positions:
                byte = packet[position]
                packet[position] = (table[byte >> 4] << 4) | (byte & 0x0F)
    elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while position < end:
            ext_id = packet[position]
            if ext_id == 0:
                position += 1
                continue
            target = table[ext_id]
            if target != ext_id:
                if target == 0:
                    return _remapped_copy(packet, table)
                rename = True
            id_positions.append(position)
            position += 2 + (packet[position + 1] if position + 1 < end else 0xFFFF)
        if position > end:
            raise MalformedPacket("RTP header extension overruns its block")
        if rename:
            for position in id_positions:
                packet[position] = table[packet[position]]
    return packet


def _remapped_copy(packet: bytearray, table: bytes) -> bytearray:
    """A copy of ``packet`` with its extension block rebuilt through ``table``."""
    kept = [(table[i], bytes(packet[s:e])) for i, s, e in _walk_elements(packet, 0) if table[i]]
    return _with_extensions(packet, kept)


def set_extension(packet: bytearray, ext_id: int, value: bytes) -> bytearray:
    """``packet`` carrying ``value`` under ``ext_id`` (added or replaced).

    Overwrites in place when the element is there with the same length;
    otherwise returns a new packet whose block holds the other elements and
    this one (one-byte form when all fit). Raises MalformedPacket, and
    ValueError for an id outside 1–255 or a value over 255 bytes.
    """
    if not 1 <= ext_id <= 255 or len(value) > 255:
        raise ValueError(f"cannot carry extension {ext_id} with {len(value)} bytes")
    parse_header(packet)
    found = find_extension(packet, ext_id)
    if found is not None and found[1] - found[0] == len(value):
        packet[found[0] : found[1]] = value
        return packet
    elements = [(i, bytes(packet[s:e])) for i, s, e in extension_elements(packet) if i != ext_id]
    elements.append((ext_id, bytes(value)))
    return _with_extensions(packet, elements)


def _with_extensions(packet: bytearray, elements: list[tuple[int, bytes]]) -> bytearray:
    """A copy of ``packet`` whose extension block holds ``elements`` (in order)."""
    csrc_end = FIXED_HEADER_LENGTH + 4 * (packet[0] & 0x0F)
    rest = _extension_block(packet)[2] if packet[0] & 0x10 else csrc_end
    out = bytearray(packet[:csrc_end])
    if not elements:
        out[0] &= ~0x10 & 0xFF
        out += memoryview(packet)[rest:]
        return out
    one_byte = True
    for ext_id, value in elements:
        if ext_id > ONE_BYTE_MAX_ID or not 1 <= len(value) <= ONE_BYTE_MAX_LENGTH:
            one_byte = False
            break
    out[0] |= 0x10
    out += b"\xbe\xde\x00\x00" if one_byte else b"\x10\x00\x00\x00"
    for ext_id, value in elements:
        if one_byte:
            out.append((ext_id << 4) | (len(value) - 1))
        else:
            out.append(ext_id)
            out.append(len(value))
        out += value
    out += bytes(-(len(out) - csrc_end) % 4)
    words = (len(out) - csrc_end - 4) // 4
    out[csrc_end + 2] = words >> 8
    out[csrc_end + 3] = words & 0xFF
    out += memoryview(packet)[rest:]
    return out


def _read_extension_int(data: bytes | bytearray | memoryview, ext_id: int, size: int) -> int | None:
    found = find_extension(data, ext_id)
    if found is None or found[1] - found[0] != size:
        return None
    return int.from_bytes(data[found[0] : found[1]], "big")


def _write_extension_int(packet: bytearray, ext_id: int, value: int, size: int) -> bool:
    found = find_extension(packet, ext_id)
    if found is None or found[1] - found[0] != size:
        return False
    packet[found[0] : found[1]] = value.to_bytes(size, "big")
    return True


def read_transport_sequence(data: bytes | bytearray | memoryview, ext_id: int) -> int | None:
    """The transport-wide sequence number (16-bit), or None when absent.

    draft-holmer-rmcat-transport-wide-cc-extensions-01: a 2-byte element,
    one counter per sender and transport (shared by every SSRC under BUNDLE).
    Raises MalformedPacket.
    """
    return _read_extension_int(data, ext_id, 2)


def write_transport_sequence(packet: bytearray, ext_id: int, sequence: int) -> bool:
    """Overwrite the transport-wide sequence number in place (masked to 16 bits).

    False when the packet has no 2-byte element with ``ext_id``: add one
    with :func:`set_extension` (``sequence.to_bytes(2, "big")``).
    """
    return _write_extension_int(packet, ext_id, sequence & 0xFFFF, 2)


def abs_send_time(now_us: int) -> int:
    """abs-send-time for a send time in µs: 24-bit, 6.18 fixed-point seconds.

    Wraps every 64 s; only differences between packets matter to the
    receiver's estimator, so any µs clock works (monotonic is best).
    """
    return ((now_us << 18) // 1_000_000) & 0xFFFFFF


def read_abs_send_time(data: bytes | bytearray | memoryview, ext_id: int) -> int | None:
    """The 24-bit abs-send-time value (1/262144 s units, wrapping every 64 s), or None."""
    return _read_extension_int(data, ext_id, 3)


def write_abs_send_time(packet: bytearray, ext_id: int, value: int) -> bool:
    """Overwrite abs-send-time in place (24 bits); False when the element is absent."""
    return _write_extension_int(packet, ext_id, value & 0xFFFFFF, 3)


def read_audio_level(data: bytes | bytearray | memoryview, ext_id: int) -> tuple[bool, int] | None:
    """``(voice_activity, level)`` from ssrc-audio-level (RFC 6464), or None.

    ``level`` is 0–127 in -dBov: 0 is the loudest, 127 silence. Some senders
    pad the one byte to more; only the first byte is read.
    """
    found = find_extension(data, ext_id)
    if found is None or found[1] == found[0]:
        return None
    byte = data[found[0]]
    return bool(byte & 0x80), byte & 0x7F


# --- RTX (RFC 4588) -------------------------------------------------------------------


def wrap_rtx(
    packet: bytes | bytearray | memoryview, payload_type: int, ssrc: int, sequence_number: int
) -> bytearray:
    """The RTX packet retransmitting ``packet`` (RFC 4588 §4).

    Same header (marker, timestamp, CSRCs, extensions) with the RTX payload
    type, SSRC and sequence number; the payload is prefixed with the
    original sequence number (OSN). The original's padding is not carried
    over. ``sequence_number`` is masked to 16 bits. Raises MalformedPacket.
    """
    header = parse_header(packet)
    out = bytearray(packet[: header.payload_start])
    out[0] &= ~0x20 & 0xFF
    out += header.sequence_number.to_bytes(2, "big")
    out += packet[header.payload_start : header.payload_end]
    rewrite_header(out, ssrc, payload_type, sequence_number, header.timestamp)
    return out


def unwrap_rtx(
    packet: bytes | bytearray | memoryview, payload_type: int, ssrc: int
) -> bytearray | None:
    """The original packet carried by an RTX packet, or None for a padding probe.

    The OSN becomes the sequence number, and ``payload_type``/``ssrc`` (the
    original stream's, from the ``apt`` pairing) replace the RTX ones. An
    RTX packet with less than the 2-byte OSN once padding is removed is a
    bandwidth probe carrying nothing: None. Raises MalformedPacket.
    """
    header = parse_header(packet)
    start = header.payload_start
    if header.payload_end - start < 2:
        return None
    osn = (packet[start] << 8) | packet[start + 1]
    out = bytearray(packet[:start])
    out[0] &= ~0x20 & 0xFF
    out += packet[start + 2 : header.payload_end]
    rewrite_header(out, ssrc, payload_type, osn, header.timestamp)
    return out

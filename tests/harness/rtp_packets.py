"""RTP packets built byte by byte, independently of ``relay.rtp``, for tests and benches.

The builder writes exactly what it is told (including blocks a sender
would not produce, such as padding bytes between extension elements), so a
test can check the relay's parser against a packet whose every byte it
chose.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence


def extension_block(
    elements: Sequence[tuple[int, bytes]], *, two_byte: bool = False, gap: int = 0
) -> tuple[int, bytes]:
    """``(profile, block)`` for RFC 8285 elements, padded to 32 bits.

    ``gap`` padding bytes (0) are put between elements, which receivers
    must skip.
    """
    block = bytearray()
    for index, (ext_id, value) in enumerate(elements):
        if index and gap:
            block += bytes(gap)
        if two_byte:
            block += bytes((ext_id, len(value))) + value
        else:
            assert 1 <= ext_id <= 14 and 1 <= len(value) <= 16
            block += bytes(((ext_id << 4) | (len(value) - 1),)) + value
    block += bytes(-len(block) % 4)
    return (0x1000 if two_byte else 0xBEDE), bytes(block)


def rtp_packet(
    *,
    payload_type: int = 96,
    sequence_number: int = 1000,
    timestamp: int = 90000,
    ssrc: int = 0x11223344,
    marker: bool = False,
    csrcs: Sequence[int] = (),
    extensions: Sequence[tuple[int, bytes]] = (),
    two_byte: bool = False,
    gap: int = 0,
    payload: bytes = b"\x90\x80\x00\x00payload",
    padding: int = 0,
) -> bytes:
    """One RTP packet; ``padding`` bytes (count byte included) end it when > 0."""
    first = 0x80 | len(csrcs)
    if padding:
        first |= 0x20
    block = b""
    if extensions:
        first |= 0x10
        profile, body = extension_block(extensions, two_byte=two_byte, gap=gap)
        block = struct.pack("!HH", profile, len(body) // 4) + body
    header = struct.pack(
        "!BBHII",
        first,
        (0x80 if marker else 0) | payload_type,
        sequence_number & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )
    header += b"".join(struct.pack("!I", csrc) for csrc in csrcs)
    tail = bytes(padding - 1) + bytes((padding,)) if padding else b""
    return header + block + payload + tail

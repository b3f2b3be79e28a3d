"""Transport-wide congestion control feedback: what arrived, and when.

A browser that negotiated ``transport-cc`` numbers every RTP packet it sends
on a transport with one counter (the transport-wide sequence number header
extension) and estimates its available bandwidth from the receiver's
reports of each packet's arrival time (draft-holmer-rmcat-transport-wide-
cc-extensions-01). The counter is per transport, not per stream: under
BUNDLE, audio and video share it, so :class:`TwccTracker` is **one per DTLS
transport**: a per-stream tracker would see the other stream's numbers as
gaps and report them lost.

Feedback format (RTPFB, FMT 15), where the draft is loose following
libwebrtc (whose encoder and parser Chromium uses):

* base sequence number, packet status count (16-bit each), reference time
  (24-bit, unsigned, in 64 ms units, wrapping every ~12.4 days), feedback
  packet count (8-bit, wrapping);
* packet chunks giving each packet's status: 0 not received, 1 received
  with a 1-byte delta (0–63.75 ms), 2 received with a 2-byte signed delta
  (large or negative), in run-length chunks (up to 8191 of one status),
  1-bit vectors (14 statuses 0/1) or 2-bit vectors (7 statuses), chosen
  greedily as libwebrtc does;
* receive deltas in 250 µs ticks, each from the previous received packet's
  reconstructed time (the first from the reference time), rounded to the
  nearest tick without accumulating error;
* padded to 32 bits with the RTCP P bit and a count in the last byte.

Times are integers in µs on any clock that does not jump (monotonic): only
differences reach the sender. Sequence numbers are 16-bit on the wire and
unwrapped here to unbounded integers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from relay.rtp import MalformedPacket

DELTA_TICK_US = 250
REFERENCE_TICK_US = 64_000
REFERENCE_WRAP = 1 << 24
NOT_RECEIVED = 0
SMALL_DELTA = 1
LARGE_DELTA = 2
MAX_RUN_LENGTH = 0x1FFF
ONE_BIT_CAPACITY = 14
TWO_BIT_CAPACITY = 7
MAX_STATUS_COUNT = 0xFFFF
HEADER_BYTES = 20
"""RTCP header (4), sender and media SSRC (8), base/count/reference/fb count (8)."""
DEFAULT_MAX_PACKET_BYTES = 1200
DEFAULT_HISTORY_US = 500_000
MAX_WINDOW = 0x4000
"""At most this many sequence numbers are reported at once: a larger jump
forward (a burst of loss this long is a broken sender) skips ahead."""
RESTART_AFTER = 8
"""Consecutive packets older than the kept history that mean the sender restarted its counter."""

_FEEDBACK_HEADER = struct.Struct("!BBHIIHHI")


@dataclass(slots=True)
class TransportFeedback:
    """One decoded transport-cc feedback packet."""

    sender_ssrc: int
    media_ssrc: int
    base_sequence: int
    """16-bit transport-wide sequence number of the first status."""
    reference_time: int
    """24-bit, in 64 ms units."""
    feedback_count: int
    """8-bit count of feedback packets, wrapping."""
    statuses: list[int]
    """One per sequence number from ``base_sequence``: NOT_RECEIVED, SMALL_DELTA or LARGE_DELTA."""
    deltas: list[int]
    """One per received packet, in 250 µs ticks (signed)."""

    def arrivals(self) -> list[tuple[int, int | None]]:
        """``(16-bit sequence number, arrival time in µs or None)`` per status.

        Arrival times count from the reference time's epoch
        (``reference_time * 64000``), as the sender reconstructs them.
        """
        out: list[tuple[int, int | None]] = []
        time_us = self.reference_time * REFERENCE_TICK_US
        deltas = iter(self.deltas)
        for index, status in enumerate(self.statuses):
            sequence = (self.base_sequence + index) & 0xFFFF
            if status == NOT_RECEIVED:
                out.append((sequence, None))
            else:
                time_us += next(deltas) * DELTA_TICK_US
                out.append((sequence, time_us))
        return out


def parse_transport_feedback(
    data: bytes | bytearray | memoryview, start: int, end: int
) -> TransportFeedback:
    """Decode the payload ``data[start:end]`` of an RTPFB FMT 15 packet.

    ``start``/``end`` exclude the 4-byte RTCP header and padding (as
    :func:`relay.rtcp.iter_packets` yields them). Raises MalformedPacket for
    an empty status list, chunks or deltas that overrun the packet, or the
    reserved status 3.
    """
    if end - start < 18:
        raise MalformedPacket("transport-cc feedback is truncated")
    sender, media, base, count, reference = struct.unpack_from("!IIHHI", data, start)
    if count == 0:
        raise MalformedPacket("transport-cc feedback reports no packet")
    statuses: list[int] = []
    position = start + 16
    while len(statuses) < count:
        if position + 2 > end:
            raise MalformedPacket("transport-cc packet chunks overrun the packet")
        chunk = (data[position] << 8) | data[position + 1]
        position += 2
        left = count - len(statuses)
        if not chunk & 0x8000:
            statuses.extend([(chunk >> 13) & 0x03] * min(chunk & MAX_RUN_LENGTH, left))
        elif not chunk & 0x4000:
            for bit in range(min(ONE_BIT_CAPACITY, left)):
                statuses.append((chunk >> (ONE_BIT_CAPACITY - 1 - bit)) & 0x01)
        else:
            for pair in range(min(TWO_BIT_CAPACITY, left)):
                statuses.append((chunk >> (2 * (TWO_BIT_CAPACITY - 1 - pair))) & 0x03)
    deltas: list[int] = []
    for status in statuses:
        if status == SMALL_DELTA:
            if position + 1 > end:
                raise MalformedPacket("transport-cc receive deltas overrun the packet")
            deltas.append(data[position])
            position += 1
        elif status == LARGE_DELTA:
            if position + 2 > end:
                raise MalformedPacket("transport-cc receive deltas overrun the packet")
            deltas.append(int.from_bytes(data[position : position + 2], "big", signed=True))
            position += 2
        elif status != NOT_RECEIVED:
            raise MalformedPacket("transport-cc status 3 is reserved")
    return TransportFeedback(
        sender, media, base, reference >> 8, reference & 0xFF, statuses, deltas
    )


class _StatusChunks:
    """Packet statuses packed into chunks, greedily (libwebrtc's choice).

    The open chunk takes statuses while some chunk kind can still hold them
    all: any 7 fit a 2-bit vector, 14 without a large delta a 1-bit vector,
    up to 8191 equal ones a run. When the next status fits no kind, the
    open chunk is closed as a run (all equal), a 1-bit vector (14), or a
    2-bit vector of its first 7, the rest staying open.
    """

    __slots__ = ("chunks", "symbols", "count", "all_same", "has_large")

    def __init__(self) -> None:
        self.chunks: list[int] = []
        self.symbols: list[int] = []
        """The open chunk's first statuses (at most 14 are needed)."""
        self.count = 0
        self.all_same = True
        self.has_large = False

    def _can_add(self, status: int) -> bool:
        count = self.count
        if count < TWO_BIT_CAPACITY:
            return True
        if count < ONE_BIT_CAPACITY and not self.has_large and status != LARGE_DELTA:
            return True
        return count < MAX_RUN_LENGTH and self.all_same and status == self.symbols[0]

    def _add(self, status: int) -> None:
        if self.count < ONE_BIT_CAPACITY:
            self.symbols.append(status)
        if status != self.symbols[0]:
            self.all_same = False
        if status == LARGE_DELTA:
            self.has_large = True
        self.count += 1

    def _reset(self, symbols: list[int]) -> None:
        self.symbols = []
        self.count = 0
        self.all_same = True
        self.has_large = False
        for status in symbols:
            self._add(status)

    def _close(self) -> None:
        if self.all_same:
            self.chunks.append((self.symbols[0] << 13) | self.count)
            self._reset([])
        elif self.count == ONE_BIT_CAPACITY and not self.has_large:
            self.chunks.append(_one_bit_chunk(self.symbols))
            self._reset([])
        else:
            self.chunks.append(_two_bit_chunk(self.symbols[:TWO_BIT_CAPACITY]))
            self._reset(self.symbols[TWO_BIT_CAPACITY : self.count])

    def add(self, status: int) -> None:
        if not self._can_add(status):
            self._close()
        self._add(status)

    def add_missing(self, count: int) -> None:
        """``count`` statuses NOT_RECEIVED, long runs as whole run-length chunks."""
        while count and self.count:
            if not self._can_add(NOT_RECEIVED):
                self._close()
                continue
            self._add(NOT_RECEIVED)
            count -= 1
        if count >= MAX_RUN_LENGTH:
            self.chunks.extend([MAX_RUN_LENGTH] * (count // MAX_RUN_LENGTH))
            count %= MAX_RUN_LENGTH
        if count:
            self.symbols = [NOT_RECEIVED] * min(count, ONE_BIT_CAPACITY)
            self.count = count

    def encoded(self) -> list[int]:
        """Every chunk, the open one closed in the smallest kind that holds it."""
        if not self.count:
            return self.chunks
        if self.all_same:
            last = (self.symbols[0] << 13) | self.count
        elif self.count <= TWO_BIT_CAPACITY:
            last = _two_bit_chunk(self.symbols)
        else:
            last = _one_bit_chunk(self.symbols)
        return [*self.chunks, last]

    def size(self) -> int:
        """Bytes the chunks take once encoded."""
        return 2 * (len(self.chunks) + (1 if self.count else 0))


def _one_bit_chunk(symbols: list[int]) -> int:
    chunk = 0x8000
    for index, status in enumerate(symbols):
        chunk |= status << (ONE_BIT_CAPACITY - 1 - index)
    return chunk


def _two_bit_chunk(symbols: list[int]) -> int:
    chunk = 0xC000
    for index, status in enumerate(symbols):
        chunk |= status << (2 * (TWO_BIT_CAPACITY - 1 - index))
    return chunk


class _FeedbackPacket:
    """One transport-cc packet being filled, in sequence order."""

    __slots__ = ("base", "next", "reference", "time_us", "chunks", "deltas", "max_bytes")

    def __init__(self, base: int, first_arrival_us: int, max_bytes: int) -> None:
        self.base = base
        """Extended sequence number of the first status (possibly a lost packet)."""
        self.next = base
        """Extended sequence number the next status is for."""
        self.reference = first_arrival_us // REFERENCE_TICK_US
        self.time_us = self.reference * REFERENCE_TICK_US
        """The sender's reconstruction of the last received packet's arrival."""
        self.chunks = _StatusChunks()
        self.deltas = bytearray()
        self.max_bytes = max_bytes

    def add(self, sequence: int, arrival_us: int) -> bool:
        """Report ``sequence`` received (and any before it since the last as lost).

        False, changing nothing, when the packet is full: its delta does not
        fit 16 bits, or the size or status count limit would be passed.
        """
        elapsed = arrival_us - self.time_us
        if elapsed >= 0:
            ticks = (elapsed + DELTA_TICK_US // 2) // DELTA_TICK_US
        else:
            ticks = -((DELTA_TICK_US // 2 - elapsed) // DELTA_TICK_US)
        if not -0x8000 <= ticks <= 0x7FFF:
            return False
        if sequence - self.base >= MAX_STATUS_COUNT:
            return False
        missing = sequence - self.next
        small = 0 <= ticks <= 0xFF
        # Bytes this may add, over-estimated: the delta, a chunk for this
        # status, runs for the missing ones and the one they may close.
        growth = (1 if small else 2) + 2 * (missing // MAX_RUN_LENGTH + 3)
        current = HEADER_BYTES + self.chunks.size() + len(self.deltas)
        if (current + growth + 3) & ~3 > self.max_bytes:
            return False
        if missing:
            self.chunks.add_missing(missing)
        if small:
            self.chunks.add(SMALL_DELTA)
            self.deltas.append(ticks)
        else:
            self.chunks.add(LARGE_DELTA)
            self.deltas += ticks.to_bytes(2, "big", signed=True)
        self.time_us += ticks * DELTA_TICK_US
        self.next = sequence + 1
        return True

    def build(self, sender_ssrc: int, media_ssrc: int, feedback_count: int) -> bytes:
        chunks = self.chunks.encoded()
        body = struct.pack(f"!{len(chunks)}H", *chunks) + self.deltas
        padding = -(HEADER_BYTES + len(body)) % 4
        header = _FEEDBACK_HEADER.pack(
            (0xA0 if padding else 0x80) | 15,
            205,
            (HEADER_BYTES - 4 + len(body) + padding) // 4,
            sender_ssrc,
            media_ssrc,
            self.base & 0xFFFF,
            self.next - self.base,
            ((self.reference % REFERENCE_WRAP) << 8) | (feedback_count & 0xFF),
        )
        if padding:
            return header + body + bytes(padding - 1) + bytes((padding,))
        return header + body


class TwccTracker:
    """Arrival times of one transport's packets, turned into transport-cc feedback.

    Call :meth:`record` for every RTP packet that arrives on the transport
    with a transport-wide sequence number (media, RTX and padding probes
    alike), and :meth:`feedback` every 50–100 ms.

    Each feedback reports every sequence number from where the previous one
    stopped to the highest received: the ones not (yet) received as lost. A
    late packet (reordered after its feedback went) moves the next
    feedback's start back to it, so it is reported received, with its
    neighbours again, as libwebrtc does; arrivals are kept ``history_us`` for
    that. Packets older than what is kept, and duplicates, are ignored.
    """

    __slots__ = (
        "_arrivals",
        "_highest",
        "_start",
        "_floor",
        "_pending",
        "_feedback_count",
        "_stale",
        "_max_packet_bytes",
        "_history_us",
    )

    def __init__(
        self,
        *,
        max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
        history_us: int = DEFAULT_HISTORY_US,
    ) -> None:
        if max_packet_bytes < 64:
            raise ValueError("transport-cc feedback packets need at least 64 bytes")
        self._arrivals: dict[int, int] = {}
        """Extended sequence number -> arrival time (µs)."""
        self._highest: int | None = None
        self._start = 0
        """First extended sequence number the next feedback reports."""
        self._floor = 0
        """Lowest extended sequence number still kept; older packets are ignored."""
        self._pending = False
        self._feedback_count = 0
        self._stale = 0
        self._max_packet_bytes = max_packet_bytes
        self._history_us = history_us

    def record(self, sequence: int, arrival_us: int) -> None:
        """One packet with transport-wide ``sequence`` (16-bit) arrived at ``arrival_us``.

        The number is unwrapped against the highest seen so far (a
        difference of less than 32768 either way). The first arrival of a
        number counts; duplicates are ignored.
        """
        highest = self._highest
        if highest is None:
            self._restart(sequence)
            highest = sequence
        extended = highest + ((sequence - highest + 0x8000) & 0xFFFF) - 0x8000
        if extended < self._floor:
            self._stale += 1
            if self._stale >= RESTART_AFTER:
                self._restart(sequence)
                extended = sequence
            else:
                return
        self._stale = 0
        arrivals = self._arrivals
        if extended in arrivals:
            return
        arrivals[extended] = arrival_us
        self._pending = True
        if extended > highest:
            self._highest = extended
            if extended - self._start > MAX_WINDOW:
                self._start = extended - MAX_WINDOW
        elif extended < self._start:
            self._start = extended

    def _restart(self, sequence: int) -> None:
        self._arrivals.clear()
        self._highest = sequence
        self._start = sequence
        self._floor = sequence - MAX_WINDOW
        self._stale = 0

    def feedback(self, now_us: int, sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        """Transport-cc packets for what arrived since the last call (none if nothing did).

        Each packet is at most ``max_packet_bytes``; a new one starts when
        that is reached or when a receive delta does not fit 16 bits (over
        8.19 s between two packets, or as far backwards). ``now_us`` (the
        arrival clock) ages the kept history. ``media_ssrc`` is what libwebrtc
        puts there too: any SSRC of the sender's; receivers ignore it.
        """
        packets: list[bytes] = []
        highest = self._highest
        if not self._pending or highest is None:
            self._forget(now_us)
            return packets
        arrivals = self._arrivals
        max_bytes = self._max_packet_bytes
        base = self._start
        current: _FeedbackPacket | None = None
        for sequence in range(base, highest + 1):
            arrival = arrivals.get(sequence)
            if arrival is None:
                continue
            if current is not None:
                if current.add(sequence, arrival):
                    continue
                packets.append(current.build(sender_ssrc, media_ssrc, self._feedback_count))
                self._feedback_count = (self._feedback_count + 1) & 0xFF
                base = current.next
            current = _FeedbackPacket(base, arrival, max_bytes)
            current.add(sequence, arrival)  # fits: a first delta is < 64 ms, a packet >= 64 bytes
        if current is not None:
            packets.append(current.build(sender_ssrc, media_ssrc, self._feedback_count))
            self._feedback_count = (self._feedback_count + 1) & 0xFF
        self._start = highest + 1
        self._pending = False
        self._forget(now_us)
        return packets

    def _forget(self, now_us: int) -> None:
        """Drop reported arrivals older than the history; raise the floor past them.

        The dict is in arrival order, which is sequence order but for
        reordering, so the oldest come first and the scan stops at the
        first one still needed; a straggler left behind goes on a later call.
        """
        oldest = now_us - self._history_us
        limit = self._start
        floor = max(self._floor, limit - MAX_WINDOW)
        arrivals = self._arrivals
        expired = []
        for sequence, arrival in arrivals.items():
            if sequence >= limit or (sequence >= floor and arrival >= oldest):
                break
            expired.append(sequence)
        for sequence in expired:
            del arrivals[sequence]
        if expired:
            floor = max(floor, max(expired) + 1)
        self._floor = floor

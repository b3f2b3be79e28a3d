"""A leg: one publisher track forwarded to one subscriber, packet by packet.

A leg is to the subscriber what the publisher's sender is to a direct call: it owns an
outgoing RTP stream with its own SSRC (the one the relay's SDP declares for the
subscriber's m-line), payload types and header-extension ids of the subscriber's
negotiation, and sequence numbers of its own. Every publisher packet is rewritten for it in
a fresh ``bytearray`` (never in the publisher's buffer, which other legs read too):

* **Sequence numbers** (:class:`SequenceMap`) start below 32768 and stay continuous across
  every packet the leg does not forward (padding-only probes, frames before a keyframe,
  a restriction, a pause), while a gap the publisher's own loss left stays a gap, so the
  subscriber's NACK for it can be answered once the relay has the packet.
* **Timestamps** keep the publisher's clock (its SRs then map them, see
  :meth:`Leg.sender_report`); a new publisher source (SSRC) is re-based to continue from
  the leg's last timestamp.
* **Video gating**: a video leg starts, resumes, and re-syncs only at the first packet of a
  keyframe (``relay.payload``), asking the publisher for one.
* **Retransmission**: what the leg sent is kept, already rewritten, in a
  :class:`~relay.retransmission.RetransmissionHistory`; a subscriber's NACK is answered
  from it, RTX-wrapped when the leg negotiated RTX.
* **Sender reports** carry the leg's true packet and octet counts.

Nothing here awaits: :meth:`Leg.forward` runs in the datagram callback of the publisher's
transport and ends with the protected packet handed to the subscriber's socket.
"""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING, Any

from relay.codec import NegotiatedCodec
from relay.congestion import LegSignals
from relay.retransmission import RetransmissionHistory
from relay.rtcp import ReportBlock
from relay.rtp import (
    ExtensionIdMap,
    RtpHeader,
    abs_send_time,
    remap_extensions,
    rewrite_header,
    set_extension,
    wrap_rtx,
    write_abs_send_time,
)
from relay.rtpstats import SendStats
from relay.stats import RelayStats

if TYPE_CHECKING:
    from relay.fastpath import MediaTransport
    from relay.uptrack import UpTrack

ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
NOT_FORWARDED_URIS = frozenset({MID_URI, TRANSPORT_CC_URI})
"""Extensions a leg never copies from the publisher: the MID names the publisher's m-line,
not the subscriber's (the relay's SDP declares each leg's SSRC, which receivers route by),
and the transport-wide sequence number counts the publisher's transport, not the relay's.
(abs-send-time is copied, then overwritten in place with the relay's own send time.)"""
HISTORY_PACKETS = 256
"""Packets a video leg keeps for NACKs: ~1.5 s at 1.5 Mbit/s, 0.6 s at 4 Mbit/s, longer
than a NACK takes to come back; each packet kept is ~1.2 kB of the relay's memory."""
MAX_JUMP = 3000
"""A publisher sequence number further ahead than this is a restart, not loss."""
OFFSET_CHANGES = 64
"""Sequence offsets remembered for late packets (a retransmission arriving after drops)."""


class SequenceMap:
    """Publisher sequence numbers → a leg's, continuous across what the leg drops.

    ``out = in + offset`` on extended (unwrapped) numbers. A packet the leg drops in order
    lowers the offset by one from the next number on, so what follows closes up behind it;
    a number the publisher skipped (lost upstream) keeps its place, so it can still be
    forwarded when it arrives late, with the offset that was in force at its place
    (remembered for the last :data:`OFFSET_CHANGES` changes). :meth:`restart` (a video
    gate opening) continues right after the last number forwarded, and forwards nothing
    older than the packet it restarts at.
    """

    __slots__ = ("_highest", "_offset", "_changes", "_floor", "_next_out")

    def __init__(self, first_out: int | None = None) -> None:
        self._highest: int | None = None
        """Extended publisher number of the newest packet seen (forwarded or dropped)."""
        self._offset = 0
        self._changes: deque[tuple[int, int]] = deque(maxlen=OFFSET_CHANGES)
        """(first extended publisher number, offset from there on), oldest first."""
        self._floor = 0
        self._next_out = random.randrange(0x8000) if first_out is None else first_out
        """The leg's next number if the next packet forwarded were in order (extended)."""

    @property
    def started(self) -> bool:
        return self._highest is not None

    @property
    def next_out(self) -> int:
        """The 16-bit number the next in-order packet will get."""
        return self._next_out & 0xFFFF

    def _extend(self, sequence_number: int) -> int:
        highest = self._highest
        assert highest is not None
        return highest + ((sequence_number - highest + 0x8000) & 0xFFFF) - 0x8000

    def restart(self, sequence_number: int) -> int:
        """Forward from this packet on, continuing the leg's numbering; its 16-bit number."""
        extended = sequence_number if self._highest is None else self._extend(sequence_number)
        self._highest = extended
        self._floor = extended
        self._offset = self._next_out - extended
        self._changes.clear()
        self._changes.append((extended, self._offset))
        self._next_out += 1
        return (extended + self._offset) & 0xFFFF

    def forward(self, sequence_number: int) -> int | None:
        """The leg's 16-bit number for this packet, or None if it must not be forwarded."""
        extended = self._extend(sequence_number)
        highest = self._highest
        assert highest is not None
        if extended > highest:
            if extended - highest > MAX_JUMP:
                return self.restart(sequence_number)
            self._highest = extended
            out = extended + self._offset
            self._next_out = out + 1
            return out & 0xFFFF
        if extended < self._floor:
            return None
        for start, offset in reversed(self._changes):
            if extended >= start:
                return (extended + offset) & 0xFFFF
        return None

    def drop(self, sequence_number: int) -> None:
        """This packet is not forwarded: close up behind it (in-order packets only)."""
        if self._highest is None:
            return
        extended = self._extend(sequence_number)
        if extended <= self._highest or extended - self._highest > MAX_JUMP:
            return
        self._highest = extended
        self._offset -= 1
        self._changes.append((extended + 1, self._offset))
        self._next_out = extended + 1 + self._offset


class Leg:
    """One publisher track (:class:`~relay.uptrack.UpTrack`) as sent to one subscriber.

    Created when the subscriber subscribes (``open`` says whether the subscriber accepts
    it now); live once the subscriber's answer is applied and aiortc would have started
    the m-line's sender (:meth:`start`). ``open`` is the subscriber-side gate the kill path
    and ``audio-only`` flip: checked per packet and per NACK, so that once it is False
    nothing more of the leg leaves the relay.
    """

    def __init__(
        self,
        uptrack: UpTrack,
        subscriber_id: str,
        stats: tuple[RelayStats, ...],
        *,
        open: bool,
    ) -> None:
        self.uptrack = uptrack
        self.kind = uptrack.kind
        self.publisher_id = uptrack.publisher_id
        self.subscriber_id = subscriber_id
        self.open = open
        self.closed = False
        self.waiting = self.kind == "video"
        """A video leg forwards nothing until a keyframe starts."""
        self.transport: MediaTransport | None = None
        self.ssrc = 0
        self.rtx_ssrc = 0
        self.payload_type = 0
        self.rtx_payload_type: int | None = None
        self.clock_rate = 90000 if self.kind == "video" else 48000
        self.cname = ""
        self.mid: str | None = None
        self.extensions: dict[str, int] = {}
        """The subscriber's negotiated header extensions: URI -> id."""
        self._id_map = ExtensionIdMap({})
        self._abs_send_time_id = 0
        self._sequence = SequenceMap()
        self._timestamp_offset = 0
        self._source: int | None = None
        """The publisher SSRC the leg forwards now."""
        self._rtx_sequence = random.randrange(0x8000)
        self.history: RetransmissionHistory | None = None
        """Created at :meth:`start` if the subscriber negotiated NACK for the leg."""
        self.sent = SendStats()
        self.signals = LegSignals()
        self._octets_at_report = 0
        self._stats = stats

    # --- life ------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self.transport is not None and not self.closed

    def start(self, parameters: Any, transport: MediaTransport, ssrcs: tuple[int, int]) -> None:
        """The subscriber's negotiation is applied: send with ``parameters``
        (aiortc's ``RTCRtpSendParameters`` of the m-line) on ``transport``."""
        if self.closed:
            return
        codec = NegotiatedCodec.of(parameters.codecs)
        if codec is None:
            return
        self.payload_type = codec.payload_type
        self.clock_rate = codec.clock_rate
        self.rtx_payload_type = codec.rtx_payload_type
        self.extensions = {e.uri: int(e.id) for e in parameters.headerExtensions}
        self._abs_send_time_id = self.extensions.get(ABS_SEND_TIME_URI, 0)
        self.cname = parameters.rtcp.cname or ""
        self.mid = parameters.muxId
        self.ssrc, self.rtx_ssrc = ssrcs
        if "nack" in codec.feedback and self.history is None:
            self.history = RetransmissionHistory(HISTORY_PACKETS)
        self.remap()
        if self.transport is None:
            self.transport = transport
            transport.add_leg(self)
            if self.open and self.waiting:
                self.uptrack.request_keyframe()

    def remap(self) -> None:
        """Build the publisher → leg extension-id map (both sides' negotiation known)."""
        publisher = self.uptrack.extensions
        self._id_map = ExtensionIdMap(
            {
                publisher[uri]: leg_id
                for uri, leg_id in self.extensions.items()
                if uri in publisher and uri not in NOT_FORWARDED_URIS
            }
        )

    def pause(self) -> None:
        """Forward and retransmit nothing (the subscriber side of ``audio-only``, the kill)."""
        self.open = False

    def resume(self) -> None:
        """Forward again; video from the next keyframe, asked for now."""
        if self.open or self.closed:
            return
        self.open = True
        self.resync()

    def resync(self) -> None:
        """Restart video at the next keyframe (the publisher's side reopened, or a new source)."""
        if self.kind == "video":
            self.waiting = True
            if self.live and self.open:
                self.uptrack.request_keyframe()

    def close(self) -> None:
        """Retire the leg for good: nothing more is sent; the subscriber is told (BYE)."""
        if self.closed:
            return
        self.closed = True
        self.open = False
        self.uptrack.remove_leg(self)
        if self.transport is not None:
            self.transport.remove_leg(self)

    # --- the hot path ------------------------------------------------------------

    def forward(
        self, packet: bytes | bytearray, header: RtpHeader, keyframe: bool, now_us: int
    ) -> None:
        """Send one publisher packet on the leg (or drop it, keeping the numbering whole)."""
        transport = self.transport
        if transport is None or not self.open:
            return
        sequence = self._sequence
        if header.ssrc != self._source:
            self._new_source(header, now_us)
        if self.waiting:
            if not keyframe:
                for stats in self._stats:
                    stats.packets_dropped += 1
                return
            self.waiting = False
            out = sequence.restart(header.sequence_number)
        elif not sequence.started:
            out = sequence.restart(header.sequence_number)
        else:
            found = sequence.forward(header.sequence_number)
            if found is None:
                return
            out = found
        timestamp = (header.timestamp + self._timestamp_offset) & 0xFFFFFFFF
        data = bytearray(packet)
        rewrite_header(data, self.ssrc, self.payload_type, out, timestamp)
        if header.extension_profile:
            data = remap_extensions(data, self._id_map)
        if self._abs_send_time_id:
            value = abs_send_time(now_us)
            if not write_abs_send_time(data, self._abs_send_time_id, value):
                data = set_extension(data, self._abs_send_time_id, value.to_bytes(3, "big"))
        sent = bytes(data)
        if self.history is not None:
            self.history.store(out, sent, now_us)
        payload = header.payload_end - header.payload_start
        self.sent.on_packet(payload, timestamp, now_us)
        for stats in self._stats:
            stats.packets_forwarded += 1
            stats.bytes_forwarded += len(sent)
        transport.send_rtp(sent)

    def skip(self, sequence_number: int) -> None:
        """A publisher packet the leg will not carry (padding only): close up behind it."""
        if self.open and not self.waiting:
            self._sequence.drop(sequence_number)

    def _new_source(self, header: RtpHeader, now_us: int) -> None:
        """The publisher's packets come from another SSRC: continue the leg's timestamps
        from where they were, and (video) wait for that source's keyframe."""
        if self._source is not None and self.sent.last_timestamp is not None:
            elapsed = (now_us - self.sent.last_sent_us) * self.clock_rate // 1_000_000
            self._timestamp_offset = (
                self.sent.last_timestamp + max(elapsed, 1) - header.timestamp
            ) & 0xFFFFFFFF
            if self.kind == "video" and not self.waiting:
                self.resync()
        self._source = header.ssrc

    # --- feedback from the subscriber ---------------------------------------------

    def on_nack(self, lost: list[int], now_us: int) -> None:
        """Resend what the subscriber lost, from the history (as RTX when negotiated)."""
        transport, history = self.transport, self.history
        if transport is None or not self.open or history is None:
            return
        for sequence_number in lost:
            packet = history.get(sequence_number, now_us)
            if packet is None:
                for stats in self._stats:
                    stats.nacks_unanswered += 1
                continue
            if self.rtx_payload_type is not None:
                packet = bytes(
                    wrap_rtx(packet, self.rtx_payload_type, self.rtx_ssrc, self._rtx_sequence)
                )
                self._rtx_sequence += 1
            for stats in self._stats:
                stats.packets_retransmitted += 1
            transport.send_rtp(packet)

    def on_keyframe_request(self) -> None:
        """The subscriber's PLI or FIR: only the publisher can make a keyframe."""
        if self.open and not self.closed:
            self.uptrack.request_keyframe(asked_by_subscriber=True)

    def on_report(self, block: ReportBlock, now_us: int) -> None:
        """A receiver report block about the leg (loss; the RTT is the transport's)."""
        self.signals.fraction_lost = block.fraction_lost / 256
        self.signals.lost_at_us = now_us

    # --- reports ---------------------------------------------------------------------

    def measure(self, elapsed_us: int) -> None:
        """Update the leg's sending rate over the last ``elapsed_us``."""
        octets = self.sent.octets
        if elapsed_us > 0:
            self.signals.rate_bps = (octets - self._octets_at_report) * 8_000_000 // elapsed_us
        self._octets_at_report = octets

    def sender_report(self, now_us: int, ntp: int) -> bytes | None:
        """The leg's SR for NTP time ``ntp`` (our wall clock), None before it sent anything.

        The RTP timestamp is the publisher's own mapping of ``ntp`` (from its SRs, on the
        publisher's clock offset shared by its audio and video, so the subscriber keeps
        lip sync) plus the leg's offset; before the publisher's first SR, it is
        extrapolated from the last packet sent.
        """
        if self.sent.packets == 0 or not self.open:
            return None
        mapped = self.uptrack.rtp_timestamp_at(ntp)
        if mapped is None:
            rtp = self.sent.rtp_timestamp_at(now_us, self.clock_rate)
            if rtp is None:
                return None
        else:
            rtp = (mapped + self._timestamp_offset) & 0xFFFFFFFF
        return self.sent.sender_report(self.ssrc, ntp, rtp)

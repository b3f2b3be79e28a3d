"""An up-track: one track a participant publishes to the relay, and its fan-out.

The relay is the publisher's receiver. Per packet, in the datagram callback of the
publisher's transport (``relay.fastpath``), an up-track:

* unwraps the publisher's RTX into the original sequence space (a padding-only RTX probe
  carries nothing and ends there) and forwards a retransmission only if the relay does not
  have that packet yet: Chromium also probes bandwidth by resending packets as RTX, which
  may come before the original (lost on the way) was even missed, and must then be
  forwarded as the original;
* counts it for the receiver reports the relay sends the publisher and NACKs what the
  relay itself lost (``relay.retransmission.NackGenerator``): a packet lost upstream is
  lost for every subscriber, so it is asked for once, here;
* drops padding-only packets (each leg closes up its numbering behind them);
* recognises keyframes from the VP8/H264 payload (``relay.payload``), so that legs waiting
  for one can start;
* hands the plaintext packet to the recording taps, if any, and to every leg.

``active`` is the publisher-side gate (the kill path, ``audio-only``): checked per packet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay.codec import NegotiatedCodec
from relay.keyframe import KeyframeRequester
from relay.ntp import ntp_from_unix_ns, rtp_timestamp_at
from relay.payload import h264_is_keyframe, vp8_is_keyframe
from relay.retransmission import NackGenerator
from relay.rtp import MalformedPacket, parse_header, sequence_delta, unwrap_rtx
from relay.rtpstats import ReceiveStats
from relay.stats import RelayStats

if TYPE_CHECKING:
    from relay.fastpath import MediaTransport
    from relay.leg import Leg

Tap = Callable[[bytes | bytearray, int], None]
"""``tap(packet, arrival_us)``, :class:`relay.recorder.TrackTap`'s protocol: every RTP
packet of the track the relay forwards (plaintext, RTX unwrapped, padding-only ones too,
duplicates not; nothing while the track is gated off), as the publisher sent it, with its
arrival time in µs on ``time.monotonic_ns() // 1000``; and, if the tap has a
``sender_report(ssrc, ntp_timestamp, rtp_timestamp, arrival_us)`` method, the
publisher's sender reports about the track (for aligning audio and video). On the event
loop: a tap must return at once (a recorder queues for its writer thread)."""

SEEN_MASK = 1023
_NTP_HALF = 1 << 63
_NTP_WRAP = 1 << 64


class PublisherClock:
    """The offset from a publisher's NTP clock (its SRs) to the relay's wall clock.

    Its audio and video legs must map RTP to NTP on one timeline, or subscribers lose
    lip sync: so the offset is one per publisher, from the SRs of all its tracks, taken
    as the largest ``sender NTP − arrival NTP`` seen (the SR that waited least in
    transit).
    """

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset: int | None = None
        """NTP units (2^-32 s), signed; None before the first SR."""

    def observe(self, sender_ntp: int, arrival_ntp: int) -> None:
        difference = (sender_ntp - arrival_ntp) % _NTP_WRAP
        if difference >= _NTP_HALF:
            difference -= _NTP_WRAP
        if self.offset is None or difference > self.offset:
            self.offset = difference

    def sender_ntp(self, local_ntp: int) -> int | None:
        """``local_ntp`` on the publisher's clock, None before the first SR."""
        if self.offset is None:
            return None
        return (local_ntp + self.offset) % _NTP_WRAP


class UpTrack:
    """One published audio or video track and the legs it is forwarded on."""

    def __init__(
        self,
        kind: str,
        publisher_id: str,
        codec_name: str,
        clock: PublisherClock,
        stats: tuple[RelayStats, ...],
    ) -> None:
        self.kind = kind
        self.publisher_id = publisher_id
        self.active = True
        self.legs: list[Leg] = []
        self.transport: MediaTransport | None = None
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.payload_type: int | None = None
        self.rtx_payload_type: int | None = None
        self.clock_rate = 90000 if kind == "video" else 48000
        self.extensions: dict[str, int] = {}
        """The publisher's negotiated header extensions: URI -> id."""
        self.feedback: set[str] = set()
        """The rtcp-fb types negotiated for the codec (``nack``, ``nack pli``, ``transport-cc``...)."""
        self.receive: ReceiveStats | None = None
        self.nacks: NackGenerator | None = None
        self.clock = clock
        self._sender_report: tuple[int, int] | None = None
        """(NTP, RTP) of the publisher's last SR about this track."""
        self._keyframe_of: Callable[[Any, int, int], bool] | None = None
        if kind == "video":
            self._keyframe_of = h264_is_keyframe if codec_name == "H264" else vp8_is_keyframe
        self._keyframes = KeyframeRequester(self._send_keyframe_request, self._keyframe_needed)
        self._keyframe_asked = False
        """A subscriber's decoder asked (PLI/FIR) and no keyframe came since."""
        self._next_sequence = -1
        self._seen = [-1] * (SEEN_MASK + 1)
        """The sequence number last received in each slot (``seq & SEEN_MASK``): a packet
        already received (a probe resending it, a duplicate) is not forwarded twice."""
        self._taps: list[Tap] = []
        self._octets = 0
        self._octets_at_report = 0
        self.rate_bps = 0
        self._stats = stats

    # --- configuration -----------------------------------------------------------

    def configure(self, parameters: Any) -> None:
        """Apply the negotiated receive parameters (aiortc's ``RTCRtpReceiveParameters``):
        payload types, RTX pairing, header-extension ids, the SSRCs the SDP declares."""
        codec = NegotiatedCodec.of(parameters.codecs)
        if codec is None:
            return
        self.payload_type = codec.payload_type
        self.clock_rate = codec.clock_rate
        self.feedback = set(codec.feedback)
        self.rtx_payload_type = codec.rtx_payload_type
        self.extensions = {e.uri: int(e.id) for e in parameters.headerExtensions}
        for encoding in parameters.encodings:
            if encoding.ssrc:
                self.ssrc = int(encoding.ssrc)
            if encoding.rtx is not None and encoding.rtx.ssrc:
                self.rtx_ssrc = int(encoding.rtx.ssrc)
        if self.kind == "video" and "nack" in self.feedback and self.nacks is None:
            self.nacks = NackGenerator()
        for leg in self.legs:
            leg.remap()

    def adopt_source(self, ssrc: int) -> None:
        """The publisher sends the track's media from ``ssrc`` (learnt from a packet)."""
        if ssrc != self.ssrc:
            self.ssrc = ssrc
            self.receive = None
            self._next_sequence = -1
            self._seen = [-1] * (SEEN_MASK + 1)

    @property
    def transport_cc(self) -> bool:
        """The publisher numbers its packets for transport-cc feedback."""
        return "transport-cc" in self.feedback

    # --- the hot path --------------------------------------------------------------

    def on_rtp(self, packet: bytes | bytearray, now_us: int) -> None:
        """One media packet from the publisher (plaintext)."""
        try:
            header = parse_header(packet)
        except MalformedPacket:
            return
        if header.payload_type != self.payload_type:
            return
        self._on_media(packet, header, now_us, False)

    def on_rtx(self, packet: bytes | bytearray, now_us: int) -> None:
        """One RTX packet from the publisher: a retransmission or a padding probe."""
        ssrc, payload_type = self.ssrc, self.payload_type
        if ssrc is None or payload_type is None:
            return
        for stats in self._stats:
            stats.packets_received += 1
            stats.bytes_received += len(packet)
        try:
            original = unwrap_rtx(packet, payload_type, ssrc)
            if original is None:
                return
            header = parse_header(original)
        except MalformedPacket:
            return
        self._on_media(original, header, now_us, True)

    def _on_media(
        self, packet: bytes | bytearray, header: Any, now_us: int, retransmission: bool
    ) -> None:
        if not retransmission:
            for stats in self._stats:
                stats.packets_received += 1
                stats.bytes_received += len(packet)
        sequence = header.sequence_number
        seen = self._seen
        slot = sequence & SEEN_MASK
        if seen[slot] == sequence:
            return  # had it already: Chromium's probes resend old packets as RTX
        seen[slot] = sequence
        receive = self.receive
        if receive is None:
            receive = self.receive = ReceiveStats(header.ssrc, self.clock_rate)
        receive.on_packet(sequence, header.timestamp, now_us, retransmission=retransmission)
        nacks = self.nacks
        if nacks is not None:
            nacks.on_packet(sequence, now_us)
            expected = self._next_sequence
            if sequence != expected and self.transport is not None:
                self.transport.watch_losses(self)
            if expected < 0 or sequence_delta(sequence, expected) >= 0:
                self._next_sequence = (sequence + 1) & 0xFFFF
        if not self.active:
            return
        self._octets += len(packet)
        if self._taps:
            for tap in self._taps:
                tap(packet, now_us)
        start, end = header.payload_start, header.payload_end
        if start == end:
            for leg in self.legs:
                leg.skip(sequence)
            return
        keyframe = False
        keyframe_of = self._keyframe_of
        if keyframe_of is not None:
            try:
                keyframe = keyframe_of(packet, start, end)
            except MalformedPacket:
                return
            if keyframe:
                self._keyframe_asked = False
        for leg in self.legs:
            leg.forward(packet, header, keyframe, now_us)

    # --- the gate and the legs -----------------------------------------------------

    def set_active(self, active: bool) -> None:
        """Open or close the publisher-side gate; reopening restarts video legs at a keyframe."""
        if active == self.active:
            return
        self.active = active
        if active:
            for leg in self.legs:
                leg.resync()
        else:
            self._keyframes.cancel()

    def add_leg(self, leg: Leg) -> None:
        self.legs.append(leg)

    def remove_leg(self, leg: Leg) -> None:
        if leg in self.legs:
            self.legs.remove(leg)

    def add_tap(self, tap: Tap) -> Callable[[], None]:
        """Also hand every packet of this track to ``tap`` (see :data:`Tap`); returns the
        function that removes it. Costs nothing per packet while no tap is installed.

        For a recording: ``recorder.track(participant, uptrack.kind, codec,
        uptrack.clock_rate, uptrack.payload_type)`` gives the tap (the payload type is the
        publisher's, known once its m-line is negotiated).
        """
        self._taps.append(tap)

        def remove() -> None:
            if tap in self._taps:
                self._taps.remove(tap)

        return remove

    # --- keyframes -----------------------------------------------------------------------

    def request_keyframe(self, *, asked_by_subscriber: bool = False) -> None:
        """Ask the publisher for a keyframe (rate-limited; video only).

        ``asked_by_subscriber``: a subscriber's PLI/FIR, which only a keyframe satisfies
        (the relay cannot see the decoder's state).
        """
        if self.active and self.kind == "video":
            if asked_by_subscriber:
                self._keyframe_asked = True
            self._keyframes.request()

    def _keyframe_needed(self) -> bool:
        return self.active and (
            self._keyframe_asked or any(leg.waiting and leg.open for leg in self.legs)
        )

    def _send_keyframe_request(self) -> None:
        transport = self.transport
        if transport is None or self.ssrc is None or not self.active:
            return
        if transport.request_keyframe(self.ssrc, "nack pli" in self.feedback or not self.feedback):
            for stats in self._stats:
                stats.keyframe_requests_forwarded += 1

    def close(self) -> None:
        self.set_active(False)
        self._keyframes.cancel()

    # --- reports and timing --------------------------------------------------------------

    def on_sender_report(self, ntp: int, rtp: int, arrival_ntp: int, arrival_us: int) -> None:
        self._sender_report = (ntp, rtp)
        for tap in self._taps:
            report = getattr(tap, "sender_report", None)
            if report is not None and self.ssrc is not None:
                report(self.ssrc, ntp, rtp, arrival_us)
        self.clock.observe(ntp, arrival_ntp)
        if self.receive is not None:
            self.receive.on_sender_report(ntp, arrival_us)

    def rtp_timestamp_at(self, local_ntp: int) -> int | None:
        """The publisher's RTP timestamp at our wall-clock NTP time, from its last SR."""
        report = self._sender_report
        if report is None:
            return None
        sender_ntp = self.clock.sender_ntp(local_ntp)
        if sender_ntp is None:
            return None
        return rtp_timestamp_at(report[0], report[1], self.clock_rate, sender_ntp)

    def measure(self, elapsed_us: int) -> None:
        """Update :attr:`rate_bps` (what the publisher sends on this track)."""
        if elapsed_us > 0:
            self.rate_bps = (self._octets - self._octets_at_report) * 8_000_000 // elapsed_us
        self._octets_at_report = self._octets

    @staticmethod
    def now_ntp() -> int:
        return ntp_from_unix_ns(time.time_ns())

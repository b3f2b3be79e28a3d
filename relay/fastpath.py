"""The packet fast path of one DTLS transport: SRTP in, routed, rewritten, SRTP out.

aiortc negotiates the transport (ICE, the DTLS handshake, the SRTP keys); once it is
connected, :class:`MediaTransport` takes its datagrams below aioice's queue
(:class:`relay.aiortc_internals.DatagramPath`) and does everything synchronously in the
socket's readiness callback: unprotect, route by SSRC to the publisher's
:class:`~relay.uptrack.UpTrack` (which fans out to each subscriber's
:class:`~relay.leg.Leg`, whose packets are protected with the subscriber transport's
session and ``sendto``-d on its nominated pair), or parse RTCP and hand each part to the
leg or up-track it is about. No task wake-up, no ``RtpPacket``, no await per packet.

One transport carries both directions of a participant (BUNDLE): it is the publisher side
of what the participant sends (up-tracks) and the subscriber side of what it receives
(legs). What it sends on its own, from one loop timer:

* **transport-cc feedback** every :data:`FEEDBACK_INTERVAL` while the publisher numbers its
  packets (one :class:`~relay.twcc.TwccTracker` per transport: under BUNDLE audio and video
  share the transport-wide counter, so a per-track tracker would report the other track's
  packets lost), which is what lets a browser publisher ramp up and probe as in a direct call;
* about every second, a receiver report about the publisher's tracks with the REMB cap of
  ``relay.congestion``, and a sender report per leg;
* NACKs for the relay's own losses when they fall due (a timer only while packets are missing);
* keyframe requests (PLI, or FIR where only that was negotiated) on behalf of the legs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from typing import TYPE_CHECKING

import pylibsrtp

from relay.aiortc_internals import DatagramPath
from relay.congestion import SubscriberSignals, publisher_remb
from relay.ntp import ntp_from_unix_ns, round_trip_us
from relay.rtcp import (
    FirSequence,
    FullIntraRequest,
    Nack,
    PictureLoss,
    ReceiverReport,
    Remb,
    SenderReport,
    build_bye,
    build_nack,
    build_pli,
    build_receiver_report,
    build_remb,
    build_sdes_cname,
    parse_compound,
)
from relay.rtp import MalformedPacket, read_transport_sequence
from relay.stats import RelayStats
from relay.twcc import TwccTracker

if TYPE_CHECKING:
    from relay.leg import Leg
    from relay.uptrack import UpTrack

logger = logging.getLogger(__name__)

TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
FEEDBACK_INTERVAL = 0.05
"""Seconds between transport-cc feedback packets (libwebrtc sends them every 50–100 ms)."""
REPORT_INTERVAL = 1.0
"""Mean seconds between RTCP reports (randomised ±25 %, RFC 3550 §6.2)."""
DEFAULT_RTT_US = 50_000
MAX_REPORT_BLOCKS = 31
_SSRC = struct.Struct("!I")
SrtpError = pylibsrtp.Error


class MediaTransport:
    """SRTP packets of one participant's DTLS transport, both directions."""

    def __init__(
        self,
        path: DatagramPath,
        peer_id: str,
        stats: tuple[RelayStats, ...],
        *,
        rtcp_ssrc: int,
        cname: str,
    ) -> None:
        self.peer_id = peer_id
        self._path = path
        self._rx = path.rx
        self._tx = path.tx
        self._stats = stats
        self.rtcp_ssrc = rtcp_ssrc
        """The SSRC the relay's own RTCP on this transport is sent from."""
        self.cname = cname
        self.receiving = True
        """Publisher-side gate: False drops everything the participant sends."""
        self.sending = True
        """Subscriber-side gate: False sends the participant nothing more."""
        self.closed = False
        self.uptracks: list[UpTrack] = []
        self.legs: list[Leg] = []
        self._routes: dict[int, object] = {}
        """Publisher SSRC -> the up-track method that takes its packets."""
        self._payload_types: dict[int, tuple[UpTrack, bool]] = {}
        """Payload type -> (up-track, is RTX), to learn SSRCs the SDP did not declare."""
        self._legs_by_ssrc: dict[int, Leg] = {}
        self._twcc_id = 0
        self._twcc = TwccTracker()
        self.subscriber = SubscriberSignals()
        self.rtt_us = DEFAULT_RTT_US
        self._fir = FirSequence()
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._next_report = 0.0
        self._last_report_us = time.monotonic_ns() // 1000
        self._nack_timer: asyncio.TimerHandle | None = None
        self._nack_due = 0.0
        self._given_up: dict[int, int] = {}
        self.srtp_failures = 0

    # --- wiring ------------------------------------------------------------------

    def start(self, *, drain: bool = True) -> None:
        """Take the transport's SRTP datagrams from now on (DTLS must be connected)."""
        self._path.intercept(self.on_datagram, drain=drain)
        self._schedule()

    def add_uptrack(self, uptrack: UpTrack) -> None:
        """Route ``uptrack``'s SSRCs (as far as its SDP declared them) and payload types."""
        if uptrack not in self.uptracks:
            self.uptracks.append(uptrack)
        uptrack.transport = self
        if uptrack.ssrc is not None:
            self._routes[uptrack.ssrc] = uptrack.on_rtp
        if uptrack.rtx_ssrc is not None:
            self._routes[uptrack.rtx_ssrc] = uptrack.on_rtx
        if uptrack.payload_type is not None:
            self._payload_types[uptrack.payload_type] = (uptrack, False)
        if uptrack.rtx_payload_type is not None:
            self._payload_types[uptrack.rtx_payload_type] = (uptrack, True)
        twcc_id = uptrack.extensions.get(TRANSPORT_CC_URI, 0)
        if twcc_id and uptrack.transport_cc:
            self._twcc_id = twcc_id
        self._schedule()

    def add_leg(self, leg: Leg) -> None:
        if leg not in self.legs:
            self.legs.append(leg)
        self._legs_by_ssrc[leg.ssrc] = leg
        if leg.rtx_ssrc:
            self._legs_by_ssrc[leg.rtx_ssrc] = leg
        self._schedule()

    def remove_leg(self, leg: Leg) -> None:
        """Forget ``leg`` and tell the subscriber its stream ended (RTCP BYE)."""
        if leg in self.legs:
            self.legs.remove(leg)
        for ssrc in (leg.ssrc, leg.rtx_ssrc):
            if self._legs_by_ssrc.get(ssrc) is leg:
                del self._legs_by_ssrc[ssrc]
        if leg.ssrc and self.sending and not self.closed:
            self.send_rtcp(build_bye([leg.ssrc]))

    def stop(self) -> None:
        """The kill: nothing more is taken from or sent to the participant (synchronous)."""
        self.receiving = False
        self.sending = False
        self._cancel_timers()

    def close(self) -> None:
        """The DTLS transport is gone: stop and give the sockets back."""
        if self.closed:
            return
        self.stop()
        self.closed = True
        self._path.release()

    # --- the hot path ------------------------------------------------------------

    def on_datagram(self, datagram: bytes, arrival_us: int) -> None:
        """One SRTP or SRTCP datagram from the participant, received at ``arrival_us``
        (monotonic µs: the kernel's stamp where there is one, see DatagramPath)."""
        if not self.receiving:
            return
        if 191 < datagram[1] < 224:  # RTCP packet types 192-223 (RFC 5761)
            try:
                plain = self._rx.unprotect_rtcp(datagram)
            except (SrtpError, ValueError):
                self.srtp_failures += 1
                return
            self._on_rtcp(plain)
            return
        try:
            plain = self._rx.unprotect(datagram)
        except (SrtpError, ValueError):
            self.srtp_failures += 1
            return
        if len(plain) < 12:
            return
        now_us = arrival_us
        twcc_id = self._twcc_id
        if twcc_id:
            try:
                sequence = read_transport_sequence(plain, twcc_id)
            except MalformedPacket:
                return
            if sequence is not None:
                self._twcc.record(sequence, now_us)
        route = self._routes.get(_SSRC.unpack_from(plain, 8)[0])
        if route is None:
            route = self._learn(plain)
            if route is None:
                return
        route(plain, now_us)  # type: ignore[operator]

    def _learn(self, plain: bytes) -> object | None:
        """An SSRC the SDP did not declare: route it by payload type, as aiortc does."""
        found = self._payload_types.get(plain[1] & 0x7F)
        if found is None:
            return None
        uptrack, rtx = found
        ssrc = _SSRC.unpack_from(plain, 8)[0]
        if rtx:
            if uptrack.rtx_ssrc is not None:
                self._routes.pop(uptrack.rtx_ssrc, None)
            uptrack.rtx_ssrc = ssrc
            route: object = uptrack.on_rtx
        else:
            if uptrack.ssrc is not None:
                self._routes.pop(uptrack.ssrc, None)
            uptrack.adopt_source(ssrc)
            route = uptrack.on_rtp
        self._routes[ssrc] = route
        return route

    def send_rtp(self, packet: bytes) -> None:
        """Protect and send one RTP packet to the participant."""
        if not self.sending:
            return
        try:
            self._path.send(self._tx.protect(packet))
        except (SrtpError, ValueError):
            self.srtp_failures += 1

    def send_rtcp(self, packet: bytes) -> None:
        """Protect and send one (compound) RTCP packet to the participant."""
        if not self.sending:
            return
        try:
            self._path.send(self._tx.protect_rtcp(packet))
        except (SrtpError, ValueError):
            self.srtp_failures += 1

    # --- RTCP from the participant -------------------------------------------------

    def _on_rtcp(self, plain: bytes) -> None:
        try:
            parts = parse_compound(plain)
        except MalformedPacket:
            return
        now_us = time.monotonic_ns() // 1000
        for part in parts:
            if isinstance(part, SenderReport):
                self._on_sender_report(part, now_us)
                self._on_report_blocks(part.reports, now_us)
            elif isinstance(part, ReceiverReport):
                self._on_report_blocks(part.reports, now_us)
            elif isinstance(part, Nack):
                leg = self._legs_by_ssrc.get(part.media_ssrc)
                if leg is not None:
                    leg.on_nack(part.lost, now_us)
            elif isinstance(part, PictureLoss):
                leg = self._legs_by_ssrc.get(part.media_ssrc)
                if leg is not None:
                    leg.on_keyframe_request()
            elif isinstance(part, FullIntraRequest):
                for ssrc, _sequence in part.entries:
                    leg = self._legs_by_ssrc.get(ssrc)
                    if leg is not None:
                        leg.on_keyframe_request()
            elif isinstance(part, Remb):
                self.subscriber.on_remb(part.bitrate, now_us)

    def _on_sender_report(self, report: SenderReport, now_us: int) -> None:
        for uptrack in self.uptracks:
            if uptrack.ssrc == report.ssrc:
                arrival = ntp_from_unix_ns(time.time_ns())
                uptrack.on_sender_report(
                    report.ntp_timestamp, report.rtp_timestamp, arrival, now_us
                )
                return

    def _on_report_blocks(self, blocks: list, now_us: int) -> None:
        if not blocks:
            return
        now_ntp = None
        for block in blocks:
            leg = self._legs_by_ssrc.get(block.ssrc)
            if leg is None or block.ssrc != leg.ssrc:
                continue
            leg.on_report(block, now_us)
            if block.lsr:
                now_ntp = now_ntp or ntp_from_unix_ns(time.time_ns())
                rtt = round_trip_us(now_ntp, block.lsr, block.dlsr)
                if rtt is not None:
                    self.rtt_us = (self.rtt_us * 7 + rtt) // 8

    # --- what the relay sends on its own ----------------------------------------------

    def request_keyframe(self, media_ssrc: int, pli: bool) -> bool:
        """Ask the participant for a keyframe of ``media_ssrc``; False if it cannot be sent."""
        if not self.sending:
            return False
        if pli:
            self.send_rtcp(build_pli(self.rtcp_ssrc, media_ssrc))
        else:
            self.send_rtcp(self._fir.request(self.rtcp_ssrc, media_ssrc))
        return True

    def watch_losses(self, uptrack: UpTrack) -> None:
        """``uptrack`` saw a gap: NACK it when the generator says it is due."""
        nacks = uptrack.nacks
        if nacks is None or self.closed:
            return
        due_us = nacks.next_due_us()
        if due_us is None:
            return
        due = due_us / 1_000_000
        if self._nack_timer is not None and self._nack_due <= due:
            return
        if self._nack_timer is not None:
            self._nack_timer.cancel()
        self._nack_due = due
        self._nack_timer = self._loop.call_at(due, self._send_nacks)

    def _send_nacks(self) -> None:
        self._nack_timer = None
        if not self.receiving:
            return
        now_us = time.monotonic_ns() // 1000
        next_due: int | None = None
        for uptrack in self.uptracks:
            nacks = uptrack.nacks
            if nacks is None or uptrack.ssrc is None:
                continue
            lost = nacks.poll(now_us, self.rtt_us)
            if lost and self.sending:
                self.send_rtcp(build_nack(self.rtcp_ssrc, uptrack.ssrc, lost))
                for stats in self._stats:
                    stats.nacks_sent += 1
            given_up = self._given_up.get(id(uptrack), 0)
            if nacks.given_up > given_up:
                self._given_up[id(uptrack)] = nacks.given_up
                uptrack.request_keyframe(asked_by_subscriber=True)
            due = nacks.next_due_us()
            if due is not None and (next_due is None or due < next_due):
                next_due = due
        if next_due is not None:
            self._nack_due = next_due / 1_000_000
            self._nack_timer = self._loop.call_at(self._nack_due, self._send_nacks)

    def _schedule(self) -> None:
        if self._timer is None and not self.closed and (self.receiving or self.sending):
            self._next_report = self._loop.time() + REPORT_INTERVAL * random.uniform(0.25, 0.75)
            self._timer = self._loop.call_later(self._interval(), self._tick)

    def _interval(self) -> float:
        return FEEDBACK_INTERVAL if self._twcc_id else REPORT_INTERVAL / 4

    def _tick(self) -> None:
        self._timer = None
        if self.closed or not self.sending:
            return
        now_us = time.monotonic_ns() // 1000
        if self._twcc_id and self.receiving:
            media_ssrc = next((u.ssrc for u in self.uptracks if u.ssrc is not None), 0)
            for packet in self._twcc.feedback(now_us, self.rtcp_ssrc, media_ssrc):
                self.send_rtcp(packet)
                for stats in self._stats:
                    stats.transport_feedback_sent += 1
        if self._loop.time() >= self._next_report:
            self._next_report = self._loop.time() + REPORT_INTERVAL * random.uniform(0.75, 1.25)
            try:
                self._send_reports(now_us)
            except Exception:  # a report must never stop the transport's clock
                logger.exception("peer %s: building RTCP reports failed", self.peer_id)
        self._timer = self._loop.call_later(self._interval(), self._tick)

    def _send_reports(self, now_us: int) -> None:
        elapsed = now_us - self._last_report_us
        self._last_report_us = now_us
        ntp = ntp_from_unix_ns(time.time_ns())
        total = 0
        for leg in self.legs:
            leg.measure(elapsed)
            total += leg.signals.rate_bps
            report = leg.sender_report(now_us, ntp)
            if report is not None:
                self.send_rtcp(report + build_sdes_cname(leg.ssrc, leg.cname or self.cname))
        self.subscriber.rate_bps = total
        if not self.uptracks or not self.receiving:
            return
        blocks = []
        for uptrack in self.uptracks:
            uptrack.measure(elapsed)
            if uptrack.receive is not None and uptrack.receive.started:
                blocks.append(uptrack.receive.report_block(now_us))
        compound = build_receiver_report(self.rtcp_ssrc, blocks[:MAX_REPORT_BLOCKS])
        compound += build_sdes_cname(self.rtcp_ssrc, self.cname)
        remb = self._publisher_remb(now_us)
        if remb is not None:
            ssrcs = [u.ssrc for u in self.uptracks if u.ssrc is not None]
            compound += build_remb(self.rtcp_ssrc, remb, ssrcs)
        self.send_rtcp(compound)

    def _publisher_remb(self, now_us: int) -> int | None:
        video = next((u for u in self.uptracks if u.kind == "video" and u.ssrc is not None), None)
        if video is None:
            return None
        legs = [
            (leg.signals, leg.transport.subscriber)
            for leg in video.legs
            if leg.transport is not None and leg.open
        ]
        return publisher_remb(legs, video.rate_bps, now_us, transport_cc=video.transport_cc)

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._nack_timer):
            if timer is not None:
                timer.cancel()
        self._timer = None
        self._nack_timer = None

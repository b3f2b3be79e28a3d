"""Per-stream RTP statistics: what RTCP receiver and sender reports carry.

Once the relay forwards packets, aiortc's receivers and senders no longer
see them, so nobody else counts: a publisher needs receiver reports (its
loss and jitter) and each subscriber needs sender reports (packet and
octet counts, NTP↔RTP mapping) from the relay itself.

:class:`ReceiveStats` follows RFC 3550 appendix A.1 (sequence numbers,
restarts), A.3 (expected, lost, fraction lost) and A.8 (jitter);
:class:`SendStats` counts what RFC 3550 §6.4.1 puts in a sender report.
Times are integers in µs on one monotonic clock, except NTP timestamps
(64-bit, see :mod:`relay.ntp`).
"""

from __future__ import annotations

from relay.ntp import dlsr_from_us, ntp_middle
from relay.rtcp import PACKETS_LOST_MAX, PACKETS_LOST_MIN, ReportBlock, build_sender_report

MAX_DROPOUT = 3000
"""A jump forward up to this many sequence numbers is loss (RFC 3550 A.1)."""
MAX_MISORDER = 100
"""A packet up to this far behind the highest is reordered, farther a jump."""
SEQUENCE_CYCLE = 1 << 16


class ReceiveStats:
    """Reception statistics of one incoming SSRC, made into RR report blocks.

    Feed every packet of the stream to :meth:`on_packet` (a retransmission
    too, with its original sequence number, flagged: it counts as received
    but, as in libwebrtc, not for jitter), every SR about it to
    :meth:`on_sender_report`, and take a :meth:`report_block` per RR.

    A jump of more than :data:`MAX_DROPOUT` ahead, or more than
    :data:`MAX_MISORDER` behind, is ignored unless the next packet follows
    it, which means the source restarted its sequence: counting restarts.
    """

    __slots__ = (
        "ssrc",
        "clock_rate",
        "_base",
        "_max",
        "_cycles",
        "_bad",
        "_received",
        "_expected_prior",
        "_received_prior",
        "_transit",
        "_jitter_q4",
        "_sr_middle",
        "_sr_arrival_us",
    )

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        """Hz of the stream's RTP clock (90000 video, 48000 Opus)."""
        self._base = 0
        self._max = -1
        """Highest 16-bit sequence number; -1 before the first packet."""
        self._cycles = 0
        """Count of wraps, times 2^16."""
        self._bad = -1
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: int | None = None
        self._jitter_q4 = 0
        """Jitter in RTP ticks, times 16 (RFC 3550 A.8's integer form)."""
        self._sr_middle = 0
        self._sr_arrival_us = 0

    def _start(self, sequence_number: int) -> None:
        self._base = sequence_number
        self._max = sequence_number
        self._cycles = 0
        self._bad = -1
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit = None

    def on_packet(
        self, sequence_number: int, timestamp: int, arrival_us: int, *, retransmission: bool = False
    ) -> None:
        """One packet: 16-bit ``sequence_number``, 32-bit RTP ``timestamp``."""
        highest = self._max
        if highest < 0:
            self._start(sequence_number)
            forward = True
        else:
            delta = (sequence_number - highest) & 0xFFFF
            forward = 0 < delta < MAX_DROPOUT
            if forward:
                if sequence_number < highest:
                    self._cycles += SEQUENCE_CYCLE
                self._max = sequence_number
            elif SEQUENCE_CYCLE - MAX_MISORDER >= delta >= MAX_DROPOUT:
                if sequence_number != self._bad:
                    self._bad = (sequence_number + 1) & 0xFFFF
                    return
                self._start(sequence_number)  # two in a row: the source restarted
                forward = True
        self._received += 1
        if forward and not retransmission:
            arrival = arrival_us * self.clock_rate // 1_000_000
            transit = arrival - timestamp
            previous = self._transit
            self._transit = transit
            if previous is not None:
                difference = ((transit - previous + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                self._jitter_q4 += abs(difference) - ((self._jitter_q4 + 8) >> 4)

    def on_sender_report(self, ntp_timestamp: int, arrival_us: int) -> None:
        """An SR about this stream arrived: its NTP time is echoed as LSR."""
        self._sr_middle = ntp_middle(ntp_timestamp)
        self._sr_arrival_us = arrival_us

    @property
    def started(self) -> bool:
        """A packet was received (a report block can be made)."""
        return self._max >= 0

    @property
    def extended_highest(self) -> int:
        """Highest sequence number received, with wrap cycles (cycles << 16 | seq)."""
        return self._cycles + self._max

    @property
    def expected(self) -> int:
        return self._cycles + self._max - self._base + 1

    @property
    def received(self) -> int:
        """Packets received, duplicates and retransmissions included (as RFC 3550 counts)."""
        return self._received

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received; negative after duplicates."""
        return self.expected - self._received

    @property
    def jitter(self) -> int:
        """Interarrival jitter, in RTP timestamp units."""
        return self._jitter_q4 >> 4

    def report_block(self, now_us: int) -> ReportBlock:
        """The report block for an RR sent now; starts a new fraction-lost interval.

        Call only once :attr:`started`. ``fraction_lost`` covers the packets
        since the previous call (RFC 3550 A.3); ``dlsr`` is from the last SR's
        arrival to ``now_us``.
        """
        if not self.started:
            raise RuntimeError("no packet received yet: nothing to report")
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min((lost_interval << 8) // expected_interval, 255)
        lost = min(max(expected - self._received, PACKETS_LOST_MIN), PACKETS_LOST_MAX)
        dlsr = dlsr_from_us(now_us - self._sr_arrival_us) if self._sr_middle else 0
        return ReportBlock(
            self.ssrc,
            fraction,
            lost,
            self.extended_highest & 0xFFFFFFFF,
            self.jitter,
            self._sr_middle,
            dlsr,
        )


class SendStats:
    """What one outgoing stream's sender reports need.

    Count every RTP packet sent on the stream's SSRC with :meth:`on_packet`
    (RFC 3550 counts packets and *payload* octets: no header, no padding;
    retransmissions sent as RTX belong to the RTX SSRC's stream).
    """

    __slots__ = ("packets", "octets", "last_timestamp", "last_sent_us")

    def __init__(self) -> None:
        self.packets = 0
        self.octets = 0
        self.last_timestamp: int | None = None
        """RTP timestamp of the last packet sent (32-bit)."""
        self.last_sent_us = 0

    def on_packet(self, payload_octets: int, timestamp: int, now_us: int) -> None:
        self.packets += 1
        self.octets += payload_octets
        self.last_timestamp = timestamp
        self.last_sent_us = now_us

    def rtp_timestamp_at(self, now_us: int, clock_rate: int) -> int | None:
        """The stream's RTP timestamp at ``now_us``, extrapolated from the last packet.

        The fallback when the publisher sent no SR yet (with one, prefer
        :func:`relay.ntp.rtp_timestamp_at`); None before the first packet.
        Wraps at 32 bits.
        """
        if self.last_timestamp is None:
            return None
        ticks = (now_us - self.last_sent_us) * clock_rate // 1_000_000
        return (self.last_timestamp + ticks) & 0xFFFFFFFF

    def sender_report(
        self,
        ssrc: int,
        ntp_timestamp: int,
        rtp_timestamp: int,
        reports: tuple[ReportBlock, ...] = (),
    ) -> bytes:
        """An SR packet with this stream's counts (wrapping at 32 bits)."""
        return build_sender_report(
            ssrc, ntp_timestamp, rtp_timestamp, self.packets, self.octets, reports
        )

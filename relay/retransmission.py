"""Packet loss repair on both sides of the relay: asking for, and answering, NACKs.

Upstream, the relay is the publisher's receiver: a packet lost between the
publisher and the relay is lost for every subscriber, so the relay NACKs it
itself (:class:`NackGenerator`) instead of waiting for subscribers to notice.
Downstream, the relay is each subscriber's sender: a subscriber's NACK names
the *leg's* sequence numbers, so each leg keeps what it sent, already
rewritten (:class:`RetransmissionHistory`), and resends it (as RTX when
negotiated, see :func:`relay.rtp.wrap_rtx`).

Times are integers in µs on one monotonic clock; sequence numbers are
16-bit on the wire.
"""

from __future__ import annotations

from relay.rtp import sequence_delta

DEFAULT_WAIT_US = 10_000
DEFAULT_MIN_RETRY_US = 20_000
DEFAULT_MAX_RETRIES = 10
DEFAULT_MAX_AGE_US = 1_000_000
DEFAULT_MAX_MISSING = 500
DEFAULT_MAX_GAP = 1000
DEFAULT_HISTORY_PACKETS = 1024


class NackGenerator:
    """Which packets of one incoming stream to NACK, and when.

    :meth:`on_packet` sees every packet of the stream (a retransmission too,
    with its original sequence number, so an RTX arrival clears it).
    Sequence numbers skipped by a packet become *missing*. :meth:`poll`
    returns those to NACK now: a missing packet is first asked for
    ``wait_us`` after the gap was seen (reordering usually fills it sooner),
    then again every RTT (at least ``min_retry_us``), at most
    ``max_retries`` times.

    A missing packet is forgotten when it arrives, when its retries are
    spent, when it has been missing for ``max_age_us`` (too late to be
    played), or when more than ``max_missing`` are missing (the oldest go
    first): each forgotten-unrepaired packet adds to :attr:`given_up`, the
    signal to ask for a keyframe instead. A jump of more than ``max_gap``
    is not loss but a sender restart (or a stray packet): it is ignored
    unless the next packet follows it, and then tracking restarts there,
    without NACKing what lies between.
    """

    __slots__ = (
        "_highest",
        "_missing",
        "_jump",
        "_wait_us",
        "_min_retry_us",
        "_max_retries",
        "_max_age_us",
        "_max_missing",
        "_max_gap",
        "given_up",
        "recovered",
    )

    def __init__(
        self,
        *,
        wait_us: int = DEFAULT_WAIT_US,
        min_retry_us: int = DEFAULT_MIN_RETRY_US,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_age_us: int = DEFAULT_MAX_AGE_US,
        max_missing: int = DEFAULT_MAX_MISSING,
        max_gap: int = DEFAULT_MAX_GAP,
    ) -> None:
        if not 0 < max_gap < 0x8000:
            raise ValueError("max_gap must be between 1 and 32767")
        self._highest: int | None = None
        """Extended (unwrapped) highest sequence number seen."""
        self._missing: dict[int, list[int]] = {}
        """Extended sequence number -> [next NACK due (µs), NACKs sent, first missed (µs)],
        in ascending sequence order."""
        self._jump = -1
        """The 16-bit number that would confirm a jump as a restart."""
        self._wait_us = wait_us
        self._min_retry_us = min_retry_us
        self._max_retries = max_retries
        self._max_age_us = max_age_us
        self._max_missing = max_missing
        self._max_gap = max_gap
        self.given_up = 0
        """Missing packets forgotten without being repaired (cumulative)."""
        self.recovered = 0
        """Missing packets that arrived after all (cumulative)."""

    @property
    def missing(self) -> list[int]:
        """The 16-bit sequence numbers currently missing, oldest first."""
        return [sequence & 0xFFFF for sequence in self._missing]

    def on_packet(self, sequence_number: int, now_us: int) -> None:
        """A packet with 16-bit ``sequence_number`` arrived at ``now_us``."""
        highest = self._highest
        if highest is None:
            self._highest = sequence_number
            return
        delta = sequence_delta(sequence_number, highest)
        if delta == 1:  # the common case
            self._highest = highest + 1
            return
        extended = highest + delta
        if delta < 0 and self._missing.pop(extended, None) is not None:
            self.recovered += 1
            return
        if delta > self._max_gap or delta < -self._max_gap:
            if sequence_number != self._jump:
                self._jump = (sequence_number + 1) & 0xFFFF
                return
            self.given_up += len(self._missing)
            self._missing.clear()
            self._highest = extended
            return
        if delta <= 0:
            return  # duplicate, or late but no longer missing
        missing = self._missing
        due = now_us + self._wait_us
        for sequence in range(highest + 1, extended):
            missing[sequence] = [due, 0, now_us]
        self._highest = extended
        excess = len(missing) - self._max_missing
        if excess > 0:
            for sequence in list(missing)[:excess]:
                del missing[sequence]
            self.given_up += excess

    def poll(self, now_us: int, rtt_us: int) -> list[int]:
        """The 16-bit sequence numbers to NACK now, oldest first (for :func:`relay.rtcp.build_nack`).

        ``rtt_us`` is the current round-trip estimate to the publisher
        (:func:`relay.ntp.round_trip_us`); retries are spaced by it.
        """
        due_now: list[int] = []
        missing = self._missing
        if not missing:
            return due_now
        retry = max(rtt_us, self._min_retry_us)
        expired = now_us - self._max_age_us
        forgotten = []
        for sequence, entry in missing.items():
            if entry[2] < expired or (entry[1] >= self._max_retries and entry[0] <= now_us):
                forgotten.append(sequence)
            elif entry[0] <= now_us:
                due_now.append(sequence & 0xFFFF)
                entry[0] = now_us + retry
                entry[1] += 1
        for sequence in forgotten:
            del missing[sequence]
        self.given_up += len(forgotten)
        return due_now

    def next_due_us(self) -> int | None:
        """When :meth:`poll` will next have something to do, or None when nothing is missing."""
        if not self._missing:
            return None
        return min(entry[0] for entry in self._missing.values())


class RetransmissionHistory:
    """The packets one leg sent, by the leg's sequence number, to answer NACKs.

    A ring of ``capacity`` slots (a power of two) indexed by the 16-bit
    sequence number: store and lookup are O(1), and a slot is reused when
    the sequence number comes round again. A packet older than
    ``max_age_us`` is not resent (the receiver has given up on it, and an
    old packet would only add to congestion). Store the packet as sent,
    before SRTP, and do not change it afterwards: the history keeps the
    object, not a copy.
    """

    __slots__ = ("_mask", "_sequences", "_times", "_packets", "_max_age_us")

    def __init__(
        self, capacity: int = DEFAULT_HISTORY_PACKETS, max_age_us: int = DEFAULT_MAX_AGE_US
    ) -> None:
        if capacity <= 0 or capacity > 1 << 16 or capacity & (capacity - 1):
            raise ValueError("capacity must be a power of two up to 65536")
        self._mask = capacity - 1
        self._sequences = [-1] * capacity
        self._times = [0] * capacity
        self._packets: list[bytes | bytearray | None] = [None] * capacity
        self._max_age_us = max_age_us

    def store(self, sequence_number: int, packet: bytes | bytearray, now_us: int) -> None:
        """Keep ``packet``, sent at ``now_us`` with 16-bit ``sequence_number``."""
        slot = sequence_number & self._mask
        self._sequences[slot] = sequence_number & 0xFFFF
        self._times[slot] = now_us
        self._packets[slot] = packet

    def get(self, sequence_number: int, now_us: int) -> bytes | bytearray | None:
        """The packet sent with ``sequence_number``, or None if gone or too old."""
        slot = sequence_number & self._mask
        if self._sequences[slot] != sequence_number & 0xFFFF:
            return None
        if now_us - self._times[slot] > self._max_age_us:
            return None
        return self._packets[slot]

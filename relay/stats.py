"""Forwarding counters, per peer and relay-wide.

Counting happens on the hot path (once per RTP packet per subscriber leg),
so the counters are plain integer fields; a peer adds to its own counters
and, when one was given, to a relay-wide :class:`RelayStats` shared by every
peer of the process (``RelayPeer(..., totals=shared)``), which is what
``/metrics`` reads: it keeps counting after peers are gone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(slots=True)
class RelayStats:
    """Monotonic counters of the media plane.

    Every count is of **RTP packets** (the relay forwards packets, not frames):
    a 640×480 VP8 frame is a handful of packets, a 20 ms Opus frame one.
    A peer's own counters count what it published (``received``), what was
    sent to it (``forwarded``, ``retransmitted``, ``dropped``) and the RTCP it
    sent upstream on its transport.
    """

    packets_received: int = 0
    """RTP packets received from publishers (before fan-out; retransmissions and
    padding included), after SRTP."""
    bytes_received: int = 0
    packets_forwarded: int = 0
    """RTP packets sent to subscribers (one per leg), retransmissions excluded."""
    bytes_forwarded: int = 0
    packets_dropped: int = 0
    """Media packets not forwarded to a subscriber: waiting for a keyframe after
    joining, resuming or an ``audio-only`` restriction lifting."""
    packets_retransmitted: int = 0
    """Packets resent from a leg's history to answer a subscriber's NACK."""
    nacks_unanswered: int = 0
    """Sequence numbers a subscriber NACKed that the history no longer held."""
    nacks_sent: int = 0
    """NACK packets the relay sent to publishers for its own losses."""
    keyframe_requests_forwarded: int = 0
    """Picture-loss indications sent upstream to publishers."""
    transport_feedback_sent: int = 0
    """Transport-wide congestion control feedback packets sent to publishers."""

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def combined(stats: list[RelayStats]) -> RelayStats:
    """The sum of several counters (e.g. every peer of a room)."""
    total = RelayStats()
    for item in stats:
        for field in dataclasses.fields(RelayStats):
            setattr(total, field.name, getattr(total, field.name) + getattr(item, field.name))
    return total

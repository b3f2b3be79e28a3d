"""Forwarding counters, per peer and relay-wide.

Counting happens on the hot path (once per encoded frame per subscriber),
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

    A *packet* is one encoded media frame (an ``av.Packet``: one video frame
    or one 20 ms Opus frame), which aiortc then splits into RTP packets.
    """

    packets_received: int = 0
    """Encoded frames received from publishers (before fan-out)."""
    bytes_received: int = 0
    packets_forwarded: int = 0
    """Encoded frames handed to a subscriber's sender."""
    bytes_forwarded: int = 0
    keyframe_requests_forwarded: int = 0
    """Picture-loss indications sent upstream to publishers."""
    frames_dropped: int = 0
    """Frames not forwarded to a subscriber: it fell behind, or was waiting
    for a keyframe after joining, resyncing or resuming."""

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def combined(stats: list[RelayStats]) -> RelayStats:
    """The sum of several counters (e.g. every peer of a room)."""
    total = RelayStats()
    for item in stats:
        for field in dataclasses.fields(RelayStats):
            setattr(total, field.name, getattr(total, field.name) + getattr(item, field.name))
    return total

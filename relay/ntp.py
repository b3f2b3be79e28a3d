"""NTP timestamps and their mapping to RTP timestamps, for sender reports.

An RTCP sender report pairs a 64-bit NTP timestamp (32.32 fixed-point
seconds since 1900-01-01, RFC 3550 §4) with the RTP timestamp of the same
instant. Receivers put a sender's audio and video on one timeline with
these pairs (lip sync) and derive the round-trip time from the middle 32
bits of the NTP timestamp they echo (LSR) and their delay since (DLSR,
in 1/65536 s).

When the relay forwards a publisher's stream, the leg's SR must map the
leg's RTP timestamps to the publisher's timeline: take the publisher's
latest SR ``(ntp, rtp)`` and :func:`rtp_timestamp_at` the NTP time the
leg's SR carries, then add the leg's timestamp offset. Use one NTP clock
for all the legs that carry one publisher's audio and video, or their sync
is lost.

NTP timestamps wrap in 2036 (era 1): the values here are taken modulo 2^64
and differences modulo 2^32 where RFC 3550 does.
"""

from __future__ import annotations

NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from 1900-01-01 (NTP epoch) to 1970-01-01 (Unix epoch)."""
_NTP_MASK = (1 << 64) - 1


def ntp_from_unix_ns(unix_ns: int) -> int:
    """64-bit NTP timestamp of a Unix time in ns (``time.time_ns()``), exact."""
    seconds, fraction_ns = divmod(unix_ns, 1_000_000_000)
    fraction = (fraction_ns << 32) // 1_000_000_000
    return (((seconds + NTP_UNIX_OFFSET) << 32) | fraction) & _NTP_MASK


def ntp_from_unix(unix_seconds: float) -> int:
    """64-bit NTP timestamp of a Unix time in seconds (``time.time()``)."""
    return int((unix_seconds + NTP_UNIX_OFFSET) * (1 << 32)) & _NTP_MASK


def unix_from_ntp(ntp: int) -> float:
    """Unix time in seconds of a 64-bit NTP timestamp (era 0, before 2036)."""
    return ntp / (1 << 32) - NTP_UNIX_OFFSET


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: what a report block's LSR echoes."""
    return (ntp >> 16) & 0xFFFFFFFF


def ntp_add_us(ntp: int, microseconds: int) -> int:
    """``ntp`` moved by ``microseconds`` (may be negative), modulo 2^64."""
    return (ntp + (microseconds << 32) // 1_000_000) & _NTP_MASK


def rtp_timestamp_at(sr_ntp: int, sr_rtp: int, clock_rate: int, ntp: int) -> int:
    """The RTP timestamp at NTP time ``ntp``, given a sender report's pair.

    ``sr_ntp``/``sr_rtp`` are a publisher's SR fields (64-bit NTP, 32-bit
    RTP), ``clock_rate`` in Hz (90000 video, 48000 Opus). ``ntp`` may be
    before or after the report; the result is rounded to the nearest tick
    and wraps at 32 bits. Assumes the sender's RTP clock runs at the nominal
    rate, which is exact enough between SRs a few seconds apart.
    """
    elapsed = (ntp - sr_ntp) & _NTP_MASK
    if elapsed >= 1 << 63:
        elapsed -= 1 << 64
    ticks = (elapsed * clock_rate + (1 << 31)) >> 32
    return (sr_rtp + ticks) & 0xFFFFFFFF


def dlsr_from_us(microseconds: int) -> int:
    """A delay in µs as a DLSR value (1/65536 s, 32-bit, saturating)."""
    return min(max(microseconds, 0) * 65536 // 1_000_000, 0xFFFFFFFF)


def round_trip_us(now_ntp: int, lsr: int, dlsr: int) -> int | None:
    """Round-trip time in µs from a report block about a stream we send.

    RFC 3550 §6.4.1: ``now - LSR - DLSR`` in the middle-32-bit NTP units,
    modulo 2^32. None when the block echoes no SR (``lsr == 0``); 0 when the
    clocks make it negative.
    """
    if lsr == 0:
        return None
    rtt = (ntp_middle(now_ntp) - lsr - dlsr) & 0xFFFFFFFF
    if rtt >= 1 << 31:
        return 0
    return rtt * 1_000_000 // 65536

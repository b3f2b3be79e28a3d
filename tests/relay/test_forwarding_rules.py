"""The packet path's rules, as pure functions of what arrives: numbering, caps, requests."""

from __future__ import annotations

import asyncio

import pytest

from relay.congestion import (
    AUDIO_ALLOWANCE,
    HOLD_US,
    MIN_BITRATE,
    UNCAPPED_BITRATE,
    LegSignals,
    SubscriberSignals,
    publisher_remb,
)
from relay.keyframe import KeyframeRequester
from relay.leg import SequenceMap
from relay.uptrack import PublisherClock


class Upstream:
    """Records keyframe requests sent to a publisher."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self) -> None:
        self.requests += 1


# --- sequence numbers ---------------------------------------------------------------------


def test_a_leg_numbers_from_below_32768_and_closes_up_behind_drops() -> None:
    numbers = SequenceMap()
    first = numbers.restart(40000)
    assert first < 0x8000
    out = [first] + [numbers.forward(s) for s in (40001, 40002)]
    numbers.drop(40003)  # padding only
    numbers.drop(40004)
    out += [numbers.forward(s) for s in (40005, 40006)]
    assert out == [first + i for i in range(5)]


def test_a_gap_the_publisher_left_stays_a_gap_and_a_late_packet_fills_it() -> None:
    numbers = SequenceMap(first_out=100)
    assert numbers.restart(10) == 100
    assert numbers.forward(11) == 101
    assert numbers.forward(13) == 103  # 12 lost upstream: the subscriber will NACK 102
    numbers.drop(14)  # a probe after the gap: 15 closes up behind it
    assert numbers.forward(15) == 104
    assert numbers.forward(12) == 102, "the late packet takes the place kept for it"


def test_a_restart_continues_the_numbering_and_forwards_nothing_older() -> None:
    numbers = SequenceMap(first_out=65534)
    assert numbers.restart(500) == 65534
    assert numbers.forward(501) == 65535
    assert numbers.forward(502) == 0  # wraps
    assert numbers.restart(900) == 1  # the gate reopened at a keyframe
    assert numbers.forward(899) is None, "a packet from before the restart"
    assert numbers.forward(901) == 2
    assert numbers.forward(901 + 5000) == 3, "a jump is a publisher restart, not loss"


def test_numbering_crosses_the_publishers_wrap() -> None:
    numbers = SequenceMap(first_out=7)
    assert [numbers.restart(65534), numbers.forward(65535), numbers.forward(0)] == [7, 8, 9]


# --- congestion -----------------------------------------------------------------------------


def leg(rate: int, lost: float = 0.0, at: int = 0) -> LegSignals:
    return LegSignals(rate_bps=rate, fraction_lost=lost, lost_at_us=at)


def subscriber(remb: int | None, rate: int, at: int = 0, fell: bool = True) -> SubscriberSignals:
    """A subscriber whose last REMB was ``remb`` (and ``fell``: lower than the one before)."""
    return SubscriberSignals(
        remb_bps=remb, remb_at_us=at, rate_bps=rate, remb_fell_at_us=at if fell else None
    )


def test_no_cap_while_no_subscriber_is_congested() -> None:
    # A receiver whose REMB is at or above what it receives is not congested.
    healthy = [(leg(1_000_000), subscriber(1_100_000, 1_000_000))]
    assert publisher_remb(healthy, 1_000_000, 0, transport_cc=True) == UNCAPPED_BITRATE
    # Nor is one whose REMB trails the publisher's ramp without ever falling: that is the
    # receive-side estimator growing 8 % a second, not overuse.
    trailing = [(leg(1_500_000), subscriber(500_000, 1_500_000, fell=False))]
    assert publisher_remb(trailing, 1_500_000, 0, transport_cc=True) == UNCAPPED_BITRATE
    lossy_link = [(leg(1_000_000, lost=0.03), subscriber(None, 1_000_000))]
    assert publisher_remb(lossy_link, 1_000_000, 0, transport_cc=True) == UNCAPPED_BITRATE


def test_the_most_congested_subscriber_caps_the_publisher_for_a_while() -> None:
    slow = leg(1_000_000)
    fast = leg(1_000_000)
    legs = [(slow, subscriber(400_000, 1_000_000)), (fast, subscriber(3_000_000, 1_000_000))]
    assert publisher_remb(legs, 1_000_000, 0, transport_cc=True) == 400_000 + AUDIO_ALLOWANCE
    # Recovering (its REMB rises above the rate), the cap follows it until the hold ends...
    legs[0] = (slow, subscriber(900_000, 400_000, at=1_000_000))
    assert publisher_remb(legs, 400_000, 1_000_000, transport_cc=True) == 900_000 + AUDIO_ALLOWANCE
    # ...then it is lifted.
    later = HOLD_US + 1
    legs[0] = (slow, subscriber(900_000, 400_000, at=later))
    assert publisher_remb(legs, 400_000, later, transport_cc=True) == UNCAPPED_BITRATE


def test_heavy_loss_caps_and_shares_follow_what_each_leg_takes() -> None:
    lossy = [(leg(1_000_000, lost=0.3), subscriber(None, 1_000_000))]
    assert publisher_remb(lossy, 1_000_000, 0, transport_cc=True) == 850_000 + AUDIO_ALLOWANCE
    # A subscriber receiving two publishers: its REMB is shared by what each leg takes.
    half = [(leg(500_000), subscriber(600_000, 1_000_000))]
    assert publisher_remb(half, 500_000, 0, transport_cc=True) == 300_000 + AUDIO_ALLOWANCE
    starved = [(leg(10_000), subscriber(10_000, 10_000))]
    assert publisher_remb(starved, 1_000_000, 0, transport_cc=True) == MIN_BITRATE + AUDIO_ALLOWANCE


def test_a_publisher_without_transport_cc_gets_its_subscribers_remb() -> None:
    legs = [
        (leg(800_000), subscriber(1_200_000, 800_000)),
        (leg(800_000), subscriber(900_000, 800_000)),
    ]
    assert publisher_remb(legs, 800_000, 0, transport_cc=False) == 900_000 + AUDIO_ALLOWANCE
    assert publisher_remb([(leg(1), subscriber(None, 1))], 800_000, 0, transport_cc=False) is None


# --- lip sync -------------------------------------------------------------------------------


def test_one_clock_offset_per_publisher_from_its_least_delayed_report() -> None:
    clock = PublisherClock()
    assert clock.sender_ntp(123) is None
    clock.observe(sender_ntp=1000 << 32, arrival_ntp=(900 << 32) + (1 << 30))  # 0.25 s in transit
    clock.observe(sender_ntp=1001 << 32, arrival_ntp=(901 << 32))  # no delay
    assert clock.sender_ntp(950 << 32) == 1050 << 32


# --- keyframe requests ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_keyframe_requests_are_rate_limited_but_never_lost() -> None:
    upstream = Upstream()
    requester = KeyframeRequester(upstream, interval=0.2)
    for _ in range(10):
        requester.request()
    assert upstream.requests == 1
    await asyncio.sleep(0.1)
    requester.request()
    assert upstream.requests == 1
    await asyncio.sleep(0.15)
    assert upstream.requests == 2  # the deferred one, merged
    await asyncio.sleep(0.3)
    assert upstream.requests == 2
    requester.request()
    assert upstream.requests == 3


@pytest.mark.asyncio
async def test_a_deferred_request_is_dropped_once_no_longer_needed() -> None:
    upstream = Upstream()
    needed = [True]
    requester = KeyframeRequester(upstream, lambda: needed[0], interval=0.1)
    requester.request()
    requester.request()  # inside the window: deferred
    needed[0] = False  # the keyframe came meanwhile
    await asyncio.sleep(0.15)
    assert upstream.requests == 1


@pytest.mark.asyncio
async def test_a_request_is_repeated_while_the_keyframe_has_not_come() -> None:
    """A PLI lost on a lossy link: asked again until the keyframe is there, then no more."""
    upstream = Upstream()
    needed = [True]
    requester = KeyframeRequester(upstream, lambda: needed[0], interval=0.05, retry=0.1)
    requester.request()
    assert upstream.requests == 1
    await asyncio.sleep(0.25)
    assert upstream.requests == 3  # at 0.1 s and 0.2 s
    needed[0] = False  # the keyframe came
    await asyncio.sleep(0.25)
    assert upstream.requests == 3
    needed[0] = True
    requester.request()
    requester.cancel()  # the track closed: nothing more is asked for
    await asyncio.sleep(0.25)
    assert upstream.requests == 4


def test_a_remb_that_falls_marks_overuse() -> None:
    signals = SubscriberSignals()
    signals.on_remb(1_000_000, 0)
    signals.on_remb(1_080_000, 1_000_000)
    assert signals.remb_fell_at_us is None
    signals.on_remb(900_000, 2_000_000)
    assert signals.remb_fell_at_us == 2_000_000

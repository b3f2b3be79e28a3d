"""How much a publisher may send: capped at what its subscribers can take.

Two estimators meet at the relay:

* **Upstream**, a browser publisher that negotiated transport-cc runs its own send-side
  estimator (GoogCC) on the relay's transport-cc feedback (``relay.twcc``): it ramps up and
  probes as fast as in a direct call. It also obeys REMB: in Chromium a received REMB is a
  *persistent upper bound* on its estimate, kept until the next REMB.
* **Downstream**, each subscriber's browser estimates what it can receive from the relay
  (abs-send-time, delay-based) and says so in REMB; its receiver reports say how much is lost.

The relay does not re-encode, so a publisher must not send more than its most constrained
subscriber can take, but capping it at the subscribers' REMB all the time would bring back
the slow REMB ramp the transport-cc feedback is there to avoid: a receiver's REMB trails
the rate it receives by seconds whenever the publisher ramps up (libwebrtc's receive-side
AIMD grows about 8 % a second), and dips under it at every keyframe. What does mean
congestion is a REMB that *falls*: the AIMD estimator lowers it only when it detects
overuse (to 0.85 × what it receives). So the rule, evaluated about once a second per
publisher video track:

1. A leg (publisher track → one subscriber) is **congested** when

   * its subscriber's REMB fell (by more than :data:`REMB_DROP`, within
     :data:`REMB_MAX_AGE_US`) and, shared out over what the relay sends that subscriber in
     proportion to this leg's part of it, is below :data:`CONGESTED_RATIO` of what the
     publisher sends now; or
   * its subscriber's receiver reports lose more than :data:`LOSS_THRESHOLD` (10 %, where
     GoogCC itself starts backing off; the 3 % a lossy link has is repaired by NACK).

   Its cap is the REMB share, or for loss the leg's rate × (1 − loss / 2).
2. A leg stays capped :data:`HOLD_US` after its last sign of congestion, following its REMB
   share as the subscriber recovers (the REMB then rises with what it receives), so that the
   publisher does not jump straight back and congest it again.
3. The publisher is sent REMB = the lowest cap over its legs, never below
   :data:`MIN_BITRATE`; when no leg is capped, :data:`UNCAPPED_BITRATE`, which lifts any
   earlier cap (REMB is persistent) without limiting the publisher's own estimate.

A publisher without transport-cc (aiortc, e.g. the headless kiosk) has no estimator of its
own but REMB: it is sent the lowest REMB share of its subscribers, the classic SFU rule.
"""

from __future__ import annotations

from dataclasses import dataclass

CONGESTED_RATIO = 0.85
REMB_DROP = 0.95
"""A REMB below this share of the subscriber's previous one is a fall (overuse detected)."""
LOSS_THRESHOLD = 0.10
HOLD_US = 4_000_000
REMB_MAX_AGE_US = 3_000_000
"""A subscriber's REMB older than this no longer says anything about it."""
MIN_BITRATE = 100_000
UNCAPPED_BITRATE = 50_000_000
AUDIO_ALLOWANCE = 64_000
"""REMB covers all of a publisher's streams: its audio comes on top of the video cap."""


@dataclass(slots=True)
class LegSignals:
    """What one leg's subscriber says about it, kept on the leg."""

    rate_bps: int = 0
    """What the relay sent on the leg over the last reporting interval."""
    fraction_lost: float = 0.0
    """From the subscriber's last receiver report about the leg (0–1)."""
    lost_at_us: int = 0
    cap_bps: int | None = None
    """The leg's current cap, None when it is not congested."""
    capped_until_us: int = 0


@dataclass(slots=True)
class SubscriberSignals:
    """What one subscriber's transport says about everything the relay sends it."""

    remb_bps: int | None = None
    remb_at_us: int = 0
    remb_fell_at_us: int | None = None
    """When the subscriber's REMB last fell (its estimator detected overuse)."""
    rate_bps: int = 0
    """What the relay sent the subscriber over the last interval, all legs together."""

    def on_remb(self, bitrate: int, now_us: int) -> None:
        """A REMB from the subscriber."""
        if self.remb_bps is not None and bitrate < REMB_DROP * self.remb_bps:
            self.remb_fell_at_us = now_us
        self.remb_bps = bitrate
        self.remb_at_us = now_us


def leg_cap(
    leg: LegSignals, subscriber: SubscriberSignals, publisher_bps: int, now_us: int
) -> int | None:
    """Update and return ``leg``'s cap (bit/s), None when it takes what the publisher sends."""
    share: int | None = None
    if subscriber.remb_bps is not None and now_us - subscriber.remb_at_us <= REMB_MAX_AGE_US:
        part = leg.rate_bps / subscriber.rate_bps if subscriber.rate_bps > 0 else 1.0
        share = int(subscriber.remb_bps * min(part, 1.0))
    congested: int | None = None
    fell = subscriber.remb_fell_at_us
    if (
        share is not None
        and fell is not None
        and now_us - fell <= REMB_MAX_AGE_US
        and publisher_bps > 0
        and share < CONGESTED_RATIO * publisher_bps
    ):
        congested = share
    if leg.fraction_lost > LOSS_THRESHOLD and now_us - leg.lost_at_us <= REMB_MAX_AGE_US:
        by_loss = int(leg.rate_bps * (1 - leg.fraction_lost / 2))
        congested = by_loss if congested is None else min(congested, by_loss)
    if congested is not None:
        leg.cap_bps = max(congested, MIN_BITRATE)
        leg.capped_until_us = now_us + HOLD_US
    elif leg.cap_bps is not None and now_us < leg.capped_until_us:
        if share is not None:
            leg.cap_bps = max(share, MIN_BITRATE)
    else:
        leg.cap_bps = None
    return leg.cap_bps


def publisher_remb(
    legs: list[tuple[LegSignals, SubscriberSignals]],
    publisher_bps: int,
    now_us: int,
    *,
    transport_cc: bool,
) -> int | None:
    """The REMB bitrate to send the publisher now; None to send none.

    ``legs`` are the publisher's video legs with their subscribers' signals.
    """
    if transport_cc:
        caps = [leg_cap(leg, subscriber, publisher_bps, now_us) for leg, subscriber in legs]
        capped = [cap for cap in caps if cap is not None]
        if not capped:
            return UNCAPPED_BITRATE
        return min(capped) + AUDIO_ALLOWANCE
    shares = []
    for leg, subscriber in legs:
        if subscriber.remb_bps is None or now_us - subscriber.remb_at_us > REMB_MAX_AGE_US:
            continue
        part = leg.rate_bps / subscriber.rate_bps if subscriber.rate_bps > 0 else 1.0
        shares.append(int(subscriber.remb_bps * min(part, 1.0)))
    if not shares:
        return None
    return max(min(shares), MIN_BITRATE) + AUDIO_ALLOWANCE

"""What the relay puts on the wire, packet by packet (issue #13).

Real aiortc peers negotiate with the relay over 127.0.0.1; their media is raw RTP
(``tests.harness.rtpclient``), so a test knows every packet a publisher sent and every
packet a subscriber received: sequence numbers, payloads, sender reports, NACKs,
retransmissions, transport-cc feedback.
"""

from __future__ import annotations

import asyncio

import pytest

from relay.payload import h264_is_keyframe, vp8_is_keyframe
from relay.rtp import parse_header, sequence_delta

pytestmark = pytest.mark.asyncio


def continuous(numbers: list[int]) -> bool:
    return all(sequence_delta(b, a) == 1 for a, b in zip(numbers, numbers[1:], strict=False))


def gaps(numbers: list[int]) -> list[tuple[int, int]]:
    return [(a, b) for a, b in zip(numbers, numbers[1:], strict=False) if sequence_delta(b, a) != 1]


async def test_payloads_arrive_unchanged_apart_from_the_header(rtp_visit) -> None:
    a, _ = await rtp_visit.join("A")
    b, _ = await rtp_visit.join("B")
    await rtp_visit.wait_for(
        lambda: (
            rtp_visit.received("B", "A", "video").packets >= 60
            and rtp_visit.received("B", "A", "audio").packets >= 30
        )
    )
    for kind in ("video", "audio"):
        got = rtp_visit.received("B", "A", kind).payloads
        sent = [payload for _, payload in a.sent_payloads[kind]]
        start = next(i for i in range(len(sent)) if sent[i : i + len(got)] == got[: len(sent) - i])
        assert got == sent[start : start + len(got)], f"{kind} payloads changed or reordered"
    video = rtp_visit.received("B", "A", "video")
    assert video.ssrc not in (a.sent_ssrc("video"), a.sent_ssrc("audio")), (
        "the leg has its own SSRC"
    )


async def test_a_subscriber_joining_mid_call_starts_at_a_keyframe(rtp_visit_each_codec) -> None:
    rtp_visit = rtp_visit_each_codec
    is_keyframe = vp8_is_keyframe if rtp_visit.codec == "VP8" else h264_is_keyframe
    a, peer_a = await rtp_visit.join("A")
    await rtp_visit.join("B")
    await rtp_visit.wait_for(lambda: rtp_visit.received("B", "A", "video").frames >= 30)
    await asyncio.sleep(0.5)  # A's opening keyframe is long gone
    keyframes = a.keyframes_sent

    c, _ = await rtp_visit.join("C", publish=False)
    await rtp_visit.wait_for(lambda: rtp_visit.received("C", "A", "video").frames >= 10, timeout=3)

    video = rtp_visit.received("C", "A", "video")
    first = video.payloads[0]
    assert is_keyframe(first, 0, len(first)), "C's first video packet is not a keyframe start"
    assert video.keyframe_starts[0] == video.sequence[0]
    assert video.sequence[0] < 0x8000, "a leg's sequence numbers start below 32768"
    assert continuous(video.sequence), gaps(video.sequence)
    assert a.keyframes_sent > keyframes, "the relay asked A for the keyframe C needed"
    assert peer_a.stats()["keyframe_requests_forwarded"] >= 1


async def test_sequence_numbers_stay_continuous_across_every_drop(rtp_visit) -> None:
    """Padding-only probes, an audio-only restriction and its lifting (video waits for a
    keyframe), then the kill: the subscriber never sees a gap the relay made."""
    a, peer_a = await rtp_visit.join("A")
    await rtp_visit.join("B")
    video = rtp_visit.received
    await rtp_visit.wait_for(lambda: video("B", "A", "video").packets >= 20)

    probes = a.send_padding(5)  # as Chromium probes bandwidth
    await rtp_visit.wait_for(lambda: video("B", "A", "video").packets >= 40)

    peer_a.set_video(False)  # audio-only: A's video is dropped at the gate
    await asyncio.sleep(0.05)  # what was on the wire lands
    held = len(video("B", "A", "video").sequence)
    audio = len(video("B", "A", "audio").sequence)
    await asyncio.sleep(0.4)
    assert len(video("B", "A", "video").sequence) == held, "video went on while restricted"
    assert len(video("B", "A", "audio").sequence) > audio + 10, "audio stopped too"
    peer_a.set_video(True)  # lifted: B's leg restarts at the keyframe the relay asks for
    await rtp_visit.wait_for(lambda: len(video("B", "A", "video").sequence) >= held + 20)

    peer_a.stop_forwarding()
    stopped = len(video("B", "A", "video").sequence)
    audio_stopped = len(video("B", "A", "audio").sequence)
    await asyncio.sleep(0.4)

    received = video("B", "A", "video")
    assert continuous(received.sequence), gaps(received.sequence)
    assert continuous(video("B", "A", "audio").sequence)
    resumed = received.payloads[held]
    assert vp8_is_keyframe(resumed, 0, len(resumed)), "video resumed on a delta frame"
    assert len(received.sequence) - stopped <= 1, "packets kept coming after the kill"
    assert len(video("B", "A", "audio").sequence) - audio_stopped <= 1
    assert len(probes) == 5 and received.packets >= held + 20


async def test_a_subscribers_nack_is_answered_from_the_legs_history(rtp_visit) -> None:
    a, _ = await rtp_visit.join("A")
    b, _ = await rtp_visit.join("B")
    await rtp_visit.wait_for(lambda: rtp_visit.received("B", "A", "video").packets >= 10)
    lost: list[int] = []

    def lose_one(reception, sequence: int) -> bool:  # type: ignore[no-untyped-def]
        if reception.kind == "video" and not lost and reception.packets >= 20:
            lost.append(sequence)
            return True
        return False

    b.drop = lose_one
    await rtp_visit.wait_for(lambda: bool(lost))
    b.drop = None
    video = rtp_visit.received("B", "A", "video")
    b.nack(video.ssrc, lost)
    await rtp_visit.wait_for(lambda: lost[0] in video.retransmitted, timeout=2)

    assert a.nacks_received == [], "the relay answered from its own history, not the publisher"
    assert rtp_visit.peers["B"].stats()["packets_retransmitted"] == 1
    assert video.retransmitted == lost, "resent as RTX carrying the original sequence number"


async def test_the_relay_nacks_its_own_losses_and_the_repair_reaches_subscribers(
    rtp_visit,
) -> None:
    a, peer_a = await rtp_visit.join("A")
    await rtp_visit.join("B")
    await rtp_visit.wait_for(lambda: rtp_visit.received("B", "A", "video").packets >= 10)
    skipped: list[int] = []

    def lose_on_the_way(kind: str, sequence: int) -> bool:
        if kind == "video" and len(skipped) < 2 and sequence % 7 == 0:
            skipped.append(sequence)
            return True
        return False

    a.skip = lose_on_the_way
    await rtp_visit.wait_for(lambda: len(skipped) == 2)
    a.skip = None
    await rtp_visit.wait_for(lambda: set(skipped) <= set(a.nacks_received), timeout=2)
    received = rtp_visit.received("B", "A", "video")
    count = len(received.sequence)
    await rtp_visit.wait_for(lambda: len(received.sequence) > count + 30)

    assert peer_a.stats()["nacks_sent"] >= 1
    ordered = sorted(received.sequence, key=lambda n: sequence_delta(n, received.sequence[0]))
    assert continuous(ordered), "the repaired packets did not fill the subscriber's gaps"


async def test_an_rtx_probe_carrying_a_lost_packet_is_forwarded_once(rtp_visit) -> None:
    """Chromium probes bandwidth by resending recent packets as RTX. One may carry a packet
    lost on the way before the relay even saw the gap: it must be forwarded as the
    original (else the subscriber waits for it until its decoder gives up, 3 s). A probe
    carrying a packet the relay has must not reach the subscriber twice."""
    a, _ = await rtp_visit.join("A")
    await rtp_visit.join("B")
    received = rtp_visit.received("B", "A", "video")
    await rtp_visit.wait_for(lambda: received.frames >= 10)
    loop = asyncio.get_running_loop()
    lost: list[int] = []

    def lose_a_frame_end(kind: str, sequence: int) -> bool:
        # The last packet of a frame: nothing follows it for 33 ms, so the relay has seen
        # no gap yet when the probe comes.
        if kind == "video" and not lost and a.sent_payloads["video"][-1][0] == sequence:
            history = a.sent_packet(sequence)
            if history is not None and history[1] & 0x80:
                lost.append(sequence)
                loop.call_soon(a.send_rtx, sequence)
                return True
        return False

    a.skip = lose_a_frame_end
    await rtp_visit.wait_for(lambda: bool(lost))
    a.skip = None
    delivered = received.sequence[-1]
    a.send_rtx((a.sent_payloads["video"][-1][0] - 5) & 0xFFFF)  # a probe of a packet B has
    await rtp_visit.wait_for(
        lambda: len(received.sequence) > received.sequence.index(delivered) + 20
    )

    assert continuous(received.sequence), gaps(received.sequence)
    assert received.retransmitted == [], "a probe reached the subscriber as a duplicate"
    assert lost[0] not in a.nacks_received, "the relay NACKed a packet it had"


async def test_packets_as_large_as_a_1400_byte_mtu_get_through(rtp_visit) -> None:
    """GStreamer fills a 1400-byte MTU, and the leg adds a header extension to it."""
    a, _ = await rtp_visit.join("A")
    await rtp_visit.join("B")
    received = rtp_visit.received("B", "A", "video")
    await rtp_visit.wait_for(lambda: received.frames >= 5)
    # A VP8 interframe packet (S=1, PID=0, P=1) filling 1400 bytes with its RTP header.
    payload = bytes([0x10, 0x01]) + bytes(range(256)) * 5 + bytes(1400 - 12 - 8 - 2 - 1280)
    a.send_payload("video", payload, 123_456_789)
    await rtp_visit.wait_for(lambda: payload in received.payloads, timeout=2)


async def test_sender_reports_carry_the_true_counts_and_keep_lip_sync(rtp_visit) -> None:
    await rtp_visit.join("A")
    await rtp_visit.join("B")
    video, audio = (rtp_visit.received("B", "A", kind) for kind in ("video", "audio"))
    await rtp_visit.wait_for(lambda: len(video.reports) >= 3 and len(audio.reports) >= 3, timeout=8)

    for stream in (video, audio):
        # On loopback nothing is lost or reordered: between two SRs, what arrived is exactly
        # what the relay says it sent on the leg. (Before the first, the relay may send a
        # packet or two while B's aiortc still holds the datagrams its DTLS just keyed.)
        first = stream.reports[0]
        assert first.packet_count >= first.packets_received
        for report in stream.reports[1:]:
            assert (
                report.packet_count - first.packet_count
                == report.packets_received - first.packets_received
            )
            assert (
                report.octet_count - first.octet_count
                == report.octets_received - first.octets_received
            )
    # Each leg's SR maps RTP to NTP on its publisher's timeline (A's SRs): the same instant
    # in A's audio and video clocks.
    v, s = video.reports[-1], audio.reports[-1]
    offset_v = v.rtp / 90000 - v.ntp / 2**32
    offset_a = s.rtp / 48000 - s.ntp / 2**32
    assert abs(offset_v - offset_a) < 0.005, (
        f"audio and video SRs disagree by {offset_v - offset_a:.4f} s"
    )
    leg = next(leg for leg in rtp_visit.peers["B"].legs() if leg.kind == "video")
    assert leg.sent.packets >= video.reports[-1].packet_count


async def test_transport_cc_feedback_reports_every_packet_the_relay_received(rtp_visit) -> None:
    a, _ = await rtp_visit.join("A", transport_cc=True)
    await rtp_visit.join("B")
    answer = rtp_visit.peers["A"].connection.localDescription.sdp
    assert "transport-wide-cc" in answer and "transport-cc" in answer.split("transport-wide-cc")[1]

    def reported() -> dict[int, int | None]:
        statuses: dict[int, int | None] = {}
        for feedback in a.feedback:
            for sequence, arrival in feedback.arrivals():
                if arrival is not None or sequence not in statuses:
                    statuses[sequence] = arrival
        return statuses

    await rtp_visit.wait_for(lambda: len(a.feedback) >= 10 and len(reported()) >= 150, timeout=8)
    reported = reported()
    received = [s for s, arrival in reported.items() if arrival is not None]
    assert len(received) >= 100
    # From the first number the relay saw (a few may precede its packet path, at DTLS time).
    sent = [s for s in a.transport_sent if min(reported) <= s <= max(received)]
    missing = [s for s in sent if reported.get(s) is None]
    assert missing == [], f"{len(missing)} packets reported lost on a lossless loopback"
    stats = rtp_visit.peers["A"].stats()
    assert stats["transport_feedback_sent"] >= 10


async def test_a_recorders_tap_gets_every_packet_of_a_track_and_its_sender_reports(
    rtp_visit, tmp_path
) -> None:
    """The tap is relay.recorder's TrackTap: what the publisher sent, padding too, and SRs."""
    from relay.recorder import Recorder

    a, peer_a = await rtp_visit.join("A")
    await rtp_visit.join("B")
    uptrack = peer_a.uptrack("video")
    # The relay knows the payload type from the SDP; A sends once its own DTLS is up.
    await rtp_visit.wait_for(lambda: uptrack.payload_type is not None and a.sent_payloads["video"])
    recorder = Recorder(tmp_path, "V1", "social")
    tap = recorder.track("A", "video", "VP8", uptrack.clock_rate, uptrack.payload_type)
    tapped: list[tuple[bytes, int]] = []
    reports: list[tuple[int, int, int, int]] = []

    class Both:
        def __call__(self, packet: bytes, arrival_us: int) -> None:
            tapped.append((bytes(packet), arrival_us))
            tap(packet, arrival_us)

        def sender_report(self, ssrc: int, ntp: int, rtp: int, arrival_us: int) -> None:
            reports.append((ssrc, ntp, rtp, arrival_us))
            tap.sender_report(ssrc, ntp, rtp, arrival_us)

    remove = peer_a.add_tap("video", Both())
    probes = a.send_padding(2)
    await rtp_visit.wait_for(lambda: len(tapped) >= 40 and reports, timeout=5)
    remove()
    count = len(tapped)
    await asyncio.sleep(0.2)
    status = await recorder.close()

    assert len(tapped) == count, "the tap kept receiving after its removal"
    sent = {sequence: payload for sequence, payload in a.sent_payloads["video"]}
    numbers = [parse_header(packet).sequence_number for packet, _ in tapped]
    assert set(probes) <= set(numbers), "padding-only probes were not tapped"
    for (packet, arrival_us), number in zip(tapped, numbers, strict=True):
        header = parse_header(packet)
        assert header.ssrc == a.sent_ssrc("video") and arrival_us > 0
        assert number in probes or packet[header.payload_start : header.payload_end] == sent[number]
    assert reports[0][0] == a.sent_ssrc("video")
    assert status.complete and status.packets_written >= count

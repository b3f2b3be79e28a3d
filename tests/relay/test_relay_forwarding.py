"""Media crosses the relay between real aiortc peers, undecoded."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCSessionDescription

from relay import aiortc_internals

pytestmark = pytest.mark.asyncio


async def test_two_participants_receive_each_others_video_and_audio(visit) -> None:
    a, _ = await visit.join("A")
    b, _ = await visit.join("B")

    await visit.wait_for(
        lambda: (
            visit.everyone_gets_everyone("video", 15) and visit.everyone_gets_everyone("audio", 15)
        )
    )

    assert a.received("B", "video").size == visit.frame_size
    assert b.received("A", "video").size == visit.frame_size


@pytest.mark.parametrize("participants", [3, 5])
async def test_everyone_receives_everyone(visit, participants: int) -> None:
    for index in range(participants):
        await visit.join(f"P{index}")

    await visit.wait_for(
        lambda: (
            visit.everyone_gets_everyone("video", 5) and visit.everyone_gets_everyone("audio", 5)
        ),
        timeout=10,
    )
    for peer in visit.peers.values():
        assert peer.stats()["subscriptions"] == 2 * (participants - 1)


async def test_msid_stream_id_is_the_publisher_id(visit) -> None:
    a, _ = await visit.join("A")
    b, _ = await visit.join("B")
    c, _ = await visit.join("C")

    for client in (a, b, c):
        streams = {stream for stream, _ in client.stream_of().values()}
        others = {"A", "B", "C"} - {client.name}
        assert streams == others
        kinds = sorted(kind for stream, kind in client.stream_of().values() if stream in others)
        assert kinds == ["audio", "audio", "video", "video"]


async def test_late_joiner_gets_first_video_frame_within_a_second(visit) -> None:
    await visit.join("A")
    await visit.join("B")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 30))
    await asyncio.sleep(1.0)  # the publishers' opening keyframes are long gone
    requests_before = {
        name: visit.peers[name].stats()["keyframe_requests_forwarded"] for name in "AB"
    }

    c, _ = await visit.join("C")
    await visit.wait_for(
        lambda: c.received("A", "video").frames > 0 and c.received("B", "video").frames > 0,
        timeout=3,
    )

    # Measured from the moment C's client holds the forwarded tracks (the
    # joining round trips themselves are slow in this one loaded process).
    # aiortc's publishers send a keyframe only every 3000 frames: without
    # the PLI forwarded upstream, C would see nothing for many seconds.
    tracks_ready = visit.negotiated_at["C"]
    for publisher in ("A", "B"):
        first = c.received(publisher, "video").first_at
        assert first is not None
        assert first - tracks_ready < 1.0, (
            f"first frame from {publisher} after {first - tracks_ready:.3f} s"
        )
        assert (
            visit.peers[publisher].stats()["keyframe_requests_forwarded"]
            > requests_before[publisher]
        )


async def test_relay_never_decodes_nor_encodes(visit) -> None:
    await visit.join("A")
    await visit.join("B")
    await visit.join("C")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 30))

    for peer in visit.peers.values():
        stats = peer.stats()
        assert stats["subscriptions"] == 4 and stats["legs_live"] == 4
        assert stats["video_encoders"] == 0, "a server sender opened a video encoder"
        assert stats["decoders_running"] == 0, "a server receiver runs a decoder"
        assert stats["packets_forwarded"] > 0


async def test_no_decoded_frame_ever_reaches_a_server_receiver(visit) -> None:
    await visit.join("A")
    await visit.join("B")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 30))

    receivers = [
        t.receiver
        for peer in visit.peers.values()
        for t in peer.connection.getTransceivers()
        if t.receiver.track is not None
    ]
    assert len(receivers) == 4
    for receiver in receivers:
        assert aiortc_internals.decoded_frames_queued(receiver) == 0


async def test_stop_forwarding_is_synchronous(visit) -> None:
    a, peer_a = await visit.join("A")
    b, _ = await visit.join("B")
    c, _ = await visit.join("C")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 10))
    from_a = visit.legs("B", "A", "video") + visit.legs("C", "A", "audio")
    to_a = visit.legs("A", "B", "video") + visit.legs("A", "C", "audio")
    b_to_c = visit.legs("C", "B", "video")
    assert len(from_a) == len(to_a) == 2 and len(b_to_c) == 1

    peer_a.stop_forwarding()
    # Synchronous: from here on the relay sends nothing from or to A.
    sent_from_a = visit.packets_sent(from_a)
    sent_to_a = visit.packets_sent(to_a)
    received_from_a = peer_a.stats()["packets_received"]
    still = visit.packets_sent(b_to_c)
    await asyncio.sleep(0.5)

    assert visit.packets_sent(from_a) == sent_from_a
    assert visit.packets_sent(to_a) == sent_to_a
    assert peer_a.stats()["packets_received"] == received_from_a
    assert peer_a.stats()["forwarding"] is False
    assert visit.packets_sent(b_to_c) > still, "the rest of the visit goes on"

    # What B's client sees: nothing from A once the last packets landed.
    await asyncio.sleep(0.2)
    landed = await b.packets_from("A", "video") + await b.packets_from("A", "audio")
    await asyncio.sleep(0.5)
    assert await b.packets_from("A", "video") + await b.packets_from("A", "audio") == landed


async def test_set_video_off_stops_video_both_ways_and_keeps_audio(visit) -> None:
    a, peer_a = await visit.join("A")
    b, _ = await visit.join("B")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 10))
    video = visit.legs("B", "A", "video") + visit.legs("A", "B", "video")
    audio_to_b, audio_to_a = visit.legs("B", "A", "audio"), visit.legs("A", "B", "audio")

    peer_a.set_video(False)
    video_sent = visit.packets_sent(video)
    audio_sent = (visit.packets_sent(audio_to_b), visit.packets_sent(audio_to_a))
    await asyncio.sleep(0.5)

    assert visit.packets_sent(video) == video_sent, "video went on"
    assert visit.packets_sent(audio_to_b) > audio_sent[0]
    assert visit.packets_sent(audio_to_a) > audio_sent[1]
    assert peer_a.stats()["video"] is False
    audio = (b.received("A", "audio").frames, a.received("B", "audio").frames)
    await visit.wait_for(
        lambda: (
            b.received("A", "audio").frames > audio[0] + 5
            and a.received("B", "audio").frames > audio[1] + 5
        )
    )

    peer_a.set_video(True)
    frames = (b.received("A", "video").frames, a.received("B", "video").frames)
    took = await visit.wait_for(
        lambda: (
            b.received("A", "video").frames > frames[0] + 5
            and a.received("B", "video").frames > frames[1] + 5
        )
    )
    assert took < 3, f"video took {took:.2f} s to come back"


async def test_hold_stops_all_media_both_ways_until_released(visit) -> None:
    """A minor without their guardian: nothing from or to the held peer, the rest of the room
    goes on; released, audio and video come back (video at a requested keyframe), and a
    video turned off meanwhile stays off."""
    a, peer_a = await visit.join("A")
    b, _ = await visit.join("B")
    c, _ = await visit.join("C")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 10))
    legs_of_a = [
        leg
        for kind in ("audio", "video")
        for leg in visit.legs("B", "A", kind) + visit.legs("A", "B", kind)
        + visit.legs("C", "A", kind) + visit.legs("A", "C", kind)
    ]  # fmt: skip
    b_to_c = visit.legs("C", "B", "video")

    peer_a.hold(True)
    sent, still = visit.packets_sent(legs_of_a), visit.packets_sent(b_to_c)
    await asyncio.sleep(0.5)
    assert visit.packets_sent(legs_of_a) == sent, "media went on to or from the held peer"
    assert visit.packets_sent(b_to_c) > still, "the rest of the visit goes on"
    assert peer_a.stats()["held"] is True and peer_a.stats()["forwarding"] is True

    peer_a.hold(False)
    frames = (b.received("A", "video").frames, a.received("C", "audio").frames)
    took = await visit.wait_for(
        lambda: (
            b.received("A", "video").frames > frames[0] + 5
            and a.received("C", "audio").frames > frames[1] + 5
        )
    )
    assert took < 3, f"media took {took:.2f} s to come back"

    peer_a.set_video(False)
    peer_a.hold(True)
    peer_a.hold(False)
    video = visit.legs("B", "A", "video") + visit.legs("A", "B", "video")
    before = visit.packets_sent(video)
    await asyncio.sleep(0.5)
    assert visit.packets_sent(video) == before, "a hold released turned video back on"


async def test_receive_only_monitor_gets_everyone_and_sends_nothing(visit) -> None:
    a, _ = await visit.join("A")
    b, _ = await visit.join("B")
    monitor, peer_m = await visit.join("M", publish=False)
    await visit.wait_for(
        lambda: (
            monitor.received("A", "video").frames > 5 and monitor.received("B", "video").frames > 5
        )
    )

    assert "M" not in {stream for stream, _ in a.stream_of().values()}
    assert "M" not in {stream for stream, _ in b.stream_of().values()}
    assert peer_m.published_kinds() == []
    assert peer_m.stats()["packets_received"] == 0


async def test_leaving_peer_is_unwired_and_others_renegotiate(visit) -> None:
    a, _ = await visit.join("A")
    await visit.join("B")
    c, _ = await visit.join("C")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 5))
    from_b = visit.legs("A", "B", "video") + visit.legs("C", "B", "audio")

    await visit.leave("B")
    sent = visit.packets_sent(from_b)
    await asyncio.sleep(0.4)

    assert visit.packets_sent(from_b) == sent
    assert [p.peer_id for p in visit.room.peers] == ["A", "C"]
    # A (first in) got B and C on m-lines of the server's offers; C's answer carried A on
    # C's own m-lines and B came on a server offer: B's m-lines are now inactive in both.
    assert directions(a) == ["recvonly"] * 2 + ["inactive"] * 2 + ["sendonly"] * 2
    assert directions(c) == ["sendrecv"] * 2 + ["inactive"] * 2
    frames = a.received("C", "video").frames
    await visit.wait_for(lambda: a.received("C", "video").frames > frames + 5)


def directions(client) -> list[str]:  # type: ignore[no-untyped-def]
    """The direction of each m-line of the relay's latest description to ``client``."""
    found = []
    for section in client.pc.remoteDescription.sdp.split("\r\nm=")[1:]:
        lines = section.splitlines()
        found += [line[2:] for line in lines if line[2:] in DIRECTIONS and line.startswith("a=")]
    return found


DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


async def test_joiner_gets_the_first_publisher_in_its_answer_and_needs_no_server_offer(
    visit,
) -> None:
    await visit.join("A")
    b, peer_b = await visit.join("B")

    assert b.pc.remoteDescription.type == "answer"
    assert directions(b) == ["sendrecv", "sendrecv"]
    assert sorted(b.stream_of().values()) == [("A", "audio"), ("A", "video")]
    assert not peer_b.offer_needed and not visit.peers["A"].offer_needed  # A's offer answered
    await visit.wait_for(
        lambda: (
            visit.everyone_gets_everyone("video", 5) and visit.everyone_gets_everyone("audio", 5)
        )
    )
    assert b.pc.remoteDescription.type == "answer"  # still: no server offer reached B


async def test_a_carried_publisher_that_leaves_takes_no_offer_and_comes_back_elsewhere(
    visit,
) -> None:
    await visit.join("A")
    b, peer_b = await visit.join("B")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 5))
    carried = visit.legs("B", "A", "video") + visit.legs("B", "A", "audio")

    await visit.leave("A")
    assert not peer_b.offer_needed and b.pc.remoteDescription.type == "answer"
    assert all(not leg.live for leg in carried)
    await visit.join("A")  # back: on new m-lines of a server offer, B's own stay as they were

    assert b.pc.remoteDescription.type == "offer"
    assert directions(b) == ["sendrecv", "sendrecv", "sendonly", "sendonly"]
    frames = b.received("A", "video").frames
    await visit.wait_for(lambda: b.received("A", "video").frames > frames + 5)


async def test_client_re_offer_is_answered_and_media_continues(visit) -> None:
    a, peer_a = await visit.join("A")
    b, _ = await visit.join("B")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 5))

    await a.pc.setLocalDescription(await a.pc.createOffer())
    answer = await peer_a.accept_offer(a.pc.localDescription.sdp)
    await a.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    frames = b.received("A", "video").frames
    await visit.wait_for(lambda: b.received("A", "video").frames > frames + 10)


async def test_h264_visit_end_to_end(h264_visit) -> None:
    a, _ = await h264_visit.join("A")
    b, _ = await h264_visit.join("B")

    await h264_visit.wait_for(
        lambda: (
            h264_visit.everyone_gets_everyone("video", 15)
            and h264_visit.everyone_gets_everyone("audio", 15)
        )
    )
    assert b.received("A", "video").size == h264_visit.frame_size
    for client in (a, b):
        for section in client.pc.remoteDescription.sdp.split("m=")[1:]:
            if section.startswith("video"):
                assert "H264/90000" in section and "VP8" not in section
                assert "profile-level-id=42e01f" in section
                assert "packetization-mode=1" in section


async def test_stats_count_per_peer_and_relay_wide(visit) -> None:
    await visit.join("A")
    await visit.join("B")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 20))

    a, b = visit.peers["A"].stats(), visit.peers["B"].stats()
    for stats in (a, b):
        assert stats["packets_received"] > 0 and stats["bytes_received"] > 0
        assert stats["packets_forwarded"] > 0 and stats["bytes_forwarded"] > 0
        assert isinstance(stats["keyframe_requests_forwarded"], int)
    totals = visit.totals.as_dict()
    assert totals["packets_forwarded"] >= a["packets_forwarded"] + b["packets_forwarded"]
    room = visit.room.stats()
    assert room["peers"] == 2 and room["packets_received"] >= a["packets_received"]


async def test_subscriber_keyframe_requests_reach_the_publisher_rate_limited(visit) -> None:
    await visit.join("A")
    b, _ = await visit.join("B")
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 10))
    await asyncio.sleep(0.6)  # out of the rate limiter's window
    receiver = next(
        t.receiver
        for t in b.pc.getTransceivers()
        if t.receiver.track is not None and b.stream_of().get(t.receiver.track.id) == ("A", "video")
    )
    before = visit.peers["A"].stats()["keyframe_requests_forwarded"]

    for _ in range(10):  # a PLI storm from B's client
        request = aiortc_internals.request_picture_loss(receiver)
        assert request is not None
        await request
    await visit.wait_for(
        lambda: visit.peers["A"].stats()["keyframe_requests_forwarded"] > before, timeout=2
    )
    await asyncio.sleep(0.6)

    forwarded = visit.peers["A"].stats()["keyframe_requests_forwarded"] - before
    assert 1 <= forwarded <= 2, f"{forwarded} keyframe requests reached A"

"""Offers, answers and candidates the relay must accept or refuse cleanly."""

from __future__ import annotations

import asyncio
import logging

import psutil
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from relay import RelayPeer, Room, UnsupportedOffer, aiortc_internals, pin_ice_addresses
from relay.ice import pinned_ice_addresses, rtc_configuration
from relay.negotiation import without_mdns_candidates

pytestmark = pytest.mark.asyncio


async def client_offer(video_codecs: list[str] | None = None, h264_profile: str = "42e01f") -> str:
    """An aiortc client's offer, its video restricted to ``video_codecs``."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    video = pc.addTransceiver("video")
    if video_codecs is not None:
        video.setCodecPreferences(
            [
                c
                for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType.split("/")[1] in video_codecs
                and c.parameters.get("profile-level-id", h264_profile) == h264_profile
            ]
        )
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_vp9_only_offer_is_unsupported() -> None:
    offer = (await client_offer(["VP8"])).replace("VP8/90000", "VP9/90000")
    peer = RelayPeer("A", ice_servers=[])
    with pytest.raises(UnsupportedOffer, match="VP8"):
        await peer.accept_offer(offer)
    await peer.close()


async def test_h264_main_profile_only_offer_is_unsupported_in_an_h264_visit() -> None:
    offer = (await client_offer(["H264"])).replace(
        "profile-level-id=42e01f", "profile-level-id=4d001f"
    )
    peer = RelayPeer("A", codec="H264", ice_servers=[])
    with pytest.raises(UnsupportedOffer, match="H264"):
        await peer.accept_offer(offer)
    await peer.close()


async def test_h264_packetization_mode_0_only_is_unsupported() -> None:
    offer = (await client_offer(["H264"])).replace("packetization-mode=1", "packetization-mode=0")
    peer = RelayPeer("A", codec="H264", ice_servers=[])
    with pytest.raises(UnsupportedOffer):
        await peer.accept_offer(offer)
    await peer.close()


async def test_vp8_offer_is_unsupported_in_an_h264_visit_and_vice_versa() -> None:
    h264_peer = RelayPeer("A", codec="H264", ice_servers=[])
    with pytest.raises(UnsupportedOffer):
        await h264_peer.accept_offer(await client_offer(["VP8"]))
    vp8_peer = RelayPeer("B", codec="VP8", ice_servers=[])
    with pytest.raises(UnsupportedOffer):
        await vp8_peer.accept_offer(await client_offer(["H264"]))
    await h264_peer.close()
    await vp8_peer.close()


async def test_offer_without_opus_is_unsupported() -> None:
    offer = await client_offer(["VP8"])
    offer = offer.replace("opus/48000/2", "telephone-event/8000")
    peer = RelayPeer("A", ice_servers=[])
    with pytest.raises(UnsupportedOffer, match="Opus"):
        await peer.accept_offer(offer)
    await peer.close()


GARBAGE = [
    "",
    "   ",
    "hello",
    "v=0\r\n",
    "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=mid:0\r\n",
    "\x00\xff\ufffd" * 50,
    "m=" * 1000,
    "a=rtpmap:x y/z\r\n" * 10,
    None,
    42,
    {"sdp": "v=0"},
]


@pytest.mark.parametrize("sdp", GARBAGE, ids=range(len(GARBAGE)))
async def test_garbage_offer_is_unsupported_and_leaves_the_peer_usable(sdp: object) -> None:
    peer = RelayPeer("A", ice_servers=[])
    with pytest.raises(UnsupportedOffer):
        await peer.accept_offer(sdp)  # type: ignore[arg-type]
    answer = await peer.accept_offer(await client_offer())
    assert "a=recvonly" in answer and "VP8/90000" in answer and "H264" not in answer
    await peer.close()


async def test_mangled_real_offers_never_leak_other_exceptions() -> None:
    offer = await client_offer()
    lines = offer.splitlines()
    peer_count = 0
    for index in range(len(lines)):
        mangled = "\r\n".join(lines[:index] + [lines[index][::-1]] + lines[index + 1 :]) + "\r\n"
        peer = RelayPeer(f"P{index}", ice_servers=[])
        peer_count += 1
        try:
            await peer.accept_offer(mangled)
        except UnsupportedOffer:
            pass
        finally:
            await peer.close()
    assert peer_count > 5


async def test_answer_refusals() -> None:
    peer = RelayPeer("A", ice_servers=[])
    with pytest.raises(UnsupportedOffer, match="no server offer"):
        await peer.accept_answer("v=0\r\n")
    await peer.accept_offer(await client_offer())
    await peer.create_offer()
    with pytest.raises(UnsupportedOffer):
        await peer.accept_answer("garbage")
    await peer.close()


async def test_a_client_offer_during_a_pending_server_offer_is_refused() -> None:
    peer = RelayPeer("A", ice_servers=[])
    offer = await client_offer()
    await peer.accept_offer(offer)
    await peer.create_offer()
    with pytest.raises(UnsupportedOffer, match="crossed"):
        await peer.accept_offer(offer)
    await peer.close()


async def test_closed_peer_refuses_offers() -> None:
    peer = RelayPeer("A", ice_servers=[])
    await peer.close()
    await peer.close()  # idempotent
    with pytest.raises(UnsupportedOffer):
        await peer.accept_offer(await client_offer())
    assert peer.connection_state == "closed"


@pytest.mark.parametrize(
    "candidate, mid, index",
    [
        ("garbage", "0", 0),
        ("candidate:1 1 udp", "0", 0),
        ("candidate:1 x udp 2122260223 127.0.0.1 5000 typ host", "0", 0),
        ("candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", None, None),
        (None, "0", 0),
        ("candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", 7, 0),
        ("candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "0", "zero"),
    ],
)
async def test_bad_candidates_raise_value_error(
    candidate: object, mid: object, index: object
) -> None:
    peer = RelayPeer("A", ice_servers=[])
    await peer.accept_offer(await client_offer())
    with pytest.raises(ValueError):
        await peer.add_candidate(candidate, mid, index)  # type: ignore[arg-type]
    await peer.close()


async def test_good_mdns_and_empty_candidates_are_accepted() -> None:
    peer = RelayPeer("A", ice_servers=[])
    await peer.accept_offer(await client_offer())
    await peer.add_candidate("candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "0", 0)
    await peer.add_candidate("candidate:2 1 udp 2122260223 a1b2c3.local 5001 typ host", "0", None)
    await peer.add_candidate("", "0", 0)
    await asyncio.sleep(0.05)
    assert not any(c.laddr.port == 5353 for c in psutil.Process().net_connections(kind="udp"))
    await peer.close()


async def test_offer_with_mdns_candidates_connects_without_binding_mdns(visit) -> None:
    await visit.join("A")
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("video", direction="recvonly")
    await client.setLocalDescription(await client.createOffer())
    mdns = "a=candidate:9 1 udp 2122260223 f00d.local 5002 typ host\r\n"
    sdp = client.localDescription.sdp.replace("a=candidate:", mdns + "a=candidate:", 1)
    sdp += "a=end-of-candidates\r\n"
    assert "f00d.local" in sdp and "f00d.local" not in without_mdns_candidates(sdp)

    monitor = RelayPeer("M", ice_servers=[], publish=False)
    answer = await monitor.accept_offer(sdp)
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await visit.wait_for(lambda: monitor.connection_state == "connected")

    assert not any(c.laddr.port == 5353 for c in psutil.Process().net_connections(kind="udp"))
    await monitor.close()
    await client.close()


async def test_server_candidates_use_only_the_pinned_address() -> None:
    assert pinned_ice_addresses() == ["127.0.0.1"]
    assert aiortc_internals.host_addresses() == ["127.0.0.1"]
    peer = RelayPeer("A", ice_servers=[])
    answer = await peer.accept_offer(await client_offer())
    candidates = [line for line in answer.splitlines() if line.startswith("a=candidate:")]
    assert candidates and all(line.split()[4] == "127.0.0.1" for line in candidates)
    await peer.close()


async def test_pin_validation_and_unpinning() -> None:
    with pytest.raises(ValueError):
        pin_ice_addresses([])
    with pytest.raises(ValueError):
        pin_ice_addresses(["not-an-address"])
    pin_ice_addresses(["127.0.0.1", "::1"])
    assert aiortc_internals.host_addresses(True, False) == ["127.0.0.1"]
    assert aiortc_internals.host_addresses(False, True) == ["::1"]
    pin_ice_addresses(None)
    assert pinned_ice_addresses() is None
    assert "127.0.0.1" not in aiortc_internals.host_addresses()
    pin_ice_addresses(["127.0.0.1"])


async def test_ice_servers_become_the_rtc_configuration() -> None:
    config = rtc_configuration(
        [
            {"urls": "stun:127.0.0.1:3478"},
            {"urls": ["turn:127.0.0.1"], "username": "u", "credential": "p"},
        ]
    )
    assert [s.urls for s in config.iceServers] == ["stun:127.0.0.1:3478", ["turn:127.0.0.1"]]
    assert config.iceServers[1].username == "u"
    assert rtc_configuration(None).iceServers == []
    for bad in ([{"url": "stun:x"}], ["stun:x"], [{"urls": 5}]):
        with pytest.raises(ValueError):
            rtc_configuration(bad)  # type: ignore[arg-type]


async def test_codec_names_and_room_codec_checks() -> None:
    with pytest.raises(ValueError):
        RelayPeer("A", codec="VP9", ice_servers=[])
    room = Room("V1", codec="h264")
    vp8 = RelayPeer("A", codec="VP8", ice_servers=[])
    with pytest.raises(ValueError):
        room.add(vp8)
    h264 = RelayPeer("B", codec="H264", ice_servers=[])
    assert room.add(h264) == []
    assert room.add(h264) == []
    with pytest.raises(ValueError, match="already"):
        room.add(RelayPeer("B", codec="H264", ice_servers=[]))
    assert room.remove(vp8) == []
    for peer in (vp8, h264):
        await peer.close()


async def test_an_aiortc_without_the_packet_path_refuses_offers_loudly(monkeypatch, caplog) -> None:
    """No transcoding fallback: a changed aiortc is an error the client is told about."""

    def unavailable(*args: object) -> None:
        raise aiortc_internals.AiortcInternalsChanged("simulated aiortc change")

    monkeypatch.setattr(aiortc_internals, "take_over_receiver", unavailable)
    peer = RelayPeer("A", ice_servers=[])
    with caplog.at_level(logging.ERROR, logger="relay.peer"):
        with pytest.raises(UnsupportedOffer, match="cannot forward media"):
            await peer.accept_offer(await client_offer())
    assert "simulated aiortc change" in caplog.text
    await peer.close()


async def test_answer_carries_only_the_visit_codecs() -> None:
    peer = RelayPeer("A", codec="H264", ice_servers=[])
    answer = await peer.accept_offer(await client_offer())
    video = answer.split("m=video")[1]
    assert "H264/90000" in video and "VP8" not in video and "profile-level-id=42e01f" in video
    audio = answer.split("m=audio")[1].split("m=video")[0]
    assert "opus/48000/2" in audio and "PCMU" not in audio
    await peer.close()

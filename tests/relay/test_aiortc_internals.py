"""Fails loudly when aiortc's private internals change under the relay.

Every private name ``relay/aiortc_internals.py`` relies on is checked for
presence and, with two real aiortc peers on 127.0.0.1, for the behaviour the
relay needs from it. A failure here means: update relay/aiortc_internals.py
(or pin aiortc back to >=1.16,<1.17) before shipping.
"""

from __future__ import annotations

import asyncio
import fractions
import inspect

import aioice
import aiortc
import av
import pytest
from aiortc import (
    AudioStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)

from relay import aiortc_internals as internals
from relay.codec import VisitCodec

pytestmark = pytest.mark.asyncio

UPDATE = "aiortc internals changed: update relay/aiortc_internals.py"


class SmallVideo(VideoStreamTrack):
    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(64, 48, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(pts // 3000 * 5) & 0xFF]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        return frame


async def test_aiortc_version_is_the_supported_one() -> None:
    assert internals.version_supported(), (
        f"aiortc {aiortc.__version__} is installed; relay/aiortc_internals.py was "
        f"written for {internals.SUPPORTED_AIORTC}x. Re-check every private name it uses."
    )


async def test_private_names_exist() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("video")
    receiver, sender = transceiver.receiver, transceiver.sender
    for name in (
        internals.RECEIVER_DECODER_QUEUE,
        internals.RECEIVER_DECODER_THREAD,
        internals.RECEIVER_STARTED,
        internals.RECEIVER_SEND_PLI,
    ):
        assert hasattr(receiver, name), f"{UPDATE}: RTCRtpReceiver has no {name}"
    for name in (
        internals.SENDER_SEND_KEYFRAME,
        internals.SENDER_HANDLE_RTCP,
        internals.SENDER_STREAM_ID,
        internals.SENDER_RTP_HISTORY,
        internals.SENDER_ENCODER,
    ):
        assert hasattr(sender, name), f"{UPDATE}: RTCRtpSender has no {name}"
    assert "_send_keyframe" in inspect.getsource(RTCRtpSender._handle_rtcp_packet), (
        f"{UPDATE}: RTCRtpSender no longer answers PLI/FIR through _send_keyframe"
    )
    assert "decoder_queue.put(" in inspect.getsource(RTCRtpReceiver._handle_rtp_packet), (
        f"{UPDATE}: RTCRtpReceiver no longer queues encoded frames for a decoder"
    )
    assert "encoder.pack(" in inspect.getsource(RTCRtpSender._next_encoded_frame), (
        f"{UPDATE}: RTCRtpSender no longer packs pre-encoded packets"
    )
    assert callable(getattr(aioice.ice, "get_host_addresses", None)), (
        f"{UPDATE}: aioice.ice.get_host_addresses is gone"
    )
    await pc.close()


async def connected_pair() -> tuple[RTCPeerConnection, RTCPeerConnection, list]:
    """A publishing aiortc peer and a receiving one whose video is hooked."""
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    publisher.addTrack(AudioStreamTrack())
    publisher.addTrack(SmallVideo())
    receiving = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiving.addTransceiver("audio", direction="recvonly")
    video = receiving.addTransceiver("video", direction="recvonly")
    video.setCodecPreferences(VisitCodec("VP8").preferences("video"))
    frames: list = []
    internals.install_encoded_frame_sink(
        video.receiver, lambda codec, data, ts: frames.append((codec, data, ts)), lambda: None
    )
    await publisher.setLocalDescription(await publisher.createOffer())
    await receiving.setRemoteDescription(publisher.localDescription)
    await receiving.setLocalDescription(await receiving.createAnswer())
    await publisher.setRemoteDescription(receiving.localDescription)
    for _ in range(300):
        if len(frames) >= 10:
            break
        await asyncio.sleep(0.01)
    return publisher, receiving, frames


async def test_encoded_frames_bypass_the_decoder_and_keyframe_requests_cross() -> None:
    publisher, receiving, frames = await connected_pair()
    try:
        assert len(frames) >= 10, f"{UPDATE}: no encoded frames reached the sink"
        codec, data, timestamp = frames[0]
        assert codec.mimeType == "video/VP8" and isinstance(data, bytes)
        assert VisitCodec("VP8").is_keyframe(data), "the first frame should be a keyframe"
        timestamps = [ts for _, _, ts in frames]
        assert timestamps == sorted(timestamps) and timestamps[0] == 0
        video_receiver = next(t.receiver for t in receiving.getTransceivers() if t.kind == "video")
        assert not internals.decoder_running(video_receiver), f"{UPDATE}: decoder thread runs"
        assert video_receiver.track._queue.qsize() <= 1, f"{UPDATE}: frames were decoded"

        # A PLI sent with request_picture_loss reaches the publisher's sender,
        # whose keyframe requests route_keyframe_requests redirects.
        video_sender = next(t.sender for t in publisher.getTransceivers() if t.kind == "video")
        requested = asyncio.Event()
        internals.route_keyframe_requests(video_sender, requested.set)
        await internals.request_picture_loss(video_receiver)
        await asyncio.wait_for(requested.wait(), 2)

        # The publisher really encoded (so it has a context) and kept history.
        assert internals.encoding_context(video_sender) is not None
        internals.forget_sent_packets(video_sender)
        assert getattr(video_sender, internals.SENDER_RTP_HISTORY) == {}
    finally:
        await publisher.close()
        await receiving.close()


async def test_sink_cannot_be_installed_on_a_started_receiver() -> None:
    publisher, receiving, frames = await connected_pair()
    try:
        audio = next(t.receiver for t in receiving.getTransceivers() if t.kind == "audio")
        with pytest.raises(RuntimeError):
            internals.install_encoded_frame_sink(audio, lambda *a: None, lambda: None)
    finally:
        await publisher.close()
        await receiving.close()


async def test_sender_packs_av_packets_without_an_encoding_context() -> None:
    """The passthrough send path: a track yielding av.Packet is only packed."""

    class Forwarded(VideoStreamTrack):
        def __init__(self, packets: list[av.Packet]) -> None:
            super().__init__()
            self.packets = packets

        async def recv(self) -> av.Packet:  # type: ignore[override]
            pts, _ = await self.next_timestamp()
            packet = self.packets[min(pts // 3000, len(self.packets) - 1)]
            packet.pts, packet.time_base = pts, fractions.Fraction(1, 90000)
            return packet

    publisher, receiving, frames = await connected_pair()
    encoded = [av.Packet(data) for _, data, _ in frames[:1]]
    await publisher.close()
    await receiving.close()

    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = server.addTransceiver(Forwarded(encoded), direction="sendonly")
    internals.set_stream_id(transceiver.sender, "publisher-7")
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    received = asyncio.Event()
    client.on("track", lambda track: asyncio.ensure_future(_first(track, received)))
    await server.setLocalDescription(await server.createOffer())
    assert "a=msid:publisher-7 " in server.localDescription.sdp
    await client.setRemoteDescription(server.localDescription)
    await client.setLocalDescription(await client.createAnswer())
    await server.setRemoteDescription(
        RTCSessionDescription(sdp=client.localDescription.sdp, type="answer")
    )
    try:
        await asyncio.wait_for(received.wait(), 3)
        assert internals.encoding_context(transceiver.sender) is None
    finally:
        await server.close()
        await client.close()


async def _first(track: aiortc.MediaStreamTrack, received: asyncio.Event) -> None:
    await track.recv()
    received.set()


async def test_codec_negotiation_helpers() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    pc.addTransceiver("video")
    await pc.setLocalDescription(await pc.createOffer())
    summary = internals.parse_description(pc.localDescription.sdp)
    await pc.close()
    assert [m.kind for m in summary.media] == ["audio", "video"]
    assert summary.bundle == ["0", "1"]
    video = summary.media[1]
    assert video.has_ice_credentials and video.has_fingerprint and video.rtcp_mux
    vp8 = internals.common_codecs("video", video.codecs, VisitCodec("VP8").preferences("video"))
    assert [c.mimeType for c in vp8] == ["video/VP8", "video/rtx"]
    h264 = internals.common_codecs("video", video.codecs, VisitCodec("H264").preferences("video"))
    assert h264[0].parameters["profile-level-id"] == "42e01f"
    vp9 = [c for c in video.codecs if c.mimeType == "video/VP8"]
    for codec in vp9:
        codec.mimeType = "video/VP9"
    assert internals.common_codecs("video", vp9, VisitCodec("VP8").preferences("video")) == []
    with pytest.raises(ValueError):
        internals.parse_description("m=" * 10)
    with pytest.raises(ValueError):
        internals.candidate_from_sdp("1 1 udp")


async def test_host_address_provider_drives_aioice_gathering() -> None:
    internals.set_host_address_provider(lambda ipv4, ipv6: ["127.0.0.1"])
    try:
        connection = aioice.Connection(ice_controlling=True, components=1)
        await connection.gather_candidates()
        hosts = {c.host for c in connection.local_candidates}
        await connection.close()
        assert hosts == {"127.0.0.1"}, f"{UPDATE}: aioice ignored the pinned addresses"
    finally:
        internals.set_host_address_provider(None)
        assert aioice.ice.get_host_addresses is internals.ORIGINAL_GET_HOST_ADDRESSES

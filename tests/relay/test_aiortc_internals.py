"""Fails loudly when aiortc's private internals change under the relay.

Every private name ``relay/aiortc_internals.py`` relies on is checked for
presence and, with two real aiortc peers on 127.0.0.1, for the behaviour the
relay needs from it. A failure here means: update relay/aiortc_internals.py
(or pin aiortc back to >=1.16,<1.17) before shipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import inspect
import struct
import tracemalloc
from typing import Any

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
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtcrtpreceiver import RemoteStreamTrack

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
    assert hasattr(RemoteStreamTrack("video"), internals.REMOTE_TRACK_QUEUE), (
        f"{UPDATE}: RemoteStreamTrack keeps no queue of decoded frames"
    )
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
        assert internals.decoded_frames_queued(video_receiver) == 0, (
            f"{UPDATE}: frames were decoded"
        )

        # A PLI sent with request_picture_loss reaches the publisher's sender,
        # whose keyframe requests route_keyframe_requests redirects.
        video_sender = next(t.sender for t in publisher.getTransceivers() if t.kind == "video")
        requested = asyncio.Event()
        internals.route_keyframe_requests(video_sender, requested.set)
        request = internals.request_picture_loss(video_receiver)
        assert request is not None, f"{UPDATE}: the receiver lists no synchronization source"
        await request
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


# --- RTP numbering of server offers -------------------------------------------

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
# Chromium's numbering (its offers): ids and payload types unlike aiortc's own.
CHROME_IDS = {AUDIO_LEVEL: 1, ABS_SEND_TIME: 2, TRANSPORT_CC: 3, MID: 4}
CHROME_PTS = {"audio/opus": 111, "video/VP8": 96}
CHROME_RTX = {96: 97}


def chrome_numbered(sdp: str) -> str:
    """An aiortc offer renumbered like Chromium's (plus an extension aiortc lacks)."""
    from aiortc import RTCRtpHeaderExtensionParameters
    from aiortc import sdp as aiortc_sdp

    description = aiortc_sdp.SessionDescription.parse(sdp)
    for media in description.media:
        media.rtp.headerExtensions = [
            RTCRtpHeaderExtensionParameters(id=CHROME_IDS[e.uri], uri=e.uri)
            for e in media.rtp.headerExtensions
        ] + [RTCRtpHeaderExtensionParameters(id=CHROME_IDS[TRANSPORT_CC], uri=TRANSPORT_CC)]
        old = {c.payloadType: c for c in media.rtp.codecs}
        for codec in media.rtp.codecs:
            if codec.mimeType.endswith("/rtx"):
                base = CHROME_PTS[old[int(str(codec.parameters["apt"]))].mimeType]
                codec.payloadType, codec.parameters["apt"] = CHROME_RTX[base], base
        for codec in media.rtp.codecs:
            if not codec.mimeType.endswith("/rtx"):
                codec.payloadType = CHROME_PTS[codec.mimeType]
        media.fmt = [c.payloadType for c in media.rtp.codecs]
    return str(description)


def numbering_of(sdp: str) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    """id -> URIs and payload type -> codec names over every m-line of an SDP."""
    ids: dict[int, set[str]] = {}
    pts: dict[int, set[str]] = {}
    for line in sdp.splitlines():
        if line.startswith("a=extmap:"):
            ident, uri = line[len("a=extmap:") :].split()[:2]
            ids.setdefault(int(ident.split("/")[0]), set()).add(uri)
        elif line.startswith("a=rtpmap:"):
            pt, name = line[len("a=rtpmap:") :].split()[:2]
            pts.setdefault(int(pt), set()).add(name.split("/")[0])
    return ids, pts


async def test_server_offers_keep_the_clients_rtp_numbering() -> None:
    """A re-offer renumbered with renumber_offer is applied as written by aiortc.

    aiortc's createOffer writes its own fixed header-extension ids (mid=1,
    audio-level=2, abs-send-time=3) and payload types on every m-line; a
    browser that numbered them otherwise refuses the re-offer (id reassigned
    under BUNDLE) or, for payload types, switches what it sends to numbers
    aiortc's already-started receivers do not know. The relay rewrites the
    offer; this checks that aiortc then starts the new sender with the
    client's numbers (it adopts the answer's) and that media flows both ways.
    """
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for track in (AudioStreamTrack(), SmallVideo()):
        sending = client.addTransceiver(track, direction="sendrecv")
        sending.setCodecPreferences(VisitCodec("VP8").preferences(track.kind))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    received: dict[str, int] = {"server": 0, "client": 0}

    async def count(track: aiortc.MediaStreamTrack, who: str) -> None:
        with contextlib.suppress(aiortc.MediaStreamError):
            while True:
                await track.recv()
                received[who] += 1

    tasks = []
    server.on("track", lambda t: tasks.append(asyncio.ensure_future(count(t, "server"))))
    client.on("track", lambda t: tasks.append(asyncio.ensure_future(count(t, "client"))))
    try:
        await client.setLocalDescription(await client.createOffer())
        client_offer = chrome_numbered(client.localDescription.sdp)
        await client.setLocalDescription(RTCSessionDescription(sdp=client_offer, type="offer"))
        for kind in ("audio", "video"):
            server.addTransceiver(kind, direction="recvonly").setCodecPreferences(
                VisitCodec("VP8").preferences(kind)
            )
        await server.setRemoteDescription(RTCSessionDescription(sdp=client_offer, type="offer"))
        await server.setLocalDescription(await server.createAnswer())
        await client.setRemoteDescription(server.localDescription)

        # The server adds a forwarded video m-line: a re-offer.
        forwarded = server.addTransceiver(SmallVideo(), direction="sendonly")
        forwarded.setCodecPreferences(VisitCodec("VP8").preferences("video"))
        started: list = []
        real_send = forwarded.sender.send

        async def send(parameters: RTCRtpSendParameters) -> None:
            started.append(parameters)
            await real_send(parameters)

        forwarded.sender.send = send  # type: ignore[method-assign]
        plain = (await internals.create_offer(server, None))[0].sdp
        plain_ids, _ = numbering_of("m=video" + plain.rsplit("m=video", 1)[1])
        assert plain_ids.get(1) == {MID}, "aiortc's offers no longer use its fixed ids"
        negotiated_ids, _ = numbering_of(plain.rsplit("m=video", 1)[0])
        assert negotiated_ids == {1: {AUDIO_LEVEL}, 2: {ABS_SEND_TIME}, 4: {MID}}, (
            "a negotiated m-line lost the ids it was negotiated with"
        )
        numbering = internals.rtp_numbering(client_offer)
        offer = (await internals.create_offer(server, numbering))[0].sdp
        assert offer == internals.renumber_offer(plain, numbering)
        ids, pts = numbering_of(offer)
        assert ids == {1: {AUDIO_LEVEL}, 2: {ABS_SEND_TIME}, 4: {MID}}, ids
        assert pts == {111: {"opus"}, 96: {"VP8"}, 97: {"rtx"}}, pts
        assert "a=fmtp:97 apt=96" in offer
        await server.setLocalDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await client.setRemoteDescription(server.localDescription)
        await client.setLocalDescription(await client.createAnswer())
        await server.setRemoteDescription(client.localDescription)
        # aiortc starts the new sender in a task; an offer made before that task
        # runs (the relay's next re-offer) must not change what it starts with.
        await internals.create_offer(server, numbering)
        before = received["server"]

        for _ in range(300):
            if started and received["client"] >= 5 and received["server"] >= before + 5:
                break
            await asyncio.sleep(0.01)
        assert started, f"{UPDATE}: the forwarded sender was never started"
        sent = started[0]
        assert sent.codecs[0].mimeType == "video/VP8" and sent.codecs[0].payloadType == 96, (
            f"{UPDATE}: the sender does not use the answer's payload type"
        )
        assert {e.uri: e.id for e in sent.headerExtensions} == {MID: 4, ABS_SEND_TIME: 2}, (
            f"{UPDATE}: the sender does not use the answer's header-extension ids"
        )
        assert received["client"] >= 5, "the forwarded video did not reach the client"
        assert received["server"] >= before + 5, "the client's media stopped reaching the server"
    finally:
        for task in tasks:
            task.cancel()
        await client.close()
        await server.close()


async def test_renumber_offer_drops_unknown_extensions_and_allocates_free_payload_types() -> None:
    client = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\n"
        "a=extmap:5 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=mid:0\r\na=rtcp-mux\r\n"
        "a=rtpmap:96 G722/8000\r\na=rtpmap:97 opus/48000/2\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
        "a=fingerprint:sha-256 00:11\r\na=setup:actpass\r\n"
    )
    numbering = internals.rtp_numbering(client)
    assert numbering.extensions == {MID: 5}
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    pc.addTransceiver("video")  # VP8, H264 + RTX: the client offered no video
    sdp = (await pc.createOffer()).sdp
    await pc.close()
    renumbered = internals.renumber_offer(sdp, numbering)
    ids, pts = numbering_of(renumbered)
    assert ids == {5: {MID}}, "extensions the client never offered must be dropped"
    assert pts[97] == {"opus"} and pts[96] == {"G722"}, pts  # the client's own numbers
    video = renumbered.split("m=video", 1)[1]
    video_pts = [int(pt) for pt in video.splitlines()[0].split()[2:]]
    assert len(video_pts) == len(set(video_pts)) and not {96, 97} & set(video_pts)
    rtx_lines = [
        line for line in video.splitlines() if line.startswith("a=fmtp:") and "apt=" in line
    ]
    assert rtx_lines and all(int(line.rsplit("apt=", 1)[1]) in video_pts for line in rtx_lines)


# --- DTLS ----------------------------------------------------------------------------------


def rsa_certificate() -> aiortc.RTCCertificate:
    """An RSA-2048 certificate, as GStreamer's DTLS element has (aiortc only makes ECDSA)."""
    from aiortc.rtcdtlstransport import generate_certificate
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return aiortc.RTCCertificate(key=key, cert=generate_certificate(key))  # type: ignore[arg-type]


def with_rsa_certificate(pc: RTCPeerConnection) -> RTCPeerConnection:
    """A foreign peer: ``pc`` presenting an RSA certificate (set before it negotiates) and
    offering both suite families, as OpenSSL's defaults in GStreamer do."""
    assert hasattr(pc, internals.PC_CERTIFICATES), f"{UPDATE}: no per-connection certificates"
    setattr(pc, internals.PC_CERTIFICATES, [rsa_certificate()])
    internals.accept_rsa_and_ecdsa_peers(pc)
    return pc


async def dtls_between(offerer: RTCPeerConnection, answerer: RTCPeerConnection, setup: str) -> str:
    """Negotiate ``offerer`` → ``answerer`` with the offer's ``a=setup`` rewritten to
    ``setup`` (as the answerer sees it); return the answerer's connection state at the end."""
    offerer.addTransceiver("audio")
    await offerer.setLocalDescription(await offerer.createOffer())
    sdp = offerer.localDescription.sdp.replace("a=setup:actpass", f"a=setup:{setup}")
    await answerer.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    if setup == "actpass":
        internals.DtlsRole().choose(answerer, "auto")
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)
    for _ in range(500):
        if answerer.connectionState in ("connected", "failed"):
            break
        await asyncio.sleep(0.01)
    return answerer.connectionState


async def test_the_relays_dtls_meets_rsa_certificates_in_either_role() -> None:
    # The relay as DTLS server (it answers passive): its ECDSA certificate picks the suite.
    relay = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    internals.accept_rsa_and_ecdsa_peers(relay)
    client = with_rsa_certificate(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    try:
        assert await dtls_between(client, relay, "actpass") == "connected"
        assert internals.dtls_role(relay) == "server"
    finally:
        await asyncio.gather(relay.close(), client.close())
    # The relay as DTLS client (the peer insists on being the server): ECDHE-RSA is needed.
    relay = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    internals.accept_rsa_and_ecdsa_peers(relay)
    server = with_rsa_certificate(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    try:
        assert await dtls_between(server, relay, "passive") == "connected"
        assert internals.dtls_role(relay) == "client"
    finally:
        await asyncio.gather(relay.close(), server.close())


async def answer_as_dtls_client(
    answerer: RTCPeerConnection, server: RTCPeerConnection
) -> tuple[internals.DtlsRole, internals.DtlsRole]:
    """``server`` offers insisting on being the DTLS server; ``answerer`` answers as client.
    Returns both sides' DtlsRole (their recorded failures) once the answerer has settled."""
    answerer_role, server_role = internals.DtlsRole(), internals.DtlsRole()
    server.addTransceiver("audio")
    server_role.adopt(server)
    await server.setLocalDescription(await server.createOffer())
    sdp = server.localDescription.sdp.replace("a=setup:actpass", "a=setup:passive")
    answerer.addTransceiver("audio")
    answerer_role.adopt(answerer)
    await answerer.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    await answerer.setLocalDescription(await answerer.createAnswer())
    await server.setRemoteDescription(answerer.localDescription)
    for _ in range(500):
        if answerer.connectionState in ("connected", "failed") and server_role.failure:
            break
        await asyncio.sleep(0.01)
    return answerer_role, server_role


async def test_aiortcs_own_dtls_client_cannot_meet_an_rsa_server() -> None:
    """The control for the test above: what GStreamer kiosks hit before (no shared cipher)."""
    plain = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = with_rsa_certificate(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    try:
        _, server_role = await answer_as_dtls_client(plain, server)
        assert plain.connectionState == "failed"
        assert server_role.failure == "sent handshake failure (no cipher suite both sides accept)"
    finally:
        await asyncio.gather(plain.close(), server.close())


async def test_a_failed_handshake_names_the_alert_the_peer_sent() -> None:
    """A DTLS server that accepts no ECDHE suite (RSA key exchange only): the relay, as
    client, fails and says which alert it received, not an empty ``SSL.Error``."""
    relay = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    internals.accept_rsa_and_ecdsa_peers(relay)
    server = with_rsa_certificate(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    certificate = getattr(server, internals.PC_CERTIFICATES)[0]
    widened = getattr(certificate, internals.CERTIFICATE_SSL_CONTEXT)

    def rsa_key_exchange_only(*args, **kwargs):  # type: ignore[no-untyped-def]
        context = widened(*args, **kwargs)
        context.set_cipher_list(b"AES128-GCM-SHA256")
        return context

    setattr(certificate, internals.CERTIFICATE_SSL_CONTEXT, rsa_key_exchange_only)
    try:
        relay_role, _ = await answer_as_dtls_client(relay, server)
        assert relay.connectionState == "failed"
        assert (
            relay_role.failure == "received handshake failure (no cipher suite both sides accept)"
        )
    finally:
        await asyncio.gather(relay.close(), server.close())


async def test_a_process_certificate_serves_every_connection_and_meets_rsa_peers() -> None:
    """DtlsCertificate: the connections it makes share one certificate (the same fingerprint
    in their descriptions) and one SSL context, aiortc's own name is restored after each
    construction, and its connections still meet RSA peers in either DTLS role."""
    from aiortc import rtcpeerconnection

    made_by_aiortc = rtcpeerconnection.RTCCertificate
    certificates = internals.DtlsCertificate()
    relay, other = (certificates.peer_connection(RTCConfiguration(iceServers=[])) for _ in "ab")
    assert rtcpeerconnection.RTCCertificate is made_by_aiortc
    shared = certificates.current()
    assert getattr(relay, internals.PC_CERTIFICATES) == [shared]
    assert getattr(other, internals.PC_CERTIFICATES) == [shared]
    sha256 = next(f.value for f in shared.getFingerprints() if f.algorithm == "sha-256")
    plain = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    rsa_server = with_rsa_certificate(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    try:
        assert await dtls_between(plain, relay, "actpass") == "connected"  # relay as server
        assert f"a=fingerprint:sha-256 {sha256}" in relay.localDescription.sdp
        assert await dtls_between(rsa_server, other, "passive") == "connected"  # as client
        assert internals.dtls_role(other) == "client"
        contexts = {
            id(getattr(internals.dtls_transport_of(pc.getTransceivers()[0]), internals.DTLS_SSL)
               .get_context())
            for pc in (relay, other)
        }  # fmt: skip
        assert len(contexts) == 1
    finally:
        await asyncio.gather(relay.close(), other.close(), plain.close(), rsa_server.close())


async def test_a_process_certificate_is_renewed_a_day_before_it_expires() -> None:
    now = [0.0]
    certificates = internals.DtlsCertificate(clock=lambda: now[0])
    first = certificates.current()
    now[0] = first.expires.timestamp() - internals.DtlsCertificate.RENEW_BEFORE_SECONDS - 60
    assert certificates.current() is first
    now[0] += 120
    renewed = certificates.current()
    assert renewed is not first
    assert renewed.getFingerprints() != first.getFingerprints()  # a new key


async def test_private_dtls_names_exist() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transport = pc.addTransceiver("audio").receiver.transport
    for name in (internals.DTLS_ROLE, internals.DTLS_SET_ROLE, internals.DTLS_HANDSHAKE):
        assert hasattr(transport, name), f"{UPDATE}: RTCDtlsTransport has no {name}"
    assert "self._ssl.do_handshake()" in inspect.getsource(type(transport)._do_handshake), (
        f"{UPDATE}: the DTLS handshake no longer steps through self._ssl.do_handshake()"
    )
    for certificate in getattr(pc, internals.PC_CERTIFICATES):
        assert hasattr(certificate, internals.CERTIFICATE_SSL_CONTEXT), UPDATE
    await pc.close()


# --- the packet path ----------------------------------------------------------------------


async def test_private_packet_path_names_exist() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("video")
    dtls = internals.dtls_transport_of(transceiver)
    for name in (internals.DTLS_RX_SRTP, internals.DTLS_TX_SRTP):
        assert hasattr(dtls, name), f"{UPDATE}: RTCDtlsTransport has no {name}"
    assert hasattr(dtls.transport, internals.ICE_CONNECTION), f"{UPDATE}: no aioice Connection"
    connection = getattr(dtls.transport, internals.ICE_CONNECTION)
    for name in (internals.ICE_NOMINATED, internals.ICE_PROTOCOLS):
        assert hasattr(connection, name), f"{UPDATE}: aioice Connection has no {name}"
    for name in (internals.SENDER_SSRC, internals.SENDER_RTX_SSRC):
        assert hasattr(transceiver.sender, name), f"{UPDATE}: RTCRtpSender has no {name}"
    assert hasattr(pc, internals.PC_CNAME), f"{UPDATE}: RTCPeerConnection keeps no CNAME"
    for name in (internals.RECEIVER_BITRATE_ESTIMATOR, internals.RECEIVER_NACK_GENERATOR):
        assert hasattr(transceiver.receiver, name), f"{UPDATE}: RTCRtpReceiver has no {name}"
    handle = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__remote_bitrate_estimator is not None" in handle, UPDATE
    assert "self.__nack_generator is not None" in handle, UPDATE
    connect = inspect.getsource(RTCPeerConnection._RTCPeerConnection__connect)  # type: ignore[attr-defined]
    assert "sender.send(" in connect and "receiver.receive(" in connect, (
        f"{UPDATE}: aiortc no longer starts senders and receivers in __connect"
    )
    assert "self._rx_srtp.unprotect(" in inspect.getsource(type(dtls)._recv_next), (
        f"{UPDATE}: the DTLS transport no longer unprotects with _rx_srtp"
    )
    loop = asyncio.get_running_loop()
    for name in (internals.LOOP_ADD_READER, internals.LOOP_REMOVE_READER):
        assert hasattr(loop, name), f"{UPDATE}: the event loop has no {name}"
    await pc.close()


async def raw_pair(*, drain: bool) -> tuple[RTCPeerConnection, RTCPeerConnection, Any, Any, Any]:
    """Two connected aiortc peers whose senders and receivers are taken over: (left, right,
    each side's DatagramPath, what each side's handler got, the parameters aiortc started
    the senders and receivers with)."""
    left = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    right = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    paths: dict[str, internals.DatagramPath] = {}
    got: dict[str, list[bytes]] = {"left": [], "right": []}
    started: dict[str, list] = {"send": [], "receive": []}

    def connected(side: str, transceiver, parameters) -> None:  # type: ignore[no-untyped-def]
        if side not in paths:
            paths[side] = internals.DatagramPath(internals.dtls_transport_of(transceiver))
            paths[side].intercept(lambda d, _arrival, g=got[side]: g.append(d), drain=drain)

    for side, pc in (("left", left), ("right", right)):
        transceiver = pc.addTransceiver("video", direction="sendrecv")
        internals.take_over_sender(
            transceiver.sender,
            lambda p, s=side, t=transceiver: (started["send"].append(p), connected(s, t, p)),
        )
        internals.take_over_receiver(
            transceiver.receiver,
            lambda p, s=side, t=transceiver: (started["receive"].append(p), connected(s, t, p)),
        )
    await left.setLocalDescription(await left.createOffer())
    await right.setRemoteDescription(left.localDescription)
    await right.setLocalDescription(await right.createAnswer())
    await left.setRemoteDescription(right.localDescription)
    for _ in range(300):
        if len(paths) == 2:
            break
        await asyncio.sleep(0.01)
    return left, right, paths, got, started


@pytest.mark.parametrize("drain", [True, False])
async def test_datagram_path_carries_srtp_below_aioice_and_aiortc_stays_idle(drain: bool) -> None:
    from relay.rtp import parse_header

    left, right, paths, got, started = await raw_pair(drain=drain)
    try:
        assert set(paths) == {"left", "right"}, f"{UPDATE}: senders/receivers were not taken over"
        assert started["send"] and started["receive"]
        parameters = started["send"][0]
        payload_type = parameters.codecs[0].payloadType
        ssrc = getattr(left.getTransceivers()[0].sender, internals.SENDER_SSRC)
        for sequence in range(10):
            packet = struct.pack("!BBHII", 0x80, payload_type, sequence, 3000 * sequence, ssrc)
            paths["left"].send(paths["left"].tx.protect(packet + bytes([sequence]) * 100))
        for _ in range(100):
            if len(got["right"]) >= 10:
                break
            await asyncio.sleep(0.01)
        plain = [paths["right"].rx.unprotect(datagram) for datagram in got["right"]]
        assert [parse_header(p).sequence_number for p in plain] == list(range(10))
        assert plain[3][-100:] == bytes([3]) * 100
        # aiortc never saw them: no receiver started, no decoder, no sender task.
        receiver = right.getTransceivers()[0].receiver
        assert not internals.decoder_running(receiver)
        assert not getattr(receiver, internals.RECEIVER_STARTED)
        # STUN still reaches aioice (consent freshness) and DTLS its transport.
        assert right.connectionState == "connected" and left.connectionState == "connected"
        paths["right"].release()
        paths["right"].release()  # idempotent
    finally:
        await asyncio.gather(left.close(), right.close())


@pytest.mark.skipif(not internals.SO_TIMESTAMPNS, reason="kernel receive stamps are Linux's")
async def test_arrivals_keep_the_kernels_time_while_the_event_loop_is_busy() -> None:
    """What the relay's transport-cc feedback reports: when each datagram reached the
    socket, not when a busy loop got to read it (which would look like congestion)."""
    import time

    left, right, paths, _got, started = await raw_pair(drain=True)
    try:
        arrivals: list[int] = []
        paths["right"].release()
        paths["right"].intercept(lambda _datagram, arrival_us: arrivals.append(arrival_us))
        payload_type = started["send"][0].codecs[0].payloadType
        ssrc = getattr(left.getTransceivers()[0].sender, internals.SENDER_SSRC)
        sent_us: list[int] = []
        for sequence in range(10):
            packet = struct.pack("!BBHII", 0x80, payload_type, sequence, 3000 * sequence, ssrc)
            sent_us.append(time.monotonic_ns() // 1000)
            paths["left"].send(paths["left"].tx.protect(packet + bytes(100)))
            time.sleep(0.02)  # the loop is blocked: nothing is read meanwhile
        read_from_us = time.monotonic_ns() // 1000
        for _ in range(100):
            if len(arrivals) >= 10:
                break
            await asyncio.sleep(0.01)
        assert len(arrivals) == 10
        for sent, arrival in zip(sent_us, arrivals, strict=True):
            assert sent <= arrival < sent + 10_000, (sent, arrival)  # loopback: well under 10 ms
        assert arrivals[0] < read_from_us - 150_000, "stamped when read, not when received"
    finally:
        await asyncio.gather(left.close(), right.close())


async def test_extend_negotiation_keeps_transport_cc_and_asks_for_opus_fec() -> None:
    from tests.harness.rtpclient import with_transport_cc

    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("audio")
    client.addTransceiver("video")
    offer = (await client.createOffer()).sdp
    await client.close()
    offer = with_transport_cc(offer)
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in ("audio", "video"):
        server.addTransceiver(kind, direction="recvonly").setCodecPreferences(
            VisitCodec("VP8").preferences(kind)
        )
    await server.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    stock = (await server.createAnswer()).sdp
    assert "transport-wide-cc" not in stock, "aiortc itself now negotiates transport-cc"
    internals.extend_negotiation(server, offer, {"0", "1"})
    answer = (await server.createAnswer()).sdp
    audio, video = answer.split("m=video")
    for section in (audio, video):
        assert f"a=extmap:5 {TRANSPORT_CC}" in section
        assert "transport-cc" in section.split(TRANSPORT_CC)[1]
    assert "useinbandfec=1" in audio
    # Only this connection's transceivers changed: aiortc's own lists stay stock.
    from aiortc.codecs import CODECS, HEADER_EXTENSIONS

    assert all(e.uri != TRANSPORT_CC for k in HEADER_EXTENSIONS for e in HEADER_EXTENSIONS[k])
    assert not any("useinbandfec" in c.parameters for c in CODECS["audio"])
    await server.close()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SDP string aiortc's own parser is given from now on (the handover's misses)."""
    parsed: list[str] = []
    original = internals.ORIGINAL_PARSE

    def counted(sdp: str) -> Any:
        parsed.append(sdp)
        return original(sdp)

    monkeypatch.setattr(internals, "ORIGINAL_PARSE", counted)
    return parsed


async def test_local_descriptions_are_applied_without_parsing_back_their_text(
    parses: list[str],
) -> None:
    """set_local_offer, set_local_answer and create_offer + set_local_description hand aiortc
    the description it wrote, instead of its text to parse back. The connection negotiates
    and connects as with aiortc's own calls, the applied descriptions read back as the text
    that was sent, and they do not share the transceivers' codec lists."""
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in ("audio", "video"):
            client.addTransceiver(kind)
        await internals.set_local_offer(client)
        offer = client.localDescription.sdp
        assert client.signalingState == "have-local-offer"
        await server.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        before = len(parses)
        await internals.set_local_answer(server)
        answer = server.localDescription.sdp
        assert len(parses) == before, "aiortc parsed back the answer it wrote"
        assert server.signalingState == "stable"
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        # the stored answer keeps its own codecs when a transceiver's change later
        codec = getattr(server.getTransceivers()[0], internals.TRANSCEIVER_CODECS)[0]
        codec.parameters["parlor-probe"] = 1
        assert "parlor-probe" not in server.localDescription.sdp
        del codec.parameters["parlor-probe"]
        # a server re-offer: made, edited and applied without a parse of its text
        server.addTransceiver("audio", direction="sendonly")
        before = len(parses)
        reoffer, description = await internals.create_offer(server, None, "server")
        await internals.set_local_description(server, reoffer, description)
        assert len(parses) == before, "the re-offer was parsed back"
        assert "a=setup:actpass" not in reoffer.sdp and "a=setup:passive" in reoffer.sdp
        applied = server.localDescription.sdp
        assert [m.kind for m in internals.parse_description(applied).media] == [
            "audio", "video", "audio"
        ]  # fmt: skip
        await client.setRemoteDescription(RTCSessionDescription(sdp=applied, type="offer"))
        await client.setLocalDescription(await client.createAnswer())
        await server.setRemoteDescription(client.localDescription)
        for _ in range(500):
            if "connected" == server.connectionState == client.connectionState:
                break
            await asyncio.sleep(0.01)
        assert (server.connectionState, client.connectionState) == ("connected", "connected")
    finally:
        await asyncio.gather(client.close(), server.close())


async def test_codecs_aiortc_negotiates_are_copied_as_fully_as_deepcopy_did(monkeypatch) -> None:
    """aiortc's find_common_codecs copies codecs field by field now (internals._CodecCopies):
    the same result as with copy.deepcopy, and nothing shared with its inputs."""
    import copy

    from aiortc import rtcpeerconnection
    from aiortc.codecs import CODECS

    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("video")
    client.addTransceiver("audio")
    offer = (await client.createOffer()).sdp
    await client.close()
    for section in internals.parse_description(offer).media:
        kind, remote = section.kind, section.codecs
        fast = internals.common_codecs(kind, remote, VisitCodec("VP8").preferences(kind))
        assert isinstance(rtcpeerconnection.copy, internals._CodecCopies)
        with monkeypatch.context() as patch:
            patch.setattr(rtcpeerconnection, "copy", copy)
            slow = rtcpeerconnection.filter_preferred_codecs(
                rtcpeerconnection.find_common_codecs(CODECS[kind], remote),
                VisitCodec("VP8").preferences(kind),
            )
        assert fast == slow and fast
        local, theirs = copy.deepcopy(CODECS[kind]), copy.deepcopy(remote)
        for codec in fast:
            codec.parameters["parlor-probe"] = 1
            codec.rtcpFeedback.clear()
        assert CODECS[kind] == local and remote == theirs


async def test_aiortc_writes_its_descriptions_through_wrap_session_description() -> None:
    """What :func:`internals._created` relies on: createOffer and createAnswer end with
    ``wrap_session_description(description)`` and do not await (nothing runs meanwhile)."""
    from aiortc import rtcpeerconnection

    assert hasattr(rtcpeerconnection, internals.WRAP_DESCRIPTION), UPDATE
    for method in (RTCPeerConnection.createOffer, RTCPeerConnection.createAnswer):
        source = inspect.getsource(method)
        assert "return wrap_session_description(description)" in source, UPDATE
        assert "await " not in source, f"{UPDATE}: {method.__name__} awaits"


async def test_a_remote_description_is_parsed_once_for_the_relay_and_aiortc(
    parses: list[str],
) -> None:
    """The relay checks an offer, aiortc applies it and the relay adopts its extensions:
    one parse of the SDP for all three (aiortc is handed the relay's), and a parse aiortc
    was handed is never given to a later reader (aiortc adds trickled candidates to it)."""
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("audio")
    client.addTransceiver("video")
    offer = (await client.createOffer()).sdp
    await client.close()
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in ("audio", "video"):
        server.addTransceiver(kind, direction="recvonly").setCodecPreferences(
            VisitCodec("VP8").preferences(kind)
        )
    try:
        checked = internals.parse_description(offer)
        assert [m.kind for m in checked.media] == ["audio", "video"]
        remote = await internals.set_remote_description(server, offer, "offer")
        internals.extend_negotiation(server, remote, {"0", "1"})
        assert parses.count(offer) == 1, "the offer was parsed again"
        assert server.signalingState == "have-remote-offer"
        assert [t.mid for t in server.getTransceivers()] == ["0", "1"]
        answer = (await server.createAnswer()).sdp
        assert "useinbandfec=1" in answer  # extend_negotiation read the handed-over parse
        internals.parse_description(offer)
        assert parses.count(offer) == 2, "a parse aiortc keeps was read again"
        # aiortc's own descriptions and other strings are parsed as they always were
        await server.setLocalDescription(RTCSessionDescription(sdp=answer, type="answer"))
        assert parses.count(answer) == 1
    finally:
        await server.close()


async def test_srtp_sessions_are_widened_for_packets_publishers_make() -> None:
    """GStreamer fills a 1400-byte MTU; pylibsrtp alone refuses to protect over 1356."""
    import os

    import pylibsrtp

    def session(direction: int) -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(key=bytes(30), ssrc_type=direction)
        return pylibsrtp.Session(policy)

    packet = struct.pack("!BBHII", 0x80, 96, 1, 3000, 1234) + os.urandom(1396)
    stock = session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    with pytest.raises(ValueError, match="too long"):
        stock.protect(packet)
    assert hasattr(stock, internals.SRTP_BUFFER) and hasattr(stock, internals.SRTP_VIEW), UPDATE
    sender, receiver = (
        session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND),
        session(pylibsrtp.Policy.SSRC_ANY_INBOUND),
    )
    internals.widen_srtp_buffer(sender)
    internals.widen_srtp_buffer(receiver)
    assert receiver.unprotect(sender.protect(packet)) == packet
    assert receiver.unprotect_rtcp(sender.protect_rtcp(bytes([0x80, 201, 0, 1]) + bytes(4)))


async def test_deferred_bitrate_estimators_cost_nothing_until_used_then_estimate_as_aiortc() -> (
    None
):
    import aiortc.rtcrtpreceiver as receiver_module
    from aiortc.rate import RemoteBitrateEstimator

    init = inspect.getsource(RTCRtpReceiver.__init__)
    assert "RemoteBitrateEstimator()" in init, (
        f"{UPDATE}: receivers build REMB estimators elsewhere"
    )
    handle = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert ".__remote_bitrate_estimator.add(" in handle, f"{UPDATE}: receivers use more than add()"
    internals.defer_bitrate_estimators()
    internals.defer_bitrate_estimators()  # idempotent
    assert receiver_module.RemoteBitrateEstimator is internals.DeferredBitrateEstimator
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        deferred = internals.DeferredBitrateEstimator()
        unused = tracemalloc.get_traced_memory()[0] - before
        real = RemoteBitrateEstimator()
        built = tracemalloc.get_traced_memory()[0] - before - unused
    finally:
        tracemalloc.stop()
    assert unused < 1000 < 50_000 < built, (unused, built)  # nothing built until used
    # 30 fps of 1200-byte packets, abs-send-time in 6.18 fixed point, arriving 1 ms late each
    estimates = 0
    for n in range(600):
        sent_ms = n * 33
        abs_send = (sent_ms * (1 << 18) // 1000) & 0xFFFFFF
        args = (sent_ms + 40 + n // 30, abs_send, 1200, 0x1234)
        estimate = deferred.add(*args)
        assert estimate == real.add(*args)
        estimates += estimate is not None
    assert estimates > 10  # REMB came out, the same from both


async def test_cached_fingerprints_are_aiortc_s_and_reach_the_description() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    certificate = getattr(pc, internals.PC_CERTIFICATES)[0]
    computed = certificate.getFingerprints()
    internals.cache_fingerprints(pc)
    internals.cache_fingerprints(pc)  # idempotent
    assert certificate.getFingerprints() == computed
    assert certificate.getFingerprints() is not certificate.getFingerprints()  # a copy each time
    pc.addTransceiver("audio")
    pc.addTransceiver("video")
    await pc.setLocalDescription(await pc.createOffer())
    sha256 = next(f.value for f in computed if f.algorithm == "sha-256")
    assert pc.localDescription.sdp.count(f"a=fingerprint:sha-256 {sha256}") == 2
    await pc.close()

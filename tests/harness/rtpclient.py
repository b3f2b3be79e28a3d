"""A WebRTC client that speaks raw RTP: cheap enough for benches, precise enough for tests.

aiortc negotiates for it (SDP, ICE, DTLS, the SRTP keys) exactly as for any aiortc peer;
its senders and receivers are then never started (``relay.aiortc_internals``
``take_over_sender``/``take_over_receiver``, as the relay does) and media goes straight
through the transport's sockets (``DatagramPath``): it sends pre-packetized footage
(``tests.harness.footage``) at its frame rate, answers PLI/FIR with a keyframe and NACKs
from its own history, and for every stream it receives records what a test or a bench
asks about: sequence numbers, payloads, frames, sender reports, arrival times.

So a test can drop a packet on purpose and NACK it, send padding-only packets, check that
a payload arrived byte for byte, and a bench can run dozens of 640×480 publishers in one
process (no encoder, no packetizer, no jitter buffer, no decoder).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from relay import aiortc_internals
from relay.aiortc_internals import DatagramPath
from relay.codec import NegotiatedCodec, VisitCodec
from relay.ntp import ntp_from_unix_ns
from relay.payload import h264_is_keyframe, vp8_is_keyframe
from relay.rtcp import (
    FullIntraRequest,
    Nack,
    PictureLoss,
    SenderReport,
    build_nack,
    build_pli,
    build_sdes_cname,
    build_sender_report,
    parse_compound,
)
from relay.rtp import MalformedPacket, parse_header, wrap_rtx
from relay.twcc import TransportFeedback
from tests.harness.footage import Footage

ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
TRANSPORT_CC_ID = 5
"""The id the client gives transport-cc (aiortc's own offers use 1-3)."""
_FIXED = struct.Struct("!BBHII")
HISTORY = 1024


@dataclass
class Report:
    """A sender report received, and what had arrived on its stream when it came."""

    packet_count: int
    octet_count: int
    ntp: int
    rtp: int
    packets_received: int
    octets_received: int


@dataclass
class Reception:
    """One stream (SSRC) the client receives."""

    ssrc: int
    kind: str = ""
    stream: str = ""
    """The msid stream id of its m-line (the relay sets it to the publisher's id)."""
    packets: int = 0
    octets: int = 0
    """Payload octets (no header, no padding), as an RTCP SR counts them."""
    frames: int = 0
    """Packets with the marker bit: complete frames sent."""
    first_at: float | None = None
    first_frame_at: float | None = None
    """When the first complete frame ended (its marker packet), ``time.monotonic()``."""
    last_at: float | None = None
    sequence: list[int] = field(default_factory=list)
    """Every sequence number in arrival order (kept while ``keep`` is on)."""
    payloads: list[bytes] = field(default_factory=list)
    keyframe_starts: list[int] = field(default_factory=list)
    """Sequence numbers of packets that start a keyframe."""
    retransmitted: list[int] = field(default_factory=list)
    """Original sequence numbers that came again (as RTX, or as a repeated number)."""
    reports: list[Report] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    """Seconds from the publisher's send to arrival, for payloads a shared clock knows."""


class PayloadClock:
    """When each payload left its publisher, shared by the clients of one process, so that
    a subscriber can time what reaches it (the relay changes headers, never payloads)."""

    def __init__(self, keep: int = 4096) -> None:
        self._sent: dict[tuple[int, int], float] = {}
        self._keep = keep

    def sent(self, timestamp: int, payload: bytes, at: float) -> None:
        sent = self._sent
        sent[(timestamp, hash(payload))] = at
        if len(sent) > self._keep:
            for key in list(sent)[: len(sent) - self._keep]:
                del sent[key]

    def since(self, timestamp: int, payload: bytes, at: float) -> float | None:
        sent = self._sent.pop((timestamp, hash(payload)), None)
        return None if sent is None else at - sent


class RtpClient:
    """One participant: publishes the footage (unless ``publish`` is False) and receives."""

    def __init__(
        self,
        name: str,
        footage: Footage,
        *,
        publish: bool = True,
        keep: bool = False,
        clock: PayloadClock | None = None,
        transport_cc: bool = False,
        sender_reports: bool = True,
    ) -> None:
        self.name = name
        self.footage = footage
        self.publish = publish
        self.keep = keep
        """Keep every sequence number and payload received (tests), not just counts."""
        self.clock = clock
        self.transport_cc = transport_cc
        """Offer transport-wide congestion control (as browsers do) and number every packet."""
        self.sender_reports = sender_reports
        self.feedback: list[TransportFeedback] = []
        """Transport-cc feedback received (when ``transport_cc``)."""
        self.skip: Callable[[str, int], bool] | None = None
        """``skip(kind, sequence)`` True: the packet is not sent (lost on the way), but kept
        for a NACK."""
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        codec = VisitCodec.named(footage.codec)
        for kind in ("audio", "video"):
            transceiver = self.pc.addTransceiver(
                kind, direction="sendrecv" if publish else "recvonly"
            )
            transceiver.setCodecPreferences(codec.preferences(kind))
        self.receptions: dict[int, Reception] = {}
        self._rtx: dict[int, int] = {}
        """RTX SSRC -> media SSRC, from the remote SDP's FID groups."""
        self.drop: Callable[[Reception, int], bool] | None = None
        """``drop(reception, sequence)`` True: the packet is discarded as if lost."""
        self.paused = False
        """True: publish nothing (the pacing goes on)."""
        self.keyframes_sent = 0
        self.nacks_received: list[int] = []
        self.sent_payloads: dict[str, list[tuple[int, bytes]]] = {"audio": [], "video": []}
        """Per kind, (sequence number, payload) of what was sent (while ``keep`` is on)."""
        self._path: DatagramPath | None = None
        self._senders: dict[str, dict[str, Any]] = {}
        self._taken: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._history: dict[int, bytes] = {}
        self._keyframe = True
        self._closed = False
        self._started_at = 0.0
        self._transport_sequence = 0
        self.transport_sent: dict[int, float] = {}
        """Transport-wide sequence number -> when it was sent (when ``transport_cc``)."""
        self._take_over()

    # --- negotiation --------------------------------------------------------------

    async def offer(self) -> str:
        offer = await self.pc.createOffer()
        sdp = offer.sdp
        if self.transport_cc:
            sdp = with_transport_cc(sdp)
        await self.pc.setLocalDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        return sdp

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._take_over()
        self._learn_streams()

    async def answer(self, sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._take_over()  # before aiortc's connection task starts the new m-lines
        self._learn_streams()
        answer = await self.pc.createAnswer()
        sdp = with_transport_cc(answer.sdp, first=2) if self.transport_cc else answer.sdp
        await self.pc.setLocalDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        return sdp

    def _take_over(self) -> None:
        aiortc_internals.take_over_transceivers(
            self.pc, self._taken, self._sender_started, self._receiver_started
        )

    def _learn_streams(self) -> None:
        """Which SSRC is which remote stream (msid, kind, RTX pairing), from the SDP."""
        description = self.pc.remoteDescription
        if description is None:
            return
        for section in description.sdp.split("\r\nm=")[1:]:
            kind = section.split()[0]
            stream = ""
            ssrcs: list[int] = []
            for line in section.splitlines():
                if line.startswith("a=msid:"):
                    stream = line[len("a=msid:") :].split()[0]
                elif line.startswith("a=ssrc-group:FID "):
                    media, rtx = (int(x) for x in line.split()[1:3])
                    self._rtx[rtx] = media
                elif line.startswith("a=ssrc:"):
                    ssrcs.append(int(line[len("a=ssrc:") :].split()[0]))
            for ssrc in ssrcs:
                if ssrc in self._rtx:
                    continue
                reception = self.receptions.setdefault(ssrc, Reception(ssrc))
                reception.kind, reception.stream = kind, stream

    def _transport(self, transceiver: Any) -> DatagramPath:
        if self._path is None:
            self._path = DatagramPath(aiortc_internals.dtls_transport_of(transceiver))
            self._path.intercept(self._on_datagram)
        return self._path

    def _sender_started(self, transceiver: Any, parameters: Any) -> None:
        self._transport(transceiver)
        if not self.publish or transceiver.kind in self._senders:
            return
        codec = NegotiatedCodec.of(parameters.codecs)
        assert codec is not None
        ssrc, rtx_ssrc = aiortc_internals.sender_ssrcs(transceiver.sender)
        extensions = {e.uri: e.id for e in parameters.headerExtensions}
        self._senders[transceiver.kind] = {
            "ssrc": ssrc,
            "rtx_ssrc": rtx_ssrc,
            "pt": codec.payload_type,
            "rtx_pt": codec.rtx_payload_type,
            "sequence": 1000 if transceiver.kind == "video" else 20000,
            "rtx_sequence": 30000,
            "abs_send_time": extensions.get(ABS_SEND_TIME, 0),
            "audio_level": extensions.get(AUDIO_LEVEL, 0),
            "clock_rate": 90000 if transceiver.kind == "video" else 48000,
            "packets": 0,
            "octets": 0,
        }
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def _receiver_started(self, transceiver: Any, parameters: Any) -> None:
        self._transport(transceiver)

    # --- sending ------------------------------------------------------------------

    async def _run(self) -> None:
        """Video frames at the footage's rate, 20 ms Opus frames: paced, never bunched."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        video_interval, audio_interval = 1 / self.footage.fps, 0.02
        self._started_at = start
        frame = audio = 0
        next_report = start + 0.5
        with contextlib.suppress(asyncio.CancelledError):
            while not self._closed:
                next_video = start + frame * video_interval
                next_audio = start + audio * audio_interval
                if self.sender_reports and loop.time() >= next_report:
                    self._send_reports(loop.time() - start)
                    next_report += 1.0
                wake = min(next_video, next_audio)
                delay = wake - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if loop.time() >= next_video:
                    self._send_frame(frame)
                    frame += 1
                if loop.time() >= next_audio:
                    self._send_audio(audio)
                    audio += 1

    def _send_frame(self, index: int) -> None:
        sender = self._senders.get("video")
        if sender is None or self.paused:
            return
        footage = self.footage
        position = index % len(footage.deltas)
        if self._keyframe:
            payloads, self._keyframe = footage.keyframes[position], False
            self.keyframes_sent += 1
        elif position == 0:  # skip the loop's own keyframe: cameras send them when asked
            payloads = footage.deltas[1]
        else:
            payloads = footage.deltas[position]
        timestamp = (index * (90000 // footage.fps)) & 0xFFFFFFFF
        last = len(payloads) - 1
        for number, payload in enumerate(payloads):
            self._send("video", sender, payload, timestamp, number == last)

    def _send_audio(self, index: int) -> None:
        sender = self._senders.get("audio")
        if sender is None or self.paused:
            return
        payload = self.footage.opus[index % len(self.footage.opus)]
        self._send("audio", sender, payload, (index * 960) & 0xFFFFFFFF, True)

    def _send_reports(self, elapsed: float) -> None:
        """An SR per stream: one NTP instant, each stream's RTP clock at it (lip sync)."""
        ntp = ntp_from_unix_ns(time.time_ns())
        for sender in self._senders.values():
            rtp = int(elapsed * sender["clock_rate"]) & 0xFFFFFFFF
            self.send_rtcp(
                build_sender_report(sender["ssrc"], ntp, rtp, sender["packets"], sender["octets"])
                + build_sdes_cname(sender["ssrc"], self.name)
            )

    def _send(
        self, kind: str, sender: dict[str, Any], payload: bytes, timestamp: int, marker: bool
    ) -> None:
        sequence = sender["sequence"]
        sender["sequence"] = (sequence + 1) & 0xFFFF
        sender["packets"] += 1
        sender["octets"] += len(payload)
        elements = b""
        if sender["abs_send_time"]:
            value = ((time.monotonic_ns() // 1000) << 18) // 1_000_000 & 0xFFFFFF
            elements += bytes([(sender["abs_send_time"] << 4) | 2]) + value.to_bytes(3, "big")
        if sender["audio_level"]:
            elements += bytes([sender["audio_level"] << 4, 0x80 | 30])
        if self.transport_cc:
            self._transport_sequence = (self._transport_sequence + 1) & 0xFFFF
            elements += bytes([(TRANSPORT_CC_ID << 4) | 1]) + self._transport_sequence.to_bytes(
                2, "big"
            )
            self.transport_sent[self._transport_sequence] = time.monotonic()
        extension = b""
        if elements:
            elements += bytes(-len(elements) % 4)
            extension = b"\xbe\xde" + (len(elements) // 4).to_bytes(2, "big") + elements
        first = 0x90 if extension else 0x80
        packet = (
            _FIXED.pack(
                first, (0x80 if marker else 0) | sender["pt"], sequence, timestamp, sender["ssrc"]
            )
            + extension
            + payload
        )
        if kind == "video":
            self._history[sequence] = packet
            if len(self._history) > HISTORY:
                del self._history[next(iter(self._history))]
        if self.keep:
            self.sent_payloads[kind].append((sequence, payload))
        if self.clock is not None:
            self.clock.sent(timestamp, payload, time.monotonic())
        if self.skip is not None and self.skip(kind, sequence):
            return
        self._send_rtp(packet)

    def sent_packet(self, sequence: int) -> bytes | None:
        """The video packet sent (or skipped) with ``sequence``, as it went out (plaintext)."""
        return self._history.get(sequence)

    def send_payload(self, kind: str, payload: bytes, timestamp: int) -> int:
        """Send one packet of ``kind`` carrying ``payload`` (marker set); its sequence number."""
        sender = self._senders[kind]
        sequence = int(sender["sequence"])
        self._send(kind, sender, payload, timestamp & 0xFFFFFFFF, True)
        return sequence

    def send_rtx(self, sequence: int) -> None:
        """Resend video packet ``sequence`` as RTX, unasked (as Chromium probes bandwidth)."""
        sender = self._senders["video"]
        packet = self._history[sequence]
        rtx = wrap_rtx(packet, sender["rtx_pt"], sender["rtx_ssrc"], sender["rtx_sequence"])
        sender["rtx_sequence"] = (sender["rtx_sequence"] + 1) & 0xFFFF
        self._send_rtp(bytes(rtx))

    def send_padding(self, count: int = 1) -> list[int]:
        """Send ``count`` padding-only video packets (as a browser probes); their numbers."""
        sender = self._senders["video"]
        numbers = []
        for _ in range(count):
            sequence = sender["sequence"]
            sender["sequence"] = (sequence + 1) & 0xFFFF
            numbers.append(sequence)
            padding = bytes(199) + b"\xc8"
            packet = _FIXED.pack(0xA0, sender["pt"], sequence, 0, sender["ssrc"]) + padding
            self._send_rtp(packet)
        return numbers

    def _send_rtp(self, packet: bytes) -> None:
        path = self._path
        if path is not None and path.tx is not None and not self._closed:
            path.send(path.tx.protect(packet))

    def send_rtcp(self, packet: bytes) -> None:
        path = self._path
        if path is not None and path.tx is not None and not self._closed:
            path.send(path.tx.protect_rtcp(packet))

    def nack(self, ssrc: int, sequence_numbers: list[int]) -> None:
        """Ask the sender of ``ssrc`` to resend these packets."""
        self.send_rtcp(build_nack(self._rtcp_ssrc(), ssrc, sequence_numbers))

    def picture_loss(self, ssrc: int) -> None:
        self.send_rtcp(build_pli(self._rtcp_ssrc(), ssrc))

    def _rtcp_ssrc(self) -> int:
        return aiortc_internals.sender_ssrcs(self.pc.getTransceivers()[0].sender)[0]

    # --- receiving ------------------------------------------------------------------

    def _on_datagram(self, datagram: bytes, arrival_us: int) -> None:
        path = self._path
        if path is None or path.rx is None:
            return
        try:
            if 191 < datagram[1] < 224:
                self._on_rtcp(path.rx.unprotect_rtcp(datagram))
                return
            plain = path.rx.unprotect(datagram)
        except Exception:  # replays, and anything before the keys: not this client's concern
            return
        try:
            header = parse_header(plain)
        except MalformedPacket:
            return
        now = time.monotonic()
        ssrc = header.ssrc
        original = self._rtx.get(ssrc)
        if original is not None:
            reception = self.receptions.setdefault(original, Reception(original))
            start = header.payload_start
            if header.payload_end - start >= 2:
                reception.retransmitted.append((plain[start] << 8) | plain[start + 1])
            return
        reception = self.receptions.get(ssrc)
        if reception is None:
            reception = self.receptions[ssrc] = Reception(ssrc)
        sequence = header.sequence_number
        drop = self.drop
        if drop is not None and drop(reception, sequence):
            return
        start, end = header.payload_start, header.payload_end
        if self.keep and sequence in reception.sequence[-64:]:
            reception.retransmitted.append(sequence)
            return
        reception.packets += 1
        reception.octets += end - start
        if header.marker and reception.kind == "video":
            reception.frames += 1
            if reception.first_frame_at is None:
                reception.first_frame_at = now
        elif reception.kind == "audio":
            reception.frames += 1
        if reception.first_at is None:
            reception.first_at = now
        reception.last_at = now
        payload = plain[start:end]
        if self.clock is not None:
            latency = self.clock.since(header.timestamp, payload, now)
            if latency is not None:
                reception.latencies.append(latency)
        if self.keep:
            reception.sequence.append(sequence)
            reception.payloads.append(payload)
            if reception.kind == "video" and end > start:
                detect = h264_is_keyframe if self.footage.codec == "H264" else vp8_is_keyframe
                with contextlib.suppress(MalformedPacket):
                    if detect(plain, start, end):
                        reception.keyframe_starts.append(sequence)

    def _on_rtcp(self, plain: bytes) -> None:
        try:
            parts = parse_compound(plain)
        except MalformedPacket:
            return
        for part in parts:
            if isinstance(part, (PictureLoss, FullIntraRequest)):
                self._keyframe = True
            elif isinstance(part, Nack):
                self.nacks_received.extend(part.lost)
                for sequence in part.lost:
                    packet = self._history.get(sequence)
                    if packet is not None:
                        self._send_rtp(packet)
            elif isinstance(part, TransportFeedback):
                self.feedback.append(part)
            elif isinstance(part, SenderReport):
                reception = self.receptions.get(part.ssrc)
                if reception is not None:
                    reception.reports.append(
                        Report(
                            part.packet_count,
                            part.octet_count,
                            part.ntp_timestamp,
                            part.rtp_timestamp,
                            reception.packets,
                            reception.octets,
                        )
                    )

    # --- what arrived ------------------------------------------------------------------

    def from_publisher(self, publisher: str, kind: str) -> Reception | None:
        """The stream of ``kind`` the relay forwards from ``publisher`` (its msid)."""
        found = [r for r in self.receptions.values() if r.stream == publisher and r.kind == kind]
        return max(found, key=lambda r: r.packets) if found else None

    def sent_ssrc(self, kind: str) -> int:
        return int(self._senders[kind]["ssrc"])

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._path is not None:
            self._path.release()
        await self.pc.close()


def with_transport_cc(sdp: str, first: int | None = None) -> str:
    """An aiortc description that also has transport-wide congestion control, as a
    browser's does: the header extension and ``rtcp-fb transport-cc`` on each codec, on
    every m-line (or the ``first`` ones: the client's own, where it sends)."""
    out = []
    section = 0
    for line in sdp.split("\r\n"):
        out.append(line)
        if line.startswith("m="):
            section += 1
        if first is not None and section > first:
            continue
        if line.startswith("a=mid:"):
            out.append(f"a=extmap:{TRANSPORT_CC_ID} {TRANSPORT_CC}")
        elif line.startswith("a=rtpmap:") and "/rtx" not in line:
            out.append(f"a=rtcp-fb:{line[len('a=rtpmap:') :].split()[0]} transport-cc")
    return "\r\n".join(out)

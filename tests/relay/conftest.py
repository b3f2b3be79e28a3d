"""Real aiortc client peers talking to the relay over 127.0.0.1.

Each test client publishes a moving VP8/H264 test pattern (160x120, so five
of them fit on two cores) plus Opus, decodes what it receives, and records
per publisher (the msid stream id the relay sets) when frames and RTP
packets arrived. Negotiation follows the order signaling uses: client
offer -> ``accept_offer`` -> ``Room.add`` -> server offers -> client answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import av
import pytest
import pytest_asyncio
from aiortc import (
    AudioStreamTrack,
    MediaStreamError,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)

from relay import RelayPeer, RelayStats, Room, pin_ice_addresses, pinned_ice_addresses
from relay.leg import Leg
from tests.harness import rtpclient
from tests.harness.rtpclient import RtpClient

WIDTH, HEIGHT = 160, 120


class PatternTrack(VideoStreamTrack):
    """A moving gradient at 30 fps, cheap to build without numpy."""

    def __init__(self, width: int = WIDTH, height: int = HEIGHT) -> None:
        super().__init__()
        probe = av.VideoFrame(width, height, "yuv420p")
        self._size = (width, height)
        self._luma = []
        line = probe.planes[0].line_size
        for shift in range(0, 256, 8):
            row = bytes((x * 2 + shift) & 0xFF for x in range(line))
            self._luma.append(row * probe.planes[0].height)
        self._chroma = [bytes([128]) * p.buffer_size for p in probe.planes[1:]]
        self._count = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(*self._size, "yuv420p")
        frame.planes[0].update(self._luma[self._count % len(self._luma)])
        for plane, data in zip(frame.planes[1:], self._chroma, strict=True):
            plane.update(data)
        self._count += 1
        frame.pts = pts
        frame.time_base = time_base
        return frame


@dataclass
class Reception:
    """What a client received on one track."""

    frames: int = 0
    first_at: float | None = None
    last_at: float | None = None
    times: list[float] = field(default_factory=list)
    size: tuple[int, int] | None = None


class Client:
    """An aiortc browser stand-in."""

    def __init__(self, name: str, *, publish: bool = True) -> None:
        self.name = name
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video: PatternTrack | None = None
        if publish:
            self.pc.addTrack(AudioStreamTrack())
            self.video = PatternTrack()
            self.pc.addTrack(self.video)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.addTransceiver("video", direction="recvonly")
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.receptions: dict[str, Reception] = {}
        self._readers: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.tracks[track.id] = track
        reception = self.receptions.setdefault(track.id, Reception())
        self._readers.append(asyncio.ensure_future(self._read(track, reception)))

    async def _read(self, track: MediaStreamTrack, reception: Reception) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if isinstance(frame, av.VideoFrame):
                    reception.size = (frame.width, frame.height)
                reception.frames += 1
                reception.times.append(now)
                reception.first_at = reception.first_at or now
                reception.last_at = now
        except MediaStreamError:
            pass

    def stream_of(self) -> dict[str, tuple[str, str]]:
        """track id -> (msid stream id, kind), from the relay's offers."""
        mapping: dict[str, tuple[str, str]] = {}
        description = self.pc.remoteDescription
        if description is None:
            return mapping
        for section in description.sdp.split("\r\nm=")[1:]:
            kind = section.split()[0]
            lines = section.splitlines()
            if not any(line in ("a=sendonly", "a=sendrecv") for line in lines):
                continue  # msid is meaningless where the relay does not send
            for line in lines:
                if line.startswith("a=msid:"):
                    stream, track = line[len("a=msid:") :].split()[:2]
                    mapping[track] = (stream, kind)
        return mapping

    def received(self, publisher: str, kind: str) -> Reception:
        """Everything received from ``publisher`` of ``kind`` (merged)."""
        total = Reception()
        for track_id, (stream, track_kind) in self.stream_of().items():
            if stream == publisher and track_kind == kind and track_id in self.receptions:
                r = self.receptions[track_id]
                total.frames += r.frames
                total.times += r.times
                total.size = r.size or total.size
                if r.first_at is not None:
                    total.first_at = min(total.first_at or r.first_at, r.first_at)
                if r.last_at is not None:
                    total.last_at = max(total.last_at or r.last_at, r.last_at)
        return total

    async def packets_from(self, publisher: str, kind: str) -> int:
        """RTP packets received so far from ``publisher`` (inbound-rtp stats)."""
        streams = self.stream_of()
        total = 0
        for transceiver in self.pc.getTransceivers():
            track = transceiver.receiver.track
            if track is None or streams.get(track.id) != (publisher, kind):
                continue
            report = await transceiver.receiver.getStats()
            for stat in report.values():
                if getattr(stat, "type", "") == "inbound-rtp":
                    total += stat.packetsReceived
        return total

    async def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        await self.pc.close()


async def wait_for(condition, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    """Poll ``condition()`` until true; return the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


class Visit:
    """A Room plus one client per RelayPeer, negotiated like signaling does."""

    def __init__(self, codec: str = "VP8") -> None:
        self.codec = codec
        self.frame_size = (WIDTH, HEIGHT)
        self.room = Room("V1", codec=codec)
        self.totals = RelayStats()
        self.peers: dict[str, RelayPeer] = {}
        self.clients: dict[str, Client] = {}
        self.negotiated_at: dict[str, float] = {}
        """When each peer's latest server offer was answered (media may flow)."""

    async def join(self, name: str, *, publish: bool = True) -> tuple[Client, RelayPeer]:
        client = Client(name, publish=publish)
        peer = RelayPeer(
            name, codec=self.codec, ice_servers=[], publish=publish, totals=self.totals
        )
        self.clients[name] = client
        self.peers[name] = peer
        await client.pc.setLocalDescription(await client.pc.createOffer())
        changed: list[RelayPeer] = []
        answer = await peer.accept_offer(
            client.pc.localDescription.sdp, joining=lambda: changed.extend(self.room.add(peer))
        )
        await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        self.negotiated_at[name] = time.monotonic()
        for other in changed:
            await self.renegotiate(other)
        return client, peer

    async def leave(self, name: str) -> None:
        peer = self.peers.pop(name)
        client = self.clients.pop(name)
        changed = self.room.remove(peer)
        await peer.close()
        await client.close()
        for other in changed:
            await self.renegotiate(other)

    async def renegotiate(self, peer: RelayPeer) -> None:
        if not peer.offer_needed:  # its answer carried what changed (as signaling skips it)
            return
        client = self.clients[peer.peer_id]
        offer = await peer.create_offer()
        await client.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await client.pc.setLocalDescription(await client.pc.createAnswer())
        await peer.accept_answer(client.pc.localDescription.sdp)
        self.negotiated_at[peer.peer_id] = time.monotonic()

    def legs(self, subscriber: str, publisher: str, kind: str) -> list[Leg]:
        """The relay's legs forwarding ``publisher``'s ``kind`` to ``subscriber``."""
        return [
            leg
            for leg in self.peers[subscriber].legs()
            if leg.publisher_id == publisher and leg.kind == kind
        ]

    @staticmethod
    def packets_sent(legs: list[Leg]) -> int:
        """RTP packets the relay has sent on ``legs`` (retransmissions excluded)."""
        return sum(leg.sent.packets for leg in legs)

    async def wait_for(self, condition, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
        """Poll ``condition()`` until true; return the seconds it took."""
        return await wait_for(condition, timeout)

    def everyone_gets_everyone(self, kind: str, frames: int = 1) -> bool:
        names = list(self.clients)
        return all(
            self.clients[a].received(b, kind).frames >= frames
            for a in names
            for b in names
            if a != b and self.peers[b].publish
        )

    async def close(self) -> None:
        await asyncio.gather(*(peer.close() for peer in self.peers.values()))
        await asyncio.gather(*(client.close() for client in self.clients.values()))


@pytest.fixture(autouse=True)
def loopback_ice() -> AsyncIterator[None]:
    """Every peer in these tests gathers on 127.0.0.1 only."""
    previous = pinned_ice_addresses()
    pin_ice_addresses(["127.0.0.1"])
    yield
    pin_ice_addresses(previous)


@pytest_asyncio.fixture
async def visit() -> AsyncIterator[Visit]:
    v = Visit()
    yield v
    with contextlib.suppress(Exception):
        await v.close()


@pytest_asyncio.fixture
async def h264_visit() -> AsyncIterator[Visit]:
    v = Visit(codec="H264")
    yield v
    with contextlib.suppress(Exception):
        await v.close()


class RtpVisit:
    """A Room plus one raw-RTP client (``tests.harness.rtpclient``) per RelayPeer: exact
    control of every packet sent, and a record of every packet received."""

    def __init__(self, codec: str = "VP8") -> None:
        from tests.harness.footage import footage

        self.codec = codec
        self.footage = footage(codec, WIDTH, HEIGHT, 30, 200_000, 30)
        self.room = Room("V1", codec=codec)
        self.totals = RelayStats()
        self.peers: dict[str, RelayPeer] = {}
        self.clients: dict[str, RtpClient] = {}

    async def join(
        self, name: str, *, publish: bool = True, **options: object
    ) -> tuple[RtpClient, RelayPeer]:
        client = RtpClient(name, self.footage, publish=publish, keep=True, **options)  # type: ignore[arg-type]
        peer = RelayPeer(
            name, codec=self.codec, ice_servers=[], publish=publish, totals=self.totals
        )
        self.clients[name], self.peers[name] = client, peer
        changed: list[RelayPeer] = []
        answer = await peer.accept_offer(
            await client.offer(), joining=lambda: changed.extend(self.room.add(peer))
        )
        await client.accept_answer(answer)
        for other in changed:
            await self.renegotiate(other)
        return client, peer

    async def renegotiate(self, peer: RelayPeer) -> None:
        if not peer.offer_needed:
            return
        client = self.clients[peer.peer_id]
        await peer.accept_answer(await client.answer(await peer.create_offer()))

    async def leave(self, name: str) -> None:
        peer, client = self.peers.pop(name), self.clients.pop(name)
        changed = self.room.remove(peer)
        await peer.close()
        await client.close()
        for other in changed:
            await self.renegotiate(other)

    def received(self, subscriber: str, publisher: str, kind: str) -> rtpclient.Reception:
        found = self.clients[subscriber].from_publisher(publisher, kind)
        return found if found is not None else rtpclient.Reception(0)

    async def wait_for(self, condition, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
        """Poll ``condition()`` until true; return the seconds it took."""
        return await wait_for(condition, timeout)

    async def close(self) -> None:
        await asyncio.gather(*(peer.close() for peer in self.peers.values()))
        await asyncio.gather(*(client.close() for client in self.clients.values()))


@pytest_asyncio.fixture
async def rtp_visit() -> AsyncIterator[RtpVisit]:
    v = RtpVisit()
    yield v
    with contextlib.suppress(Exception):
        await v.close()


@pytest_asyncio.fixture(params=["VP8", "H264"])
async def rtp_visit_each_codec(request: pytest.FixtureRequest) -> AsyncIterator[RtpVisit]:
    """An RtpVisit of each of the visit codecs."""
    v = RtpVisit(codec=request.param)
    yield v
    with contextlib.suppress(Exception):
        await v.close()

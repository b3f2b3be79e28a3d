"""The headless kiosk: an aiortc client that speaks Parlor's signaling protocol.

It sends a media file or a generated test pattern, receives every other participant's
media and counts decoded frames. Tests and `bench/` use `ParlorClient` as their peer; a
subclass changes what it sends and learns what it receives through the public hooks
(`tracks`, `track_received`, `frame_received`, `socket_closed`), never its private methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import AUDIO_PTIME, MediaStreamError

from signaling.protocol import Close, Message

log = logging.getLogger("parlor.kiosk")

SOCKET_CLOSED = "closed"  # not on the wire: what `connect` answers if the socket closed first


class PatternTrack(MediaStreamTrack):
    """A moving test pattern generated in memory (no file, no lavfi needed).

    `start`: the monotonic instant of its first frame (default: when first asked). One far in
    the past makes `recv` return every frame at once (bench/harness.py pre-encodes so)."""

    kind = "video"

    def __init__(
        self, width: int = 640, height: int = 480, fps: int = 30, *, start: float | None = None
    ) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._start = start
        self._count = 0
        self._planes: list[bytes] = []

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._count / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        shade = (self._count * 4) % 256
        stride = frame.planes[0].line_size
        bar = (self._count * 8) % self.width
        width = min(16, self.width - bar)
        y = bytearray([shade]) * (stride * self.height)
        for row in range(0, self.height, 8):  # a moving bar, so the encoder has work to do
            start = row * stride + bar
            y[start : start + width] = b"\xff" * width
        frame.planes[0].update(bytes(y))
        for plane in frame.planes[1:]:
            plane.update(bytes([128]) * plane.buffer_size)
        frame.pts = self._count * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._count += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """20 ms of quiet 440 Hz tone per frame, in real time (`start`: as for `PatternTrack`)."""

    kind = "audio"

    def __init__(self, *, start: float | None = None) -> None:
        super().__init__()
        self._start = start
        self._count = 0
        import math

        samples = 960  # 20 ms at 48 kHz
        self._pcm = b"".join(
            int(800 * math.sin(2 * math.pi * 440 * i / 48000)).to_bytes(2, "little", signed=True)
            for i in range(samples)
        )

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._count * AUDIO_PTIME
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(self._pcm)
        frame.sample_rate = 48000
        frame.pts = self._count * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self._count += 1
        return frame


@dataclass
class Received:
    """What one client received, per kind."""

    frames: Counter[str] = field(default_factory=Counter)
    first_at: dict[str, float] = field(default_factory=dict)
    last_at: dict[str, float] = field(default_factory=dict)
    max_gap: dict[str, float] = field(default_factory=dict)
    video_sizes: set[tuple[int, int]] = field(default_factory=set)


class ParlorClient:
    """One participant (or monitor) connected through /ws with a real aiortc peer."""

    def __init__(
        self,
        server: str,
        token: str,
        visit: str,
        *,
        mode: str = "participant",
        video: str | None = "testsrc",
        audio: bool = True,
        size: tuple[int, int] = (640, 480),
        fps: int = 30,
        codec: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token, self.visit, self.mode = token, visit, mode
        self.video, self.audio, self.size, self.fps = video, audio, size, fps
        self.codec = codec
        self.messages: list[dict[str, Any]] = []
        self.received = Received()
        self.joined: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.terminated: dict[str, Any] | None = None
        self.close_code: int | None = None
        self.pc: RTCPeerConnection | None = None
        self.connected_at: float | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._consumers: list[asyncio.Task] = []
        self._player: MediaPlayer | None = None
        self._answered = asyncio.Event()
        self.closed = asyncio.Event()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    # -- connection -----------------------------------------------------------------------
    async def connect(self, *, offer: bool = True, timeout: float = 10.0) -> dict[str, Any]:
        """Join; on `joined`, negotiate media. Returns `joined`, or the refusal `error`."""
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(
            self.server.replace("http", "ws", 1) + "/ws", max_msg_size=0
        )
        join: dict[str, Any] = {"type": Message.JOIN, "token": self.token, "visit": self.visit}
        if self.mode == "monitor":
            join["mode"] = "monitor"
        await self._ws.send_json(join)
        self._reader = asyncio.create_task(self._read())
        first = await asyncio.wait_for(self._events.get(), timeout)
        if first.get("type") != Message.JOINED:
            await asyncio.wait_for(self.closed.wait(), timeout)
            return first
        self.joined = first
        if offer:
            await self._offer(first)
            await asyncio.wait_for(self._answered.wait(), timeout)
        return first

    def _ice(self, joined: dict[str, Any]) -> RTCConfiguration:
        servers = [RTCIceServer(**s) for s in joined.get("ice_servers", [])]
        return RTCConfiguration(iceServers=servers)

    async def _offer(self, joined: dict[str, Any]) -> None:
        pc = RTCPeerConnection(self._ice(joined))
        self.pc = pc
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        codec = (self.codec or joined.get("codec") or "VP8").upper()
        if self.mode == "monitor":
            pc.addTransceiver("audio", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
        else:
            audio, video = self.tracks(joined)
            if audio is not None:
                pc.addTransceiver(audio, direction="sendrecv")
            if video is not None:
                transceiver = pc.addTransceiver(video, direction="sendrecv")
                self._prefer(transceiver, codec)
        await pc.setLocalDescription(await pc.createOffer())
        await self.send({"type": Message.OFFER, "sdp": pc.localDescription.sdp})

    # -- hooks: what a subclass may change or learn -------------------------------------------
    def tracks(
        self, joined: dict[str, Any]
    ) -> tuple[MediaStreamTrack | None, MediaStreamTrack | None]:
        """The audio and video this client sends (called once `joined` arrived)."""
        audio: MediaStreamTrack | None = ToneTrack() if self.audio else None
        video: MediaStreamTrack | None = None
        if self.video == "testsrc":
            video = PatternTrack(*self.size, fps=self.fps)
        elif self.video:
            self._player = MediaPlayer(self.video, loop=True)
            video = self._player.video
            if self.audio and self._player.audio is not None:
                audio = self._player.audio
        return audio, video

    @staticmethod
    def _prefer(transceiver: Any, codec: str) -> None:
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        wanted = [c for c in capabilities if c.mimeType.lower() == f"video/{codec.lower()}"]
        if codec == "H264":
            wanted = [c for c in wanted if (c.parameters or {}).get("packetization-mode") == "1"
                      and str((c.parameters or {}).get("profile-level-id", "")).startswith("42")]  # fmt: skip
        rtx = [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
        transceiver.setCodecPreferences(wanted + rtx)

    def _on_state(self) -> None:
        if (
            self.pc is not None
            and self.pc.connectionState == "connected"
            and self.connected_at is None
        ):
            self.connected_at = time.monotonic()

    def track_received(self, track: MediaStreamTrack, receiver: Any) -> None:
        """A remote track arrived on `receiver` (its frames are read and counted next)."""

    def frame_received(self, kind: str, frame: Any, at: float) -> None:
        """A frame of `kind` was decoded at `at` (time.monotonic()) and counted."""

    def socket_closed(self, at: float) -> None:
        """The signaling socket closed at `at` (time.monotonic())."""

    # -- the rest is this client's own --------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.pc is not None
        receiver = next((r for r in self.pc.getReceivers() if r.track is track), None)
        self.track_received(track, receiver)
        self._consumers.append(asyncio.create_task(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        """Read every received frame (an unread track leaks memory) and count it."""
        got = self.received
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            kind = track.kind
            got.frames[kind] += 1
            got.first_at.setdefault(kind, now)
            if kind in got.last_at:
                got.max_gap[kind] = max(got.max_gap.get(kind, 0.0), now - got.last_at[kind])
            got.last_at[kind] = now
            if kind == "video":
                got.video_sizes.add((frame.width, frame.height))
            self.frame_received(kind, frame, now)

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                data["_at"] = time.monotonic()
                self.messages.append(data)
                await self._handle(data)
        finally:
            self.close_code = self._ws.close_code
            self.socket_closed(time.monotonic())
            self.closed.set()
            await self._events.put({"type": SOCKET_CLOSED, "code": self.close_code})

    async def _handle(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind in (Message.JOINED, Message.ERROR, Message.REDIRECT) and self.joined is None:
            if kind == Message.ERROR:
                self.error = data
            await self._events.put(data)
        elif kind == Message.ANSWER and self.pc is not None:
            await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "answer"))
            self._answered.set()
        elif kind == Message.OFFER and self.pc is not None:
            await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self.send({"type": Message.ANSWER, "sdp": self.pc.localDescription.sdp})
        elif kind == Message.TERMINATED:
            self.terminated = data
        elif kind == Message.ERROR:
            self.error = data

    async def send(self, message: dict[str, Any]) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_json(message)

    def last(self, kind: str) -> dict[str, Any] | None:
        return next((m for m in reversed(self.messages) if m.get("type") == kind), None)

    async def wait_for(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.last(kind)
            if found is not None:
                return found
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {kind!r} message within {timeout} s")

    async def wait_frames(
        self, kind: str = "video", count: int = 10, timeout: float = 10.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while self.received.frames[kind] < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"received {self.received.frames[kind]} {kind} frames, wanted {count}"
                )
            await asyncio.sleep(0.02)

    async def leave(self) -> None:
        await self.send({"type": Message.LEAVE})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 5)
        await self.close()

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self.pc is not None:
            await self.pc.close()
        for task in self._consumers:
            task.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 2)
        if self._session is not None:
            await self._session.close()


class PresenceLink:
    """A kiosk's presence connection (signaling/presence.py): it says the kiosk is there and
    sends a heartbeat every `heartbeat_seconds` the server asks for; after a drop it connects
    again with back-off, but not after a refusal that trying again cannot fix (a bad token,
    not a kiosk, replaced by a newer connection: close 4401, 4403, 4409)."""

    RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0)

    def __init__(self, server: str, token: str, *, reconnect: bool = True) -> None:
        self.url = server.rstrip("/").replace("http", "ws", 1) + "/ws"
        self.token, self.reconnect = token, reconnect
        self.present: dict[str, Any] | None = None  # the server's last `present`
        self.error: dict[str, Any] | None = None
        self.close_code: int | None = None
        self.beats = 0  # heartbeats the server echoed
        self.connected = asyncio.Event()
        self.stopped = asyncio.Event()  # given up (refused), or stopped
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """Connect; return the first `present` (None: refused, see `error`)."""
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run())
        waiting = asyncio.ensure_future(self.connected.wait())
        stopping = asyncio.ensure_future(self.stopped.wait())
        await asyncio.wait(
            {waiting, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        waiting.cancel()
        stopping.cancel()
        return self.present

    async def _run(self) -> None:
        attempt = 0
        while not self.stopped.is_set():
            final = await self._once()
            if final or not self.reconnect:
                break
            attempt += 1
            await asyncio.sleep(self.RETRY_DELAYS[min(attempt, len(self.RETRY_DELAYS)) - 1])
        self.stopped.set()

    async def _once(self) -> bool:
        """One connection; True when it must not be tried again."""
        assert self._session is not None
        try:
            ws = self._ws = await self._session.ws_connect(self.url)
        except (aiohttp.ClientError, OSError):
            return False
        beating: asyncio.Task[None] | None = None
        try:
            await ws.send_json({"type": Message.PRESENCE, "token": self.token})
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                kind = data.get("type")
                if kind == Message.PRESENT:
                    self.present = data
                    self.connected.set()
                    if beating is None:
                        beating = asyncio.create_task(self._beat(ws, data["heartbeat_seconds"]))
                elif kind == Message.HEARTBEAT:
                    self.beats += 1
                elif kind == Message.ERROR:
                    self.error = data
        except (aiohttp.ClientError, ConnectionError, ValueError):
            pass
        finally:
            if beating is not None:
                beating.cancel()
            self.connected.clear()
            self.close_code = ws.close_code
        return self.close_code in (Close.BAD_TOKEN, Close.REFUSED, Close.REPLACED)

    @staticmethod
    async def _beat(ws: aiohttp.ClientWebSocketResponse, every: float) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not ws.closed:
                await asyncio.sleep(every)
                await ws.send_json({"type": Message.HEARTBEAT})

    async def drop(self) -> None:
        """Close the current connection as a crash would not: cleanly (then reconnect)."""
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()

    async def stop(self) -> None:
        self.stopped.set()
        await self.drop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)
        if self._session is not None:
            await self._session.close()


def token_role(token: str) -> str | None:
    """The role a token claims (unverified: the server decides; this only picks a mode)."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    role = claims.get("role")
    return role if isinstance(role, str) else None


async def run_kiosk(args: Any) -> int:
    """`parlor kiosk`: with a device token, hold the kiosk's presence connection the whole
    time; with `--visit`, join that visit and leave at its end (or after `--seconds`);
    without, wait for this kiosk's visits and join each one when it opens, until `--seconds`
    (0: for ever). Prints one JSON line per event."""
    import os

    from relay import pin_ice_addresses

    addresses = os.environ.get("PARLOR_ICE_ADDRESSES")
    if addresses:
        pin_ice_addresses([a.strip() for a in addresses.split(",") if a.strip()])
    presence = None
    if token_role(args.token) == "kiosk":
        presence = PresenceLink(args.server, args.token)
        present = await presence.start()
        print(json.dumps({"presence": present or presence.error}), flush=True)
    started = time.monotonic()
    try:
        if args.visit:
            return await _one_visit(args, args.visit, started)
        while not (args.seconds and time.monotonic() - started >= args.seconds):
            visit = await _open_visit(args)
            if visit is not None:
                await _one_visit(args, visit, started)
                continue
            await asyncio.sleep(min(15.0, args.seconds or 15.0))
        return 0
    finally:
        if presence is not None:
            await presence.stop()


async def _open_visit(args: Any) -> str | None:
    """The id of the visit open at this kiosk now, if any (GET /api/v1/kiosk/visit)."""
    headers = {"Authorization": f"Bearer {args.token}"}
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(args.server.rstrip("/") + "/api/v1/kiosk/visit", headers=headers) as response,
        ):
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, OSError, ValueError):
        print(json.dumps({"waiting": "the server cannot be reached"}), flush=True)
        return None
    visit = body.get("visit") if isinstance(body, dict) else None
    if isinstance(visit, dict) and isinstance(visit.get("id"), str):
        return visit["id"]
    print(json.dumps({"waiting": body.get("next") if isinstance(body, dict) else None}), flush=True)
    return None


async def _one_visit(args: Any, visit: str, started: float) -> int:
    """Join `visit`, report frame counts every 5 s, leave at its end or on --seconds."""
    client = ParlorClient(args.server, args.token, visit, video=args.video)
    first = await client.connect()
    if first.get("type") != Message.JOINED:
        print(json.dumps({"refused": first, "close_code": client.close_code}))
        await client.close()
        return 1
    print(
        json.dumps({"joined": {k: v for k, v in first.items() if k != "ice_servers"}}), flush=True
    )
    while not client.closed.is_set():
        if args.seconds and time.monotonic() - started >= args.seconds:
            await client.leave()
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.closed.wait(), 5)
        print(
            json.dumps(
                {
                    "frames": dict(client.received.frames),
                    "state": client.pc.connectionState if client.pc else None,
                }
            ),
            flush=True,
        )
    print(
        json.dumps(
            {
                "ended": client.terminated,
                "close_code": client.close_code,
                "frames": dict(client.received.frames),
            }
        )
    )
    await client.close()
    return 0

"""One simulated participant of the load generator, and the one timer that sends for all.

A :class:`LoadParticipant` is a kiosk or a family member as the node sees one: a real
WebSocket speaking SPEC §5 (``join``; its ``offer``; answers to the server's re-offers;
``terminated``, ``error`` and the close codes; a ``redirect`` to the node that owns the call)
and a real aiortc peer connection for ICE, DTLS and the SDP. After DTLS nothing of aiortc's
media machinery runs: its senders and receivers are never started
(``relay.aiortc_internals.take_over_sender``/``take_over_receiver``), and the transport's
datagrams are taken below aioice's queue (``relay.aiortc_internals.DatagramPath``), as the
relay takes them.

* **Sending**: pre-packetized VP8 and Opus (``signaling.loadmedia``) behind RTP headers
  written here, protected with the transport's own SRTP session and ``sendto``-d on the
  nominated pair. One :class:`Pacer` per process (one loop timer every :data:`TICK` s)
  sends what is due for every participant: audio at its packet time, each video frame's
  packets spread over the ticks of its frame (at most :data:`VIDEO_BURST` a tick, so a
  keyframe is paced rather than thrown at the node at once), a sender report per stream
  about every second. A PLI or FIR from the relay makes the next frame sent the loop's next
  keyframe.
* **Receiving**: SRTP leaves the RTP header in clear, so packets are counted per kind by
  payload type without decrypting them; per kind the arrival instant of the last packet
  (``time.monotonic()``, the same clock in every process of the machine: a kill latency is
  measured to it), the largest gap, and the recent arrival instants (for gap analysis). Only
  RTCP is decrypted (a few packets a second), to hear keyframe requests.

Nothing here answers NACKs (loopback loses nothing unless the node falls behind, and then a
keyframe request follows) or sends transport-cc: the node is measured forwarding, not
estimating bandwidth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import struct
import time
from collections import deque
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from relay import aiortc_internals
from relay.aiortc_internals import DatagramPath, DtlsCertificate
from relay.codec import NegotiatedCodec, VisitCodec
from relay.fastpath import SrtpError
from relay.ice import rtc_configuration
from relay.ntp import ntp_from_unix_ns
from relay.rtcp import build_sdes_cname, build_sender_report, iter_packets
from relay.rtp import MalformedPacket
from signaling.loadmedia import AUDIO_CLOCK, VIDEO_CLOCK, LoadMedia
from signaling.protocol import Message

log = logging.getLogger("parlor.load")

TICK = 0.01
"""Seconds between the pacer's rounds. Every stream starts on a tick, and audio packet times
(20, 40, 60 ms) are whole ticks, so audio leaves on time; a 30 fps frame leaves on the first
tick after it is due. (Each round of a process's loop costs ~0.1 ms of CPU here, whatever it
sends: 5 ms rounds cost a worker 2 % of a core before it sent anything.)"""
VIDEO_BURST = 12
"""Video packets a participant sends per tick at most (1,200 a second: ~11 Mbit/s)."""
CATCH_UP = 0.25
"""A stream this far behind its schedule (a stalled loop) skips ahead instead of bursting."""
REPORT_INTERVAL = 1.0
CLIENT_FAILED = "client-failed"
"""The participant's own failure in its report (applying the server's SDP raised): the load
generator's record, not a protocol error code (those are signaling.protocol's)."""
LATENESS_KEPT = 12_000
"""Pacer rounds whose lateness is kept (a minute at 200 a second)."""
RETRY_AFTER = 0.2
"""Seconds before a join refused with a retryable close code is tried again."""
ARRIVALS_KEPT = 1500
"""Arrival instants kept per kind (30 s of 20 ms audio, ~8 s of 640x480@30 video)."""
SOCKET_CLOSED = "closed"
"""Not on the wire: what a join meets when the socket closed before any answer."""
_HEADER = struct.Struct("!BBHII")
_PSFB = 206  # RTCP payload-specific feedback: FMT 1 PLI, FMT 4 FIR
_PLI, _FIR = 1, 4
KINDS = ("audio", "video")


class Refused(Exception):
    """The node did not let the participant in (or threw it out before media flowed)."""

    def __init__(self, code: str, close_code: int | None, message: str = "") -> None:
        super().__init__(f"{code} (close {close_code}): {message}")
        self.code, self.close_code, self.message = code, close_code, message


class Arrivals:
    """What arrived of one kind: counted from the clear RTP header, never decrypted."""

    __slots__ = ("count", "first", "last", "max_gap", "times")

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.max_gap = 0.0
        self.times: deque[float] = deque(maxlen=ARRIVALS_KEPT)

    def since(self, since: float) -> list[float]:
        return [round(t, 6) for t in self.times if t >= since]


class Stream:
    """One RTP stream the participant sends: numbering, clock, counts for its SRs."""

    __slots__ = (
        "ssrc",
        "payload_type",
        "clock_rate",
        "step",
        "interval",
        "sequence",
        "base",
        "index",
        "due",
        "started",
        "packets",
        "octets",
    )

    def __init__(self, ssrc: int, payload_type: int, clock_rate: int, interval: float) -> None:
        self.ssrc, self.payload_type, self.clock_rate = ssrc, payload_type, clock_rate
        self.interval = interval
        self.step = round(clock_rate * interval)
        self.sequence = random.randrange(1, 32768)
        self.base = random.randrange(1 << 32)
        self.index = 0
        self.due = 0.0
        self.started = 0.0
        self.packets = 0
        self.octets = 0

    def timestamp_at(self, now: float) -> int:
        return (self.base + round((now - self.started) * self.clock_rate)) & 0xFFFFFFFF


class Pacer:
    """The one timer of a process: every :data:`TICK` s, each participant sends what is due."""

    def __init__(self, tick: float = TICK) -> None:
        self.tick = tick
        self.participants: list[LoadParticipant] = []
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self.late_ticks = 0
        """Rounds that ran more than a tick late (this process's loop was busy)."""
        self.lateness: deque[tuple[float, float]] = deque(maxlen=LATENESS_KEPT)
        """(when, seconds late) of recent rounds: this process's own event-loop lag, which
        delays every arrival instant it takes."""

    def add(self, participant: LoadParticipant) -> None:
        if participant not in self.participants:
            self.participants.append(participant)
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._next = loop.time() + self.tick
            self._handle = loop.call_at(self._next, self._round)

    def slot(self, interval: float) -> float:
        """A start time on this pacer's grid of ticks, one of the next ``interval`` s of
        them, at random: streams are spread over the ticks and each leaves on one."""
        ticks = max(1, round(interval / self.tick))
        return self._next + random.randrange(ticks) * self.tick

    def lag_since(self, since: float) -> list[float]:
        """How late each round since ``since`` ran, in seconds."""
        return [late for at, late in self.lateness if at >= since]

    def remove(self, participant: LoadParticipant) -> None:
        with contextlib.suppress(ValueError):
            self.participants.remove(participant)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _round(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.lateness.append((now, now - self._next))
        for participant in list(self.participants):
            try:
                participant.pump(now)
            except Exception:  # one broken participant must not stop everyone's media
                log.exception("load participant %s: sending failed", participant.name)
                self.remove(participant)
        self._next += self.tick
        if self._next < now:  # skip the rounds a busy loop missed, staying on the grid
            self.late_ticks += 1
            self._next += math.ceil((now - self._next) / self.tick) * self.tick
        self._handle = loop.call_at(self._next, self._round)


class LoadParticipant:
    """A kiosk or family member of one visit, with pre-packetized media and packet counts."""

    def __init__(
        self,
        server: str,
        token: str,
        visit: str,
        *,
        media: LoadMedia,
        pacer: Pacer,
        http: aiohttp.ClientSession,
        name: str = "",
        call: int = 0,
        role: str = "kiosk",
        certificate: DtlsCertificate | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.certificate = certificate if certificate is not None else DtlsCertificate()
        self.token, self.visit = token, visit
        self.media, self.pacer, self.http = media, pacer, http
        self.name = name or f"{role}-{call}"
        self.call, self.role = call, role
        self.arrivals = {kind: Arrivals() for kind in KINDS}
        self.other_packets = 0
        """RTP packets of a payload type that is neither audio nor video (RTX)."""
        self.keyframe_requests = 0
        self.times: dict[str, float] = {}
        """Instants (``time.monotonic()``) of the join's steps: ``ws``, ``join``, ``joined``,
        ``offer``, ``answer``, ``connected``, ``media`` (both kinds arrived), ``terminated``,
        ``closed``."""
        self.refusals: list[dict[str, Any]] = []
        """Every refusal met on the way in: ``code``, ``close_code``, ``message``."""
        self.joined: dict[str, Any] | None = None
        self.terminated: dict[str, Any] | None = None
        self.errors: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.connected = asyncio.Event()
        self.pc: RTCPeerConnection | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._path: DatagramPath | None = None
        self._kinds: dict[int, Arrivals] = {}
        self._taken: set[int] = set()
        self._audio: Stream | None = None
        self._video: Stream | None = None
        self._queue: deque[tuple[bytes, int, bool]] = deque()
        self._position = 0
        self._keyframe_wanted = False
        self._next_report = 0.0
        self._cname = f"load-{random.getrandbits(48):012x}"
        self._sending = False

    # --- joining --------------------------------------------------------------------

    async def join(self, timeout: float = 30.0, *, retry: tuple[int, ...] = ()) -> None:
        """Join the visit and negotiate; return once the peer connection is ``connected``.

        Raises :class:`Refused` with the node's error code and close code when it says no
        (a ``redirect`` is followed once), ``TimeoutError`` past ``timeout``. A refusal whose
        close code is in ``retry`` (e.g. 4503, admission control) is noted in
        :attr:`refusals` and the join tried again after :data:`RETRY_AFTER` s, until the
        timeout.
        """
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self._join_once()
                    return
                except Refused as refusal:
                    self.refusals.append(
                        {"code": refusal.code, "close_code": refusal.close_code,
                         "message": refusal.message, "at": time.monotonic()}
                    )  # fmt: skip
                    if refusal.close_code not in retry:
                        raise
                await self.close()
                self._reset()
                await asyncio.sleep(RETRY_AFTER)

    async def _join_once(self) -> None:
        url = self.server
        for _ in range(2):
            joined = await self._join_at(url)
            if joined.get("type") != Message.REDIRECT:
                break
            ws, self._ws = self._ws, None
            await self._close_socket(ws)
            url = str(joined.get("url") or "").rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise Refused("bad-redirect", None, f"redirect to {url!r}")
        else:
            raise Refused("redirect-loop", None, "redirected twice")
        self.joined = joined
        self.times["joined"] = time.monotonic()
        await self._offer(joined)
        await self._wait_connected()

    def _reset(self) -> None:
        """Forget a refused attempt, keeping its refusals and the join's first instants."""
        self.pc, self._ws, self._reader, self._path = None, None, None, None
        self.joined, self.close_code = None, None
        self.closed, self.connected = asyncio.Event(), asyncio.Event()
        self.errors = []
        for step in ("offer", "answer", "peer_failed", "peer_closed", "closed"):
            self.times.pop(step, None)
        self._taken.clear()
        self._kinds.clear()
        self._audio = self._video = None
        self._queue.clear()

    async def _join_at(self, url: str) -> dict[str, Any]:
        self.times.setdefault("ws", time.monotonic())
        self._ws = ws = await self.http.ws_connect(
            url.replace("http", "ws", 1) + "/ws", max_msg_size=0
        )
        first: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(ws, first))
        self.times.setdefault("join", time.monotonic())
        await ws.send_json({"type": Message.JOIN, "token": self.token, "visit": self.visit})
        answer = await first
        kind = answer.get("type")
        if kind in (Message.JOINED, Message.REDIRECT):
            return answer
        await asyncio.wait_for(self.closed.wait(), 10)
        code = str(answer.get("code") or kind)
        raise Refused(code, self.close_code, str(answer.get("message") or ""))

    async def _offer(self, joined: dict[str, Any]) -> None:
        codec = VisitCodec.named(str(joined.get("codec") or "VP8"))
        if codec.name != "VP8":
            raise Refused(
                "unsupported-codec",
                None,
                f"the load generator sends VP8; the node uses {codec.name}",
            )
        aiortc_internals.defer_bitrate_estimators()  # its receivers never start
        pc = self.certificate.peer_connection(rtc_configuration(joined.get("ice_servers") or []))
        self.pc = pc
        pc.on("connectionstatechange", self._on_state)
        for kind in KINDS:
            transceiver = pc.addTransceiver(kind, direction="sendrecv")
            transceiver.setCodecPreferences(codec.preferences(kind))
        self._take_over()
        await aiortc_internals.set_local_offer(pc)
        self.times["offer"] = time.monotonic()
        await self._send({"type": Message.OFFER, "sdp": pc.localDescription.sdp})

    async def _wait_connected(self) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in (self.connected, self.closed)]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not self.connected.is_set():
            error = self.errors[-1] if self.errors else {}
            raise Refused(
                str(error.get("code") or "closed"), self.close_code, str(error.get("message") or "")
            )

    def _on_state(self) -> None:
        pc = self.pc
        if pc is None:
            return
        state = pc.connectionState
        if state == "connected" and not self.connected.is_set():
            self.times["connected"] = time.monotonic()
            self.connected.set()
        elif state in ("failed", "closed"):
            self.times.setdefault(f"peer_{state}", time.monotonic())
            if not self.connected.is_set():  # the join waits for this peer in vain
                self.errors.append({"code": f"peer-{state}", "message": "", "at": time.monotonic()})
                self.closed.set()

    def _take_over(self) -> None:
        """Keep aiortc's senders and receivers of every new m-line idle (see the module)."""
        assert self.pc is not None
        aiortc_internals.take_over_transceivers(
            self.pc, self._taken, self._sender_started, self._receiver_started
        )

    def _datagrams(self, transceiver: Any) -> DatagramPath:
        if self._path is None:
            self._path = DatagramPath(aiortc_internals.dtls_transport_of(transceiver))
            self._path.intercept(self._on_datagram)
        return self._path

    def _learn_payload_types(self, kind: str, codecs: list[Any]) -> None:
        for codec in codecs:
            if not codec.mimeType.lower().endswith("/rtx"):
                self._kinds[int(codec.payloadType)] = self.arrivals[kind]

    def _sender_started(self, transceiver: Any, parameters: Any) -> None:
        self._datagrams(transceiver)
        self._learn_payload_types(transceiver.kind, parameters.codecs)
        codec = NegotiatedCodec.of(parameters.codecs)
        if codec is None or transceiver.direction not in ("sendrecv", "sendonly"):
            return
        ssrc, _ = aiortc_internals.sender_ssrcs(transceiver.sender)
        if transceiver.kind == "audio" and self._audio is None:
            self._audio = Stream(ssrc, codec.payload_type, AUDIO_CLOCK, self.media.ptime / 1000)
        elif transceiver.kind == "video" and self._video is None:
            self._video = Stream(ssrc, codec.payload_type, VIDEO_CLOCK, 1 / self.media.video.fps)
        if not self._sending and self._audio is not None and self._video is not None:
            self._start_sending()

    def _receiver_started(self, transceiver: Any, parameters: Any) -> None:
        self._datagrams(transceiver)
        self._learn_payload_types(transceiver.kind, parameters.codecs)

    def _start_sending(self) -> None:
        self._sending = True
        now = asyncio.get_running_loop().time()
        self.pacer.add(self)
        for stream in (self._audio, self._video):
            assert stream is not None
            stream.started = stream.due = self.pacer.slot(stream.interval)
        self._next_report = now + random.uniform(0.2, REPORT_INTERVAL)

    # --- the signaling socket ----------------------------------------------------------

    async def _read(
        self, ws: aiohttp.ClientWebSocketResponse, first: asyncio.Future[dict[str, Any]]
    ) -> None:
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(message.data)
                except ValueError:
                    continue
                if not isinstance(data, dict):
                    continue
                if not first.done():
                    first.set_result(data)
                    continue
                await self._handle(data)
        except Exception as exc:  # a failure to apply the server's SDP ends this participant
            self.errors.append(
                {"code": CLIENT_FAILED, "message": repr(exc), "at": time.monotonic()}
            )
        finally:
            if ws is self._ws:
                self.close_code = ws.close_code
                self.times["closed"] = time.monotonic()
                self._stop_sending()
                self.closed.set()
            if not first.done():
                first.set_result({"type": SOCKET_CLOSED, "code": SOCKET_CLOSED})

    async def _handle(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        pc = self.pc
        if kind == Message.ANSWER and pc is not None:
            await pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "answer"))
            self._take_over()
            self.times.setdefault("answer", time.monotonic())
        elif kind == Message.OFFER and pc is not None:
            await pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
            self._take_over()  # before aiortc's connection task starts the new m-lines
            await aiortc_internals.set_local_answer(pc)
            await self._send({"type": Message.ANSWER, "sdp": pc.localDescription.sdp})
        elif kind == Message.TERMINATED:
            self.terminated = data
            self.times["terminated"] = time.monotonic()
        elif kind == Message.ERROR:
            self.errors.append(
                {"code": data.get("code"), "message": data.get("message"), "at": time.monotonic()}
            )

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_json(message)

    # --- media out (called by the pacer) -----------------------------------------------

    def pump(self, now: float) -> None:
        """Send what is due at ``now``: audio packets, video packets, sender reports."""
        path = self._path
        tx = None if path is None else path.tx
        if tx is None or not self._sending:
            return
        audio, video = self._audio, self._video
        assert audio is not None and video is not None and path is not None
        protect, send = tx.protect, path.send
        media = self.media
        if now - audio.due > CATCH_UP:
            audio.due, audio.index = now, audio.index + round((now - audio.due) / audio.interval)
        opus = media.opus
        while audio.due <= now:
            payload = opus[audio.index % len(opus)]
            timestamp = (audio.base + audio.index * audio.step) & 0xFFFFFFFF
            marked = audio.payload_type | (0x80 if audio.index == 0 else 0)  # talkspurt start
            send(
                protect(_HEADER.pack(0x80, marked, audio.sequence, timestamp, audio.ssrc) + payload)
            )
            audio.sequence = (audio.sequence + 1) & 0xFFFF
            audio.packets += 1
            audio.octets += len(payload)
            audio.index += 1
            audio.due += audio.interval
        if now - video.due > CATCH_UP:
            video.due, video.index = now, video.index + round((now - video.due) / video.interval)
        while video.due <= now:
            self._queue_frame(video)
            video.due += video.interval
        queue = self._queue
        for _ in range(min(VIDEO_BURST, len(queue))):
            payload, timestamp, marker = queue.popleft()
            marked = video.payload_type | (0x80 if marker else 0)  # the frame's last packet
            send(
                protect(_HEADER.pack(0x80, marked, video.sequence, timestamp, video.ssrc) + payload)
            )
            video.sequence = (video.sequence + 1) & 0xFFFF
            video.packets += 1
            video.octets += len(payload)
        if now >= self._next_report:
            self._next_report = now + REPORT_INTERVAL * random.uniform(0.75, 1.25)
            self._send_reports(now)

    def _queue_frame(self, video: Stream) -> None:
        frames = self.media.frames
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            self._position = self.media.next_keyframe(self._position)
        frame = frames[self._position % len(frames)]
        self._position = (self._position + 1) % len(frames)
        timestamp = (video.base + video.index * video.step) & 0xFFFFFFFF
        video.index += 1
        last = len(frame.payloads) - 1
        self._queue.extend(
            (payload, timestamp, number == last) for number, payload in enumerate(frame.payloads)
        )

    def _send_reports(self, now: float) -> None:
        path = self._path
        assert path is not None and path.tx is not None
        ntp = ntp_from_unix_ns(time.time_ns())
        compound = b""
        for stream in (self._audio, self._video):
            assert stream is not None
            compound += build_sender_report(
                stream.ssrc, ntp, stream.timestamp_at(now), stream.packets, stream.octets
            )
        compound += build_sdes_cname(self._audio.ssrc if self._audio else 0, self._cname)
        path.send(path.tx.protect_rtcp(compound))

    def _stop_sending(self) -> None:
        self._sending = False
        self.pacer.remove(self)

    # --- media in (the socket's readiness callback) -------------------------------------

    def _on_datagram(self, datagram: bytes, arrival_us: int) -> None:
        second = datagram[1]
        if 191 < second < 224:
            self._on_rtcp(datagram)
            return
        arrivals = self._kinds.get(second & 0x7F)
        if arrivals is None:
            self.other_packets += 1
            return
        now = time.monotonic()
        last = arrivals.last
        if last:
            if now - last > arrivals.max_gap:
                arrivals.max_gap = now - last
        else:
            arrivals.first = now
            if "media" not in self.times and all(
                a.count for a in self.arrivals.values() if a is not arrivals
            ):
                self.times["media"] = now
        arrivals.last = now
        arrivals.count += 1
        arrivals.times.append(now)

    def _on_rtcp(self, datagram: bytes) -> None:
        path = self._path
        if path is None or path.rx is None:
            return
        try:
            plain = path.rx.unprotect_rtcp(datagram)
            for packet_type, fmt, _, _ in iter_packets(plain):
                if packet_type == _PSFB and fmt in (_PLI, _FIR):
                    self.keyframe_requests += 1
                    self._keyframe_wanted = True
        except (SrtpError, MalformedPacket, ValueError):  # replays, garbage: not ours to fix
            return

    # --- leaving ------------------------------------------------------------------------

    async def leave(self) -> None:
        """Say ``leave`` and wait (briefly) for the close 1000, then close."""
        with contextlib.suppress(Exception):
            await self._send({"type": Message.LEAVE})
            await asyncio.wait_for(self.closed.wait(), 5)
        await self.close()

    async def close(self) -> None:
        self._stop_sending()
        await self._close_socket(self._ws)
        if self._path is not None:
            self._path.release()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()

    async def _close_socket(self, ws: aiohttp.ClientWebSocketResponse | None) -> None:
        reader = self._reader
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        if reader is not None and not reader.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(reader, 2)

    # --- what a report says --------------------------------------------------------------

    def record(self, since: float) -> dict[str, Any]:
        """What this participant saw, for a conductor in another process (JSON-able)."""
        terminated = self.terminated or {}
        return {
            "call": self.call,
            "role": self.role,
            "visit": self.visit,
            "packets": {kind: a.count for kind, a in self.arrivals.items()},
            "first": {kind: a.first or None for kind, a in self.arrivals.items()},
            "last": {kind: a.last or None for kind, a in self.arrivals.items()},
            "max_gap_ms": {kind: round(a.max_gap * 1000, 1) for kind, a in self.arrivals.items()},
            "arrivals": {kind: a.since(since) for kind, a in self.arrivals.items()},
            "other_packets": self.other_packets,
            "sent": {
                kind: stream.packets
                for kind, stream in (("audio", self._audio), ("video", self._video))
                if stream is not None
            },
            "keyframe_requests": self.keyframe_requests,
            "times": dict(self.times),
            "refusals": list(self.refusals),
            "errors": [e for e in self.errors if e.get("code")],
            "terminated_directive": (terminated.get("directive") or {}).get("id"),
            "terminated_reason": terminated.get("reason"),
            "close_code": self.close_code,
            "closed": self.closed.is_set(),
        }

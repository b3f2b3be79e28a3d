"""Relay cost and join latency: Parlor's passthrough relay against aiortc's MediaRelay.

Two processes, everything on 127.0.0.1: this script (the conductor) runs the
aiortc clients, and starts the server as ``python bench/relay.py --serve MODE``,
a minimal harness that speaks JSON lines on stdin/stdout (no HTTP, no policy):

* ``relay``: one ``relay.RelayPeer`` per client and a ``relay.Room`` per call.
* ``transcode``: the baseline, one plain RTCPeerConnection per client and
  ``aiortc.contrib.media.MediaRelay`` (decode once per source, encode once per
  subscriber).

Clients publish 640x480@30 VP8 (CBR 800 kbps, pre-encoded once so the client
process spends no CPU encoding; a keyframe is sent when a PLI arrives) plus
Opus. Subscribers count encoded frames without decoding them. ``N`` streams =
N publisher->subscriber flows: N=1 is a publisher and a receive-only peer,
N=2k is k separate 1:1 calls. For each mode and N the server process's CPU
time and RSS are read with psutil over a measurement window after a warm-up,
in a fresh server process. Then join -> first decoded remote video frame is
timed (median of 20) for a receive-only joiner into a call that has been
running for seconds, so only a forwarded keyframe request can make it fast.

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fractions
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
HERE = SCRIPT.parent
REPO = HERE.parent
# This file is named like the package it measures: make `import relay` find the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))

import av  # noqa: E402
import psutil  # noqa: E402
from aiortc import (  # noqa: E402
    MediaStreamError,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay  # noqa: E402

from relay import RelayPeer, RelayStats, Room, aiortc_internals, pin_ice_addresses  # noqa: E402
from relay.codec import VisitCodec  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 480, 30
VIDEO_BITRATE = 800_000
LOOP_FRAMES = 90  # 3 s of distinct pictures before the loop repeats
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, 48000)
STEP_TIMEOUT = 20.0


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- media the clients send ---------------------------------------------------


@dataclass
class Footage:
    """Pre-encoded media: a delta stream, its keyframe twin, and Opus."""

    deltas: list[bytes]
    keyframes: list[bytes]
    opus: list[bytes]


def load_footage() -> Footage:
    """The footage, encoded once per machine and kept in the temp directory."""
    cache = Path(tempfile.gettempdir()) / (
        f"parlor-bench-footage-{WIDTH}x{HEIGHT}-{LOOP_FRAMES}-{VIDEO_BITRATE}-v1.json"
    )
    with contextlib.suppress(OSError, ValueError, KeyError):
        data = json.loads(cache.read_text())
        return Footage(**{k: [base64.b64decode(x) for x in v] for k, v in data.items()})
    footage = make_footage()
    encoded = {k: [base64.b64encode(x).decode() for x in v] for k, v in vars(footage).items()}
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps(encoded))
    return footage


def make_footage() -> Footage:
    """Encode a panning field of soft random blocks once, like a slowly moving camera."""
    rng = random.Random(7)
    block = 4
    field_width = WIDTH + 3 * LOOP_FRAMES
    coarse = [
        bytes(rng.randrange(40, 216) for _ in range(field_width // block + 1))
        for _ in range(HEIGHT // block + 8)
    ]
    rows = [b"".join(bytes([v]) * block for v in row)[:field_width] for row in coarse]
    pictures = []
    for index in range(LOOP_FRAMES):
        offset = 3 * index
        pictures.append(
            b"".join(
                rows[(y + index) // block % len(rows)][offset : offset + WIDTH]
                for y in range(HEIGHT)
            )
        )

    def encode(gop: int) -> list[bytes]:
        context = av.CodecContext.create("libvpx", "w")
        context.width, context.height, context.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        context.time_base = fractions.Fraction(1, FPS)
        context.bit_rate = VIDEO_BITRATE
        context.gop_size = gop
        context.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",
            "minrate": str(VIDEO_BITRATE),
            "maxrate": str(VIDEO_BITRATE),
            "bufsize": str(VIDEO_BITRATE),
            "keyint_min": str(gop),
            "qmax": "56",
        }
        out: list[bytes] = []
        for index, luma in enumerate(pictures):
            frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
            frame.planes[0].update(_fit(luma, frame.planes[0]))
            for plane in frame.planes[1:]:
                plane.update(bytes([128]) * plane.buffer_size)
            frame.pts = index
            if gop == 1:
                frame.pict_type = av.video.frame.PictureType.I
            out += [bytes(p) for p in context.encode(frame)]
        out += [bytes(p) for p in context.encode(None)]
        return out[:LOOP_FRAMES]

    opus = av.CodecContext.create("libopus", "w")
    opus.sample_rate, opus.layout, opus.format = 48000, "stereo", "s16"
    opus.bit_rate = 32000
    packets: list[bytes] = []
    for index in range(50):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        tone = bytes((((i // 2) * 7 + index) % 64) for i in range(960 * 4))
        frame.planes[0].update(tone)
        frame.sample_rate = 48000
        frame.pts = index * 960
        packets += [bytes(p) for p in opus.encode(frame)]
    return Footage(deltas=encode(10_000), keyframes=encode(1), opus=packets or [b"\xf8\xff\xfe"])


def _fit(luma: bytes, plane: Any) -> bytes:
    if plane.line_size == WIDTH:
        return luma
    pad = bytes(plane.line_size - WIDTH)
    return b"".join(luma[y * WIDTH : (y + 1) * WIDTH] + pad for y in range(HEIGHT))


class _Precoded(MediaStreamTrack):
    """A track of pre-encoded packets, the `_index`th sent `offset` seconds after the first."""

    def __init__(self, footage: Footage) -> None:
        super().__init__()
        self._footage = footage
        self._index = 0
        self._start: float | None = None

    async def _wait_turn(self, offset: float) -> None:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + offset - time.monotonic()))


class PrecodedVideo(_Precoded):
    """Sends the pre-encoded VP8 loop at 30 fps; a PLI makes the next frame a keyframe."""

    kind = "video"

    def __init__(self, footage: Footage) -> None:
        super().__init__(footage)
        self._keyframe = True

    def request_keyframe(self) -> None:
        self._keyframe = True

    async def recv(self) -> av.Packet:
        await self._wait_turn(self._index / FPS)
        position = self._index % LOOP_FRAMES
        if self._keyframe:
            data, self._keyframe = self._footage.keyframes[position], False
        elif position == 0:  # skip the loop's own keyframe: a webcam sends them on request only
            data = self._footage.deltas[1]
        else:
            data = self._footage.deltas[position]
        packet = av.Packet(data)
        packet.pts, packet.time_base = self._index * (90000 // FPS), VIDEO_TIME_BASE
        self._index += 1
        return packet


class PrecodedAudio(_Precoded):
    kind = "audio"

    async def recv(self) -> av.Packet:
        await self._wait_turn(self._index * 0.02)
        packet = av.Packet(self._footage.opus[self._index % len(self._footage.opus)])
        packet.pts, packet.time_base = self._index * 960, AUDIO_TIME_BASE
        self._index += 1
        return packet


# --- the server process -------------------------------------------------------


class RelayServer:
    """Parlor's relay: RelayPeer + Room, exactly as signaling drives them."""

    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        self.peers: dict[str, RelayPeer] = {}
        self.totals = RelayStats()

    async def join(self, room_id: str, peer_id: str, publish: bool, sdp: str) -> dict:
        peer = RelayPeer(peer_id, ice_servers=[], publish=publish, totals=self.totals)
        self.peers[peer_id] = peer
        answer = await peer.accept_offer(sdp)
        room = self.rooms.setdefault(room_id, Room(room_id))
        offers = {p.peer_id: await p.create_offer() for p in room.add(peer)}
        return {"answer": answer, "offers": offers}

    async def answer(self, peer_id: str, sdp: str) -> dict:
        await self.peers[peer_id].accept_answer(sdp)
        return {}

    async def leave(self, room_id: str, peer_id: str) -> dict:
        peer = self.peers.pop(peer_id)
        changed = self.rooms[room_id].remove(peer)
        await peer.close()
        return {"offers": {p.peer_id: await p.create_offer() for p in changed}}

    def stats(self) -> dict:
        return self.totals.as_dict()


@dataclass
class TranscodePeer:
    pc: RTCPeerConnection
    tracks: list[MediaStreamTrack] = field(default_factory=list)


class TranscodeServer:
    """The baseline: aiortc's MediaRelay, which decodes and re-encodes."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, TranscodePeer]] = {}
        self.peers: dict[str, TranscodePeer] = {}
        self.media_relay = MediaRelay()

    async def join(self, room_id: str, peer_id: str, publish: bool, sdp: str) -> dict:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peer = TranscodePeer(pc)
        pc.on("track", peer.tracks.append)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        room = self.rooms.setdefault(room_id, {})
        changed: list[tuple[str, TranscodePeer]] = []
        for other_id, other in room.items():
            if other.tracks:
                self._forward(other.tracks, peer)
                changed.append((peer_id, peer))
            if peer.tracks:
                self._forward(peer.tracks, other)
                changed.append((other_id, other))
        room[peer_id] = peer
        self.peers[peer_id] = peer
        offers = {}
        for changed_id, changed_peer in dict(changed).items():
            await changed_peer.pc.setLocalDescription(await changed_peer.pc.createOffer())
            offers[changed_id] = changed_peer.pc.localDescription.sdp
        return {"answer": answer, "offers": offers}

    def _forward(self, tracks: list[MediaStreamTrack], to: TranscodePeer) -> None:
        for track in tracks:
            transceiver = to.pc.addTransceiver(
                self.media_relay.subscribe(track), direction="sendonly"
            )
            transceiver.setCodecPreferences(VisitCodec("VP8").preferences(track.kind))

    async def answer(self, peer_id: str, sdp: str) -> dict:
        await self.peers[peer_id].pc.setRemoteDescription(
            RTCSessionDescription(sdp=sdp, type="answer")
        )
        return {}

    async def leave(self, room_id: str, peer_id: str) -> dict:
        peer = self.peers.pop(peer_id)
        del self.rooms[room_id][peer_id]
        await peer.pc.close()
        return {"offers": {}}

    def stats(self) -> dict:
        return {}


async def serve(mode: str) -> None:
    """The server process: JSON-line requests on stdin, answers on stdout."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    pin_ice_addresses(["127.0.0.1"])
    server: RelayServer | TranscodeServer = RelayServer() if mode == "relay" else TranscodeServer()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while line := await reader.readline():
        request = json.loads(line)
        op = request.pop("op")
        ident = request.pop("id")
        try:
            if op == "quit":
                print(json.dumps({"id": ident}), flush=True)
                break
            if op == "stats":
                result = server.stats()
            else:
                result = await getattr(server, op)(**request)
            print(json.dumps({"id": ident, **result}), flush=True)
        except Exception as exc:  # report, keep serving
            print(json.dumps({"id": ident, "error": repr(exc)}), flush=True)
    for peer_id in list(server.peers):
        with contextlib.suppress(Exception):
            peer = server.peers[peer_id]
            await (peer.close() if isinstance(peer, RelayPeer) else peer.pc.close())


class ServerProcess:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.process: asyncio.subprocess.Process | None = None
        self.psutil: psutil.Process | None = None
        self._next = 0

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--serve",
            self.mode,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 22,
        )
        assert self.process.stdout is not None
        ready = json.loads(await asyncio.wait_for(self.process.stdout.readline(), 30))
        self.psutil = psutil.Process(ready["ready"])

    async def call(self, op: str, **fields: Any) -> dict:
        assert self.process and self.process.stdin and self.process.stdout
        self._next += 1
        self.process.stdin.write(
            json.dumps({"op": op, "id": self._next, **fields}).encode() + b"\n"
        )
        await self.process.stdin.drain()
        reply = json.loads(await asyncio.wait_for(self.process.stdout.readline(), STEP_TIMEOUT))
        if "error" in reply:
            raise RuntimeError(f"server {op}: {reply['error']}")
        return reply

    def cpu_seconds(self) -> float:
        assert self.psutil is not None
        times = self.psutil.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        assert self.psutil is not None
        return self.psutil.memory_info().rss

    async def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("quit"), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.wait(), 10)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


# --- the clients --------------------------------------------------------------


class Client:
    """One participant: publishes pre-encoded media and/or counts what arrives."""

    def __init__(self, peer_id: str, footage: Footage, *, publish: bool, decode: bool) -> None:
        self.peer_id = peer_id
        self.decode = decode
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video_frames = 0
        self.first_video_at: float | None = None
        self._hooked: set[int] = set()
        self._tasks: list[asyncio.Future[None]] = []
        self.video: PrecodedVideo | None = None
        if publish:
            self.video = PrecodedVideo(footage)
            video = self.pc.addTransceiver(self.video, direction="sendonly")
            video.setCodecPreferences(VisitCodec("VP8").preferences("video"))
            aiortc_internals.route_keyframe_requests(video.sender, self.video.request_keyframe)
            audio = self.pc.addTransceiver(PrecodedAudio(footage), direction="sendonly")
            audio.setCodecPreferences(VisitCodec("VP8").preferences("audio"))
        else:
            for kind in ("video", "audio"):
                transceiver = self.pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(VisitCodec("VP8").preferences(kind))
        if decode:
            self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self._count_video()

    def _count_video(self) -> None:
        self.video_frames += 1
        if self.first_video_at is None:
            self.first_video_at = time.monotonic()

    def _hook_receivers(self) -> None:
        """Count encoded frames instead of decoding (the client is not measured)."""
        if self.decode:
            return
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if id(receiver) in self._hooked or transceiver.direction != "recvonly":
                continue
            self._hooked.add(id(receiver))
            with contextlib.suppress(RuntimeError):
                if transceiver.kind == "video":
                    aiortc_internals.install_encoded_frame_sink(
                        receiver, lambda c, d, t: self._count_video(), lambda: None
                    )
                else:
                    aiortc_internals.install_encoded_frame_sink(
                        receiver, lambda c, d, t: None, lambda: None
                    )

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def answer_offer(self, sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._hook_receivers()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.video is not None:
            self.video.stop()
        await self.pc.close()


async def join(
    server: ServerProcess, clients: dict[str, Client], room: str, client: Client, publish: bool
) -> None:
    clients[client.peer_id] = client
    reply = await server.call(
        "join", room_id=room, peer_id=client.peer_id, publish=publish, sdp=await client.offer()
    )
    await client.accept_answer(reply["answer"])
    await renegotiate(server, clients, reply["offers"])


async def renegotiate(server: ServerProcess, clients: dict[str, Client], offers: dict) -> None:
    for peer_id, sdp in offers.items():
        answer = await clients[peer_id].answer_offer(sdp)
        await server.call("answer", peer_id=peer_id, sdp=answer)


# --- measurements -------------------------------------------------------------


async def measure_cost(
    mode: str, streams: int, footage: Footage, warmup: float, window: float
) -> dict:
    server = ServerProcess(mode)
    clients: dict[str, Client] = {}
    await server.start()
    try:
        await asyncio.sleep(0.5)
        idle_rss = server.rss()
        subscribers: list[Client] = []
        if streams == 1:
            await join(
                server, clients, "R0", Client("P0", footage, publish=True, decode=False), True
            )
            subscriber = Client("S0", footage, publish=False, decode=False)
            await join(server, clients, "R0", subscriber, False)
            subscribers.append(subscriber)
        else:
            for call in range(streams // 2):
                for side in ("a", "b"):
                    client = Client(f"C{call}{side}", footage, publish=True, decode=False)
                    await join(server, clients, f"R{call}", client, True)
                    subscribers.append(client)
        deadline = time.monotonic() + STEP_TIMEOUT
        while not all(c.video_frames > 0 for c in subscribers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode} N={streams}: media did not start")
            await asyncio.sleep(0.05)
        await asyncio.sleep(warmup)

        conductor = psutil.Process()
        frames_before = sum(c.video_frames for c in subscribers)
        psutil.cpu_percent()  # start the system-wide busy measurement
        conductor_before = sum(conductor.cpu_times()[:2])
        cpu_before, started = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(window)
        elapsed = time.monotonic() - started
        server_seconds = server.cpu_seconds() - cpu_before
        cpu = server_seconds / elapsed * 100
        system_busy = psutil.cpu_percent()
        conductor_cpu = (sum(conductor.cpu_times()[:2]) - conductor_before) / elapsed * 100
        rss = server.rss()
        delivered = sum(c.video_frames for c in subscribers) - frames_before
        fps = delivered / elapsed / streams
        relay_stats = await server.call("stats")
        result = {
            "streams": streams,
            "cpu_percent": round(cpu, 1),
            "cpu_percent_per_stream": round(cpu / streams, 2),
            "cpu_ms_per_delivered_video_frame": round(server_seconds * 1000 / max(delivered, 1), 3),
            "rss_mb": round(rss / 2**20, 1),
            "rss_mb_idle": round(idle_rss / 2**20, 1),
            "rss_mb_per_stream": round((rss - idle_rss) / 2**20 / streams, 2),
            "delivered_fps_per_stream": round(fps, 1),
            "saturated": fps < 0.9 * FPS,
            "client_process_cpu_percent": round(conductor_cpu, 1),
            "system_cpu_busy_percent": round(system_busy, 1),
        }
        if relay_stats.get("frames_dropped") is not None:
            result["frames_dropped"] = relay_stats["frames_dropped"]
        progress(f"{mode} N={streams}: {result}")
        return result
    finally:
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        await server.stop()


async def measure_first_frame(mode: str, footage: Footage, joins: int, settle: float) -> dict:
    server = ServerProcess(mode)
    clients: dict[str, Client] = {}
    await server.start()
    samples: list[float] = []
    try:
        await join(server, clients, "R", Client("P", footage, publish=True, decode=False), True)
        # A permanent receiver, so the baseline reads the publisher from the start too.
        await join(server, clients, "R", Client("W", footage, publish=False, decode=False), False)
        await asyncio.sleep(settle)  # the publisher's opening keyframe is long gone
        for index in range(joins):
            joiner = Client(f"J{index}", footage, publish=False, decode=True)
            started = time.monotonic()
            await join(server, clients, "R", joiner, False)
            deadline = started + 5
            while joiner.first_video_at is None and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            if joiner.first_video_at is not None:
                samples.append((joiner.first_video_at - started) * 1000)
            reply = await server.call("leave", room_id="R", peer_id=joiner.peer_id)
            await joiner.close()
            del clients[joiner.peer_id]
            await renegotiate(server, clients, reply["offers"])
            await asyncio.sleep(0.6)  # joins do not come in bursts
    finally:
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        await server.stop()
    result = {
        "joins": joins,
        "frames_seen": len(samples),
        "median_ms": round(statistics.median(samples), 1) if samples else None,
        "p90_ms": round(sorted(samples)[int(0.9 * (len(samples) - 1))], 1) if samples else None,
        "max_ms": round(max(samples), 1) if samples else None,
    }
    progress(f"{mode} first frame: {result}")
    return result


async def conduct(args: argparse.Namespace) -> dict:
    pin_ice_addresses(["127.0.0.1"])
    streams = [1, 2, 4] if args.quick else [1, 2, 4, 8, 16]
    warmup, window = (2.0, 3.0) if args.quick else (5.0, 6.0)
    joins = 10 if args.quick else 20
    if args.wait_for_idle > 0:
        deadline = time.monotonic() + args.wait_for_idle
        while os.getloadavg()[0] > 1.0 and time.monotonic() < deadline:
            progress(f"waiting for a quieter machine (load {os.getloadavg()[0]:.1f})")
            await asyncio.sleep(15)
    load_before = os.getloadavg()
    started = time.monotonic()
    progress("loading (or encoding once) the footage")
    footage = load_footage()
    video_kbps = sum(len(f) for f in footage.deltas) * 8 * FPS / len(footage.deltas) / 1000

    runs: dict[str, list[dict]] = {"relay": [], "transcode": []}
    for n in streams:
        for mode in ("relay", "transcode"):
            runs[mode].append(await measure_cost(mode, n, footage, warmup, window))
    first_frame = {
        mode: await measure_first_frame(mode, footage, joins, settle=2.0)
        for mode in ("relay", "transcode")
    }

    ratios = {
        str(r["streams"]): {
            "per_stream": round(t["cpu_percent_per_stream"] / r["cpu_percent_per_stream"], 1),
            "per_delivered_frame": round(
                t["cpu_ms_per_delivered_video_frame"] / r["cpu_ms_per_delivered_video_frame"], 1
            ),
            "both_kept_up": not (r["saturated"] or t["saturated"]),
        }
        for r, t in zip(runs["relay"], runs["transcode"], strict=True)
        if r["cpu_percent_per_stream"] > 0
    }
    kept_up = [x["per_stream"] for x in ratios.values() if x["both_kept_up"]]
    ratio = statistics.median(kept_up or [x["per_delivered_frame"] for x in ratios.values()])
    relay_runs = runs["relay"]
    marginal = (
        (relay_runs[-1]["rss_mb"] - relay_runs[0]["rss_mb"])
        / (relay_runs[-1]["streams"] - relay_runs[0]["streams"])
        if len(relay_runs) > 1
        else None
    )
    relay_rss = relay_runs[-1]["rss_mb_per_stream"]
    # CPU per stream at the largest N the relay delivered at full frame rate.
    relay_steady = ([r for r in relay_runs if not r["saturated"]] or relay_runs[:1])[-1]
    return {
        "bench": "relay",
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "aiortc": __import__("aiortc").__version__,
            "av": av.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "video": f"{WIDTH}x{HEIGHT}@{FPS} VP8 CBR, {round(video_kbps)} kbps measured",
            "audio": "Opus 20 ms",
            "warmup_s": warmup,
            "window_s": window,
            "quick": args.quick,
        },
        "runs": runs,
        "cpu_ratio_transcode_over_relay": ratios,
        "first_frame_ms": first_frame,
        "summary": {
            "cpu_ratio": ratio,
            "cpu_ratio_from": "median CPU per stream over N where both servers delivered full frame rate"
            if kept_up
            else "median CPU per delivered video frame (no N delivered full frame rate in both modes)",
            "relay_cpu_percent_per_stream": relay_steady["cpu_percent_per_stream"],
            "relay_cpu_measured_at_streams": relay_steady["streams"],
            "relay_rss_mb_per_stream": relay_rss,
            "relay_rss_mb_per_stream_marginal": round(marginal, 2)
            if marginal is not None
            else None,
            "relay_first_frame_median_ms": first_frame["relay"]["median_ms"],
            "targets_met": {
                "cpu_ratio>=4": ratio >= 4,
                "rss_per_stream<=3MB": relay_rss <= 3,
                "first_frame<=300ms": (first_frame["relay"]["median_ms"] or 1e9) <= 300,
            },
        },
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=1,2,4 with short windows")
    parser.add_argument(
        "--wait-for-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for a 1-minute load average below 1 (shared machines)",
    )
    parser.add_argument("--serve", choices=["relay", "transcode"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = asyncio.run(conduct(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

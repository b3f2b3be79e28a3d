"""The SFU's figures (issue #13): relay cost, added latency, browser ramp, repair of loss.

Every figure is a ratio against a baseline measured in the same run. Processes, all on
127.0.0.1:

* this script is the **conductor**: it carries no media, only SDP between the others;
* the **server** (``python -m bench.sfu --serve MODE``) speaks JSON lines on stdin/stdout:
  ``sfu`` is Parlor's relay (``relay.RelayPeer`` + ``relay.Room``, as signaling drives
  them, no HTTP nor policy), ``sfu-callback`` the same with aioice's datagram callback
  wrapped instead of the socket drained (the fast path's two ways of reading), and
  ``transcode`` aiortc's ``MediaRelay`` (one decode per source, one encode per subscriber);
* **client workers** (``python -m bench.sfu --clients``) run raw-RTP clients
  (``tests.harness.rtpclient``): pre-packetized 640×480@30 VP8 at ≈ 1.5 Mbit/s
  (``tests.harness.footage``) + 20 ms Opus, a keyframe when asked, nothing decoded, so
  that they cost little next to the server.

Figures (one JSON document on stdout, progress on stderr):

* ``cost``: for N = 1…32 streams (N=1: a publisher and a receive-only subscriber; N=2k:
  k 1:1 calls) the server process's CPU seconds (psutil: robust to other load on the
  machine) and RSS over a window after a warm-up; per stream, per forwarded packet and per
  delivered video frame, against ``transcode`` (N ≤ 4, it saturates beyond);
* ``first_frame``: join → first complete video frame for a receive-only joiner into a
  running call (a keyframe must be asked for upstream);
* ``latency``: the same payload timed leaving a publisher and reaching a subscriber, both
  in one worker (one clock), through the relay and in a direct call between two such
  clients, interleaved in the same run;
* ``browser``: Chromium with a 1280×720 fake camera through the relay (the real server and
  call pages) against Chromium ↔ Chromium direct: ``availableOutgoingBitrate`` at 10 s,
  and when the sent video first reached 1280 wide;
* ``loss``: a Chromium → relay → Chromium call with 3 % packet loss on the loopback of a
  network namespace of its own (``tests.harness.losscall``): freezes, NACKs, repairs.

``--only cost,latency`` runs a subset; ``--quick`` shorter windows and fewer N.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

STEP_TIMEOUT = 30.0
WIDTH, HEIGHT, FPS, BITRATE = 640, 480, 30, 1_500_000


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> dict[str, Any]:
    """How busy the machine is: load averages and the CPU busy share right now."""
    return {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_busy_percent": round(psutil.cpu_percent(interval=0.5), 1),
    }


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


# --- JSON-line processes ------------------------------------------------------------------


class LineProcess:
    """A child process spoken to in JSON lines: one request, one answer."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process: asyncio.subprocess.Process | None = None
        self.psutil: psutil.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.sfu", *self.args,
            cwd=str(REPO), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )  # fmt: skip
        ready = await self._read(120)
        self.psutil = psutil.Process(ready["ready"])

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{' '.join(self.args)} exited ({self.process.returncode})")
        return json.loads(line)

    async def call(self, op: str, timeout: float = STEP_TIMEOUT, **fields: Any) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        async with self._lock:
            self.process.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
            await self.process.stdin.drain()
            reply = await self._read(timeout)
        if "error" in reply:
            raise RuntimeError(f"{' '.join(self.args)} {op}: {reply['error']}")
        return reply

    def cpu_seconds(self) -> float:
        assert self.psutil is not None
        times = self.psutil.cpu_times()
        return times.user + times.system

    def system_seconds(self) -> float:
        """CPU seconds in the kernel (socket calls; on loopback the kernel also delivers
        each datagram sent to the receiving socket on the sender's time)."""
        assert self.psutil is not None
        return self.psutil.cpu_times().system

    def rss(self) -> int:
        assert self.psutil is not None
        return int(self.psutil.memory_info().rss)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(Exception):
            await self.call("quit", timeout=15)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.wait(), 15)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def serve_lines(handler: Any) -> None:
    """The child side: read requests, answer each with ``handler(op, **fields)``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while line := await reader.readline():
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op == "quit":
                await handler.close()
                print(json.dumps({}), flush=True)
                return
            result = await getattr(handler, op)(**request)
            print(json.dumps(result or {}), flush=True)
        except Exception as exc:  # report, keep serving
            print(json.dumps({"error": repr(exc)}), flush=True)
    await handler.close()


# --- the server process -------------------------------------------------------------------


class SfuServer:
    """Parlor's relay: RelayPeer + Room, exactly as signaling drives them."""

    def __init__(self, drain: bool) -> None:
        from relay import RelayPeer, RelayStats

        RelayPeer.DRAIN_SOCKETS = drain
        self.rooms: dict[str, Any] = {}
        self.peers: dict[str, Any] = {}
        self.totals = RelayStats()

    async def join(self, room: str, peer: str, publish: bool, sdp: str) -> dict[str, Any]:
        from relay import RelayPeer, Room

        relay_peer = RelayPeer(peer, ice_servers=[], publish=publish, totals=self.totals)
        self.peers[peer] = relay_peer
        answer = await relay_peer.accept_offer(sdp)
        call = self.rooms.setdefault(room, Room(room))
        offers = {p.peer_id: await p.create_offer() for p in call.add(relay_peer)}
        return {"answer": answer, "offers": offers}

    async def answer(self, peer: str, sdp: str) -> dict[str, Any]:
        await self.peers[peer].accept_answer(sdp)
        return {}

    async def leave(self, room: str, peer: str) -> dict[str, Any]:
        relay_peer = self.peers.pop(peer)
        changed = self.rooms[room].remove(relay_peer)
        await relay_peer.close()
        return {"offers": {p.peer_id: await p.create_offer() for p in changed}}

    async def stats(self) -> dict[str, Any]:
        return self.totals.as_dict()

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.peers.values()), return_exceptions=True)


class TranscodeServer:
    """The baseline: aiortc's MediaRelay, which decodes each source and encodes per subscriber."""

    def __init__(self) -> None:
        from aiortc.contrib.media import MediaRelay

        self.rooms: dict[str, dict[str, Any]] = {}
        self.peers: dict[str, Any] = {}
        self.tracks: dict[str, list[Any]] = {}
        self.media_relay = MediaRelay()

    async def join(self, room: str, peer: str, publish: bool, sdp: str) -> dict[str, Any]:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tracks: list[Any] = []
        pc.on("track", tracks.append)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        call = self.rooms.setdefault(room, {})
        changed: dict[str, Any] = {}
        for other_id, other in call.items():
            if self.tracks[other_id]:
                self._forward(self.tracks[other_id], pc)
                changed[peer] = pc
            if tracks:
                self._forward(tracks, other)
                changed[other_id] = other
        call[peer], self.peers[peer], self.tracks[peer] = pc, pc, tracks
        offers = {}
        for changed_id, changed_pc in changed.items():
            await changed_pc.setLocalDescription(await changed_pc.createOffer())
            offers[changed_id] = changed_pc.localDescription.sdp
        return {"answer": answer, "offers": offers}

    def _forward(self, tracks: list[Any], to: Any) -> None:
        from relay.codec import VisitCodec

        for track in tracks:
            transceiver = to.addTransceiver(self.media_relay.subscribe(track), direction="sendonly")
            transceiver.setCodecPreferences(VisitCodec("VP8").preferences(track.kind))

    async def answer(self, peer: str, sdp: str) -> dict[str, Any]:
        from aiortc import RTCSessionDescription

        await self.peers[peer].setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        return {}

    async def stats(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.peers.values()), return_exceptions=True)


async def serve(mode: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from relay import pin_ice_addresses

    pin_ice_addresses(["127.0.0.1"])
    server: Any = TranscodeServer() if mode == "transcode" else SfuServer(drain=mode == "sfu")
    profile = os.environ.get("PARLOR_BENCH_PROFILE")
    if not profile:
        await serve_lines(server)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        await serve_lines(server)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


# --- the client worker process --------------------------------------------------------------


class ClientWorker:
    """Raw-RTP clients of one process, created, negotiated and counted on request."""

    def __init__(self) -> None:
        from tests.harness.footage import footage
        from tests.harness.rtpclient import PayloadClock

        self.footage = footage("VP8", WIDTH, HEIGHT, FPS, BITRATE)
        self.clock = PayloadClock(keep=20000)
        self.clients: dict[str, Any] = {}

    async def create(
        self, name: str, publish: bool, timed: bool = False, offer: bool = True
    ) -> dict[str, Any]:
        from tests.harness.rtpclient import RtpClient

        client = RtpClient(name, self.footage, publish=publish, clock=self.clock if timed else None)
        self.clients[name] = client
        return {"sdp": await client.offer()} if offer else {}

    async def accept(self, name: str, sdp: str) -> dict[str, Any]:
        await self.clients[name].accept_answer(sdp)
        return {}

    async def answer(self, name: str, sdp: str) -> dict[str, Any]:
        return {"sdp": await self.clients[name].answer(sdp)}

    async def direct(self, publisher: str, subscriber: str) -> dict[str, Any]:
        """A direct call between two of this worker's clients (the latency baseline)."""
        a, b = self.clients[publisher], self.clients[subscriber]
        answer = await b.answer(a.pc.localDescription.sdp)
        await a.accept_answer(answer)
        return {}

    async def counts(self, names: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in names:
            client = self.clients[name]
            kinds: dict[str, dict[str, int]] = {}
            for reception in client.receptions.values():
                kind = reception.kind or "video"
                entry = kinds.setdefault(kind, {"packets": 0, "frames": 0, "octets": 0})
                entry["packets"] += reception.packets
                entry["frames"] += reception.frames
                entry["octets"] += reception.octets
            out[name] = kinds
        return out

    async def first_video(self, name: str) -> dict[str, Any]:
        """When ``name`` received its first complete video frame (None: not yet)."""
        found = [
            r.first_frame_at for r in self.clients[name].receptions.values() if r.first_frame_at
        ]
        return {"at": min(found) if found else None}

    async def close_client(self, name: str) -> dict[str, Any]:
        await self.clients.pop(name).close()
        return {}

    async def latencies(self, name: str, reset: bool = False) -> dict[str, Any]:
        client = self.clients[name]
        out: dict[str, list[float]] = {"audio": [], "video": []}
        for reception in client.receptions.values():
            kind = reception.kind or ("video" if reception.frames < reception.packets else "audio")
            out.setdefault(kind, []).extend(reception.latencies)
            if reset:
                reception.latencies.clear()
        return out

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)


async def run_clients() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from relay import pin_ice_addresses

    pin_ice_addresses(["127.0.0.1"])
    await serve_lines(ClientWorker())


# --- the conductor: relay cost ------------------------------------------------------------------


async def join(server: LineProcess, worker: LineProcess, clients: dict[str, LineProcess],
               room: str, name: str, publish: bool, timed: bool = False) -> None:  # fmt: skip
    clients[name] = worker
    offer = await worker.call("create", name=name, publish=publish, timed=timed)
    reply = await server.call("join", room=room, peer=name, publish=publish, sdp=offer["sdp"])
    await worker.call("accept", name=name, sdp=reply["answer"])
    for peer, sdp in reply["offers"].items():
        answer = await clients[peer].call("answer", name=peer, sdp=sdp)
        await server.call("answer", peer=peer, sdp=answer["sdp"])


async def delivered(clients: dict[str, LineProcess], subscribers: list[str]) -> dict[str, int]:
    totals = {"video_frames": 0, "packets": 0, "octets": 0}
    by_worker: dict[int, tuple[LineProcess, list[str]]] = {}
    for name in subscribers:
        worker = clients[name]
        by_worker.setdefault(id(worker), (worker, []))[1].append(name)
    for worker, names in by_worker.values():
        counts = await worker.call("counts", names=names)
        for kinds in counts.values():
            for kind, entry in kinds.items():
                totals["packets"] += entry["packets"]
                totals["octets"] += entry["octets"]
                if kind == "video":
                    totals["video_frames"] += entry["frames"]
    return totals


async def measure_cost(mode: str, streams: int, warmup: float, window: float) -> dict[str, Any]:
    server = LineProcess("--serve", mode)
    workers = [LineProcess("--clients") for _ in range(2)]
    await server.start()
    for worker in workers:
        await worker.start()
    clients: dict[str, LineProcess] = {}
    try:
        await asyncio.sleep(0.5)
        idle_rss = server.rss()
        subscribers: list[str] = []
        if streams == 1:
            await join(server, workers[0], clients, "R0", "P0", True)
            await join(server, workers[1], clients, "R0", "S0", False)
            subscribers.append("S0")
        else:
            for call in range(streams // 2):
                for side, worker in (("a", workers[0]), ("b", workers[1])):
                    await join(server, worker, clients, f"R{call}", f"C{call}{side}", True)
                    subscribers.append(f"C{call}{side}")
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            counts = [await delivered(clients, [name]) for name in subscribers]
            if all(c["video_frames"] > 0 for c in counts):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode} N={streams}: media did not start")
            await asyncio.sleep(0.2)
        await asyncio.sleep(warmup)

        before = await delivered(clients, subscribers)
        relay_before = await server.call("stats")
        psutil.cpu_percent()
        workers_before = sum(w.cpu_seconds() for w in workers)
        cpu_before, started = server.cpu_seconds(), time.monotonic()
        kernel_before = server.system_seconds()
        await asyncio.sleep(window)
        elapsed = time.monotonic() - started
        seconds = server.cpu_seconds() - cpu_before
        kernel = server.system_seconds() - kernel_before
        system_busy = psutil.cpu_percent()
        workers_cpu = (sum(w.cpu_seconds() for w in workers) - workers_before) / elapsed * 100
        after = await delivered(clients, subscribers)
        relay_after = await server.call("stats")
        rss = server.rss()
        frames = after["video_frames"] - before["video_frames"]
        packets = after["packets"] - before["packets"]
        fps = frames / elapsed / streams
        cpu = seconds / elapsed * 100
        result: dict[str, Any] = {
            "streams": streams,
            "cpu_percent": round(cpu, 2),
            "cpu_percent_per_stream": round(cpu / streams, 3),
            "kernel_share_of_cpu": round(kernel / max(seconds, 1e-9), 2),
            "us_per_delivered_packet": round(seconds * 1e6 / max(packets, 1), 1),
            "ms_per_delivered_video_frame": round(seconds * 1000 / max(frames, 1), 3),
            "delivered_fps_per_stream": round(fps, 1),
            "delivered_kbps_per_stream": round(
                (after["octets"] - before["octets"]) * 8 / elapsed / streams / 1000
            ),
            "saturated": fps < 0.9 * FPS,
            "rss_mb": round(rss / 2**20, 1),
            "rss_mb_idle": round(idle_rss / 2**20, 1),
            "rss_mb_per_stream": round((rss - idle_rss) / 2**20 / streams, 3),
            "client_processes_cpu_percent": round(workers_cpu, 1),
            "system_cpu_busy_percent": round(system_busy, 1),
        }
        if relay_after:
            forwarded = relay_after["packets_forwarded"] - relay_before["packets_forwarded"]
            result["us_per_forwarded_packet"] = round(seconds * 1e6 / max(forwarded, 1), 1)
            result["packets_forwarded_per_second"] = round(forwarded / elapsed)
            for key in ("nacks_sent", "packets_retransmitted", "keyframe_requests_forwarded"):
                result[key] = relay_after[key] - relay_before[key]
        progress(f"{mode} N={streams}: {result}")
        return result
    finally:
        for worker in workers:
            await worker.stop()
        await server.stop()


async def cost(quick: bool) -> dict[str, Any]:
    sfu_streams = [1, 2, 4, 8] if quick else [1, 2, 4, 8, 16, 32]
    transcode_streams = [1, 2] if quick else [1, 2, 4]
    warmup, window = (2.0, 4.0) if quick else (5.0, 10.0)
    runs: dict[str, list[dict[str, Any]]] = {"sfu": [], "sfu-callback": [], "transcode": []}
    for n in sfu_streams:
        runs["sfu"].append(await measure_cost("sfu", n, warmup, window))
        if n in (1, 16) or (quick and n == 4):
            runs["sfu-callback"].append(await measure_cost("sfu-callback", n, warmup, window))
        if n in transcode_streams:
            runs["transcode"].append(await measure_cost("transcode", n, warmup, window))
    ratios = {}
    for t in runs["transcode"]:
        s = next(r for r in runs["sfu"] if r["streams"] == t["streams"])
        ratios[str(t["streams"])] = {
            "cpu_per_delivered_frame": round(
                t["ms_per_delivered_video_frame"] / s["ms_per_delivered_video_frame"], 1
            ),
            "cpu_per_stream": round(t["cpu_percent_per_stream"] / s["cpu_percent_per_stream"], 1),
            "transcode_kept_up": not t["saturated"],
        }
    by_n = {r["streams"]: r for r in runs["sfu"]}
    per_stream = {str(n): by_n[n]["cpu_percent_per_stream"] for n in by_n}
    frame_ratios = [r["cpu_per_delivered_frame"] for r in ratios.values()]
    largest = max(by_n)
    targets = {
        "cpu_per_stream<=1.5%_at_16": by_n.get(16, {}).get("cpu_percent_per_stream", 99) <= 1.5,
        "cpu_per_stream<=1.5%_at_32": by_n.get(32, {}).get("cpu_percent_per_stream", 99) <= 1.5,
        "moonshot<=1.25%_at_16_and_32": all(
            by_n.get(n, {}).get("cpu_percent_per_stream", 99) <= 1.25 for n in (16, 32)
        ),
        ">=10x_less_cpu_per_delivered_frame_than_MediaRelay": bool(frame_ratios)
        and min(frame_ratios) >= 10,
        "rss<=1.5MB_per_stream": by_n[largest]["rss_mb_per_stream"] <= 1.5,
    }
    callback = {r["streams"]: r for r in runs["sfu-callback"]}
    reading = {
        str(n): {
            "drain_cpu_percent_per_stream": by_n[n]["cpu_percent_per_stream"],
            "callback_cpu_percent_per_stream": callback[n]["cpu_percent_per_stream"],
        }
        for n in callback
        if n in by_n
    }
    return {
        "settings": {"warmup_s": warmup, "window_s": window},
        "runs": runs,
        "sfu_cpu_percent_per_stream": per_stream,
        "transcode_over_sfu": ratios,
        "socket_reading": reading,
        "targets_met": targets,
    }


# --- the conductor: latency -------------------------------------------------------------------


async def latency(quick: bool) -> dict[str, Any]:
    """Relay and direct calls side by side, in one client worker (one clock)."""
    server = LineProcess("--serve", "sfu")
    worker = LineProcess("--clients")
    await server.start()
    await worker.start()
    clients: dict[str, LineProcess] = {}
    samples: dict[str, dict[str, list[float]]] = {
        "relay": {"audio": [], "video": []},
        "direct": {"audio": [], "video": []},
    }
    try:
        await join(server, worker, clients, "L", "P", True, timed=True)
        await join(server, worker, clients, "L", "S", False, timed=True)
        await worker.call("create", name="DP", publish=True, timed=True)
        await worker.call("create", name="DS", publish=False, timed=True, offer=False)
        await worker.call("direct", publisher="DP", subscriber="DS")
        await asyncio.sleep(2.0)
        await worker.call("latencies", name="S", reset=True)
        await worker.call("latencies", name="DS", reset=True)
        rounds = 3 if quick else 10
        for _ in range(rounds):
            await asyncio.sleep(1.0)
            for path, name in (("relay", "S"), ("direct", "DS")):
                got = await worker.call("latencies", name=name, reset=True)
                for kind in ("audio", "video"):
                    samples[path][kind] += [x * 1000 for x in got.get(kind, [])]
    finally:
        await worker.stop()
        await server.stop()
    out: dict[str, Any] = {}
    for path, kinds in samples.items():
        out[path] = {
            kind: {
                "n": len(values),
                "median_ms": median(values),
                "p90_ms": quantile(values, 0.9),
                "p99_ms": quantile(values, 0.99),
            }
            for kind, values in kinds.items()
        }
    added = {}
    for kind in ("audio", "video"):
        relay_median, direct_median = (
            out["relay"][kind]["median_ms"],
            out["direct"][kind]["median_ms"],
        )
        added[kind] = (
            round(relay_median - direct_median, 3)
            if relay_median is not None and direct_median is not None
            else None
        )
    out["added_median_ms"] = added
    out["targets_met"] = {
        f"added<=10ms_{kind}": added[kind] is not None and added[kind] <= 10 for kind in added
    }
    progress(f"latency: {out}")
    return out


# --- the conductor: a late joiner's first frame ----------------------------------------------


async def first_frame(quick: bool) -> dict[str, Any]:
    """Join → first complete video frame for a receive-only joiner into a call running for
    seconds: only a keyframe requested upstream (PLI) makes it fast."""
    server = LineProcess("--serve", "sfu")
    worker = LineProcess("--clients")
    await server.start()
    await worker.start()
    clients: dict[str, LineProcess] = {}
    samples: list[float] = []
    try:
        await join(server, worker, clients, "F", "P", True)
        await join(server, worker, clients, "F", "W", False)
        await asyncio.sleep(2.0)  # the publisher's opening keyframe is long gone
        for index in range(10 if quick else 20):
            name = f"J{index}"
            started = time.monotonic()
            await join(server, worker, clients, "F", name, False)
            deadline = started + 5
            while time.monotonic() < deadline:
                at = (await worker.call("first_video", name=name))["at"]
                if at is not None:
                    samples.append((at - started) * 1000)
                    break
                await asyncio.sleep(0.01)
            reply = await server.call("leave", room="F", peer=name)
            await worker.call("close_client", name=name)
            del clients[name]
            for peer, sdp in reply["offers"].items():
                answer = await clients[peer].call("answer", name=peer, sdp=sdp)
                await server.call("answer", peer=peer, sdp=answer["sdp"])
            await asyncio.sleep(0.6)  # joins do not come in bursts
    finally:
        await worker.stop()
        await server.stop()
    out = {
        "joins": 10 if quick else 20,
        "frames_seen": len(samples),
        "median_ms": median(samples),
        "p90_ms": quantile(samples, 0.9),
        "max_ms": round(max(samples), 1) if samples else None,
    }
    progress(f"first frame: {out}")
    return out


# --- main -------------------------------------------------------------------------------------


async def conduct(args: argparse.Namespace) -> dict[str, Any]:
    from tests.harness.footage import footage

    wanted = (
        set(args.only.split(","))
        if args.only
        else {"cost", "latency", "first_frame", "browser", "loss"}
    )
    started = time.monotonic()
    progress("loading (or encoding once) the footage")
    made = footage("VP8", WIDTH, HEIGHT, FPS, BITRATE)
    result: dict[str, Any] = {
        "bench": "sfu",
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "aiortc": __import__("aiortc").__version__,
            "before": load(),
        },
        "settings": {
            "video": f"{WIDTH}x{HEIGHT}@{FPS} VP8, {round(made.video_kbps)} kbps, "
            f"{round(made.packets_per_second)} RTP packets/s with audio",
            "audio": "Opus 20 ms",
            "quick": args.quick,
        },
    }
    if "cost" in wanted:
        result["cost"] = await cost(args.quick)
    if "latency" in wanted:
        result["latency"] = await latency(args.quick)
    if "first_frame" in wanted:
        result["first_frame"] = await first_frame(args.quick)
    if "browser" in wanted:
        from bench.sfu_browser import browser_ramp

        result["browser"] = await browser_ramp(args.quick)
    if "loss" in wanted:
        from bench.sfu_browser import lossy_call

        result["loss"] = await lossy_call(args.quick)
    result["machine"]["after"] = load()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer N, shorter windows")
    parser.add_argument("--only", help="comma-separated: cost, latency, first_frame, browser, loss")
    parser.add_argument(
        "--serve", choices=["sfu", "sfu-callback", "transcode"], help=argparse.SUPPRESS
    )
    parser.add_argument("--clients", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    if args.clients:
        asyncio.run(run_clients())
        return
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(asyncio.run(conduct(args)), indent=2))


if __name__ == "__main__":
    main()

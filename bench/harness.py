"""What Parlor's benches stand on: a server in its own process, a roster seeded through the
REST API, and fleets of real aiortc clients in worker processes.

The bench script is the conductor. It starts `parlor serve` as a subprocess (`ServerProcess`),
seeds it over HTTP (`seed_calls`), and drives one or more client workers (`Fleet`): each worker
is this file run as `python -m bench.harness worker` from the repository root (so that the
project's packages import as installed), a process of `ParlorClient`s that takes
JSON-line commands on stdin and answers on stdout. The conductor itself carries no media, so the
instant it records for an API answer is not delayed by a busy media loop; every process reads
the same system-wide `time.monotonic()` clock, so instants compare across processes.

Every step has a timeout, a worker exits when its stdin closes or its lifetime runs out, and
the server is stopped (SIGTERM, then SIGKILL by pid) whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import functools
import json
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.ports import free_port

REPO = Path(__file__).resolve().parent.parent
PROBLEM = re.compile(r'"level":\s*"(error|critical)"|\b(ERROR|CRITICAL|Traceback)\b')
WARNING = re.compile(r'"level":\s*"warning"|\bWARNING\b')
# Log lines worth counting: how many peer connections the server lost, and to what.
SIGNS = {
    # aioice 0.13 checks consent every ~5 s with one try and a 0.5 s timeout, and closes the
    # connection after 6 failures: a loop that lags > 0.5 s for ~30 s drops its calls.
    "ice_consent_expired": "Consent to send expired",
    "signaling_failed": "signaling failed",
    "peer_connection_closed_error": "RTCPeerConnection is closed",
    "task_exception_never_retrieved": "Task exception was never retrieved",
}
# Benches open hundreds of sessions from one address and seed through one operator token:
# lift the per-address join and per-identity API rate limits for the bench server only. They
# also choose the load they measure, so admission control (new calls refused while the event
# loop lags: a join burst of 100 DTLS handshakes makes it lag) is lifted too.
BENCH_LIMITS = {"PARLOR_JOIN_RATE_PER_IP": "100000:10000", "PARLOR_JOIN_RATE_PER_IDENTITY": "100000:10000",
                "PARLOR_API_RATE_PER_IDENTITY": "100000:10000", "PARLOR_OVERLOAD_LAG_SECONDS": "3600"}  # fmt: skip


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentiles(
    values: list[float], points: tuple[float, ...] = (0.5, 0.99)
) -> dict[str, float | int | None]:
    """The sample count, p50/p99 (or the `points` asked for; linear interpolation between
    ranks) and max."""
    names = [f"p{round(q * 100)}" for q in points]
    if not values:
        return {"n": 0, **dict.fromkeys(names), "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    quantiles = {name: round(rank(q), 2) for name, q in zip(names, points, strict=True)}
    return {"n": len(ordered), **quantiles, "max": round(ordered[-1], 2)}


# -- the server ---------------------------------------------------------------------------
@dataclass
class ServerProcess:
    """`python -m signaling.cli serve` on 127.0.0.1 with its own database and secret."""

    workdir: Path
    port: int = field(default_factory=free_port)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    process: asyncio.subprocess.Process | None = None
    http: aiohttp.ClientSession | None = None
    operator_token: str = ""
    # Applied last, e.g. a cluster node's PARLOR_DB.
    env: dict[str, str] = field(default_factory=dict)
    # Each answer's Server-Timing (ms by phase), by the instant its request was sent.
    timings: dict[float, dict[str, float]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, ready_timeout: float = 20.0) -> None:
        from signaling.tokens import Tokens

        env = {
            **os.environ,
            "PARLOR_SECRET": self.secret,
            "PARLOR_DB": str(self.workdir / "parlor.db"),
            "PARLOR_ICE_ADDRESSES": "127.0.0.1",
            "PARLOR_ICE_SERVERS": "[]",
            "PARLOR_LOG_LEVEL": os.environ.get("PARLOR_LOG_LEVEL", "INFO"),
            **BENCH_LIMITS,
            **self.env,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "signaling.cli", "serve", "--port", str(self.port),
                cwd=str(REPO), env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        finally:
            log.close()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.operator_token = Tokens(self.secret.encode()).issue(
            "operator:bench", "operator", 4 * 3600
        )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self.http.get(self.url + "/readyz") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"server not ready within {ready_timeout} s; see {self.log_path}"
                )
            await asyncio.sleep(0.1)

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float, float]:
        """Call the API as the bench operator: (status, answer, sent_at, answered_at).

        `answered_at` is taken once the whole answer body is read (time.monotonic)."""
        assert self.http is not None
        headers = {
            "Authorization": f"Bearer {self.operator_token}",
            "Content-Type": "application/json",
        }
        data = None if body is None else json.dumps(body).encode()
        sent_at = time.monotonic()
        async with self.http.request(
            method, self.url + path, data=data, headers=headers
        ) as response:
            raw = await response.read()
            answered_at = time.monotonic()
            status = response.status
            if "Server-Timing" in response.headers:
                self.timings[sent_at] = server_timing(response.headers["Server-Timing"])
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode(errors="replace")
        return status, answer, sent_at, answered_at

    async def stop(self, timeout: float = 15.0) -> int | None:
        if self.http is not None:
            await self.http.close()
            self.http = None
        process = self.process
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        process.terminate()
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            return await process.wait()

    def problems(self, limit: int = 5, width: int = 400) -> dict[str, Any]:
        """Counts of the server log's error and warning lines, the first few (cut to `width`
        characters; the whole log stays in the temp dir), and counts of known signs."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {"count": 0, "lines": [], "log": str(self.log_path)}
        hits = [line for line in lines if PROBLEM.search(line)]
        warnings = [line for line in lines if WARNING.search(line)]
        return {"count": len(hits), "lines": [h[:width] for h in hits[:limit]], "warnings": len(warnings),
                "warning_lines": [w[:width] for w in warnings[:limit]], "log": str(self.log_path),
                "signs": {sign: sum(1 for line in lines if text in line) for sign, text in SIGNS.items()}}  # fmt: skip

    async def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples without labels, e.g. parlor_kill_seconds_sum."""
        assert self.http is not None
        async with self.http.get(self.url + "/metrics") as response:
            text = await response.text()
        samples = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if line.startswith("parlor_") and "{" not in name:
                with contextlib.suppress(ValueError):
                    samples[name] = float(value)
        return samples


def server_timing(header: str) -> dict[str, float]:
    """'commit;dur=12.5, enforce;dur=0.4' -> {'commit': 12.5, 'enforce': 0.4} (ms)."""
    timing = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        try:
            timing[name] = float(rest)
        except ValueError:
            continue
    return timing


# -- the roster ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CallSpec:
    """One 1:1 call: a visit between inmate I at kiosk K and contact C, in facility F."""

    index: int
    facility: str
    device: str
    inmate: str
    contact: str
    visit: str
    kiosk_token: str
    family_token: str
    server: str | None = None  # the node its clients join (a cluster bench); None: the worker's

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


async def api_ok(server: ServerProcess, method: str, path: str, body: Any, expect: int) -> Any:
    """The answer to an API call that must have status `expect`."""
    status, answer, _, _ = await server.api(method, path, body)
    if status != expect:
        raise RuntimeError(f"{method} {path} answered {status}: {answer}")
    return answer


async def seed_visit(
    server: ServerProcess,
    *,
    inmate: str,
    device: str,
    contact: str,
    name: str,
    hours: float = 1.0,
    now: float | None = None,
) -> dict[str, Any]:
    """Contact `contact` (`name`, not a minor), approved for `inmate`, and a social visit of
    theirs on `device` from a minute before `now` (default: when the visit is posted) for
    `hours`; the API's answer for the visit."""
    from policy.rfc3339 import format_time

    await api_ok(
        server,
        "POST",
        "/api/v1/contacts",
        {"id": contact, "name": name, "minor": False},
        201,
    )
    await api_ok(
        server,
        "POST",
        f"/api/v1/contacts/{contact}/approvals",
        {"inmate": inmate, "status": "approved"},
        200,
    )
    now = time.time() if now is None else now
    return await api_ok(
        server, "POST", "/api/v1/visits",
        {"inmate": inmate, "device": device, "contacts": [contact], "kind": "social",
         "starts_at": format_time(now - 60), "ends_at": format_time(now + hours * 3600)},
        201,
    )  # fmt: skip


async def seed_calls(
    server: ServerProcess, layout: dict[str, int], *, concurrency: int = 8
) -> list[CallSpec]:
    """Facilities from `layout` (id -> number of calls); per call a kiosk, an inmate, an
    approved contact and a visit open now for an hour. All through the REST API."""
    for facility in layout:
        await api_ok(
            server,
            "POST",
            "/api/v1/facilities",
            {"id": facility, "name": f"Facility {facility}"},
            201,
        )
    plan = [(facility, n) for facility, count in layout.items() for n in range(count)]
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, facility: str) -> CallSpec:
        device, inmate, contact = f"K{index:04d}", f"I{index:04d}", f"C{index:04d}"
        async with gate:
            await api_ok(
                server, "POST", "/api/v1/devices", {"id": device, "facility": facility}, 201
            )
            await api_ok(
                server,
                "POST",
                "/api/v1/inmates",
                {"id": inmate, "facility": facility, "name": f"Inmate {index}"},
                201,
            )
            visit = await seed_visit(
                server, inmate=inmate, device=device, contact=contact, name=f"Contact {index}"
            )
        return CallSpec(
            index=index, facility=facility, device=device, inmate=inmate, contact=contact, visit=visit["id"],
            kiosk_token=visit["join"]["device"]["token"], family_token=visit["join"][contact]["token"],
        )  # fmt: skip

    return list(await asyncio.gather(*(one(i, facility) for i, (facility, _) in enumerate(plan))))


# -- the conductor's side of the client workers ------------------------------------------
class Worker:
    """One client worker process, spoken to in JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process, self.name = process, name
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, server_url: str, name: str, lifetime: float) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.harness", "worker", "--server", server_url, "--name", name,
            "--lifetime", str(lifetime),
            cwd=str(REPO), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
            limit=64 * 1024 * 1024,
        )  # fmt: skip
        return cls(process, name)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def ask(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            await self.process.stdin.drain()
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"worker {self.name} exited ({self.process.returncode})")
        answer = json.loads(line)
        if "failed" in answer:
            raise RuntimeError(f"worker {self.name}: {answer['failed']}")
        return answer

    async def stop(self, timeout: float = 20.0) -> None:
        if self.process.returncode is not None:
            return
        with contextlib.suppress(Exception):
            await self.ask({"cmd": "exit"}, timeout)
        if self.process.stdin is not None:
            with contextlib.suppress(Exception):
                self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class Fleet:
    """The clients of many calls, spread over worker processes (both sides of a call share one)."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    @classmethod
    async def start(cls, server_url: str, processes: int, lifetime: float) -> Fleet:
        workers = [await Worker.start(server_url, f"w{n}", lifetime) for n in range(processes)]
        fleet = cls(workers)
        await fleet.each({"cmd": "ping"}, 60)
        return fleet

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    async def each(self, command: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(w.ask(command, timeout) for w in self.workers)))

    async def join(
        self,
        calls: list[CallSpec],
        *,
        size: tuple[int, int],
        fps: int,
        preencoded: bool,
        concurrency: int,
        audio_ptime: int = 20,
        timeout: float,
        decode_frames: int | None = None,
    ) -> list[dict[str, Any]]:
        """Join every call, kiosk first; `decode_frames`: each client stops decoding (and only
        notes RTP arrivals) once it has decoded that many audio and video frames."""
        shares: list[list[dict[str, Any]]] = [[] for _ in self.workers]
        for n, call in enumerate(calls):
            shares[n % len(self.workers)].append(call.to_json())
        answers = await asyncio.gather(
            *(
                w.ask(
                    {
                        "cmd": "join",
                        "calls": share,
                        "size": list(size),
                        "fps": fps,
                        "preencoded": preencoded,
                        "audio_ptime": audio_ptime,
                        "decode_frames": decode_frames,
                        "concurrency": concurrency,
                        # joins still pending then are given up
                        "deadline": max(10.0, timeout - 15.0),
                    },
                    timeout,
                )  # fmt: skip
                for w, share in zip(self.workers, shares, strict=True)
            )
        )
        return list(answers)

    async def wait_media(self, frames: int, timeout: float) -> dict[str, Any]:
        answers = await self.each(
            {"cmd": "wait_media", "frames": frames, "timeout": timeout}, timeout + 30
        )
        return {
            "clients": sum(a["clients"] for a in answers),
            "with_media": sum(a["with_media"] for a in answers),
            "missing": [m for a in answers for m in a["missing"]],
        }

    async def report(self, since: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every client's record from `since` on, and each worker's event-loop lag samples."""
        answers = await self.each({"cmd": "report", "since": since}, 60)
        clients = [c for a in answers for c in a["clients"]]
        return clients, [
            {"worker": w.name, "lag": a["lag"]} for w, a in zip(self.workers, answers, strict=True)
        ]

    async def decode(self, on: bool) -> None:
        """Decode received media (aiortc's default), or only note when RTP packets arrive."""
        await self.each({"cmd": "decode", "on": on}, 30)

    async def leave(self, timeout: float = 60) -> None:
        await self.each({"cmd": "leave"}, timeout)

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)


# -- the worker process -------------------------------------------------------------------
@functools.cache
def encoded_loop(
    kind: str, width: int, height: int, fps: int, seconds: float = 3.0, ptime: int = 20
) -> tuple[bytes, ...]:
    """A few seconds of encoded media to send in a loop: VP8 frames of the kiosk's moving test
    pattern (a keyframe every second, so the loop's seam and late subscribers are fine), or
    Opus frames of its tone: 20 ms as aiortc (and a browser) sends them, or `ptime` ms
    (libopus' frame_duration), fewer packets for the same sound. Encoded once per process,
    sent by every client."""
    import fractions

    import av

    from signaling.kiosk import PatternTrack, ToneTrack

    PAST = -1e9  # the tracks' first frame was due long ago: they never wait

    def frames(track: Any, count: int) -> list[Any]:
        """The track's next frames, now: with its clock started far back, recv() never sleeps."""
        out = []
        for _ in range(count):
            step = track.recv()
            try:
                step.send(None)
            except StopIteration as done:
                out.append(done.value)
            else:
                step.close()
                raise RuntimeError("the test-pattern track waited while pre-encoding")
        return out

    if kind == "audio" and ptime != 20:
        opus = av.CodecContext.create("libopus", "w")
        opus.sample_rate, opus.layout, opus.format, opus.bit_rate = 48000, "stereo", "s16", 64000
        opus.options = {"frame_duration": str(ptime), "application": "voip"}
        encoded = []
        for frame in frames(ToneTrack(start=PAST), int(seconds * 50)):
            encoded.extend(bytes(p) for p in opus.encode(frame))
        return tuple(encoded)
    if kind == "audio":
        from aiortc.codecs import get_encoder
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        encoder = get_encoder(
            RTCRtpCodecParameters(
                mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
            )
        )
        payloads = []
        for frame in frames(ToneTrack(start=PAST), int(seconds * 50)):
            encoded, _ = encoder.encode(frame)
            payloads.extend(encoded)
        return tuple(payloads)
    context = av.CodecContext.create("libvpx", "w")
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base, context.framerate = fractions.Fraction(1, fps), fractions.Fraction(fps, 1)
    context.bit_rate, context.gop_size = 300_000, fps
    context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    packets = []
    for n, frame in enumerate(
        frames(PatternTrack(width, height, fps=fps, start=PAST), int(seconds * fps))
    ):
        frame.pts, frame.time_base = n, context.time_base
        packets.extend(bytes(p) for p in context.encode(frame))
    packets.extend(bytes(p) for p in context.encode(None))
    return tuple(packets)


def _encoded_loop_track_class() -> type:
    import fractions

    import av
    from aiortc import MediaStreamTrack

    class EncodedLoopTrack(MediaStreamTrack):
        """Sends pre-encoded frames in real time: aiortc's sender only packetizes them
        (`encoder.pack`), as it does for MediaPlayer(decode=False). Same packets on the wire
        as a live encoder, without an Opus and a VP8 encode per client."""

        def __init__(
            self,
            kind: str,
            payloads: tuple[bytes, ...],
            clock_rate: int,
            step: int,
            interval: float,
        ) -> None:
            super().__init__()
            self.kind = kind
            self._payloads, self._step, self._interval = payloads, step, interval
            self._time_base = fractions.Fraction(1, clock_rate)
            self._start: float | None = None
            self._count = 0

        async def recv(self) -> av.Packet:
            if self._start is None:
                self._start = time.monotonic()
            delay = self._start + self._count * self._interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            packet = av.Packet(self._payloads[self._count % len(self._payloads)])
            packet.pts, packet.time_base = self._count * self._step, self._time_base
            self._count += 1
            return packet

    return EncodedLoopTrack


def _bench_client_class() -> type:
    from signaling.kiosk import ParlorClient

    loop_track = _encoded_loop_track_class()

    class BenchClient(ParlorClient):
        """A `ParlorClient` that also keeps every frame's arrival instant and when its socket closed."""

        def __init__(
            self, *args: Any, call: int, role: str, preencoded: bool, ptime: int = 20, **kw: Any
        ) -> None:
            super().__init__(*args, **kw)
            self.call, self.role, self.preencoded, self.ptime = call, role, preencoded, ptime
            self.arrivals: dict[str, deque[float]] = {
                "audio": deque(maxlen=3000),
                "video": deque(maxlen=1000),
            }
            self.rtp: dict[str, deque[float]] = {
                "audio": deque(maxlen=3000),
                "video": deque(maxlen=3000),
            }
            self.closed_at: float | None = None
            # decode False: note RTP arrivals only and drop the packets (no jitter buffer, no
            # decoder); decode_frames: turn decoding off once that many of each kind are decoded.
            self.decode = True
            self.decode_frames: int | None = None

        def tracks(self, joined: dict[str, Any]) -> tuple[Any, Any]:
            if not self.preencoded:
                return super().tracks(joined)
            (width, height), fps = self.size, self.fps
            ptime = self.ptime
            audio = loop_track(
                "audio", encoded_loop("audio", width, height, fps, ptime=ptime), 48000,
                48 * ptime, ptime / 1000,
            )  # fmt: skip
            video = loop_track(
                "video", encoded_loop("video", width, height, fps), 90000, 90000 // fps, 1 / fps
            )
            return audio, video

        def track_received(self, track: Any, receiver: Any) -> None:
            if receiver is not None:
                self._watch_rtp(receiver, track.kind)

        def _watch_rtp(self, receiver: Any, kind: str) -> None:
            """Note when each RTP packet arrives, before the jitter buffer and the decoder:
            what the relay forwarded, free of this client's decoding backlog."""
            handle = receiver._handle_rtp_packet  # aiortc 1.16: called per SRTP-decrypted packet
            arrivals = self.rtp.setdefault(kind, deque(maxlen=3000))

            async def timed(packet: Any, arrival_time_ms: int) -> None:
                arrivals.append(time.monotonic())
                if self.decode:
                    await handle(packet, arrival_time_ms=arrival_time_ms)

            receiver._handle_rtp_packet = timed

        def frame_received(self, kind: str, frame: Any, at: float) -> None:
            # The arrival instants (the gap analysis needs them).
            self.arrivals.setdefault(kind, deque(maxlen=3000)).append(at)
            got = self.received
            wanted = self.decode_frames
            if wanted is not None and min(got.frames["audio"], got.frames["video"]) >= wanted:
                # Proven decodable. Decoding 2N streams would swamp this process.
                self.decode = False

        def socket_closed(self, at: float) -> None:
            self.closed_at = at

        def record(self, since: float) -> dict[str, Any]:
            terminated = self.last("terminated")
            return {
                "call": self.call,
                "role": self.role,
                "visit": self.visit,
                "frames": dict(self.received.frames),
                "last_at": dict(self.received.last_at),
                "closed": self.closed.is_set(),
                "closed_at": self.closed_at,
                "close_code": self.close_code,
                "terminated_at": terminated.get("_at") if terminated else None,
                "terminated_directive": ((terminated or {}).get("directive") or {}).get("id"),
                "arrivals": {k: [t for t in v if t >= since] for k, v in self.arrivals.items()},
                "rtp": {k: [t for t in v if t >= since] for k, v in self.rtp.items()},
                "rtp_last": {k: v[-1] for k, v in self.rtp.items() if v},
            }

    return BenchClient


class LagProbe:
    """How late this process's event loop runs a 10 ms timer: the client side's own delay."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=20000)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            after = time.monotonic()
            self.samples.append((after, after - before - 0.01))

    def since(self, since: float) -> list[float]:
        return [lag for at, lag in self.samples if at >= since]


async def worker_main(server: str, name: str, lifetime: float) -> int:
    from relay import pin_ice_addresses

    pin_ice_addresses(["127.0.0.1"])
    client_class = _bench_client_class()
    clients: list[Any] = []
    probe = LagProbe()
    probe.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    def answer(value: dict[str, Any]) -> None:
        out.write(json.dumps(value).encode() + b"\n")
        out.flush()

    async def join(command: dict[str, Any]) -> dict[str, Any]:
        gate = asyncio.Semaphore(int(command.get("concurrency", 8)))
        size = tuple(command["size"])
        failures: list[dict[str, Any]] = []
        join_ms: list[float] = []
        deadline = time.monotonic() + float(command.get("deadline", 120))

        async def one(call: dict[str, Any], role: str, token: str) -> None:
            client = client_class(
                call.get("server") or server, token, call["visit"], size=size, fps=int(command["fps"]),
                call=call["index"], role=role, preencoded=bool(command.get("preencoded", True)),
                ptime=int(command.get("audio_ptime", 20)),
            )  # fmt: skip
            client.decode_frames = command.get("decode_frames")
            async with gate:
                began = time.monotonic()
                try:
                    first = await asyncio.wait_for(
                        client.connect(timeout=30), max(1.0, deadline - began)
                    )
                    # Hold the gate until ICE and DTLS are through: a burst of handshakes on a
                    # busy host makes aioice's consent checks (one try, 0.5 s) fail.
                    while first.get("type") == "joined" and client.pc is not None:
                        if client.pc.connectionState in ("connected", "failed", "closed"):
                            break
                        if time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.02)
                except Exception as exc:  # counted and reported, the rest goes on without it
                    failures.append({"call": call["index"], "role": role, "error": repr(exc)})
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.close(), 10)
                    return
                join_ms.append((time.monotonic() - began) * 1000)
            if first.get("type") != "joined":
                failures.append({"call": call["index"], "role": role, "error": first})
                await client.close()
                return
            clients.append(client)
            if len(clients) % 20 == 0:
                progress(f"worker {name}: {len(clients)} clients joined")

        async def both(call: dict[str, Any]) -> None:
            # The kiosk first, then the family member, as at a real visit. (Joining both at
            # once loses the kiosk's renegotiation on this server: see the bench report.)
            await one(call, "kiosk", call["kiosk_token"])
            await one(call, "family", call["family_token"])

        started = time.monotonic()
        await asyncio.gather(*(both(call) for call in command["calls"]))
        return {
            "clients": len(clients),
            "failures": failures,
            "join_ms": join_ms,
            "seconds": round(time.monotonic() - started, 2),
        }

    async def wait_media(command: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + float(command["timeout"])
        wanted = int(command["frames"])

        def missing() -> list[Any]:
            return [
                {
                    "call": c.call,
                    "role": c.role,
                    "frames": dict(c.received.frames),
                    "rtp_packets": {k: len(v) for k, v in c.rtp.items()},
                    "pc": None
                    if c.pc is None
                    else f"{c.pc.connectionState}/{c.pc.iceConnectionState}",
                    "closed": c.closed.is_set(),
                    "close_code": c.close_code,
                    "messages": [m.get("type") for m in c.messages][-6:],
                }  # fmt: skip
                for c in clients
                if c.received.frames["video"] < wanted or c.received.frames["audio"] < wanted
            ]

        while missing() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = missing()
        return {"clients": len(clients), "with_media": len(clients) - len(left), "missing": left}

    async def leave(command: dict[str, Any]) -> dict[str, Any]:
        await asyncio.gather(*(c.leave() for c in clients), return_exceptions=True)
        left = len(clients)
        clients.clear()  # the worker can join other calls now
        return {"left": left}

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        kind = command.get("cmd")
        if kind == "ping":
            return {"pong": os.getpid()}
        if kind == "join":
            return await join(command)
        if kind == "wait_media":
            return await wait_media(command)
        if kind == "report":
            since = float(command["since"])
            return {"clients": [c.record(since) for c in clients], "lag": probe.since(since)}
        if kind == "decode":
            for client in clients:
                client.decode = bool(command["on"])
            return {"decode": bool(command["on"]), "clients": len(clients)}
        if kind == "leave":
            return await leave(command)
        raise ValueError(f"unknown command {kind!r}")

    async def serve() -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            command = json.loads(line)
            if command.get("cmd") == "exit":
                answer({"bye": True})
                return
            try:
                answer(await handle(command))
            except Exception as exc:
                answer({"failed": repr(exc)})

    try:
        await asyncio.wait_for(serve(), lifetime)
    except TimeoutError:
        progress(f"worker {name}: lifetime of {lifetime} s over, exiting")
    finally:
        await asyncio.gather(
            *(asyncio.wait_for(c.close(), 10) for c in clients), return_exceptions=True
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="bench client worker (started by a bench, not by hand)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker")
    worker.add_argument("--server", required=True)
    worker.add_argument("--name", default="w0")
    worker.add_argument("--lifetime", type=float, default=900.0)
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <worker pid>`: where is it stuck?
    return asyncio.run(worker_main(args.server, args.name, args.lifetime))


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


if __name__ == "__main__":
    sys.exit(main())

"""What Parlor's benches stand on: a server in its own process, a roster seeded through the
REST API, what the machine is and does, and full aiortc clients.

The bench script is the conductor. It starts `parlor serve` as a subprocess (`ServerProcess`,
stopped with SIGTERM, then SIGKILL by pid, whatever happens) and seeds it over HTTP
(`seed_calls`). Calls at scale come from the load generator (`signaling.loadgen`: light
participants in worker processes); `_bench_client_class` is a full aiortc `ParlorClient`
(encoder, decoder) for the benches that need one (bench/soak.py). `machine`,
`server_version`, `quiet_machine` and `CpuWindow` say what the figures were measured on, at
which commit, on how quiet a machine, and at what CPU cost. Every process reads the same
system-wide `time.monotonic()` clock, so instants compare across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from signaling.loadgen import percentiles, progress
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
# lift the per-address join and connection limits and the per-identity API rate limit for the
# bench server only. They also choose the load they measure, so admission control (new calls
# refused while the event loop lags: a join burst of 100 DTLS handshakes makes it lag) is
# lifted too (bench/join_storm.py puts it back).
BENCH_LIMITS = {"PARLOR_JOIN_RATE_PER_IP": "100000:10000", "PARLOR_JOIN_RATE_PER_IDENTITY": "100000:10000",
                "PARLOR_API_RATE_PER_IDENTITY": "100000:10000", "PARLOR_OVERLOAD_LAG_SECONDS": "3600",
                "PARLOR_MAX_CONNECTIONS_PER_IP": "10000"}  # fmt: skip


# The load generator's own figures and progress lines, so every bench reads alike.
__all__ = ["percentiles", "progress"]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    import aioice
    import aiortc
    import av
    import psutil

    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")  # fmt: skip
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "aioice": aioice.__version__,
        "platform": platform.platform(),
    }


def server_version() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it outside bench/."""
    import subprocess

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [
        line[3:]
        for line in git("status", "--porcelain").splitlines()
        if not line[3:].startswith("bench/")
    ]
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_changes_outside_bench": changed[:20],
    }


async def quiet_machine(limit_percent: float, wait: float) -> dict[str, Any]:
    """Wait (at most `wait` s) until other processes use less than `limit_percent` of one core:
    this machine may be shared, and 2 busy cores turn every figure into queueing delay."""
    import psutil

    started = time.monotonic()
    while True:  # nothing of the bench runs now but this idle process
        busy = await asyncio.to_thread(psutil.cpu_percent, 1.0) * (os.cpu_count() or 1)
        if busy < limit_percent or time.monotonic() - started >= wait:
            return {"other_cpu_percent": round(busy, 1), "waited_s": round(time.monotonic() - started, 1),
                    "loadavg_1m": round(os.getloadavg()[0], 2)}  # fmt: skip
        progress(f"other processes use {busy:.0f} % CPU; waiting for a quieter machine")
        await asyncio.sleep(2.0)


DISTURBED_PERCENT = 25.0
"""Other processes above this % of a core during a window: its figures are marked disturbed."""


class CpuWindow:
    """CPU seconds of named groups of processes, and of the whole machine, between
    :meth:`start` and :meth:`stop`, as % of one core (psutil: robust to other load)."""

    def __init__(self, processes: dict[str, list[Any]]) -> None:
        self.processes = processes
        self._before: dict[int, float] = {}
        self._machine: Any = None
        self._at = 0.0

    @staticmethod
    def _seconds(process: Any) -> float:
        import psutil

        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            return float(times.user + times.system)
        return 0.0

    def start(self) -> None:
        import psutil

        self._before = {p.pid: self._seconds(p) for ps in self.processes.values() for p in ps}
        self._machine = psutil.cpu_times()
        self._at = time.monotonic()

    def stop(self) -> dict[str, Any]:
        import psutil

        wall = max(1e-9, time.monotonic() - self._at)
        after = psutil.cpu_times()
        busy = sum(
            getattr(after, f) - getattr(self._machine, f)
            for f in ("user", "nice", "system", "irq", "softirq", "steal")
            if hasattr(after, f)
        )
        result: dict[str, Any] = {"window_s": round(wall, 2)}
        total = 0.0
        for name, processes in self.processes.items():
            shares = [
                (self._seconds(p) - self._before.get(p.pid, 0.0)) / wall * 100 for p in processes
            ]
            total += sum(shares)
            result[f"{name}_percent"] = round(sum(shares), 1)
            if len(shares) > 1:
                result[f"{name}_percent_per_process"] = [round(x, 1) for x in shares]
        result["measured_total_percent"] = round(total, 1)
        result["machine_percent"] = round(busy / wall * 100, 1)
        result["other_processes_percent"] = round(busy / wall * 100 - total, 1)
        result["loadavg_1m"] = round(os.getloadavg()[0], 2)
        # Two cores: what other processes took was taken from the node or the load workers.
        result["disturbed"] = result["other_processes_percent"] > DISTURBED_PERCENT
        return result


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

    async def api(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any, float, float]:
        """Call the API as the bench operator (or with `token`): (status, answer, sent_at,
        answered_at).

        `answered_at` is taken once the whole answer body is read (time.monotonic)."""
        assert self.http is not None
        headers = {
            "Authorization": f"Bearer {token or self.operator_token}",
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


class ServerWatch:
    """Polls a node's /metrics twice a second: its event-loop lag, for context."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.lag: list[tuple[float, float]] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                samples = await self.server.metrics()
                if "parlor_event_loop_lag_seconds" in samples:
                    self.lag.append((time.monotonic(), samples["parlor_event_loop_lag_seconds"]))
            await asyncio.sleep(0.5)

    def max_lag_ms(self, start: float, end: float) -> float | None:
        inside = self.lags_ms(start, end)
        return max(inside) if inside else None

    def lags_ms(self, start: float, end: float) -> list[float]:
        """The samples taken in [start, end], in ms."""
        return [round(lag * 1000, 1) for at, lag in self.lag if start <= at <= end]

    def mean_lag_max_ms(self, start: float, end: float, samples: int = 6) -> float | None:
        """The largest mean of `samples` consecutive samples in [start, end], in ms: what the
        node's admission control compares with PARLOR_OVERLOAD_LAG_SECONDS (its own mean of
        the last 6 half-second samples)."""
        inside = self.lags_ms(start, end)
        if not inside:
            return None
        means = [sum(inside[i : i + samples]) / len(inside[i : i + samples])
                 for i in range(max(1, len(inside) - samples + 1))]  # fmt: skip
        return round(max(means), 1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


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


# -- full aiortc clients (bench/soak.py) ------------------------------------------------
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


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def print_result(run: Any) -> int:
    """Run the bench coroutine ``run``, stamp how long it took (``elapsed_s``) and print its
    JSON document on stdout: every bench's ``main``."""
    started = time.monotonic()
    result = asyncio.run(run)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    return 0


async def supervisor_api(server: ServerProcess, method: str, path: str, body: Any) -> Any:
    """A REST call as a supervisor of the node (the operator token cannot change policy)."""
    from signaling.tokens import Tokens

    token = Tokens(server.secret.encode()).issue("operator:bench-sup", "supervisor", 3600)
    status, answer, _, _ = await server.api(method, path, body, token=token)
    if status >= 300:
        raise RuntimeError(f"{method} {path}: {status} {answer}")
    return answer


async def record_nothing(server: ServerProcess, facilities: Iterable[str]) -> None:
    """Set ``recording: false`` on each facility, as a supervisor would (`--recording off`)."""
    for facility in facilities:
        await supervisor_api(
            server, "PATCH", f"/api/v1/facilities/{facility}", {"recording": False}
        )


async def recordings_finished(
    server: ServerProcess, facility: str, count: int, timeout: float = 180.0
) -> list[dict[str, Any]]:
    """Wait until ``count`` recordings of ``facility`` are finalized or failed (the node's
    remux after each call); TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = await supervisor_api(server, "GET", f"/api/v1/recordings?facility={facility}", None)
        done = [r for r in found if r["status"] in ("finalized", "failed")]
        if len(done) >= count:
            return done
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(done)} of {count} recordings finished")
        await asyncio.sleep(0.2)

"""The load generator: N simulated calls on a node, in a few worker processes, measured.

``parlor load --server URL --calls N --seconds S`` puts N 1:1 calls (a kiosk and a family
member each, ``signaling.loadpeer``) on a running node and reports what they received and
what they cost. The benches (``bench/kill_latency.py``, ``bench/join_storm.py``) drive the
same pieces:

* :func:`seed_roster` creates facilities, kiosks, inmates, approved contacts and visits open
  now through the REST API with an operator token, or :func:`read_roster` takes visits
  given in a file;
* :class:`LoadFleet` starts worker processes (``python -m signaling.loadgen worker``), each a
  loop with one :class:`~signaling.loadpeer.Pacer` and its share of the participants, and
  speaks to them in JSON lines on their stdin/stdout: ``join``, ``wait_media``, ``report``,
  ``cpu``, ``leave``, ``exit``. The media is encoded once, by the coordinator, into a file
  the workers read (``signaling.loadmedia``);
* :func:`run_load` is the CLI's run: seed, join, wait until every participant receives audio
  and video, hold the calls for S seconds, report per participant and the generator's own CPU
  (``time.process_time`` of every worker over the held window, per simulated participant).

Every run is bounded: at most :data:`MAX_CALLS` calls and :data:`MAX_SECONDS` seconds, every
step has a timeout, a worker exits when its stdin closes or its lifetime is over, and the
coordinator kills what does not exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from signaling.loadmedia import PTIMES, LoadMedia, VideoSpec, load_media
from signaling.protocol import Close

MAX_CALLS = 500
MAX_SECONDS = 3600.0
MAX_PROCESSES = 16
PACKETS_PER_PROCESS = 10_000
"""RTP packets a second (sent and received) a worker carries when the number of processes is
left to the generator: a worker's loop wakes ~100 times a second whatever it holds (1-2 % of a
core here), so fewer, fuller workers cost less per participant; at this rate (~70
participants at 160x120@10, ~20 at 640x480@30) a worker uses about a quarter of a core and
its loop stays a few ms late at most."""
SETUP_SECONDS = 120.0
"""What joining may take on top of the held time, in a worker's lifetime."""
FRESH = 1.0
"""A participant receives media when both kinds arrived within this many seconds."""
RETRYABLE = (Close.RATE_LIMITED, Close.UNAVAILABLE)
"""Close codes after which a join is tried again (rate limited, node overloaded)."""


def percentiles(values: list[float], points: tuple[float, ...] = (0.5, 0.99)) -> dict[str, Any]:
    """The sample count, p50/p99 (or ``points``; linear between ranks) and max, rounded."""
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


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the roster -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadCall:
    """One 1:1 call: a visit between inmate I at kiosk K and contact C, in facility F."""

    index: int
    visit: str
    kiosk_token: str
    family_token: str
    facility: str = ""
    device: str = ""
    inmate: str = ""
    contact: str = ""
    server: str | None = None
    """The node its participants join (a cluster); None: the fleet's server."""


class RosterError(RuntimeError):
    """The node refused a step of seeding the roster."""


async def seed_roster(
    server: str,
    token: str,
    layout: dict[str, int],
    *,
    prefix: str = "",
    hours: float = 1.0,
    concurrency: int = 8,
) -> list[LoadCall]:
    """Facilities from ``layout`` (id -> number of calls); per call a kiosk, an inmate, an
    approved contact and a social visit open from a minute ago for ``hours``, all through the
    REST API as the operator whose ``token`` is given. Ids start with ``prefix``."""
    from policy.rfc3339 import format_time

    base = server.rstrip("/") + "/api/v1"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(
        headers=headers, timeout=aiohttp.ClientTimeout(total=30)
    ) as http:

        async def post(path: str, body: dict[str, Any], expect: int) -> Any:
            async with http.post(base + path, json=body) as response:
                answer = await response.json(content_type=None)
                if response.status != expect:
                    raise RosterError(f"POST {path} answered {response.status}: {answer}")
                return answer

        for facility in layout:
            await post("/facilities", {"id": facility, "name": f"Facility {facility}"}, 201)
        plan = [facility for facility, count in layout.items() for _ in range(count)]
        gate = asyncio.Semaphore(concurrency)
        now = time.time()

        async def one(index: int, facility: str) -> LoadCall:
            device, inmate, contact = (f"{prefix}{kind}{index:04d}" for kind in "KIC")
            async with gate:
                await post("/devices", {"id": device, "facility": facility}, 201)
                await post(
                    "/inmates", {"id": inmate, "facility": facility, "name": f"Inmate {index}"}, 201
                )
                await post(
                    "/contacts", {"id": contact, "name": f"Contact {index}", "minor": False}, 201
                )
                await post(
                    f"/contacts/{contact}/approvals", {"inmate": inmate, "status": "approved"}, 200
                )
                visit = await post(
                    "/visits",
                    {"inmate": inmate, "device": device, "contacts": [contact], "kind": "social",
                     "starts_at": format_time(now - 60), "ends_at": format_time(now + hours * 3600)},
                    201,
                )  # fmt: skip
            return LoadCall(
                index=index, visit=visit["id"], kiosk_token=visit["join"]["device"]["token"],
                family_token=visit["join"][contact]["token"], facility=facility, device=device,
                inmate=inmate, contact=contact,
            )  # fmt: skip

        return list(await asyncio.gather(*(one(i, f) for i, f in enumerate(plan))))


def read_roster(path: Path) -> list[LoadCall]:
    """Visits given in a JSON file: a list of ``{visit, kiosk_token, family_token}`` (the
    other :class:`LoadCall` fields optional). ValueError when it is not that."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read visits from {path}: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a JSON list of visits is expected")
    calls = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("visit", "kiosk_token", "family_token")
        ):
            raise ValueError(f"{path}: visit {index} needs visit, kiosk_token, family_token")
        known = {k: v for k, v in entry.items() if k in LoadCall.__dataclass_fields__}
        calls.append(LoadCall(**{**known, "index": index}))
    return calls


# --- the coordinator's side of the workers ---------------------------------------------


class WorkerGone(RuntimeError):
    """A worker process exited or stopped answering."""


class LoadWorker:
    """One worker process, spoken to in JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process, self.name = process, name
        self._lock = asyncio.Lock()

    @classmethod
    async def start(
        cls, name: str, media: Path, lifetime: float, ice_addresses: list[str] | None
    ) -> LoadWorker:
        argv = [sys.executable, "-m", "signaling.loadgen", "worker", "--name", name,
                "--media", str(media), "--lifetime", str(lifetime)]  # fmt: skip
        if ice_addresses:
            argv += ["--ice-addresses", ",".join(ice_addresses)]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=None, limit=256 * 1024 * 1024,
        )  # fmt: skip
        return cls(process, name)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def ask(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        async with self._lock:
            try:
                stdin.write(json.dumps(command).encode() + b"\n")
                await stdin.drain()
                line = await asyncio.wait_for(stdout.readline(), timeout)
            except (OSError, TimeoutError) as exc:
                raise WorkerGone(f"worker {self.name}: {command['cmd']}: {exc!r}") from None
        if not line:
            raise WorkerGone(f"worker {self.name} exited ({self.process.returncode})")
        answer: dict[str, Any] = json.loads(line)
        if "failed" in answer:
            raise WorkerGone(f"worker {self.name}: {command['cmd']} failed: {answer['failed']}")
        return answer

    async def stop(self, timeout: float = 20.0) -> int | None:
        process = self.process
        if process.returncode is None:
            with contextlib.suppress(WorkerGone):
                await self.ask({"cmd": "exit"}, timeout)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode


class LoadFleet:
    """The worker processes of one run, and the calls each one holds."""

    def __init__(self, server: str, workers: list[LoadWorker]) -> None:
        self.server = server.rstrip("/")
        self.workers = workers

    @classmethod
    async def start(
        cls,
        server: str,
        processes: int,
        media: Path,
        *,
        lifetime: float,
        ice_addresses: list[str] | None = None,
    ) -> LoadFleet:
        """``processes`` workers that replay the media saved at ``media`` (LoadMedia.save)
        and exit after ``lifetime`` s whatever happens."""
        workers = await asyncio.gather(
            *(LoadWorker.start(f"w{n}", media, lifetime, ice_addresses) for n in range(processes))
        )
        fleet = cls(server, list(workers))
        try:
            await fleet._all({"cmd": "ping"}, 60)
        except WorkerGone:
            await fleet.stop()
            raise
        return fleet

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]

    async def _all(self, command: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(w.ask(command, timeout) for w in self.workers)))

    async def join(
        self,
        calls: list[LoadCall],
        *,
        concurrency: int | None = 8,
        timeout: float = 60.0,
        retry: tuple[int, ...] = (),
        together: bool = False,
    ) -> dict[str, Any]:
        """Every call's kiosk, then its family member (``together``: both at once), joined
        through the worker that holds the call (calls dealt round-robin). Each worker lets
        ``concurrency`` joins run at once (None: all of its joins) and gives up on a join
        after ``timeout`` s."""
        shares: list[list[dict[str, Any]]] = [[] for _ in self.workers]
        for position, call in enumerate(calls):
            entry = asdict(call)
            entry["server"] = call.server or self.server
            shares[position % len(self.workers)].append(entry)
        command = {"cmd": "join", "concurrency": concurrency or 0, "timeout": timeout,
                   "retry": list(retry), "together": together}  # fmt: skip
        answers = await asyncio.gather(
            *(
                worker.ask({**command, "calls": share}, timeout * (len(share) + 2))
                for worker, share in zip(self.workers, shares, strict=True)
                if share
            )
        )
        refusals: Counter[str] = Counter()
        for answer in answers:
            refusals.update(answer["refusals"])
        return {
            "participants": sum(a["participants"] for a in answers),
            "connected": sum(a["connected"] for a in answers),
            "failures": [f for a in answers for f in a["failures"]],
            "refusals": dict(refusals),
            "joins": [j for a in answers for j in a["joins"]],
        }

    async def wait_media(self, timeout: float = 30.0, fresh: float = FRESH) -> dict[str, Any]:
        """Wait until every participant received audio and video within ``fresh`` s."""
        answers = await self._all(
            {"cmd": "wait_media", "timeout": timeout, "fresh": fresh}, timeout + 30
        )
        return {
            "participants": sum(a["participants"] for a in answers),
            "receiving": sum(a["receiving"] for a in answers),
            "alone": sum(a["alone"] for a in answers),
            "missing": [m for a in answers for m in a["missing"]],
        }

    async def report(self, since: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(every participant's record, every worker's own figures) since ``since``."""
        answers = await self._all({"cmd": "report", "since": since}, 120)
        records = [r for a in answers for r in a.pop("participants")]
        return records, answers

    async def cpu(self) -> list[dict[str, float]]:
        """Each worker's CPU seconds so far and the instant they were read."""
        return await self._all({"cmd": "cpu"}, 30)

    async def leave(self) -> int:
        answers = await self._all({"cmd": "leave"}, 60)
        return sum(a["left"] for a in answers)

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)


def processes_for(participants: int, media: LoadMedia, asked: int = 0) -> int:
    """Worker processes for ``participants`` sending ``media``: ``asked``, or when 0 enough
    for :data:`PACKETS_PER_PROCESS` each (at least 1, at most :data:`MAX_PROCESSES`)."""
    if asked:
        return asked
    packets = 2 * sum(media.packets_per_second.values()) * participants  # sent and received
    return max(1, min(MAX_PROCESSES, math.ceil(packets / PACKETS_PER_PROCESS)))


def cpu_share(before: list[dict[str, float]], after: list[dict[str, float]]) -> dict[str, Any]:
    """Per worker and in all, the % of one core used between two :meth:`LoadFleet.cpu`."""
    per = []
    for first, last in zip(before, after, strict=True):
        wall = max(1e-9, last["at"] - first["at"])
        per.append(round((last["cpu_s"] - first["cpu_s"]) / wall * 100, 1))
    return {"per_process_percent": per, "total_percent": round(sum(per), 1)}


# --- the worker process ------------------------------------------------------------------


async def worker_main(name: str, media_path: Path, lifetime: float) -> int:
    """A worker: participants, one pacer and one DTLS certificate, commands in JSON lines on
    stdin."""
    from relay import DtlsCertificate
    from signaling.loadpeer import LoadParticipant, Pacer, Refused
    from signaling.memory import collect_garbage_less_often

    media = LoadMedia.read(media_path)
    collect_garbage_less_often()
    pacer = Pacer()
    certificate = DtlsCertificate()
    participants: list[LoadParticipant] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=256 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))

    async def join(command: dict[str, Any]) -> dict[str, Any]:
        limit = int(command.get("concurrency", 8))  # 0: no limit
        gate = asyncio.Semaphore(limit) if limit > 0 else contextlib.nullcontext()
        timeout = float(command.get("timeout", 60))
        retry = tuple(int(code) for code in command.get("retry", ()))
        failures: list[dict[str, Any]] = []
        joined: list[LoadParticipant] = []

        async def one(call: dict[str, Any], role: str) -> None:
            token = call["kiosk_token"] if role == "kiosk" else call["family_token"]
            participant = LoadParticipant(
                call["server"], token, call["visit"], media=media, pacer=pacer, http=http,
                call=int(call["index"]), role=role, certificate=certificate,
            )  # fmt: skip
            participants.append(participant)
            async with gate:
                try:
                    await participant.join(timeout, retry=retry)
                    joined.append(participant)
                except (Refused, TimeoutError, aiohttp.ClientError, OSError) as exc:
                    code = exc.code if isinstance(exc, Refused) else type(exc).__name__
                    close = exc.close_code if isinstance(exc, Refused) else None
                    failures.append({"call": call["index"], "role": role, "code": code,
                                     "close_code": close, "message": str(exc)[:300]})  # fmt: skip
                    await participant.close()

        async def both(call: dict[str, Any]) -> None:
            if command.get("together"):
                await asyncio.gather(one(call, "kiosk"), one(call, "family"))
            else:  # the kiosk first, as at a real visit
                await one(call, "kiosk")
                await one(call, "family")

        await asyncio.gather(*(both(call) for call in command["calls"]))
        refusals: Counter[str] = Counter()
        for participant in participants:
            refusals.update(str(r["close_code"]) + " " + r["code"] for r in participant.refusals)
        return {
            "participants": len(participants),
            "connected": len(joined),
            "failures": failures,
            "refusals": dict(refusals),
            "joins": [
                {"call": p.call, "role": p.role, **p.times, "refused": len(p.refusals)}
                for p in participants
            ],
        }

    def receiving(participant: LoadParticipant, fresh: float) -> bool:
        now = time.monotonic()
        return all(now - a.last <= fresh for a in participant.arrivals.values() if a.last) and all(
            a.count for a in participant.arrivals.values()
        )

    async def wait_media(command: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + float(command["timeout"])
        fresh = float(command.get("fresh", FRESH))
        # One that left (an earlier round of the same fleet) is not waited for either.
        connected = [p for p in participants if p.connected.is_set() and not p.closed.is_set()]
        calls = Counter(p.call for p in connected)
        # A participant whose peer never connected has nothing to receive: not waited for.
        live = [p for p in connected if calls[p.call] == 2]
        # Arrivals are counted in socket callbacks, which set no event: polled, 10 times a second.
        while time.monotonic() < deadline and not all(receiving(p, fresh) for p in live):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        missing = [p for p in live if not receiving(p, fresh)]
        return {
            "participants": len(live),
            "receiving": len(live) - len(missing),
            "alone": len(connected) - len(live),
            "missing": [
                {
                    "call": p.call,
                    "role": p.role,
                    "packets": {k: a.count for k, a in p.arrivals.items()},
                    "closed": p.closed.is_set(),
                    "close_code": p.close_code,
                    "errors": p.errors[-3:],
                }
                for p in missing[:20]
            ],  # fmt: skip
        }

    def cpu() -> dict[str, float]:
        return {"cpu_s": time.process_time(), "at": time.monotonic()}

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        kind = command.get("cmd")
        if kind == "ping":
            return {"pid": os.getpid()}
        if kind == "join":
            return await join(command)
        if kind == "wait_media":
            return await wait_media(command)
        if kind == "cpu":
            return cpu()
        if kind == "report":
            since = float(command["since"])
            lags = pacer.lag_since(since)
            return {
                "name": name,
                "pid": os.getpid(),
                "participants": [p.record(since) for p in participants],
                "loop_lag_ms": percentiles([lag * 1000 for lag in lags]),
                "late_ticks": pacer.late_ticks,
                "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                **cpu(),
            }
        if kind == "leave":
            live = [p for p in participants if not p.closed.is_set()]
            await asyncio.gather(*(p.leave() for p in live), return_exceptions=True)
            return {"left": len(live)}
        raise ValueError(f"unknown command {kind!r}")

    async def serve() -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            command = json.loads(line)
            if command.get("cmd") == "exit":
                out.write(b'{"bye": true}\n')
                out.flush()
                return
            try:
                answer = await handle(command)
            except Exception as exc:  # said to the coordinator, which decides
                answer = {"failed": repr(exc)}
            out.write(json.dumps(answer).encode() + b"\n")
            out.flush()

    try:
        await asyncio.wait_for(serve(), lifetime)
    except TimeoutError:
        progress(f"load worker {name}: lifetime of {lifetime:g} s over, exiting")
    finally:
        pacer.stop()
        await asyncio.gather(
            *(asyncio.wait_for(p.close(), 10) for p in participants), return_exceptions=True
        )
        await http.close()
    return 0


# --- a run of the CLI ----------------------------------------------------------------------


def default_ice_addresses(server: str) -> list[str] | None:
    """The addresses the participants' ICE may use: ``PARLOR_ICE_ADDRESSES``, else
    127.0.0.1 for a node on loopback (aioice never gathers loopback on its own), else
    aioice's choice (None)."""
    configured = os.environ.get("PARLOR_ICE_ADDRESSES")
    if configured:
        return [a.strip() for a in configured.split(",") if a.strip()]
    host = urlsplit(server).hostname or ""
    return ["127.0.0.1"] if host in ("127.0.0.1", "localhost") else None


def layout_of(calls: int, prefix: str) -> dict[str, int]:
    """Calls over facilities of at most 10 calls each (so a facility directive cuts ~10)."""
    count = max(1, (calls + 9) // 10)
    layout = {
        f"{prefix}F{n:02d}": calls // count + (1 if n < calls % count else 0) for n in range(count)
    }
    return {facility: share for facility, share in layout.items() if share}


def summarize(
    records: list[dict[str, Any]], start: float, end: float, fresh: float = FRESH
) -> dict[str, Any]:
    """What the participants received over [start, end]: who received both kinds in the
    last ``fresh`` s of it, packets per second per kind, and the largest audio gap."""
    window = max(1e-9, end - start)
    rates: dict[str, list[float]] = {"audio": [], "video": []}
    gaps: list[float] = []
    receiving = 0
    for record in records:
        arrivals = record["arrivals"]
        for kind in rates:
            inside = [t for t in arrivals[kind] if start <= t <= end]
            rates[kind].append(len(inside) / window)
        last = record["last"]
        if all(last[k] is not None and last[k] >= end - fresh for k in ("audio", "video")):
            receiving += 1
        audio = [start] + [t for t in arrivals["audio"] if start <= t <= end] + [end]
        gaps.append(max(b - a for a, b in zip(audio, audio[1:], strict=False)) * 1000)
    return {
        "participants": len(records),
        "receiving_audio_and_video": receiving,
        "packets_per_second": {
            kind: percentiles(values, (0.01, 0.5)) for kind, values in rates.items()
        },
        "max_audio_gap_ms": percentiles(gaps),
        "audio_gaps_over_200ms": sum(1 for g in gaps if g > 200),
    }


async def run_load(args: argparse.Namespace, token: str) -> dict[str, Any]:
    """The run ``parlor load`` prints: seed (or read) the visits, join, hold, report."""
    video = VideoSpec.parse(args.video)
    media = load_media(video, args.audio_ptime, cache=Path(tempfile.gettempdir()))
    processes = processes_for(2 * args.calls, media, args.processes)
    work = Path(tempfile.mkdtemp(prefix="parlor-load-"))
    media_path = work / "media.json"
    media.save(media_path)
    result: dict[str, Any] = {
        "tool": "parlor load",
        "server": args.server,
        "calls": args.calls,
        "participants": 2 * args.calls,
        "processes": processes,
        "seconds": args.seconds,
        "media": media.describe(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    if args.visits:
        calls = read_roster(Path(args.visits))[: args.calls]
    else:
        prefix = f"L{secrets.token_hex(3)}-"
        started = time.monotonic()
        calls = await seed_roster(args.server, token, layout_of(args.calls, prefix), prefix=prefix)
        result["seed_s"] = round(time.monotonic() - started, 2)
    lifetime = args.seconds + SETUP_SECONDS + 60
    fleet = await LoadFleet.start(
        args.server, processes, media_path, lifetime=lifetime,
        ice_addresses=default_ice_addresses(args.server),
    )  # fmt: skip
    try:
        started = time.monotonic()
        joined = await fleet.join(calls, concurrency=args.join_concurrency, timeout=60)
        result["join_s"] = round(time.monotonic() - started, 2)
        result["joined"] = f"{joined['connected']}/{joined['participants']}"
        result["join_failures"] = joined["failures"][:10]
        result["refusals"] = joined["refusals"]
        result["join_to_connected_ms"] = percentiles(
            [(j["connected"] - j["join"]) * 1000 for j in joined["joins"] if "connected" in j]
        )
        progress(f"{result['joined']} participants connected in {result['join_s']} s")
        media_wait = await fleet.wait_media(timeout=30)
        result["receiving_before_hold"] = f"{media_wait['receiving']}/{media_wait['participants']}"
        if media_wait["missing"]:
            result["missing_media"] = media_wait["missing"][:10]
        before = await fleet.cpu()
        hold_from = time.monotonic()
        await asyncio.sleep(args.seconds)
        after = await fleet.cpu()
        hold_to = time.monotonic()
        records, workers = await fleet.report(since=hold_from)
        result["held"] = summarize(records, hold_from, hold_to)
        cpu = cpu_share(before, after)
        live = max(1, joined["connected"])
        result["generator_cpu"] = {
            **cpu,
            "per_participant_percent_of_a_core": round(cpu["total_percent"] / live, 3),
            "target_per_participant_percent": 0.4,
        }
        result["generator_loop_lag_ms"] = {w["name"]: w["loop_lag_ms"] for w in workers}
        result["generator_rss_mb"] = [w["max_rss_mb"] for w in workers]
        result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        result["left"] = await fleet.leave()
    finally:
        await fleet.stop()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``parlor load`` besides --server and the operator's token (``parlor``'s
    own, as for every command that talks to a running node)."""
    parser.add_argument(
        "--calls", type=int, default=10, help=f"1:1 calls to hold (1..{MAX_CALLS}; default 10)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help=f"how long to hold them (at most {MAX_SECONDS:g})",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help=f"worker processes (1..{MAX_PROCESSES}; default: one per {PACKETS_PER_PROCESS} packets a second)",
    )
    parser.add_argument(
        "--video",
        default="160x120@10",
        help="VP8 size and frame rate, WxH@FPS (default 160x120@10)",
    )
    parser.add_argument(
        "--audio-ptime",
        type=int,
        default=20,
        choices=PTIMES,
        help="ms of audio per Opus packet (default 20)",
    )
    parser.add_argument(
        "--join-concurrency", type=int, default=8, help="joins in flight per worker (default 8)"
    )
    parser.add_argument(
        "--visits",
        help="a JSON file of visits to join ({visit, kiosk_token, family_token}) instead of creating them",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON (default: a summary)")  # fmt: skip


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, in one line, or None."""
    if not 1 <= args.calls <= MAX_CALLS:
        return f"--calls must be 1..{MAX_CALLS}"
    if not 0 < args.seconds <= MAX_SECONDS:
        return f"--seconds must be more than 0 and at most {MAX_SECONDS:g}"
    if not 0 <= args.processes <= MAX_PROCESSES:
        return f"--processes must be 1..{MAX_PROCESSES} (or 0: as many as the load needs)"
    if args.join_concurrency < 1:
        return "--join-concurrency must be at least 1"
    if not str(args.server).startswith(("http://", "https://")):
        return "--server must be an http:// or https:// URL"
    try:
        VideoSpec.parse(args.video)
    except ValueError as exc:
        return f"--video: {exc}"
    return None


def summary_text(result: dict[str, Any]) -> str:
    held = result.get("held", {})
    cpu = result.get("generator_cpu", {})
    return (
        f"{result['calls']} calls ({result['participants']} participants, {result['processes']} processes): "
        f"joined {result.get('joined')}, receiving audio+video {held.get('receiving_audio_and_video')}"
        f"/{held.get('participants')} at the end of {result['seconds']:g} s; "
        f"audio gaps > 200 ms: {held.get('audio_gaps_over_200ms')}; "
        f"generator CPU {cpu.get('total_percent')} % of a core, "
        f"{cpu.get('per_participant_percent_of_a_core')} % per participant"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m signaling.loadgen worker ...``: a worker process (started by a fleet)."""
    parser = argparse.ArgumentParser(prog="python -m signaling.loadgen")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="a load worker (started by LoadFleet)")
    worker.add_argument("--name", default="w0")
    worker.add_argument("--media", required=True)
    worker.add_argument("--lifetime", type=float, default=600.0)
    worker.add_argument("--ice-addresses", default="")
    args = parser.parse_args(argv)
    if args.ice_addresses:
        from relay import pin_ice_addresses

        pin_ice_addresses([a for a in args.ice_addresses.split(",") if a])
    lifetime = min(args.lifetime, MAX_SECONDS + SETUP_SECONDS + 60)
    return asyncio.run(worker_main(args.name, Path(args.media), lifetime))


if __name__ == "__main__":
    sys.exit(main())

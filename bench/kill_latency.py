"""Kill latency: how fast a directive stops the media of the live calls it matches (SPEC §4).

The server runs in its own process (`parlor serve`, SQLite, ICE pinned to 127.0.0.1). This
script seeds it through the REST API and puts N live 1:1 calls on it: per call a kiosk and a
family member, each a real aiortc `ParlorClient` (a subclass in bench/harness.py) sending
160x120@10 fps VP8 and 20 ms Opus and receiving the other's. The clients live in worker
processes; this process carries no media and issues the directives, so the instant it records
for an API answer is not late because of a busy media loop. All processes read the same
monotonic clock.

Keeping the clients cheap (2 cores host the server and 2N clients): by default each client
sends a pre-encoded loop (the same VP8/Opus packets a live encoder would send, encoded once
per process), and once every client has decoded audio and video, clients stop decoding and
only note when each RTP packet arrives. `--live-encode` and `--decode` restore the full cost.

Calls are spread over three facilities so single directives match the sizes the issue asks:
F-SOUTH ~40 % of calls, F-SMALL 10 %, F-NORTH 50 %. The directive rounds, in order:
  1 call     one `visit:V` directive on an F-SOUTH call                 (2 sessions)
  10%        one `facility:F-SMALL` directive: a small facility, 10 %    (one directive)
  10%-visits one `visit:V` directive per call for another 10 % of calls, issued concurrently
             (an operator cutting several calls at once; each answer is its own instant)
  facility   one `facility:F-NORTH` directive: half of the calls
Every round is `suspend`. What is left of F-SOUTH is never matched: those calls must go on.

Per directive: (a) API answer time, request sent -> answer read; (b) kill latency per
affected session = arrival of the last RTP media packet at the client minus the API answer
instant, clamped at 0 (the raw minimum is reported too: negative means the last packet came
before the answer, which is what the server intends: it stops forwarding, then answers);
(c) WebSocket close at the client minus the answer instant (raw; normally negative, for the
same reason). Unaffected sessions: the largest gap between audio packets in
[sent - 1 s, answer + 1 s], and how many exceeded 200 ms, next to the same figure over a quiet
window before any directive (the baseline). The clients' and the server's event-loop lag are
reported as well: a late loop delays every timestamp taken on it.

`--nodes 2` measures the cluster (SPEC §8): a throwaway PostgreSQL (tests/harness/pg.py)
and two `parlor serve` nodes on it. Every directive is issued on node B. The calls are spread
over both nodes (every other call of each facility joins B; the 1-call round's call is on A),
so each round ends sessions on A, where the kill crossed the bus (NOTIFY carrying the event,
enforcement on A), and on B, the single-node path, in the same run: `by_node` reports them
apart, all measured from B's answer. `--all-on-a` puts every call on A instead (B then relays
nothing and answers fast). Needs the PostgreSQL server binaries.

`--audio-ptime 60` makes the clients send 60 ms Opus packets instead of a browser's 20 ms: a
third of the audio packets, so a small machine holds more calls. The JSON says which.

JSON to stdout, progress to stderr. `--quick`: 10 calls, about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Run as a script: import `bench` and the project's packages from the repository root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import psutil  # noqa: E402

from bench.harness import (  # noqa: E402
    CallSpec,
    Fleet,
    ServerProcess,
    percentiles,
    progress,
    seed_calls,
    workdir,
)

TARGET_P99_MS = 50.0  # one node (the policy issue)
TARGET_CALLS = 100
CLUSTER_TARGET_P99_MS = 100.0  # --nodes 2: cross-node (the cluster issue)
CLUSTER_TARGET_CALLS = 50
GAP_LIMIT = 0.200  # s: an unaffected client's audio gap larger than this is a disturbance
WINDOW = 1.0  # s on each side of a directive for the gap analysis
SETTLE = 2.0  # s after the answer before the clients are read (late frames would show)
PRE = 1.2  # s of undisturbed media before each directive
SIZE = (160, 120)
MEDIA_FRAMES = 5  # decoded audio and video frames that prove a client receives media
FPS = 10


DEFINITIONS = {
    "api_ms": "request sent -> answer read, in the conductor process (which carries no media)",
    "api_server_timing_ms": "the issuing node's Server-Timing header: commit (validate + store), enforce (its "
    "own matching sessions closed), record (their count written); the largest of the round's answers",
    "kill_latency_ms": "per affected session: arrival of the last RTP media packet (before the client's "
    "jitter buffer and decoder) - API answer instant, clamped at 0; min_raw unclamped "
    "(negative = the last packet came before the answer). The spec's 'last forwarded media packet'.",
    "kill_latency_decoded_ms": "the same with the last decoded frame the client's track returned; "
    "includes the client's own decoding backlog",
    "kill_latency_from_request_ms": "last RTP media packet - request sent (unclamped)",
    "ws_close_ms": "WebSocket closed at the client - API answer instant (raw; negative = closed before the answer)",
    "unaffected_gap": f"largest interval between audio RTP packets in [first request sent - {WINDOW} s, "
    f"last answer + {WINDOW} s] per session that no directive matched (decoded_*: between decoded audio frames)",
    "baseline": "the same gap figures over a quiet window before any directive",
    "by_node": "--nodes 2: the same figures for the affected sessions on A (the kill crossed the bus "
    "from B) and on B (the issuing node: the single-node path, measured in the same run)",
    "server_enforce_mean_ms": "server's own parlor_kill_seconds (commit -> last affected session told and recorded), "
    "mean over the round's directives",
}


def layout_for(calls: int) -> dict[str, int]:
    small = max(1, round(calls * 0.10))
    north = calls // 2
    return {"F-SOUTH": calls - small - north, "F-SMALL": small, "F-NORTH": north}


def rounds_for(calls: list[CallSpec]) -> list[dict[str, Any]]:
    south = [c for c in calls if c.facility == "F-SOUTH"]
    small = [c for c in calls if c.facility == "F-SMALL"]
    north = [c for c in calls if c.facility == "F-NORTH"]
    cut = south[1 : 1 + len(small)]
    if len(south) < 2 + len(cut):
        raise ValueError("too few calls for the rounds; use at least 10")
    return [
        {"match": "1 call", "scopes": [f"visit:{south[0].visit}"], "calls": [south[0]]},
        {"match": "10%", "scopes": ["facility:F-SMALL"], "calls": small},
        {"match": "10%-visits", "scopes": [f"visit:{c.visit}" for c in cut], "calls": cut},
        {"match": "facility", "scopes": ["facility:F-NORTH"], "calls": north},
    ]


def max_gap(times: list[float], start: float, end: float, read_at: float) -> float:
    """Largest interval between consecutive arrivals across [start, end] (s); a client that
    stopped receiving counts its silence up to `read_at`."""
    before = [t for t in times if t < start]
    inside = [t for t in times if start <= t <= end]
    after = [t for t in times if t > end]
    points = ([before[-1]] if before else [start]) + inside + [after[0] if after else read_at]
    return max((b - a for a, b in zip(points, points[1:], strict=False)), default=end - start)


def gap_summary(
    records: list[dict[str, Any]], start: float, end: float, read_at: float, decoding: bool
) -> dict[str, Any]:
    """Audio gaps of sessions that should not be disturbed: at RTP arrival and after decoding."""
    summary: dict[str, Any] = {"sessions": len(records)}
    summary["decoded"] = {"gap_over_200ms": None, "max_gap_ms": None, "p99_gap_ms": None}
    for level, key in (("rtp", "rtp"), ("decoded", "arrivals")) if decoding else (("rtp", "rtp"),):
        gaps = [max_gap(r[key].get("audio", []), start, end, read_at) * 1000 for r in records]
        summary[level] = {
            "gap_over_200ms": sum(1 for g in gaps if g > GAP_LIMIT * 1000),
            "max_gap_ms": round(max(gaps), 1) if gaps else None,
            "p99_gap_ms": percentiles(gaps)["p99"],
        }
    return summary


def gap_fields(gaps: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A `gap_summary`'s figures as flat report fields, each name led by `prefix`."""
    return {
        f"{prefix}gap_over_200ms": gaps["rtp"]["gap_over_200ms"],
        f"{prefix}max_gap_ms": gaps["rtp"]["max_gap_ms"],
        f"{prefix}p99_gap_ms": gaps["rtp"]["p99_gap_ms"],
        f"{prefix}decoded_gap_over_200ms": gaps["decoded"]["gap_over_200ms"],
        f"{prefix}decoded_max_gap_ms": gaps["decoded"]["max_gap_ms"],
    }


def lag_summary(lags: list[dict[str, Any]]) -> dict[str, Any]:
    values = [lag * 1000 for worker in lags for lag in worker["lag"]]
    stats = percentiles(values)
    return {
        "p99_ms": stats["p99"],
        "max_ms": stats["max"],
        "over_50ms": sum(1 for v in values if v > 50),
    }


def clamped(values: list[float]) -> dict[str, Any]:
    stats = percentiles([max(0.0, v) for v in values])
    stats["min_raw"] = round(min(values), 2) if values else None
    return stats


def raw(values: list[float]) -> dict[str, Any]:
    stats = percentiles(values)
    stats["min_raw"] = round(min(values), 2) if values else None
    return stats


class ServerWatch:
    """Polls the server's /metrics twice a second: its event-loop lag, for context."""

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
        inside = [lag for at, lag in self.lag if start <= at <= end]
        return round(max(inside) * 1000, 1) if inside else None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def kill_seconds(server: ServerProcess) -> tuple[float, float] | None:
    with contextlib.suppress(Exception):
        samples = await server.metrics()
        if "parlor_kill_seconds_count" in samples:
            return samples["parlor_kill_seconds_sum"], samples["parlor_kill_seconds_count"]
    return None


async def run_round(
    server: ServerProcess,
    fleet: Fleet,
    watch: ServerWatch,
    spec: dict[str, Any],
    live: set[int],
    decoding: bool,
    issuer: ServerProcess | None = None,
    node_of: dict[int, str] | None = None,
) -> dict[str, Any]:
    """`issuer`: the node the directives are issued on (`--nodes 2`), else `server` itself;
    `node_of`: call index -> the node its clients joined, when the calls are spread."""
    await asyncio.sleep(PRE)
    enforced_before = await kill_seconds(server)
    answers = await asyncio.gather(
        *(
            (issuer or server).api(
                "POST", "/api/v1/directives",
                {"scope": scope, "action": "suspend", "reason": f"kill-latency bench ({spec['match']})",
                 "legal_basis": "bench", "expires_at": _in(3600)},
            )
            for scope in spec["scopes"]
        )
    )  # fmt: skip
    for status, answer, _, _ in answers:
        if status != 201:
            raise RuntimeError(f"directive refused: {status} {answer}")
    first_sent = min(a[2] for a in answers)
    last_answer = max(a[3] for a in answers)
    by_visit = {}
    for matched, (_, answer, sent, answered) in zip(_directive_calls(spec), answers, strict=True):
        for call in matched:
            by_visit[call.visit] = (answer["id"], sent, answered)
    await asyncio.sleep(SETTLE)
    read_at = time.monotonic()
    records, lags = await fleet.report(since=first_sent - WINDOW - 1.0)
    enforced_after = await kill_seconds(server)
    affected_calls = {c.index for c in spec["calls"]}
    kill, kill_decoded, kill_from_request, close, told = [], [], [], [], []
    per_node: dict[str, dict[str, list[float]]] = {}
    packets_after = frames_after = no_media = still_open = ok = 0
    for r in records:
        if r["call"] not in affected_calls:
            continue
        directive, sent, answered = by_visit[r["visit"]]
        node = per_node.setdefault(
            (node_of or {}).get(r["call"], "A"),
            {"sessions": [], "kill": [], "close": [], "from_request": []},
        )
        node["sessions"].append(1.0)
        if r["rtp_last"]:
            last = max(r["rtp_last"].values())
            kill.append((last - answered) * 1000)
            node["kill"].append((last - answered) * 1000)
            node["from_request"].append((last - sent) * 1000)
            kill_from_request.append((last - sent) * 1000)
        else:
            no_media += 1
        if r["last_at"] and decoding:
            kill_decoded.append((max(r["last_at"].values()) - answered) * 1000)
        packets_after += sum(1 for times in r["rtp"].values() for t in times if t > answered)
        frames_after += sum(1 for times in r["arrivals"].values() for t in times if t > answered)
        if r["closed_at"] is not None:
            close.append((r["closed_at"] - answered) * 1000)
            node["close"].append((r["closed_at"] - answered) * 1000)
        else:
            still_open += 1
        if r["terminated_at"] is not None:
            told.append((r["terminated_at"] - answered) * 1000)
        if r["close_code"] == 4403 and r["terminated_directive"] == directive:
            ok += 1
    unaffected = [r for r in records if r["call"] in live and r["call"] not in affected_calls]
    start, end = first_sent - WINDOW, last_answer + WINDOW
    gaps = gap_summary(unaffected, start, end, read_at, decoding)
    result: dict[str, Any] = {
        "match": spec["match"],
        "scope": spec["scopes"][0] if len(spec["scopes"]) == 1 else spec["scopes"],
        "directives": len(spec["scopes"]),
        "affected_calls": len(affected_calls),
        "affected_sessions": sum(1 for r in records if r["call"] in affected_calls),
        "api_ms": percentiles([(a[3] - a[2]) * 1000 for a in answers]),
        "api_server_timing_ms": _phases(
            [(issuer or server).timings.get(a[2], {}) for a in answers]
        ),
        "kill_latency_ms": clamped(kill),
        "kill_latency_decoded_ms": clamped(kill_decoded) if decoding else None,
        "kill_latency_from_request_ms": raw(kill_from_request),
        "ws_close_ms": raw(close),
        "terminated_message_ms": raw(told),
        "rtp_packets_after_answer": packets_after,
        "decoded_frames_after_answer": frames_after if decoding else None,
        "affected_without_media": no_media,
        "affected_not_closed": still_open,
        "affected_told_and_closed_4403": ok,
        "unaffected_sessions": gaps["sessions"],
        **gap_fields(gaps, "unaffected_"),
        "unaffected_closed": sum(1 for r in unaffected if r["closed"]),
        "client_loop_lag": lag_summary(lags),
        "server_loop_lag_max_ms": watch.max_lag_ms(start, end),
    }
    if node_of is not None:  # the cluster: sessions on A saw the kill cross the bus
        labels = {"A": "A: cross-node (issued on B)", "B": "B: local (issuing node)"}
        result["by_node"] = {
            labels[name]: {
                "sessions": len(values["sessions"]),
                "kill_latency_ms": clamped(values["kill"]),
                "kill_latency_from_request_ms": raw(values["from_request"]),
                "ws_close_ms": raw(values["close"]),
            }
            for name, values in sorted(per_node.items())
        }
    if enforced_before is not None and enforced_after is not None:
        count = enforced_after[1] - enforced_before[1]
        if count:
            result["server_enforce_mean_ms"] = round(
                (enforced_after[0] - enforced_before[0]) / count * 1000, 2
            )
    if len(affected_calls) == 1:
        result["note"] = "1 affected call = 2 sessions: p50/p99 are over 2 samples"
    live -= affected_calls
    return result


def _phases(timings: list[dict[str, float]]) -> dict[str, Any]:
    """The issuing node's own account of its answers (Server-Timing): max per phase."""
    names = sorted({name for timing in timings for name in timing})
    return {name: max(t.get(name, 0.0) for t in timings) for name in names}


def _directive_calls(spec: dict[str, Any]) -> list[list[CallSpec]]:
    """The calls each of the round's directives matches, in the order of `scopes`."""
    if len(spec["scopes"]) == 1:
        return [spec["calls"]]
    return [[c] for c in spec["calls"]]


def spread(calls: list[CallSpec], url: str) -> tuple[list[CallSpec], dict[int, str]]:
    """Put every other call of each facility on node B (its clients join B), the rest on A:
    each round then ends sessions on both nodes, and the first call of each facility (the
    1-call round's) lives on A, across the bus from B where the directives are issued."""
    placed: list[CallSpec] = []
    node_of: dict[int, str] = {}
    seen: dict[str, int] = {}
    for call in calls:
        position = seen[call.facility] = seen.get(call.facility, -1) + 1
        on_b = position % 2 == 1
        node_of[call.index] = "B" if on_b else "A"
        placed.append(dataclasses.replace(call, server=url) if on_b else call)
    return placed, node_of


def _in(seconds: float) -> str:
    from policy.rfc3339 import format_time

    return format_time(time.time() + seconds)


def _cpu(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.cpu_percent(None)


async def quiet_machine(limit_percent: float, wait: float) -> dict[str, Any]:
    """Wait (at most `wait` s) until other processes use less than `limit_percent` of one core:
    this machine may be shared, and 2 busy cores turn every figure here into queueing delay."""
    started = time.monotonic()
    while True:  # nothing of this bench runs now but this idle process
        busy = await asyncio.to_thread(psutil.cpu_percent, 1.0) * (os.cpu_count() or 1)
        if busy < limit_percent or time.monotonic() - started >= wait:
            return {"other_cpu_percent": round(busy, 1), "waited_s": round(time.monotonic() - started, 1),
                    "loadavg_1m": round(os.getloadavg()[0], 2)}  # fmt: skip
        progress(f"other processes use {busy:.0f} % CPU; waiting for a quieter machine")
        await asyncio.sleep(2.0)


async def start_cluster_store() -> tuple[Any, str]:
    """A throwaway PostgreSQL server and a fresh database on it, for `--nodes 2`."""
    from tests.harness.pg import start_postgres

    postgres = await asyncio.to_thread(start_postgres)
    if postgres is None:
        raise RuntimeError(
            "--nodes 2 needs the PostgreSQL server binaries (the postgresql package)"
        )
    return postgres, postgres.url(await postgres.create_database())


async def run_calls(n: int, args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    """One run of `n` calls; fills `run` as it goes, so a run cut short still reports what it saw."""
    work = workdir(f"parlor-kill-{n}-")
    server = ServerProcess(work)
    issuer: ServerProcess | None = None  # --nodes 2: node B, where the directives are issued
    postgres: Any = None
    if args.nodes == 2:
        postgres, url = await start_cluster_store()
        (work / "node-b").mkdir()
        server.env = {"PARLOR_DB": url, "PARLOR_NODE_ID": "A"}
        issuer = ServerProcess(
            work / "node-b", secret=server.secret, env={"PARLOR_DB": url, "PARLOR_NODE_ID": "B"}
        )
    fleet: Fleet | None = None
    watch = ServerWatch(server)
    run.update(
        {
            "calls": n,
            "layout": layout_for(n),
            "client_processes": args.client_procs,
            "nodes": args.nodes,
        }
    )
    if issuer is not None:
        run["cluster"] = {
            "store": "postgresql",
            "calls_on": "A" if args.all_on_a else "A and B, alternately within each facility",
            "directives_issued_on": "B",
        }
    try:
        if args.wait_quiet > 0:
            run["machine_before"] = await quiet_machine(50.0, args.wait_quiet)
        progress(f"{n} calls: starting the server ({work})")
        await server.start()
        if issuer is not None:
            await issuer.start()
        watch.start()
        started = time.monotonic()
        calls = await seed_calls(server, run["layout"])
        node_of: dict[int, str] | None = None
        if issuer is not None and not args.all_on_a:
            calls, node_of = spread(calls, issuer.url)
        run["seed_s"] = round(time.monotonic() - started, 2)
        progress(
            f"{n} calls: seeded in {run['seed_s']} s; starting {args.client_procs} client process(es)"
        )
        fleet = await Fleet.start(server.url, args.client_procs, lifetime=args.max_seconds)
        started = time.monotonic()
        joined = await fleet.join(
            calls,
            size=SIZE,
            fps=FPS,
            preencoded=not args.live_encode,
            audio_ptime=args.audio_ptime,
            decode_frames=None if args.decode else MEDIA_FRAMES,
            concurrency=args.join_concurrency,
            timeout=args.join_seconds + 15,
        )
        failures = [f for j in joined for f in j["failures"]]
        run["join_ms"] = percentiles([ms for j in joined for ms in j.get("join_ms", [])])
        media = await fleet.wait_media(frames=MEDIA_FRAMES, timeout=60)
        run["setup_s"] = round(time.monotonic() - started, 2)
        run["join_failures"] = failures[:10]
        run["clients_with_media"] = f"{media['with_media']}/{media['clients']}"
        progress(
            f"{n} calls: {run['clients_with_media']} clients receive audio+video after {run['setup_s']} s"
        )
        if failures or media["missing"]:
            run["missing_media"] = media["missing"][:10]

        run["client_decodes_during_rounds"] = args.decode
        if not args.decode:  # proven decodable above; from here on only packet arrivals count
            await fleet.decode(False)
        server_process = psutil.Process(server.pid)
        clients = [psutil.Process(pid) for pid in fleet.pids]
        await asyncio.sleep(args.warmup / 2)
        conductor = psutil.Process()
        _cpu([server_process, conductor, *clients])
        psutil.cpu_percent(None)
        quiet_from = time.monotonic()
        await asyncio.sleep(args.warmup / 2)
        quiet_to = time.monotonic()
        run["server_cpu_percent"] = round(server_process.cpu_percent(None), 1)
        run["server_rss_mb"] = round(server_process.memory_info().rss / 2**20, 1)
        run["client_cpu_percent"] = [round(p.cpu_percent(None), 1) for p in clients]
        run["client_rss_mb"] = [round(p.memory_info().rss / 2**20, 1) for p in clients]
        run["conductor_cpu_percent"] = round(conductor.cpu_percent(None), 1)
        run["machine_cpu_percent"] = round(psutil.cpu_percent(None) * (os.cpu_count() or 1), 1)
        run["other_processes_cpu_percent"] = round(
            run["machine_cpu_percent"] - run["server_cpu_percent"] - sum(run["client_cpu_percent"])
            - run["conductor_cpu_percent"], 1,
        )  # fmt: skip
        run["loadavg_1m"] = round(os.getloadavg()[0], 2)
        records, lags = await fleet.report(since=quiet_from - 1.0)
        baseline = gap_summary(records, quiet_from, quiet_to, time.monotonic(), args.decode)
        run["baseline"] = {
            "window_s": round(quiet_to - quiet_from, 2),
            "sessions": baseline["sessions"],
            **gap_fields(baseline),
            "client_loop_lag": lag_summary(lags),
            "server_loop_lag_max_ms": watch.max_lag_ms(quiet_from, quiet_to),
        }
        flowing = sum(
            1 for r in records if r["rtp"].get("audio") and max(r["rtp"]["audio"]) > quiet_to - 0.5
        )
        run["sessions_with_media_flowing"] = f"{flowing}/{2 * n}"
        # The calls are held when every session receives media steadily before any directive;
        # otherwise the kill figures below describe calls that were already broken.
        run["calls_held"] = flowing == 2 * n and baseline["rtp"]["gap_over_200ms"] <= 0.1 * 2 * n
        progress(
            f"{n} calls: steady state server {run['server_cpu_percent']} % CPU, {run['server_rss_mb']} MB; "
            f"clients {run['client_cpu_percent']} % CPU; baseline max audio gap {run['baseline']['max_gap_ms']} ms"
        )

        live = {c.index for c in calls}
        run["directives"] = []
        for spec in rounds_for(calls):
            result = await run_round(server, fleet, watch, spec, live, args.decode, issuer, node_of)
            run["directives"].append(result)
            progress(
                f"{n} calls / {spec['match']}: {result['affected_sessions']} sessions, api p99 {result['api_ms']['p99']} ms, "
                f"kill p99 {result['kill_latency_ms']['p99']} ms (min raw {result['kill_latency_ms']['min_raw']}), "
                f"unaffected gaps > 200 ms: {result['unaffected_gap_over_200ms']}/{result['unaffected_sessions']}"
            )
        now = time.monotonic()
        records, _ = await fleet.report(since=now - 1.0)
        survivors = [r for r in records if r["call"] in live]
        run["never_matched_sessions"] = len(survivors)
        run["never_matched_still_receiving"] = sum(
            1
            for r in survivors
            if not r["closed"] and r["rtp"].get("audio") and max(r["rtp"]["audio"]) > now - 0.5
        )
        await fleet.leave()
    finally:
        await watch.stop()
        if fleet is not None:
            await fleet.stop()
        if issuer is not None:
            run["issuer_exit_code"] = await issuer.stop()
            run["issuer_log_problems"] = issuer.problems()
        code = await server.stop()
        run["server_exit_code"] = code
        run["server_log_problems"] = server.problems()
        if postgres is not None:
            await asyncio.to_thread(postgres.remove)
    return run


def server_version() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it."""
    import subprocess

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv], cwd=HERE.parent, capture_output=True, text=True, timeout=10
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


def machine() -> dict[str, Any]:
    import aioice
    import aiortc
    import av

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


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every run in turn, each within what is left of --max-seconds; a run that fails or runs
    out of time is reported with what it measured and the reason, and no later run starts."""
    runs: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.max_seconds
    for n in args.calls:
        run: dict[str, Any] = {"calls": n}
        runs.append(run)
        try:
            await asyncio.wait_for(run_calls(n, args, run), max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            run["incomplete"] = f"--max-seconds {args.max_seconds:g} ran out during this run"
            progress(f"{n} calls: {run['incomplete']}")
            break
        except Exception as exc:  # reported in the JSON; the bench still prints what it has
            run["incomplete"] = f"{type(exc).__name__}: {exc}"
            progress(f"{n} calls: failed: {run['incomplete']}")
            break
    cluster = args.nodes == 2
    target_calls = CLUSTER_TARGET_CALLS if cluster else TARGET_CALLS
    target_ms = CLUSTER_TARGET_P99_MS if cluster else TARGET_P99_MS
    at_target = next((r for r in runs if r["calls"] == target_calls), None)
    met: bool | None = None
    if at_target is not None:  # calls held, every round done, each p99 within target
        p99s = [_target_p99(d, cluster) for d in at_target.get("directives", [])]
        met = (
            bool(at_target.get("calls_held"))
            and len(p99s) == 4
            and all(p is not None and p <= target_ms for p in p99s)
        )
    return {
        "bench": "kill_latency",
        "machine": machine(),
        "media": {
            "video": f"VP8 {SIZE[0]}x{SIZE[1]}@{FPS}, keyframe every 1 s",
            "audio": "Opus 20 ms (aiortc's encoder)"
            if args.audio_ptime == 20
            else f"Opus {args.audio_ptime} ms frames (libopus frame_duration; fewer packets than a browser's 20 ms)",
            "per_call": "kiosk + 1 family member, both send and receive",
            "clients_send": "live encode per client"
            if args.live_encode
            else "a 3 s loop encoded once per client process (same packets, no encode per client)",
            "clients_receive": "decode throughout"
            if args.decode
            else f"each client decodes until it has {MEDIA_FRAMES} audio and {MEDIA_FRAMES} video frames, "
            "then only notes RTP packet arrivals",
        },
        "definitions": DEFINITIONS,
        "server": server_version(),
        "runs": runs,
        "target": {
            f"p99_kill_latency_ms_at_{target_calls}" + ("_cross_node" if cluster else ""): target_ms
        },
        "met": met,
        **({"met_note": note} if (note := _met_note(at_target, target_calls)) else {}),
    }


def _target_p99(directive: dict[str, Any], cluster: bool) -> float | None:
    """The figure the target is about: cross-node sessions' p99 in the cluster, else all."""
    if not cluster:
        return directive["kill_latency_ms"]["p99"]
    cross = [v for k, v in directive.get("by_node", {}).items() if k.startswith("A")]
    return cross[0]["kill_latency_ms"]["p99"] if cross else directive["kill_latency_ms"]["p99"]


def _met_note(at_target: dict[str, Any] | None, target_calls: int) -> str | None:
    if at_target is None:
        return f"no run at {target_calls} calls"
    if not at_target.get("calls_held"):
        return (
            f"the {target_calls}-call run did not hold its calls before any directive (calls_held is "
            "false): its kill figures describe broken calls, so the target is not met"
        )
    return None


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--calls",
        default="20,50,100",
        help="comma-separated numbers of live calls (default 20,50,100)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="10 calls, short warm-up (under a minute)"
    )
    parser.add_argument(
        "--client-procs", type=int, default=2, help="client worker processes (default 2)"
    )
    parser.add_argument(
        "--join-concurrency", type=int, default=6, help="clients joining at once per worker"
    )
    parser.add_argument(
        "--warmup", type=float, default=6.0, help="seconds of steady state before the directives"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="stop everything after this long"
    )
    parser.add_argument(
        "--live-encode", action="store_true",
        help="every client encodes its own test pattern and tone (default: a pre-encoded loop, same packets)",
    )  # fmt: skip
    parser.add_argument(
        "--decode", action="store_true",
        help="clients keep decoding throughout (default: each stops once it has decoded "
        f"{MEDIA_FRAMES} audio and video frames, then only notes RTP arrivals)",
    )  # fmt: skip
    parser.add_argument(
        "--join-seconds", type=float, default=90.0,
        help="give up joins still pending after this long (the run goes on with the calls that joined)",
    )  # fmt: skip
    parser.add_argument(
        "--wait-quiet", type=float, default=30.0,
        help="before each run, wait up to this many seconds for other processes to use < 50%% of a core",
    )  # fmt: skip
    parser.add_argument(
        "--nodes", type=int, default=1, choices=(1, 2),
        help="1: one node on SQLite; 2: two nodes on PostgreSQL, calls spread over A and B, "
        "directives issued on B",
    )  # fmt: skip
    parser.add_argument(
        "--audio-ptime", type=int, default=20, choices=(20, 40, 60),
        help="ms of audio per Opus packet the clients send (default 20, as browsers do; "
        "60 sends a third of the audio packets, to hold more calls on a small machine)",
    )  # fmt: skip
    parser.add_argument(
        "--all-on-a", action="store_true",
        help="--nodes 2: put every call on node A (all kills cross the bus; A carries all the media)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.nodes == 2:
        from tests.harness.system import postgres_bindir

        if postgres_bindir() is None:
            parser.error(
                "--nodes 2 needs the PostgreSQL server binaries (install the postgresql package)"
            )
    if args.quick:
        args.calls, args.warmup = "10", min(args.warmup, 4.0)
    try:
        args.calls = [int(n) for n in str(args.calls).split(",") if n.strip()]
    except ValueError:
        parser.error("--calls takes numbers, e.g. 20,50,100")
    if not args.calls or min(args.calls) < 10:
        parser.error("--calls: at least 10 calls per run (the rounds need 10 % of them)")
    if args.client_procs < 1:
        parser.error("--client-procs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    result = asyncio.run(bench(args))
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

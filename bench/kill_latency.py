"""Kill latency: how fast a directive stops the media of the live calls it matches (SPEC §4).

The node runs in its own process (`parlor serve`, SQLite, ICE pinned to 127.0.0.1). This
script seeds it through the REST API and puts N live 1:1 calls on it with the load generator
(`signaling.loadgen`): per call a kiosk and a family member, each a real WebSocket speaking
SPEC §5 and a real aiortc peer connection (ICE, DTLS, SDP) that, once connected, sends
pre-packetized VP8 (160x120@10 by default) and Opus through the transport's SRTP session
and counts what arrives from the clear RTP header, noting the arrival instant of every
packet. The participants live in worker processes (`--processes`, by default as many as
the load needs: `signaling.loadgen.processes_for`); this process carries no
media and issues the directives, so the instant it records for an API answer is not late
because of a busy media loop. All processes read the same monotonic clock.

Before any directive the calls must be **held**: every participant received audio and video
in the last second of a quiet window (checked, `calls_held`); the figures of a run whose
calls were not held describe broken calls, and its target is not met.

Calls are spread over three facilities so single directives match the sizes the issue asks:
F-SOUTH ~40 % of calls, F-SMALL 10 %, F-NORTH 50 %. The directive rounds, in order:
  1 call     one `visit:V` directive on an F-SOUTH call                 (2 sessions)
  10%        one `facility:F-SMALL` directive: a small facility, 10 %    (one directive)
  10%-visits one `visit:V` directive per call for another 10 % of calls, issued concurrently
             (an operator cutting several calls at once; each answer is its own instant)
  facility   one `facility:F-NORTH` directive: half of the calls
Every round is `suspend`. What is left of F-SOUTH is never matched: those calls must go on.

Per directive: (a) API answer time, request sent -> answer read, and the node's own
Server-Timing; (b) kill latency per affected session = arrival of the last RTP packet at the
participant minus the API answer instant, clamped at 0 (the raw minimum is reported too:
negative means the last packet came before the answer, which is what the node intends: it
stops forwarding, then answers); (c) every affected session told (`terminated` naming the
directive) and closed 4403; (d) the WebSocket close at the participant minus the answer.
Unaffected sessions: the largest gap between audio packets in [sent - 1 s, answer + 1 s],
and how many exceeded 200 ms, next to the same figure over a quiet window before any
directive (the baseline). CPU (psutil) of the node, of the load workers and of the whole
machine over the quiet window and over each round, with the load average; the load
workers' and the node's event-loop lag: a late loop delays every timestamp taken on it.

`--nodes 2` measures the cluster (SPEC §8): a throwaway PostgreSQL (tests/harness/pg.py)
and two `parlor serve` nodes on it. Every directive is issued on node B. The calls are spread
over both nodes (every other call of each facility joins B; the 1-call round's call is on A),
so each round ends sessions on A, where the kill crossed the bus (NOTIFY carrying the event,
enforcement on A), and on B, the single-node path, in the same run: `by_node` reports them
apart, all measured from B's answer. `--all-on-a` puts every call on A instead.

`--audio-ptime 60` makes the participants send 60 ms Opus packets instead of a browser's
20 ms: a third of the audio packets. The JSON says which.

JSON to stdout, progress to stderr. `--quick`: 10 calls, about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Run as a script: import `bench` and the project's packages from the repository root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import psutil  # noqa: E402

from bench.harness import (  # noqa: E402
    CpuWindow,
    ServerProcess,
    ServerWatch,
    machine,
    percentiles,
    print_result,
    progress,
    quiet_machine,
    record_nothing,
    server_version,
    workdir,
)
from signaling.loadgen import LoadCall, LoadFleet, processes_for, seed_roster  # noqa: E402
from signaling.loadmedia import VideoSpec, load_media  # noqa: E402

TARGET_P99_MS = 50.0  # one node (the policy issue)
MOONSHOT_P99_MS = 20.0
TARGET_CALLS = 100
CLUSTER_TARGET_P99_MS = 100.0  # --nodes 2: cross-node (the cluster issue)
CLUSTER_MOONSHOT_P99_MS = 40.0
CLUSTER_TARGET_CALLS = 50
GAP_LIMIT = 0.200  # s: an unaffected participant's audio gap larger than this is a disturbance
WINDOW = 1.0  # s on each side of a directive for the gap analysis
SETTLE = 2.0  # s after the answer before the participants are read (late packets would show)
PRE = 1.2  # s of undisturbed media before each directive
FRESH = 1.0  # s: a participant receives media when both kinds arrived within this


DEFINITIONS = {
    "api_ms": "request sent -> answer read, in the conductor process (which carries no media)",
    "api_server_timing_ms": "the issuing node's Server-Timing header: commit (validate + store), enforce (its "
    "own matching sessions closed), record (their count written); the largest of the round's answers",
    "kill_latency_ms": "per affected session: arrival of the last RTP packet at the participant (read from "
    "its socket, counted from the clear header) - API answer instant, clamped at 0; min_raw unclamped "
    "(negative = the last packet came before the answer). The spec's 'last forwarded media packet'.",
    "kill_latency_from_request_ms": "last RTP packet - request sent (unclamped)",
    "ws_close_ms": "WebSocket closed at the participant - API answer instant (raw; negative = before the answer)",
    "affected_told_and_closed_4403": "affected sessions that received `terminated` naming the directive and "
    "whose socket closed with 4403",
    "unaffected_gap": f"largest interval between audio RTP packets in [first request sent - {WINDOW} s, "
    f"last answer + {WINDOW} s] per session that no directive matched",
    "baseline": "the same gap figures over a quiet window before any directive",
    "calls_held": f"every participant received audio and video in the last {FRESH:g} s of the quiet "
    "window, before any directive",
    "cpu": "% of one core over the window (psutil CPU seconds): node (each node process), generator (all "
    "load worker processes), conductor (this process), machine (all processes), with the 1-minute load",
    "by_node": "--nodes 2: the same figures for the affected sessions on A (the kill crossed the bus "
    "from B) and on B (the issuing node: the single-node path, measured in the same run)",
    "server_enforce_mean_ms": "node's own parlor_kill_seconds (commit -> last affected session told and "
    "recorded), mean over the round's directives",
}


def layout_for(calls: int) -> dict[str, int]:
    small = max(1, round(calls * 0.10))
    north = calls // 2
    return {"F-SOUTH": calls - small - north, "F-SMALL": small, "F-NORTH": north}


def rounds_for(calls: list[LoadCall]) -> list[dict[str, Any]]:
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
    """Largest interval between consecutive arrivals across [start, end] (s); a participant
    that stopped receiving counts its silence up to `read_at`."""
    before = [t for t in times if t < start]
    inside = [t for t in times if start <= t <= end]
    after = [t for t in times if t > end]
    points = ([before[-1]] if before else [start]) + inside + [after[0] if after else read_at]
    return max((b - a for a, b in zip(points, points[1:], strict=False)), default=end - start)


def gap_summary(
    records: list[dict[str, Any]], start: float, end: float, read_at: float, prefix: str = ""
) -> dict[str, Any]:
    """Audio gaps of sessions that should not be disturbed, as flat report fields."""
    gaps = [max_gap(r["arrivals"]["audio"], start, end, read_at) * 1000 for r in records]
    return {
        f"{prefix}sessions": len(records),
        f"{prefix}gap_over_200ms": sum(1 for g in gaps if g > GAP_LIMIT * 1000),
        f"{prefix}max_gap_ms": round(max(gaps), 1) if gaps else None,
        f"{prefix}p99_gap_ms": percentiles(gaps)["p99"],
    }


def lag_summary(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """The load workers' own event-loop lag (their pacer's lateness) since the report's start."""
    lags = [w["loop_lag_ms"] for w in workers if w["loop_lag_ms"]["n"]]
    return {
        "p99_ms": max((lag["p99"] for lag in lags), default=None),
        "max_ms": max((lag["max"] for lag in lags), default=None),
    }


def clamped(values: list[float]) -> dict[str, Any]:
    stats = percentiles([max(0.0, v) for v in values])
    stats["min_raw"] = round(min(values), 2) if values else None
    return stats


def raw(values: list[float]) -> dict[str, Any]:
    stats = percentiles(values)
    stats["min_raw"] = round(min(values), 2) if values else None
    return stats


async def kill_seconds(server: ServerProcess) -> tuple[float, float] | None:
    with contextlib.suppress(Exception):
        samples = await server.metrics()
        if "parlor_kill_seconds_count" in samples:
            return samples["parlor_kill_seconds_sum"], samples["parlor_kill_seconds_count"]
    return None


def last_packet(record: dict[str, Any]) -> float | None:
    """When the last RTP packet of any kind reached the participant."""
    arrivals = [t for t in record["last"].values() if t]
    return max(arrivals) if arrivals else None


async def run_round(
    server: ServerProcess,
    fleet: LoadFleet,
    watch: ServerWatch,
    cpu: CpuWindow,
    spec: dict[str, Any],
    live: set[int],
    issuer: ServerProcess | None = None,
    node_of: dict[int, str] | None = None,
) -> dict[str, Any]:
    """`issuer`: the node the directives are issued on (`--nodes 2`), else `server` itself;
    `node_of`: call index -> the node its participants joined, when the calls are spread."""
    cpu.start()
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
    records, workers = await fleet.report(since=first_sent - WINDOW - 1.0)
    used = cpu.stop()
    enforced_after = await kill_seconds(server)
    affected_calls = {c.index for c in spec["calls"]}
    kill, kill_from_request, close, told = [], [], [], []
    per_node: dict[str, dict[str, list[float]]] = {}
    packets_after = no_media = still_open = ok = 0
    for r in records:
        if r["call"] not in affected_calls:
            continue
        directive, sent, answered = by_visit[r["visit"]]
        node = per_node.setdefault(
            (node_of or {}).get(r["call"], "A"),
            {"sessions": [], "kill": [], "close": [], "from_request": []},
        )
        node["sessions"].append(1.0)
        last = last_packet(r)
        if last is not None:
            kill.append((last - answered) * 1000)
            node["kill"].append((last - answered) * 1000)
            node["from_request"].append((last - sent) * 1000)
            kill_from_request.append((last - sent) * 1000)
        else:
            no_media += 1
        packets_after += sum(1 for times in r["arrivals"].values() for t in times if t > answered)
        closed_at = r["times"].get("closed")
        if closed_at is not None:
            close.append((closed_at - answered) * 1000)
            node["close"].append((closed_at - answered) * 1000)
        else:
            still_open += 1
        if r["times"].get("terminated") is not None:
            told.append((r["times"]["terminated"] - answered) * 1000)
        if r["close_code"] == 4403 and r["terminated_directive"] == directive:
            ok += 1
    unaffected = [r for r in records if r["call"] in live and r["call"] not in affected_calls]
    start, end = first_sent - WINDOW, last_answer + WINDOW
    affected_sessions = sum(1 for r in records if r["call"] in affected_calls)
    result: dict[str, Any] = {
        "match": spec["match"],
        "scope": spec["scopes"][0] if len(spec["scopes"]) == 1 else spec["scopes"],
        "directives": len(spec["scopes"]),
        "affected_calls": len(affected_calls),
        "affected_sessions": affected_sessions,
        "api_ms": percentiles([(a[3] - a[2]) * 1000 for a in answers]),
        "api_server_timing_ms": _phases(
            [(issuer or server).timings.get(a[2], {}) for a in answers]
        ),
        "kill_latency_ms": clamped(kill),
        "kill_latency_from_request_ms": raw(kill_from_request),
        "ws_close_ms": raw(close),
        "terminated_message_ms": raw(told),
        "rtp_packets_after_answer": packets_after,
        "affected_without_media": no_media,
        "affected_not_closed": still_open,
        "affected_told_and_closed_4403": ok,
        "every_affected_told_and_closed_4403": ok == affected_sessions == 2 * len(affected_calls),
        **gap_summary(unaffected, start, end, read_at, "unaffected_"),
        "unaffected_closed": sum(1 for r in unaffected if r["closed"]),
        "cpu": used,
        "generator_loop_lag": lag_summary(workers),
        "node_loop_lag_max_ms": watch.max_lag_ms(start, end),
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


def _directive_calls(spec: dict[str, Any]) -> list[list[LoadCall]]:
    """The calls each of the round's directives matches, in the order of `scopes`."""
    if len(spec["scopes"]) == 1:
        return [spec["calls"]]
    return [[c] for c in spec["calls"]]


def spread(calls: list[LoadCall], url: str) -> tuple[list[LoadCall], dict[int, str]]:
    """Put every other call of each facility on node B (its participants join B), the rest on
    A: each round then ends sessions on both nodes, and the first call of each facility (the
    1-call round's) lives on A, across the bus from B where the directives are issued."""
    placed: list[LoadCall] = []
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


def held(records: list[dict[str, Any]], at: float, participants: int) -> tuple[bool, int]:
    """(every one of `participants` received audio and video within FRESH s of `at`, how many
    did)."""
    receiving = sum(
        1
        for r in records
        if all(
            r["last"][kind] is not None and r["last"][kind] >= at - FRESH
            for kind in ("audio", "video")
        )
    )
    return receiving == participants and len(records) == participants, receiving


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
    media = load_media(args.video, args.audio_ptime, cache=Path(tempfile.gettempdir()))
    media.save(work / "media.json")
    processes = processes_for(2 * n, media, args.processes)
    fleet: LoadFleet | None = None
    watch = ServerWatch(server)
    run.update(
        {
            "calls": n,
            "participants": 2 * n,
            "layout": layout_for(n),
            "load_processes": processes,
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
        progress(f"{n} calls: starting the node(s) ({work})")
        await server.start()
        if issuer is not None:
            await issuer.start()
        watch.start()
        started = time.monotonic()
        calls = await seed_roster(server.url, server.operator_token, run["layout"])
        if not args.recording:
            await record_nothing(server, run["layout"])
        node_of: dict[int, str] | None = None
        if issuer is not None and not args.all_on_a:
            calls, node_of = spread(calls, issuer.url)
        run["seed_s"] = round(time.monotonic() - started, 2)
        fleet = await LoadFleet.start(
            server.url, processes, work / "media.json",
            lifetime=args.max_seconds, ice_addresses=["127.0.0.1"],
        )  # fmt: skip
        nodes = [psutil.Process(server.pid)] + ([psutil.Process(issuer.pid)] if issuer else [])
        cpu = CpuWindow(
            {
                "node": nodes,
                "generator": [psutil.Process(pid) for pid in fleet.pids],
                "conductor": [psutil.Process()],
            }
        )
        started = time.monotonic()
        cpu.start()
        joined = await fleet.join(
            calls, concurrency=args.join_concurrency, timeout=args.join_seconds
        )
        run["cpu_while_joining"] = cpu.stop()
        run["join_s"] = round(time.monotonic() - started, 2)
        run["joined"] = f"{joined['connected']}/{joined['participants']}"
        run["join_to_connected_ms"] = percentiles(
            [(j["connected"] - j["join"]) * 1000 for j in joined["joins"] if "connected" in j]
        )
        run["join_failures"] = joined["failures"][:10]
        run["join_refusals"] = joined["refusals"]
        waited = await fleet.wait_media(timeout=60, fresh=FRESH)
        run["setup_s"] = round(time.monotonic() - started, 2)
        run["receiving_after_join"] = f"{waited['receiving']}/{waited['participants']}"
        if waited["missing"]:
            run["missing_media"] = waited["missing"][:10]
        progress(f"{n} calls: {run['joined']} joined, {run['receiving_after_join']} receiving "
                 f"audio+video after {run['setup_s']} s")  # fmt: skip

        await asyncio.sleep(args.warmup / 2)
        cpu.start()
        quiet_from = time.monotonic()
        await asyncio.sleep(args.warmup / 2)
        quiet_to = time.monotonic()
        records, workers = await fleet.report(since=quiet_from - 1.0)
        run["cpu_steady"] = cpu.stop()
        run["node_rss_mb"] = [round(p.memory_info().rss / 2**20, 1) for p in nodes]
        run["generator_rss_mb"] = [w["max_rss_mb"] for w in workers]
        live_participants = joined["connected"]
        run["generator_percent_per_participant"] = round(
            run["cpu_steady"]["generator_percent"] / max(1, live_participants), 3
        )
        run["node_percent_per_call"] = round(run["cpu_steady"]["node_percent"] / n, 3)
        run["baseline"] = {
            "window_s": round(quiet_to - quiet_from, 2),
            **gap_summary(records, quiet_from, quiet_to, time.monotonic()),
            "generator_loop_lag": lag_summary(workers),
            "node_loop_lag_max_ms": watch.max_lag_ms(quiet_from, quiet_to),
        }
        # The calls are held when every participant receives audio and video before any
        # directive; otherwise the kill figures below describe calls that were already broken.
        run["calls_held"], receiving = held(records, quiet_to, 2 * n)
        run["participants_receiving_audio_and_video"] = f"{receiving}/{2 * n}"
        steady = run["cpu_steady"]
        progress(
            f"{n} calls: held {run['calls_held']} ({receiving}/{2 * n}); node {steady['node_percent']} % "
            f"of a core, generator {steady['generator_percent']} % ({run['generator_percent_per_participant']} "
            f"% per participant), machine {steady['machine_percent']} %, load {steady['loadavg_1m']}; "
            f"baseline max audio gap {run['baseline']['max_gap_ms']} ms"
        )

        live = {c.index for c in calls}
        run["directives"] = []
        for spec in rounds_for(calls):
            result = await run_round(server, fleet, watch, cpu, spec, live, issuer, node_of)
            run["directives"].append(result)
            progress(
                f"{n} calls / {spec['match']}: {result['affected_sessions']} sessions, api p99 "
                f"{result['api_ms']['p99']} ms, kill p99 {result['kill_latency_ms']['p99']} ms "
                f"(min raw {result['kill_latency_ms']['min_raw']}), told+4403 "
                f"{result['affected_told_and_closed_4403']}/{result['affected_sessions']}, unaffected "
                f"gaps > 200 ms: {result['unaffected_gap_over_200ms']}/{result['unaffected_sessions']}"
            )
        now = time.monotonic()
        records, _ = await fleet.report(since=now - 1.0)
        survivors = [r for r in records if r["call"] in live]
        run["never_matched_sessions"] = len(survivors)
        run["never_matched_still_receiving"] = sum(
            1
            for r in survivors
            if not r["closed"] and r["last"]["audio"] and r["last"]["audio"] > now - 0.5
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
    moonshot_ms = CLUSTER_MOONSHOT_P99_MS if cluster else MOONSHOT_P99_MS
    at_target = next((r for r in runs if r["calls"] == target_calls), None)
    met: bool | None = None
    moonshot: bool | None = None
    if at_target is not None:  # calls held, every round done and clean, each p99 within target
        directives = at_target.get("directives", [])
        p99s = [_target_p99(d, cluster) for d in directives]
        clean = len(p99s) == 4 and all(
            d["every_affected_told_and_closed_4403"] and d["unaffected_gap_over_200ms"] == 0
            for d in directives
        )
        met = (
            bool(at_target.get("calls_held"))
            and clean
            and all(p is not None and p <= target_ms for p in p99s)
        )
        moonshot = met and all(p is not None and p <= moonshot_ms for p in p99s)
    return {
        "bench": "kill_latency",
        "machine": machine(),
        "media": {
            **load_media(
                args.video, args.audio_ptime, cache=Path(tempfile.gettempdir())
            ).describe(),
            "per_call": "kiosk + 1 family member, both send and receive",
            "participants": "signaling.loadgen: real WebSocket + aiortc peer connection each; "
            "pre-packetized media, arrivals counted from the RTP header (nothing decoded)",
        },
        "definitions": DEFINITIONS,
        "recorded": args.recording,
        "server": server_version(),
        "runs": runs,
        "target": {
            f"p99_kill_latency_ms_at_{target_calls}"
            + ("_cross_node" if cluster else ""): target_ms,
            "moonshot_ms": moonshot_ms,
        },
        "met": met,
        "moonshot_met": moonshot,
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
        "--quick", action="store_true", help="10 calls, short warm-up (about a minute)"
    )
    parser.add_argument(
        "--processes", type=int, default=0,
        help="load worker processes (default 0: as many as signaling.loadgen.processes_for says)",
    )  # fmt: skip
    parser.add_argument(
        "--join-concurrency", type=int, default=8, help="joins in flight per worker"
    )
    parser.add_argument(
        "--warmup", type=float, default=6.0, help="seconds of steady state before the directives"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="stop everything after this long"
    )
    parser.add_argument(
        "--join-seconds",
        type=float,
        default=60.0,
        help="give up a join still pending after this long",
    )
    parser.add_argument(
        "--wait-quiet", type=float, default=30.0,
        help="before each run, wait up to this many seconds for other processes to use < 50%% of a core",
    )  # fmt: skip
    parser.add_argument(
        "--nodes", type=int, default=1, choices=(1, 2),
        help="1: one node on SQLite; 2: two nodes on PostgreSQL, calls spread over A and B, "
        "directives issued on B",
    )  # fmt: skip
    parser.add_argument("--video", default="160x120@10", help="VP8 WxH@FPS the participants send")
    parser.add_argument(
        "--audio-ptime", type=int, default=20, choices=(20, 40, 60),
        help="ms of audio per Opus packet (default 20, as browsers do; 60 sends a third of the packets)",
    )  # fmt: skip
    parser.add_argument(
        "--all-on-a", action="store_true",
        help="--nodes 2: put every call on node A (all kills cross the bus; A carries all the media)",
    )  # fmt: skip
    parser.add_argument("--recording", choices=("on", "off"), default="on",
                        help="whether the calls' social visits are recorded (default on, the "
                             "product's default)")  # fmt: skip
    args = parser.parse_args(argv)
    args.recording = args.recording == "on"
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
        args.video = VideoSpec.parse(args.video)
    except ValueError as exc:
        parser.error(f"--calls takes numbers, e.g. 20,50,100; --video WxH@FPS ({exc})")
    if not args.calls or min(args.calls) < 10 or max(args.calls) > 500:
        parser.error("--calls: 10..500 calls per run (the rounds need 10 % of them)")
    if not 0 <= args.processes <= 16:
        parser.error("--processes must be 0..16")
    return args


def main(argv: list[str] | None = None) -> int:
    return print_result(bench(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())

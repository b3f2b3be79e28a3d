"""Calls per core: what one node's process spends on N live 1:1 calls, from the load generator.

For each video size and each N, a fresh node (`parlor serve`, SQLite, ICE pinned to 127.0.0.1,
in its own process) holds N calls of the load generator (`signaling.loadgen`: per call a kiosk
and a family member, each a real WebSocket and a real aiortc peer connection, sending
pre-packetized VP8 + Opus and counting what arrives from the RTP header, in `--processes`
worker processes). Once every participant receives audio and video, and after a warm-up,
the CPU seconds of the node process, of every load worker and of the whole machine are read
(psutil) over a window of `--seconds`; a call is *held* when both its participants received
audio and video in the window's last second, and the largest audio gap of every participant
over the window is reported (a gap > 200 ms is a disturbance).

Per run: the node's % of one core, per call (its CPU over N), and the calls one core holds at
that cost (`calls_per_core` = N / the node's share of a core, measured, valid while the node
held every call with its CPU below one core); the load generator's % of a core per simulated
participant (its target is ≤ 0.4 %), the machine's load average before and after, and the
node's event-loop lag (its /metrics) during the window.

JSON on stdout, progress on stderr. `--quick`: 10 calls at 160x120@10, short windows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from bench.harness import (  # noqa: E402
    CpuWindow,
    ServerProcess,
    ServerWatch,
    machine,
    print_result,
    progress,
    quiet_machine,
    server_version,
    workdir,
)
from signaling.loadgen import (  # noqa: E402
    LoadFleet,
    layout_of,
    percentiles,
    processes_for,
    seed_roster,
    summarize,
)
from signaling.loadmedia import VideoSpec, load_media  # noqa: E402

GAP_LIMIT_MS = 200


async def one_run(args: argparse.Namespace, video: VideoSpec, calls: int) -> dict[str, Any]:
    run: dict[str, Any] = {"video": str(video), "calls": calls, "participants": 2 * calls}
    if args.wait_quiet > 0:
        run["machine_before"] = await quiet_machine(50.0, args.wait_quiet)
    media = load_media(video, args.audio_ptime, cache=Path(tempfile.gettempdir()))
    work = workdir(f"parlor-capacity-{calls}-")
    media_path = work / "media.json"
    media.save(media_path)
    processes = processes_for(2 * calls, media, args.processes)
    run["load_processes"] = processes
    server = ServerProcess(work)
    watch = ServerWatch(server)
    fleet: LoadFleet | None = None
    try:
        await server.start()
        watch.start()
        layout = layout_of(calls, "")
        roster = await seed_roster(server.url, server.operator_token, layout)
        fleet = await LoadFleet.start(
            server.url, processes, media_path,
            lifetime=args.seconds + args.warmup + 300, ice_addresses=["127.0.0.1"],
        )  # fmt: skip
        started = time.monotonic()
        joined = await fleet.join(roster, concurrency=args.join_concurrency, timeout=60)
        run["join_s"] = round(time.monotonic() - started, 2)
        run["joined"] = f"{joined['connected']}/{joined['participants']}"
        run["join_failures"] = joined["failures"][:5]
        waited = await fleet.wait_media(timeout=30)
        run["receiving_after_join"] = f"{waited['receiving']}/{waited['participants']}"
        progress(f"{video} x {calls}: {run['joined']} joined in {run['join_s']} s, "
                 f"{run['receiving_after_join']} receiving")  # fmt: skip
        await asyncio.sleep(args.warmup)
        window = CpuWindow(
            {
                "node": [psutil.Process(server.pid)],
                "generator": [psutil.Process(pid) for pid in fleet.pids],
                "conductor": [psutil.Process()],
            }
        )
        run["loadavg_before_window"] = round(os.getloadavg()[0], 2)
        hold_from = time.monotonic()
        window.start()
        await asyncio.sleep(args.seconds)
        cpu = window.stop()
        hold_to = time.monotonic()
        run["loadavg_after_window"] = round(os.getloadavg()[0], 2)
        records, workers = await fleet.report(since=hold_from)
        held = summarize(records, hold_from, hold_to)
        calls_held = sum(
            1
            for index in {r["call"] for r in records}
            if all(
                r["last"]["audio"] and r["last"]["video"]
                and r["last"]["audio"] >= hold_to - 1 and r["last"]["video"] >= hold_to - 1
                for r in records if r["call"] == index
            )
        )  # fmt: skip
        node = cpu["node_percent"]
        generator = cpu["generator_percent"]
        live = max(1, joined["connected"])
        run.update(
            {
                "calls_held": calls_held,
                "all_held": calls_held == calls and joined["connected"] == 2 * calls,
                "clean": calls_held == calls
                and joined["connected"] == 2 * calls
                and held["audio_gaps_over_200ms"] == 0
                and not cpu["disturbed"],
                "cpu": cpu,
                "node_percent_of_a_core": node,
                "node_percent_per_call": round(node / calls, 3),
                "calls_per_core": round(calls / (node / 100), 1) if node > 0 else None,
                "node_rss_mb": round(psutil.Process(server.pid).memory_info().rss / 2**20, 1),
                "node_loop_lag_ms": percentiles(watch.lags_ms(hold_from, hold_to)),
                "node_mean_lag_max_ms": watch.mean_lag_max_ms(hold_from, hold_to),
                "generator_percent_per_participant": round(generator / live, 3),
                "generator_loop_lag_ms": {w["name"]: w["loop_lag_ms"] for w in workers},
                "received": held,
                "node_log_problems": None,
            }
        )
        progress(
            f"{video} x {calls}: node {node} % of a core ({run['node_percent_per_call']} % per call), "
            f"generator {run['generator_percent_per_participant']} % per participant, "
            f"held {calls_held}/{calls}, audio gaps > 200 ms {held['audio_gaps_over_200ms']}"
        )
        await fleet.leave()
    finally:
        await watch.stop()
        if fleet is not None:
            await fleet.stop()
        run["node_exit_code"] = await server.stop()
        run["node_log_problems"] = server.problems()
    return run


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.max_seconds
    for video in args.video:
        for calls in args.calls:
            remaining = deadline - time.monotonic()
            if remaining < 10:
                runs.append(
                    {"video": str(video), "calls": calls, "skipped": "--max-seconds ran out"}
                )
                continue
            try:
                runs.append(await asyncio.wait_for(one_run(args, video, calls), remaining))
            except Exception as exc:  # reported; the next run still starts
                runs.append(
                    {
                        "video": str(video),
                        "calls": calls,
                        "incomplete": f"{type(exc).__name__}: {exc}",
                    }
                )
                progress(f"{video} x {calls}: failed: {exc!r}")
    cache = Path(tempfile.gettempdir())
    return {
        "bench": "capacity",
        "machine": machine(),
        "server": server_version(),
        "media": {
            str(v): load_media(v, args.audio_ptime, cache=cache).describe() for v in args.video
        },
        "load_generator": "signaling.loadgen (worker processes per run: load_processes)",
        "window_s": args.seconds,
        "warmup_s": args.warmup,
        "runs": runs,
        "calls_per_core": {str(video): per_core(runs, str(video)) for video in args.video},
        "calls_per_core_rule": "N / (the node's share of one core) at the largest N whose calls were "
        "all held with no audio gap over 200 ms in the measured window, other processes below "
        "25 % of a core meanwhile ('clean')",
    }


def per_core(runs: list[dict[str, Any]], video: str) -> dict[str, Any] | None:
    """The calls one core holds at `video`, from its largest clean run."""
    clean = [
        r for r in runs if r.get("video") == video and r.get("clean") and r.get("calls_per_core")
    ]
    if not clean:
        return None
    largest = max(clean, key=lambda r: r["calls"])
    return {"calls_per_core": largest["calls_per_core"], "from_run_of": largest["calls"],
            "node_percent_of_a_core": largest["node_percent_of_a_core"]}  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", default="160x120@10,640x480@30", help="comma-separated WxH@FPS")
    parser.add_argument("--calls", default="20,50,100", help="comma-separated numbers of calls")
    parser.add_argument("--audio-ptime", type=int, default=20, choices=(20, 40, 60))
    parser.add_argument("--processes", type=int, default=0,
                        help="load worker processes (default 0: as many as signaling.loadgen.processes_for says)")  # fmt: skip
    parser.add_argument("--join-concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--wait-quiet", type=float, default=30.0,
                        help="before each run, wait up to this long for other processes to use < 50%% of a core")  # fmt: skip
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.video, args.calls, args.seconds, args.warmup = "160x120@10", "10", 5.0, 2.0
    try:
        args.video = [VideoSpec.parse(v) for v in str(args.video).split(",") if v.strip()]
        args.calls = [int(n) for n in str(args.calls).split(",") if n.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    if not args.calls or min(args.calls) < 1 or max(args.calls) > 500:
        parser.error("--calls: 1..500 each")
    return args


def main(argv: list[str] | None = None) -> int:
    return print_result(bench(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())

"""Join storm: how many participants a node admits per second, from `join` to `connected`.

A fresh node (`parlor serve`, SQLite, ICE pinned to 127.0.0.1, admission control as
configured by default unless `--overload-lag` says otherwise) and `--participants` simulated
participants of the load generator (`signaling.loadgen`, half of them kiosks, half family
members of `--participants / 2` visits) in `--processes` worker processes. Every participant
is started at once, kiosk and family member of a visit at the same time, and by default every
join is in flight at once: "arriving as fast as the node takes them" means the node's queue
is never empty, and a generator that waits for joins to finish before starting others leaves
the node idle while its own (CPU-starved) workers catch up. `--concurrency N` caps the joins
in flight per worker instead (32 until 2026-12-02: 6.4–11.7 ms of node CPU per admission,
against 5.3–5.8 ms with all at once, in runs on the same day). A join is the whole admission: the WebSocket, `join` (token, policy, the
session's store record), `joined`, the offer and its answer, ICE and DTLS up to the peer
connection `connected` at the participant.

The load's Opus packets are 60 ms by default (`--audio-ptime`; issue #14 allows 40–60 ms for
the load, and the JSON's `media` says which): with 20 ms packets the media of the calls already
connected takes a third of the node's core before the storm ends, and the figure measures
forwarding more than admission. The storm's visits are recorded, as social visits are by
default (`--recording off` sets its facilities to `recording: false`, as a supervisor would).

Figures: admissions per second (participants connected / (last connected - first join
sent)), the time of each step from `join` (p50/p99/max), every refusal by close code and error
code (a refusal other than by admission control, 4503 `overloaded`, is a failure; a refused
join is tried again after 0.2 s until its timeout, and counted each time), and the CPU of the
node and of the load workers over the storm. Then every participant must receive audio and
video (a call admitted but broken is not an admission).

JSON on stdout, progress on stderr. `--quick`: 40 participants.
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
    record_nothing,
    recordings_finished,
    server_version,
    workdir,
)
from signaling.loadgen import RETRYABLE, LoadFleet, layout_of, percentiles, seed_roster  # noqa: E402
from signaling.loadmedia import VideoSpec, load_media  # noqa: E402

TARGET_PER_SECOND = 150.0
ADMISSION_CONTROL = {"4503 overloaded"}
STEPS = ("joined", "offer", "answer", "connected")
QUIET_PERCENT = 15.0
"""Other processes below this % of one core before the storm starts (waited for at most
`--wait-quiet` s): the storm itself fills both cores."""


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": "join_storm",
        "machine": machine(),
        "server": server_version(),
        "participants": args.participants,
        "processes": args.processes,
        "concurrency_per_process": args.concurrency or "all",
        "target_admissions_per_second": TARGET_PER_SECOND,
        "recorded": args.recording,
    }
    if args.wait_quiet > 0:
        result["machine_before"] = await quiet_machine(QUIET_PERCENT, args.wait_quiet)
    media = load_media(
        VideoSpec.parse(args.video), args.audio_ptime, cache=Path(tempfile.gettempdir())
    )
    result["media"] = media.describe()
    work = workdir("parlor-join-storm-")
    media.save(work / "media.json")
    # The bench harness lifts admission control for the other benches; a storm meets it.
    lag = args.overload_lag if args.overload_lag is not None else node_default_lag()
    server = ServerProcess(work, env={"PARLOR_OVERLOAD_LAG_SECONDS": str(lag)})
    result["admission_control"] = {"PARLOR_OVERLOAD_LAG_SECONDS": lag,
                                   "default": args.overload_lag is None}  # fmt: skip
    watch = ServerWatch(server)
    fleet: LoadFleet | None = None
    try:
        await server.start()
        watch.start()
        calls = args.participants // 2
        layout = layout_of(calls, "")
        roster = await seed_roster(server.url, server.operator_token, layout)
        if not args.recording:
            await record_nothing(server, layout)
        fleet = await LoadFleet.start(
            server.url, args.processes, work / "media.json", lifetime=600,
            ice_addresses=["127.0.0.1"],
        )  # fmt: skip
        window = CpuWindow(
            {"node": [psutil.Process(server.pid)],
             "generator": [psutil.Process(pid) for pid in fleet.pids]}
        )  # fmt: skip
        result["loadavg_before"] = round(os.getloadavg()[0], 2)
        progress(f"{args.participants} participants joining at once")
        window.start()
        joined = await fleet.join(
            roster, concurrency=args.concurrency, timeout=args.join_timeout,
            retry=RETRYABLE, together=True,
        )  # fmt: skip
        result["cpu_during_storm"] = window.stop()
        storm_end = time.monotonic()
        result["loadavg_after"] = round(os.getloadavg()[0], 2)
        joins = joined["joins"]
        connected = [j for j in joins if "connected" in j]
        started = min(j["join"] for j in joins if "join" in j)
        finished = max((j["connected"] for j in connected), default=started)
        rate = len(connected) / max(1e-9, finished - started)
        result.update(
            {
                "connected": f"{len(connected)}/{len(joins)}",
                "storm_s": round(finished - started, 3),
                "admissions_per_second": round(rate, 1),
                "met": rate >= TARGET_PER_SECOND
                and len(connected) == args.participants
                and not (set(joined["refusals"]) - ADMISSION_CONTROL),
                "from_join_ms": {
                    step: percentiles([(j[step] - j["join"]) * 1000 for j in joins if step in j])
                    for step in STEPS
                },
                "refusals": joined["refusals"],
                "refusals_other_than_admission_control": {
                    code: n
                    for code, n in joined["refusals"].items()
                    if code not in ADMISSION_CONTROL
                },
                "joins_retried": sum(1 for j in joins if j.get("refused")),
                "node_loop_lag_ms": percentiles(watch.lags_ms(started, storm_end)),
                "node_mean_lag_max_ms": watch.mean_lag_max_ms(started, storm_end),
                "failures": joined["failures"][:10],
            }
        )
        progress(
            f"{result['connected']} connected in {result['storm_s']} s: {result['admissions_per_second']}/s, "
            f"join->connected p99 {result['from_join_ms']['connected']['p99']} ms, refusals {joined['refusals']}"
        )
        waited = await fleet.wait_media(timeout=30)
        result["receiving_audio_and_video_after"] = (
            f"{waited['receiving']}/{waited['participants']}"
        )
        if waited["missing"]:
            result["missing_media"] = waited["missing"][:5]
        await fleet.leave()
        if args.recording:  # the node remuxes each call's recording: before the next run
            left = time.monotonic()
            done = [r for f, n in layout.items() for r in await recordings_finished(server, f, n)]
            result["recordings"] = {
                "finalized": sum(1 for r in done if r["status"] == "finalized"),
                "failed": sum(1 for r in done if r["status"] == "failed"),
                "all_finished_s_after_leaving": round(time.monotonic() - left, 1),
            }
    finally:
        await watch.stop()
        if fleet is not None:
            await fleet.stop()
        result["node_exit_code"] = await server.stop()
        result["node_log_problems"] = server.problems()
    return result


def node_default_lag() -> float:
    """The node's own default for PARLOR_OVERLOAD_LAG_SECONDS."""
    from signaling.config import Config

    field = Config.__dataclass_fields__.get("overload_lag_seconds")
    return float(field.default) if field is not None else 3600.0  # type: ignore[arg-type]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=200, help="even, 2..400 (default 200)")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="joins in flight per process (default: all of its participants)")  # fmt: skip
    parser.add_argument("--join-timeout", type=float, default=60.0)
    parser.add_argument("--overload-lag", type=float, default=None,
                        help="PARLOR_OVERLOAD_LAG_SECONDS for the node (default: the node's own)")  # fmt: skip
    parser.add_argument("--video", default="160x120@10")
    parser.add_argument(
        "--audio-ptime",
        type=int,
        default=60,
        choices=(20, 40, 60),
        help="Opus packet time of the load, ms (default 60, as issue #14 allows)",
    )
    parser.add_argument("--recording", choices=("on", "off"), default="on",
                        help="whether the storm's social visits are recorded (default on, "
                             "the product's default)")  # fmt: skip
    parser.add_argument("--wait-quiet", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.recording = args.recording == "on"
    if args.quick:
        args.participants = 40
    if args.participants % 2 or not 2 <= args.participants <= 400:
        parser.error("--participants must be even, 2..400")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return print_result(asyncio.wait_for(storm(parse(argv)), 900))


if __name__ == "__main__":
    sys.exit(main())

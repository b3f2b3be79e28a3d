"""What recording costs a node (issue #17): the node's CPU per stream with every call
recorded against the same calls not recorded, in one run, and the time from a call's end to
its playable file.

One `parlor serve` (bench/harness.py `ServerProcess`), facilities seeded through the API
(`signaling.loadgen.seed_roster`): `FR<n>` record (the default), `FN<n>` do not
(`recording: false`, set by a supervisor). Rounds alternate: N calls of `FN<n>`, then N calls
of `FR<n>` (fresh visits each round), the same load participants each round
(`signaling.loadgen.LoadFleet`: pre-encoded VP8 + Opus, nothing decoded), a warm-up, then the
node's CPU over a window (`CpuWindow`: psutil, the recorders' writer threads included; the
window says whether other processes disturbed it). A call is 2 streams (publisher -> relay ->
subscriber, both ways).

Then the recorded calls end, and each recording's `finalized_at - ended_at` (the node's
clock) is the time to its playable file: a child process remuxes it (the call file and one
rendition per side). The remux children's CPU is reported apart (off the calls' path).

Prints one JSON document; progress on stderr. `--quick`: shorter windows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from bench.harness import (  # noqa: E402
    CpuWindow,
    ServerProcess,
    machine,
    progress,
    quiet_machine,
    recordings_finished,
    server_version,
    supervisor_api,
    workdir,
)
from signaling.loadgen import LoadCall, LoadFleet, processes_for, seed_roster  # noqa: E402
from signaling.loadmedia import VideoSpec, load_media  # noqa: E402

TARGET_EXTRA = 0.10  # issue #17: at most 10 % more server CPU with recording on


def children_cpu(process: psutil.Process) -> float:
    """CPU seconds of the node's waited-for children: the remuxes."""
    times = process.cpu_times()
    return float(times.children_user + times.children_system)


async def measure(
    fleet: LoadFleet, node: psutil.Process, calls: list[LoadCall], warmup: float, window: float
) -> dict[str, Any]:
    """Join `calls`, wait for media, warm up, and measure the node (and the load generator,
    so that what other processes took is told apart) over `window`."""
    joined = await fleet.join(calls, concurrency=4, timeout=60)
    media = await fleet.wait_media(60)
    await asyncio.sleep(warmup)
    cpu = CpuWindow({"node": [node], "generator": [psutil.Process(pid) for pid in fleet.pids]})
    cpu.start()
    await asyncio.sleep(window)
    figures = cpu.stop()
    return {
        "calls": len(calls),
        "streams": 2 * len(calls),
        "connected": joined["connected"],
        "receiving": media["receiving"],
        "node_cpu_percent": figures["node_percent"],
        "window": figures,
        "rss_mb": round(node.memory_info().rss / 2**20, 1),
    }


def epoch(text: str) -> float:
    from policy.rfc3339 import parse_time

    return parse_time(text, "time")


async def run(arguments: argparse.Namespace) -> dict[str, Any]:
    calls, rounds, video = arguments.calls, arguments.rounds, VideoSpec.parse(arguments.video)
    warmup, window = (5.0, 8.0) if arguments.quick else (15.0, 20.0)
    work = workdir("parlor-bench-recording-")
    media = load_media(video, 20, cache=Path(tempfile.gettempdir()))
    media.save(work / "media.json")
    server = ServerProcess(work, env={"PARLOR_LOG_LEVEL": "WARNING"})
    fleet = None
    result: dict[str, Any] = {"bench": "recording_calls", "machine": machine(),
                              "version": server_version()}  # fmt: skip
    try:
        if arguments.wait_quiet > 0:
            result["machine_before"] = await quiet_machine(50.0, arguments.wait_quiet)
        await server.start()
        layout = {f"{mode}{r}": calls for r in range(rounds) for mode in ("FN", "FR")}
        roster = await seed_roster(server.url, server.operator_token, layout)
        for r in range(rounds):
            await supervisor_api(server, "PATCH", f"/api/v1/facilities/FN{r}", {"recording": False})
        fleet = await LoadFleet.start(
            server.url, processes_for(2 * calls, media), work / "media.json",
            lifetime=1800, ice_addresses=["127.0.0.1"],
        )  # fmt: skip
        node = psutil.Process(server.pid)
        rows: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        ends: list[dict[str, Any]] = []
        for r in range(rounds):
            for mode, facility in (("off", f"FN{r}"), ("on", f"FR{r}")):
                progress(f"round {r + 1}/{rounds}: {calls} calls, recording {mode}")
                share = [c for c in roster if c.facility == facility]
                row = await measure(fleet, node, share, warmup, window)
                before = children_cpu(node)
                await fleet.leave()
                if mode == "on":
                    done = await recordings_finished(server, facility, calls)
                    row["remux_cpu_seconds_per_call"] = round(
                        (children_cpu(node) - before) / calls, 3
                    )
                    ends += done
                rows[mode].append(row)
        off = statistics.median(r["node_cpu_percent"] for r in rows["off"])
        on = statistics.median(r["node_cpu_percent"] for r in rows["on"])
        streams = 2 * calls
        latencies = [epoch(r["finalized_at"]) - epoch(r["ended_at"]) for r in ends
                     if r["status"] == "finalized"]  # fmt: skip
        result.update({
            "calls": calls,
            "streams": streams,
            "media": f"{video} VP8 + 20 ms Opus, pre-encoded (signaling.loadmedia)",
            "rounds": rows,
            "node_cpu_percent_off": off,
            "node_cpu_percent_on": on,
            "cpu_percent_per_stream_off": round(off / streams, 3),
            "cpu_percent_per_stream_on": round(on / streams, 3),
            "extra_cpu_percent_per_recorded_stream": round((on - off) / streams, 3),
            "extra_ratio": round(on / off - 1, 3) if off else None,
            "target_extra_ratio": TARGET_EXTRA,
            "within_target": bool(off) and on / off - 1 <= TARGET_EXTRA,
            "disturbed_windows": sum(r["window"]["disturbed"] for rs in rows.values() for r in rs),
            "end_to_playable_seconds": {
                "median": round(statistics.median(latencies), 2) if latencies else None,
                "max": round(max(latencies), 2) if latencies else None,
                "count": len(latencies),
                "failed": sum(1 for r in ends if r["status"] == "failed"),
            },
            "server_problems": server.problems(),
        })  # fmt: skip
        return result
    finally:
        if fleet is not None:
            await fleet.stop()
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4, help="1:1 calls per round (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs (default 2)")
    parser.add_argument("--video", default="640x480@30", help="WxH@FPS (default 640x480@30)")
    parser.add_argument("--quick", action="store_true", help="shorter warm-up and window")
    parser.add_argument("--wait-quiet", type=float, default=60.0,
                        help="wait up to this long for a quieter machine first (0: do not)")  # fmt: skip
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(run(arguments)), indent=2))


if __name__ == "__main__":
    main()

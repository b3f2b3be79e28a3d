"""GStreamer interop: N consecutive calls between a GStreamer `webrtcbin` kiosk and an aiortc family.

The server runs in its own process (`parlor serve`, SQLite, ICE pinned to 127.0.0.1), seeded
through the REST API with one visit per call. Each call, one after the other: the GStreamer
kiosk (tests/harness/gst_kiosk.py under the system Python, VP8 320x240@15 + Opus) joins and
connects alone, as a kiosk waits; then the family (an aiortc `ParlorClient` in this process,
the same size and rate) joins. A call counts as connected with media both ways when, within
`--timeout` seconds of the family's join, each side has decoded its first remote video and
audio frame and then `GROWTH` more of each. Then the family leaves and the kiosk is stopped.

Figures per call, all on the host's one monotonic clock:
  kiosk_join_to_connected_s   the kiosk's join sent -> its connectionState "connected"
  first_remote_video_s        the family's join (the moment the call can start) -> the first
                              decoded remote video frame, at the kiosk and at the family
Reported as median / p90 / max over the calls that produced them. JSON to stdout, progress to
stderr. Exit status 0 only if every call connected with media both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bench.harness import CallSpec, ServerProcess, progress, seed_calls, workdir  # noqa: E402
from relay import pin_ice_addresses  # noqa: E402
from signaling.kiosk import ParlorClient  # noqa: E402
from tests.harness.gstreamer import GstKiosk, gstreamer_missing  # noqa: E402

SIZE, FPS = (320, 240), 15
GROWTH = 15  # decoded frames per kind after the first: media keeps flowing


def summary(values: list[float]) -> dict[str, Any]:
    """Median, p90 (inclusive quantiles), max and count, in seconds to the millisecond."""
    if not values:
        return {"n": 0, "median": None, "p90": None, "max": None}
    p90 = (
        statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) > 1 else values[0]
    )
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "p90": round(p90, 3),
        "max": round(max(values), 3),
    }


async def family_grows(client: ParlorClient, deadline: float) -> None:
    for kind in ("video", "audio"):
        await client.wait_frames(kind, 1, max(0.1, deadline - time.monotonic()))
    start = dict(client.received.frames)
    for kind in ("video", "audio"):
        await client.wait_frames(kind, start[kind] + GROWTH, max(0.1, deadline - time.monotonic()))


async def kiosk_grows(kiosk: GstKiosk, deadline: float) -> None:
    for kind in ("video", "audio"):
        await kiosk.wait_frames(kind, 1, max(0.1, deadline - time.monotonic()))
    start = kiosk.frames()
    for kind in ("video", "audio"):
        await kiosk.wait_frames(kind, start[kind] + GROWTH, max(0.1, deadline - time.monotonic()))


async def one_call(server: ServerProcess, spec: CallSpec, timeout: float) -> dict[str, Any]:
    result: dict[str, Any] = {"call": spec.index, "ok": False}
    kiosk = GstKiosk(
        server.url, spec.kiosk_token, spec.visit, seconds=2 * timeout + 10, size=SIZE, fps=FPS
    )
    client: ParlorClient | None = None
    try:
        await kiosk.start()
        sent = await kiosk.wait_for("join-sent", timeout)
        connected = await kiosk.wait_for("connected", timeout)
        result["kiosk_join_to_connected_s"] = connected["at"] - sent["at"]
        client = ParlorClient(server.url, spec.family_token, spec.visit, size=SIZE, fps=FPS)
        family_join = time.monotonic()
        joined = await client.connect(timeout=timeout)
        if joined.get("type") != "joined":
            raise RuntimeError(f"family refused: {joined}")
        deadline = family_join + timeout
        await asyncio.gather(kiosk_grows(kiosk, deadline), family_grows(client, deadline))
        first = kiosk.find("first-frame", kind="video")
        assert first is not None
        result["first_remote_video_s"] = {
            "kiosk": first["at"] - family_join,
            "family": client.received.first_at["video"] - family_join,
        }
        result["ok"] = True
    except (TimeoutError, RuntimeError) as exc:
        result["failure"] = str(exc).split(";", 1)[0]
        result["kiosk_saw"] = [
            {k: v for k, v in e.items() if k in ("event", "code", "message", "reason", "debug", "step", "error")}
            for e in kiosk.events
            if e["event"] in ("pipeline-error", "negotiation-failed", "error", "terminated", "closed")
        ]  # fmt: skip
    finally:
        if client is not None:
            await client.leave()
        await kiosk.stop()
        result["kiosk_close_code"] = kiosk.close_code
    return result


async def run(calls: int, timeout: float) -> dict[str, Any]:
    pin_ice_addresses(["127.0.0.1"])  # the family's aiortc peer, in this process
    server = ServerProcess(workdir("parlor-gstreamer-"))
    await server.start()
    try:
        specs = await seed_calls(server, {"F-GST": calls})
        results = []
        for spec in specs:
            result = await one_call(server, spec, timeout)
            progress(
                f"call {spec.index + 1}/{calls}: {'ok' if result['ok'] else result.get('failure', '')[:200]}"
            )
            results.append(result)
        problems = server.problems()
    finally:
        await server.stop()
    good = [r for r in results if r["ok"]]
    return {
        "bench": "gstreamer_calls",
        "calls": calls,
        "connected_media_both_ways": len(good),
        "kiosk": "GStreamer webrtcbin (tests/harness/gst_kiosk.py), VP8 320x240@15 + Opus",
        "family": "aiortc ParlorClient, VP8 320x240@15 + Opus",
        "kiosk_join_to_connected_s": summary([r["kiosk_join_to_connected_s"] for r in results if "kiosk_join_to_connected_s" in r]),
        "family_join_to_first_remote_video_s": {
            side: summary([r["first_remote_video_s"][side] for r in good]) for side in ("kiosk", "family")
        },
        "failures": [{k: r.get(k) for k in ("call", "failure", "kiosk_saw")} for r in results if not r["ok"]],
        "server_log_problems": problems,
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="consecutive calls (default 10)")
    parser.add_argument(
        "--timeout", type=float, default=20.0, help="seconds per call step (default 20)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= 200:
        parser.error("--calls must be between 1 and 200")
    missing = gstreamer_missing()
    if missing is not None:
        print(json.dumps({"bench": "gstreamer_calls", "error": missing}))
        return 2
    result = asyncio.run(run(args.calls, args.timeout))
    print(json.dumps(result, indent=2))
    return 0 if result["connected_media_both_ways"] == args.calls else 1


if __name__ == "__main__":
    sys.exit(main())

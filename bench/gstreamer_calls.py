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
Reported as median / p90 / max over the calls that produced them. The baseline is the same
call with the project's own aiortc kiosk (`ParlorClient`) in place of GStreamer, alternated
with the GStreamer calls in the same run (`--baseline-calls`, default as many); the JSON gives
the ratios of the medians. JSON to stdout, progress to stderr. Exit status 0 only if every
GStreamer call connected with media both ways.
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
from itertools import zip_longest
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bench.harness import CallSpec, ServerProcess, progress, seed_calls, workdir  # noqa: E402
from relay import pin_ice_addresses  # noqa: E402
from signaling.kiosk import ParlorClient  # noqa: E402
from tests.harness.gstreamer import INSTALL, GstKiosk, decoded_frames_grow, gstreamer_missing  # noqa: E402

SIZE, FPS = (320, 240), 15
GROWTH = 15  # decoded frames per kind after the first: media keeps flowing
DEFINITIONS = {
    "kiosk_join_to_connected_s": "the kiosk's join sent -> its connectionState 'connected' (alone in the call)",
    "family_join_to_first_remote_video_s": "the family's join sent -> the first decoded remote video frame, "
    "at the kiosk and at the family",
    "connected_media_both_ways": f"calls where both sides decoded video and audio and then {GROWTH} more "
    "frames of each within --timeout of the family's join",
    "baseline_aiortc_kiosk": "the same calls with the project's aiortc kiosk (ParlorClient), alternated "
    "with the GStreamer ones in this run",
}


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


class GStreamerKiosk:
    """The kiosk under test: webrtcbin in its own process."""

    name = "gstreamer"

    def __init__(self, server: ServerProcess, spec: CallSpec, timeout: float) -> None:
        self.kiosk = GstKiosk(
            server.url, spec.kiosk_token, spec.visit, seconds=2 * timeout + 10, size=SIZE, fps=FPS
        )
        self.timeout = timeout

    async def join_until_connected(self) -> float:
        await self.kiosk.start()
        sent = await self.kiosk.wait_for("join-sent", self.timeout)
        connected = await self.kiosk.wait_for("connected", self.timeout)
        return connected["at"] - sent["at"]

    async def grows(self, deadline: float) -> None:
        await decoded_frames_grow(self.kiosk.frames, self.kiosk.wait_frames, GROWTH, deadline)

    def first_video_at(self) -> float:
        first = self.kiosk.find("first-frame", kind="video")
        if first is None:
            raise RuntimeError("the kiosk reported no first video frame")
        return float(first["at"])

    def saw(self) -> list[dict[str, Any]]:
        keep = ("event", "code", "message", "reason", "debug", "step", "error")
        shown = ("pipeline-error", "negotiation-failed", "error", "terminated", "closed")
        return [
            {k: v for k, v in e.items() if k in keep}
            for e in self.kiosk.events
            if e["event"] in shown
        ]

    async def stop(self) -> None:
        await self.kiosk.stop()


class AiortcKiosk:
    """The baseline: the project's own aiortc kiosk (`ParlorClient`), in this process."""

    name = "aiortc"

    def __init__(self, server: ServerProcess, spec: CallSpec, timeout: float) -> None:
        self.client = ParlorClient(server.url, spec.kiosk_token, spec.visit, size=SIZE, fps=FPS)
        self.timeout = timeout

    async def join_until_connected(self) -> float:
        sent = time.monotonic()
        joined = await self.client.connect(timeout=self.timeout)
        if joined.get("type") != "joined":
            raise RuntimeError(f"kiosk refused: {joined}")
        deadline = sent + self.timeout
        while self.client.connected_at is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"aiortc kiosk not connected within {self.timeout} s")
            await asyncio.sleep(0.01)
        return self.client.connected_at - sent

    async def grows(self, deadline: float) -> None:
        await decoded_frames_grow(
            lambda: dict(self.client.received.frames), self.client.wait_frames, GROWTH, deadline
        )

    def first_video_at(self) -> float:
        return self.client.received.first_at["video"]

    def saw(self) -> list[dict[str, Any]]:
        return [
            {
                "error": self.client.error,
                "terminated": self.client.terminated,
                "code": self.client.close_code,
            }
        ]

    async def stop(self) -> None:
        await self.client.leave()


async def one_call(
    kiosk: GStreamerKiosk | AiortcKiosk, server: ServerProcess, spec: CallSpec, timeout: float
) -> dict[str, Any]:
    """The kiosk joins and connects alone; the family joins; both must decode media that grows."""
    result: dict[str, Any] = {"call": spec.index, "kiosk": kiosk.name, "ok": False}
    client: ParlorClient | None = None
    try:
        result["kiosk_join_to_connected_s"] = await kiosk.join_until_connected()
        client = ParlorClient(server.url, spec.family_token, spec.visit, size=SIZE, fps=FPS)
        family_join = time.monotonic()
        joined = await client.connect(timeout=timeout)
        if joined.get("type") != "joined":
            raise RuntimeError(f"family refused: {joined}")
        deadline = family_join + timeout
        await asyncio.gather(
            kiosk.grows(deadline),
            decoded_frames_grow(
                lambda: dict(client.received.frames), client.wait_frames, GROWTH, deadline
            ),
        )
        result["first_remote_video_s"] = {
            "kiosk": kiosk.first_video_at() - family_join,
            "family": client.received.first_at["video"] - family_join,
        }
        result["ok"] = True
    except (TimeoutError, RuntimeError) as exc:
        result["failure"] = str(exc).split(";", 1)[0]
        result["kiosk_saw"] = kiosk.saw()
    finally:
        if client is not None:
            await client.leave()
        await kiosk.stop()
    return result


def figures(results: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in results if r["ok"]]
    return {
        "calls": len(results),
        "connected_media_both_ways": len(good),
        "kiosk_join_to_connected_s": summary([r["kiosk_join_to_connected_s"] for r in results if "kiosk_join_to_connected_s" in r]),
        "family_join_to_first_remote_video_s": {
            side: summary([r["first_remote_video_s"][side] for r in good]) for side in ("kiosk", "family")
        },
        "failures": [{k: r.get(k) for k in ("call", "failure", "kiosk_saw")} for r in results if not r["ok"]],
    }  # fmt: skip


def ratio(ours: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    if not ours["median"] or not baseline["median"]:
        return None
    return round(ours["median"] / baseline["median"], 2)


async def run(calls: int, baseline_calls: int, timeout: float) -> dict[str, Any]:
    pin_ice_addresses(["127.0.0.1"])  # the aiortc peers in this process
    server = ServerProcess(workdir("parlor-gstreamer-"))
    await server.start()
    try:
        specs = await seed_calls(server, {"F-GST": calls, "F-AIORTC": baseline_calls})
        # Alternate the two kinds of kiosk, so that whatever else loads the machine meanwhile
        # falls on both alike.
        gst = [s for s in specs if s.facility == "F-GST"]
        base = [s for s in specs if s.facility == "F-AIORTC"]
        order = [x for pair in zip_longest(gst, base) for x in pair if x is not None]
        results: dict[str, list[dict[str, Any]]] = {"gstreamer": [], "aiortc": []}
        for spec in order:
            kind = GStreamerKiosk if spec.facility == "F-GST" else AiortcKiosk
            result = await one_call(kind(server, spec, timeout), server, spec, timeout)
            results[kind.name].append(result)
            outcome = "ok" if result["ok"] else result.get("failure", "")[:200]
            progress(f"{kind.name} call {len(results[kind.name])}: {outcome}")
        problems = server.problems()
    finally:
        await server.stop()
    ours, baseline = figures(results["gstreamer"]), figures(results["aiortc"])
    return {
        "bench": "gstreamer_calls",
        "kiosk": "GStreamer webrtcbin (tests/harness/gst_kiosk.py), VP8 320x240@15 + Opus",
        "family": "aiortc ParlorClient, VP8 320x240@15 + Opus",
        "definitions": DEFINITIONS,
        "gstreamer": ours,
        "baseline_aiortc_kiosk": baseline,
        "ratio_to_baseline_median": {
            "kiosk_join_to_connected": ratio(ours["kiosk_join_to_connected_s"], baseline["kiosk_join_to_connected_s"]),
            **{f"first_remote_video_at_{side}": ratio(ours["family_join_to_first_remote_video_s"][side],
                                                       baseline["family_join_to_first_remote_video_s"][side])
               for side in ("kiosk", "family")},
        },
        "server_log_problems": problems,
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="GStreamer-kiosk calls (default 10)")
    parser.add_argument("--baseline-calls", type=int, default=None,
                        help="aiortc-kiosk calls for the baseline (default: as many)")  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=20.0, help="seconds per call step (default 20)"
    )
    args = parser.parse_args(argv)
    baseline_calls = args.calls if args.baseline_calls is None else args.baseline_calls
    if not 1 <= args.calls <= 200 or not 0 <= baseline_calls <= 200:
        parser.error("--calls must be between 1 and 200, --baseline-calls between 0 and 200")
    missing = gstreamer_missing()
    if missing is not None:
        print(json.dumps({"bench": "gstreamer_calls", "error": missing, "install": INSTALL}))
        return 2
    result = asyncio.run(run(args.calls, baseline_calls, args.timeout))
    print(json.dumps(result, indent=2))
    return 0 if result["gstreamer"]["connected_media_both_ways"] == args.calls else 1


if __name__ == "__main__":
    sys.exit(main())

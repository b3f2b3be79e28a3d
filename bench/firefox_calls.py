"""Firefox calls: how many consecutive joins of the family page in Firefox ESR get media both
ways with an aiortc kiosk, and how fast the first remote picture comes, against Chromium in
the same run as the baseline.

One server (`parlor serve` in its own process, ICE on 127.0.0.1), one visit per call, seeded
through the REST API. For each call the aiortc kiosk (in this process, 160x120@10 test
pattern + tone) joins first, then the family page joins through its device check in the
browser's one window (Firefox) or page (Chromium), reused call after call, as a person does:
the server's re-offer adding the kiosk's media follows its answer to the browser at once,
which is where a DTLS role that flips shows. Then the page is left (the call ends) and the
next call starts. Firefox first, then Chromium; a call that has not shown media within
`--timeout` seconds counts as not connected, and no call starts after `--budget` seconds.

Prints one JSON document on stdout (definitions inside); progress goes to stderr.

    .venv/bin/python bench/firefox_calls.py [--calls 30] [--chromium 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# bench/relay.py would shadow the `relay` package: import from the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bench.harness import CallSpec, ServerProcess, percentiles, progress, seed_calls, workdir  # noqa: E402
from relay import pin_ice_addresses  # noqa: E402
from signaling.kiosk import ParlorClient  # noqa: E402
from tests.harness import callpage  # noqa: E402
from tests.harness.chromium import call_page, launch_chromium  # noqa: E402
from tests.harness.firefox import launch_firefox  # noqa: E402
from tests.harness.page import Page  # noqa: E402

KIOSK = {"size": (160, 120), "fps": 10}
KIOSK_FRAMES = 10  # video frames the kiosk must decode from the family
DEFINITIONS = {
    "connected": "media both ways: the family page's remote <video> has a size, its clock advances "
    "0.3 s and its inbound-rtp framesDecoded grows by 5 (getStats), and the aiortc kiosk decodes "
    f"{KIOSK_FRAMES} video frames from the family, all within --timeout of the join",
    "join_to_first_remote_frame_ms": "on the page's own clock (performance.now()): from the click "
    "on 'Join call' (its click event) to the first frame of the kiosk's video in the page's remote "
    "<video> (the earlier of requestVideoFrameCallback and a 'resize' with a width); connected calls only",
    "order": "the kiosk has joined before the family clicks, so the server re-offers to the "
    "browser right after answering it",
}


async def one_call(
    page: Page, server: ServerProcess, spec: CallSpec, timeout: float
) -> dict[str, Any]:
    """Kiosk, then the family page; whether media flowed both ways, and how soon."""
    kiosk = ParlorClient(server.url, spec.kiosk_token, spec.visit, **KIOSK)
    try:
        joined = await kiosk.connect(timeout=timeout)
        if joined.get("type") != "joined":
            return {"connected": False, "failure": f"kiosk refused: {joined}"}
        family = callpage.family_url(server.url, spec.visit, spec.family_token)
        await callpage.join_as_family(
            page, family, timeout=timeout, before_join=callpage.MARK_FIRST_FRAME
        )
        await callpage.plays(page, await callpage.sole_remote(page, timeout), timeout)
        await kiosk.wait_frames("video", KIOSK_FRAMES, timeout=timeout)
        marks = await page.evaluate(callpage.MARKS)
        return {
            "connected": True,
            "join_to_first_remote_frame_ms": round(marks["frame"] - marks["join"], 1),
        }
    except (AssertionError, TimeoutError) as failure:
        return {"connected": False, "failure": str(failure)[:300]}
    finally:
        await kiosk.close()
        await page.open("about:blank")


async def calls(
    name: str,
    page: Page,
    server: ServerProcess,
    specs: list[CallSpec],
    timeout: float,
    deadline: float,
) -> dict[str, Any]:
    results = []
    for n, spec in enumerate(specs, 1):
        if time.monotonic() > deadline:
            progress(f"{name}: budget spent after {n - 1} calls")
            break
        result = await one_call(page, server, spec, timeout)
        results.append(result)
        progress(f"{name} call {n}/{len(specs)}: {json.dumps(result)}")
    times = [r["join_to_first_remote_frame_ms"] for r in results if r["connected"]]
    return {
        "calls": len(results),
        "connected": len(times),
        "join_to_first_remote_frame_ms": percentiles(times, (0.5, 0.9)),
        "failures": [r["failure"] for r in results if not r["connected"]][:5],
        "per_call_ms": [r.get("join_to_first_remote_frame_ms") for r in results],
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    pin_ice_addresses(["127.0.0.1"])  # the kiosk's ICE, as the server's (PARLOR_ICE_ADDRESSES)
    server = ServerProcess(workdir("parlor-bench-firefox-"))
    await server.start()
    try:
        specs = await seed_calls(server, {"F1": args.calls + args.chromium})
        deadline = time.monotonic() + args.budget
        async with launch_firefox() as firefox:
            progress(f"Firefox {firefox.version}: {args.calls} calls")
            result: dict[str, Any] = {"firefox": {"browser": f"Firefox {firefox.version}"}}
            result["firefox"] |= await calls(
                "firefox", firefox, server, specs[: args.calls], args.timeout, deadline
            )
            result["firefox"]["page_problems"] = await firefox.problems()
        async with launch_chromium() as chromium:
            page = await call_page(chromium)
            progress(f"Chromium {chromium.version}: {args.chromium} calls")
            result["chromium"] = {"browser": f"Chromium {chromium.version}"}
            result["chromium"] |= await calls(
                "chromium", page, server, specs[args.calls :], args.timeout, deadline
            )
            result["chromium"]["page_problems"] = await page.problems()
    finally:
        await server.stop()
    ff, cr = (result[b]["join_to_first_remote_frame_ms"]["p50"] for b in ("firefox", "chromium"))
    result["firefox_to_chromium_p50_ratio"] = round(ff / cr, 2) if ff and cr else None
    result["server_problems"] = server.problems()
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--calls", type=int, default=30, help="consecutive Firefox joins (default 30)"
    )
    parser.add_argument("--chromium", type=int, default=10, help="consecutive Chromium joins, the baseline (default 10)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a call may take to show media both ways")  # fmt: skip
    parser.add_argument(
        "--budget", type=float, default=900.0, help="no call starts after this many seconds"
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.chromium < 0 or args.timeout <= 0 or args.budget <= 0:
        parser.error(
            "--calls must be at least 1, --chromium at least 0, --timeout and --budget positive"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    result = {"bench": "firefox_calls", "definitions": DEFINITIONS,
              **asyncio.run(bench(args))}  # fmt: skip
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
                         "python": platform.python_version()}  # fmt: skip
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    return 0 if result["firefox"]["connected"] == result["firefox"]["calls"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Soak: 20 calls joining and leaving continuously, watching the server for leaks (issue #7).

The server runs in its own process (`python -m signaling.cli serve`, SQLite in a temp dir,
ICE pinned to 127.0.0.1, no STUN, rate limits lifted: bench/harness.py `ServerProcess`).
This process runs the clients: per call a kiosk and a family member, real aiortc peers sending
light media (160x120@10 fps VP8 and Opus, a pre-encoded loop: bench/harness.py) and decoding
what they receive. Each call cycles for the whole run: both join, both must receive video,
they stay a few seconds, both leave, a short pause, again.

Sampled every 10 s: the server's RSS and open file descriptors (psutil), and from /metrics its
live sessions and asyncio tasks (`parlor_asyncio_tasks`). Reported: joins completed, errors,
RSS at warm-up (median over 30 s from the warm-up mark, 1 minute; a third of the run if
shorter) and at the end (median of the last 30 s under load), growth %, and live sessions,
tasks and descriptors once every client has left, against the same figures before the first
join. Targets: no leaked session, task or descriptor; RSS growth <= 10 % after warm-up.

JSON to stdout, progress to stderr. `--minutes` (default 10); `--quick` = 1 minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Run as a script: import `bench` and the project's packages from the repository root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import psutil  # noqa: E402

from bench.harness import (  # noqa: E402
    CallSpec,
    ServerProcess,
    _bench_client_class,
    progress,
    seed_calls,
    workdir,
)

CALLS = 20
SIZE, FPS = (160, 120), 10
HOLD = (3.0, 8.0)  # seconds a call stays up once media flows
PAUSE = (0.2, 1.0)  # seconds between a call's cycles
SAMPLE_EVERY = 10.0
WINDOW = 30.0  # seconds of samples behind each RSS figure
MEDIA_TIMEOUT = 15.0
GROWTH_LIMIT_PCT = 10.0
SETTLE = 5.0  # seconds after the last leave before the end figures


@dataclass
class Tally:
    joins: int = 0  # sessions admitted (joined) whose peer then received video
    cycles: int = 0  # calls completed: both sides joined, saw video, and left
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)


async def cycle(server: ServerProcess, call: CallSpec, client_class: type, tally: Tally) -> None:
    """One call: join both sides, wait for video both ways, hold, leave."""
    clients = [
        client_class(
            server.url,
            token,
            call.visit,
            call=call.index,
            role=role,
            preencoded=True,
            size=SIZE,
            fps=FPS,
        )
        for role, token in (("kiosk", call.kiosk_token), ("family", call.family_token))
    ]
    try:
        for client in clients:
            answer = await client.connect(timeout=MEDIA_TIMEOUT)
            if answer.get("type") != "joined":
                tally.errors[f"refused:{answer.get('code') or answer.get('type')}"] += 1
                return
        for client in clients:
            await client.wait_frames("video", 5, timeout=MEDIA_TIMEOUT)
            tally.joins += 1
        await asyncio.sleep(random.uniform(*HOLD))
        if any(c.closed.is_set() for c in clients):
            tally.errors["closed-by-server"] += 1
            return
        for client in clients:
            await asyncio.wait_for(client.leave(), 15)
        tally.cycles += 1
    except (TimeoutError, OSError, RuntimeError) as exc:  # aiohttp's errors are OSErrors
        tally.errors[type(exc).__name__] += 1
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 15)


async def call_loop(
    server: ServerProcess, call: CallSpec, client_class: type, tally: Tally, until: float
) -> None:
    await asyncio.sleep(random.uniform(0, 3))  # stagger the first joins
    while time.monotonic() < until:
        await cycle(server, call, client_class, tally)
        await asyncio.sleep(random.uniform(*PAUSE))


async def sample(
    server: ServerProcess, process: psutil.Process, started: float, phase: str
) -> dict[str, Any]:
    metrics = await server.metrics()
    return {
        "t": round(time.monotonic() - started, 1),
        "phase": phase,
        "rss_mb": round(process.memory_info().rss / 2**20, 1),
        "fds": process.num_fds(),
        "sessions": int(metrics.get("parlor_live_sessions", -1)),
        "tasks": int(metrics.get("parlor_asyncio_tasks", -1)),
        "cpu_s": round(sum(process.cpu_times()[:2]), 1),
        "memory_trims": int(metrics.get("parlor_memory_trims_total", -1)),
        "trimmed_mb": round(metrics.get("parlor_memory_trimmed_bytes_total", 0) / 2**20, 1),
    }


async def sampler(
    server: ServerProcess, process: psutil.Process, started: float, until: float, tally: Tally
) -> None:
    while time.monotonic() < until:
        await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, until - time.monotonic())))
        tally.samples.append(await sample(server, process, started, "load"))


def median_rss(samples: list[dict[str, Any]], start: float, end: float) -> float | None:
    values = [s["rss_mb"] for s in samples if start <= s["t"] <= end and s["phase"] == "load"]
    return round(statistics.median(values), 1) if values else None


async def soak(minutes: float) -> dict[str, Any]:
    from relay import pin_ice_addresses

    pin_ice_addresses(["127.0.0.1"])
    duration = minutes * 60
    warmup = min(60.0, duration / 3)
    server = ServerProcess(workdir("parlor-soak-"))
    await server.start()
    tally = Tally()
    try:
        process = psutil.Process(server.pid)
        calls = await seed_calls(server, {"F-SOAK": CALLS})
        client_class = _bench_client_class()
        await asyncio.sleep(1.0)
        started = time.monotonic()
        before = await sample(server, process, started, "before")
        until = started + duration
        progress(f"{CALLS} calls cycling for {minutes:g} min against pid {server.pid}")
        loops = [
            asyncio.create_task(call_loop(server, c, client_class, tally, until)) for c in calls
        ]
        watcher = asyncio.create_task(sampler(server, process, started, until, tally))
        shown = 0
        while not all(loop.done() for loop in loops):
            await asyncio.sleep(1.0)
            if len(tally.samples) >= shown + 3 or (
                tally.samples and time.monotonic() > until and shown < len(tally.samples)
            ):
                shown, last = len(tally.samples), tally.samples[-1]
                progress(f"t={last['t']:.0f}s rss={last['rss_mb']} MB fds={last['fds']} sessions={last['sessions']} "
                         f"tasks={last['tasks']} joins={tally.joins} errors={sum(tally.errors.values())}")  # fmt: skip
            if time.monotonic() > until + 120:  # every cycle is bounded; this is the backstop
                for loop in loops:
                    loop.cancel()
                tally.errors["loop-overran"] += 1
                break
        await asyncio.gather(*loops, return_exceptions=True)
        await watcher
        await asyncio.sleep(SETTLE)
        after = await sample(server, process, started, "after")
        problems = server.problems()
    finally:
        await server.stop()

    end_t = max((s["t"] for s in tally.samples), default=0.0)
    rss_warm = median_rss(tally.samples, warmup, warmup + WINDOW)
    rss_end = median_rss(tally.samples, end_t - WINDOW, end_t)
    growth = round((rss_end - rss_warm) / rss_warm * 100, 1) if rss_warm and rss_end else None
    leaks = {
        "sessions": after["sessions"] - before["sessions"],
        "asyncio_tasks": after["tasks"] - before["tasks"],
        "fds": after["fds"] - before["fds"],
    }
    return {
        "minutes": minutes,
        "calls": CALLS,
        "media": {"size": list(SIZE), "fps": FPS, "preencoded": True},
        "joins_completed": tally.joins,
        "calls_completed": tally.cycles,
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "rss_mb": {
            "before": before["rss_mb"],
            "warmup": rss_warm,
            "end": rss_end,
            "after_leave": after["rss_mb"],
            "max": max((s["rss_mb"] for s in tally.samples), default=None),
        },  # fmt: skip
        "rss_growth_pct": growth,
        "warmup_s": warmup,
        "live_sessions": {"start": before["sessions"], "end": after["sessions"]},
        "asyncio_tasks": {"start": before["tasks"], "end": after["tasks"]},
        "fds": {"start": before["fds"], "end": after["fds"]},
        "leaked": leaks,
        "server_cpu_s": after["cpu_s"] - before["cpu_s"],
        # signaling/memory.py: malloc_trim after sessions end gives freed native memory back
        "memory_trims": {"count": after["memory_trims"], "returned_mb": after["trimmed_mb"]},
        "server_log_problems": problems["count"],
        "server_log_problem_lines": problems["lines"][:5],
        "targets": {
            "no_leaked_sessions": leaks["sessions"] == 0,
            "no_leaked_tasks": leaks["asyncio_tasks"] <= 0,
            "no_leaked_fds": leaks["fds"] <= 0,
            "rss_growth_le_10pct": growth is not None and growth <= GROWTH_LIMIT_PCT,
        },
        "samples": tally.samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="how long the calls cycle (default 10)"
    )
    parser.add_argument("--quick", action="store_true", help="1 minute")
    args = parser.parse_args(argv)
    minutes = 1.0 if args.quick else args.minutes
    if not 0.5 <= minutes <= 240:
        parser.error("--minutes must be between 0.5 and 240")
    result = asyncio.run(soak(minutes))
    print(json.dumps(result, indent=2))
    return 0 if all(result["targets"].values()) and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

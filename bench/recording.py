"""What recording costs: on the event loop, in the writer thread, and after the call.

Media is real: aiortc's VP8 (or H264) encoder at 640x480@30, ~1.5 Mbit/s,
plus Opus, packetized as RTP (tests/harness/encoded_media.py); a 3 s
stretch starting with a keyframe is repeated to make long calls.

* ``tap``: µs on the event loop per tapped packet (the whole
  ``tap(packet, arrival_us)`` call, recorder running, writer draining
  between rounds), for a ``bytes`` and a ``bytearray`` packet (copied);
  an empty Python function with the same arguments is the baseline.
* ``writer``: CPU of the writer thread(s) (``/proc/self/task/<tid>/schedstat``,
  ns) while ``--streams`` participants (one stream = 640x480 VP8 + Opus) are
  fed in real time for ``--realtime-seconds``, per recorded stream-second.
* ``finalize``: a ``--seconds`` call of two participants is recorded (fed as
  fast as the queue allows), then: ``close`` (drain + fsync) and the remux
  in a child process (:func:`relay.remux.remux_in_subprocess`) — their sum
  is the time from the end of the call to its playable file, also as a
  ratio to the call's length. The remux is also run in this process in a
  worker thread (``asyncio.to_thread``) to compare what each does to the
  event loop: lateness of a 1 ms ticker (p50/p99/max), against the same
  ticker with nothing else running, and the rate of small chunks of Python
  work the loop completes (what the GIL takes away), against idle.

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# bench/relay.py is named like the package: make `import relay` find the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))

import aiortc  # noqa: E402
import av  # noqa: E402

from relay.recorder import Recorder  # noqa: E402
from relay.remux import remux, remux_in_subprocess  # noqa: E402
from tests.harness.encoded_media import (  # noqa: E402
    CallFeed,
    SentTrack,
    audio_track,
    repeated,
    video_track,
)

WIDTH, HEIGHT, BITRATE = 640, 480, 1_500_000
PERIOD_US = 3_000_000


def participant(name: str, codec: str, start_us: int, seconds: float, seed: int) -> list[SentTrack]:
    """One participant's 640x480 video and Opus, ``seconds`` long."""
    video = video_track(
        name,
        codec,
        start_us=start_us,
        seconds=PERIOD_US / 1_000_000,
        width=WIDTH,
        height=HEIGHT,
        bitrate=BITRATE,
        seed=seed,
    )
    audio = audio_track(name, start_us=start_us, seconds=PERIOD_US / 1_000_000, seed=seed + 1)
    return [repeated(video, seconds, PERIOD_US), repeated(audio, seconds, PERIOD_US)]


def thread_cpu_ns(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/schedstat") as file:
        return int(file.read().split()[0])


def writer_ids() -> list[int]:
    return [
        t.native_id
        for t in threading.enumerate()
        if t.name.startswith("recorder ") and t.native_id is not None
    ]


async def bench_tap(directory: str, packets: list[bytes], rounds: int) -> dict[str, float]:
    recorder = Recorder(directory, "bench-tap", "social")
    tap = recorder.track("contact:C1", "video", "VP8", 90000, 96)

    def noop(packet: bytes | bytearray, arrival_us: int) -> None:
        return None

    mutable = [bytearray(p) for p in packets]
    results: dict[str, list[float]] = {"bytes": [], "bytearray": [], "noop": []}
    for _ in range(rounds):
        for name, function, items in (
            ("noop", noop, packets),
            ("bytes", tap, packets),
            ("bytearray", tap, mutable),
        ):
            start = time.perf_counter_ns()
            for number, packet in enumerate(items):
                function(packet, number)
            results[name].append((time.perf_counter_ns() - start) / len(items) / 1000)
            await asyncio.sleep(0.25)  # the writer drains between rounds
    status = await recorder.close()
    assert status.complete, status
    best = {name: min(values) for name, values in results.items()}
    return {
        "packets_per_round": len(packets),
        "rounds": rounds,
        "us_per_packet_bytes": round(best["bytes"], 3),
        "us_per_packet_bytearray": round(best["bytearray"], 3),
        "us_empty_call_baseline": round(best["noop"], 3),
        "ratio_bytes_to_empty_call": round(best["bytes"] / best["noop"], 2),
        "median_us_per_packet_bytes": round(statistics.median(results["bytes"]), 3),
    }


async def bench_writer(
    directory: str, streams: list[list[SentTrack]], seconds: float
) -> dict[str, float]:
    recorders = [Recorder(directory, f"bench-writer-{n}", "social") for n in range(len(streams))]
    feeds = [CallFeed(r, tracks) for r, tracks in zip(recorders, streams, strict=True)]
    ids = writer_ids()
    before = sum(thread_cpu_ns(i) for i in ids)
    loop_before = time.thread_time_ns()
    start = time.monotonic()
    origin_us = min(t.start_us for tracks in streams for t in tracks)
    while (elapsed := time.monotonic() - start) < seconds:
        for feed in feeds:
            feed.feed(origin_us + int(elapsed * 1_000_000))
        await asyncio.sleep(0.01)
    for feed in feeds:
        feed.feed(origin_us + int(seconds * 1_000_000))
    loop_cpu = time.thread_time_ns() - loop_before
    await asyncio.sleep(0.3)  # the last drain (the threads end at close: read them before)
    writer_cpu = sum(thread_cpu_ns(i) for i in ids) - before
    statuses = [await r.close() for r in recorders]
    assert all(s.complete for s in statuses), statuses
    stream_seconds = len(streams) * seconds
    recorded = sum(s.bytes_written for s in statuses)
    return {
        "streams": len(streams),
        "seconds": seconds,
        "writer_threads": len(ids),
        "writer_cpu_s": round(writer_cpu / 1e9, 4),
        "writer_cpu_us_per_stream_second": round(writer_cpu / 1000 / stream_seconds, 1),
        "writer_cpu_percent_of_a_core_per_stream": round(
            writer_cpu / 1e9 / stream_seconds * 100, 4
        ),
        "event_loop_cpu_percent_per_stream_incl_feeding": round(
            loop_cpu / 1e9 / stream_seconds * 100, 3
        ),
        "recorded_mbit_per_stream_second": round(recorded * 8 / 1e6 / stream_seconds, 3),
    }


async def ticker_lateness(until: asyncio.Future[object]) -> dict[str, float]:
    """Lateness (ms) of a 1 ms sleep loop until ``until`` is done."""
    late: list[float] = []
    while not until.done():
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        late.append((time.perf_counter() - start - 0.001) * 1000)
    late.sort()
    return {
        "ticks": len(late),
        "p50_ms": round(late[len(late) // 2], 3),
        "p99_ms": round(late[int(len(late) * 0.99)], 3),
        "max_ms": round(late[-1], 3),
    }


async def loop_work_rate(until: asyncio.Future[object]) -> float:
    """Chunks of ~20 µs of Python work the loop gets done per second until ``until``.

    Stands in for the SFU's per-packet work: what a remux running beside
    the loop takes away from it (the GIL) shows here, not in sleep lateness.
    """
    chunks = 0
    start = time.perf_counter()
    while not until.done():
        for _ in range(4):
            sum(range(100))
        chunks += 1
        await asyncio.sleep(0)
    return chunks / (time.perf_counter() - start)


async def work_rates(path: str) -> dict[str, float]:
    """The loop's work rate idle, beside a remux in a thread, beside one in a child."""
    idle = await loop_work_rate(asyncio.ensure_future(asyncio.sleep(1.0)))
    thread = await loop_work_rate(asyncio.ensure_future(asyncio.to_thread(remux, path)))
    child = await loop_work_rate(asyncio.ensure_future(remux_in_subprocess(path)))
    return {
        "idle_chunks_per_s": round(idle),
        "beside_remux_thread_ratio_to_idle": round(thread / idle, 3),
        "beside_remux_subprocess_ratio_to_idle": round(child / idle, 3),
    }


async def bench_finalize(directory: str, codec: str, seconds: float) -> dict[str, object]:
    tracks = participant("contact:C1", codec, 10_000_000, seconds, 1)
    tracks += participant("device:K1", codec, 11_000_000, seconds - 1, 3)
    recorder = Recorder(directory, f"bench-{codec}", "social", max_buffered_bytes=1 << 30)
    feed = CallFeed(recorder, tracks)
    origin = 10_000_000
    for step in range(int(seconds) + 2):
        feed.feed(origin + step * 1_000_000)
        await asyncio.sleep(0)
    start = time.perf_counter()
    status = await recorder.close()
    close_s = time.perf_counter() - start
    assert status.complete, status

    idle = asyncio.get_running_loop().create_task(asyncio.sleep(2.0))
    idle_lateness = await ticker_lateness(idle)

    start = time.perf_counter()
    child = asyncio.ensure_future(remux_in_subprocess(status.path))
    child_lateness = await ticker_lateness(child)
    result = child.result()
    subprocess_s = time.perf_counter() - start

    start = time.perf_counter()
    threaded = asyncio.ensure_future(asyncio.to_thread(remux, status.path))
    thread_lateness = await ticker_lateness(threaded)
    thread_s = time.perf_counter() - start
    assert threaded.result().sha256 == result.sha256

    start = time.perf_counter()
    remux(status.path)
    inline_s = time.perf_counter() - start

    finalize_s = close_s + subprocess_s
    return {
        "call_s": seconds,
        "participants": 2,
        "record_mb": round(status.bytes_written / 1e6, 2),
        "output_mb": round(os.path.getsize(result.path) / 1e6, 2),
        "frames": {f"{t.participant} {t.kind}": t.frames for t in result.tracks},
        "close_s": round(close_s, 3),
        "remux_subprocess_s": round(subprocess_s, 3),
        "finalize_s": round(finalize_s, 3),
        "finalize_to_call_ratio": round(finalize_s / seconds, 4),
        "remux_in_thread_s": round(thread_s, 3),
        "remux_blocking_s": round(inline_s, 3),
        "loop_lateness": {
            "idle": idle_lateness,
            "remux_subprocess": child_lateness,
            "remux_thread": thread_lateness,
        },
        "loop_work": await work_rates(status.path),
    }


async def run(arguments: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="parlor-bench-recording-") as directory:
        sample = participant("contact:C1", "VP8", 10_000_000, 3, 1)
        packets = [p for _, p in sample[0].packets] + [p for _, p in sample[1].packets]
        packets = (packets * (arguments.tap_packets // len(packets) + 1))[: arguments.tap_packets]
        tap = await bench_tap(directory, packets, arguments.rounds)
        streams = [
            participant(
                f"contact:C{n}", "VP8", 10_000_000 + n * 1000, arguments.realtime_seconds, n
            )
            for n in range(arguments.streams)
        ]
        writer = await bench_writer(directory, streams, arguments.realtime_seconds)
        finalize = {
            codec: await bench_finalize(directory, codec, arguments.seconds)
            for codec in arguments.codecs
        }
    return {"tap": tap, "writer": writer, "finalize": finalize}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="call length for finalize")
    parser.add_argument("--codecs", nargs="+", default=["VP8", "H264"])
    parser.add_argument("--streams", type=int, default=4, help="participants fed in real time")
    parser.add_argument("--realtime-seconds", type=float, default=10)
    parser.add_argument("--tap-packets", type=int, default=5000, help="packets per tap round")
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    result = {
        "machine": {
            "python": platform.python_version(),
            "aiortc": aiortc.__version__,
            "av": av.__version__,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        **asyncio.run(run(arguments)),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

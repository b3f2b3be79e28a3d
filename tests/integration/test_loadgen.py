"""The load generator against a real node: every simulated participant receives media, and a
directive cuts exactly the participants it matches while the others keep receiving.

A short, bounded run (10 calls, two worker processes, ~10 s): the node runs in the test's
process (``tests.conftest.start_server``), the participants in ``signaling.loadgen`` worker
processes, over real WebSockets and real peer connections on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signaling.loadgen import LoadFleet, seed_roster, summarize
from signaling.loadmedia import VideoSpec, load_media
from tests.conftest import make_config, start_server, stop_server

LAYOUT = {"F-KEEP": 6, "F-CUT": 4}
HOLD = 3.0
AFTER = 2.0
"""Seconds after the directive's answer that are read: the cut receive nothing in them."""
QUIET_FROM = 0.5
"""...from this long after the answer on (packets already in a socket's buffer may still be
read just after it, on a busy machine)."""


@pytest.fixture
async def node(tmp_path: Path):
    server = await start_server(make_config(tmp_path))
    try:
        yield server
    finally:
        await stop_server(server)


async def test_load_generator_counts_media_and_a_directive_cuts_exactly_its_calls(
    node, tmp_path: Path
) -> None:
    media = load_media(VideoSpec.parse("160x120@10"), 20, cache=tmp_path)
    media.save(tmp_path / "media.json")
    roster = await seed_roster(node.url, node.token(), LAYOUT)
    assert len(roster) == 10
    fleet = await LoadFleet.start(
        node.url, 2, tmp_path / "media.json", lifetime=120, ice_addresses=["127.0.0.1"]
    )
    try:
        joined = await fleet.join(roster, timeout=45)
        assert joined["connected"] == 20, joined["failures"]
        assert joined["refusals"] == {}
        waited = await fleet.wait_media(timeout=30)
        assert waited["receiving"] == 20, waited["missing"]

        hold_from = time.monotonic()
        await asyncio.sleep(HOLD)
        records, workers = await fleet.report(since=hold_from)
        held = summarize(records, hold_from, time.monotonic())
        assert held["receiving_audio_and_video"] == 20
        for record in records:  # each participant receives its peer's audio and video
            assert record["packets"]["audio"] > 0 and record["packets"]["video"] > 0, record
            assert record["sent"]["audio"] > 0 and record["sent"]["video"] > 0, record
        assert all(w["cpu_s"] > 0 for w in workers)

        status, directive = await node.api(
            "POST",
            "/api/v1/directives",
            {"scope": "facility:F-CUT", "action": "suspend", "reason": "load test",
             "legal_basis": "test", "expires_at": _in(3600)},
        )  # fmt: skip
        answered = time.monotonic()
        assert status == 201, directive
        await asyncio.sleep(AFTER)
        read_at = time.monotonic()
        records, _ = await fleet.report(since=answered)
    finally:
        await fleet.leave()
        await fleet.stop()

    cut = {call.index for call in roster if call.facility == "F-CUT"}
    assert len(records) == 20
    for record in records:
        arrivals = record["arrivals"]
        late = [
            t for kind in ("audio", "video") for t in arrivals[kind] if t > answered + QUIET_FROM
        ]
        if record["call"] in cut:
            assert record["terminated_directive"] == directive["id"], record
            assert record["close_code"] == 4403, record
            assert late == [], f"{record['role']} of call {record['call']} still receives"
        else:
            assert record["terminated_directive"] is None and not record["closed"], record
            for kind in ("audio", "video"):  # still receiving at the end of the window
                assert record["last"][kind] >= read_at - 1.0, (kind, record["last"])


def _in(seconds: float) -> str:
    from policy.rfc3339 import format_time

    return format_time(time.time() + seconds)


async def test_parlor_load_holds_calls_and_reports_json(node) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling.cli", "load", "--server", node.url,
        "--token", node.token(), "--calls", "2", "--seconds", "2", "--processes", "1", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-2000:]
    report = json.loads(out)
    assert report["joined"] == "4/4"
    assert report["held"]["receiving_audio_and_video"] == 4
    assert report["held"]["packets_per_second"]["audio"]["p1"] > 25  # 20 ms Opus: 50 a second
    assert report["generator_cpu"]["per_participant_percent_of_a_core"] > 0
    assert report["media"]["audio"] == "Opus 20 ms packets"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--calls", "0"], "--calls must be 1..500"),
        (["--seconds", "0"], "--seconds must be"),
        (["--video", "640x480"], "--video: video must look like"),
        (["--processes", "99"], "--processes must be 1..16"),
    ],
)
def test_parlor_load_refuses_bad_flags_in_one_line(flags: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "signaling.cli", "load", "--server", "http://127.0.0.1:9", "--token", "t", *flags],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr

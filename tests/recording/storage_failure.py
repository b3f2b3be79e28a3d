"""Record a call into a directory whose storage fails; print what happened (JSON).

Run as a separate process by test_recorder.py, on storage that fails for
real: ``small-disk`` expects DIR on a tiny tmpfs (ENOSPC), ``file-size``
sets RLIMIT_FSIZE so that writes past 200 kB fail with EFBIG (a write
error that needs no privileges). The call is fed in two parts with the
event loop running in between, so the writer hits the failure while taps
keep coming.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys

from relay.recorder import Recorder, RecordingStatus
from tests.harness.encoded_media import CallFeed
from tests.recording.conftest import A_START_US, two_party_call

FILE_SIZE_LIMIT = 200_000


async def run(directory: str) -> dict[str, object]:
    tracks = two_party_call("VP8")
    reports: list[RecordingStatus] = []
    recorder = Recorder(directory, "V-1", "social", on_incomplete=reports.append)
    feed = CallFeed(recorder, tracks)
    feed.feed(A_START_US + 2_000_000)
    for _ in range(100):  # until the writer met the failure (bounded: 10 s)
        await asyncio.sleep(0.1)
        if reports:
            break
    failed = recorder.status
    feed.feed()  # the rest of the call: taps after the failure
    await asyncio.sleep(0.3)
    closed = await recorder.close()
    return {
        "reports": [report.reason for report in reports],
        "report_detail": reports[0].detail if reports else None,
        "failed": {"complete": failed.complete, "reason": failed.reason},
        "closed": {
            "complete": closed.complete,
            "reason": closed.reason,
            "dropped_packets": closed.dropped_packets,
            "packets_written": closed.packets_written,
            "bytes_written": closed.bytes_written,
            "closed": closed.closed,
        },
        "tapped": feed.packets,
        "files": sorted(os.listdir(directory)),
        "file_size": os.path.getsize(recorder.path) if os.path.exists(recorder.path) else None,
    }


def main() -> None:
    mode, directory = sys.argv[1], sys.argv[2]
    if mode == "file-size":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    print(json.dumps(asyncio.run(run(directory))))


if __name__ == "__main__":
    main()

"""The recorder while a call runs: what it writes, what it refuses, how it fails."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from relay.recorder import (
    DISK_FULL,
    WRITE_ERROR,
    WRITER_BEHIND,
    Recorder,
    RecordingRefused,
    RecordingStatus,
)
from relay.recordfile import CALL, END, MAGIC, RTP, SR, TRACK, RecordReader
from relay.remux import remux
from tests.harness.encoded_media import CallFeed, SentTrack
from tests.harness.rtp_packets import rtp_packet
from tests.recording.conftest import decode, record

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("storage_failure.py")


def records(path: str) -> tuple[RecordReader, list[tuple[int, int, int, bytes]]]:
    with open(path, "rb") as file:
        reader = RecordReader(file)
        return reader, list(reader)


def recorder_threads(visit_id: str) -> list[str]:
    """Writer threads of recordings of ``visit_id`` (other tests' recorders use other ids)."""
    return [t.name for t in threading.enumerate() if t.name == f"recorder {visit_id}"]


@pytest.mark.parametrize(
    "kind", ["privileged", "attorney", "clergy", "Social", "social ", "", None, 1, "unknown"]
)
async def test_only_social_visits_can_be_recorded(kind: object, tmp_path: Path) -> None:
    with pytest.raises(RecordingRefused) as raised:
        Recorder(tmp_path, "V-refused", kind)  # type: ignore[arg-type]
    assert raised.value.code == "recording-refused"
    await asyncio.sleep(0.05)
    assert list(tmp_path.iterdir()) == []
    assert recorder_threads("V-refused") == []


async def test_a_privileged_visit_leaves_nothing_whatever_else_is_given(tmp_path: Path) -> None:
    """The refusal comes first: even a bad visit id or options do not get further."""
    with pytest.raises(RecordingRefused):
        Recorder(tmp_path, "../../etc/passwd", "privileged", max_buffered_bytes=-1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("visit_id", ["", "../V-1", "a/b", "V 1", ".hidden", "x" * 65, 7])
async def test_a_visit_id_that_cannot_name_a_file_is_refused(
    visit_id: object, tmp_path: Path
) -> None:
    with pytest.raises(ValueError):
        Recorder(tmp_path, visit_id, "social")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


async def test_the_record_file_holds_the_call_in_arrival_order(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        recorder = Recorder(tmp_path, "V-order", "social", clock_us=lambda: 5)
    finally:
        os.umask(old_umask)
    audio = recorder.track("contact:C1", "audio", "opus", 48000, 111)
    video = recorder.track("contact:C1", "video", "vp8", 90000, 96)
    first = bytearray(rtp_packet(payload_type=111, sequence_number=1, payload=b"\xfc\x01"))
    audio(first, 1000)
    first[12] = 0  # the SFU rewrites its buffer after the tap: the recording keeps the original
    video(memoryview(rtp_packet(sequence_number=7)), 1010)
    video.sender_report(0x11223344, 0xE000_0000_8000_0000, 90000, 1020)
    status = await recorder.close()

    assert re.fullmatch(r"V-order-[0-9a-f]{16}\.rec", Path(status.path).name)
    assert [p.name for p in tmp_path.iterdir()] == [Path(status.path).name]
    assert os.stat(status.path).st_mode & 0o777 == 0o600
    assert Path(status.path).read_bytes().startswith(MAGIC)
    reader, items = records(status.path)
    assert [(t, track) for t, track, _, _ in items] == [
        (CALL, 0),
        (TRACK, 1),
        (TRACK, 2),
        (RTP, 1),
        (RTP, 2),
        (SR, 2),
        (END, 0),
    ]
    assert items[3][2:] == (
        1000,
        rtp_packet(payload_type=111, sequence_number=1, payload=b"\xfc\x01"),
    )
    assert items[4][2:] == (1010, rtp_packet(sequence_number=7))
    assert reader.call is not None and reader.call.visit == "V-order"
    assert reader.call.started_clock_us == 5
    assert reader.tracks[2].codec == "VP8" and reader.tracks[1].codec == "opus"
    assert reader.end is not None and reader.end.complete
    assert json.loads(items[-1][3])["packets"] == 2
    assert status.complete and status.closed and status.packets_written == 2
    assert status.sha256 is not None and len(status.sha256) == 64
    assert status.bytes_written == os.path.getsize(status.path)
    for _ in range(100):  # the writer reports, then its thread returns
        if not recorder_threads("V-order"):
            break
        await asyncio.sleep(0.01)
    assert recorder_threads("V-order") == []


async def test_a_padding_only_packet_is_kept_as_its_header(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "V-1", "social")
    tap = recorder.track("contact:C1", "video", "VP8", 90000, 96)
    probe = rtp_packet(sequence_number=9, extensions=[(3, b"\x00\x01")], payload=b"", padding=200)
    padded_media = rtp_packet(sequence_number=10, padding=4)
    tap(probe, 1)
    tap(padded_media, 2)
    tap(b"\xa0", 3)  # P bit, no header: malformed, dropped
    status = await recorder.close()

    _, items = records(status.path)
    assert [body for kind, _, _, body in items if kind == RTP] == [
        b"\x80" + probe[1:12],
        padded_media,
    ]
    assert status.dropped_packets == 1


async def test_bad_track_descriptions_are_refused_with_a_reason(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "V-1", "social")
    for arguments in [
        ("contact:C1", "audio", "PCMU", 8000, 0),
        ("contact:C1", "video", "VP9", 90000, 98),
        ("contact:C1", "screen", "VP8", 90000, 96),
        ("contact:C1", "video", "VP8", 0, 96),
        ("contact:C1", "video", "VP8", 90000, 128),
        ("", "video", "VP8", 90000, 96),
    ]:
        with pytest.raises(ValueError):
            recorder.track(*arguments)
    await recorder.close()


async def test_after_close_taps_do_nothing_and_close_can_be_repeated(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, "V-1", "social")
    tap = recorder.track("contact:C1", "audio", "opus", 48000, 111)
    first = await recorder.close()
    tap(rtp_packet(payload_type=111), 1)
    second = await recorder.close()
    assert second == first and first.packets_written == 0
    assert recorder.status.dropped_packets == 1


def _start_of_writer(visit_id: str, monkeypatch: pytest.MonkeyPatch, instead) -> None:  # type: ignore[no-untyped-def]
    """Make ``instead(thread, start)`` start the writer thread of ``visit_id``'s recorder."""
    start = threading.Thread.start

    def patched(thread: threading.Thread) -> None:
        if thread.name == f"recorder {visit_id}":
            return instead(thread, start)
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", patched)


async def test_starting_a_recording_does_not_wait_for_its_writer_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thread.start() returns only once the new thread runs, a scheduler slice on a busy
    machine: the event loop must not wait for it. Here the writer takes a second to start;
    the recorder is made at once, and what was tapped meanwhile is written."""

    def slowly(thread: threading.Thread, start) -> None:  # type: ignore[no-untyped-def]
        threading.Event().wait(1.0)
        start(thread)

    _start_of_writer("V-slow", monkeypatch, slowly)
    made = asyncio.get_running_loop().time()
    recorder = Recorder(tmp_path, "V-slow", "social")
    made = asyncio.get_running_loop().time() - made
    tap = recorder.track("contact:C1", "audio", "opus", 48000, 111)
    for sequence in range(20):
        tap(rtp_packet(payload_type=111, sequence_number=sequence), sequence)
    assert made < 0.5, f"making the recorder waited {made:.2f} s for its writer"
    assert recorder.status.packets_written == 0  # the writer has not run yet
    closed = await recorder.close()
    assert closed.complete and closed.packets_written == 20


async def test_a_writer_that_cannot_start_makes_the_recording_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(thread: threading.Thread, start) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("can't start new thread")

    _start_of_writer("V-nothread", monkeypatch, refused)
    reports: list[RecordingStatus] = []
    recorder = Recorder(tmp_path, "V-nothread", "social", on_incomplete=reports.append)
    tap = recorder.track("contact:C1", "audio", "opus", 48000, 111)
    tap(rtp_packet(payload_type=111), 1)
    closed = await asyncio.wait_for(recorder.close(), 5)
    assert not closed.complete and closed.reason == WRITE_ERROR
    assert "could not start" in (closed.detail or "")
    assert closed.packets_written == 0 and [r.reason for r in reports] == [WRITE_ERROR]
    assert list(tmp_path.iterdir()) == []


async def test_a_writer_that_falls_behind_makes_the_recording_incomplete_not_the_tap_wait(
    vp8_call: list[SentTrack], tmp_path: Path
) -> None:
    """The writer does not drain for the length of the test (its flush interval is
    a minute), as if stuck on its storage: the queue fills, the taps give up."""
    reports: list[RecordingStatus] = []
    recorder = Recorder(
        tmp_path,
        "V-1",
        "social",
        on_incomplete=reports.append,
        max_buffered_bytes=200_000,
        flush_interval=60,
    )
    feed = CallFeed(recorder, vp8_call)
    feed.feed()  # ~670 kB of media, in one go: the taps return while nothing is written
    during = recorder.status
    # The writer wrote no record meanwhile (at most the magic, if it opened the file).
    assert during.packets_written == 0 and during.bytes_written <= len(MAGIC)
    assert not during.complete and during.reason == WRITER_BEHIND
    assert during.dropped_packets > 0
    await asyncio.sleep(0.05)
    assert [r.reason for r in reports] == [WRITER_BEHIND]

    closed = await recorder.close()

    assert [r.reason for r in reports] == [WRITER_BEHIND]  # once
    assert closed.packets_written + closed.dropped_packets == feed.packets
    result = remux(closed.path)
    assert not result.complete and result.reason == WRITER_BEHIND
    assert decode(result.path)["contact:C1 video"].frames > 0


async def test_a_missing_directory_is_an_incomplete_recording_not_an_error(
    tmp_path: Path,
) -> None:
    reports: list[RecordingStatus] = []
    recorder = Recorder(tmp_path / "absent", "V-1", "social", on_incomplete=reports.append)
    tap = recorder.track("contact:C1", "audio", "opus", 48000, 111)
    for sequence in range(10):
        tap(rtp_packet(payload_type=111, sequence_number=sequence), sequence)
    closed = await recorder.close()
    assert [r.reason for r in reports] == [WRITE_ERROR]
    assert not closed.complete and closed.reason == WRITE_ERROR
    assert closed.packets_written == 0 and closed.sha256 is None


def _storage_failure(mode: str, directory: Path, *, tmpfs: bool = False) -> dict:
    """Run storage_failure.py; with ``tmpfs``, on a 256 kB tmpfs mounted in its own namespace."""
    command = [sys.executable, str(SCRIPT), mode, str(directory)]
    if tmpfs:
        mount = f"mount -t tmpfs -o size=256k,mode=0700 tmpfs {shlex.quote(str(directory))}"
        command = ["unshare", "-m", "sh", "-c", f"{mount} && exec {shlex.join(command)}"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _can_mount_tmpfs(directory: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    mount = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(directory))}"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True, timeout=10)
    return probe.returncode == 0


def test_a_full_disk_keeps_the_taps_going_and_marks_the_recording(tmp_path: Path) -> None:
    """A 256 kB tmpfs in a private mount namespace: ENOSPC for real."""
    directory = tmp_path / "small"
    directory.mkdir()
    if not _can_mount_tmpfs(directory):
        pytest.skip("needs root and unshare to mount a private tmpfs")

    outcome = _storage_failure("small-disk", directory, tmpfs=True)

    assert outcome["reports"] == [DISK_FULL]
    assert outcome["report_detail"] == "No space left on device"
    assert outcome["failed"] == {"complete": False, "reason": DISK_FULL}
    closed = outcome["closed"]
    assert closed["closed"] and not closed["complete"] and closed["reason"] == DISK_FULL
    assert closed["dropped_packets"] > 0
    assert closed["packets_written"] + closed["dropped_packets"] <= outcome["tapped"]
    assert len(outcome["files"]) == 1
    assert 200_000 < outcome["file_size"] <= 256 * 1024
    assert list(directory.iterdir()) == []  # the tmpfs went with its namespace


def test_a_write_error_keeps_the_taps_going_and_marks_the_recording(tmp_path: Path) -> None:
    """RLIMIT_FSIZE: writes past 200 kB fail with EFBIG, a write error but not a full disk."""
    outcome = _storage_failure("file-size", tmp_path)

    assert outcome["reports"] == [WRITE_ERROR]
    assert outcome["report_detail"] == "File too large"
    closed = outcome["closed"]
    assert not closed["complete"] and closed["reason"] == WRITE_ERROR
    assert closed["dropped_packets"] > 0
    assert outcome["file_size"] == 200_000
    # What was written before the failure still plays.
    result = remux(tmp_path / outcome["files"][0])
    assert not result.complete and result.reason == "truncated"
    assert decode(result.path)["contact:C1 video"].frames > 0


async def test_the_incomplete_report_comes_on_the_loop_once(tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    recorder = Recorder(
        tmp_path / "absent",
        "V-1",
        "social",
        on_incomplete=lambda s: seen.append(threading.get_ident()),
    )
    await recorder.close()
    assert seen == [loop_thread]


async def test_recording_a_call_end_to_end(vp8_call: list[SentTrack], tmp_path: Path) -> None:
    status = await record(tmp_path, vp8_call)
    reader, items = records(status.path)
    assert status.packets_written == sum(len(t.packets) for t in vp8_call)
    assert sum(1 for item in items if item[0] == SR) == sum(len(t.sender_reports) for t in vp8_call)
    assert len(reader.tracks) == 4

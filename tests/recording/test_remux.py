"""A recorded call made playable, checked by decoding the file (PyAV and GStreamer)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from relay.recordfile import RecordReader
from relay.remux import OPUS_HEAD, TRUNCATED, RemuxError, remux, remux_in_subprocess
from tests.harness.encoded_media import SentTrack, audio_track, is_padding_only, video_track
from tests.harness.gstreamer import SYSTEM_PYTHON
from tests.harness.system import require
from tests.recording.conftest import B_START_US, decode, record, recorded

REPO = Path(__file__).resolve().parents[2]

GST_PLAYER = Path(__file__).resolve().parents[1] / "harness" / "gst_player.py"
A_VIDEO, A_AUDIO = "contact:C1 video", "contact:C1 audio"
B_VIDEO, B_AUDIO = "device:K1 video", "device:K1 audio"


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_a_two_party_visit_plays_back_aligned_by_wall_clock(
    codec: str, vp8_call: list[SentTrack], h264_call: list[SentTrack], tmp_path: Path
) -> None:
    call = vp8_call if codec == "VP8" else h264_call
    status = recorded(tmp_path, call)
    assert status.complete and status.closed

    result = remux(status.path)

    suffix = ".webm" if codec == "VP8" else ".mkv"
    assert result.path == status.path.removesuffix(".rec") + suffix
    assert result.container == ("webm" if codec == "VP8" else "matroska")
    assert result.complete and result.reason is None
    assert result.sha256 == sha256(result.path)
    assert os.stat(result.path).st_mode & 0o777 == 0o600
    decoded = decode(result.path)
    assert set(decoded) == {A_VIDEO, A_AUDIO, B_VIDEO, B_AUDIO}
    a_video, a_audio, b_video, b_audio = call
    assert decoded[A_VIDEO].frames == a_video.frames == 120
    assert decoded[B_VIDEO].frames == b_video.frames == 90
    assert abs(decoded[A_AUDIO].samples / 48000 - a_audio.samples / 48000) < 0.05
    assert abs(decoded[B_AUDIO].samples / 48000 - b_audio.samples / 48000) < 0.05
    # A starts the timeline; B, who joined a second later, starts at 1 s.
    assert decoded[A_VIDEO].pts[0] == pytest.approx(0, abs=0.03)
    assert decoded[A_AUDIO].pts[0] == pytest.approx(0, abs=0.03)
    assert decoded[B_VIDEO].pts[0] == pytest.approx(1.0, abs=0.03)
    assert decoded[B_AUDIO].pts[0] == pytest.approx(1.0, abs=0.03)
    assert decoded[B_VIDEO].pts[-1] == pytest.approx(1.0 + 89 / 30, abs=0.03)
    by_title = {f"{t.participant} {t.kind}": t for t in result.tracks}
    assert by_title[B_VIDEO].start_us == pytest.approx(1_000_000, abs=30_000)
    assert by_title[A_VIDEO].duration_us == pytest.approx(4_000_000, abs=50_000)
    assert all(t.aligned_by == "sender-report" for t in result.tracks)
    # The timeline's 0 is A's first frame: one second after the recorder started.
    with open(status.path, "rb") as file:
        reader = RecordReader(file)
        next(iter(reader))
    assert reader.call is not None
    assert result.origin_unix_us == pytest.approx(
        reader.call.started_unix_us + 1_000_000, abs=30_000
    )


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_the_output_carries_what_players_need(
    codec: str, vp8_call: list[SentTrack], h264_call: list[SentTrack], tmp_path: Path
) -> None:
    status = recorded(tmp_path, vp8_call if codec == "VP8" else h264_call)
    result = remux(status.path)

    with av.open(result.path) as container:
        audio = container.streams.audio
        assert [s.codec_context.extradata for s in audio] == [OPUS_HEAD, OPUS_HEAD]
        assert OPUS_HEAD == bytes.fromhex("4f707573486561640102380180bb0000000000")
        for stream in container.streams.video:
            assert (stream.codec_context.width, stream.codec_context.height) == (320, 240)
            if codec == "H264":
                assert stream.codec_context.extradata[0] == 1  # avcC, not Annex B
        assert container.metadata["PARLOR_VISIT"] == "V-1"
        assert container.metadata["PARLOR_ORIGIN_UNIX_US"] == str(result.origin_unix_us)


@require("gstreamer")
def test_gstreamer_plays_every_track(vp8_call: list[SentTrack], tmp_path: Path) -> None:
    """A second, independent player: GStreamer's matroskademux, vp8dec and opusdec."""
    status = recorded(tmp_path, vp8_call)
    result = remux(status.path)

    played = subprocess.run(
        [str(SYSTEM_PYTHON), str(GST_PLAYER), result.path],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    streams = json.loads(played.stdout)
    video = sorted(s["buffers"] for s in streams if s["kind"] == "video")
    audio = sorted(s["seconds"] for s in streams if s["kind"] == "audio")
    assert video == [90, 120]
    assert audio == [pytest.approx(3.0, abs=0.05), pytest.approx(4.0, abs=0.05)]


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_lost_packets_skip_to_the_next_keyframe(codec: str, tmp_path: Path) -> None:
    """Frame 45 loses its first packet: it and every frame up to the next keyframe go.

    The encoder is asked for a keyframe at 60 (what the relay's PLI would
    get); aiortc's H264 encoder also makes some of its own.
    """
    video = video_track(
        "contact:C1",
        codec,
        start_us=10_000_000,
        seconds=4,
        keyframe_at=(60,),
        drop=frozenset({(45, 0)}),
    )
    lost_audio = frozenset(range(50, 55))
    audio = audio_track("contact:C1", start_us=10_000_000, seconds=4, drop=lost_audio)
    status = recorded(tmp_path, [video, audio])

    result = remux(status.path)

    decoded = decode(result.path)
    resume = min(k for k in video.keyframes if k > 45)
    assert resume <= 60
    lost = resume - 45
    assert decoded[A_VIDEO].frames == 120 - lost
    gap = [b - a for a, b in zip(decoded[A_VIDEO].pts, decoded[A_VIDEO].pts[1:], strict=False)]
    assert max(gap) == pytest.approx((lost + 1) / 30, abs=0.01)
    assert decoded[A_VIDEO].pts[45] == pytest.approx(resume / 30, abs=0.01)
    track = next(t for t in result.tracks if t.kind == "video")
    assert (track.frames, track.dropped_frames, track.skipped_frames) == (120 - lost, 1, lost - 1)
    assert decoded[A_AUDIO].frames == 200 - 5
    audio_gap = [
        b - a for a, b in zip(decoded[A_AUDIO].pts, decoded[A_AUDIO].pts[1:], strict=False)
    ]
    assert max(audio_gap) == pytest.approx(0.12, abs=0.005)
    assert result.complete  # network loss is what was forwarded, not a recording failure


def test_sender_reports_keep_a_participants_audio_and_video_in_sync(tmp_path: Path) -> None:
    """B's video reaches the relay 200 ms after its audio, all along the call.

    With B's sender reports both start at 1 s, as B captured them; placed by
    arrival alone, the video would be 200 ms late.
    """

    def call(reports: bool) -> list[SentTrack]:
        every = 1_000_000 if reports else None
        return [
            audio_track("contact:C1", start_us=10_000_000, seconds=3, sender_report_every_us=every),
            video_track(
                "device:K1",
                "VP8",
                start_us=B_START_US,
                seconds=2,
                delay_us=220_000,
                sender_report_every_us=every,
                sender_clock_offset_us=-3_600_000_000,
            ),
            audio_track(
                "device:K1",
                start_us=B_START_US,
                seconds=2,
                seed=5,
                sender_report_every_us=every,
                sender_clock_offset_us=-3_600_000_000,
            ),
        ]

    (tmp_path / "sr").mkdir()
    (tmp_path / "arrival").mkdir()
    with_reports = decode(remux((recorded(tmp_path / "sr", call(True))).path).path)
    by_arrival = decode(remux((recorded(tmp_path / "arrival", call(False))).path).path)

    assert with_reports[B_VIDEO].pts[0] == pytest.approx(1.0, abs=0.02)
    assert with_reports[B_AUDIO].pts[0] == pytest.approx(1.0, abs=0.02)
    assert by_arrival[B_VIDEO].pts[0] == pytest.approx(1.2, abs=0.02)
    assert by_arrival[B_AUDIO].pts[0] == pytest.approx(1.0, abs=0.02)


def test_the_same_recording_always_gives_the_same_file(
    vp8_call: list[SentTrack], tmp_path: Path
) -> None:
    status = recorded(tmp_path, vp8_call)
    first = remux(status.path)
    second = remux(status.path)
    assert first.sha256 == second.sha256 == sha256(second.path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        [Path(status.path).name, Path(first.path).name]
    )


def test_a_record_file_cut_short_still_plays_and_says_so(
    vp8_call: list[SentTrack], tmp_path: Path
) -> None:
    status = recorded(tmp_path, vp8_call)
    cut = tmp_path / "cut" / "V-1-cut.rec"
    cut.parent.mkdir()
    data = Path(status.path).read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10 + 7])  # mid-record

    result = remux(cut)

    assert not result.complete and result.reason == TRUNCATED
    decoded = decode(result.path)
    assert set(decoded) == {A_VIDEO, A_AUDIO, B_VIDEO, B_AUDIO}
    assert 40 < decoded[A_VIDEO].frames < 120


async def test_remux_in_a_subprocess_gives_the_same_result(
    vp8_call: list[SentTrack], tmp_path: Path
) -> None:
    status = await record(tmp_path, vp8_call)
    here = remux(status.path)

    there = await remux_in_subprocess(status.path)

    assert there == here


async def test_what_is_not_a_recording_is_a_clear_error(tmp_path: Path) -> None:
    not_a_recording = tmp_path / "V-1-x.rec"
    with open(not_a_recording, "wb") as file:
        file.write(b"RIFF....WAVEfmt ")
    with pytest.raises(RemuxError) as raised:
        remux(not_a_recording)
    assert raised.value.code == "unreadable"
    with pytest.raises(RemuxError) as raised:
        await remux_in_subprocess(not_a_recording)
    assert raised.value.code == "unreadable"


def test_a_recording_without_media_is_a_clear_error(tmp_path: Path) -> None:
    empty = recorded(tmp_path, [])
    with pytest.raises(RemuxError) as raised:
        remux(empty.path)
    assert raised.value.code == "no-media"
    assert [p.name for p in tmp_path.iterdir()] == [Path(empty.path).name]


def test_a_video_track_without_a_keyframe_is_left_out(tmp_path: Path) -> None:
    video = video_track(
        "contact:C1", "VP8", start_us=10_000_000, seconds=1, drop=frozenset({(0, 0)})
    )
    audio = audio_track("contact:C1", start_us=10_000_000, seconds=1)
    result = remux((recorded(tmp_path, [video, audio])).path)
    assert [t.kind for t in result.tracks] == ["audio"]
    assert set(decode(result.path)) == {A_AUDIO}


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_padding_probes_are_not_losses(codec: str, tmp_path: Path) -> None:
    """Probes after frames 30-34 take sequence numbers; tapped, they cost no frame."""
    video = video_track(
        "contact:C1", codec, start_us=10_000_000, seconds=2, padding_after=frozenset(range(30, 35))
    )
    assert sum(is_padding_only(p) for _, p in video.packets) == 5

    result = remux(recorded(tmp_path, [video]).path)

    assert decode(result.path)[A_VIDEO].frames == 60
    assert result.tracks[0].skipped_frames == 0


def test_vp8_picture_ids_bridge_probes_a_relay_did_not_tap(tmp_path: Path) -> None:
    """A relay that drops padding before the tap leaves holes in the sequence numbers;
    VP8's PictureID shows no frame is missing. (H264 has no such number: the SFU must
    tap padding, see TrackTap.)"""
    video = video_track(
        "contact:C1", "VP8", start_us=10_000_000, seconds=2, padding_after=frozenset(range(30, 35))
    )
    video.packets = [(a, p) for a, p in video.packets if not is_padding_only(p)]

    result = remux(recorded(tmp_path, [video]).path)

    assert decode(result.path)[A_VIDEO].frames == 60


def test_the_remux_child_yields_the_cpu_before_it_imports_anything_heavy() -> None:
    """remux_in_subprocess's child lowers its priority (and is SCHED_IDLE where Linux has it)
    in its first statements, before relay, aiortc and av are imported."""
    from relay.remux import YIELD_FIRST

    script = YIELD_FIRST + (
        "print('niceness', os.nice(0), 'idle', os.sched_getscheduler(0) == os.SCHED_IDLE, "
        "'heavy', 'av' in sys.modules or 'relay' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "7"], capture_output=True, text=True, timeout=60
    )
    assert f"niceness {min(19, os.nice(0) + 7)} idle True heavy False" in done.stdout, done


def test_the_remux_child_yields_the_cpu_to_live_calls(tmp_path: Path) -> None:
    """`--nice` (for a remux run by hand) lowers the process's priority before work."""
    script = (
        "import os, sys; from relay.remux import main; "
        "code = main(sys.argv[1:]); print('niceness', os.nice(0), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "--nice", "7", str(tmp_path / "missing.rec")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    base = os.nice(0)
    assert f"niceness {min(19, base + 7)}" in done.stderr, done.stderr

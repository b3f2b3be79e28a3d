"""The load generator's pre-packetized media: RFC 7741 payloads the relay reads as it reads a
browser's, keyframes where the loop says, and the flags a run is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.payload import vp8_is_keyframe, vp8_starts_frame
from signaling.loadmedia import MAX_PAYLOAD, LoadMedia, VideoSpec, load_media, vp8_payloads


def test_a_frame_is_split_evenly_behind_descriptors_with_its_picture_id() -> None:
    frame = bytes(range(256)) * 10  # 2560 bytes: three packets
    payloads = vp8_payloads(frame, 0x1234)
    assert len(payloads) == 3
    sizes = [len(p) - 4 for p in payloads]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= MAX_PAYLOAD
    assert b"".join(p[4:] for p in payloads) == frame
    assert payloads[0][0] == 0x90 and all(p[0] == 0x80 for p in payloads[1:])  # S only first
    for payload in payloads:
        assert payload[1] == 0x80  # I: a picture id follows
        assert ((payload[2] & 0x7F) << 8 | payload[3]) == 0x1234 and payload[2] & 0x80
    assert vp8_starts_frame(payloads[0], 0, len(payloads[0]))
    assert not vp8_starts_frame(payloads[1], 0, len(payloads[1]))


def test_the_loop_has_keyframes_the_relay_recognises(tmp_path: Path) -> None:
    media = load_media(VideoSpec.parse("160x120@10"), 40, cache=tmp_path)
    assert media.keyframes == (0, 20)  # every 2 s at 10 fps, over a 4 s loop
    for index, frame in enumerate(media.frames):
        first = frame.payloads[0]
        assert vp8_is_keyframe(first, 0, len(first)) == frame.keyframe, index
    assert media.next_keyframe(1) == 20 and media.next_keyframe(21) == 0
    assert len(media.opus) == 1000 // 40 and all(media.opus)
    assert media.describe()["audio"].startswith("Opus 40 ms packets (a browser sends 20 ms")


def test_media_saved_by_a_coordinator_reads_back_the_same(tmp_path: Path) -> None:
    media = load_media(VideoSpec.parse("160x120@10"), 20, cache=tmp_path)
    media.save(tmp_path / "media.json")
    assert LoadMedia.read(tmp_path / "media.json") == media
    assert load_media(VideoSpec.parse("160x120@10"), 20, cache=tmp_path) == media  # the cache


@pytest.mark.parametrize(
    "text", ["160x120", "160x120@0", "161x120@10", "16x12@10", "4000x120@10", "x@", "160x120@31"]
)
def test_a_bad_video_flag_is_refused_with_the_reason(text: str) -> None:
    with pytest.raises(ValueError):
        VideoSpec.parse(text)


def test_an_audio_packet_time_browsers_do_not_use_is_refused() -> None:
    with pytest.raises(ValueError, match="20, 40, 60"):
        load_media(VideoSpec.parse("160x120@10"), 30)

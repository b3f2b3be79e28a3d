"""The record file format read back, and remux on damaged files (fuzzed)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.recordfile import (
    CALL,
    MAGIC,
    RTP,
    TRACK,
    RecordFileError,
    RecordReader,
    encode_record,
    read_records,
)
from relay.remux import RemuxError, remux
from tests.harness.encoded_media import audio_track, video_track
from tests.recording.conftest import recorded

CALL_BODY = b'{"visit":"V-1","started_unix_us":1,"started_clock_us":2}'
TRACK_BODY = (
    b'{"participant":"p","kind":"audio","codec":"opus","clock_rate":48000,"payload_type":111}'
)


def reader_of(*records: bytes) -> tuple[RecordReader, list[tuple[int, int, int, bytes]]]:
    reader = RecordReader(io.BytesIO(MAGIC + b"".join(records)))
    return reader, list(reader)


def test_unknown_records_and_undeclared_tracks_are_skipped() -> None:
    reader, items = reader_of(
        encode_record(CALL, 0, 2, CALL_BODY),
        encode_record(TRACK, 1, 3, TRACK_BODY),
        encode_record(99, 0, 4, b"from a later version"),
        encode_record(RTP, 7, 5, b"packet of no track"),
        encode_record(RTP, 1, 6, b"packet"),
    )
    assert [(t, track) for t, track, _, _ in items] == [(CALL, 0), (TRACK, 1), (99, 0), (RTP, 1)]
    assert reader.skipped == 1 and reader.truncated


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"RIFF", "bad magic"),
        (MAGIC + encode_record(TRACK, 1, 0, TRACK_BODY), "does not start with its CALL"),
        (MAGIC + encode_record(CALL, 0, 0, b"{not json"), "not JSON"),
        (MAGIC + encode_record(CALL, 0, 0, b'{"a": "\xc3("}'), "not UTF-8"),
        (MAGIC + encode_record(CALL, 0, 0, b'{"visit":1}'), "lacks visit"),
        (
            MAGIC
            + encode_record(CALL, 0, 0, CALL_BODY)
            + encode_record(TRACK, 1, 0, TRACK_BODY.replace(b"opus", b"PCMU")),
            "unsupported audio codec",
        ),
        (
            MAGIC
            + encode_record(CALL, 0, 0, CALL_BODY)
            + encode_record(TRACK, 1, 0, TRACK_BODY)
            + encode_record(TRACK, 1, 0, TRACK_BODY),
            "declared twice",
        ),
    ],
)
def test_a_damaged_header_is_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(RecordFileError, match=message) as raised:
        list(RecordReader(io.BytesIO(data)))
    assert raised.value.code == "unreadable"


def test_a_partial_last_record_ends_the_file() -> None:
    whole = encode_record(CALL, 0, 0, CALL_BODY)
    records = list(read_records(io.BytesIO(MAGIC + whole + whole[:20])))
    assert len(records) == 1


@pytest.fixture(scope="module")
def small_recording(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    directory = tmp_path_factory.mktemp("small")
    tracks = [
        video_track("contact:C1", "VP8", start_us=10_000_000, seconds=1, seed=1),
        audio_track("contact:C1", start_us=10_000_000, seconds=1, seed=2),
    ]
    return Path(recorded(directory, tracks).path).read_bytes()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_remux_of_a_damaged_file_plays_what_it_can_or_says_why(
    small_recording: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    damaged = bytearray(small_recording)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        position = data.draw(st.integers(0, len(damaged) - 1), label="position")
        damaged[position] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(len(MAGIC), len(damaged)), label="cut")
    path = tmp_path / "V-1-fuzz.rec"
    path.write_bytes(bytes(damaged[:cut]))
    try:
        result = remux(path)
    except RemuxError as error:
        assert error.code in ("unreadable", "no-media")
    else:
        assert Path(result.path).stat().st_size > 0

"""The record file: one visit's forwarded RTP packets, as the relay saw them.

While a call runs the relay writes only what is cheap: each forwarded RTP
packet as it arrived, with its arrival time, plus the publishers' sender
reports. Janus' ``.mjr`` files are the model; unlike them, one file holds
every track of the call (participants join at different times, so tracks
are declared as they appear), which keeps the tracks on one arrival clock
and one visit in one file. :mod:`relay.remux` turns it into a playable
WebM/Matroska file after the call.

Format (all integers big-endian)::

    file    := MAGIC record*
    MAGIC   := b"PARLOR-RTP-RECORDING 1\\n"
    record  := type:u8 track:u16 length:u16 arrival_us:i64 body[length]

``arrival_us`` is on the relay's arrival clock (the clock of the
``arrival_us`` values the taps are given, monotonic µs); the ``CALL``
record maps that clock to the wall clock. Record types:

* ``CALL`` (1), first in the file, track 0: JSON ``{"visit": id,
  "started_unix_us": µs since 1970, "started_clock_us": the same instant
  on the arrival clock}``.
* ``TRACK`` (2), before the track's first packet: JSON ``{"participant":
  id, "kind": "audio" | "video", "codec": "opus" | "VP8" | "H264",
  "clock_rate": Hz, "payload_type": 0-127}``; track ids start at 1.
* ``RTP`` (3): the RTP packet, plaintext, exactly as forwarded.
* ``SR`` (4): a publisher's RTCP sender report for the track:
  ``ssrc:u32 ntp:u64 rtp_timestamp:u32``.
* ``END`` (5), last, written when the recording is closed: JSON
  ``{"complete": bool, "reason": code | null, "detail": text | null,
  "packets": n, "dropped_packets": n}``. A file without it was cut short
  (the relay stopped, or the disk failed mid-write).

A reader skips record types it does not know, so later versions can add
some. A partly written last record (disk full, crash) is not an error:
:func:`read_records` stops there and says the file is truncated.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

MAGIC = b"PARLOR-RTP-RECORDING 1\n"
RECORD_SUFFIX = ".rec"

CALL = 1
TRACK = 2
RTP = 3
SR = 4
END = 5

RECORD_HEADER = struct.Struct("!BHHq")
SENDER_REPORT = struct.Struct("!IQI")
MAX_BODY = 0xFFFF
MAX_TRACKS = 0xFFFF

AUDIO_CODECS = frozenset({"opus"})
VIDEO_CODECS = frozenset({"VP8", "H264"})


class RecordFileError(ValueError):
    """A file that is not a record file, or whose header records are corrupt.

    ``code`` is ``unreadable``; ``message`` says what is wrong and holds no
    media bytes.
    """

    code = "unreadable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """What a ``TRACK`` record declares."""

    track: int
    participant: str
    kind: str
    codec: str
    clock_rate: int
    payload_type: int

    def as_json(self) -> bytes:
        return json.dumps(
            {
                "participant": self.participant,
                "kind": self.kind,
                "codec": self.codec,
                "clock_rate": self.clock_rate,
                "payload_type": self.payload_type,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def checked(
        cls, track: int, participant: str, kind: str, codec: str, clock_rate: int, payload_type: int
    ) -> TrackInfo:
        """A track description, or ValueError saying which field is wrong."""
        if not isinstance(participant, str) or not 0 < len(participant) <= 256:
            raise ValueError("participant id must be a string of 1-256 characters")
        if kind == "audio":
            if codec.lower() not in AUDIO_CODECS:
                raise ValueError(f"unsupported audio codec {codec!r}: only opus is recorded")
            codec = codec.lower()
        elif kind == "video":
            if codec.upper() not in VIDEO_CODECS:
                raise ValueError(f"unsupported video codec {codec!r}: use VP8 or H264")
            codec = codec.upper()
        else:
            raise ValueError(f"track kind must be 'audio' or 'video', got {kind!r}")
        if type(clock_rate) is not int or not 0 < clock_rate <= 1_000_000:
            raise ValueError(f"clock rate must be a positive integer in Hz, got {clock_rate!r}")
        if type(payload_type) is not int or not 0 <= payload_type <= 127:
            raise ValueError(f"payload type must be 0-127, got {payload_type!r}")
        return cls(track, participant, kind, codec, clock_rate, payload_type)


def encode_record(record_type: int, track: int, arrival_us: int, body: bytes) -> bytes:
    return RECORD_HEADER.pack(record_type, track, len(body), arrival_us) + body


def read_records(file: BinaryIO) -> Iterator[tuple[int, int, int, bytes]]:
    """``(type, track, arrival_us, body)`` for each whole record after MAGIC.

    Raises :class:`RecordFileError` if the file does not start with MAGIC.
    Stops silently at a partial last record; :class:`RecordReader` tells
    a cut file from a closed one by the ``END`` record.
    """
    if file.read(len(MAGIC)) != MAGIC:
        raise RecordFileError("not a Parlor record file (bad magic)")
    header_size = RECORD_HEADER.size
    unpack = RECORD_HEADER.unpack
    read = file.read
    while True:
        header = read(header_size)
        if len(header) < header_size:
            return
        record_type, track, length, arrival_us = unpack(header)
        body = read(length)
        if len(body) < length:
            return
        yield record_type, track, arrival_us, body


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except UnicodeDecodeError:
        raise RecordFileError(f"{what} record is not UTF-8") from None
    except json.JSONDecodeError as error:
        raise RecordFileError(f"{what} record is not JSON: {error.msg}") from None
    if not isinstance(value, dict):
        raise RecordFileError(f"{what} record is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class CallInfo:
    visit: str
    started_unix_us: int
    started_clock_us: int

    def unix_us(self, clock_us: int) -> int:
        """Wall-clock time (µs since 1970) of an arrival-clock time."""
        return self.started_unix_us + clock_us - self.started_clock_us


@dataclass(frozen=True, slots=True)
class EndInfo:
    complete: bool
    reason: str | None
    detail: str | None


class RecordReader:
    """One pass over a record file, decoding the control records on the way.

    Iterate to get ``(type, track, arrival_us, body)`` for every record;
    ``call`` is known once the first record is read, ``tracks`` fills as
    ``TRACK`` records pass, and ``end`` / ``truncated`` are meaningful
    after the iteration finished. Raises :class:`RecordFileError` on a
    missing or corrupt ``CALL``/``TRACK`` record; RTP bodies are not
    checked here, and records of undeclared tracks are skipped.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.call: CallInfo | None = None
        self.tracks: dict[int, TrackInfo] = {}
        self.end: EndInfo | None = None
        self.skipped = 0
        """Records for a track never declared (damaged), left out."""

    @property
    def truncated(self) -> bool:
        """True when the file ends without its ``END`` record."""
        return self.end is None

    def __iter__(self) -> Iterator[tuple[int, int, int, bytes]]:
        records = read_records(self._file)
        for record in records:
            record_type, track, _, body = record
            if self.call is None:
                if record_type != CALL:
                    raise RecordFileError("record file does not start with its CALL record")
                self.call = self._call(body)
            elif record_type == TRACK:
                if track == 0 or track in self.tracks:
                    raise RecordFileError(f"track {track} is declared twice or is 0")
                self.tracks[track] = self._track(track, body)
            elif record_type == END:
                value = _json_object(body, "END")
                self.end = EndInfo(
                    value.get("complete") is True,
                    _optional_text(value.get("reason")),
                    _optional_text(value.get("detail")),
                )
            elif record_type in (RTP, SR) and track not in self.tracks:
                self.skipped += 1  # a damaged track id: lose the packet, not the recording
                continue
            yield record

    @staticmethod
    def _call(body: bytes) -> CallInfo:
        value = _json_object(body, "CALL")
        visit, unix_us, clock_us = (
            value.get("visit"),
            value.get("started_unix_us"),
            value.get("started_clock_us"),
        )
        if not isinstance(visit, str) or type(unix_us) is not int or type(clock_us) is not int:
            raise RecordFileError("CALL record lacks visit, started_unix_us or started_clock_us")
        return CallInfo(visit, unix_us, clock_us)

    @staticmethod
    def _track(track: int, body: bytes) -> TrackInfo:
        value = _json_object(body, "TRACK")
        try:
            return TrackInfo.checked(
                track,
                value.get("participant"),  # type: ignore[arg-type]
                value.get("kind"),  # type: ignore[arg-type]
                str(value.get("codec")),
                value.get("clock_rate"),  # type: ignore[arg-type]
                value.get("payload_type"),  # type: ignore[arg-type]
            )
        except ValueError as error:
            raise RecordFileError(f"TRACK record {track}: {error}") from None


def _optional_text(value: object) -> str | None:
    return value if isinstance(value, str) else None

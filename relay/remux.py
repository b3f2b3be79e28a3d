"""A record file made playable: one WebM/Matroska file per call, after the call.

:func:`remux` reads a record file (:mod:`relay.recordfile`) twice and
writes one file holding every participant's audio and video, without
decoding or re-encoding anything (one keyframe per video track is decoded,
to learn its size):

1. **Survey.** Per track and SSRC ("segment"): RTP timestamps are unwrapped,
   the publisher's first sender report is kept, and the first keyframe of
   each video track is found.
2. **Remux.** Packets go through a :class:`relay.depacketizer.ReorderBuffer`
   and a depacketizer per segment; frames are muxed with PyAV
   (``add_mux_stream``) into WebM (VP8 + Opus) or Matroska (H264 + Opus).

**Timeline (wall-clock alignment).** Every frame is placed on the relay's
arrival clock, so participants who joined at different times appear when
they joined, and then shifted so that the earliest frame is at 0:

* A segment *without* a sender report is anchored at its least delayed
  packet: RTP time ``t`` maps to ``A + (t - t0) / rate`` where ``A`` is the
  minimum over its packets of ``arrival - (ts - t0) / rate``. That is the
  first packet's arrival unless that packet was delayed more than a later
  one (a packet can arrive late, never early).
* A segment *with* a sender report maps RTP time to the publisher's NTP
  clock through the report's (NTP, RTP) pair, and the publisher's NTP clock
  to the arrival clock by one offset per participant: the minimum over
  the participant's packets of ``arrival - sender time``. Audio and video of
  one participant thus keep the sync their sender stated (a video path
  slower than the audio one no longer shifts the video), while the
  sender's clock may be anywhere (it is never trusted as wall time). A
  track whose reports would place it more than ``MAX_SENDER_SKEW_US`` from
  its arrivals (a sender using two clocks) is placed by arrival.

The origin is the earliest frame on that clock (≈ the earliest packet
arrival); its wall-clock time is in the result (``origin_unix_us``) and in
the file's ``PARLOR_ORIGIN_UNIX_US`` tag, so the console can lay the
visit's joins, leaves and directives over the recording.

Lost packets: an incomplete video frame is dropped with everything up to
the next keyframe; a lost Opus packet leaves a gap (players fill silence).
Timestamps are milliseconds, strictly increasing per stream. The output is
written bit-exact (FFmpeg's ``bitexact``: no random UIDs, no dates), so the
same record file always gives the same file and the same SHA-256, which
anyone holding the record file can check.

Opus needs its ``OpusHead`` in CodecPrivate (players refuse the track
otherwise) and ``add_mux_stream`` writes none: the audio streams come from
``add_stream("libopus")``, whose codec context is opened only so that its
``extradata`` is the OpusHead below, then never used to encode.

:func:`remux_in_subprocess` runs it in a child process, so the event loop
never waits on it and never competes with it for the GIL (see
bench/recording.py for the measured difference), and so a crash in FFmpeg
on a damaged file cannot take the node down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import struct
import sys
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
from av.video.codeccontext import VideoCodecContext

from relay.depacketizer import (
    DEFAULT_REORDER_WINDOW_US,
    Depacketizer,
    EncodedFrame,
    H264Depacketizer,
    OpusDepacketizer,
    ReorderBuffer,
    Unwrapper,
    Vp8Depacketizer,
)
from relay.recordfile import (
    RECORD_SUFFIX,
    RTP,
    SENDER_REPORT,
    SR,
    CallInfo,
    RecordFileError,
    RecordReader,
    TrackInfo,
)
from relay.rtp import MalformedPacket, parse_header

TRUNCATED = "truncated"
"""The record file has no END record: the relay stopped or the disk failed mid-write."""

OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 312, 48000, 0, 0)
"""RFC 7845 §5.1: version 1, 2 channels, pre-skip 312, 48 kHz, gain 0, family 0."""
MILLISECOND = Fraction(1, 1000)
MAX_SENDER_SKEW_US = 1_000_000
"""A track placed by its sender reports this far from where its packets arrived
is placed by arrival instead: its reports use another clock than its sibling's."""
_MUX_CODEC = {"VP8": "vp8", "H264": "h264"}


class RemuxError(Exception):
    """A recording that cannot be made playable.

    ``code``: ``unreadable`` (not a record file, or corrupt header records),
    ``no-media`` (no track has a decodable frame), ``remux-failed`` (the
    muxer or the worker process failed; ``message`` says how).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class TrackResult:
    """One track of the playable file."""

    participant: str
    kind: str
    codec: str
    frames: int
    """Frames in the file."""
    dropped_frames: int
    """Incomplete (lost packets) or malformed frames."""
    skipped_frames: int
    """Complete frames left out while waiting for a keyframe."""
    start_us: int
    """First frame on the common timeline."""
    duration_us: int
    aligned_by: str
    """``sender-report`` or ``arrival``."""


@dataclass(frozen=True, slots=True)
class RemuxResult:
    path: str
    container: str
    """``webm`` or ``matroska``."""
    complete: bool
    """The recording was closed normally and never marked incomplete."""
    reason: str | None
    """Why not complete: the recorder's reason code, or ``truncated``."""
    origin_unix_us: int
    """Wall-clock time of the timeline's 0."""
    sha256: str
    tracks: tuple[TrackResult, ...] = field(default_factory=tuple)
    renditions: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """(participant, path) of each participant's rendition, when asked for (:func:`remux`)."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> RemuxResult:
        tracks = tuple(TrackResult(**track) for track in value.pop("tracks"))
        renditions = tuple((str(p), str(path)) for p, path in value.pop("renditions", ()))
        return cls(**value, tracks=tracks, renditions=renditions)


# --- the survey ------------------------------------------------------------------------


class _Segment:
    """One SSRC of one track: its timestamps, first SR and time anchor."""

    def __init__(self, track: TrackInfo) -> None:
        self.track = track
        self.timestamps = Unwrapper(32)
        self.base: int | None = None
        """Extended timestamp of the segment's first packet: t0."""
        self.first_timestamp = 0
        """Smallest extended timestamp seen."""
        self.arrival_anchor: int | None = None
        """min(arrival - (ts - t0) / rate), µs on the arrival clock."""
        self.sender_base_us: int | None = None
        """Sender NTP time of t0 (µs), from the first SR."""
        self.start_us = 0
        """Arrival-clock time of t0 once aligned."""

    def elapsed_us(self, timestamp: int) -> int:
        assert self.base is not None
        return (timestamp - self.base) * 1_000_000 // self.track.clock_rate

    def time_us(self, timestamp: int) -> int:
        """Arrival-clock time of an extended RTP timestamp (after alignment)."""
        return self.start_us + self.elapsed_us(timestamp)

    def see(self, timestamp: int, arrival_us: int) -> None:
        extended = self.timestamps.extend(timestamp)
        if self.base is None:
            self.base = self.first_timestamp = extended
        self.first_timestamp = min(self.first_timestamp, extended)
        anchor = arrival_us - self.elapsed_us(extended)
        if self.arrival_anchor is None or anchor < self.arrival_anchor:
            self.arrival_anchor = anchor

    def sender_report(self, ntp: int, rtp_timestamp: int) -> None:
        if self.sender_base_us is not None or self.base is None:
            return
        extended = self.timestamps.nearest(rtp_timestamp)
        self.sender_base_us = _ntp_us(ntp) - self.elapsed_us(extended)


def _ntp_us(ntp: int) -> int:
    return (ntp >> 32) * 1_000_000 + ((ntp & 0xFFFFFFFF) * 1_000_000 >> 32)


@dataclass
class _VideoShape:
    width: int
    height: int


class _Survey:
    """What pass 1 learns: segments, alignment, video sizes, the origin."""

    def __init__(self, reader: RecordReader) -> None:
        self.reader = reader
        self.segments: dict[tuple[int, int], _Segment] = {}
        self.pending_reports: dict[tuple[int, int], tuple[int, int]] = {}
        self.shapes: dict[int, _VideoShape] = {}
        self.audio_tracks: set[int] = set()
        self._keyframe_search: dict[tuple[int, int], _Stream] = {}
        self.origin_us = 0

    def run(self) -> None:
        for record_type, track, arrival_us, body in self.reader:
            if record_type == RTP:
                self._packet(track, arrival_us, body)
            elif record_type == SR and len(body) == SENDER_REPORT.size:
                ssrc, ntp, rtp_timestamp = SENDER_REPORT.unpack(body)
                segment = self.segments.get((track, ssrc))
                if segment is None:
                    self.pending_reports.setdefault((track, ssrc), (ntp, rtp_timestamp))
                else:
                    segment.sender_report(ntp, rtp_timestamp)
        for stream in self._keyframe_search.values():
            if stream.track.track not in self.shapes:
                for frame in stream.flush():
                    self._keyframe(stream.track, frame)
        self._align()

    def _packet(self, track: int, arrival_us: int, body: bytes) -> None:
        info = self.reader.tracks[track]
        parsed = _media(body, info)
        if parsed is None:
            return
        ssrc, sequence, timestamp, marker, payload = parsed
        key = (track, ssrc)
        segment = self.segments.get(key)
        if segment is None:
            segment = self.segments[key] = _Segment(info)
        if payload:  # padding carries an old timestamp and no media
            segment.see(timestamp, arrival_us)
            if key in self.pending_reports and segment.sender_base_us is None:
                segment.sender_report(*self.pending_reports.pop(key))
        if info.kind == "audio":
            if payload:
                self.audio_tracks.add(track)
        elif track not in self.shapes:
            stream = self._keyframe_search.get(key)
            if stream is None:
                stream = self._keyframe_search[key] = _Stream(info, segment)
            for frame in stream.push(sequence, timestamp, marker, payload, arrival_us):
                self._keyframe(info, frame)

    def _keyframe(self, info: TrackInfo, frame: EncodedFrame) -> None:
        if info.track in self.shapes or not frame.keyframe:
            return
        shape = _decoded_shape(info.codec, frame.data)
        if shape is not None:
            self.shapes[info.track] = shape

    def included(self, track: int) -> bool:
        return track in self.audio_tracks or track in self.shapes

    def _align(self) -> None:
        offsets: dict[str, int] = {}
        for segment in self.segments.values():
            if segment.sender_base_us is not None and segment.arrival_anchor is not None:
                offset = segment.arrival_anchor - segment.sender_base_us
                participant = segment.track.participant
                offsets[participant] = min(offsets.get(participant, offset), offset)
        starts = []
        for segment in self.segments.values():
            if segment.arrival_anchor is None:
                continue  # padding only: nothing to place
            segment.start_us = segment.arrival_anchor
            if segment.sender_base_us is not None:
                by_report = segment.sender_base_us + offsets[segment.track.participant]
                if abs(by_report - segment.arrival_anchor) <= MAX_SENDER_SKEW_US:
                    segment.start_us = by_report
                else:  # this track's reports disagree with the others' clock: not trusted
                    segment.sender_base_us = None
            if self.included(segment.track.track):
                starts.append(segment.time_us(segment.first_timestamp))
        self.origin_us = min(starts) if starts else 0


def _media(body: bytes, info: TrackInfo) -> tuple[int, int, int, bool, bytes] | None:
    """``(ssrc, seq, ts, marker, payload)`` of a recorded packet of the track's codec."""
    try:
        header = parse_header(body)
    except MalformedPacket:
        return None
    if header.payload_type != info.payload_type:
        return None  # RTX, or another codec: not this track's media
    payload = body[header.payload_start : header.payload_end]
    return header.ssrc, header.sequence_number, header.timestamp, header.marker, payload


def _decoded_shape(codec: str, data: bytes) -> _VideoShape | None:
    """Width and height of a keyframe, by decoding it (any profile, any size)."""
    try:
        context = cast(VideoCodecContext, av.CodecContext.create(_MUX_CODEC[codec], "r"))
        frames = context.decode(av.Packet(data)) + context.decode(None)
    except av.FFmpegError:
        return None
    if not frames:
        return None
    return _VideoShape(frames[0].width, frames[0].height)


# --- pass 2 ------------------------------------------------------------------------------


class _Stream:
    """Reorder buffer and depacketizer of one segment."""

    def __init__(self, track: TrackInfo, segment: _Segment) -> None:
        self.track = track
        self.segment = segment
        self.sequences = Unwrapper(16)
        self.timestamps = Unwrapper(32)
        self.order: ReorderBuffer[tuple[int, bool, bytes, int]] = ReorderBuffer(
            DEFAULT_REORDER_WINDOW_US
        )
        self.depacketizer: Depacketizer
        if track.kind == "audio":
            self.depacketizer = OpusDepacketizer()
        elif track.codec == "VP8":
            self.depacketizer = Vp8Depacketizer()
        else:
            self.depacketizer = H264Depacketizer()

    def push(
        self, sequence: int, timestamp: int, marker: bool, payload: bytes, arrival_us: int
    ) -> list[EncodedFrame]:
        """One recorded packet (16-bit ``sequence``, 32-bit ``timestamp``); frames completed."""
        item = (self.timestamps.extend(timestamp), marker, payload, arrival_us)
        return self._frames(self.order.push(self.sequences.extend(sequence), arrival_us, item))

    def flush(self) -> list[EncodedFrame]:
        return self._frames(self.order.flush()) + self.depacketizer.flush()

    def _frames(
        self, released: list[tuple[int, tuple[int, bool, bytes, int]]]
    ) -> list[EncodedFrame]:
        frames: list[EncodedFrame] = []
        for sequence, (timestamp, marker, payload, arrival_us) in released:
            frames += self.depacketizer.push(sequence, timestamp, marker, payload, arrival_us)
        return frames


class _Output:
    """One output stream (a track) and what was muxed into it."""

    def __init__(self, track: TrackInfo, stream: av.stream.Stream) -> None:
        self.track = track
        self.stream = stream
        self.frames = 0
        self.first_ms: int | None = None
        self.last_ms = -1
        self.end_ms = 0
        self.aligned_by = "arrival"
        self.dropped = 0
        self.skipped = 0


def remux(record_path: str | os.PathLike[str], participant: str | None = None) -> RemuxResult:
    """Make the playable file of a record file; blocking (run it off the loop).

    The output is next to the record file, same name, ``.webm`` or
    ``.mkv``, mode 0600; an earlier output of the same recording is
    replaced (bit-exact, so it is the same file). Raises :class:`RemuxError`.

    With ``participant``, a *rendition*: only that participant's tracks, on
    the same timeline (the origin is the whole call's), named
    ``<name>.p<n>.<ext>`` where ``n`` is the participant's order of
    appearance (1, 2, ...). A browser's ``<video>`` plays one video track
    of a file; renditions played side by side at the same time show every
    side of the call in sync. The call file stays the one exported.
    """
    record_path = os.fspath(record_path)
    try:
        with open(record_path, "rb") as file:
            survey = _Survey(RecordReader(file))
            survey.run()
    except RecordFileError as error:
        raise RemuxError(error.code, error.message) from None
    except OSError as error:
        raise RemuxError("unreadable", error.strerror or str(error)) from None
    reader = survey.reader
    if reader.call is None:
        raise RemuxError("unreadable", "the record file holds no CALL record")
    included = [info for info in reader.tracks.values() if survey.included(info.track)]
    suffix = ""
    if participant is not None:
        order = list(dict.fromkeys(info.participant for info in reader.tracks.values()))
        if participant not in order:
            raise RemuxError("no-media", f"no track of {participant!r} in the record file")
        suffix = f".p{order.index(participant) + 1}"
        included = [info for info in included if info.participant == participant]
    if not included:
        raise RemuxError("no-media", "no track holds a decodable frame")
    webm = all(info.codec in ("VP8", "opus") for info in included)
    container = "webm" if webm else "matroska"
    stem = (
        record_path[: -len(RECORD_SUFFIX)] if record_path.endswith(RECORD_SUFFIX) else record_path
    )
    final = stem + suffix + (".webm" if webm else ".mkv")
    partial = final + ".partial"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    try:
        outputs = _write(record_path, survey, included, partial, container, reader.call)
        _fsync(partial)
        os.replace(partial, final)
        _fsync(os.path.dirname(final) or ".")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    end = reader.end
    complete = end is not None and end.complete
    return RemuxResult(
        path=final,
        container=container,
        complete=complete,
        reason=None if complete else (end.reason if end is not None else TRUNCATED),
        origin_unix_us=reader.call.unix_us(survey.origin_us),
        sha256=_sha256(final),
        tracks=tuple(_summary(output) for output in outputs),
    )


def remux_with_renditions(record_path: str | os.PathLike[str]) -> RemuxResult:
    """:func:`remux` of the whole call, then one rendition per participant who has a track
    in it (listed in ``renditions``)."""
    result = remux(record_path)
    participants = dict.fromkeys(track.participant for track in result.tracks)
    renditions = tuple((p, remux(record_path, p).path) for p in participants)
    return replace(result, renditions=renditions)


def _write(
    record_path: str,
    survey: _Survey,
    included: list[TrackInfo],
    path: str,
    container_format: str,
    call: CallInfo,
) -> list[_Output]:
    end = survey.reader.end
    try:
        container = av.open(path, "w", format=container_format)
    except av.FFmpegError as error:
        raise RemuxError("remux-failed", f"cannot open the output: {error}") from None
    try:
        container.flags |= av.container.Flags.bitexact.value  # type: ignore[operator]  # stub: Flag, runtime: int
        container.metadata.update(
            {
                "title": f"Parlor visit {call.visit}",
                "PARLOR_VISIT": call.visit,
                "PARLOR_ORIGIN_UNIX_US": str(call.unix_us(survey.origin_us)),
                "PARLOR_COMPLETE": "true" if end is not None and end.complete else "false",
            }
        )
        outputs = {
            info.track: _Output(info, _add_stream(container, info, survey)) for info in included
        }
        streams: dict[tuple[int, int], _Stream] = {}
        with open(record_path, "rb") as file:
            for record_type, track, arrival_us, body in RecordReader(file):
                output = outputs.get(track) if record_type == RTP else None
                if output is None:
                    continue
                parsed = _media(body, output.track)
                if parsed is None:
                    continue
                ssrc, sequence, timestamp, marker, payload = parsed
                stream = streams.get((track, ssrc))
                if stream is None:
                    segment = survey.segments[(track, ssrc)]
                    stream = streams[(track, ssrc)] = _Stream(output.track, segment)
                frames = stream.push(sequence, timestamp, marker, payload, arrival_us)
                _mux(container, output, stream.segment, frames, survey.origin_us)
        for (track, _), stream in streams.items():
            output = outputs[track]
            _mux(container, output, stream.segment, stream.flush(), survey.origin_us)
            output.dropped += stream.depacketizer.dropped
            output.skipped += stream.depacketizer.skipped
            if stream.segment.sender_base_us is not None:
                output.aligned_by = "sender-report"
        container.close()
    except av.FFmpegError as error:
        with contextlib.suppress(Exception):
            container.close()
        raise RemuxError("remux-failed", str(error)) from None
    return list(outputs.values())


def _add_stream(
    container: av.container.OutputContainer, info: TrackInfo, survey: _Survey
) -> av.stream.Stream:
    stream: av.stream.Stream
    if info.kind == "video":
        shape = survey.shapes[info.track]
        stream = container.add_mux_stream(
            _MUX_CODEC[info.codec], width=shape.width, height=shape.height
        )
    else:
        stream = container.add_stream("libopus", rate=48000, layout="stereo")
        context = stream.codec_context
        context.open()  # never encodes: opened so that our OpusHead is what gets written
        context.extradata = OPUS_HEAD
    stream.time_base = MILLISECOND
    stream.metadata["title"] = f"{info.participant} {info.kind}"
    return stream


def _mux(
    container: av.container.OutputContainer,
    output: _Output,
    segment: _Segment,
    frames: list[EncodedFrame],
    origin_us: int,
) -> None:
    clock_rate = output.track.clock_rate
    for frame in frames:
        pts_ms = max(0, (segment.time_us(frame.timestamp) - origin_us + 500) // 1000)
        if pts_ms <= output.last_ms:
            pts_ms = output.last_ms + 1
        packet = av.Packet(frame.data)
        packet.stream = output.stream
        packet.time_base = MILLISECOND
        packet.pts = packet.dts = pts_ms
        packet.is_keyframe = frame.keyframe
        duration_ms = frame.duration * 1000 // clock_rate
        if duration_ms:
            packet.duration = duration_ms
        container.mux(packet)
        output.frames += 1
        if output.first_ms is None:
            output.first_ms = pts_ms
        output.last_ms = pts_ms
        output.end_ms = pts_ms + duration_ms


def _summary(output: _Output) -> TrackResult:
    first = output.first_ms or 0
    end = output.end_ms
    if output.track.kind == "video" and output.frames > 1:
        end = output.last_ms + (output.last_ms - first) // (output.frames - 1)
    return TrackResult(
        participant=output.track.participant,
        kind=output.track.kind,
        codec=output.track.codec,
        frames=output.frames,
        dropped_frames=output.dropped,
        skipped_frames=output.skipped,
        start_us=first * 1000,
        duration_us=(end - first) * 1000 if output.frames else 0,
        aligned_by=output.aligned_by,
    )


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- off the event loop ------------------------------------------------------------------


REMUX_NICENESS = 10
"""The child's niceness: a remux after a call yields the CPU to the node's live calls."""

YIELD_FIRST = """
import os, runpy, sys
os.nice(int(sys.argv.pop(1)))
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except (AttributeError, OSError):
    pass
"""
_NICED_CHILD = (
    YIELD_FIRST + 'runpy.run_module("relay.remux", run_name="__main__", alter_sys=True)\n'
)
"""The child's first statements (:data:`YIELD_FIRST`, its niceness the first argument) lower
its priority, before ``relay`` (aiortc, av) is imported:
those imports cost about half a second of CPU, and at the node's own priority they took it
from the live calls, a remux child after each call that ended (100 calls recorded, a
directive ending 10 of them: audio gaps over 200 ms in 38 of the 178 other sessions). Where
Linux has it, the child is also ``SCHED_IDLE``: it runs only on a CPU nothing else wants, as
niceness alone still let it take a share of a saturated 2-core machine from the node (14 of
158 sessions with a gap of 206 ms in one of three runs). On a node busy without pause the
recordings wait, and are finalized when it is not (or by the next start's sweep)."""


async def remux_in_subprocess(
    record_path: str | os.PathLike[str],
    participant: str | None = None,
    *,
    renditions: bool = False,
) -> RemuxResult:
    """:func:`remux` in a child Python process; the loop only awaits it.

    Cancelling kills the child (and leaves no output: the partial file
    stays under its ``.partial`` name, replaced by the next run). Raises
    :class:`RemuxError` with the child's code, or ``remux-failed`` when the
    child died.
    """
    rendition = [] if participant is None else ["--participant", participant]
    rendition += ["--renditions"] if renditions else []
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _NICED_CHILD,
        str(REMUX_NICENESS),
        os.fspath(record_path),
        *rendition,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_child_environment(),
    )
    try:
        stdout, stderr = await process.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    try:
        answer = json.loads(stdout)
    except ValueError:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise RemuxError(
            "remux-failed", f"the remux process exited with {process.returncode}: {tail[0]}"
        ) from None
    if process.returncode == 0:
        return RemuxResult.from_json(answer)
    raise RemuxError(str(answer.get("error", "remux-failed")), str(answer.get("message", "")))


def _child_environment() -> dict[str, str]:
    """This environment, with the directory holding ``relay`` first on the path."""
    environment = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    path = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = root if not path else root + os.pathsep + path
    return environment


def main(argv: list[str] | None = None) -> int:
    """``python -m relay.remux RECORD``: print the result (or the error) as JSON."""
    parser = argparse.ArgumentParser(description="Make a Parlor record file playable.")
    parser.add_argument("record", help="the .rec file written by relay.recorder")
    parser.add_argument("--participant", help="only this participant's tracks (a rendition)")
    parser.add_argument(
        "--renditions", action="store_true", help="the call file, then one per participant"
    )
    parser.add_argument(
        "--nice", type=int, default=0, help="lower this process's priority (run by hand)"
    )
    arguments = parser.parse_args(argv)
    if arguments.nice > 0:
        os.nice(arguments.nice)
    try:
        if arguments.renditions:
            result = remux_with_renditions(arguments.record)
        else:
            result = remux(arguments.record, arguments.participant)
    except RemuxError as error:
        print(json.dumps({"error": error.code, "message": error.message}))
        return 2
    print(json.dumps(result.as_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

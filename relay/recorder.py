"""Recording one visit's call while it runs: forwarded packets to a record file.

A :class:`Recorder` records every participant of one call. The SFU gives
each publisher track a :class:`TrackTap` (from :meth:`Recorder.track`) and
calls it with every packet it forwards; the tap only appends to a bounded
in-memory queue, so the event loop pays about a microsecond per packet and
never touches the disk. The recorder's writer thread drains the queue every
``flush_interval`` seconds into one record file (:mod:`relay.recordfile`),
and fsyncs it when the recording is closed. :mod:`relay.remux` makes the
playable file after the call.

**One writer thread per recording**, not one per node: a thread costs a
few kB of memory and wakes ``1 / flush_interval`` times a second, while
sharing one would let one call's stuck storage (an NFS stall, a failing
disk) fill every other call's queue and make those recordings incomplete
too. With its own thread, a recording's failure stays its own.

**Failure never ends a call.** Disk full (``ENOSPC``, ``EDQUOT``), any
other write error (``EIO``...) and a writer that falls behind (the queue
holds more than ``max_buffered_bytes``) mark the recording *incomplete*
with a reason code (:data:`DISK_FULL`, :data:`WRITE_ERROR`,
:data:`WRITER_BEHIND`): every tap becomes a no-op, what was written stays
on disk, and ``on_incomplete`` is called once, on the event loop. Nothing
raises into the SFU.

**Privileged visits are refused by construction.** The constructor takes the
visit's kind and accepts only the kinds in :data:`RECORDABLE_VISIT_KINDS`
(an allow-list: ``"social"``); anything else raises
:class:`RecordingRefused` before a file or a thread exists. Signaling must
pass the kind stored with the visit (never one from a client), construct
the recorder only after admission fixed the visit as live (a live visit's
kind cannot change), and treat the refusal as final for the visit: no
retry, no fallback. A privileged visit thus has no Recorder object that a
tap could reach.

Files are created under the configured directory (which must exist) with
mode 0600, named ``<visit id>-<16 hex digits><.rec>``; the name is chosen
in the constructor (:attr:`Recorder.path`), the file created by the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from relay.recordfile import (
    CALL,
    END,
    MAGIC,
    MAX_BODY,
    MAX_TRACKS,
    RECORD_HEADER,
    RECORD_SUFFIX,
    RTP,
    SENDER_REPORT,
    SR,
    TRACK,
    TrackInfo,
)
from relay.rtp import MalformedPacket, parse_header

RECORDABLE_VISIT_KINDS = frozenset({"social"})
"""Visit kinds that may be recorded. Privileged (attorney, clergy) never is."""

DISK_FULL = "disk-full"
WRITE_ERROR = "write-error"
WRITER_BEHIND = "writer-behind"

DEFAULT_MAX_BUFFERED_BYTES = 16 * 1024 * 1024
"""~40 s of a two-party call at 1.6 Mbit/s each: a long storage stall, not a hiccup."""
DEFAULT_FLUSH_INTERVAL = 0.1
WRITE_CHUNK = 1024 * 1024

_VISIT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # policy/roster.py's ID_PATTERN
_RECORD_OVERHEAD = RECORD_HEADER.size
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


class RecordingRefused(Exception):
    """A recorder was asked for a visit that must not be recorded.

    ``code`` is ``recording-refused``. Signaling records the visit as
    not recorded; it must not retry with another kind.
    """

    code = "recording-refused"

    def __init__(self, visit_kind: object) -> None:
        self.message = f"visits of kind {visit_kind!r} are never recorded"
        super().__init__(self.message)


@dataclass(frozen=True, slots=True)
class RecordingStatus:
    """Where one recording stands; what signaling audits and alerts on.

    ``reason`` is None while complete, else one of :data:`DISK_FULL`,
    :data:`WRITE_ERROR`, :data:`WRITER_BEHIND`; ``detail`` is the OS error
    text (no media, no secrets). ``sha256`` is the record file's digest,
    set once the recording is closed (hex; None if nothing was written).
    """

    visit_id: str
    path: str
    complete: bool
    reason: str | None
    detail: str | None
    packets_written: int
    dropped_packets: int
    bytes_written: int
    closed: bool
    sha256: str | None


def _monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def _padding_as_header(packet: bytes) -> bytes:
    """A padding-only packet as its bare 12-byte header (b"" if malformed), else the packet.

    Padding carries no media but takes a sequence number: the remux must
    see it to tell it from a lost packet (H264 has no other way), and 12
    bytes say that.
    """
    try:
        header = parse_header(packet)
    except MalformedPacket:
        return b""
    if header.payload_start != header.payload_end:
        return packet  # media that happens to be padded
    return bytes((0x80,)) + packet[1:12]


class TrackTap:
    """What the SFU calls for one publisher track: ``tap(packet, arrival_us)``.

    Call it on the event loop for every RTP packet received from the
    publisher on the track's SSRC, with the plaintext packet (after SRTP and
    RTX unwrapping, before any per-leg rewrite) and its arrival time on the
    recorder's clock: **padding-only packets too** (they are kept as their
    12-byte header), or the remux takes the hole they leave in the
    sequence numbers for a loss and drops H264 video up to the next
    keyframe. A ``bytearray`` or ``memoryview`` is copied (the SFU may
    rewrite it in place afterwards); ``bytes`` is kept as is.
    """

    __slots__ = ("track_id", "_recorder", "_append")

    def __init__(self, recorder: Recorder, track_id: int) -> None:
        self.track_id = track_id
        self._recorder = recorder
        self._append = recorder._queue.append

    def __call__(self, packet: bytes | bytearray | memoryview, arrival_us: int) -> None:
        recorder = self._recorder
        if not recorder._accepting:
            recorder._dropped += 1
            return
        if type(packet) is not bytes:
            packet = bytes(packet)
        if packet[0] & 0x20:  # P bit: maybe a padding-only packet (bandwidth probe)
            packet = _padding_as_header(packet)
        size = len(packet)
        if not size or size > MAX_BODY:
            recorder._dropped += 1
            return
        recorder._queued_bytes += size + _RECORD_OVERHEAD
        if recorder._queued_bytes - recorder._written_bytes > recorder._max_buffered_bytes:
            recorder._queued_bytes -= size + _RECORD_OVERHEAD
            recorder._dropped += 1
            recorder._fail(WRITER_BEHIND, "the writer fell behind: the recording queue is full")
            return
        self._append((RTP, self.track_id, arrival_us, packet))

    def sender_report(
        self, ssrc: int, ntp_timestamp: int, rtp_timestamp: int, arrival_us: int
    ) -> None:
        """Record the publisher's RTCP SR for this track (for A/V alignment).

        ``ntp_timestamp`` is the 64-bit NTP time, ``rtp_timestamp`` the
        32-bit RTP time of the same instant (:class:`relay.rtcp.SenderReport`).
        """
        recorder = self._recorder
        if not recorder._accepting:
            return
        body = SENDER_REPORT.pack(
            ssrc & 0xFFFFFFFF, ntp_timestamp & (1 << 64) - 1, rtp_timestamp & 0xFFFFFFFF
        )
        recorder._queued_bytes += len(body) + _RECORD_OVERHEAD
        self._append((SR, self.track_id, arrival_us, body))


class Recorder:
    """Records one social visit's call; see the module docstring.

    Construct it on the event loop that will call the taps (it reports
    there). ``directory`` is the configured recordings directory;
    ``clock_us`` must be the clock the SFU's ``arrival_us`` values come
    from. ``on_incomplete(status)`` is called at most once, on the loop,
    when the recording becomes incomplete. Close it with ``await close()``
    when the call ends.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        visit_id: str,
        visit_kind: str,
        *,
        on_incomplete: Callable[[RecordingStatus], None] | None = None,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        clock_us: Callable[[], int] = _monotonic_us,
    ) -> None:
        if type(visit_kind) is not str or visit_kind not in RECORDABLE_VISIT_KINDS:
            raise RecordingRefused(visit_kind)
        if not isinstance(visit_id, str) or not _VISIT_ID.fullmatch(visit_id):
            raise ValueError(f"visit id {visit_id!r} cannot name a recording")
        if max_buffered_bytes <= 0 or flush_interval <= 0:
            raise ValueError("max_buffered_bytes and flush_interval must be positive")
        self._loop = asyncio.get_running_loop()
        self.visit_id = visit_id
        self.directory = os.fspath(directory)
        self.path = os.path.join(
            self.directory, f"{visit_id}-{secrets.token_hex(8)}{RECORD_SUFFIX}"
        )
        self._on_incomplete = on_incomplete
        self._max_buffered_bytes = max_buffered_bytes
        self._flush_interval = flush_interval
        self._queue: deque[tuple[int, int, int, bytes]] = deque()
        self._accepting = True
        self._queued_bytes = 0  # written by the event loop only
        self._written_bytes = 0  # written by the writer thread only
        self._dropped = 0  # event loop only
        self._packets_written = 0  # writer only
        self._file_bytes = 0  # writer only
        self._tracks = 0
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._detail: str | None = None
        self._closing = False
        self._sha256: str | None = None
        self._done: asyncio.Future[RecordingStatus] = self._loop.create_future()
        self._wake = threading.Event()
        self._digest = hashlib.sha256()  # writer only
        self._clock_us = clock_us
        started_clock_us = clock_us()
        call = {
            "visit": visit_id,
            "started_unix_us": time.time_ns() // 1000,
            "started_clock_us": started_clock_us,
        }
        self._enqueue(CALL, 0, started_clock_us, _json(call))
        # Thread.start() waits until the new thread runs, which on a busy machine takes a
        # scheduler slice (4 ms at the 90th percentile with both cores busy): the event loop
        # would stall that long for every call that starts. An executor thread waits instead;
        # what the taps queue meanwhile is written when the writer starts.
        self._thread = threading.Thread(target=self._run, name=f"recorder {visit_id}", daemon=True)
        started = self._loop.run_in_executor(None, self._thread.start)
        started.add_done_callback(self._writer_started)

    # --- event loop side -------------------------------------------------------------

    def track(
        self,
        participant_id: str,
        kind: str,
        codec: str,
        clock_rate: int,
        payload_type: int,
    ) -> TrackTap:
        """Declare one publisher track and get its tap.

        ``kind`` is ``audio`` (codec ``opus``) or ``video`` (``VP8`` or
        ``H264``), ``clock_rate`` the RTP clock in Hz and ``payload_type``
        the publisher's payload type for the codec (packets with another
        one, e.g. RTX, are ignored when remuxing). Raises ValueError on a
        bad description; never fails because of storage.
        """
        if self._tracks >= MAX_TRACKS:
            raise ValueError(f"a recording holds at most {MAX_TRACKS} tracks")
        info = TrackInfo.checked(
            self._tracks + 1, participant_id, kind, codec, clock_rate, payload_type
        )
        self._tracks += 1
        if self._accepting:
            self._enqueue(TRACK, info.track, self._clock_us(), info.as_json())
        return TrackTap(self, info.track)

    @property
    def status(self) -> RecordingStatus:
        return self._status(self._done.done())

    def _status(self, closed: bool) -> RecordingStatus:
        with self._lock:
            reason, detail = self._reason, self._detail
        return RecordingStatus(
            self.visit_id,
            self.path,
            reason is None,
            reason,
            detail,
            self._packets_written,
            self._dropped,
            self._file_bytes,
            closed,
            self._sha256,
        )

    async def close(self) -> RecordingStatus:
        """Stop recording, let the writer finish and fsync; the final status.

        Waits for the writer without blocking the loop (the writer reports
        back through the loop); may be called more than once.
        """
        self._accepting = False
        self._closing = True
        self._wake.set()
        return await asyncio.shield(self._done)

    def _writer_started(self, started: asyncio.Future[None]) -> None:
        error = asyncio.CancelledError() if started.cancelled() else started.exception()
        if error is not None:  # no thread: nothing will finish it
            self._fail(WRITE_ERROR, f"the recorder's writer could not start: {error!r}")
            self._queue.clear()
            self._finish()

    def _enqueue(self, record_type: int, track: int, arrival_us: int, body: bytes) -> None:
        self._queued_bytes += len(body) + _RECORD_OVERHEAD
        self._queue.append((record_type, track, arrival_us, body))

    # --- both sides --------------------------------------------------------------------

    def _fail(self, reason: str, detail: str) -> None:
        """Mark the recording incomplete (first reason wins) and report it once."""
        self._accepting = False
        with self._lock:
            if self._reason is not None:
                return
            self._reason, self._detail = reason, detail
        if self._on_incomplete is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody left to tell
                self._loop.call_soon_threadsafe(self._report_incomplete)

    def _report_incomplete(self) -> None:
        if self._on_incomplete is not None:
            self._on_incomplete(self.status)

    # --- writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        fd: int | None = None
        try:
            fd = self._open()
            while True:
                self._wake.wait(self._flush_interval)
                self._wake.clear()
                closing = self._closing
                fd = self._drain(fd)
                if closing:
                    break
            if fd is not None:
                fd = self._write_end(fd)
            if fd is not None:
                self._sync(fd)
        except Exception as error:  # a bug here must not leave close() waiting forever
            self._fail(WRITE_ERROR, f"the recorder's writer failed: {error!r}")
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._queue.clear()
            if self._file_bytes:
                self._sha256 = self._digest.hexdigest()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self._loop.call_soon_threadsafe(self._finish)

    def _write_end(self, fd: int) -> int | None:
        with self._lock:
            reason, detail = self._reason, self._detail
        body = _json(
            {
                "complete": reason is None,
                "reason": reason,
                "detail": detail,
                "packets": self._packets_written,
                "dropped_packets": self._dropped,
            }
        )
        return self._write(fd, RECORD_HEADER.pack(END, 0, len(body), self._clock_us()) + body)

    def _sync(self, fd: int) -> None:
        """fsync the file, then its directory (so that its name survives a crash too)."""
        try:
            os.fsync(fd)
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as error:
            self._fail_with(error)

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(self._status(True))

    def _open(self) -> int | None:
        try:
            fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        except OSError as error:
            self._fail_with(error)
            return None
        try:
            os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
        except OSError as error:
            os.close(fd)
            self._fail_with(error)
            return None
        return self._write(fd, MAGIC)

    def _drain(self, fd: int | None) -> int | None:
        """Write everything queued now; returns the fd, None once writing failed."""
        queue = self._queue
        pack = RECORD_HEADER.pack
        while queue:
            parts: list[bytes] = []
            size = 0
            packets = 0
            while queue and size < WRITE_CHUNK:
                record_type, track, arrival_us, body = queue.popleft()
                parts.append(pack(record_type, track, len(body), arrival_us))
                parts.append(body)
                size += len(body) + _RECORD_OVERHEAD
                packets += record_type == RTP
            if fd is not None:
                fd = self._write(fd, b"".join(parts))
                if fd is not None:
                    self._packets_written += packets
            self._written_bytes += size
        return fd

    def _write(self, fd: int, data: bytes) -> int | None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                self._digest.update(view[:written])
                self._file_bytes += written
                view = view[written:]
        except OSError as error:
            os.close(fd)
            self._fail_with(error)
            return None
        return fd

    def _fail_with(self, error: OSError) -> None:
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        self._fail(DISK_FULL if full else WRITE_ERROR, error.strerror or str(error))


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


__all__ = [
    "DISK_FULL",
    "RECORDABLE_VISIT_KINDS",
    "Recorder",
    "RecordingRefused",
    "RecordingStatus",
    "TrackTap",
    "WRITER_BEHIND",
    "WRITE_ERROR",
]

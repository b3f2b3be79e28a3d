"""Recording the calls of this node, and serving the files (SPEC §10).

`Recordings` owns a recording's life on the node that hosts the call; the call's own life
stays where it is (signaling/registry.py's `Call`, begun by admission, ended by the
enforcer's `halt` of its last session), and calls in here at its two ends:

- `begin(call)`, from admission's registering block, when a visit's call starts on this node
  (before any participant negotiates media): a `relay.recorder.Recorder` if the visit's
  facility records and the visit is social. Admission decided `call.recorded` from the
  facility when it made the call (`recorded_at`); the kind is the visit's as stored, read in
  the same block, and a live visit's kind cannot change (policy/schedule.py), so a privileged
  visit never gets a Recorder (it would refuse: relay/recorder.py), and no tap, no file.
- `tap(call, session)`, from the first answered offer of each participant (signaling/ws.py):
  every track it publishes is tapped on the relay's arrival clock
  (`relay.uptrack.Tap`: `time.monotonic_ns() // 1000`, the recorder's default clock).
- `end(call)`, from the enforcer, when the call's last session ends: the recorder is closed
  and the playable file made in a child process (relay/remux.py), never on the event loop;
  then `recording.finalized` with the file's SHA-256, durations and tracks (or
  `recording.failed`) is written by policy/archive.py.

A failing recordings store never ends a call: the recorder marks the recording incomplete and
says so once (`_incomplete`), which writes `recording.incomplete` (the console alerts on it).

Reading the files: a play, download or export is first an audit event with who and why
(`RecordingArchive.accessed`); the answer is a `Grant`, a short-lived capability for one
purpose on one file, signed with a key derived from the server's secret for this use only
(not a token: no API route accepts it). The media route takes it in the path, so the bearer
token never is in a URL, and serves the file with Range support (a `<video>` seeks with it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web

from policy.archive import RecordingArchive
from policy.errors import Conflict, PolicyError, StoreUnavailable
from policy.recording import (
    DEFAULT_RETENTION_DAYS,
    Recording,
    file_name,
    past_retention,
    recorded,
)
from policy.store.interface import Cluster
from policy.visit import Visit
from relay.recorder import Recorder, RecordingRefused, RecordingStatus
from relay.remux import RemuxError, RemuxResult, remux_in_subprocess
from signaling.background import Background
from signaling.backlog import Backlog

if TYPE_CHECKING:
    from relay.uptrack import UpTrack
    from signaling.registry import Call
    from signaling.session import Session

log = logging.getLogger("parlor.recordings")

GRANT_SECONDS = 15 * 60
"""How long a grant lets its holder start reading (a play needs the whole duration more)."""
LONGEST_GRANT_SECONDS = 6 * 3600
MAX_GRANT_CHARS = 1024
SWEEP_EVERY_SECONDS = 3600.0
FINALIZE_DRAIN_SECONDS = 10.0  # on the way out: the remux of the calls that just ended
REMUXES_AT_ONCE = max(1, (os.cpu_count() or 2) // 2)
"""Remux children running at once (each a Python process of ~60 MB): when a hundred calls
end together (a count, a facility's lockdown) the others wait their turn instead of a
hundred processes starting at once beside the live calls."""
FLUSH_SECONDS = 0.5
"""How often a recorder's writer wakes to write what was tapped: each wake takes the GIL from
the event loop; a crash loses at most this much media (bench/recording_calls.py)."""


class _TrackTap:
    """The tap of one published track, declared to the recorder at its first packet: the
    publisher's payload type and clock rate are known only once its m-line is negotiated,
    which is before its first packet but after the offer that made the track."""

    __slots__ = ("_recorder", "_participant", "_uptrack", "_codec", "_tap")

    def __init__(self, recorder: Recorder, participant: str, uptrack: UpTrack, codec: str) -> None:
        self._recorder, self._participant, self._uptrack = recorder, participant, uptrack
        self._codec = codec
        self._tap: Callable[[bytes | bytearray, int], None] | None = None

    def __call__(self, packet: bytes | bytearray, arrival_us: int) -> None:
        tap = self._tap
        if tap is None:
            tap = self._tap = self._declare()
        tap(packet, arrival_us)

    def sender_report(
        self, ssrc: int, ntp_timestamp: int, rtp_timestamp: int, arrival_us: int
    ) -> None:
        tap = self._tap
        report = getattr(tap, "sender_report", None)
        if report is not None:
            report(ssrc, ntp_timestamp, rtp_timestamp, arrival_us)

    def _declare(self) -> Callable[[bytes | bytearray, int], None]:
        uptrack = self._uptrack
        try:
            return self._recorder.track(
                self._participant, uptrack.kind, self._codec, uptrack.clock_rate,
                uptrack.payload_type,  # type: ignore[arg-type]  # checked by the recorder
            )  # fmt: skip
        except ValueError as exc:  # a track the record file cannot describe: not recorded
            log.warning("track %s of %s not recorded: %s", uptrack.kind, self._participant, exc)
            return _ignore


def _ignore(packet: bytes | bytearray, arrival_us: int) -> None:
    return None


@dataclass(eq=False)
class LiveRecording:
    """A call being recorded here: its row, its recorder, the write of its start."""

    recording: Recording
    recorder: Recorder
    started: asyncio.Future[None]
    tapped: set[tuple[str, str]] = field(default_factory=set)  # (session id, kind)


@dataclass(frozen=True)
class Grant:
    """One purpose (play, download, export) on one recording's file, until `expires`."""

    recording: str
    media: str
    purpose: str
    expires: float


class Grants:
    """Signed grants (JWTs, HS256): `issue` gives the path part, `check` reads it back (None
    if forged or expired). The key is derived from the server's secret for this use alone,
    so a grant is no token and a token is no grant."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = hmac.new(secret, b"parlor recording grant v1", hashlib.sha256).digest()
        self._clock = clock

    def issue(self, recording: Recording, purpose: str) -> tuple[str, Grant]:
        assert recording.media is not None
        seconds = min(LONGEST_GRANT_SECONDS, GRANT_SECONDS + (recording.duration_seconds or 0))
        grant = Grant(recording.id, recording.media, purpose, self._clock() + seconds)
        claims = {
            "rec": grant.recording, "media": grant.media, "purpose": grant.purpose,
            "exp": round(grant.expires), "jti": secrets.token_hex(4),
        }  # fmt: skip
        return jwt.encode(claims, self._key, algorithm="HS256"), grant

    def check(self, text: str) -> Grant | None:
        if not text.isascii() or len(text) > MAX_GRANT_CHARS:  # PyJWT wants ASCII
            return None
        required = ["rec", "media", "purpose", "exp"]
        try:  # expiry is checked on the server's clock, below
            claims = jwt.decode(
                text, self._key, ["HS256"], options={"verify_exp": False, "require": required}
            )
        except jwt.PyJWTError:
            return None
        if self._clock() >= claims["exp"]:
            return None
        fields = str(claims["rec"]), str(claims["media"]), str(claims["purpose"])
        return Grant(*fields, float(claims["exp"]))


@dataclass
class Recordings:
    archive: RecordingArchive
    directory: Path
    node_id: str
    grants: Grants
    clock: Callable[[], float] = time.time
    backlog: Backlog = field(default_factory=Backlog)
    finishing: Background = field(default_factory=Background)
    """Recordings of calls that ended, being closed and made playable."""
    writes: Background = field(default_factory=Background)
    remuxes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(REMUXES_AT_ONCE))
    _swept: float = float("-inf")

    # -- a call's two ends ---------------------------------------------------------------
    async def recorded_at(self, visit: Visit) -> bool:
        """Whether a call of `visit` is recorded, by its facility's policy (read when the call
        is made; the kind is checked again when it begins)."""
        facility = await self.archive.store.get_facility(visit.facility)
        return recorded(visit.kind, facility)

    def begin(self, call: Call) -> None:
        """Start recording a call that starts now (synchronous: admission's block A)."""
        visit = call.visit
        if not call.recorded or not recorded(visit.kind, None):  # (None: the kind alone)
            return
        made: list[LiveRecording] = []  # the recorder reports on the loop, after this block
        try:
            recorder = Recorder(
                self.directory, visit.id, visit.kind, flush_interval=FLUSH_SECONDS,
                on_incomplete=lambda status: self._incomplete(made[0], status),
            )  # fmt: skip
        except RecordingRefused:  # never: the kind was checked; the recorder checks it again
            log.error("visit %s: the recorder refused a %s visit", visit.id, visit.kind)
            return
        except (ValueError, RuntimeError) as exc:  # no thread to be had: the call goes on
            log.error("visit %s: its call cannot be recorded: %s", visit.id, exc)
            return
        recording = Recording(
            id=f"R-{secrets.token_hex(6)}", visit=visit.id, facility=visit.facility,
            node=self.node_id, path=os.path.basename(recorder.path), status="recording",
            started_at=self.clock(),
        )  # fmt: skip
        started = asyncio.ensure_future(self.archive.started(recording))
        live = LiveRecording(recording, recorder, started)
        made.append(live)
        call.recording = live
        log.info("visit %s: recording %s to %s", visit.id, recording.id, recorder.path)

    def tap(self, call: Call, session: Session) -> None:
        """Tap every track `session` publishes (after its offer was answered)."""
        live = call.recording
        if live is None or session.monitor:
            return
        codec = session.peer.codec.name
        for kind in session.peer.published_kinds():
            if (session.id, kind) in live.tapped:
                continue
            live.tapped.add((session.id, kind))
            uptrack = session.peer.uptrack(kind)
            track_codec = "opus" if kind == "audio" else codec
            session.peer.add_tap(
                kind, _TrackTap(live.recorder, session.actor.sub, uptrack, track_codec)
            )

    def end(self, call: Call) -> None:
        """The call's last session ended: finish its recording in the background."""
        live, call.recording = call.recording, None
        if live is not None:
            self.finishing.spawn(self._finish(live, self.clock()))

    async def drain(self) -> None:
        """On the way out: let the recordings of the calls that ended be finished (bounded)."""
        await self.finishing.drain(FINALIZE_DRAIN_SECONDS)
        await self.writes.drain(2.0)

    # -- the recording's end -------------------------------------------------------------
    def _incomplete(self, live: LiveRecording, status: RecordingStatus) -> None:
        """The recorder says its storage failed (on the loop, once); the call goes on."""
        log.warning(
            "visit %s: recording %s incomplete (%s: %s); the call goes on",
            live.recording.visit, live.recording.id, status.reason, status.detail,
        )  # fmt: skip
        live.recording = live.recording.with_changes(incomplete_reason=status.reason)
        self.writes.spawn(self._write_incomplete(live, status))

    async def _write_incomplete(self, live: LiveRecording, status: RecordingStatus) -> None:
        if not await self._start_written(live):
            return
        marked = live.recording
        await self._write(
            f"recording {marked.id} incomplete",
            lambda: self.archive.incomplete(marked, status.reason or "", status.detail),
        )

    async def _finish(self, live: LiveRecording, ended_at: float) -> None:
        status = await live.recorder.close()
        await self.writes.drain(5.0)  # the incomplete mark first, in the chain's order
        if not await self._start_written(live):
            return
        recording = live.recording
        if status.reason is not None and recording.incomplete_reason is None:
            recording = recording.with_changes(incomplete_reason=status.reason)
        if status.packets_written == 0:  # nobody's media came (a call refused or left at once)
            await asyncio.to_thread(_unlink, Path(live.recorder.path))
            await self._failed(recording, ended_at, "no-media", "no media packet was recorded")
            return
        await self._make_playable(recording, ended_at)

    async def recover(self) -> int:
        """At start-up: the recordings this node was making when it stopped without finishing
        them (a crash, a kill) are made playable from what their record files hold (marked
        incomplete, `truncated`), or failed. Returns how many it took up."""
        left = [r for r in await self.archive.store.list_recordings(status="recording")
                if r.node == self.node_id]  # fmt: skip
        for recording in left:
            path = self.directory / recording.path
            try:
                ended_at = (await asyncio.to_thread(path.stat)).st_mtime
            except OSError:
                self.finishing.spawn(self._failed(
                    recording, recording.started_at, "missing", "the record file is gone"))  # fmt: skip
                continue
            log.warning("recording %s was left unfinished by this node: finishing it", recording.id)
            self.finishing.spawn(self._make_playable(recording, ended_at))
        return len(left)

    async def _make_playable(self, recording: Recording, ended_at: float) -> None:
        """Remux the record file (off the loop) and record the playable file, or the failure."""
        try:
            async with self.remuxes:
                result = await remux_in_subprocess(self.directory / recording.path, renditions=True)
        except RemuxError as exc:
            log.warning("recording %s: no playable file: %s", recording.id, exc)
            await self._failed(recording, ended_at, exc.code, exc.message)
            return
        done = _finalized_values(recording, result)
        await self._write(
            f"recording {recording.id} finalized",
            lambda: self.archive.finalized(
                recording, ended_at=ended_at, tracks=_tracks(result), **done
            ),
        )
        log.info("recording %s finalized: %s (sha256 %s)", recording.id, result.path, result.sha256)

    async def _failed(self, recording: Recording, ended_at: float, code: str, message: str) -> None:
        await self._write(
            f"recording {recording.id} failed",
            lambda: self.archive.failed(recording, ended_at=ended_at, code=code, message=message),
        )

    async def _start_written(self, live: LiveRecording) -> bool:
        try:
            await asyncio.shield(live.started)
            return True
        except StoreUnavailable:  # once more, now: a recording must be in the chain
            live.started = asyncio.ensure_future(self.archive.started(live.recording))
            try:
                await live.started
                return True
            except PolicyError as exc:
                log.error("recording %s: its start could not be recorded: %s", live.recording.id,
                          exc.message)  # fmt: skip
                return False
        except PolicyError as exc:
            log.error("recording %s: its start could not be recorded: %s", live.recording.id,
                      exc.message)  # fmt: skip
            return False

    async def _write(self, what: str, write: Callable[[], Any]) -> None:
        try:
            await write()
        except StoreUnavailable as exc:
            self.backlog.add(what, write, exc)
        except PolicyError as exc:
            log.error("could not write %s: %s", what, exc.message)

    # -- retention -----------------------------------------------------------------------
    async def sweep_due(self, cluster: Cluster | None, stale_after: float) -> list[Recording]:
        """About hourly: `sweep`, on one node. In a cluster that is the live node with the
        least id (every node reads the same heartbeats, so they agree without electing one;
        should two sweep at a moment when they disagree, each deletion is one guarded write
        and the second finds nothing to do)."""
        now = time.monotonic()
        if now - self._swept < SWEEP_EVERY_SECONDS:
            return []
        self._swept = now
        if cluster is not None:
            live = await cluster.live_nodes(stale_after)
            if live and min(live) != self.node_id:
                return []
        return await self.sweep()

    async def sweep(self) -> list[Recording]:
        """Delete what is past its facility's retention and not held: the row first (only
        from the state read, unheld: a hold or another sweep that came first wins), then its
        files. Returns what was deleted."""
        now, deleted = self.clock(), []
        facilities = {f.id: f for f in await self.archive.store.list_facilities()}
        for recording in await self.archive.store.list_recordings():
            facility = facilities.get(recording.facility)
            if not past_retention(recording, facility, now):
                continue
            days = (
                facility.recording_retention_days
                if facility is not None
                else DEFAULT_RETENTION_DAYS
            )
            try:
                gone = await self.archive.deleted(recording, days=days)
            except Conflict:
                continue
            await asyncio.to_thread(self._remove_files, recording)  # storage may be slow
            deleted.append(gone)
        return deleted

    def _remove_files(self, recording: Recording) -> None:
        for name in (recording.path, recording.media):
            if name is None:
                continue
            try:
                (self.directory / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("recording %s: could not delete %s: %s", recording.id, name, exc)
        for _, part in recording.parts:
            _unlink(self.directory / part)

    def renditions(self, recording: Recording) -> list[tuple[str, str]]:
        """(part, participant) of the recording's renditions: `p1`, `p2`... in the media URL."""
        return [(f"p{n}", participant) for n, (participant, _) in enumerate(recording.parts, 1)]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """`GET /recordings/media/{grant}/{part}`: the file a grant is for (`call`, or a
        rendition `p1`...), with Range support. The grant was checked and the access audited
        when it was issued; here it is only checked (signature, time, the file it names)."""
        grant = self.grants.check(request.match_info["grant"])
        if grant is None:
            raise web.HTTPForbidden(text="this link is not valid (any more): ask for a new one")
        recording = await self.archive.store.get_recording(grant.recording)
        if recording is None or recording.status != "finalized" or recording.media != grant.media:
            raise web.HTTPNotFound(text="this recording is not available")
        part = request.match_info["part"]
        if part == "call":
            name = recording.media
        else:
            names = {f"p{n}": f for n, (_, f) in enumerate(recording.parts, 1)}
            if grant.purpose != "play" or part not in names:
                raise web.HTTPNotFound(text="no such part")
            name = names[part]
        path = self.directory / file_name(name)
        if not path.is_file():
            raise web.HTTPNotFound(text="the recording's file is missing")
        headers = {
            "Content-Type": "video/webm" if name.endswith(".webm") else "video/x-matroska",
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        }
        if part == "call" and recording.sha256 is not None:
            headers["X-Parlor-SHA256"] = recording.sha256
        if grant.purpose != "play":
            headers["Content-Disposition"] = f'attachment; filename="{recording.id}{path.suffix}"'
        return web.FileResponse(path, headers=headers)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _finalized_values(recording: Recording, result: RemuxResult) -> dict[str, Any]:
    duration_us = max((t.start_us + t.duration_us for t in result.tracks), default=0)
    return {
        "media": os.path.basename(result.path),
        "parts": tuple((p, os.path.basename(path)) for p, path in result.renditions),
        "sha256": result.sha256,
        "origin_at": result.origin_unix_us / 1e6,
        "duration_seconds": round(duration_us / 1e6, 3),
        "incomplete_reason": recording.incomplete_reason or result.reason,
    }


def _tracks(result: RemuxResult) -> list[dict[str, Any]]:
    return [
        {"participant": t.participant, "kind": t.kind, "codec": t.codec, "frames": t.frames,
         "start_seconds": round(t.start_us / 1e6, 3),
         "duration_seconds": round(t.duration_us / 1e6, 3)}
        for t in result.tracks
    ]  # fmt: skip

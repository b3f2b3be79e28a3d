"""Recordings of social visits: who may see them, how long they are kept, holds (SPEC §10).

A `Recording` is the stored media of one call of a social visit (a visit whose participants
all left and came back has two). Its life: `recording` while the call runs, then `finalized`
(a playable file exists, with its SHA-256) or `failed` (no playable file could be made:
nothing was recorded, or the record file is unreadable), and at last `deleted` when its
facility's retention passed, unless a supervisor holds it. A recording the storage failed
(disk full, write error) is `incomplete` besides: what was written is kept and finalized;
the call went on.

Every change is a `recording.*` audit event carrying the whole recording as it is after the
change (`recording`), so policy/replay.py folds it like a visit's changes; every play,
download and export is an audit event too (who, and the required reason), which changes no
row.

Files are named, never located, here: `path` and `media` are file names inside the
configured recordings directory (`PARLOR_RECORDINGS`), so a row can never point a reader
outside it, and nodes that mount the shared directory at different places agree.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

from policy.actor import Actor
from policy.errors import Forbidden, Malformed, RuleBroken
from policy.rfc3339 import format_time, parse_time
from policy.roster import Facility, check_id, check_text

RECORDING_STATUSES = ("recording", "finalized", "failed", "deleted")
READERS = ("supervisor", "auditor")
"""Who may list and play recordings; an operator only where the facility allows it."""
HOLDERS = ("supervisor",)
"""Who may hold a recording past retention and release it."""
ACCESSES = ("play", "download", "export")
DEFAULT_RETENTION_DAYS = 180
MAX_RETENTION_DAYS = 3650
MAX_REASON = 500
DAY = 86400.0
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

HOLD = ("held_by", "held_reason", "held_ref", "held_at")
TIMES = ("started_at", "ended_at", "finalized_at", "held_at", "deleted_at", "origin_at")


@dataclass(frozen=True)
class Recording:
    id: str
    visit: str
    facility: str
    node: str  # the node that recorded it
    path: str  # the record file's name in the recordings directory
    status: str  # one of RECORDING_STATUSES
    started_at: float
    ended_at: float | None = None
    finalized_at: float | None = None
    media: str | None = None  # the playable file's name (WebM/Matroska), once finalized
    parts: tuple[tuple[str, str], ...] = ()  # (participant, file name): one rendition each
    sha256: str | None = None  # of the playable file, hex
    origin_at: float | None = None  # wall-clock time of the playable file's 0
    duration_seconds: float | None = None
    incomplete_reason: str | None = None  # disk-full, write-error, writer-behind, truncated
    failure: str | None = None  # why no playable file was made (status failed)
    held_by: str | None = None
    held_reason: str | None = None
    held_ref: str | None = None  # a directive or appeal id the hold is tied to
    held_at: float | None = None
    deleted_at: float | None = None

    @property
    def held(self) -> bool:
        return self.held_by is not None

    @property
    def complete(self) -> bool:
        return self.incomplete_reason is None

    def with_changes(self, **changes: Any) -> Recording:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name in TIMES:
            data[name] = format_time(data[name])
        data["parts"] = [list(part) for part in self.parts]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recording:
        """The inverse of `to_json`: how the chain's `recording.*` events are read back."""
        values: dict[str, Any] = {name: data.get(name) for name in cls.__dataclass_fields__}
        for name in TIMES:
            if values[name] is not None:
                values[name] = parse_time(values[name], name)
        values["parts"] = tuple((str(p), file_name(str(f))) for p, f in values["parts"] or ())
        if values["status"] not in RECORDING_STATUSES:
            raise ValueError(f"unknown recording status {values['status']!r}")
        return cls(**values)


def file_name(value: str) -> str:
    """A recording's file name as stored: a bare name, never a path."""
    if not _FILE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not a recording file name")
    return value


# -- the facility's policy --------------------------------------------------------------------
def recorded(kind: str, facility: Facility | None) -> bool:
    """Is a call of a visit of `kind` at `facility` recorded? Social visits where the
    facility records (the default); privileged ones never. There is no per-visit or
    per-person opt-out: a visit with a minor contact is recorded like any other."""
    return kind == "social" and (facility is None or facility.recording)


def retention_days(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed("bad-field", "recording_retention_days must be a whole number of days")
    if not 1 <= value <= MAX_RETENTION_DAYS:
        raise RuleBroken(
            "bad-retention",
            f"recording_retention_days must be between 1 and {MAX_RETENTION_DAYS}",
        )
    return value


# -- access -----------------------------------------------------------------------------------
def may_read(actor: Actor, facility: Facility | None) -> bool:
    """Supervisors and auditors; operators only where the facility allows it."""
    if actor.role in READERS:
        return True
    return actor.role == "operator" and facility is not None and facility.operators_play_recordings


def require_reader(actor: Actor, facility: Facility | None) -> None:
    if not may_read(actor, facility):
        raise Forbidden(
            "recordings-forbidden",
            "recordings are for supervisors and auditors (operators only where the facility "
            "allows it)",
        )


def reason(value: object) -> str:
    """Why someone plays, downloads, exports, holds or releases a recording: required."""
    return check_text(value, "reason", max_length=MAX_REASON)


def reference(value: object) -> str | None:
    """What a hold is tied to (a directive's or an appeal's id), if anything."""
    return None if value is None else check_id(value, "ref")


# -- retention --------------------------------------------------------------------------------
def retention_ends(recording: Recording, facility: Facility | None) -> float:
    days = facility.recording_retention_days if facility is not None else DEFAULT_RETENTION_DAYS
    return (recording.ended_at or recording.started_at) + days * DAY


def past_retention(recording: Recording, facility: Facility | None, now: float) -> bool:
    """Due for deletion: done (not live), not deleted yet, not held, past retention."""
    return (
        recording.status in ("finalized", "failed")
        and not recording.held
        and now >= retention_ends(recording, facility)
    )

"""The archive of recordings: every change of a recording, and every look at one, audited.

`RecordingArchive` is the one place that writes recordings (policy/recording.py says who may
and what is due): the node that records a call reports its start, an incomplete store, the
playable file or the failure to make one (signaling/recordings.py); staff hold and release;
the retention sweep deletes; every play, download and export is an event naming who and why.
Each change is one transaction with its audit event, which carries the whole recording after
the change (`recording`), for policy/replay.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from policy.actor import SYSTEM, Actor
from policy.errors import Forbidden, NotFound, RuleBroken
from policy.recording import (
    ACCESSES,
    HOLDERS,
    Recording,
    reason,
    reference,
    require_reader,
)
from policy.roster import Facility
from policy.store.interface import AuditDraft, Store

STARTED = "recording.started"
INCOMPLETE = "recording.incomplete"
FINALIZED = "recording.finalized"
FAILED = "recording.failed"
HELD = "recording.held"
RELEASED = "recording.released"
DELETED = "recording.deleted"
CHANGES = (STARTED, INCOMPLETE, FINALIZED, FAILED, HELD, RELEASED, DELETED)
ACCESS_EVENTS = {"play": "recording.played", "download": "recording.downloaded",
                 "export": "recording.exported"}  # fmt: skip


def subject(recording: Recording) -> str:
    return f"recording:{recording.id}"


@dataclass
class RecordingArchive:
    store: Store
    clock: Callable[[], float] = field(default=time.time)

    # -- what the recording node reports ----------------------------------------------------
    async def started(self, recording: Recording) -> None:
        await self.store.add_recording(recording, self._draft(SYSTEM, STARTED, recording))

    async def incomplete(self, recording: Recording, why: str, detail: str | None) -> Recording:
        """The storage failed while the call goes on: the recording is marked, staff alerted
        (the console shows `recording.incomplete` events as an alert)."""
        marked = recording.with_changes(incomplete_reason=why)
        await self.store.update_recording(
            marked,
            self._draft(SYSTEM, INCOMPLETE, marked, reason=why, detail=detail),
            expect_status="recording",
        )
        return marked

    async def finalized(
        self, recording: Recording, *, ended_at: float, tracks: list[dict[str, Any]], **values: Any
    ) -> Recording:
        """The playable file exists: its name, SHA-256, origin and duration (`values`)."""
        done = recording.with_changes(
            status="finalized", ended_at=ended_at, finalized_at=self.clock(), **values
        )
        await self.store.update_recording(
            done,
            self._draft(SYSTEM, FINALIZED, done, sha256=done.sha256, tracks=tracks,
                        duration_seconds=done.duration_seconds),
            expect_status="recording",
        )  # fmt: skip
        return done

    async def failed(
        self, recording: Recording, *, ended_at: float, code: str, message: str
    ) -> Recording:
        done = recording.with_changes(
            status="failed", ended_at=ended_at, finalized_at=self.clock(), failure=code
        )
        await self.store.update_recording(
            done, self._draft(SYSTEM, FAILED, done, code=code, message=message),
            expect_status="recording",
        )  # fmt: skip
        return done

    # -- what staff do ------------------------------------------------------------------------
    async def get(self, actor: Actor, recording_id: str) -> tuple[Recording, Facility | None]:
        """A recording and its facility, for someone who may read it (else Forbidden)."""
        recording = await self.store.get_recording(recording_id)
        if recording is None:
            raise NotFound("unknown-recording", f"no recording {recording_id!r}")
        facility = await self.store.get_facility(recording.facility)
        require_reader(actor, facility)
        return recording, facility

    async def accessed(self, actor: Actor, recording: Recording, access: str, body: Any) -> str:
        """Record a play, download or export before any byte is served: who and why."""
        assert access in ACCESSES
        why = reason(_field(body, "reason"))
        if recording.status != "finalized" or recording.media is None:
            raise RuleBroken("not-playable", f"recording {recording.id} has no playable file")
        await self.store.audit(
            AuditDraft(actor.sub, ACCESS_EVENTS[access], subject(recording), {
                "reason": why, "by": actor.sub, "role": actor.role, "visit": recording.visit,
                "sha256": recording.sha256,
            })
        )  # fmt: skip
        return why

    async def hold(self, actor: Actor, recording_id: str, body: Any) -> Recording:
        """A supervisor keeps a recording past retention, saying why (and maybe for which
        directive or appeal), until released."""
        self._require_holder(actor)
        recording, _ = await self.get(actor, recording_id)
        why, ref = reason(_field(body, "reason")), reference(_field(body, "ref"))
        if recording.status == "deleted":
            raise RuleBroken("deleted", f"recording {recording.id} was deleted")
        if recording.held:
            raise RuleBroken("already-held", f"recording {recording.id} is held already")
        held = recording.with_changes(
            held_by=actor.sub, held_reason=why, held_ref=ref, held_at=self.clock()
        )
        await self.store.hold_recording(
            held, self._draft(actor, HELD, held, reason=why, ref=ref), was_held=False
        )
        return held

    async def release(self, actor: Actor, recording_id: str, body: Any) -> Recording:
        self._require_holder(actor)
        recording, _ = await self.get(actor, recording_id)
        why = reason(_field(body, "reason"))
        if not recording.held:
            raise RuleBroken("not-held", f"recording {recording.id} is not held")
        released = recording.with_changes(
            held_by=None, held_reason=None, held_ref=None, held_at=None
        )
        await self.store.hold_recording(
            released,
            self._draft(actor, RELEASED, released, reason=why, was=recording.held_reason),
            was_held=True,
        )
        return released

    # -- retention ----------------------------------------------------------------------------
    async def deleted(self, recording: Recording, *, days: int) -> Recording:
        """Its files are gone past retention: written only from its current status and
        unheld (`Conflict` if a hold or another node's sweep came first)."""
        gone = recording.with_changes(status="deleted", deleted_at=self.clock())
        await self.store.update_recording(
            gone,
            self._draft(SYSTEM, DELETED, gone, reason="retention", retention_days=days),
            expect_status=recording.status,
        )
        return gone

    # -----------------------------------------------------------------------------------------
    def _draft(self, actor: Actor, action: str, recording: Recording, **data: Any) -> AuditDraft:
        return AuditDraft(
            actor.sub, action, subject(recording), {"recording": recording.to_json(), **data}
        )

    @staticmethod
    def _require_holder(actor: Actor) -> None:
        if actor.role not in HOLDERS:
            raise Forbidden("supervisor-only", "only a supervisor holds or releases recordings")


def _field(body: Any, name: str) -> Any:
    return body.get(name) if isinstance(body, dict) else None

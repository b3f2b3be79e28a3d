"""A visit's changes on this node's live sessions: book, move, change kind, cancel, close.

The REST API, the approvals owner, the scheduler and the cluster bus call `Visits` and
nothing else; the rules are policy/schedule.py's. A change takes the steps a directive takes
(signaling/directives.py):

1. commit (`Schedule`);
2. stop, in one synchronous block: `VisitChanges` learns the visit's new version (admission
   hands the newest copy to its own synchronous block, so a join in flight sees it), the
   call here, if any, follows the new window, and what the change no longer admits is
   halted: every session of a cancelled visit (`visit:V`, close 4410, told why), and of a
   visit moved out of the present (a rare race: a move is refused while someone is in it);
3. complete: tell and record (`Enforcer.complete`).

Another node runs steps 2 and 3 when the bus delivers `visit.cancelled`, `visit.rescheduled`
or `visit.kind-changed` (`heard`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from policy.actor import Actor
from policy.audit import AuditEvent
from policy.rfc3339 import format_time
from policy.schedule import Schedule
from policy.service import Policy
from policy.visit import Visit
from signaling.enforcer import Enforcer, Stopped
from signaling.protocol import Close, Reason, cancelled_ending, moved_ending
from signaling.registry import LiveSessions

CHANGED = ("visit.cancelled", "visit.rescheduled", "visit.kind-changed")
CLOSE_EVERY_SECONDS = 5.0  # how often ended windows are looked for (ended / no-show)


@dataclass(frozen=True)
class Changed:
    """A visit as its API answer reports it, and the sessions the change ended here."""

    visit: Visit
    sessions_ended: list[str]


@dataclass
class Visits:
    policy: Policy
    enforcer: Enforcer
    sessions: LiveSessions
    schedule: Schedule = field(init=False)
    _closed_at: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.schedule = Schedule(self.policy)

    # -- the REST API ---------------------------------------------------------------------
    async def create(self, actor: Actor, body: object) -> Visit:
        return await self.schedule.create(actor, body)

    async def reschedule(self, actor: Actor, visit_id: str, body: object) -> Changed:
        return await self._apply(actor, await self.schedule.reschedule(actor, visit_id, body))

    async def change_kind(self, actor: Actor, visit_id: str, body: object) -> Changed:
        return await self._apply(actor, await self.schedule.change_kind(actor, visit_id, body))

    async def cancel(self, actor: Actor, visit_id: str, body: object) -> Changed:
        return await self._apply(actor, await self.schedule.cancel(actor, visit_id, body))

    async def cancel_without_approved_contact(
        self, actor: Actor, contact: str, inmate: str
    ) -> list[Visit]:
        """The approvals owner's step 4 (signaling/approvals.py)."""
        cancelled = await self.schedule.cancel_without_approved_contact(actor, contact, inmate)
        for visit in cancelled:
            await self._apply(actor, visit)
        return cancelled

    async def _apply(self, actor: Actor, visit: Visit) -> Changed:
        stopped = self._learn_and_stop(visit, actor.sub)  # 2.
        ended = await self.enforcer.complete(stopped) if stopped else []  # 3.
        return Changed(visit, ended)

    # -- one change on this node's live sessions --------------------------------------------
    def _learn_and_stop(self, visit: Visit, by: str) -> Stopped | None:
        """Step 2, one synchronous block (see the module's docstring)."""
        self.policy.visit_changes.put(visit)
        call = self.sessions.calls.get(visit.id)
        if call is not None and call.visit.version < visit.version:
            call.visit = visit
        if call is None:
            return None
        # SPEC §2's end reasons: staff's own change is `operator:<sub>` (their subject, as
        # for a call ended from the console); one forced by a withdrawn approval says so.
        withdrawn = visit.cancel_reason == Reason.APPROVAL_WITHDRAWN
        reason = Reason.APPROVAL_WITHDRAWN if withdrawn else by
        if visit.status == "cancelled":
            message = cancelled_ending(visit.cancel_reason, visit.cancel_note)
            return self.enforcer.halt_matching(
                f"visit:{visit.id}", reason, code=Close.VISIT_OVER, message=message
            )
        now = self.policy.clock()
        if not visit.is_open(now, early=self.policy.rules.visit_early_join_seconds):
            message = moved_ending(format_time(visit.starts_at) or "")
            return self.enforcer.halt_matching(
                f"visit:{visit.id}", reason, code=Close.VISIT_OVER, message=message
            )
        return None

    # -- the clock ------------------------------------------------------------------------
    async def close_due(self) -> list[Visit]:
        """Every few seconds: visits whose window passed become ended or no-show; changes
        older than their window are forgotten."""
        now = time.monotonic()
        if now - self._closed_at < CLOSE_EVERY_SECONDS:
            return []
        self._closed_at = now
        self.policy.visit_changes.prune(self.policy.clock())
        return await self.schedule.close_due()

    # -- other nodes (signaling/bus.py delivers) --------------------------------------------
    async def reload(self) -> None:
        return None  # admission reads visits from the store; only changes meanwhile matter

    async def heard(self, event: AuditEvent, *, announced: bool) -> None:
        if event.action not in CHANGED:
            return
        visit = await self.policy.store.get_visit(event.subject.removeprefix("visit:"))
        if visit is None:
            return
        stopped = self._learn_and_stop(visit, event.actor)
        if stopped:
            self.enforcer.complete_later(stopped)

"""An approval's life on this node (SPEC §4: "approvals are enforced like directives").

The REST API and the cluster bus call `Approvals` and nothing else. Follow `set` to read what
happens when staff deny or withdraw a contact's approval for an inmate:

1. commit: `Policy.set_approval` validates it and commits it with its audit event;
2. stop (synchronous, no `await`): the approval index learns the new status, and when it no
   longer admits, every live session of that contact with that inmate (`pair:I:C`) is halted
   (`Enforcer.halt_matching`, end reason `approval-withdrawn`, close 4403). Admission reads
   the same index in its own synchronous block (signaling/admission.py), so the argument made
   there for directives holds word for word: an admission in flight is either found and
   halted here, or sees the withdrawal and is refused `not-approved`;
3. complete: each ended session is told why and its end recorded (`Enforcer.complete`);
4. cancel: the visits on which no contact is approved any more, future and live, are
   cancelled with reason `approval-withdrawn` (signaling/visits.py, which ends what is live).

Another node runs step 2 and 3 when the bus delivers the `approval.set` event (`heard`); the
cancellations reach it as their own `visit.cancelled` events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policy.actor import Actor
from policy.approval import Approval
from policy.audit import AuditEvent
from policy.errors import PolicyError
from policy.rfc3339 import parse_time
from policy.service import Policy
from signaling.enforcer import Enforcer, Stopped
from signaling.protocol import TOLD, Reason
from signaling.visits import Visits

SET = "approval.set"


@dataclass(frozen=True)
class Decided:
    """An approval as its API answer reports it."""

    approval: Approval
    previous: str | None
    sessions_ended: list[str]
    visits_cancelled: list[str]


@dataclass
class Approvals:
    policy: Policy
    enforcer: Enforcer
    visits: Visits

    async def set(self, actor: Actor, contact_id: str, body: object) -> Decided:
        """Commit, stop, complete, cancel: the answer is ready when this returns."""
        approval, previous = await self.policy.set_approval(actor, contact_id, body)  # 1.
        stopped = self._learn_and_stop(approval)  # 2.
        ended = await self.enforcer.complete(stopped) if stopped else []  # 3.
        cancelled = []
        if approval.status != "approved":  # 4.
            cancelled = await self.visits.cancel_without_approved_contact(
                actor, approval.contact, approval.inmate
            )
        return Decided(approval, previous, ended, [v.id for v in cancelled])

    def _learn_and_stop(self, approval: Approval) -> Stopped | None:
        """Step 2, one synchronous block: into the index, then halt what it no longer admits."""
        self.policy.approvals.put(approval.contact, approval.inmate, approval.status)
        if approval.status == "approved":
            return None
        return self.enforcer.halt_matching(
            f"pair:{approval.inmate}:{approval.contact}",
            Reason.APPROVAL_WITHDRAWN,
            message=TOLD[Reason.APPROVAL_WITHDRAWN],
        )

    # -- other nodes (signaling/bus.py delivers) --------------------------------------------
    async def reload(self) -> None:
        await self.policy.load_approvals()

    async def heard(self, event: AuditEvent, *, announced: bool) -> None:
        """Another node's `approval.set`: learn it and halt what it no longer admits here.
        Announced, the event is the newest: its state is current; otherwise a later event may
        have changed the approval, so its current state is read."""
        if event.action != SET:
            return
        approval = carried(event) if announced else None
        if approval is None:
            _, inmate, contact = (event.subject.split(":") + ["", ""])[:3]
            approval = await self.policy.store.get_approval(contact, inmate)
        if approval is None:
            return
        stopped = self._learn_and_stop(approval)
        if stopped:
            self.enforcer.complete_later(stopped)


def carried(event: AuditEvent) -> Approval | None:
    """The approval an `approval.set` event carries (None: an old event, or unreadable)."""
    data: dict[str, Any] = event.data
    try:
        return Approval(
            contact=str(data["contact"]), inmate=str(data["inmate"]), status=str(data["status"]),
            updated_at=parse_time(data["updated_at"], "updated_at"), reason=data.get("reason"),
            decided_by=data.get("decided_by"),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, PolicyError):
        return None

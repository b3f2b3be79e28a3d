"""A change of a minor's guardians on this node's live calls (SPEC §4 "Minors").

The REST API and the cluster bus call `Guardians` and nothing else. Follow `set`:

1. commit: `Policy.set_guardians` validates the guardians and commits them with the audit
   event `contact.guardians-set`;
2. apply (synchronous, no `await`): every live session of the minor on this node learns who
   of their guardians is on its visit now (`Session.ward`), and its call's minors are stepped
   (`Enforcer.reconsider`): a minor whose only guardian in the call was just removed is paused
   at once (no media either way, ended `guardian-left` after the grace unless another
   guardian of theirs comes), one whose newly named guardian is in the call is let in. A minor
   whose state stays the same is told the new names (`hold`).

Another node runs step 2 when the bus delivers the event (`heard`): a visit's call lives on
one node, so that is where the minor's sessions are.

A minor's admission reads their guardians from the store before its synchronous block, so a
change applied during those reads would miss it (it is not live yet). Each apply is
therefore numbered: admission takes `mark()` before it reads, and in its synchronous block
`applied_since(minor, mark)` gives it the guardians of a change applied meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policy.actor import Actor
from policy.audit import AuditEvent
from policy.guardian import GUARDIANS_SET, ward_of
from policy.roster import Contact
from policy.service import Policy
from signaling.enforcer import Enforcer
from signaling.registry import LiveSessions


@dataclass
class Guardians:
    policy: Policy
    sessions: LiveSessions
    enforcer: Enforcer
    _applied: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    """By minor: the number of the last change applied here, and its guardians."""
    _changes: int = 0

    async def set(self, actor: Actor, contact_id: str, body: object) -> Contact:
        """Commit, then apply to the live calls here: the answer is ready when this returns."""
        contact = await self.policy.set_guardians(actor, contact_id, body)  # 1.
        self._apply(contact.id, contact.guardians)  # 2.
        return contact

    def mark(self) -> int:
        """Where the changes applied here stand (an admission takes it before its reads)."""
        return self._changes

    def applied_since(self, minor: str, mark: int) -> tuple[str, ...] | None:
        """The guardians of `minor` set by a change applied here after `mark`, else None."""
        found = self._applied.get(minor)
        return found[1] if found is not None and found[0] > mark else None

    def _apply(self, minor: str, guardians: tuple[str, ...]) -> None:
        """Step 2, one synchronous block."""
        self._changes += 1
        self._applied[minor] = (self._changes, guardians)
        for session in self.sessions.matching(f"contact:{minor}"):
            if session.ward is None or session.ended:
                continue
            ward = ward_of(minor, True, guardians, session.visit.contacts)
            assert ward is not None
            call = self.sessions.calls.get(session.visit.id)
            if call is not None:
                self.enforcer.rename_guardians(session, ward, call)

    # -- other nodes (signaling/bus.py delivers) --------------------------------------------
    async def reload(self) -> None:
        """Nothing to rebuild: admission reads guardians from the store."""

    async def heard(self, event: AuditEvent, *, announced: bool) -> None:
        """Another node's `contact.guardians-set`. Announced, it carries the current
        guardians; otherwise a later event may have changed them, so they are read."""
        if event.action != GUARDIANS_SET:
            return
        minor = event.subject.removeprefix("contact:")
        if announced and isinstance(event.data.get("guardians"), list):
            guardians = tuple(sorted(str(g) for g in event.data["guardians"]))
        else:
            contact = await self.policy.store.get_contact(minor)
            if contact is None:
                return
            guardians = contact.guardians
        self._apply(minor, guardians)

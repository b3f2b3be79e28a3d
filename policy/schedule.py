"""Scheduling visits (SPEC §6, "Scheduling and the console's day"): book, move, cancel, change
kind, and close them once their window has passed; and the visits report.

The rules, each refused with a code the console shows the message of:

- a kiosk is never double-booked: no two booked visits at one kiosk overlap, counting the
  buffer (`Rules.visit_buffer_seconds`) a kiosk keeps free between visits; decided inside the
  write's transaction (the store's `add_visit`/`update_visit`), so two bookings racing for
  the same slot cannot both win;
- a visit is no longer than its facility's maximum (`Facility.max_visit_seconds`, else
  `Rules.max_visit_seconds`);
- its contacts are approved for its inmate (and not suspended), and a minor on it has a
  guardian of theirs on it too (`guardian-required`, policy/guardian.py);
- a privileged visit is never monitored, and a visit's kind does not change once it can be
  joined (SPEC §10): its recording and monitoring are decided when its first session starts;
- a cancellation has a structured reason (`CANCEL_REASONS`; `other` needs a note), and only a
  booked visit whose window has not passed can be cancelled or moved;
- a visit nobody of the family joined becomes `no-show` after its window, one somebody did
  `ended` (`close_due`, run by the scheduler of every node: the version guard lets one win).

Every change is one audit event carrying the whole visit as it is now (`visit`) and, for a
move or a change of kind, the values before (`old`) and after (`new`): the events alone
rebuild the table. Live sessions are signaling's business (signaling/visits.py): what a
cancellation or a move does to them is decided there, after the commit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from policy.actor import SYSTEM, Actor
from policy.errors import Conflict, Malformed, NotFound, RuleBroken
from policy.guardian import check_booking, ward_of
from policy.rfc3339 import format_time, parse_time
from policy.roster import check_id, check_text
from policy.service import Policy, new_id
from policy.store import AuditDraft
from policy.visit import (
    APPROVAL_WITHDRAWN,
    CANCEL_REASONS,
    VISIT_KINDS,
    VISIT_STATUSES,
    Visit,
    subject_keys,
    window_json,
)

KIND_LOCK_MARGIN = 60.0  # a visit's kind is fixed this long before it can first be joined


def _body(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed("bad-body", "the request body must be a JSON object")
    return value


@dataclass
class Schedule:
    policy: Policy

    @property
    def buffer(self) -> float:
        return self.policy.rules.visit_buffer_seconds

    # -- booking ------------------------------------------------------------------------
    async def create(self, actor: Actor, body: object) -> Visit:
        policy, rules = self.policy, self.policy.rules
        data = _body(body)
        inmate_id = check_id(data.get("inmate"), "inmate")
        device_id = check_id(data.get("device"), "device")
        contacts = data.get("contacts")
        if not isinstance(contacts, list) or not contacts:
            raise Malformed("bad-field", "contacts must be a non-empty list of contact ids")
        contact_ids = tuple(check_id(c, "contact") for c in contacts)
        if len(set(contact_ids)) != len(contact_ids):
            raise Malformed("bad-field", "contacts must not repeat")
        if len(contact_ids) > rules.max_contacts_per_visit:
            raise RuleBroken(
                "too-many-contacts", f"a visit has at most {rules.max_contacts_per_visit} contacts"
            )
        kind = data.get("kind", "social")
        if kind not in VISIT_KINDS:
            raise Malformed("bad-field", "kind must be 'social' or 'privileged'")
        starts_at, ends_at = _window(data)
        now = policy.clock()
        if ends_at <= now:
            raise RuleBroken("visit-in-past", "ends_at is in the past")

        inmate = await policy.store.get_inmate(inmate_id)
        if inmate is None:
            raise NotFound("unknown-inmate", f"no inmate {inmate_id!r}")
        device = await policy.get_device(device_id)
        if device.facility != inmate.facility:
            raise Conflict(
                "wrong-facility", f"device {device_id} is not in inmate {inmate_id}'s facility"
            )
        await self._within_maximum(inmate.facility, starts_at, ends_at)
        visit = Visit(
            id=new_id("V"), facility=inmate.facility, inmate=inmate.id, device=device.id,
            contacts=contact_ids, starts_at=starts_at, ends_at=ends_at, kind=kind,
            created_by=actor.sub, created_at=now,
        )  # fmt: skip
        on_visit = []
        for contact_id in contact_ids:
            contact = await policy.get_contact(contact_id)
            on_visit.append(contact)
            if contact.approvals.get(inmate.id) != "approved":
                raise Conflict(
                    "contact-not-approved",
                    f"contact {contact_id} is not approved for inmate {inmate.id}",
                )
            # A suspended contact cannot be put on a new visit while suspended (SPEC §3/§4).
            decision = policy.evaluate(subject_keys(visit, contact=contact_id))
            if not decision.admitted:
                assert decision.blocking is not None
                raise Conflict(
                    "suspended",
                    f"contact {contact_id} is suspended by directive {decision.blocking.id} "
                    f"until {format_time(decision.blocking.expires_at)}",
                )
        decision = policy.evaluate(subject_keys(visit))
        if not decision.admitted:
            assert decision.blocking is not None
            raise Conflict(
                "suspended", f"this visit is refused by directive {decision.blocking.id}"
            )
        check_booking(
            [w for c in on_visit if (w := ward_of(c.id, c.minor, c.guardians, contact_ids))],
            {c.id: c.name for c in on_visit},
        )
        await self._kiosk_free(visit)
        await policy.store.add_visit(
            visit,
            AuditDraft(actor.sub, "visit.created", f"visit:{visit.id}", visit.to_json()),
            buffer=self.buffer,
        )
        return visit

    async def reschedule(self, actor: Actor, visit_id: str, body: object) -> Visit:
        """Move a booked visit to a new window, and/or to another kiosk of its facility (one
        out of service, say); it keeps its id, so the links sent out go on working. Refused
        while someone is in it (end the call, or cancel the visit)."""
        data = _body(body)
        visit = await self._changeable(visit_id)
        starts_at, ends_at = _window(data)
        device = visit.device
        if data.get("device") not in (None, visit.device):
            other = await self.policy.get_device(check_id(data.get("device"), "device"))
            if other.facility != visit.facility:
                raise Conflict("wrong-facility", f"kiosk {other.id} is not in the visit's facility")
            device = other.id
        if (starts_at, ends_at, device) == (visit.starts_at, visit.ends_at, visit.device):
            raise RuleBroken("unchanged", "the visit is at that time and kiosk already")
        now = self.policy.clock()
        if ends_at <= now:
            raise RuleBroken("visit-in-past", "ends_at is in the past")
        await self._within_maximum(visit.facility, starts_at, ends_at)
        if await self.policy.store.list_sessions(live=True, visit=visit.id):
            raise Conflict(
                "visit-live", "someone is in this visit now: end the call first, or cancel it"
            )
        moved = visit.with_changes(
            starts_at=starts_at, ends_at=ends_at, device=device,
            moved_from=(visit.starts_at, visit.ends_at), moved_at=now, moved_by=actor.sub,
        )  # fmt: skip
        await self._kiosk_free(moved)
        await self.policy.store.update_visit(
            moved,
            AuditDraft(actor.sub, "visit.rescheduled", f"visit:{visit.id}", {
                "visit": moved.to_json(),
                "old": {**window_json(visit.starts_at, visit.ends_at), "device": visit.device},
                "new": {**window_json(starts_at, ends_at), "device": device},
            }),
            buffer=self.buffer,
        )  # fmt: skip
        return moved

    async def change_kind(self, actor: Actor, visit_id: str, body: object) -> Visit:
        """Social <-> privileged, only until shortly before the visit can first be joined."""
        kind = _body(body).get("kind")
        if kind not in VISIT_KINDS:
            raise Malformed("bad-field", "kind must be 'social' or 'privileged'")
        visit = await self._changeable(visit_id)
        if kind == visit.kind:
            raise RuleBroken("unchanged", f"the visit is {kind} already")
        opens = visit.starts_at - self.policy.rules.visit_early_join_seconds
        if self.policy.clock() >= opens - KIND_LOCK_MARGIN or await self.policy.store.list_sessions(
            live=True, visit=visit.id
        ):
            raise Conflict(
                "visit-open",
                "a visit's kind cannot change once it can be joined: cancel it and book a new one",
            )
        changed = visit.with_changes(kind=kind)
        await self.policy.store.update_visit(
            changed,
            AuditDraft(actor.sub, "visit.kind-changed", f"visit:{visit.id}", {
                "visit": changed.to_json(), "old": {"kind": visit.kind}, "new": {"kind": kind},
            }),
        )  # fmt: skip
        return changed

    async def cancel(self, actor: Actor, visit_id: str, body: object) -> Visit:
        """Cancel with a structured reason (and a note: required for `other`), shown to the
        family. A live visit may be cancelled: its sessions end (signaling/visits.py)."""
        data = _body(body)
        reason = data.get("reason")
        if reason not in CANCEL_REASONS:
            raise Malformed("bad-reason", f"reason must be one of {', '.join(CANCEL_REASONS)}")
        note = data.get("note")
        if reason == "other" or note not in (None, ""):
            note = check_text(note, "note", max_length=500)
        else:
            note = None
        return await self._cancel(actor, await self._changeable(visit_id), reason, note)

    async def cancel_without_approved_contact(
        self, actor: Actor, contact: str, inmate: str
    ) -> list[Visit]:
        """SPEC §4: the visits of `inmate` with `contact` (now not approved), future or live,
        on which no contact is approved any more, are cancelled (`approval-withdrawn`)."""
        approvals, now = self.policy.approvals, self.policy.clock()
        cancelled = []
        for visit in await self.policy.store.list_visits(
            inmate=inmate, contact=contact, status="booked", after=now
        ):
            if any(approvals.approved(c, inmate) for c in visit.contacts):
                continue
            try:
                cancelled.append(await self._cancel(actor, visit, APPROVAL_WITHDRAWN, None))
            except Conflict:
                continue  # changed meanwhile (cancelled by someone else): nothing more to do
        return cancelled

    async def _cancel(self, actor: Actor, visit: Visit, reason: str, note: str | None) -> Visit:
        cancelled = visit.with_changes(
            status="cancelled", cancel_reason=reason, cancel_note=note,
            cancelled_at=self.policy.clock(), cancelled_by=actor.sub,
        )  # fmt: skip
        await self.policy.store.update_visit(
            cancelled,
            AuditDraft(actor.sub, "visit.cancelled", f"visit:{visit.id}", {
                "visit": cancelled.to_json(), "reason": reason, "note": note,
                "old": {"status": visit.status}, "new": {"status": "cancelled"},
            }),
        )  # fmt: skip
        return cancelled

    # -- the clock ----------------------------------------------------------------------
    async def close_due(self) -> list[Visit]:
        """Booked visits whose window has passed become `ended` (a contact joined) or
        `no-show` (none did). Every node runs this; the version guard lets one win."""
        store, now = self.policy.store, self.policy.clock()
        closed = []
        for visit in await store.list_visits(status="booked", before=now):
            if visit.ends_at > now:
                continue
            records = await store.list_sessions(live=False, visit=visit.id)
            joined = sorted({r.sub for r in records if r.mode == "participant"})
            came = any(r.role == "family" for r in records if r.mode == "participant")
            status = "ended" if came else "no-show"
            done = visit.with_changes(status=status, closed_at=now)
            try:
                await store.update_visit(
                    done,
                    AuditDraft(SYSTEM.sub, f"visit.{status}", f"visit:{visit.id}", {
                        "visit": done.to_json(), "joined": joined,
                        "old": {"status": visit.status}, "new": {"status": status},
                    }),
                )  # fmt: skip
            except Conflict:
                continue  # another node closed it first
            closed.append(done)
        return closed

    # -- reading --------------------------------------------------------------------------
    async def report(self, facility: str | None = None) -> dict[str, Any]:
        """What happened to the visits: by status, kind and facility; cancellations by
        reason; no-shows by facility."""
        visits = await self.policy.store.list_visits(facility=facility)
        by_facility: dict[str, Counter[str]] = {}
        for visit in visits:
            by_facility.setdefault(visit.facility, Counter())[visit.status] += 1
        cancelled = [v for v in visits if v.status == "cancelled"]
        return {
            "visits": len(visits),
            "by_status": {s: sum(1 for v in visits if v.status == s) for s in VISIT_STATUSES},
            "by_kind": dict(Counter(v.kind for v in visits)),
            "cancelled_by_reason": dict(Counter(v.cancel_reason for v in cancelled)),
            "no_shows": sum(1 for v in visits if v.status == "no-show"),
            "moved": sum(1 for v in visits if v.moved_from is not None),
            "by_facility": {f: dict(c) for f, c in sorted(by_facility.items())},
        }

    # -- the rules --------------------------------------------------------------------------
    async def _changeable(self, visit_id: str) -> Visit:
        """A visit that may still be moved, cancelled or given another kind."""
        visit = await self.policy.get_visit(visit_id)
        if visit.status == "cancelled":
            raise Conflict("visit-cancelled", "this visit was cancelled already")
        if not visit.booked or visit.ends_at <= self.policy.clock():
            raise Conflict("visit-over", "this visit is over")
        return visit

    async def _within_maximum(self, facility_id: str, starts_at: float, ends_at: float) -> None:
        facility = await self.policy.get_facility(facility_id)
        longest = self.policy.max_visit_seconds(facility)
        if ends_at - starts_at > longest:
            raise RuleBroken(
                "visit-too-long",
                f"a visit at {facility.name} lasts at most {_minutes(longest)}",
            )

    async def _kiosk_free(self, visit: Visit) -> None:
        """Refuse a double booking, naming the visit in the way (the store decides again,
        in the write's transaction)."""
        taken = await self.policy.store.overlapping(
            visit.device, visit.starts_at - self.buffer, visit.ends_at + self.buffer,
            exclude=visit.id,
        )  # fmt: skip
        if taken:
            other = taken[0]
            gap = (
                f"; a kiosk keeps {_minutes(self.buffer)} free between visits"
                if self.buffer
                else ""
            )
            raise Conflict(
                "double-booked",
                f"kiosk {visit.device} is booked from {format_time(other.starts_at)} to "
                f"{format_time(other.ends_at)} (visit {other.id}){gap}",
            )


def _window(data: dict[str, Any]) -> tuple[float, float]:
    starts_at = parse_time(data.get("starts_at"), "starts_at")
    ends_at = parse_time(data.get("ends_at"), "ends_at")
    if ends_at <= starts_at:
        raise RuleBroken("bad-window", "ends_at must be after starts_at")
    return starts_at, ends_at


def _minutes(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}"

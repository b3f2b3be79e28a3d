"""The policy service: every rule of SPEC §4 and every write of the domain, in one place.

Signaling calls these methods and then acts on live sessions; nothing here knows about
sockets or media. Every write goes through the store together with its audit event.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from policy.actor import SYSTEM, Actor
from policy.appeal import Appeal
from policy.coverage import WINDOW, Coverage, coverage
from policy.directive import (
    ACTIONS,
    Decision,
    Directive,
    DirectiveIndex,
    is_broad,
    parse_scope,
    scope_kind,
)
from policy.errors import Conflict, Forbidden, Malformed, NotFound, RuleBroken
from policy.rfc3339 import format_time, parse_time
from policy.roster import APPROVAL_STATUSES, Contact, Device, Facility, Inmate, check_id, check_text
from policy.session import SessionRecord
from policy.store import AuditDraft, Store
from policy.visit import VISIT_KINDS, Visit, subject_keys


@dataclass(frozen=True)
class Rules:
    """Configurable limits; the defaults are SPEC §4's."""

    max_directive_seconds: float = 30 * 86400
    confirm_window_seconds: float = 15 * 60
    # A broad directive that would lapse sooner than this (unconfirmed time left on its scope
    # today) is refused `confirmation-required`: policy/coverage.py.
    min_unconfirmed_seconds: float = 60
    visit_early_join_seconds: float = 5 * 60
    max_visit_seconds: float = 4 * 3600
    max_contacts_per_visit: int = 4


MAX_APPEAL_TEXT = 2000  # characters: as long as a directive's reason or a decision's note


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


def _body(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed("bad-body", "the request body must be a JSON object")
    return value


@dataclass
class Policy:
    store: Store
    rules: Rules = field(default_factory=Rules)
    clock: Callable[[], float] = time.time
    index: DirectiveIndex = field(default_factory=DirectiveIndex)

    # -- admission ----------------------------------------------------------------------
    async def load(self) -> None:
        """Rebuild the in-memory index from the store (start-up, or catch-up after an outage).
        Closed directives are read too: the index remembers that they are closed."""
        fresh = DirectiveIndex()
        for directive in await self.store.list_directives():
            fresh.put(directive)
        self.index = fresh

    def evaluate(self, keys: tuple[str, ...] | list[str]) -> Decision:
        """The one function that decides admission: O(number of subject keys)."""
        return self.index.evaluate(keys, self.clock())

    def learn(self, directive: Directive) -> bool:
        """Apply a directive change made elsewhere (another node) to the local index; False
        when the index knows a later state of it already (the copy is stale, and ignored)."""
        return self.index.put(directive)

    # -- roster -------------------------------------------------------------------------
    async def create_facility(self, actor: Actor, body: object) -> Facility:
        data = _body(body)
        facility = Facility(id=check_id(data.get("id")), name=check_text(data.get("name"), "name"))
        await self.store.add_facility(
            facility,
            AuditDraft(
                actor.sub, "facility.created", f"facility:{facility.id}", facility.to_json()
            ),
        )
        return facility

    async def create_device(self, actor: Actor, body: object) -> Device:
        data = _body(body)
        device = Device(
            id=check_id(data.get("id")), facility=check_id(data.get("facility"), "facility")
        )
        await self._require_facility(device.facility)
        await self.store.add_device(
            device, AuditDraft(actor.sub, "device.created", f"device:{device.id}", device.to_json())
        )
        return device

    async def create_inmate(self, actor: Actor, body: object) -> Inmate:
        data = _body(body)
        inmate = Inmate(
            id=check_id(data.get("id")),
            facility=check_id(data.get("facility"), "facility"),
            name=check_text(data.get("name"), "name"),
        )
        await self._require_facility(inmate.facility)
        await self.store.add_inmate(
            inmate, AuditDraft(actor.sub, "inmate.created", f"inmate:{inmate.id}", inmate.to_json())
        )
        return inmate

    async def create_contact(self, actor: Actor, body: object) -> Contact:
        data = _body(body)
        minor = data.get("minor", False)
        if not isinstance(minor, bool):
            raise Malformed("bad-field", "minor must be true or false")
        contact = Contact(
            id=check_id(data.get("id")),
            name=check_text(data.get("name"), "name"),
            minor=minor,
            approvals={},
        )
        await self.store.add_contact(
            contact,
            AuditDraft(actor.sub, "contact.created", f"contact:{contact.id}", contact.to_json()),
        )
        return contact

    async def set_approval(self, actor: Actor, contact_id: str, body: object) -> Contact:
        data = _body(body)
        inmate_id = check_id(data.get("inmate"), "inmate")
        status = data.get("status")
        if status not in APPROVAL_STATUSES:
            raise Malformed("bad-field", f"status must be one of {', '.join(APPROVAL_STATUSES)}")
        if await self.store.get_contact(contact_id) is None:
            raise NotFound("unknown-contact", f"no contact {contact_id!r}")
        if await self.store.get_inmate(inmate_id) is None:
            raise NotFound("unknown-inmate", f"no inmate {inmate_id!r}")
        await self.store.set_approval(
            contact_id, inmate_id, status,
            AuditDraft(actor.sub, "approval.set", f"pair:{inmate_id}:{contact_id}", {"status": status}),
        )  # fmt: skip
        contact = await self.store.get_contact(contact_id)
        assert contact is not None
        return contact

    async def _require_facility(self, facility_id: str) -> None:
        if await self.store.get_facility(facility_id) is None:
            raise NotFound("unknown-facility", f"no facility {facility_id!r}")

    # -- visits -------------------------------------------------------------------------
    async def create_visit(self, actor: Actor, body: object) -> Visit:
        data = _body(body)
        inmate_id = check_id(data.get("inmate"), "inmate")
        device_id = check_id(data.get("device"), "device")
        contacts = data.get("contacts")
        if not isinstance(contacts, list) or not contacts:
            raise Malformed("bad-field", "contacts must be a non-empty list of contact ids")
        contact_ids = tuple(check_id(c, "contact") for c in contacts)
        if len(set(contact_ids)) != len(contact_ids):
            raise Malformed("bad-field", "contacts must not repeat")
        if len(contact_ids) > self.rules.max_contacts_per_visit:
            raise RuleBroken(
                "too-many-contacts",
                f"a visit has at most {self.rules.max_contacts_per_visit} contacts",
            )
        kind = data.get("kind", "social")
        if kind not in VISIT_KINDS:
            raise Malformed("bad-field", "kind must be 'social' or 'privileged'")
        starts_at = parse_time(data.get("starts_at"), "starts_at")
        ends_at = parse_time(data.get("ends_at"), "ends_at")
        if ends_at <= starts_at:
            raise RuleBroken("bad-window", "ends_at must be after starts_at")
        if ends_at - starts_at > self.rules.max_visit_seconds:
            raise RuleBroken(
                "visit-too-long",
                f"a visit lasts at most {self.rules.max_visit_seconds / 3600:g} hours",
            )
        now = self.clock()
        if ends_at <= now:
            raise RuleBroken("visit-in-past", "ends_at is in the past")

        inmate = await self.store.get_inmate(inmate_id)
        if inmate is None:
            raise NotFound("unknown-inmate", f"no inmate {inmate_id!r}")
        device = await self.store.get_device(device_id)
        if device is None:
            raise NotFound("unknown-device", f"no device {device_id!r}")
        if device.facility != inmate.facility:
            raise Conflict(
                "wrong-facility", f"device {device_id} is not in inmate {inmate_id}'s facility"
            )
        visit = Visit(
            id=new_id("V"), facility=inmate.facility, inmate=inmate.id, device=device.id,
            contacts=contact_ids, starts_at=starts_at, ends_at=ends_at, kind=kind,
            created_by=actor.sub, created_at=now,
        )  # fmt: skip
        for contact_id in contact_ids:
            contact = await self.store.get_contact(contact_id)
            if contact is None:
                raise NotFound("unknown-contact", f"no contact {contact_id!r}")
            if contact.approvals.get(inmate.id) != "approved":
                raise Conflict(
                    "contact-not-approved",
                    f"contact {contact_id} is not approved for inmate {inmate.id}",
                )
            # A suspended contact cannot be put on a new visit while suspended (SPEC §3/§4).
            decision = self.evaluate(subject_keys(visit, contact=contact_id))
            if not decision.admitted:
                assert decision.blocking is not None
                raise Conflict(
                    "suspended",
                    f"contact {contact_id} is suspended by directive {decision.blocking.id} "
                    f"until {format_time(decision.blocking.expires_at)}",
                )
        decision = self.evaluate(subject_keys(visit))
        if not decision.admitted:
            assert decision.blocking is not None
            raise Conflict(
                "suspended", f"this visit is refused by directive {decision.blocking.id}"
            )
        await self.store.add_visit(
            visit, AuditDraft(actor.sub, "visit.created", f"visit:{visit.id}", visit.to_json())
        )
        return visit

    async def get_visit(self, visit_id: str) -> Visit:
        visit = await self.store.get_visit(visit_id)
        if visit is None:
            raise NotFound("unknown-visit", f"no visit {visit_id!r}")
        return visit

    async def get_device(self, device_id: str) -> Device:
        device = await self.store.get_device(device_id)
        if device is None:
            raise NotFound("unknown-device", f"no device {device_id!r}")
        return device

    async def current_visit(self, device_id: str) -> tuple[Visit | None, Visit | None]:
        """The visit open at a kiosk now, and the next one after it."""
        now = self.clock()
        visits = await self.store.list_visits(device=device_id, after=now)
        current = next(
            (v for v in visits if v.is_open(now, early=self.rules.visit_early_join_seconds)), None
        )
        upcoming = next((v for v in visits if v is not current and v.starts_at > now), None)
        return current, upcoming

    # -- directives ---------------------------------------------------------------------
    async def issue(self, actor: Actor, body: object) -> Directive:
        data = _body(body)
        scope = parse_scope(data.get("scope"))
        action = data.get("action")
        if action not in ACTIONS:
            raise Malformed("bad-action", f"action must be one of {', '.join(ACTIONS)}")
        reason = check_text(data.get("reason"), "reason", max_length=2000)
        legal_basis = check_text(data.get("legal_basis"), "legal_basis", max_length=300)
        if data.get("expires_at") in (None, ""):
            raise RuleBroken(
                "expiry-required",
                "expires_at is required: directives are time-limited, 'until further notice' is refused",
            )
        now = self.clock()
        expires_at = parse_time(data["expires_at"], "expires_at")
        starts_at = parse_time(data["starts_at"], "starts_at") if data.get("starts_at") else now
        starts_at = max(starts_at, now)
        if expires_at <= max(now, starts_at):
            raise RuleBroken(
                "expiry-in-past", "expires_at must be in the future and after starts_at"
            )
        if expires_at - starts_at > self.rules.max_directive_seconds:
            days = self.rules.max_directive_seconds / 86400
            raise RuleBroken(
                "too-long", f"a directive lasts at most {days:g} days; issue a new one when it ends"
            )
        await self._require_scope_target(scope)
        confirm_by = None
        if is_broad(scope):  # unconfirmed for as long as the scope's coverage allows
            covered = await self.scope_coverage(scope, starts_at=starts_at)
            if covered.lapse_at is None:
                raise RuleBroken("confirmation-required", covered.refusal())
            confirm_by = covered.lapse_at
        directive = Directive(
            id=new_id("D"), scope=scope, action=action, reason=reason, legal_basis=legal_basis,
            issued_by=actor.sub, issued_at=now, starts_at=starts_at, expires_at=expires_at,
            confirm_by=confirm_by,
        )  # fmt: skip
        await self.store.add_directive(
            directive,
            AuditDraft(
                actor.sub, "directive.issued", f"directive:{directive.id}", directive.to_json()
            ),
        )
        self.index.put(directive)
        return directive

    async def scope_coverage(self, scope: object, *, starts_at: float | None = None) -> Coverage:
        """A broad scope's unconfirmed coverage now (policy/coverage.py), read from the
        store: every node counts the same directives."""
        scope = parse_scope(scope)
        if not is_broad(scope):
            raise RuleBroken("not-broad", "only system and facility scopes need confirmation")
        now = self.clock()
        return coverage(
            await self.store.list_directives(scope=scope, closed_after=now - WINDOW),
            scope, now, budget=self.rules.confirm_window_seconds,
            minimum=self.rules.min_unconfirmed_seconds, starts_at=starts_at,
        )  # fmt: skip

    async def _require_scope_target(self, scope: str) -> None:
        kind, *ids = scope.split(":")
        lookups: dict[str, Callable[[str], Any]] = {
            "facility": self.store.get_facility, "device": self.store.get_device,
            "inmate": self.store.get_inmate, "contact": self.store.get_contact,
            "visit": self.store.get_visit,
        }  # fmt: skip
        targets = (
            list(zip(["inmate", "contact"], ids, strict=True))
            if kind == "pair"
            else [(kind, i) for i in ids]
        )
        for target_kind, target_id in targets:
            if await lookups[target_kind](target_id) is None:
                raise RuleBroken(
                    "unknown-target", f"scope names an unknown {target_kind} {target_id!r}"
                )

    async def get_directive(self, directive_id: str) -> Directive:
        directive = await self.store.get_directive(directive_id)
        if directive is None:
            raise NotFound("unknown-directive", f"no directive {directive_id!r}")
        return directive

    async def lift(self, actor: Actor, directive_id: str, body: object) -> Directive:
        reason = check_text(_body(body).get("reason"), "reason", max_length=2000)
        return await self._close(actor, await self.get_directive(directive_id), "lifted", reason)

    async def confirm(self, actor: Actor, directive_id: str) -> Directive:
        directive = await self.get_directive(directive_id)
        if actor.role != "supervisor":
            raise Forbidden(
                "supervisor-required", "only a supervisor can confirm a broad directive"
            )
        if actor.sub == directive.issued_by:
            raise Forbidden(
                "self-confirmation",
                "a broad directive must be confirmed by a second, different supervisor",
            )
        if not directive.broad:
            raise Conflict("not-broad", "only system and facility directives need confirmation")
        if directive.status != "active":
            raise Conflict("not-active", f"the directive is {directive.status}")
        if directive.confirmed_by is not None:
            raise Conflict("already-confirmed", f"already confirmed by {directive.confirmed_by}")
        confirmed = directive.with_changes(confirmed_by=actor.sub, confirmed_at=self.clock())
        await self.store.update_directive(
            confirmed,
            AuditDraft(
                actor.sub,
                "directive.confirmed",
                f"directive:{directive.id}",
                {"confirmed_by": actor.sub, "confirmed_at": format_time(confirmed.confirmed_at)},
            ),
            expect_status="active",
        )
        self.index.put(confirmed)
        return confirmed

    async def close_due(self) -> list[Directive]:
        """Expire directives past `expires_at`; lapse broad ones unconfirmed past `confirm_by`."""
        now = self.clock()
        closed = []
        for directive in self.index.due(now):
            status = "expired" if directive.expires_at <= now else "lapsed"
            note = (
                "reached its expiry"
                if status == "expired"
                else "not confirmed by a second supervisor in time"
            )
            try:
                closed.append(await self._close(SYSTEM, directive, status, note))
            except Conflict:
                # Another node closed it first: adopt the stored state.
                stored = await self.store.get_directive(directive.id)
                if stored is not None:
                    self.index.put(stored)
        return closed

    async def _close(
        self, actor: Actor, directive: Directive, status: str, reason: str
    ) -> Directive:
        if directive.status != "active":
            raise Conflict("not-active", f"the directive is already {directive.status}")
        closed = directive.with_changes(
            status=status, closed_at=self.clock(), closed_by=actor.sub, close_reason=reason
        )
        action = {
            "lifted": "directive.lifted",
            "expired": "directive.expired",
            "lapsed": "directive.lapsed",
        }[status]
        # The event carries every field it changes, so the chain alone says what the row is.
        data = {"reason": reason, "closed_at": format_time(closed.closed_at)}
        await self.store.update_directive(
            closed,
            AuditDraft(actor.sub, action, f"directive:{directive.id}", data),
            expect_status="active",
        )
        self.index.put(closed)
        return closed

    async def record_enforcement(
        self, actor: Actor, directive: Directive, session_ids: list[str], *, node: str | None = None
    ) -> Directive:
        """Remember how many live sessions a directive ended (for its answer and the report).

        Each node adds the sessions it ended to the stored count, in place, so the counts of
        several nodes add up and a lift committed meanwhile is never written back over.
        Returns the directive as stored now.
        """
        data: dict[str, Any] = {"sessions": session_ids}
        if node is not None:
            data["node"] = node
        await self.store.count_enforcement(
            directive.id, len(session_ids),
            AuditDraft(actor.sub, "directive.enforced", f"directive:{directive.id}", data),
        )  # fmt: skip
        current = await self.store.get_directive(directive.id)
        if current is None:  # cannot happen: directives are never deleted
            return directive.with_changes(
                sessions_ended=directive.sessions_ended + len(session_ids)
            )
        self.index.put(current)  # newer than ours: e.g. lifted meanwhile on another node
        return current

    # -- appeals ------------------------------------------------------------------------
    async def file_appeal(self, actor: Actor, directive_id: str, body: object) -> Appeal:
        """One open appeal per person per directive (SPEC §4): a second while the first is
        open is refused (`appeal-open`); once it is decided, a new one may be filed. The
        store's unique index makes the rule hold for concurrent filings too."""
        text = check_text(_body(body).get("text"), "text", max_length=MAX_APPEAL_TEXT)
        directive = await self.get_directive(directive_id)
        if actor.role != "family" or actor.visit is None:
            raise Forbidden("family-only", "appeals are filed by the affected family member")
        visit = await self.get_visit(actor.visit)
        contact_id = actor.subject_id
        if contact_id not in visit.contacts or directive.scope not in subject_keys(
            visit, contact=contact_id
        ):
            raise Forbidden("not-affected", "this directive did not apply to you")
        await self._refuse_second_appeal(directive.id, actor.sub)
        appeal = Appeal(
            id=new_id("A"),
            directive=directive.id,
            filed_by=actor.sub,
            text=text,
            filed_at=self.clock(),
        )
        try:
            await self.store.add_appeal(
                appeal,
                AuditDraft(
                    actor.sub,
                    "appeal.filed",
                    f"directive:{directive.id}",
                    {"appeal": appeal.id, "text": text},
                ),
            )
        except Conflict:  # a concurrent filing won the unique index
            await self._refuse_second_appeal(directive.id, actor.sub)
            raise
        return appeal

    async def _refuse_second_appeal(self, directive_id: str, filed_by: str) -> None:
        for appeal in await self.store.list_appeals(directive=directive_id):
            if appeal.filed_by == filed_by and appeal.status == "open":
                raise Conflict(
                    "appeal-open",
                    f"You already sent an appeal against this decision (reference {appeal.id})."
                    " Staff will decide it before another one can be sent.",
                )

    async def decide_appeal(
        self, actor: Actor, appeal_id: str, body: object
    ) -> tuple[Appeal, Directive | None]:
        """Uphold the directive, or lift it; never by the directive's own issuer."""
        data = _body(body)
        decision = data.get("decision")
        if decision not in ("uphold", "lift"):
            raise Malformed("bad-field", "decision must be 'uphold' or 'lift'")
        note = check_text(data.get("note"), "note", max_length=2000)
        appeal = await self.store.get_appeal(appeal_id)
        if appeal is None:
            raise NotFound("unknown-appeal", f"no appeal {appeal_id!r}")
        if appeal.status != "open":
            raise Conflict("already-decided", f"the appeal was already {appeal.status}")
        directive = await self.get_directive(appeal.directive)
        if actor.sub == directive.issued_by:
            raise Forbidden(
                "issuer-cannot-decide",
                "an appeal is decided by someone other than the directive's issuer",
            )
        decided = replace(
            appeal, status="upheld" if decision == "uphold" else "lifted",
            decided_by=actor.sub, decided_at=self.clock(), decision_note=note,
        )  # fmt: skip
        await self.store.decide_appeal(
            decided,
            AuditDraft(actor.sub, "appeal.decided", f"directive:{directive.id}",
                       {"appeal": appeal.id, "decision": decided.status, "note": note}),
        )  # fmt: skip
        lifted = None
        if decision == "lift" and directive.status == "active":
            lifted = await self._close(
                actor, directive, "lifted", f"appeal {appeal.id} granted: {note}"
            )
        return decided, lifted

    # -- sessions -----------------------------------------------------------------------
    async def session_started(self, record: SessionRecord) -> None:
        await self.store.session_started(
            record,
            AuditDraft(record.sub, "session.started", f"visit:{record.visit}",
                       {"session": record.id, "role": record.role, "mode": record.mode, "node": record.node}),
        )  # fmt: skip

    async def session_ended(
        self, record: SessionRecord, reason: str, *, ended_at: float | None = None
    ) -> None:
        """Record a session's end: now, or at `ended_at` (a record written late, once an
        unavailable store answers again, keeps the moment the session really ended)."""
        await self.store.session_ended(
            record.id, self.clock() if ended_at is None else ended_at, reason,
            AuditDraft(record.sub, "session.ended", f"visit:{record.visit}",
                       {"session": record.id, "reason": reason, "node": record.node}),
        )  # fmt: skip

    async def audit(self, actor: Actor, action: str, subject: str, data: dict[str, Any]) -> None:
        await self.store.audit(AuditDraft(actor.sub, action, subject, data))

    # -- reports ------------------------------------------------------------------------
    async def suspension_report(self) -> dict[str, Any]:
        directives = await self.store.list_directives()
        appeals = await self.store.list_appeals()
        now = self.clock()
        planned = [d.expires_at - d.starts_at for d in directives]
        actual = [(d.closed_at or min(now, d.expires_at)) - d.starts_at for d in directives]
        return {
            "directives": len(directives),
            "by_scope_kind": dict(Counter(scope_kind(d.scope) for d in directives)),
            "by_action": dict(Counter(d.action for d in directives)),
            "by_status": dict(Counter(d.status for d in directives)),
            "by_reason": dict(Counter(d.reason for d in directives).most_common(20)),
            "broad": sum(1 for d in directives if d.broad),
            "targeted": sum(1 for d in directives if not d.broad),
            "sessions_ended": sum(d.sessions_ended for d in directives),
            "median_planned_seconds": statistics.median(planned) if planned else None,
            "median_actual_seconds": statistics.median(actual) if actual else None,
            "appeals": {"filed": len(appeals), **Counter(a.status for a in appeals)},
        }

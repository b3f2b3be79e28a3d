"""The policy service: every rule of SPEC §4 and every write of the domain, in one place
(the scheduling of visits is policy/schedule.py's, on top of this).

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
from policy.approval import APPROVAL_STATUSES, Approval, ApprovalIndex, withdraws
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
from policy.guardian import GUARDIANS_SET, check_guardians
from policy.recording import retention_days
from policy.rfc3339 import format_time, parse_time
from policy.roster import Contact, Device, Facility, Inmate, check_flag, check_id, check_text
from policy.session import SessionRecord
from policy.store import AuditDraft, Presence, Store
from policy.visit import Visit, VisitChanges, subject_keys


@dataclass(frozen=True)
class Rules:
    """Configurable limits; the defaults are SPEC §4's."""

    max_directive_seconds: float = 30 * 86400
    confirm_window_seconds: float = 15 * 60
    # A broad directive that would lapse sooner than this (unconfirmed time left on its scope
    # today) is refused `confirmation-required`: policy/coverage.py.
    min_unconfirmed_seconds: float = 60
    # How long a request (a broad directive past its scope's unconfirmed time, issued with
    # `await_confirmation`) waits for a second supervisor; None: the confirmation window.
    await_confirmation_seconds: float | None = None
    visit_early_join_seconds: float = 5 * 60
    max_visit_seconds: float = 4 * 3600  # a facility may set its own (Facility.max_visit_seconds)
    max_contacts_per_visit: int = 4
    visit_buffer_seconds: float = 5 * 60  # free time a kiosk keeps between two visits

    @property
    def request_wait_seconds(self) -> float:
        wait = self.await_confirmation_seconds
        return self.confirm_window_seconds if wait is None else wait


MIN_VISIT_SECONDS = 60.0
LONGEST_VISIT_SECONDS = 24 * 3600.0  # the most a facility's maximum may be


UNCONFIRMED = "not confirmed by a second supervisor in time"  # why a directive lapsed
MAX_APPEAL_TEXT = 2000  # characters: as long as a directive's reason or a decision's note


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


def _body(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed("bad-body", "the request body must be a JSON object")
    return value


def _visit_maximum(value: object) -> float | None:
    """A facility's maximum visit length in seconds (null: the server's default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Malformed("bad-field", "max_visit_seconds must be a number of seconds, or null")
    if not MIN_VISIT_SECONDS <= value <= LONGEST_VISIT_SECONDS:
        raise RuleBroken(
            "bad-maximum",
            f"max_visit_seconds must be between {MIN_VISIT_SECONDS:g} and {LONGEST_VISIT_SECONDS:g}",
        )
    return float(value)


RECORDING_POLICY = ("recording", "recording_retention_days", "operators_play_recordings")


def _recording_policy(actor: Actor, data: dict[str, Any], old: Facility) -> dict[str, Any]:
    """A facility's recording policy from a request: whether social visits are recorded,
    retention, whether operators may play. Only a supervisor changes it (an operator may send
    the values it has): turning recording off or widening who may watch is not an
    operator's call."""
    changed = [
        name for name in RECORDING_POLICY if name in data and data[name] != getattr(old, name)
    ]
    if changed and actor.role != "supervisor":
        raise Forbidden("supervisor-only", "only a supervisor sets a facility's recording policy")
    return {
        "recording": check_flag(data["recording"], "recording") if "recording" in data
        else old.recording,
        "recording_retention_days": retention_days(data["recording_retention_days"])
        if "recording_retention_days" in data else old.recording_retention_days,
        "operators_play_recordings": check_flag(
            data["operators_play_recordings"], "operators_play_recordings")
        if "operators_play_recordings" in data else old.operators_play_recordings,
    }  # fmt: skip


@dataclass
class Policy:
    store: Store
    rules: Rules = field(default_factory=Rules)
    clock: Callable[[], float] = time.time
    index: DirectiveIndex = field(default_factory=DirectiveIndex)
    approvals: ApprovalIndex = field(default_factory=ApprovalIndex)
    visit_changes: VisitChanges = field(default_factory=VisitChanges)

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

    async def load_approvals(self) -> None:
        """Rebuild the approval index from the store (start-up, or catch-up after an outage)."""
        fresh = ApprovalIndex()
        for approval in await self.store.list_approvals():
            fresh.put(approval.contact, approval.inmate, approval.status)
        self.approvals = fresh

    def max_visit_seconds(self, facility: Facility) -> float:
        return facility.max_visit_seconds or self.rules.max_visit_seconds

    # -- roster -------------------------------------------------------------------------
    async def create_facility(self, actor: Actor, body: object) -> Facility:
        data = _body(body)
        facility = Facility(
            id=check_id(data.get("id")),
            name=check_text(data.get("name"), "name"),
            max_visit_seconds=_visit_maximum(data.get("max_visit_seconds")),
            **_recording_policy(actor, data, Facility("-", "-")),
        )
        await self.store.add_facility(
            facility,
            AuditDraft(
                actor.sub, "facility.created", f"facility:{facility.id}", facility.to_json()
            ),
        )
        return facility

    async def update_facility(self, actor: Actor, facility_id: str, body: object) -> Facility:
        """Rename a facility, change its maximum visit length (visits booked already keep
        their length) or its recording policy (a supervisor's: `_recording_policy`). The
        event carries the row before and after."""
        data = _body(body)
        old = await self.get_facility(facility_id)
        new = replace(
            old,
            name=check_text(data["name"], "name") if "name" in data else old.name,
            max_visit_seconds=_visit_maximum(data["max_visit_seconds"])
            if "max_visit_seconds" in data
            else old.max_visit_seconds,
            **_recording_policy(actor, data, old),
        )
        return await self._edited(actor, "facility", old, new, self.store.update_facility)

    async def update_inmate(self, actor: Actor, inmate_id: str, body: object) -> Inmate:
        """Correct an inmate's name. (A move to another facility is a transfer: their booked
        visits are at that facility's kiosks, so it is not an edit.)"""
        data = _body(body)
        if "facility" in data:
            raise Malformed("not-editable", "an inmate's facility cannot be edited")
        old = await self.store.get_inmate(inmate_id)
        if old is None:
            raise NotFound("unknown-inmate", f"no inmate {inmate_id!r}")
        new = replace(old, name=check_text(data["name"], "name") if "name" in data else old.name)
        return await self._edited(actor, "inmate", old, new, self.store.update_inmate)

    async def update_contact(self, actor: Actor, contact_id: str, body: object) -> Contact:
        data = _body(body)
        old = await self.get_contact(contact_id)
        minor = check_flag(data.get("minor", old.minor), "minor")
        if minor and not old.minor and await self.store.wards_of(contact_id):
            raise Conflict(
                "is-guardian",
                f"contact {contact_id} is a guardian: a guardian is an adult"
                " (clear them as guardian of their minors first)",
            )
        if old.minor and not minor and old.guardians:
            raise Conflict("has-guardians", f"contact {contact_id} has guardians: clear them first")
        new = replace(
            old, name=check_text(data["name"], "name") if "name" in data else old.name, minor=minor
        )
        return await self._edited(actor, "contact", old, new, self.store.update_contact)

    async def _edited(self, actor: Actor, kind: str, old: Any, new: Any, write: Any) -> Any:
        """Write an edit with its audit event `<kind>.updated`: the fields before and after."""
        before, after = old.to_json(), new.to_json()
        changed = sorted(
            k for k in after if after[k] != before[k] and k not in ("approvals", "guardians")
        )
        if not changed:
            raise RuleBroken("unchanged", "nothing to change: the values are the current ones")
        await write(
            new,
            AuditDraft(actor.sub, f"{kind}.updated", f"{kind}:{new.id}", {
                "id": new.id, "changed": changed,
                "old": {k: before[k] for k in changed}, "new": {k: after[k] for k in changed},
            }),
        )  # fmt: skip
        return new

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
        minor = check_flag(data.get("minor", False), "minor")
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

    async def set_approval(
        self, actor: Actor, contact_id: str, body: object
    ) -> tuple[Approval, str | None]:
        """Ask for (`pending`), grant or deny a contact's approval for an inmate. Denying or
        withdrawing one needs a reason. Returns the approval as committed and the status it
        had before; what it does to live sessions and visits is signaling/approvals.py's.
        The event carries the whole row and the status before (its replay needs no other)."""
        data = _body(body)
        inmate_id = check_id(data.get("inmate"), "inmate")
        status = data.get("status")
        if status not in APPROVAL_STATUSES:
            raise Malformed("bad-field", f"status must be one of {', '.join(APPROVAL_STATUSES)}")
        await self.get_contact(contact_id)
        if await self.store.get_inmate(inmate_id) is None:
            raise NotFound("unknown-inmate", f"no inmate {inmate_id!r}")
        stored = await self.store.get_approval(contact_id, inmate_id)
        previous = stored.status if stored is not None else None
        reason = data.get("reason")
        if reason in (None, "") and withdraws(previous, status):
            raise Malformed(
                "reason-required", "say why: denying or withdrawing an approval needs a reason"
            )
        reason = None if reason in (None, "") else check_text(reason, "reason", max_length=1000)
        if previous == status and (stored.reason if stored else None) == reason:
            raise RuleBroken("unchanged", f"the approval is {status} already")
        approval = Approval(
            contact=contact_id, inmate=inmate_id, status=status, updated_at=self.clock(),
            reason=reason, decided_by=None if status == "pending" else actor.sub,
        )  # fmt: skip
        await self.store.set_approval(
            contact_id, inmate_id, status,
            AuditDraft(actor.sub, "approval.set", f"pair:{inmate_id}:{contact_id}",
                       {**approval.to_json(), "previous": previous}),
            reason=approval.reason, by=approval.decided_by,
        )  # fmt: skip
        return approval, previous

    async def set_guardians(self, actor: Actor, contact_id: str, body: object) -> Contact:
        """Set (or, with an empty list, clear) a minor's guardians: adult contacts
        (policy/guardian.py). The event carries all of them before and after, so its replay
        needs no other. What it changes for live calls is signaling/guardians.py's."""
        data = _body(body)
        contact = await self.get_contact(contact_id)
        named = data.get("guardians")
        known = {}
        for guardian in named if isinstance(named, list) else []:
            found = await self.store.get_contact(guardian) if isinstance(guardian, str) else None
            if found is not None:
                known[found.id] = found.minor
        guardians = check_guardians(contact.id, contact.minor, named, known)
        if guardians == contact.guardians:
            raise RuleBroken("unchanged", "nothing to change: these are the contact's guardians")
        await self.store.set_guardians(
            contact.id, guardians,
            AuditDraft(actor.sub, GUARDIANS_SET, f"contact:{contact.id}", {
                "contact": contact.id, "guardians": list(guardians),
                "previous": list(contact.guardians),
            }),
        )  # fmt: skip
        return replace(contact, guardians=guardians)

    async def get_contact(self, contact_id: str) -> Contact:
        contact = await self.store.get_contact(contact_id)
        if contact is None:
            raise NotFound("unknown-contact", f"no contact {contact_id!r}")
        return contact

    async def get_facility(self, facility_id: str) -> Facility:
        facility = await self.store.get_facility(facility_id)
        if facility is None:
            raise NotFound("unknown-facility", f"no facility {facility_id!r}")
        return facility

    async def _require_facility(self, facility_id: str) -> None:
        await self.get_facility(facility_id)

    # -- kiosk presence (signaling/presence.py decides when) -------------------------------
    async def device_online(self, device: Device, node: str) -> Presence:
        now = self.clock()
        presence = Presence(device.id, "online", node, since=now, last_seen=now)
        await self.store.set_presence(presence, AuditDraft(
            f"device:{device.id}", "device.online", f"device:{device.id}",
            {"device": device.id, "facility": device.facility, "node": node,
             "since": format_time(now)},
        ))  # fmt: skip
        return presence

    async def device_offline(
        self, device: Device, node: str, last_seen: float, why: str
    ) -> Presence:
        """Only while `node` holds it online: else it went online elsewhere (`Conflict`)."""
        now = self.clock()
        presence = Presence(device.id, "offline", node, since=now, last_seen=last_seen)
        await self.store.set_presence(presence, AuditDraft(
            SYSTEM.sub, "device.offline", f"device:{device.id}",
            {"device": device.id, "facility": device.facility, "node": node, "why": why,
             "since": format_time(now), "last_seen": format_time(last_seen)},
        ), expect_node=node)  # fmt: skip
        return presence

    # -- visits (their writes: policy/schedule.py) ----------------------------------------
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
        visits = await self.store.list_visits(device=device_id, after=now, status="booked")
        current = next(
            (v for v in visits if v.is_open(now, early=self.rules.visit_early_join_seconds)), None
        )
        upcoming = next((v for v in visits if v is not current and v.starts_at > now), None)
        return current, upcoming

    # -- directives ---------------------------------------------------------------------
    async def issue(self, actor: Actor, body: object) -> Directive:
        """A new directive, in force from `starts_at` (now by default).

        A broad one past its scope's unconfirmed time (policy/coverage.py) is refused
        `confirmation-required`, unless the body says `await_confirmation: true`: then it is a
        request, `pending` until a second supervisor confirms it (`confirm`) and `lapsed` if
        nobody has by `confirm_by` (`Rules.request_wait_seconds` after its start). Pending, it
        is in force nowhere. The flag only says what to do instead of a refusal: a directive
        that may start unconfirmed starts at once, as without it.
        """
        data = _body(body)
        scope = parse_scope(data.get("scope"))
        action = data.get("action")
        if action not in ACTIONS:
            raise Malformed("bad-action", f"action must be one of {', '.join(ACTIONS)}")
        reason = check_text(data.get("reason"), "reason", max_length=2000)
        legal_basis = check_text(data.get("legal_basis"), "legal_basis", max_length=300)
        await_confirmation = check_flag(data.get("await_confirmation", False), "await_confirmation")
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
        confirm_by, status = None, "active"
        if is_broad(scope):  # unconfirmed for as long as the scope's coverage allows
            covered = await self.scope_coverage(scope, starts_at=starts_at)
            if covered.lapse_at is not None:
                confirm_by = covered.lapse_at
            elif await_confirmation:  # a request: nothing starts until a second supervisor says so
                status = "pending"
                confirm_by = min(starts_at + self.rules.request_wait_seconds, expires_at)
            else:
                raise RuleBroken("confirmation-required", covered.refusal())
        directive = Directive(
            id=new_id("D"), scope=scope, action=action, reason=reason, legal_basis=legal_basis,
            issued_by=actor.sub, issued_at=now, starts_at=starts_at, expires_at=expires_at,
            status=status, confirm_by=confirm_by, starts_on_confirmation=status == "pending",
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
        """A second supervisor's confirmation. A pending request starts now (or at the start
        it was issued with, if later) and keeps its `expires_at`: what the confirming
        supervisor saw is what they confirmed, and nothing runs longer than its issuer asked.
        Enforcing it is the caller's (signaling/directives.py), as for a new directive."""
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
        if directive.status not in ("active", "pending"):
            raise Conflict("not-active", f"the directive is {directive.status}")
        if directive.confirmed_by is not None:
            raise Conflict("already-confirmed", f"already confirmed by {directive.confirmed_by}")
        now = self.clock()
        confirmed = directive.with_changes(confirmed_by=actor.sub, confirmed_at=now)
        data = {"confirmed_by": actor.sub, "confirmed_at": format_time(now)}
        if directive.status == "pending":
            if directive.confirm_by is not None and directive.confirm_by <= now:
                raise Conflict(
                    "confirmation-too-late",
                    "nobody confirmed this request in time, so it lapses; issue a new one",
                )
            confirmed = confirmed.with_changes(
                status="active", starts_at=max(directive.starts_at, now)
            )
            data |= {"status": "active", "starts_at": format_time(confirmed.starts_at)}
        await self.store.update_directive(
            confirmed,
            AuditDraft(actor.sub, "directive.confirmed", f"directive:{directive.id}", data),
            expect_status=directive.status,
        )
        self.index.put(confirmed)
        return confirmed

    async def close_due(self) -> list[Directive]:
        """Expire directives past `expires_at`; lapse broad ones unconfirmed past `confirm_by`."""
        now = self.clock()
        closed = []
        for directive in self.index.due(now):
            if directive.status == "pending":  # a request nobody confirmed: it never started
                status, note = "lapsed", f"{UNCONFIRMED}; it never started"
            elif directive.expires_at <= now:
                status, note = "expired", "reached its expiry"
            else:
                status, note = "lapsed", UNCONFIRMED
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
        if directive.status not in ("active", "pending"):  # a request can be withdrawn too
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
            expect_status=directive.status,
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
        if directive.starts_on_confirmation and directive.confirmed_by is None:
            raise Conflict(
                "never-in-force",
                "This directive never took effect (nobody confirmed it), so it did not affect"
                " you: there is nothing to appeal.",
            )
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
        # Requests nobody confirmed (pending, lapsed, withdrawn) were never in force: they have
        # no length, and are counted on their own.
        requests = [d for d in directives if d.starts_on_confirmation]
        started = [d for d in directives if not d.starts_on_confirmation or d.confirmed_by]
        planned = [d.expires_at - d.starts_at for d in started]
        actual = [(d.closed_at or min(now, d.expires_at)) - d.starts_at for d in started]
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
            "requests": {
                "made": len(requests),
                "pending": sum(1 for d in requests if d.status == "pending"),
                "confirmed": sum(1 for d in requests if d.confirmed_by is not None),
                "lapsed": sum(1 for d in requests if d.status == "lapsed"),
                "withdrawn": sum(
                    1 for d in requests if d.status == "lifted" and d.confirmed_by is None
                ),
            },
        }

"""The store's state as a projection of the audit chain (SPEC §4).

"The store's state (directives, approvals, visits) is a projection of the audit chain: `audit
verify` replays the chain and reports every row that disagrees with it, and a node checks
the same at start-up." A minor's guardians are projected the same way (table `guardians`).

Every change is written with its audit event in one transaction, so folding the chain's
events in order gives back exactly the rows the store should hold. `project` does the fold;
`compare` sets the result beside the rows (`Store.state()` reads chain and rows in one
snapshot) and lists every `Disagreement`: the table, the row's id, the field, the value
stored and the value the chain implies (a row missing on either side is field `row`).
Someone who edits a row directly (`UPDATE directives SET status = 'lifted'`) changes the
state without an event: `parlor audit verify` names the row and exits 1, `GET
/api/v1/audit/verify` lists it, and a node refuses to start on it (signaling/app.py) unless
started with `--accept-store-state`, which restores the chain's values (`restoration`) and
records that as `store.state-accepted`.

Extension point: one fold per event type
----------------------------------------
A fold is a function `(Projection, AuditEvent) -> None` registered for its action with
`@folds("visit.cancelled")`; it changes the projection as the event changed the store. A new
event type that changes a directive, an approval or a visit needs exactly one such function
here (and the event must carry every value it sets, times included: a fold reads the event,
never the clock). A new field of `Directive` or `Visit` is compared automatically (every
dataclass field is); a fold must set it. Until a fold exists, the action is listed as
`unreplayed` in every report (actions under `directive.`, `visit.` and `approval.`, and
`contact.guardians-set`, which projects a minor's guardians; others change nothing
projected), and the rows it changed show up as disagreements — loudly, on purpose: a node
that cannot derive a row from the chain should not trust it.

Recordings and facilities are projected too (SPEC §10): a recording's `recording.*` events
carry it whole, a facility's `facility.created` / `facility.updated` carry it and its changed
fields, so a recording's digest or a facility's recording policy (is a call recorded, how
long is it kept, may operators play it) edited by hand shows up like a lifted directive. A
facility row the chain never made is not flagged (rosters may predate the chain's record of
them); every facility the chain made is compared.

Events written before a field was carried (the moment a directive was confirmed or closed
was only the event's own `at` until the chain carried it) leave that field open (`loose`):
it is not compared for that row.

Speed: one pass over the events, dictionary updates only; `bench/replay.py` measures it
(100,000 events: see the README's benchmark table).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policy.audit import AuditEvent, ChainReport, verify_chain
from policy.directive import Directive
from policy.errors import PolicyError
from policy.guardian import GUARDIANS_SET
from policy.recording import HOLD, Recording
from policy.rfc3339 import format_time, parse_time
from policy.roster import Facility
from policy.store.interface import Restoration, StoredState
from policy.visit import Visit

Fold = Callable[["Projection", AuditEvent], None]
FOLDS: dict[str, Fold] = {}
# Actions (by prefix) whose rows are projected: one of them without a fold is `unreplayed`.
PROJECTED = ("directive.", "visit.", "approval.", "recording.", "facility.", GUARDIANS_SET)
TIME_TOLERANCE = 1e-3  # seconds: the chain keeps times to the microsecond, rows as floats
TIME_FIELDS = {
    "issued_at", "starts_at", "expires_at", "confirm_by", "confirmed_at", "closed_at",
    "ends_at", "created_at", "cancelled_at", "moved_at", "started_at", "ended_at",
    "finalized_at", "held_at", "deleted_at", "origin_at",
}  # fmt: skip
WINDOW_FIELDS = {"moved_from"}  # (starts_at, ends_at): times, compared each within tolerance


@dataclass
class Projection:
    """What the chain says the rows are."""

    directives: dict[str, Directive] = field(default_factory=dict)
    approvals: dict[tuple[str, str], str] = field(default_factory=dict)  # (contact, inmate)
    visits: dict[str, Visit] = field(default_factory=dict)
    recordings: dict[str, Recording] = field(default_factory=dict)
    facilities: dict[str, Facility] = field(default_factory=dict)
    guardians: dict[str, tuple[str, ...]] = field(default_factory=dict)  # minor -> guardians
    loose: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (table, id): fields
    unreplayed: Counter[str] = field(default_factory=Counter)  # actions no fold knows
    unreadable: list[int] = field(default_factory=list)  # seqs a fold could not read

    def leave_open(self, table: str, row: str, name: str) -> None:
        self.loose.setdefault((table, row), set()).add(name)


@dataclass(frozen=True)
class Disagreement:
    table: str  # directives | approvals | visits | recordings | facilities | guardians | audit
    id: str  # the row's id; an approval's is "<contact>:<inmate>", guardians' the minor's
    field: str  # a column, or "row" when the row is missing on one side
    stored: Any
    implied: Any

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.table} {self.id} {self.field}: stored {self.stored!r}, "
            f"the audit chain implies {self.implied!r}"
        )


def folds(*actions: str) -> Callable[[Fold], Fold]:
    """Register a fold for `actions` (the extension point: see the module's docstring)."""

    def register(fold: Fold) -> Fold:
        for action in actions:
            assert action not in FOLDS, f"two folds for {action}"
            FOLDS[action] = fold
        return fold

    return register


def project(events: Iterable[AuditEvent]) -> Projection:
    """Fold the events, in order, into the state they imply."""
    projection = Projection()
    for event in events:
        fold = FOLDS.get(event.action)
        if fold is None:
            if event.action.startswith(PROJECTED):
                projection.unreplayed[event.action] += 1
            continue
        try:
            fold(projection, event)
        except (KeyError, TypeError, ValueError, AttributeError):
            projection.unreadable.append(event.seq)
    return projection


def compare(projection: Projection, stored: StoredState) -> list[Disagreement]:
    """Every field of every row where the store and the chain disagree."""
    found = [
        Disagreement("audit", str(seq), "data", "unreadable", "readable")
        for seq in projection.unreadable
    ]
    found += _rows("directives", stored.directives, projection.directives, projection)
    found += _rows("visits", stored.visits, projection.visits, projection)
    found += _rows("recordings", stored.recordings, projection.recordings, projection)
    # Facilities: every one the chain made is compared (its recording policy says whether
    # calls are recorded); a row without its event is left to the roster's own history.
    known = {i: f for i, f in stored.facilities.items() if i in projection.facilities}
    found += _rows("facilities", known, projection.facilities, projection, missing_ok=True)
    for key in sorted(set(stored.approvals) | set(projection.approvals)):
        have, want = stored.approvals.get(key), projection.approvals.get(key)
        if have != want:
            found.append(Disagreement("approvals", ":".join(key), "status", have, want))
    for minor in sorted(set(stored.guardians) | set(projection.guardians)):
        had, wanted = stored.guardians.get(minor, ()), projection.guardians.get(minor, ())
        if had != wanted:
            found.append(Disagreement("guardians", minor, "guardians", list(had), list(wanted)))
    return found


@dataclass(frozen=True)
class StateReport:
    """What `audit verify` and the start-up check say about the rows."""

    disagreements: list[Disagreement]
    unreplayed: dict[str, int]  # actions no fold knows, and how often they occur
    projection: Projection
    stored: StoredState

    @property
    def ok(self) -> bool:
        return not self.disagreements

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "disagreements": [d.to_json() for d in self.disagreements],
            "unreplayed": self.unreplayed,
        }


def check(stored: StoredState) -> StateReport:
    """Replay `stored.events` and compare the result with `stored`'s rows."""
    projection = project(stored.events)
    return StateReport(compare(projection, stored), dict(projection.unreplayed), projection, stored)


def restoration(report: StateReport) -> Restoration:
    """The rows to write so that the store is what the chain implies (`Store.restore`): each
    disagreeing field set to the chain's value (the others keep theirs), a missing row made
    as the chain implies, a row the chain never made removed."""
    projection, stored = report.projection, report.stored
    wrong: dict[tuple[str, str], set[str]] = {}
    for d in report.disagreements:
        wrong.setdefault((d.table, d.id), set()).add(d.field)

    def made(table: str, implied: dict[str, Any], rows: dict[str, Any]) -> list[Any]:
        out = []
        for row_id, row in implied.items():
            fields = wrong.get((table, row_id))
            if fields is None:
                continue
            have = rows.get(row_id)
            if have is None:
                out.append(row)
            else:
                out.append(dataclasses.replace(have, **{n: getattr(row, n) for n in fields}))
        return out

    return Restoration(
        head=stored.head[0],
        directives=made("directives", projection.directives, stored.directives),
        stray_directives=sorted(set(stored.directives) - set(projection.directives)),
        approvals={
            key: projection.approvals.get(key)
            for key in set(stored.approvals) | set(projection.approvals)
            if stored.approvals.get(key) != projection.approvals.get(key)
        },
        visits=made("visits", projection.visits, stored.visits),
        stray_visits=sorted(set(stored.visits) - set(projection.visits)),
        recordings=made("recordings", projection.recordings, stored.recordings),
        facilities=[
            f
            for f in made("facilities", projection.facilities, stored.facilities)
            if f.id in stored.facilities
        ],
        stray_recordings=sorted(set(stored.recordings) - set(projection.recordings)),
        guardians={
            minor: projection.guardians.get(minor, ())
            for minor in set(stored.guardians) | set(projection.guardians)
            if stored.guardians.get(minor, ()) != projection.guardians.get(minor, ())
        },
    )


def _rows(
    table: str, stored: dict[str, Any], implied: dict[str, Any], projection: Projection,
    *, missing_ok: bool = False,
) -> list[Disagreement]:  # fmt: skip
    found = []
    for row_id in sorted(set(stored) | set(implied)):
        have, want = stored.get(row_id), implied.get(row_id)
        if (have is None or want is None) and missing_ok:
            continue
        if have is None or want is None:
            found.append(Disagreement(table, row_id, "row", _presence(have), _presence(want)))
            continue
        loose = projection.loose.get((table, row_id), set())
        for f in dataclasses.fields(want):
            a, b = getattr(have, f.name), getattr(want, f.name)
            if f.name not in loose and not _same(f.name, a, b):
                found.append(
                    Disagreement(table, row_id, f.name, _shown(f.name, a), _shown(f.name, b))
                )
    return found


def _same(name: str, a: Any, b: Any) -> bool:
    if name in TIME_FIELDS and isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) < TIME_TOLERANCE
    if name in WINDOW_FIELDS and isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(
            abs(x - y) < TIME_TOLERANCE for x, y in zip(a, b, strict=True)
        )
    return bool(a == b)


def _shown(name: str, value: Any) -> Any:
    if name in TIME_FIELDS and isinstance(value, int | float):
        return format_time(value)
    return list(value) if isinstance(value, tuple) else value


def _presence(row: Any) -> str:
    return "absent" if row is None else "present"


# -- the folds: one per event type ----------------------------------------------------------
@folds("directive.issued")
def _issued(p: Projection, e: AuditEvent) -> None:
    directive = Directive.from_json(e.data)
    p.directives[directive.id] = directive


def _directive(p: Projection, e: AuditEvent) -> Directive:
    return p.directives[e.subject.removeprefix("directive:")]


def _moment(p: Projection, e: AuditEvent, name: str, directive: Directive) -> float:
    """A time the event carries; from before it did, its own `at` and the field left open."""
    if e.data.get(name) is not None:
        return parse_time(e.data[name], name)
    p.leave_open("directives", directive.id, name)
    return parse_time(e.at, "at")


@folds("directive.confirmed")
def _confirmed(p: Projection, e: AuditEvent) -> None:
    """A confirmation; of a pending request, also its start (`status`, `starts_at`)."""
    d = _directive(p, e)
    d = d.with_changes(
        confirmed_by=e.data["confirmed_by"], confirmed_at=_moment(p, e, "confirmed_at", d)
    )
    if "status" in e.data:
        d = d.with_changes(
            status=str(e.data["status"]), starts_at=parse_time(e.data["starts_at"], "starts_at")
        )
    p.directives[d.id] = d


@folds("directive.lifted", "directive.expired", "directive.lapsed")
def _closed(p: Projection, e: AuditEvent) -> None:
    d = _directive(p, e)
    p.directives[d.id] = d.with_changes(
        status=e.action.removeprefix("directive."), closed_at=_moment(p, e, "closed_at", d),
        closed_by=e.actor, close_reason=e.data["reason"],
    )  # fmt: skip


@folds("directive.enforced")
def _enforced(p: Projection, e: AuditEvent) -> None:
    d = _directive(p, e)
    p.directives[d.id] = d.with_changes(sessions_ended=d.sessions_ended + len(e.data["sessions"]))


@folds("approval.set")
def _approval(p: Projection, e: AuditEvent) -> None:
    kind, inmate, contact = e.subject.split(":")
    if kind != "pair":
        raise ValueError(e.subject)
    p.approvals[(contact, inmate)] = e.data["status"]


@folds(GUARDIANS_SET)
def _guardians(p: Projection, e: AuditEvent) -> None:
    """A minor's guardians, all of them as they are after the change (`guardians`)."""
    minor = e.subject.removeprefix("contact:")
    guardians = tuple(sorted(str(g) for g in e.data["guardians"]))
    if guardians:
        p.guardians[minor] = guardians
    else:
        p.guardians.pop(minor, None)


@folds("visit.created")
def _visit(p: Projection, e: AuditEvent) -> None:
    visit = Visit.from_json(e.data)
    p.visits[visit.id] = visit


@folds("visit.rescheduled", "visit.cancelled", "visit.kind-changed", "visit.ended", "visit.no-show")
def _visit_changed(p: Projection, e: AuditEvent) -> None:
    """Every change of a visit (policy/schedule.py) carries the whole visit as it is after it
    (`visit`), besides the values before and after (`old`, `new`) for the reader."""
    visit = Visit.from_json(e.data["visit"])
    if visit.id != e.subject.removeprefix("visit:"):
        raise ValueError(e.subject)
    p.visits[visit.id] = visit


@folds("facility.created")
def _facility_created(p: Projection, e: AuditEvent) -> None:
    """The facility as created; an event from before a field existed reads as its default."""
    fields = Facility.__dataclass_fields__
    facility = Facility(**{k: v for k, v in e.data.items() if k in fields})
    if f"facility:{facility.id}" != e.subject:
        raise ValueError(e.subject)
    p.facilities[facility.id] = facility


@folds("facility.updated")
def _facility_updated(p: Projection, e: AuditEvent) -> None:
    facility = p.facilities[e.subject.removeprefix("facility:")]
    fields = Facility.__dataclass_fields__
    p.facilities[facility.id] = dataclasses.replace(
        facility, **{k: v for k, v in e.data["new"].items() if k in fields}
    )


@folds("recording.started")
def _recording_started(p: Projection, e: AuditEvent) -> None:
    recording = _carried(e)
    p.recordings[recording.id] = recording


@folds("recording.incomplete", "recording.finalized", "recording.failed", "recording.deleted")
def _recording_changed(p: Projection, e: AuditEvent) -> None:
    """Its state after the change; its hold is the hold events' (the node that finalizes a
    recording does not know of a hold set meanwhile, and the store keeps it)."""
    recording = _carried(e)
    before = p.recordings[recording.id]
    p.recordings[recording.id] = recording.with_changes(
        **{name: getattr(before, name) for name in HOLD}
    )


@folds("recording.held", "recording.released")
def _recording_hold(p: Projection, e: AuditEvent) -> None:
    recording = _carried(e)
    before = p.recordings[recording.id]
    p.recordings[recording.id] = before.with_changes(
        **{name: getattr(recording, name) for name in HOLD}
    )


@folds("recording.played", "recording.downloaded", "recording.exported")
def _recording_read(p: Projection, e: AuditEvent) -> None:
    """A look at a recording changes no row (the event is the record of it)."""


def _carried(e: AuditEvent) -> Recording:
    recording = Recording.from_json(e.data["recording"])
    if recording.id != e.subject.removeprefix("recording:"):
        raise ValueError(e.subject)
    return recording


# -- what `audit verify` reports, and what a node refuses to start on -----------------------
@dataclass(frozen=True)
class Verification:
    """`audit verify`: the chain's seals (policy/audit.py) and the rows' agreement with it."""

    chain: ChainReport
    state: StateReport

    @property
    def ok(self) -> bool:
        return self.chain.ok and self.state.ok

    def to_json(self) -> dict[str, Any]:
        return {**self.chain.to_json(), "ok": self.ok, "chain_ok": self.chain.ok,
                "state": self.state.to_json()}  # fmt: skip


def verify(stored: StoredState, anchors: Mapping[int, str] | None = None) -> Verification:
    return Verification(verify_chain(stored.events, stored.head, anchors), check(stored))


class StateDisagrees(PolicyError):
    """A node will not start on rows the audit chain does not imply (signaling/app.py)."""

    kind = "conflict"

    def __init__(self, report: StateReport, *, db: str) -> None:
        rows = report.disagreements
        listed = "\n".join(f"  {d}" for d in rows[:LISTED])
        if len(rows) > LISTED:
            listed += f"\n  ... and {len(rows) - LISTED} more"
        unknown = ", ".join(f"{a} ({n})" for a, n in sorted(report.unreplayed.items()))
        super().__init__(
            "store-disagrees",
            f"the store disagrees with its audit chain in {len(rows)} place(s); the store's "
            f"state must be what the chain's events imply (SPEC §4):\n{listed}\n"
            "Something changed these rows without an audit event. To investigate: "
            f"`parlor audit verify --db {db}` (read-only) lists every disagreement, and the "
            "audit log (GET /api/v1/audit) holds each row's history."
            + (
                f" The chain also has events the replay does not know: {unknown}"
                " (each needs a fold in policy/replay.py)."
                if unknown
                else ""
            )
            + "\nTo start anyway, restoring these rows to what the chain implies and recording "
            "that as the audit event store.state-accepted: `parlor serve --accept-store-state`.",
        )
        self.report = report


LISTED = 20  # disagreements named in a refusal to start (`audit verify` lists them all)

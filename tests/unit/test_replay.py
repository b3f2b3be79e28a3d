"""policy/replay.py: folding the audit chain gives back the store's rows, and every row that
differs is named (SPEC §4, issue #15 item 3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from policy import replay
from policy.actor import Actor
from policy.audit import GENESIS, AuditEvent
from policy.rfc3339 import format_time
from policy.schedule import Schedule
from policy.service import Policy
from policy.store import AuditDraft, SqliteStore, StoredState
from policy.visit import Visit

T0 = 1_700_000_000.0
ALICE = Actor("operator:alice", "operator")
SAM = Actor("operator:sam", "supervisor")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 0.001234  # every write at its own moment, with a fraction
        return self.now


@pytest.fixture
async def policy() -> AsyncIterator[Policy]:
    clock = Clock()
    store = SqliteStore(":memory:", clock=clock)
    await store.open()
    try:
        yield Policy(store=store, clock=clock)
    finally:
        await store.close()


async def everything(p: Policy) -> None:
    """A chain with every event type the replay folds."""
    await p.create_facility(ALICE, {"id": "F1", "name": "North"})
    await p.create_device(ALICE, {"id": "K1", "facility": "F1"})
    await p.create_inmate(ALICE, {"id": "I1", "facility": "F1", "name": "Sam"})
    for contact in ("C1", "C2"):
        await p.create_contact(ALICE, {"id": contact, "name": contact, "minor": False})
        await p.set_approval(ALICE, contact, {"inmate": "I1", "status": "approved"})
    await p.create_contact(ALICE, {"id": "M1", "name": "Mia", "minor": True})
    await p.set_guardians(ALICE, "M1", {"guardians": ["C2", "C1"]})
    await p.set_guardians(ALICE, "M1", {"guardians": ["C1"]})
    await p.create_contact(ALICE, {"id": "M2", "name": "Max", "minor": True})
    await p.set_guardians(ALICE, "M2", {"guardians": ["C2"]})
    await p.set_guardians(ALICE, "M2", {"guardians": []})
    schedule = Schedule(p)
    await schedule.create(ALICE, {"inmate": "I1", "device": "K1", "contacts": ["C1", "C2"],
                                  "starts_at": format_time(T0), "ends_at": format_time(T0 + 3600)})  # fmt: skip
    await p.set_approval(ALICE, "C2", {"inmate": "I1", "status": "denied", "reason": "no ID"})

    def window(start: float, length: float = 1800) -> dict:
        return {"starts_at": format_time(T0 + start), "ends_at": format_time(T0 + start + length)}

    moved = await schedule.create(
        ALICE, {"inmate": "I1", "device": "K1", "contacts": ["C1"], **window(7200)}
    )
    await schedule.reschedule(ALICE, moved.id, window(10800))
    await schedule.change_kind(ALICE, moved.id, {"kind": "privileged"})
    cancelled = await schedule.create(
        ALICE, {"inmate": "I1", "device": "K1", "contacts": ["C1"], **window(14400)}
    )
    await schedule.cancel(ALICE, cancelled.id, {"reason": "other", "note": "Legal visit instead"})

    def body(scope: str, seconds: float = 7200) -> dict:
        return {"scope": scope, "action": "suspend", "reason": "r", "legal_basis": "Rule 1",
                "expires_at": format_time(p.clock.now + seconds)}  # type: ignore[attr-defined]  # fmt: skip

    lifted = await p.issue(ALICE, body("contact:C1"))
    await p.record_enforcement(ALICE, lifted, ["S-1", "S-2"])
    await p.lift(ALICE, lifted.id, {"reason": "appeal granted"})
    confirmed = await p.issue(ALICE, body("facility:F1"))
    await p.confirm(SAM, confirmed.id)
    await p.issue(ALICE, body("inmate:I1", seconds=0.5))
    p.clock.now += 1  # type: ignore[attr-defined]
    assert [d.status for d in await p.close_due()] == ["expired"]
    lapsing = await p.issue(ALICE, body("system"))
    p.clock.now = lapsing.confirm_by + 1  # type: ignore[attr-defined]
    assert [d.status for d in await p.close_due()] == ["lapsed"]
    p.clock.now = T0 + 3700  # type: ignore[attr-defined]  # the first visit's window has passed
    assert [v.status for v in await schedule.close_due()] == ["no-show"]


async def test_the_chain_folds_back_into_exactly_the_rows(policy):
    await everything(policy)
    stored = await policy.store.state()
    report = replay.check(stored)
    assert report.ok and report.disagreements == [] and report.unreplayed == {}
    # not just agreeing on nothing: every row was made by a fold
    assert (
        set(report.projection.directives) == set(stored.directives) and len(stored.directives) == 4
    )
    assert (
        report.projection.approvals
        == stored.approvals
        == {("C1", "I1"): "approved", ("C2", "I1"): "denied"}
    )
    assert report.projection.guardians == stored.guardians == {"M1": ("C1",)}
    assert report.projection.visits.keys() == stored.visits.keys() and len(stored.visits) == 3
    assert sorted((v.status, v.kind, v.moved_from is not None) for v in stored.visits.values()) == [
        ("booked", "privileged", True), ("cancelled", "social", False), ("no-show", "social", False),
    ]  # fmt: skip
    assert {d.status for d in report.projection.directives.values()} == {
        "lifted",
        "active",
        "expired",
        "lapsed",
    }
    assert next(d for d in stored.directives.values() if d.status == "lifted").sessions_ended == 2


async def test_each_changed_field_is_named_with_both_values(policy):
    await everything(policy)
    stored = await policy.store.state()
    directive = next(d for d in stored.directives.values() if d.status == "active")
    visit = next(v for v in stored.visits.values() if v.status == "no-show")
    changed = replace(
        stored,
        directives={
            **stored.directives,
            directive.id: directive.with_changes(status="lifted", expires_at=T0),
        },
        visits={**stored.visits, visit.id: replace(visit, kind="privileged")},
        approvals={**stored.approvals, ("C2", "I1"): "approved"},
        guardians={"M1": ("C1", "C2"), "M2": ("C1",)},
    )
    found = {
        (d.table, d.id, d.field): (d.stored, d.implied) for d in replay.check(changed).disagreements
    }
    assert found == {
        ("directives", directive.id, "status"): ("lifted", "active"),
        ("directives", directive.id, "expires_at"): (
            format_time(T0),
            format_time(directive.expires_at),
        ),
        ("visits", visit.id, "kind"): ("privileged", "social"),
        ("approvals", "C2:I1", "status"): ("approved", "denied"),
        ("guardians", "M1", "guardians"): (["C1", "C2"], ["C1"]),
        ("guardians", "M2", "guardians"): (["C1"], []),
    }
    restoration = replay.restoration(replay.check(changed))
    assert [d.id for d in restoration.directives] == [directive.id]
    assert restoration.directives[0] == directive
    assert restoration.approvals == {("C2", "I1"): "denied"} and restoration.visits == [visit]
    assert restoration.guardians == {"M1": ("C1",), "M2": ()}


async def test_restoring_guardians_writes_what_the_chain_implies(policy):
    """A guardian added without its audit event is a disagreement; restoring takes it away."""
    await everything(policy)
    store = policy.store
    await store.set_guardians("M1", ("C1", "C2"), AuditDraft("operator:mallory", "note", "x", {}))
    report = replay.check(await store.state())
    assert [(d.table, d.id) for d in report.disagreements] == [("guardians", "M1")]
    await store.restore(replay.restoration(report), AuditDraft("system", "t", "store", {}))
    assert replay.check(await store.state()).ok
    assert (await store.get_contact("M1")).guardians == ("C1",)


def event(seq: int, action: str, subject: str, data: dict, *, at: float = T0) -> AuditEvent:
    return AuditEvent(seq, format_time(at) or "", "operator:alice", action, subject, data, "", "")


def test_times_the_chain_did_not_carry_yet_are_left_open():
    """Before the chain carried `closed_at`, only the event's own `at` said when: that field
    is not compared for the row (the status still is)."""
    issued = {"id": "D1", "scope": "contact:C1", "action": "suspend", "reason": "r",
              "legal_basis": "Rule 1", "issued_by": "operator:alice", "issued_at": format_time(T0),
              "starts_at": format_time(T0), "expires_at": format_time(T0 + 60), "status": "active"}  # fmt: skip
    events = [
        event(1, "directive.issued", "directive:D1", issued),
        event(2, "directive.lifted", "directive:D1", {"reason": "done"}, at=T0 + 10),
    ]
    projection = replay.project(events)
    assert projection.loose == {("directives", "D1"): {"closed_at"}}
    row = projection.directives["D1"].with_changes(closed_at=T0 + 9.99)  # taken just before `at`
    state = StoredState(events, (2, GENESIS), {"D1": row}, {}, {})
    assert replay.check(state).ok
    assert not replay.check(replace(state, directives={"D1": row.with_changes(status="active")})).ok


def test_actions_without_a_fold_are_reported_and_unreadable_events_named():
    events = [
        event(1, "visit.teleported", "visit:V1", {"to": "elsewhere"}),
        event(2, "monitor.refused", "visit:V1", {}),  # changes nothing projected
        event(3, "approval.set", "contact:C1", {"status": "approved"}),  # not a pair: unreadable
    ]
    report = replay.check(StoredState(events, (3, GENESIS), {}, {}, {}))
    assert report.unreplayed == {"visit.teleported": 1}
    assert [(d.table, d.id) for d in report.disagreements] == [("audit", "3")]


def test_one_fold_per_event_type():
    with pytest.raises(AssertionError, match="two folds for visit.created"):
        replay.folds("visit.created")(lambda p, e: None)


def test_a_visit_reads_back_from_its_json():
    visit = Visit(
        "V1", "F1", "I1", "K1", ("C1", "C2"), T0 + 0.5, T0 + 60.25, "privileged", "operator:a", T0
    )
    assert Visit.from_json(visit.to_json()) == visit
    # with its life: moved, then cancelled
    lived = visit.with_changes(
        starts_at=T0 + 3600, ends_at=T0 + 3660.5, moved_from=(T0 + 0.5, T0 + 60.25),
        moved_at=T0 + 1.25, moved_by="operator:b", status="cancelled", cancel_reason="other",
        cancel_note="moved to court", cancelled_at=T0 + 2.5, cancelled_by="operator:c",
    )  # fmt: skip
    assert Visit.from_json(lived.to_json()) == lived

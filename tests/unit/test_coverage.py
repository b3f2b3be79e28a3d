"""One operator alone cannot keep a broad scope restricted (SPEC §4, issue #15 item 2):
`policy/coverage.py`'s count, with a fake clock, and `Policy.issue` refusing past it; past
it, a request (`await_confirmation`) waits, pending, until a second supervisor starts it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from policy import replay
from policy.actor import Actor
from policy.coverage import WINDOW, coverage
from policy.directive import Directive
from policy.errors import Conflict, Forbidden, Malformed, RuleBroken
from policy.rfc3339 import format_time
from policy.schedule import Schedule
from policy.service import Policy
from policy.store import SqliteStore

T0 = 1_700_000_000.0
W = 900.0  # the confirmation window
ALICE = Actor("operator:alice", "operator")
MALLORY = Actor("operator:mallory", "operator")  # a second operator: no supervisor
SAM = Actor("operator:sam", "supervisor")


def broad(
    id: str, start: float, *, scope: str = "facility:F1", closed: float | None = None, **kw
) -> Directive:
    d = Directive(
        id=id, scope=scope, action="suspend", reason="r", legal_basis="Rule 1",
        issued_by="operator:alice", issued_at=start, starts_at=start, expires_at=start + 7200,
        confirm_by=start + W,
    )  # fmt: skip
    if closed is not None:
        d = d.with_changes(status="lapsed", closed_at=closed)
    return d.with_changes(**kw)


def count(directives, now: float, **kw):
    return coverage(directives, "facility:F1", now, budget=W, minimum=60.0, **kw)


def test_a_fresh_scope_may_be_stopped_for_one_window():
    c = count([], T0)
    assert (c.used, c.lapse_at, c.refused) == (0.0, T0 + W, False)


def test_the_issues_attack_a_lapsed_stop_issued_again_at_once_is_refused():
    lapsed = broad("D1", T0, closed=T0 + W)
    c = count([lapsed], T0 + W + 1)
    assert c.refused and c.used == W
    # free again once all but a minute of the old stop has left the 24 hours
    assert c.free_at == T0 + 60 + WINDOW
    assert c.refusal().startswith(
        "facility:F1 has been restricted for 15 minutes without a second supervisor's"
        " confirmation in the last 24 hours, and 15 minutes is the most allowed"
    )
    assert "restricted again from 2023-11-15 22:15 UTC" in c.refusal()  # T0 + 60 s + 24 h
    assert not count([lapsed], T0 + 60 + WINDOW).refused


def test_whoever_issued_them_counts_two_colluding_operators_are_no_second_supervisor():
    first = broad("D1", T0, closed=T0 + 600)
    second = broad("D2", T0 + 600, closed=T0 + 900, issued_by="operator:mallory")
    assert count([first, second], T0 + 901).refused


def test_lifted_early_leaves_the_rest_of_the_window():
    lifted = broad("D1", T0, closed=T0 + 300).with_changes(status="lifted")
    c = count([lifted], T0 + 600)
    assert c.used == 300 and c.lapse_at == T0 + 600 + 600


def test_a_second_stop_beside_an_active_one_lapses_with_it():
    active = broad("D1", T0)
    c = count([active], T0 + 120)
    assert c.used == W and c.lapse_at == T0 + W and c.unconfirmed_active == ("D1",)
    # a minute before the first lapses, a new one would lapse too soon to be confirmed
    late = count([active], T0 + W - 30)
    assert late.refused and "confirm D1" in late.refusal()


def test_overlapping_directives_are_counted_once():
    a = broad("D1", T0, closed=T0 + 300)
    b = broad("D2", T0 + 100, closed=T0 + 400)
    assert count([a, b], T0 + 500).used == 400


def test_only_the_trailing_24_hours_count():
    old = broad("D1", T0, closed=T0 + W)
    assert count([old], T0 + WINDOW + W).used == 0
    assert count([old], T0 + WINDOW + 100).used == W - 100


def test_a_confirmation_on_the_scope_starts_the_count_again():
    lapsed = broad("D1", T0, closed=T0 + W)
    confirmed = broad(
        "D2", T0 + 2000, confirmed_by="operator:sam", confirmed_at=T0 + 2100
    ).with_changes(status="lifted", closed_at=T0 + 2500)
    c = count([lapsed, confirmed], T0 + 3000)
    assert c.since == T0 + 2100 and c.used == 0 and c.lapse_at == T0 + 3000 + W


def test_other_scopes_and_confirmed_directives_do_not_count():
    elsewhere = broad("D1", T0, scope="facility:F2", closed=T0 + W)
    confirmed = broad("D2", T0, confirmed_by="operator:sam", confirmed_at=T0 + 10)
    c = count([elsewhere, confirmed], T0 + W + 1)
    assert c.used == 0 and not c.refused


def test_less_than_a_minute_left_is_refused():
    lifted = broad("D1", T0, closed=T0 + W - 30)
    assert count([lifted], T0 + 2000).refused
    assert not count([broad("D1", T0, closed=T0 + W - 60)], T0 + 2000).refused


def test_a_directive_starting_later_spends_from_its_start():
    lifted = broad("D1", T0, closed=T0 + 300)
    c = count([lifted], T0 + 400, starts_at=T0 + 500)
    assert c.lapse_at == T0 + 500 + 600
    later = count([], T0, starts_at=T0 + 3600)  # the window runs from its start
    assert later.lapse_at == T0 + 3600 + W


# -- Policy.issue -------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def policy() -> AsyncIterator[tuple[Policy, Clock]]:
    clock = Clock()
    store = SqliteStore(":memory:", clock=clock)
    await store.open()
    p = Policy(store=store, clock=clock)
    await p.create_facility(ALICE, {"id": "F1", "name": "North"})
    try:
        yield p, clock
    finally:
        await store.close()


def stop(clock: Clock, scope: str = "facility:F1") -> dict:
    return {"scope": scope, "action": "suspend", "reason": "disturbance",
            "legal_basis": "Emergency order 7", "expires_at": format_time(clock.now + 7200)}  # fmt: skip


async def test_issue_refuses_a_broad_directive_past_the_scopes_unconfirmed_time(policy):
    p, clock = policy
    first = await p.issue(ALICE, stop(clock))
    assert first.confirm_by == T0 + W
    clock.now = T0 + W + 1
    assert [d.status for d in await p.close_due()] == ["lapsed"]
    for who in (ALICE, MALLORY):  # the same operator, or a second one: refused alike
        with pytest.raises(RuleBroken) as refused:
            await p.issue(who, stop(clock))
        assert refused.value.code == "confirmation-required"
    assert len(await p.store.list_directives()) == 1
    await p.issue(ALICE, stop(clock, "system"))  # another scope has its own count

    # It lapsed at T0 + W + 1: 24 hours later, all but its last 600 s have left the count.
    clock.now = T0 + WINDOW + 301
    again = await p.issue(ALICE, stop(clock))
    assert again.confirm_by == clock.now + W - 600


async def test_a_confirmation_lets_the_scope_be_stopped_again(policy):
    p, clock = policy
    first = await p.issue(ALICE, stop(clock))
    clock.now = T0 + 600
    await p.confirm(SAM, first.id)
    await p.lift(SAM, first.id, {"reason": "calm"})
    clock.now = T0 + 700
    second = await p.issue(ALICE, stop(clock))
    assert second.confirm_by == T0 + 700 + W


# -- a request: past the budget, a broad directive may wait for a second supervisor ----------
TESS = Actor("operator:tess", "supervisor")  # a second supervisor
SESSION_IN_F1 = ("system", "facility:F1", "device:K1", "inmate:I1", "visit:V1")


def asking(clock: Clock, scope: str = "facility:F1") -> dict:
    return {**stop(clock, scope), "await_confirmation": True}


async def verified(p: Policy) -> None:
    """`audit verify`: the chain is sealed and every row is what its events imply."""
    report = replay.verify(await p.store.state())
    assert report.ok and report.state.unreplayed == {}, report.to_json()


async def used_up(p: Policy, clock: Clock, issuer: Actor = ALICE) -> None:
    """Spend facility:F1's unconfirmed time: a stop that lapses unconfirmed."""
    await p.issue(issuer, stop(clock))
    clock.now = T0 + W + 1
    assert [d.status for d in await p.close_due()] == ["lapsed"]


async def test_past_the_budget_a_request_waits_instead_of_a_refusal(policy):
    p, clock = policy
    await used_up(p, clock)
    with pytest.raises(RuleBroken) as refused:
        await p.issue(ALICE, stop(clock))
    assert refused.value.code == "confirmation-required"

    request = await p.issue(ALICE, asking(clock))
    assert (request.status, request.starts_on_confirmation) == ("pending", True)
    assert request.confirm_by == clock.now + W and request.confirmed_by is None
    assert request.to_json()["status"] == "pending"
    # in force nowhere: it matches no session, refuses no admission, restricts nothing
    decision = p.evaluate(SESSION_IN_F1)
    assert decision.admitted and not decision.restricted
    assert p.index.active() == [] and p.index.next_deadline() == request.confirm_by
    # and it spends none of the scope's unconfirmed time, nor does the refusal forget it
    covered = await p.scope_coverage("facility:F1")
    assert covered.used == W + 1 and covered.awaiting == (request.id,)  # the first stop's
    assert f"Waiting for a second supervisor already: {request.id}." in covered.refusal()
    await verified(p)


async def test_the_flag_only_replaces_a_refusal(policy):
    p, clock = policy
    now = await p.issue(ALICE, asking(clock))  # time left on the scope: it starts at once
    assert (now.status, now.starts_on_confirmation, now.confirm_by) == ("active", False, T0 + W)
    assert not p.evaluate(SESSION_IN_F1).admitted
    with pytest.raises(Malformed) as bad:
        await p.issue(ALICE, {**stop(clock), "await_confirmation": "yes"})
    assert bad.value.code == "bad-field"


async def test_a_second_supervisor_starts_it_the_issuer_and_operators_cannot(policy):
    p, clock = policy
    await used_up(p, clock, issuer=SAM)
    request = await p.issue(SAM, asking(clock))
    for who, code in ((SAM, "self-confirmation"), (MALLORY, "supervisor-required")):
        with pytest.raises(Forbidden) as refused:
            await p.confirm(who, request.id)
        assert refused.value.code == code
    assert (await p.get_directive(request.id)).status == "pending"

    clock.now += 300
    confirmed = await p.confirm(TESS, request.id)
    assert (confirmed.status, confirmed.confirmed_by) == ("active", "operator:tess")
    # it starts at the confirmation and ends when its issuer said: nothing runs longer
    assert confirmed.starts_at == confirmed.confirmed_at == clock.now
    assert confirmed.expires_at == request.expires_at
    decision = p.evaluate(SESSION_IN_F1)
    assert not decision.admitted and decision.blocking == confirmed
    assert confirmed in p.index.active() and p.index.pending == {}
    with pytest.raises(Conflict) as twice:
        await p.confirm(TESS, request.id)
    assert twice.value.code == "already-confirmed"
    # a confirmed request is no unconfirmed coverage: the scope may be stopped alone again
    covered = await p.scope_coverage("facility:F1")
    assert covered.used == 0 and covered.lapse_at == clock.now + W
    clock.now = confirmed.confirm_by + 1  # past the request's deadline: confirmed, it stays
    assert await p.close_due() == []
    await verified(p)


async def test_a_request_nobody_confirms_lapses_at_its_deadline(policy):
    p, clock = policy
    await used_up(p, clock)
    request = await p.issue(ALICE, asking(clock))
    clock.now = request.confirm_by - 1
    assert await p.close_due() == []
    clock.now = request.confirm_by
    with pytest.raises(Conflict) as late:  # due, even before the clock's next tick lapses it
        await p.confirm(SAM, request.id)
    assert late.value.code == "confirmation-too-late"
    (lapsed,) = await p.close_due()
    assert (lapsed.id, lapsed.status, lapsed.closed_at) == (request.id, "lapsed", clock.now)
    assert lapsed.close_reason == "not confirmed by a second supervisor in time; it never started"
    assert p.index.pending == {} and p.index.next_deadline() is None
    with pytest.raises(Conflict) as gone:
        await p.confirm(SAM, request.id)
    assert gone.value.code == "not-active"
    covered = await p.scope_coverage("facility:F1")
    assert covered.used == W + 1  # the first stop's: the request spent nothing
    await verified(p)


async def test_a_request_can_be_withdrawn_before_it_starts(policy):
    p, clock = policy
    await used_up(p, clock)
    request = await p.issue(ALICE, asking(clock))
    lifted = await p.lift(ALICE, request.id, {"reason": "calm again"})
    assert (lifted.status, lifted.confirmed_by) == ("lifted", None)
    assert p.index.pending == {} and p.evaluate(SESSION_IN_F1).admitted
    with pytest.raises(Conflict):
        await p.confirm(SAM, request.id)
    await verified(p)


async def test_nobody_can_appeal_a_request_that_never_started(policy):
    p, clock = policy
    await p.create_device(ALICE, {"id": "K1", "facility": "F1"})
    await p.create_inmate(ALICE, {"id": "I1", "facility": "F1", "name": "Sam"})
    await p.create_contact(ALICE, {"id": "C1", "name": "C1", "minor": False})
    await p.set_approval(ALICE, "C1", {"inmate": "I1", "status": "approved"})
    window = {"starts_at": format_time(T0), "ends_at": format_time(T0 + 7200)}
    visit = await Schedule(p).create(
        ALICE, {"inmate": "I1", "device": "K1", "contacts": ["C1"], **window}
    )
    family = Actor("contact:C1", "family", visit=visit.id)
    await used_up(p, clock)
    request = await p.issue(ALICE, asking(clock))
    with pytest.raises(Conflict) as refused:
        await p.file_appeal(family, request.id, {"text": "why?"})
    assert refused.value.code == "never-in-force"
    await p.confirm(SAM, request.id)  # in force now: it affects C1, who may appeal
    appeal = await p.file_appeal(family, request.id, {"text": "why?"})
    assert appeal.directive == request.id
    await verified(p)


def outcomes(**counts: int) -> dict[str, int]:
    named = {name: counts.get(name, 0) for name in ("pending", "confirmed", "lapsed", "withdrawn")}
    return {"made": sum(counts.values()), **named}


async def test_the_report_counts_requests_by_outcome(policy):
    p, clock = policy
    await used_up(p, clock)
    confirmed, withdrawn, lapsing = [await p.issue(ALICE, asking(clock)) for _ in range(3)]
    await p.confirm(SAM, confirmed.id)
    await p.lift(ALICE, withdrawn.id, {"reason": "calm"})
    report = await p.suspension_report()
    assert report["requests"] == outcomes(pending=1, confirmed=1, withdrawn=1)
    clock.now = lapsing.confirm_by
    await p.close_due()
    report = await p.suspension_report()
    assert report["requests"] == outcomes(confirmed=1, lapsed=1, withdrawn=1)
    assert report["by_status"] == {"lapsed": 2, "active": 1, "lifted": 1}
    # only what was in force has a length: the first stop (W + 1 s), the confirmed request (W)
    assert report["median_actual_seconds"] == W + 0.5
    await verified(p)


def test_requests_never_count_as_unconfirmed_coverage():
    request = broad("D1", T0, starts_on_confirmation=True)
    pending = request.with_changes(status="pending")
    lapsed = request.with_changes(status="lapsed", closed_at=T0 + W)
    withdrawn = request.with_changes(id="D2", status="lifted", closed_at=T0 + 100)
    for directives in ([pending], [lapsed, withdrawn]):
        c = count(directives, T0 + 200)
        assert c.used == 0 and c.lapse_at == T0 + 200 + W and c.unconfirmed_active == ()
    assert count([pending], T0 + 200).awaiting == ("D1",)

"""Policy: the rules of SPEC §4 that make proportionality the default, with a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from policy.actor import SYSTEM, Actor
from policy.errors import Conflict, Forbidden, Malformed, NotFound, RuleBroken
from policy.rfc3339 import format_time
from policy.schedule import Schedule
from policy.service import Policy, Rules
from policy.store import SqliteStore
from policy.visit import Visit, subject_keys

T0 = 1_700_000_000.0
DAY = 86400.0
ALICE = Actor("operator:alice", "operator")
BOB = Actor("operator:bob", "supervisor")
CAROL = Actor("operator:carol", "supervisor")
# A visit at K1 with inmate I1 and contact C1, for evaluating subject keys only.
UNSTORED = Visit("V", "F1", "I1", "K1", ("C1",), T0, T0 + 60, "social", "operator:alice", T0)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def policy(clock: Clock) -> AsyncIterator[Policy]:
    store = SqliteStore(":memory:", clock=clock)  # durability is test_store.py's business
    await store.open()
    p = Policy(store=store, clock=clock)
    await p.create_facility(ALICE, {"id": "F1", "name": "North"})
    await p.create_facility(ALICE, {"id": "F2", "name": "South"})
    await p.create_device(ALICE, {"id": "K1", "facility": "F1"})
    await p.create_device(ALICE, {"id": "K2", "facility": "F2"})
    await p.create_inmate(ALICE, {"id": "I1", "facility": "F1", "name": "Sam"})
    for contact in ("C1", "C2"):
        await p.create_contact(ALICE, {"id": contact, "name": contact, "minor": False})
        await p.set_approval(ALICE, contact, {"inmate": "I1", "status": "approved"})
    try:
        yield p
    finally:
        await store.close()


def body(scope: str = "contact:C1", *, expires_in: float | None = DAY, **extra: object) -> dict:
    data: dict = {
        "scope": scope,
        "action": "suspend",
        "reason": "threats on the call",
        "legal_basis": "Rule 7.1",
    }
    if expires_in is not None:
        data["expires_at"] = format_time(T0 + expires_in)
    return {**data, **extra}


async def visit(policy: Policy, contacts: list[str], **extra: object):
    return await Schedule(policy).create(ALICE, {
        "inmate": "I1", "device": "K1", "contacts": contacts,
        "starts_at": format_time(T0 - 60), "ends_at": format_time(T0 + 3600), **extra,
    })  # fmt: skip


async def actions(policy: Policy) -> list[str]:
    return [e.action for e in await policy.store.audit_events()]


# -- issue validation -----------------------------------------------------------------------
async def test_issue_stores_an_active_directive_with_its_audit_event(policy):
    d = await policy.issue(ALICE, body())
    assert (d.status, d.issued_by, d.issued_at, d.starts_at, d.expires_at) == (
        "active",
        "operator:alice",
        T0,
        T0,
        T0 + DAY,
    )
    assert d.confirm_by is None
    assert await policy.store.get_directive(d.id) == d  # durable before the caller hears back
    assert (await actions(policy))[-1] == "directive.issued"
    assert not policy.evaluate(subject_keys(UNSTORED, contact="C1")).admitted


@pytest.mark.parametrize("expires", [None, "", "absent"])
async def test_missing_expiry_is_refused_as_a_broken_rule(policy, expires):
    data = body(expires_in=None)
    if expires != "absent":
        data["expires_at"] = expires
    with pytest.raises(RuleBroken) as caught:
        await policy.issue(ALICE, data)
    assert caught.value.kind == "rule" and caught.value.code == "expiry-required"


async def test_longer_than_the_maximum_is_refused(policy):
    with pytest.raises(RuleBroken) as caught:
        await policy.issue(ALICE, body(expires_in=30 * DAY + 1))
    assert caught.value.code == "too-long"
    d = await policy.issue(ALICE, body(expires_in=30 * DAY))  # exactly the maximum is allowed
    assert d.expires_at == T0 + 30 * DAY


async def test_the_maximum_is_configurable(policy):
    policy.rules = Rules(max_directive_seconds=3600)
    with pytest.raises(RuleBroken):
        await policy.issue(ALICE, body(expires_in=3601))
    await policy.issue(ALICE, body(expires_in=3600))


async def test_expiry_in_the_past_is_refused(policy):
    with pytest.raises(RuleBroken):
        await policy.issue(ALICE, body(expires_in=0))
    with pytest.raises(RuleBroken):
        await policy.issue(ALICE, body(expires_in=-60))


@pytest.mark.parametrize(
    "scope",
    ["facility:F9", "device:K9", "inmate:I9", "contact:C9", "pair:I9:C1", "pair:I1:C9", "visit:V9"],
)
async def test_unknown_scope_target_is_refused(policy, scope):
    with pytest.raises(RuleBroken) as caught:
        await policy.issue(ALICE, body(scope))
    assert caught.value.code == "unknown-target"
    assert await policy.store.list_directives() == []
    assert "directive.issued" not in await actions(policy)


@pytest.mark.parametrize("field", ["reason", "legal_basis"])
@pytest.mark.parametrize("value", ["absent", None, "", "   ", 42])
async def test_missing_reason_or_legal_basis_is_malformed(policy, field, value):
    data = body()
    if value == "absent":
        del data[field]
    else:
        data[field] = value
    with pytest.raises(Malformed) as caught:
        await policy.issue(ALICE, data)
    assert caught.value.kind == "malformed"


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "x",
        body(action="ban"),
        body(action=None),
        body(scope="bogus:1"),
        body(expires_at="tomorrow"),
        body(expires_at="2030-01-01T00:00:00"),
    ],  # no UTC offset
    ids=["none", "list", "str", "bad-action", "no-action", "bad-scope", "bad-time", "naive-time"],
)
async def test_malformed_bodies(policy, data):
    with pytest.raises(Malformed):
        await policy.issue(ALICE, data)


@pytest.mark.parametrize("scope", ["visit", "pair", "device", "inmate", "facility", "system"])
async def test_every_scope_kind_can_be_issued(policy, scope):
    v = await visit(policy, ["C1"])
    target = {"visit": f"visit:{v.id}", "pair": "pair:I1:C1", "device": "device:K1", "inmate": "inmate:I1",
              "facility": "facility:F1", "system": "system"}[scope]  # fmt: skip
    d = await policy.issue(ALICE, body(target))
    assert not policy.evaluate(subject_keys(v, contact="C1")).admitted
    assert d.broad is (scope in ("facility", "system"))


# -- broad directives ------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["system", "facility:F1"])
async def test_broad_directives_take_effect_now_and_must_be_confirmed(policy, scope):
    d = await policy.issue(ALICE, body(scope))
    assert d.confirm_by == T0 + 15 * 60
    assert d.confirmed_by is None
    v = UNSTORED
    assert not policy.evaluate(subject_keys(v)).admitted  # immediately, before any confirmation


async def test_targeted_directives_need_no_confirmation(policy):
    d = await policy.issue(ALICE, body("inmate:I1"))
    assert d.confirm_by is None
    with pytest.raises(Conflict):
        await policy.confirm(BOB, d.id)


async def test_confirmation_by_the_issuer_is_refused(policy):
    d = await policy.issue(BOB, body("system"))
    with pytest.raises(Forbidden) as caught:
        await policy.confirm(BOB, d.id)
    assert caught.value.code == "self-confirmation"
    assert (await policy.get_directive(d.id)).confirmed_by is None


async def test_confirmation_needs_a_supervisor(policy):
    d = await policy.issue(BOB, body("facility:F1"))
    with pytest.raises(Forbidden):
        await policy.confirm(Actor("operator:dave", "operator"), d.id)


async def test_a_second_supervisor_confirms_once(policy, clock):
    d = await policy.issue(ALICE, body("facility:F1"))
    clock.now += 60
    confirmed = await policy.confirm(BOB, d.id)
    assert (confirmed.confirmed_by, confirmed.confirmed_at) == ("operator:bob", T0 + 60)
    assert await policy.store.get_directive(d.id) == confirmed
    assert (await actions(policy))[-1] == "directive.confirmed"
    with pytest.raises(Conflict):
        await policy.confirm(CAROL, d.id)
    with pytest.raises(NotFound):
        await policy.confirm(CAROL, "D-nope")


async def test_an_unconfirmed_broad_directive_lapses(policy, clock):
    d = await policy.issue(ALICE, body("system"))
    clock.now = T0 + 15 * 60 - 1
    assert await policy.close_due() == []
    clock.now = T0 + 15 * 60
    [lapsed] = await policy.close_due()
    assert (lapsed.id, lapsed.status, lapsed.closed_by) == (d.id, "lapsed", "system:parlor")
    assert (await policy.store.get_directive(d.id)).status == "lapsed"
    assert policy.index.active() == []
    assert policy.evaluate(subject_keys(UNSTORED)).admitted
    events = await policy.store.audit_events()
    assert (events[-1].action, events[-1].actor) == ("directive.lapsed", "system:parlor")
    assert await policy.close_due() == []  # lapses once
    with pytest.raises(Conflict):
        await policy.confirm(BOB, d.id)  # too late to confirm


async def test_a_confirmed_broad_directive_runs_until_it_expires(policy, clock):
    d = await policy.issue(ALICE, body("facility:F1", expires_in=3600))
    await policy.confirm(BOB, d.id)
    clock.now = T0 + 15 * 60 + 1
    assert await policy.close_due() == []
    clock.now = T0 + 3600
    [expired] = await policy.close_due()
    assert expired.status == "expired" and expired.closed_at == T0 + 3600
    assert (await actions(policy))[-1] == "directive.expired"


async def test_targeted_directives_expire(policy, clock):
    short = await policy.issue(ALICE, body("contact:C1", expires_in=600))
    long = await policy.issue(ALICE, body("contact:C2", expires_in=1200))
    clock.now = T0 + 600
    assert [d.id for d in await policy.close_due()] == [short.id]
    assert [d.id for d in policy.index.active()] == [long.id]
    assert (await policy.store.get_directive(long.id)).status == "active"


async def test_a_directive_closed_elsewhere_is_adopted(policy, clock):
    """Another node lifted it first: close_due must not fail, and must adopt the stored state."""
    d = await policy.issue(ALICE, body(expires_in=60))
    other = Policy(store=policy.store, clock=clock)
    await other.load()
    await other.lift(BOB, d.id, {"reason": "mistake"})
    clock.now = T0 + 60
    assert await policy.close_due() == []
    assert policy.index.active() == []


async def test_counting_ended_sessions_never_writes_a_lift_back(policy, clock):
    """Sessions were being ended when someone (here: another node) lifted the directive."""
    d = await policy.issue(ALICE, body())
    other = Policy(store=policy.store, clock=clock)
    await other.load()
    await other.lift(BOB, d.id, {"reason": "wrong person"})
    counted = await policy.record_enforcement(ALICE, d, ["S1", "S2"])
    assert (counted.status, counted.sessions_ended) == ("lifted", 2)
    assert await policy.store.get_directive(d.id) == counted
    assert policy.index.active() == []  # and this node now knows it was lifted
    again = await other.record_enforcement(SYSTEM, d, ["S3"], node="B")
    assert again.sessions_ended == 3  # two nodes' counts add up
    events = [e for e in await policy.store.audit_events() if e.action == "directive.enforced"]
    assert [e.data for e in events] == [
        {"sessions": ["S1", "S2"]},
        {"sessions": ["S3"], "node": "B"},
    ]


async def test_load_rebuilds_the_index_from_the_store(policy):
    d = await policy.issue(ALICE, body())
    fresh = Policy(store=policy.store, clock=policy.clock)
    await fresh.load()
    assert fresh.index.active() == [d]


# -- lift --------------------------------------------------------------------------------------
async def test_lift_closes_once_and_needs_a_reason(policy):
    d = await policy.issue(ALICE, body())
    with pytest.raises(Malformed):
        await policy.lift(BOB, d.id, {})
    lifted = await policy.lift(BOB, d.id, {"reason": "resolved"})
    assert (lifted.status, lifted.closed_by, lifted.close_reason) == (
        "lifted",
        "operator:bob",
        "resolved",
    )
    assert policy.index.active() == []
    with pytest.raises(Conflict):
        await policy.lift(BOB, d.id, {"reason": "again"})
    with pytest.raises(NotFound):
        await policy.lift(BOB, "D-nope", {"reason": "x"})


# -- visits ------------------------------------------------------------------------------------
async def test_visit_with_an_unapproved_contact_is_a_conflict(policy):
    await policy.create_contact(ALICE, {"id": "C3", "name": "New"})
    with pytest.raises(Conflict) as caught:
        await visit(policy, ["C1", "C3"])
    assert caught.value.code == "contact-not-approved"
    await policy.set_approval(ALICE, "C3", {"inmate": "I1", "status": "denied", "reason": "no ID"})
    with pytest.raises(Conflict):
        await visit(policy, ["C3"])
    assert await policy.store.list_visits() == []


async def test_visit_refusals(policy):
    with pytest.raises(NotFound):
        await Schedule(policy).create(ALICE, {"inmate": "I9", "device": "K1", "contacts": ["C1"],
                                          "starts_at": format_time(T0), "ends_at": format_time(T0 + 60)})  # fmt: skip
    with pytest.raises(NotFound):
        await visit(policy, ["C9"])
    with pytest.raises(Conflict):
        await visit(policy, ["C1"], device="K2")  # a kiosk in another facility
    with pytest.raises(RuleBroken):
        await Schedule(policy).create(ALICE, {"inmate": "I1", "device": "K1", "contacts": ["C1"],
                                          "starts_at": format_time(T0), "ends_at": format_time(T0)})  # fmt: skip
    with pytest.raises(Malformed):
        await visit(policy, [])
    with pytest.raises(Malformed):
        await visit(policy, ["C1", "C1"])
    with pytest.raises(Malformed):
        await visit(policy, ["C1"], kind="conjugal")


async def test_a_suspended_contact_cannot_be_put_on_a_new_visit(policy):
    await policy.issue(ALICE, body("contact:C1"))
    with pytest.raises(Conflict) as caught:
        await visit(policy, ["C1"])
    assert caught.value.code == "suspended"
    assert (await visit(policy, ["C2"])).contacts == ("C2",)


# -- appeals -----------------------------------------------------------------------------------
async def test_appeal_by_the_affected_contact_decided_by_someone_else(policy):
    v = await visit(policy, ["C1", "C2"])
    d = await policy.issue(ALICE, body("contact:C1"))
    family = Actor("contact:C1", "family", visit=v.id)
    with pytest.raises(Forbidden):
        await policy.file_appeal(
            Actor("contact:C2", "family", visit=v.id), d.id, {"text": "not me"}
        )
    appeal = await policy.file_appeal(family, d.id, {"text": "please reconsider"})
    with pytest.raises(Forbidden):
        await policy.decide_appeal(ALICE, appeal.id, {"decision": "lift", "note": "my own"})
    decided, lifted = await policy.decide_appeal(
        BOB, appeal.id, {"decision": "lift", "note": "granted"}
    )
    assert decided.status == "lifted" and lifted is not None and lifted.status == "lifted"
    assert policy.evaluate(subject_keys(v, contact="C1")).admitted
    assert (await actions(policy))[-3:] == ["appeal.filed", "appeal.decided", "directive.lifted"]

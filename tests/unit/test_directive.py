"""Scopes, subject keys (SPEC §4) and the directive index every admission consults."""

from __future__ import annotations

import pytest

from policy.directive import Directive, DirectiveIndex, is_broad, parse_scope, scope_kind
from policy.errors import Malformed
from policy.visit import Visit, monitor_keys, subject_keys

NOW = 1_700_000_000.0
VISIT = Visit(
    "V1", "F1", "I1", "K1", ("C1", "C2"), NOW - 60, NOW + 3600, "social", "operator:a", NOW - 600
)
KIOSK = subject_keys(VISIT)
C1 = subject_keys(VISIT, contact="C1")
C2 = subject_keys(VISIT, contact="C2")


def directive(id: str, scope: str, action: str = "suspend", **changes: object) -> Directive:
    d = Directive(id=id, scope=scope, action=action, reason="r", legal_basis="Rule 1",
                  issued_by="operator:alice", issued_at=NOW - 10, starts_at=NOW - 10, expires_at=NOW + 3600)  # fmt: skip
    return d.with_changes(**changes)


def index(*directives: Directive) -> DirectiveIndex:
    idx = DirectiveIndex()
    for d in directives:
        idx.put(d)
    return idx


# -- scopes ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scope", "kind", "broad"),
    [
        ("system", "system", True),
        ("facility:F1", "facility", True),
        ("device:K1", "device", False),
        ("inmate:I1", "inmate", False),
        ("contact:C1", "contact", False),
        ("pair:I1:C1", "pair", False),
        ("visit:V-0a1b2c", "visit", False),
        ("contact:a.b_c-9", "contact", False),
    ],
)
def test_every_scope_kind_parses(scope, kind, broad):
    assert parse_scope(scope) == scope
    assert scope_kind(scope) == kind
    assert is_broad(scope) is broad
    assert directive("D", scope).broad is broad


@pytest.mark.parametrize(
    "scope",
    [
        None,
        5,
        "",
        ["contact:C1"],
        "bogus:X",
        "Contact:C1",
        "all",
        "*",
        "system:X",
        "facility",
        "facility:",
        "contact:C1:C2",
        "device::",
        "pair:I1",
        "pair:I1:",
        "pair::C1",
        "pair:I1:C1:X",
        "contact:a b",
        "contact:-x",
        "visit:" + "x" * 65,
        "inmate:I1 ",
        " contact:C1",
    ],
)
def test_bad_scope_shapes_are_malformed(scope):
    with pytest.raises(Malformed) as caught:
        parse_scope(scope)
    assert caught.value.code in ("bad-scope", "bad-id")


# -- subject keys -------------------------------------------------------------------------
def test_kiosk_subject_keys():
    assert set(KIOSK) == {"system", "facility:F1", "device:K1", "inmate:I1", "visit:V1"}


def test_contact_subject_keys_add_contact_and_pair():
    assert set(C1) == set(KIOSK) | {"contact:C1", "pair:I1:C1"}
    assert len(C1) == len(set(C1)) == 7


def test_monitor_subject_keys():
    assert set(monitor_keys(VISIT, "operator:bob")) == {
        "system",
        "facility:F1",
        "visit:V1",
        "operator:bob",
    }


@pytest.mark.parametrize(
    ("scope", "kiosk", "c1", "c2"),
    [
        ("system", True, True, True),
        ("facility:F1", True, True, True),
        ("device:K1", True, True, True),
        ("inmate:I1", True, True, True),
        ("visit:V1", True, True, True),
        ("contact:C1", False, True, False),  # cuts only C1; the rest of the visit goes on
        ("pair:I1:C1", False, True, False),
        ("facility:F2", False, False, False),
        ("device:K2", False, False, False),
        ("inmate:I2", False, False, False),
        ("visit:V2", False, False, False),
        ("pair:I2:C1", False, False, False),  # C1's visits with another inmate only
        ("contact:C3", False, False, False),
    ],
)
def test_which_sessions_a_scope_matches(scope, kiosk, c1, c2):
    idx = index(directive("D", scope))
    assert [not idx.evaluate(keys, NOW).admitted for keys in (KIOSK, C1, C2)] == [kiosk, c1, c2]


# -- evaluation ---------------------------------------------------------------------------
def test_suspend_blocks_and_names_the_directive():
    d = directive("D1", "contact:C1")
    decision = index(d).evaluate(C1, NOW)
    assert decision.admitted is False and decision.blocking == d and not decision.restricted


def test_end_does_not_block_later_admissions():
    decision = index(directive("D1", "visit:V1", "end")).evaluate(C1, NOW)
    assert decision.admitted is True and decision.blocking is None and decision.audio_only is None


def test_audio_only_restricts_but_admits():
    d = directive("D1", "inmate:I1", "audio-only")
    decision = index(d).evaluate(KIOSK, NOW)
    assert decision.admitted is True and decision.restricted and decision.audio_only == d


def test_suspend_and_audio_only_together():
    s, a = directive("S", "contact:C1"), directive("A", "facility:F1", "audio-only")
    decision = index(s, a).evaluate(C1, NOW)
    assert (decision.admitted, decision.blocking, decision.audio_only) == (False, s, a)
    decision = index(s, a).evaluate(C2, NOW)
    assert (decision.admitted, decision.blocking, decision.audio_only) == (True, None, a)


def test_expired_and_not_yet_started_directives_are_ignored():
    expired = directive("D1", "contact:C1", expires_at=NOW)  # expiry is exclusive
    future = directive("D2", "contact:C1", starts_at=NOW + 60)
    idx = index(expired, future)
    assert idx.evaluate(C1, NOW).admitted
    assert idx.evaluate(C1, NOW - 1).blocking == expired
    assert idx.evaluate(C1, NOW + 60).blocking == future


def test_closed_directives_leave_the_index():
    d = directive("D1", "contact:C1")
    idx = index(d)
    for status in ("lifted", "expired", "lapsed"):
        idx.put(d)
        idx.put(d.with_changes(status=status))
        assert idx.evaluate(C1, NOW).admitted, status
        assert idx.active() == [] and dict(idx.by_scope) == {}
    idx.put(d.with_changes(status="lifted"))  # a closed directive never enters the index
    assert idx.active() == []


def test_a_directive_only_moves_forward_in_the_index():
    """An older copy (a cluster's announcement arriving after a lift or a confirmation made
    here) never undoes a later state: issued < confirmed < closed."""
    issued = directive("D1", "facility:F1", confirm_by=NOW + 900)
    confirmed = issued.with_changes(confirmed_by="operator:sam", confirmed_at=NOW)
    lifted = confirmed.with_changes(status="lifted", closed_at=NOW + 1)
    idx = index(issued, confirmed)
    assert idx.put(issued) is False and idx.by_id["D1"] == confirmed
    assert idx.due(NOW + 901) == []  # so the stale copy cannot make it lapse here
    assert idx.put(lifted) is True and idx.active() == []
    assert idx.put(issued) is False and idx.put(confirmed) is False
    assert idx.evaluate(KIOSK, NOW).admitted
    assert idx.put(lifted.with_changes(sessions_ended=2)) is True  # same progress: taken


def test_the_binding_suspension_is_the_one_that_expires_last():
    short = directive("D1", "contact:C1", expires_at=NOW + 60)
    long = directive("D2", "pair:I1:C1", expires_at=NOW + 7200)
    middle = directive("D3", "facility:F1", expires_at=NOW + 600)
    assert index(short, long, middle).evaluate(C1, NOW).blocking == long


def test_put_replaces_a_directive_that_changed_scope_bucket():
    idx = index(directive("D1", "contact:C1"))
    idx.put(directive("D1", "contact:C1", sessions_ended=3))
    assert len(idx.active()) == 1 and idx.active()[0].sessions_ended == 3
    idx.discard("D1")
    idx.discard("D1")  # discarding twice is harmless
    assert idx.evaluate(C1, NOW).admitted and dict(idx.by_scope) == {}


def test_evaluation_cost_does_not_grow_with_unrelated_directives():
    idx = index(*(directive(f"D{i}", f"contact:X{i}") for i in range(5000)))
    looked: list[str] = []

    class Spy(dict):
        def get(self, key, default=None):
            looked.append(key)
            return super().get(key, default)

    idx.by_scope = Spy(idx.by_scope)
    assert idx.evaluate(C1, NOW).admitted
    assert sorted(looked) == sorted(C1)  # one lookup per subject key, nothing else


def test_due_and_next_deadline():
    expiring = directive("D1", "contact:C1", expires_at=NOW + 100)
    broad = directive("D2", "system", confirm_by=NOW + 50)
    confirmed = directive("D3", "facility:F1", confirm_by=NOW + 20, confirmed_by="operator:sup")
    idx = index(expiring, broad, confirmed)
    assert idx.due(NOW) == []
    assert idx.next_deadline() is not None and idx.next_deadline() <= NOW + 50
    assert [d.id for d in idx.due(NOW + 50)] == ["D2"]
    assert sorted(d.id for d in idx.due(NOW + 100)) == ["D1", "D2"]
    assert DirectiveIndex().next_deadline() is None


def test_notice_tells_the_affected_person_what_spec_requires():
    notice = directive("D1", "contact:C1").notice(appeal_base="https://v.example")
    assert set(notice) == {"id", "action", "reason", "legal_basis", "expires_at", "appeal_url"}
    assert notice["appeal_url"] == "https://v.example/appeal/D1"
    assert notice["expires_at"].endswith("Z")


# -- the form another node reads (the bus announces `to_json`) --------------------------------
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"issued_at": NOW - 10.123456, "expires_at": NOW + 3600.5},
        {
            "confirm_by": NOW + 600,
            "confirmed_by": "operator:bob",
            "confirmed_at": NOW + 60.25,
            "sessions_ended": 7,
        },  # fmt: skip
        {
            "status": "lifted",
            "closed_at": NOW + 5,
            "closed_by": "operator:bob",
            "close_reason": "appeal upheld",
            "reason": "menaces — «threats»",
        },  # fmt: skip
    ],
)
def test_a_directive_reads_back_from_its_json(changes: dict[str, object]) -> None:
    original = directive("D1", "contact:C1", **changes)
    assert Directive.from_json(original.to_json(appeal_base="https://x")) == original


def test_a_directive_missing_a_field_does_not_read_back() -> None:
    data = directive("D1", "contact:C1").to_json()
    del data["expires_at"]
    with pytest.raises(KeyError):
        Directive.from_json(data)
    with pytest.raises(Malformed):
        Directive.from_json({**directive("D1", "contact:C1").to_json(), "starts_at": "soon"})

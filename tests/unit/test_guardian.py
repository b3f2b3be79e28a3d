"""The rules of minors and their guardians (policy/guardian.py), as pure functions."""

from __future__ import annotations

import pytest

from policy import guardian
from policy.errors import Malformed, RuleBroken
from policy.guardian import ACTIVE, PAUSED, WAITING, Step, Ward


def codes(call) -> str:
    with pytest.raises((Malformed, RuleBroken)) as caught:
        call()
    return caught.value.code


ADULTS = {"G1": False, "G2": False, "M2": True}


def test_guardians_are_adults_other_than_the_minor_and_named_once():
    check = guardian.check_guardians
    assert check("M1", True, ["G2", "G1"], ADULTS) == ("G1", "G2")
    assert check("M1", True, [], ADULTS) == ()
    assert codes(lambda: check("M1", True, "G1", ADULTS)) == "bad-field"
    assert codes(lambda: check("M1", True, [1], ADULTS)) == "bad-field"
    assert codes(lambda: check("M1", True, ["G1", "G1"], ADULTS)) == "duplicate-guardian"
    assert codes(lambda: check("A1", False, ["G1"], ADULTS)) == "not-a-minor"
    assert codes(lambda: check("M1", True, ["M1"], {"M1": True})) == "own-guardian"
    assert codes(lambda: check("M1", True, ["X"], ADULTS)) == "unknown-guardian"
    assert codes(lambda: check("M1", True, ["M2"], ADULTS)) == "guardian-is-minor"
    many = {f"G{i}": False for i in range(6)}
    assert codes(lambda: check("M1", True, list(many), many)) == "too-many-guardians"
    assert check("A1", False, [], ADULTS) == ()  # clearing is fine for anyone


def test_a_ward_is_a_minor_with_the_guardians_booked_on_the_same_visit():
    assert guardian.ward_of("A1", False, (), ["A1"]) is None
    assert guardian.ward_of("M1", True, ("G1", "G2"), ["M1", "G2"]) == Ward("M1", ("G2",))
    assert guardian.ward_of("M1", True, ("G1",), ["M1"]) == Ward("M1", ())


def test_a_visit_with_a_minor_needs_one_of_their_guardians_on_it():
    guardian.check_booking([Ward("M1", ("G1",))], {})
    guardian.check_booking([], {})
    with pytest.raises(RuleBroken) as caught:
        guardian.check_booking([Ward("M1", ("G1",)), Ward("M2", ())], {"M2": "Mia"})
    assert caught.value.code == "guardian-required" and "Mia" in caught.value.message


def test_a_minor_may_wait_only_while_a_guardian_of_theirs_may_still_come():
    ward = Ward("M1", ("G1", "G2"))
    assert guardian.may_wait(ward, lambda g: g == "G2")
    assert not guardian.may_wait(ward, lambda g: False)  # all denied or withdrawn
    assert not guardian.may_wait(Ward("M1", ()), lambda g: True)


def test_only_eligible_guardians_in_the_call_count():
    ward = Ward("M1", ("G1", "G2"))
    assert guardian.present(ward, ["G1", "K"], lambda g: True) == ("G1",)
    assert guardian.present(ward, ["G1"], lambda g: g != "G1") == ()  # suspended: not present
    assert guardian.present(ward, ["A9"], lambda g: True) == ()  # another adult is no guardian


def test_the_state_machine_holds_admits_pauses_and_resumes():
    assert guardian.first(True) == Step(ACTIVE, "admitted")
    assert guardian.first(False) == Step(WAITING, "held")
    assert guardian.step(WAITING, False) == Step(WAITING, None)
    assert guardian.step(WAITING, True) == Step(ACTIVE, "admitted")
    assert guardian.step(ACTIVE, True) == Step(ACTIVE, None)
    assert guardian.step(ACTIVE, False) == Step(PAUSED, "paused")
    assert guardian.step(PAUSED, False) == Step(PAUSED, None)
    assert guardian.step(PAUSED, True) == Step(ACTIVE, "resumed")
    with pytest.raises(ValueError):
        guardian.step("gone", True)


def test_the_grace_counts_down_from_the_pause():
    assert guardian.grace_left(100.0, 100.0, 60) == 60
    assert guardian.grace_left(100.0, 130.5, 60) == 29.5
    assert guardian.grace_left(100.0, 200.0, 60) == 0

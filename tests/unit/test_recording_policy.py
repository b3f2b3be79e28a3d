"""The recording rules (policy/recording.py) and their replay (policy/replay.py)."""

from __future__ import annotations

import pytest

from policy import replay
from policy.actor import Actor
from policy.audit import GENESIS, AuditEvent
from policy.errors import Malformed, RuleBroken
from policy.recording import (
    DAY,
    Recording,
    may_read,
    past_retention,
    reason,
    recorded,
    reference,
    retention_days,
)
from policy.roster import Facility
from policy.store.interface import StoredState

T0 = 1_700_000_000.0
NORTH = Facility("F1", "North")


def recording(**changes: object) -> Recording:
    return Recording(
        "R-1", "V1", "F1", "node-a", "V1-0011223344556677.rec", "finalized", T0, ended_at=T0 + 60,
    ).with_changes(**changes)  # fmt: skip


def test_social_visits_are_recorded_where_the_facility_records_and_privileged_never():
    assert recorded("social", NORTH)
    assert not recorded("social", Facility("F1", "North", recording=False))
    assert not recorded("privileged", NORTH)
    assert not recorded("privileged", None)
    assert recorded("social", None)  # the default policy


@pytest.mark.parametrize(
    ("role", "allowed", "expected"),
    [("supervisor", False, True), ("auditor", False, True), ("operator", False, False),
     ("operator", True, True), ("family", True, False), ("kiosk", True, False)],
)  # fmt: skip
def test_who_may_read(role, allowed, expected):
    facility = Facility("F1", "North", operators_play_recordings=allowed)
    assert may_read(Actor(f"{role}:x", role), facility) is expected


def test_a_reason_is_required_and_bounded():
    assert reason("  incident 7 ") == "incident 7"
    for bad in (None, "", "   ", 7):
        with pytest.raises(Malformed):
            reason(bad)
    with pytest.raises(Malformed):
        reason("x" * 501)
    assert reference(None) is None and reference("D-1") == "D-1"
    with pytest.raises(Malformed):
        reference("a b")


def test_retention_days_are_bounded_whole_days():
    assert retention_days(30) == 30
    for bad in (True, 1.5, "30"):
        with pytest.raises(Malformed):
            retention_days(bad)
    for bad in (0, 3651):
        with pytest.raises(RuleBroken):
            retention_days(bad)


def test_past_retention_unless_held_live_or_deleted():
    facility = Facility("F1", "North", recording_retention_days=2)
    due = T0 + 60 + 2 * DAY
    assert not past_retention(recording(), facility, due - 1)
    assert past_retention(recording(), facility, due)
    assert past_retention(recording(status="failed"), facility, due)
    assert not past_retention(recording(held_by="operator:sue"), facility, due)
    assert not past_retention(recording(status="recording", ended_at=None), facility, due)
    assert not past_retention(recording(status="deleted"), facility, due)
    assert past_retention(recording(), None, T0 + 60 + 180 * DAY)  # the default: 180 days


def test_a_recording_reads_back_from_its_json():
    done = recording(parts=(("device:K1", "V1-0011223344556677.p1.webm"),), sha256="ab" * 32,
                     origin_at=T0 + 0.25, held_by="operator:sue", held_at=T0 + 5)  # fmt: skip
    assert Recording.from_json(done.to_json()) == done
    with pytest.raises(ValueError):
        Recording.from_json({**done.to_json(), "parts": [["device:K1", "../etc/passwd"]]})


def event(seq: int, action: str, data: dict, subject: str = "recording:R-1") -> AuditEvent:
    return AuditEvent(seq, "2023-11-14T22:13:20Z", "system:parlor", action, subject, data, "", "")


def test_replay_folds_a_recordings_life_and_keeps_a_hold_the_finalizing_node_did_not_know():
    live = recording(status="recording", ended_at=None)
    held = live.with_changes(held_by="operator:sue", held_reason="appeal", held_at=T0 + 10)
    done = live.with_changes(status="finalized", ended_at=T0 + 60, sha256="cd" * 32)
    events = [
        event(1, "recording.started", {"recording": live.to_json()}),
        event(2, "recording.held", {"recording": held.to_json(), "reason": "appeal"}),
        event(3, "recording.finalized", {"recording": done.to_json()}),  # knows of no hold
        event(4, "recording.played", {"reason": "look", "sha256": done.sha256}),
    ]
    expected = done.with_changes(held_by="operator:sue", held_reason="appeal", held_at=T0 + 10)
    projection = replay.project(events)
    assert projection.recordings == {"R-1": expected}
    assert not projection.unreplayed
    state = StoredState(events, (4, GENESIS), {}, {}, {}, {"R-1": expected})
    assert replay.check(state).ok
    edited = replay.check(StoredState(events, (4, GENESIS), {}, {}, {},
                                      {"R-1": expected.with_changes(sha256="00" * 32)}))  # fmt: skip
    assert [(d.table, d.field) for d in edited.disagreements] == [("recordings", "sha256")]
    restored = replay.restoration(edited)
    assert restored.recordings == [expected]

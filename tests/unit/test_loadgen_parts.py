"""The load generator's plain parts: how it sizes its workers, lays out a roster and reads one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from signaling.loadgen import PACKETS_PER_PROCESS, layout_of, processes_for, read_roster
from signaling.loadmedia import VideoSpec, load_media


def test_workers_are_sized_by_the_packets_they_carry(tmp_path: Path) -> None:
    small = load_media(VideoSpec.parse("160x120@10"), 20, cache=tmp_path)
    large = load_media(VideoSpec.parse("640x480@30"), 20, cache=tmp_path)
    assert processes_for(2, small) == 1
    per_participant = 2 * sum(small.packets_per_second.values())
    assert processes_for(200, small) == -(-200 * per_participant // PACKETS_PER_PROCESS)
    assert processes_for(200, large) > processes_for(200, small)
    assert processes_for(10_000, large) == 16  # at most MAX_PROCESSES
    assert processes_for(200, small, asked=5) == 5


def test_calls_are_spread_over_facilities_of_at_most_ten() -> None:
    layout = layout_of(25, "P-")
    assert sum(layout.values()) == 25 and max(layout.values()) <= 10
    assert all(name.startswith("P-F") for name in layout)
    assert layout_of(1, "") == {"F00": 1}


def test_visits_given_in_a_file_are_read_or_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "visits.json"
    path.write_text(
        json.dumps([{"visit": "V1", "kiosk_token": "k", "family_token": "f", "extra": 1}])
    )
    (call,) = read_roster(path)
    assert (call.index, call.visit, call.kiosk_token, call.family_token) == (0, "V1", "k", "f")
    path.write_text(json.dumps([{"visit": "V1", "kiosk_token": "k"}]))
    with pytest.raises(ValueError, match="visit 0 needs"):
        read_roster(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="a JSON list"):
        read_roster(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_roster(tmp_path / "missing.json")
